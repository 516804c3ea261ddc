# -*- test-case-name: tests.test_metrics -*-
"""Every Prometheus metric smee exposes, on a registry passed in (never the global one).

One :class:`Metrics` per process (built by :func:`smee.tap.makeRuntime`),
shared by every component through :class:`smee.runtime.Runtime`; tests build
their own on a fresh :class:`~prometheus_client.CollectorRegistry`. Unlike
Smee, which registers many metrics it never updates (smee-study.md §7.4),
every metric here has a place in the code that moves it:

``dhcp_messages_total{type,outcome}``
    every datagram the DHCP protocol handles (``type`` is the request's
    message type, ``outcome`` the decision's or why there was none)
``tftp_transfers_total{file,outcome}``, ``tftp_bytes_total{file}``,
``tftp_transfer_seconds{file}``, ``tftp_sessions_in_progress``
    every TFTP read request (``file`` is the served name, or "other" for a
    name smee does not serve: never the raw request)
``http_requests_total{route,code}``
    every HTTP request, by a small fixed set of routes (:data:`HTTP_ROUTES`)
``backend_lookups_total{backend,by,outcome}``, ``backend_lookup_seconds{backend}``
    every hardware lookup, timed by :class:`InstrumentedBackend`
``syslog_messages_total{outcome}``
    every syslog datagram ("parsed" or "malformed")
``boot_stage_seconds{from_stage,to_stage}``
    time between consecutive boot stages, fed by :class:`smee.timeline.BootTimeline`

Label children are cached per label tuple (:meth:`Metrics.child`) so the hot
paths pay a dict lookup, not prometheus_client's label validation. Counters
and histograms are prometheus_client's with a lock-free value (every update
happens on the reactor thread) and a short ``inc``/``observe``: the DHCP path
moves three or four of them per packet (issue 9). What /metrics shows is
unchanged: the exposition is still prometheus_client's own.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from math import isnan
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from smee.backends import LookupFailed

__all__ = ["HTTP_ROUTES", "InstrumentedBackend", "Metrics"]

#: The values of http_requests_total's ``route`` label.
HTTP_ROUTES = ("auto.ipxe", "ipxe", "healthcheck", "metrics", "machines", "asset", "other")

_TFTP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class _Value:
    """prometheus_client's metric value (``values.MutexValue``) without the lock.

    smee updates its counters and histograms on the reactor thread only, so
    the lock bought nothing but a few hundred nanoseconds per update.
    """

    __slots__ = ("_exemplar", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


class _Counter(Counter):
    """A Counter whose plain ``inc()`` is one attribute update (lock-free :class:`_Value`)."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._value = _Value()

    def inc(self, amount: float = 1, exemplar: Any = None) -> None:
        if amount >= 0 and not exemplar:
            try:
                self._value._value += amount
                return
            except AttributeError:  # a parent with labels: prometheus_client says why
                pass
        super().inc(amount, exemplar)


