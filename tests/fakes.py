"""Shared test doubles for protocol tests (DHCP now, TFTP and syslog later).

* :class:`FakeUDPTransport`: ``FakeDatagramTransport`` plus what a real
  ``udp.Port`` also has (broadcast flag, ``getHost``, ``connect``,
  ``stopListening``), recording every ``write`` in ``.written``.
* :class:`FakeUDPReactor`: a :class:`~twisted.internet.task.Clock` whose
  ``listenUDP`` connects the protocol to a :class:`FakeUDPPort` (a
  FakeUDPTransport whose ``stopListening`` stops the protocol, as a real
  port does), so servers that open a port per transfer (TFTP) can be driven
  without sockets; ``ports`` records every port opened.
* :class:`FakeBackend`: a hardware backend whose answers are set per MAC or
  IP: a Match, ``None``, an exception (becomes a failed Deferred) or a
  Deferred the test fires later; every call is recorded.
* :func:`hardware`: a one-interface :class:`~smee.hardware.Match` in one line.
* :func:`formatted`: the text of captured twisted.logger events.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, Iterable, Mapping

from twisted.internet import address, defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import formatEvent

from smee.hardware import Hardware, Interface, Match, normalize_mac

__all__ = ["FakeUDPTransport", "FakeUDPPort", "FakeUDPReactor", "FakeBackend", "hardware", "formatted"]


class FakeUDPTransport(FakeDatagramTransport):
    """An in-memory UDP port: ``written`` is a list of ``(bytes, (host, port))``.

    ``connect(host, port)`` makes later ``write(data)`` calls (no address)
    go there, as on a connected Twisted UDP port (TFTP sessions).
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 67) -> None:
        super().__init__()
        self.host = address.IPv4Address("UDP", host, port)
        self.broadcast_allowed = False
        self.connected_to: tuple[str, int] | None = None
        self.listening = True

    def write(self, packet: bytes, addr: Any = None) -> None:  # type: ignore[override]
        if addr is None:
            if self.connected_to is None:
                raise AssertionError("write() without an address on an unconnected UDP transport")
            addr = self.connected_to
        if not self.listening:
            raise AssertionError("write() after stopListening()")
        self.written.append((packet, addr))

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.broadcast_allowed = bool(enabled)

    def getBroadcastAllowed(self) -> bool:
        return self.broadcast_allowed

    def getHost(self) -> address.IPv4Address:
        return self.host

    def connect(self, host: str, port: int) -> None:
        self.connected_to = (host, port)

    def stopListening(self) -> defer.Deferred[None]:
        self.listening = False
        return defer.succeed(None)

    loseConnection = stopListening

    def clear(self) -> list[tuple[bytes, Any]]:
        """Return what was written so far and forget it."""
        out, self.written = list(self.written), []
        return out


class FakeUDPPort(FakeUDPTransport):
    """A listening port from :class:`FakeUDPReactor`: ``stopListening`` stops its protocol once."""

    def __init__(self, protocol: Any, host: str, port: int) -> None:
        super().__init__(host, port)
        self.protocol = protocol

    def stopListening(self) -> defer.Deferred[None]:
        if self.listening:
            self.listening = False
            self.protocol.doStop()
        return defer.succeed(None)

    loseConnection = stopListening

    def receive(self, data: bytes, src: tuple[str, int]) -> None:
        """Deliver a datagram from ``src`` to the protocol, as the reactor would."""
        if not self.listening:
            raise AssertionError(f"datagram to closed port {self.host.port}")
        self.protocol.datagramReceived(data, src)


