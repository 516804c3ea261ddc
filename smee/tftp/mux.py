# -*- test-case-name: tests.test_tftp_mux -*-
"""One reactor reader for the sockets of every transfer.

Each transfer keeps its own UDP socket (its TID, RFC 1350), but the sockets
are not handed to the reactor one by one: they sit in an inner
``select.epoll`` whose own descriptor is the only thing the reactor watches.
Why: for each readable descriptor Twisted's epoll reactor runs a logging
context switch (``callWithLogger``) and ``udp.Port.doRead`` reads until
``recvfrom`` raises ``BlockingIOError`` (an exception per wake-up). Here one
reactor event serves every transfer whose ACK has arrived, and each ready
socket is read exactly once per round: the inner epoll is level-triggered,
so a socket with more datagrams queued is simply reported again next round,
and no read ever has to fail to find out that the queue is empty.

Timers stay on the reactor and sessions stay sans-I/O; a :class:`MuxPort`
offers what :class:`smee.tftp.protocol.SessionProtocol` uses of a Twisted UDP
port (``socket``, ``write``, ``getHost``, ``stopListening``), so the
protocol code is the same under both.

Only the stock epoll reactor gets a mux (:func:`supported`); any other
reactor, and the fake ones of the tests, keep ``reactor.listenUDP``.
"""

from __future__ import annotations

import errno
import select
import socket
from typing import Any

from twisted.internet import address, defer
from twisted.internet.error import CannotListenError, MessageLengthError
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["MuxPort", "TransferMux", "supported"]

log = Logger(namespace="smee.tftp")

#: Largest datagram read from a transfer socket (what Twisted's UDP port reads):
#: a transfer only ever receives ACKs and ERRORs; anything longer is truncated.
MAX_DATAGRAM = 8192

#: Most polls of the inner set per reactor event (see :meth:`TransferMux.doRead`).
ROUNDS = 4


def supported(reactor: Any) -> bool:
    """Whether ``reactor`` is the stock epoll reactor (the only one the mux is used with)."""
    if not hasattr(select, "epoll"):
        return False
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return False
    return isinstance(reactor, EPollReactor)


class MuxPort:
    """One transfer's UDP socket, read by a :class:`TransferMux` (its ``protocol`` gets the datagrams).

    Closing it (``stopListening``) takes the socket out of the mux and
    closes it exactly once, then stops the protocol, as a Twisted port does.
    """

    __slots__ = ("_deliver", "_fd", "_host", "_mux", "_recvfrom", "protocol", "socket")

    def __init__(self, mux: TransferMux, sock: socket.socket, protocol: Any) -> None:
        self.socket: socket.socket | None = sock
        self.protocol = protocol
        self._mux: TransferMux | None = mux
        self._fd = sock.fileno()
        host, port = sock.getsockname()[:2]
        self._host = (address.IPv6Address if sock.family == socket.AF_INET6 else address.IPv4Address)(
            "UDP", host, port)
        self._recvfrom = sock.recvfrom
        #: the protocol's ``datagramReceived``, looked up once
        self._deliver = protocol.datagramReceived

    @property
    def listening(self) -> bool:
        return self.socket is not None

    def fileno(self) -> int:
        return self._fd if self.socket is not None else -1

    def getHost(self) -> Any:
        return self._host

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram, with the error handling of Twisted's ``udp.Port.write``."""
        sock = self.socket
        if sock is None:
            return
        while True:
            try:
                sock.sendto(datagram, addr)
                return
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.EMSGSIZE:
                    raise MessageLengthError("message too long") from e
                if e.errno == errno.ECONNREFUSED:
                    return  # an ICMP error for an earlier datagram: nothing to do with this one
                raise

    def stopListening(self) -> defer.Deferred[None]:
        """Leave the mux, close the socket (once), stop the protocol."""
        sock, self.socket = self.socket, None
        if sock is None:
            return defer.succeed(None)
        mux, self._mux = self._mux, None
        if mux is not None:
            mux._forget(self._fd)
        sock.close()
        self.protocol.doStop()
        return defer.succeed(None)

    loseConnection = stopListening

    def __repr__(self) -> str:
        return f"<MuxPort {self._host.host}:{self._host.port} fd={self.fileno()}>"