class _Histogram(Histogram):
    """A Histogram whose plain ``observe()`` is a bisect and two attribute updates."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._sum = _Value()
        self._buckets = [_Value() for _ in self._upper_bounds]

    def observe(self, amount: float, exemplar: Any = None) -> None:
        if not exemplar and not isnan(amount):  # NaN goes the long way, as before
            try:
                buckets = self._buckets
            except AttributeError:  # a parent with labels: prometheus_client says why
                pass
            else:
                self._sum._value += amount
                # the first bucket whose bound is >= amount, as prometheus_client's loop finds it
                buckets[bisect_left(self._upper_bounds, amount)]._value += 1
                return
        super().observe(amount, exemplar)


class Metrics:
    """smee's metrics, registered on ``registry`` (an empty one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
        self.registry = registry
        r = registry
        self.dhcp_messages = _Counter(
            "dhcp_messages", "DHCP messages handled, by request type and outcome",
            ["type", "outcome"], registry=r)
        self.tftp_transfers = _Counter(
            "tftp_transfers", "TFTP read requests, by file and outcome", ["file", "outcome"], registry=r)
        self.tftp_datagrams = _Counter(
            "tftp_datagrams", "TFTP datagrams on the listening port that are not read requests, by outcome",
            ["outcome"], registry=r)
        self.tftp_bytes = _Counter(
            "tftp_bytes", "TFTP file bytes sent, by file", ["file"], registry=r)
        self.tftp_transfer_seconds = _Histogram(
            "tftp_transfer_seconds", "TFTP transfer duration (request to end), by file", ["file"],
            buckets=_TFTP_BUCKETS, registry=r)
        self.tftp_sessions_in_progress = Gauge(
            "tftp_sessions_in_progress", "TFTP transfers in progress, including those waiting for the backend",
            registry=r)
        self.http_requests = _Counter(
            "http_requests", "HTTP requests, by route and status code", ["route", "code"], registry=r)
        self.backend_lookups = _Counter(
            "backend_lookups", "Hardware backend lookups, by backend, key and outcome",
            ["backend", "by", "outcome"], registry=r)
        self.backend_lookup_seconds = _Histogram(
            "backend_lookup_seconds", "Hardware backend lookup latency, by backend", ["backend"],
            buckets=_LOOKUP_BUCKETS, registry=r)
        self.syslog_messages = _Counter(
            "syslog_messages", "Syslog messages received, by outcome (parsed, malformed)", ["outcome"],
            registry=r)
        self.boot_stage_seconds = _Histogram(
            "boot_stage_seconds", "Time between consecutive boot stages of a machine",
            ["from_stage", "to_stage"], buckets=_STAGE_BUCKETS, registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the hot paths' way to a labelled child."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def collect(self) -> Any:
        """The registry's samples: ``generate_latest(metrics)`` works as with the registry."""
        return self.registry.collect()


class InstrumentedBackend:
    """A hardware backend that counts and times every ``by_mac``/``by_ip`` on the way through.

    Outcomes: "found", "not-found", "failed" (LookupFailed), "cancelled"
    (the caller's timeout or a stop cancelled it), "error" (anything else,
    including a backend that raises instead of failing its Deferred).
    Everything else (``state``, ``kind``, service methods) is the wrapped
    backend's. It also carries the runtime's ``metrics`` and ``timeline``,
    so a protocol given only the backend finds them.
    """

    def __init__(self, backend: Any, metrics: Metrics, clock: Any, timeline: Any = None) -> None:
        self.wrapped = backend
        self.metrics = metrics
        self.timeline = timeline
        self._clock = clock
        self._kind = str(getattr(backend, "kind", None) or type(backend).__name__)
        self._seconds = metrics.backend_lookup_seconds.labels(self._kind)
        self._counts = {
            (by, outcome): metrics.backend_lookups.labels(self._kind, by, outcome)
            for by in ("mac", "ip")
            for outcome in ("found", "not-found", "failed", "cancelled", "error")
        }
        self._found = self._counts["mac", "found"]
        self._not_found = self._counts["mac", "not-found"]
        now = getattr(backend, "by_mac_now", None)
        if now is not None:
            # Offered only when the wrapped backend has it, so callers that
            # look for it (the DHCP protocol) fall back to by_mac otherwise.
            self._now = now
            self.by_mac_now = self._by_mac_now

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def by_mac(self, mac: str) -> Any:
        return self._timed("mac", self.wrapped.by_mac, mac)

    def by_ip(self, ip: Any) -> Any:
        return self._timed("ip", self.wrapped.by_ip, ip)

    def _by_mac_now(self, mac: str) -> Any:
        """The wrapped ``by_mac_now``, counted and timed like by_mac (same outcomes)."""
        seconds = self._clock.seconds
        started = seconds()
        try:
            found = self._now(mac)
        except LookupFailed:
            self._done("mac", "failed", started)
            raise
        except Exception:
            self._done("mac", "error", started)
            raise
        (self._not_found if found is None else self._found).inc()
        self._seconds.observe(max(0.0, seconds() - started))
        return found

    def _timed(self, by: str, lookup: Callable[[Any], Any], key: Any) -> Any:
        started = self._clock.seconds()
        try:
            d = lookup(key)
        except Exception:
            self._done(by, "error", started)
            raise
        d.addBoth(self._settled, by, started)
        return d

    def _settled(self, result: Any, by: str, started: float) -> Any:
        if isinstance(result, Failure):
            if result.check(LookupFailed):
                outcome = "failed"
            elif result.check(CancelledError):
                outcome = "cancelled"
            else:
                outcome = "error"
        else:
            outcome = "not-found" if result is None else "found"
        self._done(by, outcome, started)
        return result

    def _done(self, by: str, outcome: str, started: float) -> None:
        self._counts[by, outcome].inc()
        self._seconds.observe(max(0.0, self._clock.seconds() - started))
