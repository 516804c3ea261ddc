# -*- test-case-name: tests.test_dhcp_protocol -*-
"""The DHCP server protocol: one datagram in, at most one datagram out.

Thin on purpose, like twisted.names' DNSDatagramProtocol: the codec
(:mod:`smee.dhcp.packet`), the client classification
(:mod:`smee.dhcp.classify`) and the policy (:mod:`smee.dhcp.policy`) do the
work; this module only wires them to the socket and the backend, bounds the
backend lookup in time and logs what happened.

Nothing that arrives on the wire, and nothing a backend does, can make
:meth:`DHCPServerProtocol.datagramReceived` raise or leave a failed
Deferred unhandled: a bad packet or a failed lookup costs one log line and
no reply.

Every request passes through here, so the per-packet work is kept to what
the answer needs (issue 9; ``benchmarks/profile_dhcp.py`` measures it):

* a backend that can answer at once offers ``by_mac_now(mac)`` (returns the
  Match or None, raises :class:`~smee.backends.LookupFailed`), and then no
  Deferred, callback chain or timer is built; others go through ``by_mac``;
* events below ``log_level`` (``--log-level``, the level the observer drops
  below) are not built at all: at the default ``info`` a served request
  costs no log event, at ``error`` neither does a refusal;
* the ``dhcp_messages_total`` children are cached per (type, outcome);
* a bounded reply memo (:class:`_Memo`) answers a request whose bytes, xid
  aside, repeat an answered one (a retransmission, the next boot of the
  same machine, a load generator) without parsing, classifying, deciding or
  encoding: the policy is a pure function of the request, the backend's
  Match, the config and the chainload flag, so the earlier reply with the
  new xid is the reply. The Match is still looked up each time and must be
  the very same object (a reload builds new ones), and the chainload flag
  the same; anything else goes the normal way and refreshes the entry.
  The sender's address is not part of the key: neither the policy nor the
  destination reads it (giaddr and ciaddr are in the bytes), and the log
  line names the current sender. Only answered requests are remembered;
  the counters, timeline stages and log lines of a reply are replayed;
* replies go straight to the socket's ``sendto`` (``Port.write`` re-checks
  the address of every datagram), ``Port.write`` only when that fails.

A flood from one client must not starve the others (issue 10), so before
anything else, the memo included, a request is charged to its client
hardware address (chaddr, ``hlen`` bytes) in a :class:`MacRateLimiter`: a
token bucket per MAC on the injected clock (``rate_limit`` requests per
second, ``rate_burst`` at once; ``--dhcp-rate-limit``/``--dhcp-rate-burst``).
A request over the limit gets no reply, no parse and no lookup: it is counted
in ``dhcp_messages_total`` with outcome "rate-limited", and logged at most
once per MAC per :data:`RATE_LOG_INTERVAL` (the observer further limits
refusal lines). The table of buckets is bounded, least recently seen MAC
forgotten first, so a flood of random MACs cannot grow memory. Then relay
fields that forbid any reply (hops above 16, a giaddr no relay can have:
:func:`smee.dhcp.policy.relay_problem`) are refused, also before the memo
(whose key leaves out the sender, which the loopback-giaddr rule reads) and
before the lookup. This check is smee's safety, not a decision, so it is
smee's own whatever ``policy`` is injected.
"""

from __future__ import annotations

from math import inf
from typing import Any, Callable, NamedTuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as LookupTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from smee.listen import sendto_of as _sendto_of
from smee.backends import LookupFailed
from smee.dhcp import policy as _policy
from smee.dhcp.classify import ClientInfo
from smee.dhcp.classify import classify as _classify
from smee.dhcp.packet import (
    ACK,
    BOOTREQUEST,
    DISCOVER,
    MAGIC,
    MESSAGE_TYPES,
    OFFER,
    REQUEST,
    ZERO4,
    DHCPParseError,
    Packet,
    PacketTooLarge,
    build,
    parse,
)

