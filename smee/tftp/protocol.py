# -*- test-case-name: tests.test_tftp_protocol -*-
"""The TFTP server protocol: read requests in, transfers out.

Thin on purpose, like :mod:`smee.dhcp.protocol`: the codec
(:mod:`smee.tftp.packet`), the transfer state machine
(:mod:`smee.tftp.session`) and the file names and contents
(:mod:`smee.tftp.files`) do the work; this module wires them to sockets and
the backend, gates who may netboot, bounds every wait and logs outcomes.

Two ways to carry a transfer, chosen by ``--tftp-single-port``:

* **per-transfer port** (default, RFC 1350 TIDs): each transfer gets its own
  UDP port, bound to the listening address (not 0.0.0.0: the replies must
  come from the address the client asked, and Twisted's UDP has no
  IP_PKTINFO to learn the arrival address of a request on a wildcard
  socket, so ``--tftp-addr`` should be a real address, as Smee's
  ``<public-ip>`` default is). The port is not ``connect()``-ed, so a packet
  from another TID still arrives and can be answered with ERROR 5 as RFC 1350
  asks, without disturbing the transfer. Under the epoll reactor these
  sockets are read by one :class:`smee.tftp.mux.TransferMux` (one reactor
  event for every ACK that is in, no failing read per wake-up), and a window
  of DATA goes out in one UDP GSO send (:mod:`smee.tftp.gso`).
* **single port** (Smee's behaviour, for clients behind NAT): every packet
  goes through the listening port, and transfers are told apart by the
  client's (ip, port). A new RRQ from the same (ip, port) replaces the
  transfer in progress: it is a retransmitted request or a UEFI ROM starting
  over, and the old transfer could never be finished anyway.

Packets on the listening port that are not requests: an ERROR is dropped
without an answer (RFC 1350 never answers an ERROR, and two servers must not
ping-pong); DATA/ACK/OACK that belong to no transfer get ERROR 5 "unknown
transfer ID", which is what they are (a transfer that ended or was
reclaimed) and which tells a confused client to stop rather than wait out
its timeouts. Undecodable datagrams are logged and dropped: answering
garbage (possibly with a forged source) would make smee a reflector.

Nothing that arrives on the wire and nothing a backend does makes
``datagramReceived`` raise or leaves a Deferred failing unhandled.
"""

from __future__ import annotations


import math
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as LookupTimeout
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from smee.listen import sendto_of as _sendto_of
from smee.backends import LookupFailed
from smee.tftp import files as _files
from smee.tftp.blocks import BlockCache
from smee.tftp.gso import GSOUnavailable, send_segments
from smee.tftp.mux import TransferMux
from smee.tftp.mux import supported as _mux_supported
from smee.tftp.packet import (
    ACK,
    ERR_ACCESS,
    ERR_NOT_FOUND,
    ERR_UNDEFINED,
    ERR_UNKNOWN_TID,
    ERROR,
    RRQ,
    WRQ,
    Error,
    Request,
    TFTPParseError,
    encode_error,
    parse,
)
from smee.tftp.session import MIN_TIMEOUT, OPTIONS, ReadSession, negotiate, to_netascii

__all__ = [
    "TFTPConfig",
    "TFTPServerProtocol",
    "SessionProtocol",
    "DEFAULT_LOOKUP_TIMEOUT",
    "AUTOEXEC",
    "LARGEST_BLKSIZE",
]

log = Logger(namespace="smee.tftp")

#: Seconds a backend lookup may take before the request is refused: the same
#: bound as DHCP's; a PXE ROM has retransmitted its RRQ long before that.
DEFAULT_LOOKUP_TIMEOUT = 3.0

#: The script iPXE asks for first; generated per client, never read from disk.
AUTOEXEC = _files.AUTOEXEC

#: RFC 2348's largest block size (65535 − 20 IP − 8 UDP − 4 TFTP header, rounded by the RFC).
LARGEST_BLKSIZE = 65464

_MODES = ("octet", "netascii")

#: The first two bytes of an ERROR datagram.
_ERROR_OPCODE = ERROR.to_bytes(2, "big")

#: The ``file`` label of requests for names smee does not serve.
_OTHER = "other"

#: Most characters of a client-supplied text (a refused file name, a parse
#: error, a client's ERROR message) quoted in an ERROR or a log line.
SHOWN_MAX = 128


