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
paths pay a dict lookup, not prometheus_client's label validation and lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["HTTP_ROUTES", "InstrumentedBackend", "Metrics"]

#: The values of http_requests_total's ``route`` label.
HTTP_ROUTES = ("auto.ipxe", "ipxe", "healthcheck", "metrics", "machines", "asset", "other")

_TFTP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class Metrics:
    """smee's metrics, registered on ``registry`` (an empty one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
        self.registry = registry
        r = registry
        self.dhcp_messages = Counter(
            "dhcp_messages", "DHCP messages handled, by request type and outcome",
            ["type", "outcome"], registry=r)
        self.tftp_transfers = Counter(
            "tftp_transfers", "TFTP read requests, by file and outcome", ["file", "outcome"], registry=r)
        self.tftp_bytes = Counter(
            "tftp_bytes", "TFTP file bytes sent, by file", ["file"], registry=r)
        self.tftp_transfer_seconds = Histogram(
            "tftp_transfer_seconds", "TFTP transfer duration (request to end), by file", ["file"],
            buckets=_TFTP_BUCKETS, registry=r)
        self.tftp_sessions_in_progress = Gauge(
            "tftp_sessions_in_progress", "TFTP transfers in progress, including those waiting for the backend",
            registry=r)
        self.http_requests = Counter(
            "http_requests", "HTTP requests, by route and status code", ["route", "code"], registry=r)
        self.backend_lookups = Counter(
            "backend_lookups", "Hardware backend lookups, by backend, key and outcome",
            ["backend", "by", "outcome"], registry=r)
        self.backend_lookup_seconds = Histogram(
            "backend_lookup_seconds", "Hardware backend lookup latency, by backend", ["backend"],
            buckets=_LOOKUP_BUCKETS, registry=r)
        self.syslog_messages = Counter(
            "syslog_messages", "Syslog messages received, by outcome (parsed, malformed)", ["outcome"],
            registry=r)
        self.boot_stage_seconds = Histogram(
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

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def by_mac(self, mac: str) -> Any:
        return self._timed("mac", self.wrapped.by_mac, mac)

    def by_ip(self, ip: Any) -> Any:
        return self._timed("ip", self.wrapped.by_ip, ip)

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
        from twisted.internet.defer import CancelledError
        from twisted.python.failure import Failure

        from smee.backends import LookupFailed

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