__all__ = [
    "DEFAULT_LOOKUP_TIMEOUT",
    "DEFAULT_MEMO_SIZE",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_RATE_TABLE",
    "RATE_LOG_INTERVAL",
    "DHCPServerProtocol",
    "MacRateLimiter",
]

log = Logger(namespace="smee.dhcp")

#: Seconds a backend lookup may take before the request is dropped. PXE ROMs
#: resend DISCOVER after 4 s (then 8, 16, 32), so a slower answer is useless.
DEFAULT_LOOKUP_TIMEOUT = 3.0

#: Replies each protocol remembers (oldest forgotten first): a few per
#: machine of a site of some thousand, about 1 KiB each.
DEFAULT_MEMO_SIZE = 4096

#: Requests per second a client MAC is answered at once its burst is spent
#: (``--dhcp-rate-limit``'s default; the protocol's own default is 0, off).
#: A real client never gets near it: a PXE ROM resends after 4, 8, 16 s,
#: iPXE sends DISCOVER and REQUEST within a second, and a ROM chainload, its
#: iPXE and the kernel together make three or four DORAs over tens of seconds.
DEFAULT_RATE_LIMIT = 5.0

#: Requests a MAC may send at once (``--dhcp-rate-burst``): two DORAs, doubled
#: for a client heard both directly and through a relay, with room to spare.
DEFAULT_RATE_BURST = 10

#: MACs whose buckets are kept per socket. A forgotten MAC starts again with a
#: full bucket, as it would have after ``burst / rate`` seconds of quiet, so
#: the bound only matters to a flood of more MACs than this within that time.
DEFAULT_RATE_TABLE = 4096

#: Seconds between two log lines about the same rate-limited MAC.
RATE_LOG_INTERVAL = 60.0

#: Outcomes without a reply that are logged at debug, not info: in the proxy
#: modes every ordinary (non-netboot) client on the segment gets one, and it
#: is news to no one. Every other refusal (unknown MAC, netboot not allowed,
#: DHCP disabled, another server chosen, RELEASE/DECLINE, …) and every NAK is
#: logged at info; replies are logged at debug.
QUIET_OUTCOMES = frozenset({"not-netboot"})

#: User classes of an iPXE client (ours says "Tinkerbell"): its DHCP is the ipxe-* stages.
_IPXE_USER_CLASSES = frozenset({"iPXE", "Tinkerbell"})

#: ``--log-level`` names (or LogLevels) → rank; an event is built only if its rank reaches the level's.
_RANKS = {"debug": 0, "info": 1, "warn": 2, "error": 3,
          LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3, LogLevel.critical: 4}


def _type_name(msg_type: int | None) -> str:
    name = MESSAGE_TYPES.get(msg_type)  # type: ignore[arg-type]
    return name if name is not None else f"type-{msg_type}"


def _stages(client: ClientInfo, reply_type: int | None) -> tuple[str, ...]:
    """The boot timeline stages a request (and its reply, if any) mark: the request's first."""
    ipxe = client.user_class in _IPXE_USER_CLASSES
    stages: tuple[str, ...] = ()
    if client.msg_type == DISCOVER or (ipxe and client.msg_type == REQUEST):
        stages = ("ipxe-dhcp" if ipxe else "dhcp-discover",)
    if reply_type == ACK:
        stages += ("ipxe-ack" if ipxe else "dhcp-ack",)
    elif reply_type == OFFER and not ipxe:
        stages += ("dhcp-offer",)
    return stages


_MAX_HOPS = _policy.MAX_HOPS
_SUSPECT_GIADDR = _policy.SUSPECT_GIADDR_OCTETS
_relay_problem = _policy.relay_problem


def _source(addr: Any) -> str:
    """The sender's IP address as text ("" if ``addr`` is not a (host, port) pair)."""
    try:
        host = addr[0]
    except (TypeError, IndexError, KeyError):
        return ""
    return host if isinstance(host, str) else ""