@dataclass(frozen=True)
class TFTPConfig:
    """The settings the TFTP server reads, resolved once at start-up."""

    #: the DHCP mode: only "reservation" gates by the client's hardware record
    mode: str
    #: largest blksize granted (--tftp-block-size, capped by the interface MTU)
    max_blksize: int = 512
    #: retransmission timeout per packet, seconds (--tftp-timeout)
    timeout: float = 5.0
    #: retransmissions before a transfer is abandoned (--tftp-retries)
    retries: int = 5
    #: most transfers (including requests waiting for the backend) at once
    max_sessions: int = 1024
    #: carry every transfer on the listening port (--tftp-single-port)
    single_port: bool = False
    #: where the binaries come from, for "not found" messages
    ipxe_dir: str = ""
    #: the DHCP settings autoexec.ipxe is generated from (script URL, …)
    dhcp: Any = None
    lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Any, max_blksize: int, ipxe_dir: str, dhcp: Any) -> TFTPConfig:
        """Build from :class:`smee.config.Settings`; the caller works out the MTU cap and the directory."""
        return cls(
            mode=settings.dhcp_mode,
            max_blksize=max_blksize,
            timeout=settings.tftp_timeout,
            retries=settings.tftp_retries,
            max_sessions=settings.tftp_max_sessions,
            single_port=settings.tftp_single_port,
            ipxe_dir=ipxe_dir,
            dhcp=dhcp,
        )


