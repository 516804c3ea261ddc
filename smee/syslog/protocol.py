# -*- test-case-name: tests.test_syslog -*-
"""The syslog receiver: each datagram becomes one structured log event.

A parsed message is logged in namespace ``smee.syslog.machine`` at the level
its severity maps to (0-3 error, 4 warn, 5-6 info, 7 debug) with the fields
``facility``, ``severity`` (Smee's names), ``hostname``, ``app_name``,
``procid``, ``msgid``, ``msg``, ``host`` (the sender's IP) and ``mac`` (the
backend's answer for that IP, or None), plus ``priority``, ``rfc``,
``timestamp``, ``fields`` (the JSON object, if the text was one),
``truncated`` and ``lookup`` (found, unknown, failed, timeout, busy).

A datagram that does not parse is logged at info, raw (repr, cut), in the
same namespace with ``outcome="malformed"``: nothing is dropped silently and
nothing a client sends can raise out of ``datagramReceived``.

Each sender gets a token bucket (``rate`` lines per second, ``burst`` at once):
a flood from one address, parsed or not, costs bounded log volume and never
crowds out the lines of other machines. Lines over the limit are counted
(``outcome="rate-limited"``) and summed up in one warning per sender: when it
is allowed again, after ``SUMMARY_DELAY`` seconds, or at shutdown.

The MAC is looked up by the sender's IP for every message, with no cache
(the backend has its own indexes), bounded by ``lookup_timeout``. Messages
from an IP whose lookup is in flight wait for that same lookup, so one
chatty machine costs one lookup at a time and its lines stay in order.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from smee.syslog.parse import MAX_DATAGRAM, Message, SyslogParseError, parse

__all__ = ["DEFAULT_LOOKUP_TIMEOUT", "MAX_WAITING", "RAW_SHOWN", "TIMELINE_TEXT", "SyslogProtocol", "level_for"]

log = Logger(namespace="smee.syslog")
machine_log = Logger(namespace="smee.syslog.machine")

#: Seconds a MAC lookup may take before the message is logged without one.
DEFAULT_LOOKUP_TIMEOUT = 1.0

#: Messages from one IP held while its lookup is in flight; more are logged at once, without MAC.
MAX_WAITING = 256

#: Bytes of a malformed datagram shown in the log line.
RAW_SHOWN = 512

#: Characters of a message kept as the timeline's detail (the log line has it all).
TIMELINE_TEXT = 200

#: Lines per second and burst allowed from one sender (an installer's chatter fits easily).
DEFAULT_RATE = 50.0
DEFAULT_BURST = 200
#: Senders tracked at once; the longest-idle is forgotten first (a flood of spoofed sources).
MAX_SENDERS = 4096
#: Seconds after a sender's first dropped line that its "dropped N lines" summary is written.
SUMMARY_DELAY = 10.0

_LEVELS = (
    LogLevel.error, LogLevel.error, LogLevel.error, LogLevel.error,
    LogLevel.warn, LogLevel.info, LogLevel.info, LogLevel.debug,
)


def level_for(severity: int) -> LogLevel:
    """The log level a syslog severity is re-logged at."""
    return _LEVELS[severity]


class SyslogProtocol(DatagramProtocol):
    """Parse, look up the sender's MAC, log.

    :param backend: ``by_ip(IPv4Address) -> Deferred[Match | None]``
    :param reactor: IReactorTime for the lookup timeout
    :param messages: a Prometheus counter with an ``outcome`` label
        (parsed, malformed), or None
    :param timeline: an object with ``seen(mac, kind, message=...)``, or None
    """

    def __init__(
        self,
        backend: Any,
        reactor: Any,
        *,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
        messages: Any = None,
        timeline: Any = None,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
    ) -> None:
        self.backend = backend
        self.rate = rate
        self.burst = burst
        #: sender IP → [tokens, last refill time, lines dropped since the last summary, summary timer]
        self._buckets: dict[str, list[Any]] = {}
        self.reactor = reactor
        self.lookup_timeout = lookup_timeout
        self.messages = messages
        self.timeline = timeline
        #: sender IP → (its lookup in flight, messages waiting for it)
        self._waiting: dict[str, tuple[defer.Deferred[Any], list[Message]]] = {}

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        host = str(addr[0])
        try:
            self._received(data, host)
        except Exception:  # noqa: BLE001 - a syslog sender must never break the receiver
            # A bug here must cost one message, never the receiver.
            log.failure("syslog from {host}: could not handle {raw}", host=host, raw=_raw(data))

    def stopProtocol(self) -> None:
        # Cancelling logs what was waiting (without MAC): nothing is lost at shutdown.
        for d, _ in list(self._waiting.values()):
            d.cancel()
        for host in list(self._buckets):
            self._summarise(host)

    # --- per-sender limit ---------------------------------------------------------

    def _allowed(self, host: str) -> bool:
        """Take a token from ``host``'s bucket; False (and counted) when it is empty."""
        if self.rate <= 0:
            return True
        now = self.reactor.seconds()
        buckets = self._buckets
        bucket = buckets.pop(host, None)  # re-inserted last: the dict stays in least-recently-used order
        if bucket is None:
            if len(buckets) >= MAX_SENDERS:
                self._summarise(next(iter(buckets)), forget=True)
            bucket = [float(self.burst), now, 0, None]
        else:
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        buckets[host] = bucket
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            if bucket[2]:
                self._summarise(host)
            return True
        bucket[2] += 1
        self._count("rate-limited")
        if bucket[3] is None:
            bucket[3] = self.reactor.callLater(SUMMARY_DELAY, self._summarise, host, True)
        return False

    def _summarise(self, host: str, timer_fired: bool = False, forget: bool = False) -> None:
        """One warning for the lines dropped from ``host`` since its last summary."""
        bucket = self._buckets.pop(host, None) if forget else self._buckets.get(host)
        if bucket is None:
            return
        dropped, timer = bucket[2], bucket[3]
        bucket[2], bucket[3] = 0, None
        if timer is not None and not timer_fired and timer.active():
            timer.cancel()
        if dropped:
            log.warn(
                "syslog from {host}: dropped {dropped} lines over the limit of {rate:g} per second "
                "(burst {burst})",
                host=host, dropped=dropped, rate=self.rate, burst=self.burst,
            )

    # --- internals --------------------------------------------------------------

    def _received(self, data: bytes, host: str) -> None:
        if not self._allowed(host):
            return
        try:
            message = parse(data)
        except SyslogParseError as e:
            self._count("malformed")
            machine_log.info(
                "malformed syslog from {host}: {raw} ({error})",
                host=host, raw=_raw(data), error=str(e), size=len(data), outcome="malformed",
            )
            return
        self._count("parsed")
        pending = self._waiting.get(host)
        if pending is not None:
            if len(pending[1]) < MAX_WAITING:
                pending[1].append(message)
            else:
                self._log(message, host, None, "busy")
            return
        try:
            d = self.backend.by_ip(IPv4Address(host))
        except Exception:  # noqa: BLE001 - a syslog sender must never break the receiver
            d = defer.fail(Failure())
        queue = [message]
        self._waiting[host] = (d, queue)
        if not d.called:
            d.addTimeout(self.lookup_timeout, self.reactor)
        d.addCallbacks(self._found, self._failed, callbackArgs=(host,), errbackArgs=(host,))

    def _found(self, match: Any, host: str) -> None:
        mac = None
        if match is not None:
            try:
                mac = str(match.interface.mac)
            except AttributeError:
                mac = None
        self._flush(host, mac, "found" if mac else "unknown")

    def _failed(self, failure: Failure, host: str) -> None:
        if failure.check(defer.TimeoutError):
            outcome = "timeout"
        elif failure.check(defer.CancelledError):
            outcome = "cancelled"
        else:
            outcome = "failed"
            log.debug(
                "syslog from {host}: MAC lookup failed: {error}",
                host=host, error=f"{type(failure.value).__name__}: {failure.value}",
            )
        self._flush(host, None, outcome)

    def _flush(self, host: str, mac: str | None, lookup: str) -> None:
        _, queue = self._waiting.pop(host, (None, []))
        for message in queue:
            try:
                self._log(message, host, mac, lookup)
            except Exception:  # noqa: BLE001 - a syslog sender must never break the receiver
                log.failure("syslog from {host}: could not log a message", host=host)

    def _log(self, message: Message, host: str, mac: str | None, lookup: str) -> None:
        text = message.text.replace("\b", "").rstrip("\r\n")
        machine_log.emit(
            level_for(message.severity),
            "{source} {facility}.{severity} {app}: {msg}{note}",
            source=f"{host} ({mac})" if mac else host,
            app=message.app_name or "-",
            note=f" (datagram truncated to {MAX_DATAGRAM} bytes)" if message.truncated else "",
            facility=message.facility_name,
            severity=message.severity_name,
            priority=message.priority,
            hostname=message.hostname,
            app_name=message.app_name,
            procid=message.procid,
            msgid=message.msgid,
            msg=text,
            fields=dict(message.fields) if message.fields is not None else None,
            timestamp=message.timestamp.isoformat() if message.timestamp is not None else None,
            rfc=message.rfc,
            truncated=message.truncated,
            host=host,
            mac=mac,
            lookup=lookup,
        )
        if mac is not None and self.timeline is not None:
            try:
                self.timeline.seen(mac, "syslog", message=text[:TIMELINE_TEXT])
            except Exception:  # noqa: BLE001 - a syslog sender must never break the receiver
                log.failure("syslog from {host}: timeline update failed", host=host)

    def _count(self, outcome: str) -> None:
        if self.messages is None:
            return
        try:
            self.messages.labels(outcome=outcome).inc()
        except Exception:  # noqa: BLE001 - a syslog sender must never break the receiver
            log.failure("syslog metrics update failed")


def _raw(data: bytes) -> str:
    shown = repr(data[:RAW_SHOWN])
    if len(data) > RAW_SHOWN:
        shown += f"... ({len(data)} bytes)"
    return shown
