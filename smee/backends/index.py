"""An immutable MAC/IP index over hardware records, shared by all backends.

It gives the answers Smee's Kubernetes field indexes give: no record claims
the key -> ``None``; exactly one interface does -> a :class:`Match`; two or
more do -> :class:`AmbiguousHardware`, because handing a machine someone
else's address or boot script is worse than not answering.

It must hold ~100,000 records cheaply and answer on the DHCP hot path, so:

* one :class:`Match` per interface is built once and shared by both indexes;
  a lookup returns that stored object and allocates nothing;
* the dicts are plain ``dict``: MAC keys are the interfaces' own (already
  normalised) strings, IP keys are ``int(ip)``, which ``IPv4Address`` keeps
  as an attribute (hashing an ``IPv4Address`` builds a hex string each time);
* a key claimed twice holds a :class:`_Claims` tuple instead of a Match, so
  the common case needs no second dict and the error path costs one type check.

The index never changes after construction; a backend builds a new one and
swaps the reference, which is atomic for readers on the reactor thread.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Iterable, Iterator

from smee.backends import AmbiguousHardware
from smee.hardware import Hardware, Match

__all__ = ["HardwareIndex"]


class _Claims(tuple):  # type: ignore[type-arg]  # tuple[Match, ...]
    """Every Match claiming one key; its presence in a dict marks the key ambiguous."""

    __slots__ = ()


def _source(match: Match) -> str:
    """Where a record came from, for messages an operator will act on."""
    hw = match.hardware
    if hw.source and hw.id and hw.id not in hw.source:
        return f"{hw.id} ({hw.source})"
    return hw.source or hw.id or "<unnamed record>"


def _describe(kind: str, key: str, claims: _Claims) -> str:
    sources = ", ".join(_source(m) for m in claims)
    return f"{kind} {key} is claimed by {len(claims)} interfaces: {sources}"


def _add(index: dict, key: object, match: Match, ambiguous: list) -> None:  # type: ignore[type-arg]
    prev = index.get(key)
    if prev is None:
        index[key] = match
    elif type(prev) is _Claims:
        index[key] = _Claims((*prev, match))
    else:
        index[key] = _Claims((prev, match))
        ambiguous.append(key)


class Lookups:
    """The lookups every index answers, over ``_by_mac`` (MAC → Match) and ``_by_ip`` (int → Match).

    A key claimed more than once holds a :class:`_Claims` and fails the lookup.
    """

    __slots__ = ("_by_mac", "_by_ip")
    _by_mac: dict[str, Match | _Claims]
    _by_ip: dict[int, Match | _Claims]

    def by_mac(self, mac: str) -> Match | None:
        """The interface with this (normalised) MAC; raises AmbiguousHardware if 2+ claim it."""
        found = self._by_mac.get(mac)
        if type(found) is _Claims:
            raise AmbiguousHardware(_describe("MAC", mac, found))
        return found  # type: ignore[return-value]

    def by_ip(self, ip: IPv4Address) -> Match | None:
        """The interface reserving this address; raises AmbiguousHardware if 2+ claim it."""
        found = self._by_ip.get(int(ip))
        if type(found) is _Claims:
            raise AmbiguousHardware(_describe("IP", str(ip), found))
        return found  # type: ignore[return-value]


class HardwareIndex(Lookups):
    """O(1) lookups by interface MAC and by interface IPv4 address.

    Keys must already be normalised: :meth:`by_mac` takes the
    ``aa:bb:cc:dd:ee:ff`` form that :func:`smee.hardware.normalize_mac`
    produces (backends normalise caller input; the index stays a bare dict
    lookup).
    """

    __slots__ = ("_hardware", "_duplicates")

    def __init__(self, hardware: Iterable[Hardware] = ()) -> None:
        records = tuple(hardware)
        by_mac: dict[str, Match | _Claims] = {}
        by_ip: dict[int, Match | _Claims] = {}
        dup_macs: list[str] = []
        dup_ips: list[int] = []
        for hw in records:
            for iface in hw.interfaces:
                match = Match(hw, iface)
                _add(by_mac, iface.mac, match, dup_macs)
                if iface.ip is not None:
                    _add(by_ip, int(iface.ip), match, dup_ips)
        self._hardware = records
        self._by_mac = by_mac
        self._by_ip = by_ip
        # Built once: a reload logs them, /healthcheck counts them.
        self._duplicates: tuple[str, ...] = tuple(
            [_describe("MAC", mac, by_mac[mac]) for mac in dup_macs]  # type: ignore[arg-type]
            + [_describe("IP", str(IPv4Address(ip)), by_ip[ip]) for ip in dup_ips]  # type: ignore[arg-type]
        )

    def duplicates(self) -> list[str]:
        """One human-readable line per ambiguous MAC or IP, naming every claimant."""
        return list(self._duplicates)

    @property
    def hardware(self) -> tuple[Hardware, ...]:
        """The indexed records, in the order given."""
        return self._hardware

    def __len__(self) -> int:
        return len(self._hardware)

    def __iter__(self) -> Iterator[Hardware]:
        return iter(self._hardware)

    def __repr__(self) -> str:
        return (
            f"<HardwareIndex records={len(self._hardware)} macs={len(self._by_mac)}"
            f" ips={len(self._by_ip)} duplicates={len(self._duplicates)}>"
        )