def _client(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _shown(text: str) -> str:
    """A client-supplied text as it may be quoted in an ERROR or a log line: printable ASCII, bounded.

    A requested name is the client's bytes as latin-1, as long as a
    datagram: quoted verbatim, every refusal would be as large as the
    request (a reflector for forged sources; past 65507 bytes it could not
    even be sent) and would carry control characters to consoles. Short
    printable names are quoted as they are, so refusals read as before.
    """
    if len(text) <= SHOWN_MAX and text.isascii() and text.isprintable():
        return text
    escaped = repr(text[:SHOWN_MAX])[1:-1].encode("ascii", "backslashreplace").decode("ascii")
    if len(text) > SHOWN_MAX:
        escaped += f"... ({len(text)} characters)"
    return escaped


def _bounded(text: str) -> str:
    """``text`` (already printable, e.g. a parse error) cut to a few lines' worth for a log line."""
    limit = 4 * SHOWN_MAX
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _Transfer:
    """One read request from its RRQ until it is refused, finished or stopped.

    It is in the server's table (and counts against the session cap) while
    the backend is being asked, not only once data flows: a flood of
    requests against a slow backend must be bounded too.
    """

    __slots__ = ("client", "filename", "name", "mac", "mode", "options", "started", "size",
                 "lookup", "session", "protocol", "port", "finished")

    def __init__(self, client: tuple[str, int], request: Request, name: str, mac: str | None,
                 started: float) -> None:
        self.client = client
        self.filename = request.filename
        self.name = name
        self.mac = mac
        self.mode = request.mode.lower()
        # Only what negotiate() reads: the rest (junk, or thousands of options
        # in one RRQ) would be held for the whole transfer, per session.
        self.options = {k: v for k, v in request.options.items() if k in OPTIONS}
        self.started = started
        #: bytes of the file as sent (after netascii conversion)
        self.size = 0
        self.lookup: Deferred[Any] | None = None
        self.session: Any = None
        #: the per-transfer port's protocol and listening port (None in single-port mode)
        self.protocol: SessionProtocol | None = None
        self.port: Any = None
        self.finished = False


class SessionProtocol(DatagramProtocol):
    """The socket of one transfer (its TID): packets from the client go to the session.

    A packet from any other (ip, port) gets ERROR 5 and is otherwise
    ignored, so a stray or spoofed packet cannot end someone's transfer;
    an ERROR from a stranger is ignored without an answer.
    The transport is a Twisted UDP port or a :class:`smee.tftp.mux.MuxPort`.
    """

    noisy = False

    def __init__(self, client: tuple[str, int], name: str, shared: Callable[[], bool] = lambda: True) -> None:
        self.client = client
        self.name = name
        #: whether other transfers share the server now (see :meth:`send_many`)
        self.shared = shared
        self.session: Any = None
        #: the port's ``socket.sendto`` while it listens (see :meth:`send`)
        self._sendto: Callable[[bytes, tuple[str, int]], Any] | None = None
        #: the port's ``socket.sendmsg`` while it listens and UDP GSO works on it
        self._sendmsg: Callable[..., Any] | None = None

    def startProtocol(self) -> None:
        self._sendto = _sendto_of(self.transport)
        sendmsg = getattr(getattr(self.transport, "socket", None), "sendmsg", None)
        self._sendmsg = sendmsg if callable(sendmsg) and self._sendto is not None else None

    def stopProtocol(self) -> None:
        self._sendto = None
        self._sendmsg = None

    def send(self, data: bytes) -> None:
        """The session's ``send``: every packet goes to the client's TID.

        Straight to the socket: the client's address came from the socket
        itself, so the checks ``Port.write`` makes on every datagram are
        moot. Any error is left to ``Port.write``, which retries the send and
        handles it exactly as it always has.
        """
        sendto = self._sendto
        if sendto is not None:
            try:
                sendto(data, self.client)
                return
            except OSError:
                pass
        if self.transport is not None:
            self.transport.write(data, self.client)

    def send_many(self, packets: list[bytes]) -> None:
        """The session's ``send_many``: a window in one UDP GSO send while the server is shared.

        GSO costs the server about a third less CPU per block, but the
        client gets the window's first datagram only once the whole window
        is out, where datagram by datagram it starts reading while the rest
        are being sent: a lone transfer (``shared()`` false) is faster that
        way (measured: ~4.0 vs ~5.0 ms per MiB with atftp, windowsize 16,
        over veth), and many at once are bound by the server's CPU.

        What GSO did not send (sizes it cannot cut, an ordinary send error)
        goes through :meth:`send`; a refusal of GSO itself turns it off for
        this socket.
        """
        sent = 0
        sendmsg = self._sendmsg
        if sendmsg is not None and self.shared():
            try:
                sent = send_segments(sendmsg, packets, self.client)
            except GSOUnavailable as e:
                self._sendmsg = None
                sent = e.sent
                log.debug("{file} to {client}: UDP GSO unavailable, one datagram per send: {error}",
                          file=self.name, client=_client(self.client), error=str(e.error))
        send = self.send
        for packet in packets[sent:] if sent else packets:
            send(packet)

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        try:
            # The packet of every window: decoded without a packet object
            # (what ack_block does, inline: this runs once per block).
            if (addr == self.client and self.session is not None
                    and len(data) == 4 and data[1] == ACK and data[0] == 0):
                self.session.ack((data[2] << 8) | data[3])
                return
            if (addr[0], addr[1]) != self.client:
                if data[:2] == _ERROR_OPCODE:
                    # Never answered (RFC 1350), least of all with an ERROR: two
                    # transfer ports answering each other's ERROR 5 would
                    # ping-pong for as long as both live, set off by one
                    # datagram with a forged source.
                    log.debug(
                        "{file} to {client}: ignored ERROR from stranger {src}",
                        file=self.name, client=_client(self.client), src=_client(addr),
                        outcome="stray-error",
                    )
                    return
                log.debug(
                    "{file} to {client}: ERROR 5 to stranger {src}",
                    file=self.name, client=_client(self.client), src=_client(addr),
                    outcome="unknown-tid",
                )
                if self.transport is not None:
                    self.transport.write(encode_error(ERR_UNKNOWN_TID, "unknown transfer ID"), addr)
                return
            try:
                packet = parse(data)
            except TFTPParseError as e:
                log.debug(
                    "{file} to {client}: dropped malformed datagram: {error}",
                    file=self.name, client=_client(addr), error=_bounded(str(e)), outcome="malformed",
                )
                return
            if self.session is not None:
                self.session.received(packet)
        except Exception:
            log.failure(
                "{file} to {client}: error handling a datagram from {src}",
                file=self.name, client=_client(self.client), src=_client(addr), level=LogLevel.error,
            )


class TFTPServerProtocol(DatagramProtocol):
    """Serve read requests received on the listening socket.

    :param binaries: a :class:`smee.tftp.files.Binaries` (``get(name)``)
    :param backend: a :class:`~smee.backends.HardwareBackend` (``by_ip``)
    :param config: the :class:`TFTPConfig`
    :param reactor: IReactorUDP (per-transfer ports) and IReactorTime
        (lookup timeouts, the sessions' retransmissions)
    :param listen_host: the address per-transfer ports bind to (the listening address)
    :param resolve: requested file name → (name, mac) or None (default :func:`smee.tftp.files.resolve`)
    :param autoexec: (DHCPConfig, Match|None) → autoexec.ipxe bytes
    :param session_factory: builds a transfer's state machine (default :class:`~smee.tftp.session.ReadSession`)
    :param metrics: :class:`smee.metrics.Metrics` (``tftp_*``); default: the backend's ``metrics``
        (:class:`smee.metrics.InstrumentedBackend`), else none
    :param timeline: :class:`smee.timeline.BootTimeline`; default: the backend's ``timeline``, else none
    :param mux: how per-transfer sockets are read: None (default) a
        :class:`~smee.tftp.mux.TransferMux` under the epoll reactor and
        ``reactor.listenUDP`` under any other; False always ``listenUDP``;
        or a mux to use (tests)
    """

    noisy = False

    def __init__(
        self,
        binaries: Any,
        backend: Any,
        config: TFTPConfig,
        reactor: Any,
        listen_host: str = "0.0.0.0",
        *,
        resolve: Callable[[str], tuple[str, str | None] | None] = _files.resolve,
        autoexec: Callable[[Any, Any], bytes] = _files.autoexec_for,
        session_factory: Callable[..., Any] = ReadSession,
        chainloads: Any = None,
        metrics: Any = None,
        timeline: Any = None,
        mux: Any = None,
    ) -> None:
        self.binaries = binaries
        self.metrics = metrics
        self.timeline = timeline
        #: :class:`smee.chainload.Chainloads`: MACs we complete a binary transfer to
        self.chainloads = chainloads
        self.backend = backend
        self.config = config
        self.reactor = reactor
        self.listen_host = listen_host
        self._resolve = resolve
        self._autoexec = autoexec
        self._session_factory = session_factory
        #: every transfer in progress, including those waiting for the backend
        self._transfers: set[_Transfer] = set()
        #: single-port mode only: the transfer of each client (ip, port)
        self._by_client: dict[tuple[str, int], _Transfer] = {}
        #: the listening socket's ``sendto`` while it listens (see :meth:`_send`)
        self._sendto: Callable[[bytes, tuple[str, int]], Any] | None = None
        #: the DATA datagrams of the binaries, per block size, shared by their transfers
        self.blocks = BlockCache()
        #: binary name → (contents, their netascii form): converted once, not per transfer
        #: (a 9 MiB ipxe.iso asked for in netascii by every session would be a copy each)
        self._netascii: dict[str, tuple[bytes, bytes]] = {}
        #: the longest ``timeout`` option granted: the server's own, so that a
        #: client cannot make its session outlive what --tftp-timeout allows
        self._max_timeout = max(MIN_TIMEOUT, math.ceil(config.timeout))
        #: the transfer sockets' reader (built at the first transfer when None and wanted)
        self._mux: TransferMux | None = mux if mux not in (None, False, True) else None
        self._want_mux: bool = mux is not False and (mux is not None or _mux_supported(reactor))

    # --- introspection (tests, health) ---------------------------------------

    @property
    def in_progress(self) -> int:
        """Transfers in progress, including requests waiting for the backend."""
        return len(self._transfers)

    # --- metrics ---------------------------------------------------------------

    def _account(self, file: str, outcome: str) -> None:
        """One request ended: tftp_transfers_total{file,outcome}."""
        metrics = self.metrics
        if metrics is not None:
            metrics.child(metrics.tftp_transfers, file, outcome).inc()

    def _junk(self, outcome: str) -> None:
        """A datagram on the listening port that is no read request: tftp_datagrams_total{outcome}.

        Counted only when the metrics have that counter (``tftp_datagrams``):
        tftp_transfers_total counts read requests, and a WRQ or a stray ACK is none.
        """
        metrics = self.metrics
        counter = getattr(metrics, "tftp_datagrams", None)
        if counter is not None:
            metrics.child(counter, outcome).inc()

    # --- Twisted entry points ----------------------------------------------

    def stopProtocol(self) -> None:
        """Stop every transfer: lookups are cancelled, sessions stopped, their ports closed."""
        self._sendto = None
        self.stopTransfers()
        self.closeMux()

    def closeMux(self) -> None:
        """Close the transfer-socket mux (its sockets, its epoll object, its reactor reader); idempotent.

        The next transfer would open a new one: call it once no transfer is left.
        """
        mux, self._mux = self._mux, None
        if mux is not None:
            mux.close()

    def stopTransfers(self) -> None:
        """Stop every transfer in progress; clients with a session get ERROR 0 so they stop waiting."""
        for transfer in list(self._transfers):
            self._stop(transfer, "stopped", notify="server shutting down")

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        client = (addr[0], addr[1])
        try:
            try:
                packet = parse(data)
            except TFTPParseError as e:
                log.info(
                    "dropped malformed TFTP datagram from {client}: {error}",
                    client=_client(client), error=_bounded(str(e)), outcome="malformed",
                )
                self._junk("malformed")
                return
            if isinstance(packet, Request):
                if packet.opcode == RRQ:
                    self._readRequest(packet, client)
                elif packet.opcode == WRQ:
                    log.info(
                        "refused write of {file} from {client}: smee is read-only",
                        file=_shown(packet.filename), client=_client(client), outcome="write-refused",
                    )
                    self._junk("write-refused")
                    self._send(encode_error(ERR_ACCESS, "access violation: smee is read-only"), client)
                return
            transfer = self._by_client.get(client)
            if transfer is not None and transfer.session is not None:
                transfer.session.received(packet)
                return
            if isinstance(packet, Error):
                log.debug(
                    "ignored stray ERROR {code} from {client}: {message}",
                    code=packet.code, message=_shown(packet.message), client=_client(client), outcome="stray-error",
                )
                self._junk("stray-error")
                return
            log.debug(
                "ERROR 5 to {client}: {kind} belongs to no transfer",
                kind=type(packet).__name__, client=_client(client), outcome="unknown-tid",
            )
            self._junk("unknown-tid")
            self._send(encode_error(ERR_UNKNOWN_TID, "unknown transfer ID"), client)
        except Exception:
            log.failure(
                "error handling a TFTP datagram from {client}",
                client=_client(client), level=LogLevel.error,
            )

    # --- one request ---------------------------------------------------------

    def startProtocol(self) -> None:
        self._sendto = _sendto_of(self.transport)

    def _send(self, data: bytes, client: tuple[str, int]) -> None:
        """Straight to the socket when it is a real one, as :meth:`SessionProtocol.send`."""
        sendto = self._sendto
        if sendto is not None:
            try:
                sendto(data, client)
                return
            except OSError:
                pass  # Port.write retries it and handles the error as it always has
        if self.transport is not None:
            self.transport.write(data, client)

    def _refuse(self, client: tuple[str, int], code: int, message: str, level: LogLevel,
                reason: str, **fields: Any) -> None:
        """Answer a request with an ERROR and log why: one line per refused request."""
        log.emit(
            level, "refused {file} to {client}: {reason}",
            client=_client(client), reason=reason, error_code=code, **fields,
        )
        self._send(encode_error(code, message), client)

    def _readRequest(self, request: Request, client: tuple[str, int]) -> None:
        requested = request.filename
        mode = request.mode.lower()
        if mode not in _MODES:
            shown = f"'{_shown(request.mode)}'"
            self._refuse(client, ERR_UNDEFINED, f"unsupported mode {shown}", LogLevel.info,
                         f"unsupported mode {shown}", file=_shown(requested), outcome="bad-mode")
            # Never the raw name as a label: metrics would grow with every typo.
            self._account(_OTHER, "bad-mode")
            return
        resolved = self._resolve(requested)
        if resolved is None:
            shown = _shown(requested)
            self._refuse(client, ERR_NOT_FOUND, f"file [{shown}] not found", LogLevel.info,
                         "no such file", file=shown, outcome="not-found")
            self._account(_OTHER, "not-found")
            return
        name, mac = resolved
        old = self._by_client.get(client) if self.config.single_port else None
        if old is not None:
            # A retransmitted RRQ or a ROM starting over: the old transfer
            # shares the client's TID and could never finish now.
            self._stop(old, "replaced", notify=None)
        if len(self._transfers) >= self.config.max_sessions:
            self._refuse(client, ERR_UNDEFINED, "server busy, try again later", LogLevel.warn,
                         f"{len(self._transfers)} transfers in progress (--tftp-max-sessions)",
                         file=name, outcome="busy")
            self._account(name, "busy")
            return
        transfer = _Transfer(client, request, name, mac, self.reactor.seconds())
        self._transfers.add(transfer)
        if self.metrics is not None:
            self.metrics.tftp_sessions_in_progress.inc()
        if self.config.single_port:
            self._by_client[client] = transfer
        log.debug(
            "RRQ {file} ({requested}) from {client}, mode {mode}, options {options}",
            file=name, requested=requested, client=_client(client), mode=mode,
            options=transfer.options, mac=mac,
        )
        if self.config.mode != "reservation":
            # Proxy modes: the address came from another DHCP server, so it
            # names no hardware record; serve everyone, as Smee does.
            self._serve(None, transfer)
            return
        try:
            d = self.backend.by_ip(IPv4Address(client[0]))
        except Exception:
            self._lookupFailed(Failure(), transfer)
            return
        if not d.called:
            # Only a lookup really outstanding gets a timer (in-memory backends answer at once).
            transfer.lookup = d
            d.addTimeout(self.config.lookup_timeout, self.reactor)
        d.addCallbacks(self._gate, self._lookupFailed, callbackArgs=(transfer,), errbackArgs=(transfer,))

    def _forget(self, transfer: _Transfer) -> None:
        transfer.finished = True
        transfer.lookup = None
        if transfer in self._transfers:
            self._transfers.discard(transfer)
            if self.metrics is not None:
                self.metrics.tftp_sessions_in_progress.dec()
        if self._by_client.get(transfer.client) is transfer:
            del self._by_client[transfer.client]

    def _lookupFailed(self, failure: Failure, transfer: _Transfer) -> None:
        """No trustworthy answer from the backend: ERROR 0 and a log line saying why.

        ERROR 0 ("not defined, see message"), not 2 ("access violation"):
        smee does not know whether this client may boot, and a capture or a
        client log should not claim it was denied. Either code makes a
        client give up this attempt; PXE ROMs start over from DHCP.
        """
        if transfer.finished:
            return  # cancelled by a stop or a replacing request: already accounted for
        self._forget(transfer)
        if not failure.check(CancelledError):
            self._account(
                transfer.name,
                "lookup-timeout" if failure.check(LookupTimeout)
                else "lookup-failed" if failure.check(LookupFailed) else "lookup-error",
            )
        fields = {"file": transfer.name, "client": _client(transfer.client), "error_code": ERR_UNDEFINED}
        if failure.check(LookupTimeout):
            log.warn(
                "refused {file} to {client}: backend lookup by IP timed out after {timeout}s",
                timeout=self.config.lookup_timeout, outcome="lookup-timeout", **fields,
            )
            message = "server error: hardware lookup timed out"
        elif failure.check(CancelledError):
            return
        elif failure.check(LookupFailed):
            log.warn(
                "refused {file} to {client}: backend lookup by IP failed: {error}",
                error=str(failure.value), outcome="lookup-failed", **fields,
            )
            message = "server error: hardware lookup failed"
        else:
            log.failure(
                "refused {file} to {client}: backend lookup by IP raised {error}",
                failure, LogLevel.error,
                error=f"{type(failure.value).__name__}: {failure.value}", outcome="lookup-error", **fields,
            )
            message = "server error: hardware lookup failed"
        self._send(encode_error(ERR_UNDEFINED, message), transfer.client)

    def _gate(self, match: Any, transfer: _Transfer) -> None:
        """Reservation mode: only known machines allowed to netboot get a file."""
        try:
            if transfer.finished:
                return
            transfer.lookup = None
            ip = transfer.client[0]
            if match is None:
                self._forget(transfer)
                self._refuse(transfer.client, ERR_ACCESS, f"access violation: unknown client {ip}",
                             LogLevel.info, f"no hardware record has IP {ip}",
                             file=transfer.name, outcome="unknown-client")
                self._account(transfer.name, "unknown-client")
                return
            mac = match.interface.mac
            if not match.interface.allow_pxe:
                self._forget(transfer)
                self._refuse(transfer.client, ERR_ACCESS, f"access violation: netboot not allowed for {mac}",
                             LogLevel.info, f"netboot not allowed for {mac}",
                             file=transfer.name, mac=mac, hardware=match.hardware.id,
                             outcome="netboot-not-allowed")
                self._account(transfer.name, "netboot-not-allowed")
                return
            self._serve(match, transfer)
        except Exception:
            self._internalError(transfer)

    def _internalError(self, transfer: _Transfer) -> None:
        log.failure(
            "error serving {file} to {client}",
            file=transfer.name, client=_client(transfer.client), level=LogLevel.error,
        )
        if not transfer.finished:
            self._stop(transfer, "internal-error", notify="internal server error")

    def _content(self, match: Any, transfer: _Transfer) -> bytes | None:
        """The bytes to send, or None after refusing (the binary is missing)."""
        if transfer.name == AUTOEXEC:
            try:
                return self._autoexec(self.config.dhcp, match)
            except ValueError as e:
                # An unsafe script URL (a hardware record's ipxe_url with a
                # space, say). "Not found" is what iPXE shrugs off: it goes on
                # with its own DHCP and boot file, which is better than no boot.
                self._forget(transfer)
                self._refuse(transfer.client, ERR_NOT_FOUND,
                             f"file [{AUTOEXEC}] not found: no usable script URL",
                             LogLevel.warn, f"cannot generate {AUTOEXEC}: {e}",
                             file=transfer.name, mac=getattr(getattr(match, "interface", None), "mac", None),
                             outcome="bad-script-url")
                self._account(transfer.name, "bad-script-url")
                return None
        data = self.binaries.get(transfer.name)
        if data is None:
            where = self.config.ipxe_dir or "the iPXE directory"
            self._forget(transfer)
            self._refuse(transfer.client, ERR_NOT_FOUND,
                         f"file [{transfer.name}] not found: no {transfer.name} in {where}",
                         LogLevel.warn, f"no {transfer.name} in {where} (see --ipxe-dir)",
                         file=transfer.name, outcome="binary-missing")
            self._account(transfer.name, "binary-missing")
            return None
        return data

    def _serve(self, match: Any, transfer: _Transfer) -> None:
        """Start the transfer: negotiate options and hand over to a session."""
        try:
            if transfer.mac is None and match is not None:
                transfer.mac = match.interface.mac
            data = self._content(match, transfer)
            if data is None:
                return
            binary = transfer.name != AUTOEXEC
            if transfer.mode == "netascii":
                data, binary = self._asNetascii(transfer.name, data, binary), False
            transfer.size = len(data)
            negotiated = negotiate(transfer.options, len(data), self.config.max_blksize, self.config.timeout,
                                   max_timeout=self._max_timeout)
            def on_done(outcome: str, detail: str) -> None:
                self._finished(transfer, outcome, detail)

            send: Callable[[bytes], None]
            extra: dict[str, Any] = {}
            blocks = self.blocks.blocks(data, negotiated.blksize) if binary else None
            if blocks is not None:
                extra["blocks"] = blocks
            if self.config.single_port:
                client = transfer.client

                def send(packet: bytes) -> None:
                    self._send(packet, client)
            else:
                protocol = SessionProtocol(transfer.client, transfer.name, self._shared)
                try:
                    transfer.port = self._listenTransfer(protocol)
                except CannotListenError as e:
                    self._forget(transfer)
                    self._refuse(transfer.client, ERR_UNDEFINED, "server error: no transfer port",
                                 LogLevel.error, f"cannot open a transfer port on {self.listen_host}: {e}",
                                 file=transfer.name, outcome="no-port")
                    self._account(transfer.name, "no-port")
                    return
                transfer.protocol = protocol
                send = protocol.send
                extra["send_many"] = protocol.send_many
            session = self._session_factory(
                data, negotiated, send, self.reactor, retries=self.config.retries, on_done=on_done, **extra,
            )
            transfer.session = session
            if transfer.protocol is not None:
                transfer.protocol.session = session
            if self.timeline is not None and transfer.mac is not None and transfer.name != AUTOEXEC:
                self.timeline.seen(transfer.mac, "tftp-start", file=transfer.name)
            session.start()
        except Exception:
            self._internalError(transfer)

    def _asNetascii(self, name: str, data: bytes, binary: bool) -> bytes:
        """``data`` in netascii; a binary's conversion is kept (one per name, the binaries never change)."""
        if not binary:
            return to_netascii(data)  # autoexec.ipxe: small and per client
        entry = self._netascii.get(name)
        if entry is None or entry[0] is not data:
            entry = self._netascii[name] = (data, to_netascii(data))
        return entry[1]

    def _shared(self) -> bool:
        """More than one transfer in progress: a window is worth one GSO send (see ``SessionProtocol.send_many``)."""
        return len(self._transfers) > 1

    def _listenTransfer(self, protocol: SessionProtocol) -> Any:
        """A new port for one transfer: on the mux if there is one (see ``mux``), else ``listenUDP``."""
        mux = self._mux
        if mux is None and self._want_mux:
            try:
                mux = self._mux = TransferMux(self.reactor)
            except OSError as e:  # no epoll object (EMFILE…): this transfer goes the Twisted way
                log.warn("TFTP transfer mux unavailable: {error}", error=str(e))
        if mux is not None:
            return mux.listen(protocol, self.listen_host)
        return self.reactor.listenUDP(0, protocol, interface=self.listen_host)

    def _finished(self, transfer: _Transfer, outcome: str, detail: str) -> None:
        """The session ended by itself (done, client error, retries exhausted): one info line."""
        if transfer.finished:
            return
        self._close(transfer)
        if (
            outcome == "complete" and self.chainloads is not None
            and transfer.mac is not None and transfer.name != AUTOEXEC
        ):
            # The machine now runs our iPXE: its next "iPXE" DHCP is not a ROM.
            self.chainloads.served(transfer.mac)
        if (
            outcome == "complete" and self.timeline is not None
            and transfer.mac is not None and transfer.name != AUTOEXEC
        ):
            self.timeline.seen(transfer.mac, "tftp-end", file=transfer.name)
        self._logEnd(transfer, outcome, detail)

    def _close(self, transfer: _Transfer) -> None:
        """Leave the table and release the transfer's port; idempotent."""
        self._forget(transfer)
        port, transfer.port = transfer.port, None
        if transfer.protocol is not None:
            transfer.protocol.session = None
        if port is not None:
            port.stopListening()

    def _logEnd(self, transfer: _Transfer, outcome: str, detail: str) -> None:
        session = transfer.session
        seconds = self.reactor.seconds() - transfer.started
        negotiated = getattr(session, "negotiated", None)
        blksize = getattr(negotiated, "blksize", None)
        windowsize = getattr(negotiated, "windowsize", None)
        sent = getattr(session, "bytes_sent", 0)
        # A transfer that did not complete says how much went out, not the file's size
        # (UEFI's tsize probe ends after the OACK with nothing sent).
        amount = f"{transfer.size} bytes" if outcome == "complete" else f"{min(sent, transfer.size)} of {transfer.size} bytes sent"
        metrics = self.metrics
        if metrics is not None:
            name = transfer.name
            metrics.child(metrics.tftp_transfers, name, outcome).inc()
            metrics.child(metrics.tftp_bytes, name).inc(transfer.size if outcome == "complete" else min(sent, transfer.size))
            metrics.child(metrics.tftp_transfer_seconds, name).observe(max(0.0, seconds))
        log.info(
            "{file} to {client}: {outcome} after {seconds:.3f}s, {amount}, "
            "blksize {blksize}, windowsize {windowsize}{detail_text}",
            file=transfer.name, client=_client(transfer.client), outcome=outcome, amount=amount,
            seconds=seconds, size=transfer.size, detail=_shown(detail),
            detail_text=f": {_shown(detail)}" if detail else "", mac=transfer.mac,
            bytes_sent=sent,
            retransmissions=getattr(session, "retransmissions", 0),
            blksize=blksize, windowsize=windowsize,
        )

    def _stop(self, transfer: _Transfer, outcome: str, notify: str | None) -> None:
        """End a transfer from outside (stop, replacement, error); ERROR 0 ``notify`` to the client if given."""
        if transfer.finished:
            return
        lookup, session = transfer.lookup, transfer.session
        self._forget(transfer)  # first: the cancelled lookup and the stopped session find it finished
        if lookup is not None:
            lookup.cancel()
        if session is not None:
            session.stop()
        if notify is not None:
            # The client would otherwise wait out its own timeouts.
            error = encode_error(ERR_UNDEFINED, notify)
            if transfer.protocol is not None and transfer.protocol.transport is not None:
                transfer.protocol.send(error)
            else:
                self._send(error, transfer.client)
        self._close(transfer)
        if session is not None:
            self._logEnd(transfer, outcome, "")
        else:
            self._account(transfer.name, outcome)
            log.debug(
                "request for {file} from {client} abandoned: {outcome}",
                file=transfer.name, client=_client(transfer.client), outcome=outcome,
            )