class TransferMux:
    """An IReadDescriptor for the reactor, an epoll set of :class:`MuxPort` inside.

    :param reactor: IReactorFDSet (``addReader``/``removeReader``); the mux
        registers itself at once and stays registered until :meth:`close`
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._epoll: select.epoll | None = select.epoll()
        self._ports: dict[int, MuxPort] = {}
        self._reading = True
        reactor.addReader(self)

    # --- transfer sockets ---------------------------------------------------

    @property
    def ports(self) -> int:
        """Open transfer sockets (tests, health)."""
        return len(self._ports)

    def listen(self, protocol: Any, interface: str = "") -> MuxPort:
        """What ``reactor.listenUDP(0, protocol, interface=...)`` does, on a socket of the mux.

        Raises :class:`CannotListenError` like ``listenUDP`` when no socket
        can be opened or bound; nothing is left open then.
        """
        if self._epoll is None:
            raise CannotListenError(interface, 0, OSError(errno.EBADF, "transfer mux closed"))
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as e:
            raise CannotListenError(interface, 0, e) from None
        try:
            sock.setblocking(False)
            sock.bind((interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        except OSError as e:
            sock.close()
            raise CannotListenError(interface, 0, e) from None
        port = MuxPort(self, sock, protocol)
        self._ports[port.fileno()] = port
        protocol.makeConnection(port)
        return port

    def _forget(self, fd: int) -> None:
        """A port is closing: out of the epoll set (before its socket is closed)."""
        if self._ports.pop(fd, None) is not None and self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already gone: nothing to undo

    # --- IReadDescriptor -------------------------------------------------------

    def fileno(self) -> int:
        epoll = self._epoll
        return epoll.fileno() if epoll is not None else -1

    def logPrefix(self) -> str:
        return "smee.tftp.mux"

    def doRead(self) -> None:
        """Read one datagram from each ready transfer socket; never raises.

        With one transfer open there is nothing to ask the inner epoll: its
        socket is the one that is ready (a lockstep transfer's ACK), and it
        is read directly, one system call less per block. (Not polling the
        inner set leaves its ready list as it is; the kernel checks each
        entry again before reporting the set readable, so the reactor is not
        woken for a socket already read.) With several, while a round finds
        two or more sockets ready (many transfers at once) the set is polled
        again, up to :data:`ROUNDS` times: the ACKs that arrived meanwhile are
        served in the same reactor event; a round with one ready socket ends
        it. A failure of one port is logged and does not stop the others
        (nor the mux: an exception here would make the reactor drop it).
        """
        epoll = self._epoll
        if epoll is None:
            return
        ports = self._ports
        if len(ports) == 1:
            self._read(next(iter(ports.values())))
            return
        for _ in range(ROUNDS):
            try:
                events = epoll.poll(0)
            except OSError:
                log.failure("TFTP transfer mux: epoll failed")
                return
            for fd, _ in events:
                port = ports.get(fd)
                if port is None:
                    continue  # closed earlier in this round
                try:
                    data, addr = port._recvfrom(MAX_DATAGRAM)
                except OSError:
                    # BlockingIOError (a stale event), or an ICMP error for an
                    # earlier datagram (ECONNREFUSED): the read consumed it.
                    continue
                try:
                    port._deliver(data, addr)
                except Exception:
                    log.failure("TFTP transfer mux: error handling a datagram on {port!r}", port=port)
            if len(events) < 2 or self._epoll is None:
                return

    @staticmethod
    def _read(port: MuxPort) -> None:
        """One datagram from ``port`` to its protocol (the loop of :meth:`doRead`, for one port)."""
        try:
            data, addr = port._recvfrom(MAX_DATAGRAM)
        except OSError:
            return
        try:
            port._deliver(data, addr)
        except Exception:
            log.failure("TFTP transfer mux: error handling a datagram on {port!r}", port=port)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the mux (it is shutting down): transfers close as they end."""
        self._reading = False

    # --- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Stop reading and close every socket left and the epoll object; idempotent."""
        if self._epoll is None:
            return
        for port in list(self._ports.values()):
            port.stopListening()
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)
        epoll, self._epoll = self._epoll, None
        epoll.close()
