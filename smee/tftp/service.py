# -*- test-case-name: tests.test_tftp_protocol -*-
"""The TFTP service: one listening UDP socket, the binaries loaded once.

Binding happens in :meth:`TFTPService.privilegedStartService`, so that
``twistd -u/-g`` binds port 69 as root and then drops privileges (the
per-transfer ports are ephemeral and need no privilege).

The largest block size is fixed here, at start-up, from the MTU of the
interface holding ``--tftp-addr``: a DATA packet larger than the path MTU
is fragmented, and many PXE ROMs cannot reassemble fragments, so a
``--tftp-block-size`` above what fits one frame would make them hang.
"""

from __future__ import annotations

import resource
import socket
from ipaddress import IPv4Address
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from smee import netif
from smee.listen import BindError, ListeningService, bind_hint, grow_port_buffer
from smee.tftp.protocol import LARGEST_BLKSIZE, TFTPConfig, TFTPServerProtocol

__all__ = ["TFTPBindError", "TFTPService", "ensure_fd_limit", "interface_for", "makeService", "max_blksize"]

log = Logger(namespace="smee.tftp")

#: IPv4 header (20) + UDP header (8) + TFTP DATA header (4).
DATA_OVERHEAD = 32

#: Seconds ``twistd smee`` lets transfers in progress finish after SIGTERM
#: before stopping them (ERROR 0 "server shutting down").
DRAIN_TIMEOUT = 10.0

#: How often the drain looks whether the transfers have ended.
DRAIN_POLL = 0.1

#: The MTU assumed when the interface of --tftp-addr cannot be found (0.0.0.0,
#: a secondary address): Ethernet's, the common case on provisioning networks.
FALLBACK_MTU = 1500

#: Largest datagram read on the listening port. Twisted reads 8192 bytes by
#: default and silently cuts longer datagrams, so a long RRQ (a long name,
#: many options) would be "malformed" (its last field unterminated) instead
#: of refused for what it is; reading whole datagrams costs nothing extra.
MAX_REQUEST = 65535

#: Descriptors kept beyond one per transfer (--tftp-max-sessions) when
#: raising the open-file limit: the listening sockets, the transfer mux,
#: log files, the HTTP server's connections, the backend's.
FD_MARGIN = 256


class TFTPBindError(BindError):
    """The TFTP socket could not be opened; the text names the option and the OS error.

    A SystemExit like the DHCP service's: twistd prints the one line and exits
    non-zero instead of half-starting with a traceback.
    """


def interface_for(
    address: IPv4Address,
    names: Callable[[], list[tuple[int, str]]] = socket.if_nameindex,
    ipv4: Callable[[str], IPv4Address | None] = netif.interface_ipv4,
) -> str | None:
    """The interface whose primary IPv4 address is ``address``, or None.

    Only the primary address is seen (SIOCGIFADDR): a secondary address
    falls back to :data:`FALLBACK_MTU`, which is safe on Ethernet.
    """
    if address.is_unspecified:
        return None
    for _, name in names():
        if ipv4(name) == address:
            return name
    return None


def max_blksize(
    setting: int,
    address: IPv4Address,
    *,
    names: Callable[[], list[tuple[int, str]]] = socket.if_nameindex,
    ipv4: Callable[[str], IPv4Address | None] = netif.interface_ipv4,
    mtu: Callable[[str], int | None] = netif.interface_mtu,
) -> tuple[int, str]:
    """The largest blksize to grant, and where the cap came from (for the start-up log).

    ``min(--tftp-block-size, MTU − 32, 65464)``, the MTU being that of the
    interface holding ``address``.
    """
    name = interface_for(address, names, ipv4)
    found = mtu(name) if name is not None else None
    if found is None:
        link, where = FALLBACK_MTU, f"MTU {FALLBACK_MTU} assumed (no interface has {address} as its address)"
    else:
        link, where = found, f"MTU {found} of {name}"
    return max(512, min(setting, link - DATA_OVERHEAD, LARGEST_BLKSIZE)), where