def _peek_type(data: bytes) -> int | None:
    """Option 53 of a request, read without parsing it (a rate-limited request is not parsed).

    Only the options field is searched (no RFC 3396 overload); anything odd gives None.
    """
    i, end = 240, len(data)
    while i < end:
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 255 or i + 1 >= end:
            return None
        if code == 53:
            return data[i + 2] if data[i + 1] == 1 and i + 2 < end else None
        i += 2 + data[i + 1]
    return None


class MacRateLimiter:
    """A token bucket per client hardware address, at most ``size`` of them (least recently seen dropped first).

    Each address may send ``burst`` requests at once, then ``rate`` per
    second. Time is the injected clock's ``seconds()``; if it steps back, the
    bucket just starts counting from the new time. Dropping an address's
    bucket can only favour it (it comes back full), never a well-behaved
    client, and a flooding address stays at the recent end of the table.
    """

    __slots__ = ("_buckets", "_clock", "_now", "burst", "log_interval", "rate", "size")

    def __init__(self, clock: IReactorTime, rate: float, burst: int, size: int = DEFAULT_RATE_TABLE,
                 log_interval: float = RATE_LOG_INTERVAL) -> None:
        if not (rate > 0 and burst >= 1 and size >= 1):
            raise ValueError(f"rate {rate}, burst {burst}, size {size}: all must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self.size = size
        self.log_interval = log_interval
        self._clock = clock
        self._now = clock.seconds
        #: key → [tokens, time of last request, time of the last log line, dropped since that line]
        self._buckets: dict[bytes, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: bytes) -> int | None:
        """Charge one request to ``key``: None if it may be answered.

        Otherwise it is over the limit and the result is the number of
        requests dropped since the last log line about ``key`` when a line is
        due now (at most one per ``log_interval``), else 0.
        """
        now = self._now()
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            if len(buckets) >= self.size:
                del buckets[next(iter(buckets))]  # the least recently seen
            buckets[key] = [self.burst - 1.0, now, -inf, 0.0]
            return None
        buckets[key] = bucket  # now the most recently seen
        tokens = bucket[0]
        elapsed = now - bucket[1]
        bucket[1] = now
        if elapsed > 0:
            tokens += elapsed * self.rate
            if tokens > self.burst:  # noqa: PLR1730 - not min(): a call per request
                tokens = self.burst
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        bucket[3] += 1
        since = now - bucket[2]
        if since >= self.log_interval or since < 0:
            bucket[2] = now
            dropped = int(bucket[3])
            bucket[3] = 0.0
            return dropped
        return 0


class _Memo(NamedTuple):
    """A reply sent, for the next request with the same bytes but the xid (see the module docstring).

    The entry holds the Match it was decided for: identity is the check (a
    reload makes new records), and holding it means its ``id`` cannot be
    reused by another object while the entry lives.
    """

    #: the backend's answer the reply was decided for (None when not looked up / not found)
    match: Any
    #: whether the backend was asked (not for hlen != 6 or in auto-proxy mode)
    looked_up: bool
    mac: str
    #: user class "iPXE": the chainload flag (``served``) took part in the decision
    ipxe: bool
    served: bool
    #: the reply's bytes before and after the xid (bytes 4..8)
    head: bytes
    tail: bytes
    #: the policy's destination; ports 67/68 are mapped when sending, as on the normal path
    host: str
    port: int
    msg_type: int | None
    reply_type: int | None
    outcome: str
    reason: str
    #: boot timeline stages (:func:`_stages`)
    stages: tuple[str, ...]


class DHCPServerProtocol(DatagramProtocol):
    """Answer DHCP requests received on one socket (one interface).

    :param backend: a :class:`~smee.backends.HardwareBackend` (``by_mac``)
    :param config: the :class:`~smee.dhcp.policy.DHCPConfig`
    :param clock: the IReactorTime that times lookups out
    :param iface: the interface this socket serves, for logs ("" = all)
    :param lookup_timeout: seconds before a pending lookup is abandoned
    :param server_port: replaces port 67 in reply destinations (relays)
    :param client_port: replaces port 68 in reply destinations (clients)
    :param classify: request → ClientInfo (default :func:`smee.dhcp.classify.classify`)
    :param chainloads: the :class:`smee.chainload.Chainloads` that TFTP fills
        (with ``--dhcp-ipxe-rom-chainload``, how our own iPXE is recognised)
    :param policy: anything with ``needs_lookup``, ``decide`` and
        ``destination`` like :mod:`smee.dhcp.policy` (the default)
    :param metrics: :class:`smee.metrics.Metrics` (``dhcp_messages_total``), or None
    :param timeline: :class:`smee.timeline.BootTimeline`, or None
    :param log_level: the lowest level the log observer writes (``--log-level``;
        a name or a LogLevel): debug and info events below it are never built.
        The default builds every event, as a test capturing logs expects.
    :param memo_size: replies remembered for repeated requests (0: none).
        The default is :data:`DEFAULT_MEMO_SIZE` with smee's own classify and
        policy, 0 with others (nothing says they are pure functions).
    :param rate_limit: requests per second answered per client MAC once its
        burst is spent; 0 (the default here; the service passes
        ``--dhcp-rate-limit``) turns the limit off
    :param rate_burst: requests a MAC may send at once
    :param rate_table: MACs whose buckets are kept (:class:`MacRateLimiter`)
    """

    noisy = False

    def __init__(
        self,
        backend: Any,
        config: Any,
        clock: IReactorTime,
        iface: str = "",
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
        server_port: int = 67,
        client_port: int = 68,
        *,
        chainloads: Any = None,
        classify: Callable[[Packet], ClientInfo] = _classify,
        policy: Any = _policy,
        metrics: Any = None,
        timeline: Any = None,
        log_level: str | LogLevel = "debug",
        memo_size: int | None = None,
        rate_limit: float = 0.0,
        rate_burst: int = DEFAULT_RATE_BURST,
        rate_table: int = DEFAULT_RATE_TABLE,
    ) -> None:
        #: per-MAC token buckets, charged before the memo; None when ``rate_limit`` is 0
        self.limiter: MacRateLimiter | None = (
            MacRateLimiter(clock, rate_limit, rate_burst, rate_table) if rate_limit > 0 else None
        )
        if memo_size is None:
            memo_size = DEFAULT_MEMO_SIZE if classify is _classify and policy is _policy else 0
        #: request bytes without the xid and secs (``data[:4] + data[10:]``) → :class:`_Memo`; None when disabled
        self._memo: dict[bytes, _Memo] | None = {} if memo_size > 0 else None
        self._memo_size = memo_size
        #: requests answered from the memo (for tests and profiling)
        self.memo_hits = 0
        #: the transport whose socket's ``sendto`` is in ``_sendto`` (looked up again when it changes)
        self._sendto_for: Any = None
        self._sendto: Callable[[bytes, tuple[str, int]], Any] | None = None
        self.backend = backend
        self.config = config
        self.clock = clock
        self.iface = iface or "*"
        self.lookup_timeout = lookup_timeout
        self.server_port = server_port
        self.client_port = client_port
        #: :class:`smee.chainload.Chainloads` (TFTP records, we read), or None
        self.chainloads = chainloads
        self._classify = classify
        self._needs_lookup = policy.needs_lookup
        self._decide = policy.decide
        self._destination = policy.destination
        #: lookups still waiting for the backend (cancelled on stop)
        self._pending: set[Deferred[Any]] = set()
        self.metrics = metrics
        self.timeline = timeline
        rank = _RANKS[log_level]
        #: whether debug / info events are wanted at all (warnings and errors always are)
        self._log_debug = rank <= 0
        self._log_info = rank <= 1
        #: (msg_type, outcome) → dhcp_messages_total child
        self._counters: dict[tuple[int | None, str], Any] = {}

    @property
    def backend(self) -> Any:
        return self._backend

    @backend.setter
    def backend(self, backend: Any) -> None:
        self._backend = backend
        #: the backend's synchronous lookup, if it has one (see the module docstring)
        self._lookup_now = getattr(backend, "by_mac_now", None)
        self.forget()

    @property
    def config(self) -> Any:
        return self._config

    @config.setter
    def config(self, config: Any) -> None:
        self._config = config
        self.forget()

    def forget(self) -> None:
        """Empty the reply memo (a new backend or config; entries would only miss, but hold memory)."""
        if self._memo is not None:
            self._memo.clear()

    def _count(self, msg_type: int | None, outcome: str) -> None:
        metrics = self.metrics
        if metrics is not None:
            key = (msg_type, outcome)
            child = self._counters.get(key)
            if child is None:
                child = self._counters[key] = metrics.child(metrics.dhcp_messages, _type_name(msg_type), outcome)
            child.inc()

    def _seen(self, mac: str, stages: tuple[str, ...]) -> None:
        """The boot timeline: the request's stage, then the reply's (if any)."""
        seen = self.timeline.seen
        for stage in stages:
            seen(mac, stage)

    def _send(self, transport: Any, data: bytes, dest: tuple[str, int]) -> None:
        """Straight to the socket when it is a real one (as smee.tftp does), else ``transport.write``.

        The destination comes from the policy (dotted quads), so the checks
        ``Port.write`` makes on every datagram are moot; any error is left to
        ``Port.write``, which retries the send and handles it as it always has.
        """
        if transport is not self._sendto_for:
            self._sendto_for = transport
            self._sendto = _sendto_of(transport)
        sendto = self._sendto
        if sendto is not None:
            try:
                sendto(data, dest)
                return
            except OSError:
                pass
        transport.write(data, dest)

    def _log_reply(self, mac: str, xid: int, msg_type: int | None, reply_type: int | None,
                   outcome: str, reason: str, src: Any, dst: tuple[str, int], size: int) -> None:
        """A reply's log line: NAKs at info, the rest at debug (the caller checked the level)."""
        (log.info if outcome == "nak" else log.debug)(
            "{iface}: {reply_type} to {mac} via {dst[0]}:{dst[1]} (xid {xid:#010x}): {reason}",
            iface=self.iface, mac=mac, xid=xid,
            msg_type=_type_name(msg_type), reply_type=_type_name(reply_type),
            outcome=outcome, reason=reason, src=src, dst=dst, size=size,
        )

    def _answer_failed(self, mac: str, xid: int, msg_type: int | None, src: Any) -> None:
        """Deciding, encoding or sending raised: counted and logged with the traceback, no reply."""
        self._count(msg_type, "error")
        log.failure(
            "{iface}: error answering {msg_type} from {mac}",
            iface=self.iface, mac=mac, xid=xid,
            msg_type=_type_name(msg_type), src=src, level=LogLevel.error,
        )

    # --- Twisted entry points ----------------------------------------------

    def stopProtocol(self) -> None:
        """Abandon pending lookups: their timers go and no reply is sent after stop."""
        pending, self._pending = self._pending, set()
        for d in pending:
            d.cancel()

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        try:
            # A request whose header parse() accepts; anything else goes on
            # to be counted "malformed" (or "not-request") there.
            if len(data) >= 240 and data[0] == BOOTREQUEST and data[2] <= 16 and data[236:240] == MAGIC:
                limiter = self.limiter
                if limiter is not None:
                    # charged to chaddr's first hlen bytes: the client's MAC
                    dropped = limiter.check(data[28:28 + data[2]])
                    if dropped is not None:
                        self._rate_limited(data, addr, dropped)
                        return
                if (data[3] > _MAX_HOPS or (data[24] in _SUSPECT_GIADDR and data[24:28] != ZERO4)) and (
                    _relay_problem(data[3], data[24:28], _source(addr)) is not None
                ):
                    self._bad_relay(data, addr)
                    return
            memo = self._memo
            if memo is None:
                self._received(data, addr, None)
                return
            key = data[:4] + data[10:]  # not the xid, nor secs (a retransmission's only change)
            entry = memo.get(key)
            if entry is None:
                self._received(data, addr, key)
            else:
                self._replay(entry, key, data, addr)
        except Exception:
            log.failure(
                "{iface}: error handling a datagram from {src[0]}:{src[1]}",
                iface=self.iface, src=addr, level=LogLevel.error,
            )

    def _rate_limited(self, data: bytes, addr: Any, dropped: int) -> None:
        """Over its MAC's limit: no reply, counted; a warning when the limiter says one is due."""
        msg_type = _peek_type(data)
        self._count(msg_type, "rate-limited")
        if dropped:
            limiter = self.limiter
            assert limiter is not None
            log.warn(
                "{iface}: rate-limiting {mac} (last from {src[0]}:{src[1]}): more than {burst} requests "
                "at once or {rate:g}/s; {dropped} dropped without a reply since the last such line "
                "(one per {interval:g} s per MAC at most)",
                iface=self.iface, mac=data[28:28 + data[2]].hex(":") or "(no hardware address)",
                xid=int.from_bytes(data[4:8], "big"), msg_type=_type_name(msg_type), outcome="rate-limited",
                src=addr, dropped=dropped, burst=int(limiter.burst), rate=limiter.rate,
                interval=limiter.log_interval,
            )

    def _bad_relay(self, data: bytes, addr: Any) -> None:
        """hops or giaddr forbid a reply (:func:`smee.dhcp.policy.relay_refusal`): no lookup, no reply, one line."""
        try:
            request = parse(data)
        except DHCPParseError:
            self._received(data, addr, None)  # counted and logged as malformed there
            return
        client = self._classify(request)
        refusal = _policy.relay_refusal(request, client, _source(addr))
        if refusal is None:  # cannot happen: the same check on the same bytes
            self._received(data, addr, None)
            return
        self._refused(refusal, request, client, addr, None)

    def _received(self, data: bytes, addr: Any, key: bytes | None) -> None:
        """The normal path: parse, classify, look up, decide; ``key`` (memo on) lets the reply be remembered."""
        try:
            request = parse(data)
        except DHCPParseError as e:
            if self._log_info:
                log.info(
                    "{iface}: dropped malformed DHCP datagram from {src[0]}:{src[1]}: {error}",
                    iface=self.iface, src=addr, error=str(e), outcome="malformed",
                )
            self._count(None, "malformed")
            return
        if request.op != BOOTREQUEST:
            if self._log_debug:
                log.debug(
                    "{iface}: ignored BOOTREPLY from {src[0]}:{src[1]} (xid {xid:#010x})",
                    iface=self.iface, src=addr, xid=request.xid, outcome="not-request",
                )
            self._count(request.msg_type, "not-request")
            return
        client = self._classify(request)
        if request.hlen != 6 or not self._needs_lookup(client, self._config):
            # No hardware record can match a chaddr that is not 6 bytes
            # (hlen 0 for InfiniBand, garbage): "not found", without
            # troubling the backend with a key it would reject.
            self._answer(None, request, client, addr, key, False)
            return
        lookup_now = self._lookup_now
        if lookup_now is not None:
            # An in-memory backend: the answer now, no Deferred to build.
            try:
                match = lookup_now(client.mac)
            except Exception:
                self._lookupFailed(Failure(), request, client, addr)
                return
            self._answer(match, request, client, addr, key, True)
            return
        try:
            d = self._backend.by_mac(client.mac)
        except Exception:
            # A backend must fail its Deferred, but one that raises gets
            # the same treatment.
            self._lookupFailed(Failure(), request, client, addr)
            return
        if not d.called:
            # Only a lookup that is really outstanding gets a timer: the
            # in-memory backends answer at once and pay nothing for it.
            self._pending.add(d)
            d.addTimeout(self.lookup_timeout, self.clock)
            d.addBoth(self._settled, d)
        d.addCallbacks(
            self._answer, self._lookupFailed,
            callbackArgs=(request, client, addr), errbackArgs=(request, client, addr),
        )

    def _replay(self, entry: _Memo, key: bytes, data: bytes, addr: Any) -> None:
        """A request seen before (xid aside): the remembered reply if the lookup and chainload flag agree.

        Everything the normal path does that is not a pure function of the
        request bytes happens here too, in the same order: the backend
        lookup (counted by the instrumented backend), the chainload check,
        the send, the counter, the timeline, the log line. When the lookup or
        the flag differs, the request goes on the normal way with that answer.
        """
        (match, looked_up, mac, ipxe, served, head, tail, host, port,
         msg_type, reply_type, outcome, reason, stages) = entry
        found = None
        if looked_up:
            try:
                found = self._lookup_now(mac)  # type: ignore[misc]
            except Exception:
                failure = Failure()
                request = parse(data)
                self._lookupFailed(failure, request, self._classify(request), addr)
                return
        now_served = False
        if ipxe:
            chainloads = self.chainloads
            now_served = bool(
                chainloads is not None and self._config.ipxe_rom_chainload and chainloads.recent(mac)
            )
        if found is not match or now_served is not served:
            request = parse(data)
            self._answer(found, request, self._classify(request), addr, key, looked_up, now_served)
            return
        try:
            transport = self.transport
            if transport is None:  # stopped
                self._count(msg_type, "stopped")
                return
            if port == 67:
                port = self.server_port
            elif port == 68:
                port = self.client_port
            xid = data[4:8]
            reply = head + xid + tail
            self._send(transport, reply, (host, port))
            self.memo_hits += 1
            self._count(msg_type, outcome)
            if self.timeline is not None:
                self._seen(mac, stages)
            if self._log_info if outcome == "nak" else self._log_debug:
                self._log_reply(mac, int.from_bytes(xid, "big"), msg_type, reply_type, outcome, reason,
                                addr, (host, port), len(reply))
        except Exception:
            self._answer_failed(mac, int.from_bytes(data[4:8], "big"), msg_type, addr)

    def _remember(self, key: bytes, entry: _Memo) -> None:
        """Keep ``entry`` for ``key``; the oldest entry goes when the memo is full."""
        memo = self._memo
        assert memo is not None
        if key not in memo and len(memo) >= self._memo_size:
            del memo[next(iter(memo))]
        memo[key] = entry

    # --- one request ---------------------------------------------------------

    def _settled(self, result: Any, d: Deferred[Any]) -> Any:
        self._pending.discard(d)
        return result

    def _lookupFailed(self, failure: Failure, request: Packet, client: ClientInfo, addr: Any) -> None:
        """No trustworthy answer from the backend: no reply, one log line saying why."""
        fields = dict(
            iface=self.iface, mac=client.mac, xid=request.xid,
            msg_type=_type_name(client.msg_type), src=addr,
        )
        outcome = (
            "lookup-timeout" if failure.check(LookupTimeout)
            else "lookup-cancelled" if failure.check(CancelledError)
            else "lookup-failed" if failure.check(LookupFailed)
            else "lookup-error"
        )
        self._count(client.msg_type, outcome)
        if failure.check(LookupTimeout):
            log.warn(
                "{iface}: no reply to {msg_type} from {mac}: backend lookup timed out after {timeout}s",
                timeout=self.lookup_timeout, outcome="lookup-timeout", **fields,
            )
        elif failure.check(CancelledError):
            if not self._log_debug:
                return
            log.debug(
                "{iface}: no reply to {msg_type} from {mac}: lookup abandoned (server stopping)",
                outcome="lookup-cancelled", **fields,
            )
        elif failure.check(LookupFailed):
            log.warn(
                "{iface}: no reply to {msg_type} from {mac}: backend lookup failed: {error}",
                error=str(failure.value), outcome="lookup-failed", **fields,
            )
        else:
            log.failure(
                "{iface}: no reply to {msg_type} from {mac}: backend lookup raised {error}",
                failure, LogLevel.error,
                error=f"{type(failure.value).__name__}: {failure.value}", outcome="lookup-error", **fields,
            )

    def _refused(self, decision: Any, request: Packet, client: ClientInfo, addr: Any, match: Any) -> None:
        """A decision without a reply: counted, on the timeline (known machines), one log line."""
        self._count(client.msg_type, decision.outcome)
        if self.timeline is not None and match is not None:
            # Known machines only: not every laptop on a proxy-mode segment.
            self._seen(client.mac, _stages(client, None))
        quiet = decision.outcome in QUIET_OUTCOMES
        if self._log_debug if quiet else self._log_info:
            (log.debug if quiet else log.info)(
                "{iface}: {reason} (xid {xid:#010x})",
                iface=self.iface, mac=client.mac, xid=request.xid,
                msg_type=_type_name(client.msg_type), outcome=decision.outcome,
                reason=decision.reason, src=addr,
            )

    def _answer(
        self, match: Any, request: Packet, client: ClientInfo, addr: Any,
        key: bytes | None = None, looked_up: bool = False, served: bool | None = None,
    ) -> None:
        """Decide, encode and send; never raises (it may run as a Deferred callback).

        With ``key`` (the memo is on and the lookup was synchronous) a sent
        reply is remembered for it; ``served`` is the chainload flag when the
        caller already asked for it.
        """
        try:
            if served is None:
                served = bool(
                    self.chainloads is not None
                    and client.user_class == "iPXE"
                    and self._config.ipxe_rom_chainload
                    and self.chainloads.recent(client.mac)
                )
            decision = self._decide(request, client, match, self._config, served)
            reply = decision.reply
            if reply is None:
                self._refused(decision, request, client, addr, match)
                return
            try:
                data = build(reply, max_size=request.max_size())
            except PacketTooLarge as e:
                log.error(
                    "{iface}: no reply to {msg_type} from {mac}: reply does not fit the client's "
                    "{max_size}-byte limit: {error}",
                    iface=self.iface, mac=client.mac, xid=request.xid,
                    msg_type=_type_name(client.msg_type), outcome="too-large",
                    max_size=request.max_size(), error=str(e), src=addr,
                )
                self._count(client.msg_type, "too-large")
                return
            host, policy_port = self._destination(request, reply)
            port = policy_port
            if port == 67:
                port = self.server_port
            elif port == 68:
                port = self.client_port
            transport = self.transport
            if transport is None:  # stopped while the lookup was pending
                self._count(client.msg_type, "stopped")
                return
            self._send(transport, data, (host, port))
            self._count(client.msg_type, decision.outcome)
            stages = _stages(client, reply.msg_type) if self.timeline is not None or key is not None else ()
            if self.timeline is not None:
                self._seen(client.mac, stages)
            if self._log_info if decision.outcome == "nak" else self._log_debug:
                self._log_reply(client.mac, request.xid, client.msg_type, reply.msg_type, decision.outcome,
                                decision.reason, addr, (host, port), len(data))
            if key is not None:
                self._remember(key, _Memo(
                    match, looked_up, client.mac, client.user_class == "iPXE", served, data[:4], data[8:],
                    host, policy_port, client.msg_type, reply.msg_type, decision.outcome, decision.reason,
                    stages,
                ))
        except Exception:
            self._answer_failed(client.mac, request.xid, client.msg_type, addr)
