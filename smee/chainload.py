"""Which machines are running an iPXE binary that smee itself just served.

With ``--dhcp-ipxe-rom-chainload`` a foreign iPXE ROM is sent to our binary
(``tftp://…/<mac>/<binary>``). Stock binaries then ask DHCP again with the
same user class ``iPXE`` and, in Debian's build, the same version (1.0.0) as
many ROMs, so nothing in the request tells the two apart. The TFTP server
does know: it records the MAC when it hands out a binary, and the DHCP side
asks here before chainloading again. That ends the chain after one round.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

#: How long after a binary was served its next iPXE DHCP counts as ours.
#: Loading ~1 MB over TFTP and starting iPXE takes seconds; a machine that
#: comes back much later rebooted and is a ROM again.
DEFAULT_TTL = 300.0


class Chainloads:
    """A bounded, clock-driven record of MAC → when a binary was served to it."""

    def __init__(self, clock: IReactorTime, ttl: float = DEFAULT_TTL, limit: int = 100_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._limit = limit
        self._served: OrderedDict[str, float] = OrderedDict()

    def served(self, mac: str) -> None:
        """Note that ``mac`` (normalised) was just sent an iPXE binary."""
        self._served[mac] = self._clock.seconds()
        self._served.move_to_end(mac)
        while len(self._served) > self._limit:
            self._served.popitem(last=False)

    def recent(self, mac: str) -> bool:
        """Whether ``mac`` was sent a binary within the last ``ttl`` seconds."""
        when = self._served.get(mac)
        if when is None:
            return False
        if self._clock.seconds() - when > self._ttl:
            del self._served[mac]
            return False
        return True

    def __len__(self) -> int:
        return len(self._served)