class FakeUDPReactor(Clock):
    """A Clock with an in-memory ``listenUDP`` (IReactorUDP + IReactorTime for protocol tests).

    Port 0 gets the next number from ``first_port`` up. ``fail_listen``
    (an OSError) makes the next ``listenUDP`` raise CannotListenError with it.
    """

    def __init__(self, first_port: int = 40000) -> None:
        super().__init__()
        self.ports: list[FakeUDPPort] = []
        self._next = first_port
        self.fail_listen: OSError | None = None

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUDPPort:
        if self.fail_listen is not None:
            error, self.fail_listen = self.fail_listen, None
            raise CannotListenError(interface, port, error)
        if port == 0:
            port, self._next = self._next, self._next + 1
        udp = FakeUDPPort(protocol, interface or "0.0.0.0", port)
        self.ports.append(udp)
        protocol.makeConnection(udp)
        return udp

    @property
    def open_ports(self) -> list[FakeUDPPort]:
        return [p for p in self.ports if p.listening]


class FakeBackend:
    """A hardware backend with scripted answers.

    ``answers`` maps a MAC (any notation) or an IPv4 address (str or
    IPv4Address) to: a :class:`Match` or ``None`` (→ fired Deferred), an
    exception instance (→ failed Deferred), a :class:`Deferred` (returned as
    is, for "slow backend" tests; use a fresh one per call). A key not in the
    map answers ``default`` (``None``: not found). ``calls`` records
    ``("mac"|"ip", key)`` in call order.
    """

    kind = "fake"

    def __init__(self, answers: Mapping[Any, Any] | None = None, default: Any = None) -> None:
        self.answers: dict[Any, Any] = {}
        for key, value in (answers or {}).items():
            self.set(key, value)
        self.default = default
        self.calls: list[tuple[str, Any]] = []

    @staticmethod
    def _key(key: Any) -> Any:
        if isinstance(key, IPv4Address):
            return key
        if isinstance(key, str) and len(key) == 17 and key == key.lower() and key.count(":") == 5:
            return key  # already aa:bb:cc:dd:ee:ff (the protocol's form): keep benchmarks cheap
        try:
            return IPv4Address(str(key))
        except ValueError:
            pass
        try:
            return normalize_mac(key)
        except ValueError:
            return key

    def set(self, key: Any, value: Any) -> None:
        self.answers[self._key(key)] = value

    def add(self, match: Match) -> Match:
        """Answer ``match`` for its interface's MAC and IP."""
        self.set(match.interface.mac, match)
        if match.interface.ip is not None:
            self.set(match.interface.ip, match)
        return match

    def _answer(self, key: Any) -> defer.Deferred[Any]:
        value = self.answers.get(self._key(key), self.default)
        if isinstance(value, defer.Deferred):
            return value
        if isinstance(value, BaseException):
            return defer.fail(value)
        return defer.succeed(value)

    def by_mac(self, mac: str) -> defer.Deferred[Match | None]:
        self.calls.append(("mac", mac))
        return self._answer(mac)

    def by_ip(self, ip: Any) -> defer.Deferred[Match | None]:
        self.calls.append(("ip", ip))
        return self._answer(ip)

    def state(self) -> Mapping[str, Any]:
        return {"backend": "fake", "ready": True, "records": len(self.answers)}


def hardware(
    mac: str,
    ip: str | None = None,
    *,
    netmask: str | None = "255.255.255.0",
    gateway: str | None = None,
    allow_pxe: bool = True,
    hw_id: str = "",
    source: str = "",
    **interface_fields: Any,
) -> Match:
    """A Match for one machine with one interface (keyword args go to Interface)."""
    iface = Interface(
        mac=normalize_mac(mac),
        ip=None if ip is None else IPv4Address(ip),
        netmask=None if netmask is None or ip is None else IPv4Address(netmask),
        gateway=None if gateway is None else IPv4Address(gateway),
        allow_pxe=allow_pxe,
        **interface_fields,
    )
    hw = Hardware(id=hw_id or f"hw-{iface.mac}", interfaces=(iface,), source=source)
    return Match(hw, iface)


def formatted(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The formatted text of each captured log event."""
    return [formatEvent(dict(e)) for e in events]
