"""What every listening component says when it cannot bind: one line an operator can act on."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service


class BindError(SystemExit):
    """A component cannot listen; twistd exits with this one line instead of a traceback."""


def bind_hint(e: OSError, in_use: str, not_local: str) -> str:
    """The likely cause of a failed ``bind()``, in the words of the option to change."""
    if e.errno == errno.EADDRINUSE:
        return f" ({in_use})"
    if e.errno == errno.EACCES:
        return " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if e.errno == errno.EADDRNOTAVAIL:
        return f" ({not_local})"
    return ""


class ListeningService(Service):
    """A service with one listening port, bound before twistd drops privileges.

    twistd calls ``privilegedStartService`` as root (ports 67/69/80), then
    switches to ``-u/-g`` and calls ``startService``; ``twist`` and tests call
    only ``startService``. Either way the port is bound exactly once, by
    ``_listen`` in the subclass, which sets ``self.port``.
    """

    port: Any = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        if self.port is None:
            self._listen()

    def startService(self) -> None:
        Service.startService(self)
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        raise NotImplementedError


#: Receive buffer asked for on every UDP socket: a boot storm's first burst (hundreds of
#: DISCOVERs or RRQs at once) overflows Linux's default ~208 KiB and costs each dropped
#: client a retransmission timeout (1 s or more).
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def grow_receive_buffer(sock: Any, wanted: int = UDP_RECEIVE_BUFFER) -> tuple[int, str]:
    """Ask for a ``wanted``-byte receive buffer; returns (bytes granted, a note if short).

    SO_RCVBUFFORCE passes ``net.core.rmem_max`` but needs CAP_NET_ADMIN (root at
    start-up); otherwise SO_RCVBUF gives at most rmem_max, and the note says how
    to raise it. The kernel reports twice the size it was given (its bookkeeping).
    """
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, wanted)
            break
        except OSError:
            continue
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2
    if granted >= wanted:
        return granted, ""
    return granted, (f"receive buffer is {granted // 1024} KiB, not {wanted // 1024} KiB: a burst of "
                     f"requests may be dropped; start as root or raise sysctl net.core.rmem_max to {wanted}")


#: Pending connections the HTTP port queues (Twisted's default is 50): in a boot storm hundreds of
#: iPXE clients connect at once, and an overflow costs each one a SYN retransmission (1 s or more).
#: The kernel caps it at net.core.somaxconn.
TCP_LISTEN_BACKLOG = 1024


def grow_port_buffer(port: Any, what: str, log: Any) -> int | None:
    """:func:`grow_receive_buffer` for a listening Twisted UDP port; warns if it falls short.

    Returns the granted size, or None when the port has no real socket (test reactors).
    """
    sock = getattr(port, "socket", None)
    if sock is None or not hasattr(sock, "setsockopt"):
        return None
    granted, short = grow_receive_buffer(sock)
    if short:
        log.warn("{what} socket: {note}", what=what, note=short)
    return granted


def sendto_of(transport: Any) -> Callable[[bytes, tuple[str, int]], Any] | None:
    """The ``sendto`` of a real UDP port's socket; None for anything else (test transports).

    DHCP and TFTP send replies straight to it: the address came from the
    socket, so the checks ``Port.write`` makes on every datagram are moot;
    on OSError they fall back to ``transport.write``, which handles errors.
    """
    sock = getattr(transport, "socket", None)
    sendto = getattr(sock, "sendto", None)
    return sendto if callable(sendto) else None