def ensure_fd_limit(
    needed: int,
    *,
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
) -> tuple[int, str | None]:
    """Raise the soft open-file limit to ``needed`` if it is lower; (the limit now, a warning or None).

    Each transfer has its own socket (one descriptor), and a soft limit of
    1024 (a common default) is below --tftp-max-sessions' default plus what
    the process already has open: the last transfers would be refused "no
    transfer port" before the cap is reached. Go's runtime raises this limit
    at start-up for the same reason; here only as far as needed, and never
    above the hard limit (which only root may raise).
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft, None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft < needed:
        return soft, (
            f"open-file limit {soft} is below the {needed} descriptors --tftp-max-sessions needs "
            f"(hard limit {hard}): transfers past it will be refused (raise 'ulimit -n' or lower "
            "--tftp-max-sessions)"
        )
    return soft, None


def _bind_error(address: tuple[str, int], e: OSError) -> TFTPBindError:
    hint = bind_hint(
        e, "another TFTP server is listening; stop it or choose another --tftp-port",
        "not an address of this host; set --tftp-addr to one",
    )
    return TFTPBindError(
        f"smee: --tftp-addr={address[0]} --tftp-port={address[1]}: cannot listen for TFTP on "
        f"{address[0]}:{address[1]}{hint}: {e.strerror or e}"
    )


class TFTPService(ListeningService):
    """Serve TFTP on ``address``; ``protocol`` and ``port`` are set while running."""

    def __init__(
        self,
        binaries: Any,
        backend: Any,
        config: TFTPConfig,
        reactor: Any,
        address: tuple[Any, int] = ("0.0.0.0", 69),
        *,
        protocol_factory: Callable[..., TFTPServerProtocol] = TFTPServerProtocol,
        blksize_note: str = "",
        chainloads: Any = None,
        drain_timeout: float = 0.0,
        metrics: Any = None,
        timeline: Any = None,
        fd_limit: Callable[[int], tuple[int, str | None]] | None = None,
    ) -> None:
        #: raises the open-file limit for --tftp-max-sessions transfer sockets
        #: (:func:`ensure_fd_limit`; None: leave it alone, e.g. in tests)
        self.fd_limit = fd_limit
        self.chainloads = chainloads
        self.metrics = metrics
        self.timeline = timeline
        #: > 0: stopService stops accepting requests at once but lets transfers in
        #: progress finish for up to this many seconds (one port per transfer only)
        self.drain_timeout = drain_timeout
        self.binaries = binaries
        self.backend = backend
        self.config = config
        self.reactor = reactor
        self.address = (str(address[0]), int(address[1]))
        self.protocol_factory = protocol_factory
        self.blksize_note = blksize_note
        self.port: Any = None
        self.protocol: TFTPServerProtocol | None = None

    def stopService(self) -> defer.Deferred[Any]:
        Service.stopService(self)
        port, protocol, self.port, self.protocol = self.port, self.protocol, None, None
        if (
            self.drain_timeout > 0 and port is not None and protocol is not None
            and not self.config.single_port and protocol.in_progress
        ):
            return self._drain(port, protocol)
        if protocol is not None:
            # Now, not when the port's connectionLost runs a reactor turn later:
            # no session may retransmit after stopService returned.
            protocol.stopTransfers()
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def _drain(self, port: Any, protocol: TFTPServerProtocol) -> defer.Deferred[Any]:
        """Close the listening port now, stop what is left after ``drain_timeout`` seconds.

        Each transfer has its own port, so closing port 69 refuses nothing in
        flight. Closing it runs the protocol's ``stopProtocol`` (which stops
        every transfer) only when its ``numPorts`` drops to 0: holding one
        count for the drain keeps the transfers running until it ends. In
        single-port mode transfers share port 69: they are stopped at once.
        """
        protocol.numPorts += 1
        stopped = defer.maybeDeferred(port.stopListening)
        deadline = self.reactor.seconds() + self.drain_timeout
        log.info(
            "TFTP stopped listening; waiting up to {timeout:g}s for {count} transfers in progress",
            timeout=self.drain_timeout, count=protocol.in_progress,
        )
        done: defer.Deferred[Any] = defer.Deferred()

        def check() -> None:
            left = protocol.in_progress
            if left and self.reactor.seconds() < deadline:
                self.reactor.callLater(DRAIN_POLL, check)
                return
            if left:
                log.warn(
                    "TFTP: {count} transfers still in progress after {timeout:g}s: stopping them",
                    count=left, timeout=self.drain_timeout,
                )
            else:
                log.info("TFTP: transfers in progress finished")
            protocol.numPorts -= 1
            protocol.stopTransfers()
            # The listening port's stopProtocol ran while the drain held it: close the mux here.
            protocol.closeMux()
            done.callback(None)

        check()
        return defer.gatherResults([stopped, done]).addCallback(lambda _: None)

    def _listen(self) -> None:
        host, number = self.address
        protocol = self.protocol_factory(
            self.binaries, self.backend, self.config, self.reactor, host, chainloads=self.chainloads,
            metrics=self.metrics, timeline=self.timeline,
        )
        if self.fd_limit is not None and not self.config.single_port:
            limit, warning = self.fd_limit(self.config.max_sessions + FD_MARGIN)
            if warning is not None:
                log.warn("TFTP: {warning}", warning=warning, limit=limit)
        try:
            self.port = self.reactor.listenUDP(number, protocol, interface=host, maxPacketSize=MAX_REQUEST)
        except CannotListenError as e:
            error = e.socketError if isinstance(e.socketError, OSError) else OSError(str(e.socketError))
            raise _bind_error(self.address, error) from None
        grow_port_buffer(self.port, "TFTP", log)
        self.protocol = protocol
        bound = self.port.getHost()
        c = self.config
        log.info(
            "TFTP listening on {host}:{port}, {ports}, blksize up to {blksize} ({note}), "
            "{count} binaries from {ipxe_dir}",
            host=bound.host, port=bound.port,
            ports="single port" if c.single_port else "one port per transfer",
            blksize=c.max_blksize, note=self.blksize_note,
            count=len(self.binaries.available()), ipxe_dir=c.ipxe_dir, mode=c.mode,
        )


def makeService(settings: Any, runtime: Any, reactor: Any) -> TFTPService:
    """The ``tftp`` child of ``twistd smee``: --tftp-addr:--tftp-port, binaries from --ipxe-dir."""
    cap, note = max_blksize(settings.tftp_block_size, settings.tftp_addr)
    config = TFTPConfig.from_settings(
        settings, max_blksize=cap, ipxe_dir=runtime.binaries.directory, dhcp=runtime.dhcp,
    )
    return TFTPService(
        runtime.binaries, runtime.backend, config, reactor, (str(settings.tftp_addr), settings.tftp_port),
        blksize_note=note, chainloads=runtime.chainloads,
        metrics=runtime.metrics, timeline=runtime.timeline, drain_timeout=DRAIN_TIMEOUT,
        fd_limit=ensure_fd_limit,
    )
