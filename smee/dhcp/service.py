# -*- test-case-name: tests.test_dhcp_socket -*-
"""The DHCP service: one UDP socket per interface, each with its own protocol.

Twisted's ``listenUDP`` cannot set socket options before ``bind``, and
SO_BINDTODEVICE must be set before binding for several interfaces to share
``0.0.0.0:67``. So the sockets are made here, configured, bound, and handed
to the reactor with ``adoptDatagramPort``.

Binding happens in :meth:`DHCPService.privilegedStartService`, so that
``twistd -u/-g`` binds port 67 as root and then drops privileges. Twisted's
UDP has no IP_PKTINFO, so one socket per interface is also how a request's
ingress interface is known (python-stack.md §3.1).
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from smee.dhcp.protocol import (
    DEFAULT_LOOKUP_TIMEOUT,
    DEFAULT_RATE_BURST,
    DHCPServerProtocol,
)
from smee.listen import BindError, bind_hint, grow_receive_buffer

__all__ = ["DHCPService", "DHCPBindError", "makeService", "open_socket"]

log = Logger(namespace="smee.dhcp")

# Linux value; the socket module has it on Linux, the fallback keeps imports working elsewhere.
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


class DHCPBindError(BindError):
    """A DHCP socket could not be opened; the text names the option and the OS error.

    A SystemExit, like the tap's other start-up errors: twistd prints the
    one line and exits non-zero instead of half-starting with a traceback.
    """


def _where(address: tuple[str, int], iface: str) -> str:
    return f"{address[0]}:{address[1]}" + (f" (iface {iface})" if iface else "")


def open_socket(address: tuple[str, int], iface: str = "") -> socket.socket:
    """A non-blocking UDP socket bound to ``address``, on device ``iface`` if given.

    SO_REUSEADDR, SO_BROADCAST and SO_BINDTODEVICE are all set before bind.
    Raises :class:`DHCPBindError` naming ``--dhcp-iface`` or ``--dhcp-addr``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        _, short = grow_receive_buffer(sock)
        if short:
            log.warn("DHCP socket {where}: {note}", where=_where(address, iface), note=short)
        if iface:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.encode())
            except OSError as e:
                hint = ""
                if e.errno == errno.ENODEV:
                    hint = " (no such network interface)"
                elif e.errno == errno.EPERM:
                    hint = " (this kernel needs CAP_NET_RAW for SO_BINDTODEVICE)"
                raise DHCPBindError(
                    f"smee: --dhcp-iface={iface}: cannot bind a DHCP socket to interface {iface!r}{hint}: {e}"
                ) from None
        try:
            sock.bind(address)
        except OSError as e:
            hint = bind_hint(
                e, "another DHCP server is listening; stop it or use --dhcp-iface",
                "not an address of this host; keep 0.0.0.0 and use --dhcp-iface",
            )
            raise DHCPBindError(
                f"smee: --dhcp-addr={address[0]}:{address[1]}: cannot listen for DHCP on "
                f"{_where(address, iface)}{hint}: {e}"
            ) from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class DHCPService(Service):
    """Serve DHCP on ``address`` once per interface in ``ifaces`` (all interfaces when empty).

    ``protocols`` and ``ports`` (Twisted UDP ports) are filled while running,
    in ``ifaces`` order. ``server_port``/``client_port`` replace ports 67/68
    in reply destinations (tests use them to catch replies on loopback).
    ``log_level`` is ``--log-level``: the protocols skip building events the
    observer would drop (the default, debug, builds them all).
    ``rate_limit``/``rate_burst`` are ``--dhcp-rate-limit``/``--dhcp-rate-burst``,
    each protocol's per-MAC limit (0, the default here, is off).
    """

    def __init__(
        self,
        backend: Any,
        config: Any,
        reactor: Any,
        address: tuple[Any, int] = ("0.0.0.0", 67),
        ifaces: Iterable[str] = (),
        *,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
        server_port: int = 67,
        client_port: int = 68,
        protocol_factory: Callable[..., DHCPServerProtocol] = DHCPServerProtocol,
        chainloads: Any = None,
        metrics: Any = None,
        timeline: Any = None,
        log_level: str = "debug",
        reply_cache: int | None = None,
        rate_limit: float = 0.0,
        rate_burst: int = DEFAULT_RATE_BURST,
    ) -> None:
        self.backend = backend
        #: passed to each protocol: requests/s and burst per client MAC (0: no limit)
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        #: passed to each protocol as ``memo_size`` (--dhcp-reply-cache; None: the protocol's default)
        self.reply_cache = reply_cache
        #: passed to each protocol: events below it are not even built (--log-level)
        self.log_level = log_level
        self.chainloads = chainloads
        self.metrics = metrics
        self.timeline = timeline
        self.config = config
        self.reactor = reactor
        self.address = (str(address[0]), int(address[1]))
        self.ifaces = tuple(ifaces)
        self.lookup_timeout = lookup_timeout
        self.server_port = server_port
        self.client_port = client_port
        self.protocol_factory = protocol_factory
        self.ports: list[Any] = []
        self.protocols: list[DHCPServerProtocol] = []

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        if not self.ports:
            self._listen()

    def startService(self) -> None:
        Service.startService(self)
        if not self.ports:  # started without privilegedStartService (``twist``, tests)
            self._listen()

    def stopService(self) -> defer.Deferred[Any]:
        Service.stopService(self)
        ports, self.ports, self.protocols = self.ports, [], []
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports], consumeErrors=True
        )

    def _listen(self) -> None:
        """Open every socket or none: a failure closes what was opened, then raises."""
        mode = getattr(self.config, "mode", "")
        try:
            for iface in self.ifaces or ("",):
                sock = open_socket(self.address, iface)
                try:
                    protocol = self.protocol_factory(
                        self.backend, self.config, self.reactor, iface,
                        lookup_timeout=self.lookup_timeout,
                        server_port=self.server_port, client_port=self.client_port,
                        chainloads=self.chainloads, metrics=self.metrics, timeline=self.timeline,
                        log_level=self.log_level, memo_size=self.reply_cache,
                        rate_limit=self.rate_limit, rate_burst=self.rate_burst,
                    )
                    port = self.reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET, protocol)
                finally:
                    sock.close()  # the reactor holds its own duplicate
                port.setBroadcastAllowed(True)
                self.ports.append(port)
                self.protocols.append(protocol)
                host = port.getHost()
                log.info(
                    "DHCP listening on {host}:{port} ({where}), mode {mode}",
                    host=host.host, port=host.port,
                    where=f"iface {iface}" if iface else "all interfaces",
                    iface=iface, mode=mode,
                )
        except BaseException:
            for port in self.ports:
                port.stopListening()
            self.ports, self.protocols = [], []
            raise


def makeService(settings: Any, runtime: Any, reactor: Any) -> DHCPService:
    """The ``dhcp`` child of ``twistd smee``: --dhcp-addr on each --dhcp-iface."""
    host, port = settings.dhcp_addr
    return DHCPService(
        runtime.backend, runtime.dhcp, reactor, (str(host), port), settings.dhcp_iface,
        chainloads=runtime.chainloads, metrics=runtime.metrics, timeline=runtime.timeline,
        log_level=settings.log_level, reply_cache=settings.dhcp_reply_cache,
        rate_limit=settings.dhcp_rate_limit, rate_burst=settings.dhcp_rate_burst,
    )
