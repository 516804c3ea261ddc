"""Every metric moves when its event happens (smee.metrics, and its hooks in the protocols and the app)."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import FakeBackend, hardware
from prometheus_client import CollectorRegistry, generate_latest
from test_dhcp_protocol import IP1, MAC1, MAC3, make, replies, request
from test_http_app import MAC as HTTP_MAC
from test_http_app import Server as HTTPServer
from test_http_app import known
from test_tftp_protocol import MAC, Server, fetch
from twisted.internet import defer
from twisted.internet.task import Clock

from smee.backends import LookupFailed
from smee.dhcp.packet import ACK, DISCOVER, OFFER, REQUEST
from smee.metrics import HTTP_ROUTES, InstrumentedBackend, Metrics
from smee.timeline import BootTimeline


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_metrics_live_on_the_registry_passed_in() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert metrics.registry is registry
    metrics.syslog_messages.labels(outcome="parsed").inc()
    metrics.syslog_messages.labels(outcome="malformed").inc(2)
    assert value(metrics, "syslog_messages_total", outcome="parsed") == 1
    assert value(metrics, "syslog_messages_total", outcome="malformed") == 2
    # a second Metrics starts from zero: nothing global
    assert value(Metrics(), "syslog_messages_total", outcome="parsed") == 0
    text = generate_latest(metrics).decode()  # Metrics collects like its registry
    for name in ("dhcp_messages_total", "tftp_transfers_total", "tftp_bytes_total", "tftp_transfer_seconds",
                 "tftp_sessions_in_progress", "http_requests_total", "backend_lookups_total",
                 "backend_lookup_seconds", "syslog_messages_total", "boot_stage_seconds"):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


def test_child_is_cached() -> None:
    metrics = Metrics()
    a = metrics.child(metrics.dhcp_messages, "DISCOVER", "offer")
    assert a is metrics.child(metrics.dhcp_messages, "DISCOVER", "offer")
    assert a is not metrics.child(metrics.dhcp_messages, "REQUEST", "offer")


# --- DHCP ----------------------------------------------------------------------------


def test_dhcp_messages_by_type_and_outcome() -> None:
    metrics = Metrics()
    proto, transport, _ = make(metrics=metrics)
    proto.datagramReceived(request(MAC1, DISCOVER), ("0.0.0.0", 68))
    assert [p.msg_type for p, _ in replies(transport)] == [OFFER]
    proto.datagramReceived(request(MAC1, REQUEST, options={54: bytes([192, 0, 2, 1]), 50: bytes([192, 0, 2, 10])}),
                           ("0.0.0.0", 68))
    assert [p.msg_type for p, _ in replies(transport)] == [ACK]
    proto.datagramReceived(request(MAC3, DISCOVER), ("0.0.0.0", 68))  # unknown MAC
    proto.datagramReceived(b"garbage", ("192.0.2.99", 68))
    samples = {
        (s.labels["type"], s.labels["outcome"]): s.value
        for m in metrics.dhcp_messages.collect() for s in m.samples if s.name == "dhcp_messages_total"
    }
    assert sum(v for (t, _), v in samples.items() if t == "DISCOVER") == 2
    assert sum(v for (t, _), v in samples.items() if t == "REQUEST") == 1
    assert value(metrics, "dhcp_messages_total", type="type-None", outcome="malformed") == 1
    assert len({o for (_, o) in samples}) >= 3  # reply, refusal and malformed outcomes differ


def test_dhcp_lookup_failure_is_counted() -> None:
    metrics = Metrics()
    proto, _, _clock = make(backend=_Failing(), metrics=metrics)
    proto.datagramReceived(request(MAC1, DISCOVER), ("0.0.0.0", 68))
    assert value(metrics, "dhcp_messages_total", type="DISCOVER", outcome="lookup-failed") == 1


class _Failing:
    kind = "failing"

    def by_mac(self, mac: str) -> defer.Deferred[Any]:
        return defer.fail(LookupFailed("two records claim it"))

    def by_ip(self, ip: Any) -> defer.Deferred[Any]:
        return defer.fail(LookupFailed("two records claim it"))


def test_protocol_counts_lookups_through_an_instrumented_backend() -> None:
    metrics = Metrics()
    backend = FakeBackend()
    backend.add(hardware(MAC1, IP1))
    proto, _, _clock = make(backend=InstrumentedBackend(backend, metrics, Clock()), metrics=metrics)
    assert proto.metrics is metrics
    proto.datagramReceived(request(MAC1, DISCOVER), ("0.0.0.0", 68))
    assert value(metrics, "backend_lookups_total", backend=_kind(backend), by="mac", outcome="found") == 1


def _kind(backend: Any) -> str:
    return str(getattr(backend, "kind", None) or type(backend).__name__)


# --- backend lookups -------------------------------------------------------------------


def test_backend_lookups_by_outcome_with_latency() -> None:
    clock = Clock()
    metrics = Metrics()
    inner = FakeBackend()
    inner.add(hardware(MAC1, IP1))
    backend = InstrumentedBackend(inner, metrics, clock)
    kind = _kind(inner)
    backend.by_mac(MAC1)
    backend.by_mac(MAC3)
    from ipaddress import IPv4Address
    backend.by_ip(IPv4Address(IP1))
    failing = InstrumentedBackend(_Failing(), metrics, clock)
    failing.by_ip(IPv4Address(IP1)).addErrback(lambda f: None)
    assert value(metrics, "backend_lookups_total", backend=kind, by="mac", outcome="found") == 1
    assert value(metrics, "backend_lookups_total", backend=kind, by="mac", outcome="not-found") == 1
    assert value(metrics, "backend_lookups_total", backend=kind, by="ip", outcome="found") == 1
    assert value(metrics, "backend_lookups_total", backend="failing", by="ip", outcome="failed") == 1
    assert value(metrics, "backend_lookup_seconds_count", backend=kind) == 3

    # a slow lookup: its latency is the clock's, a cancelled one is "cancelled"
    slow: defer.Deferred[Any] = defer.Deferred()
    inner.by_mac = lambda mac: slow  # type: ignore[method-assign]
    d = backend.by_mac(MAC1)
    clock.advance(0.2)
    slow.callback(None)
    assert value(metrics, "backend_lookup_seconds_bucket", backend=kind, le="0.1") == 3
    assert value(metrics, "backend_lookup_seconds_bucket", backend=kind, le="0.25") == 4
    assert value(metrics, "backend_lookup_seconds_sum", backend=kind) == pytest.approx(0.2)
    assert d.result is None
    inner.by_mac = lambda mac: defer.Deferred()  # type: ignore[method-assign]
    backend.by_mac(MAC1).addErrback(lambda f: None).cancel()
    assert value(metrics, "backend_lookups_total", backend=kind, by="mac", outcome="cancelled") == 1
    assert backend.state() == inner.state()  # everything else is the wrapped backend's


# --- TFTP ------------------------------------------------------------------------------


def test_tftp_transfers_bytes_duration_and_in_progress() -> None:
    metrics = Metrics()
    server = Server()
    server.protocol.metrics = metrics
    client = fetch(server, "ipxe.efi")
    assert client.error is None
    size = len(client.data)
    assert value(metrics, "tftp_transfers_total", file="ipxe.efi", outcome="complete") == 1
    assert value(metrics, "tftp_bytes_total", file="ipxe.efi") == size > 0
    assert value(metrics, "tftp_transfer_seconds_count", file="ipxe.efi") == 1
    assert value(metrics, "tftp_sessions_in_progress") == 0

    server.rrq("../etc/passwd")
    assert value(metrics, "tftp_transfers_total", file="other", outcome="not-found") == 1
    assert value(metrics, "tftp_transfers_total", file="../etc/passwd", outcome="not-found") == 0

    # in progress while a transfer runs, back to zero when it ends
    server.rrq("undionly.kpxe")
    assert value(metrics, "tftp_sessions_in_progress") == 1
    server.protocol.stopTransfers()
    assert value(metrics, "tftp_sessions_in_progress") == 0
    assert value(metrics, "tftp_transfers_total", file="undionly.kpxe", outcome="stopped") == 1


def test_tftp_refusal_is_counted_by_file() -> None:
    metrics = Metrics()
    server = Server(backend=FakeBackend())  # nobody known
    server.protocol.metrics = metrics
    server.rrq("ipxe.efi")
    assert value(metrics, "tftp_transfers_total", file="ipxe.efi", outcome="unknown-client") == 1
    assert value(metrics, "tftp_sessions_in_progress") == 0


# --- HTTP ------------------------------------------------------------------------------


def test_http_requests_by_route_and_code() -> None:
    server = HTTPServer()
    known(server)
    metrics = server.app.metrics
    assert metrics.registry is server.metrics
    assert server.fetch(f"/{HTTP_MAC}/auto.ipxe").code == 200
    assert server.fetch("/52:54:00:00:00:99/auto.ipxe").code == 404
    assert server.fetch("/ipxe/ipxe.efi").code == 200
    assert server.fetch("/healthcheck").code == 200
    assert server.fetch("/metrics").code == 200
    assert server.fetch("/machines").code == 200
    assert server.fetch("/no/such/thing").code == 404
    assert server.fetch("/some/raw/path/" + "x" * 50).code == 404
    seen = {(s.labels["route"], s.labels["code"]): s.value
            for m in metrics.http_requests.collect() for s in m.samples if s.name == "http_requests_total"}
    assert seen == {
        ("auto.ipxe", "200"): 1, ("auto.ipxe", "404"): 1, ("ipxe", "200"): 1, ("healthcheck", "200"): 1,
        ("metrics", "200"): 1, ("machines", "200"): 1, ("other", "404"): 2,
    }
    assert {route for route, _ in seen} <= set(HTTP_ROUTES)
    # the /metrics body is this registry's
    text = server.fetch("/metrics").text
    assert 'http_requests_total{code="200",route="auto.ipxe"} 1.0' in text


def test_http_asset_route_is_named_by_the_handler() -> None:
    from smee.http.app import route_of

    class R:
        path = b"/vmware/ks-esxi.cfg"

    assert route_of(R()) == "other"
    r = R()
    r._smee_route = "asset"  # type: ignore[attr-defined]
    assert route_of(r) == "asset"


# --- boot stages -------------------------------------------------------------------------


def test_boot_stage_seconds_from_the_timeline() -> None:
    clock = Clock()
    metrics = Metrics()
    timeline = BootTimeline(clock, metrics=metrics)
    timeline.seen(MAC, "dhcp-discover")
    clock.advance(0.3)
    timeline.seen(MAC, "dhcp-offer")
    clock.advance(2)
    timeline.seen(MAC, "dhcp-offer")  # a second sighting is not a stage
    assert value(metrics, "boot_stage_seconds_count", from_stage="dhcp-discover", to_stage="dhcp-offer") == 1
    assert value(metrics, "boot_stage_seconds_sum", from_stage="dhcp-discover", to_stage="dhcp-offer") == \
        pytest.approx(0.3)


# --- wiring --------------------------------------------------------------------------------


def test_makeRuntime_wires_metrics_and_timeline_into_every_service(tmp_path: Any) -> None:
    from test_http_service import HW, options

    from smee.dhcp.service import makeService as makeDHCP
    from smee.http.service import makeService as makeHTTP
    from smee.tap import makeRuntime
    from smee.tftp.service import makeService as makeTFTP

    path = tmp_path / "hardware.yaml"
    path.write_text(HW)
    o = options(str(path))
    clock = Clock()
    inner = FakeBackend()
    runtime = makeRuntime(o.settings, inner, clock)
    assert isinstance(runtime.metrics, Metrics) and isinstance(runtime.timeline, BootTimeline)
    assert runtime.timeline.metrics is runtime.metrics and runtime.timeline.clock is clock
    assert isinstance(runtime.backend, InstrumentedBackend) and runtime.backend.wrapped is inner
    http = makeHTTP(o.settings, runtime, clock)
    assert http.app.metrics is runtime.metrics and http.app.timeline is runtime.timeline
    # each service is handed them explicitly and passes them to the protocols it builds
    for service in (makeDHCP(o.settings, runtime, clock), makeTFTP(o.settings, runtime, clock)):
        assert service.metrics is runtime.metrics and service.timeline is runtime.timeline
    assert b"process_" in generate_latest(runtime.metrics.registry) or b"python_info" in generate_latest(
        runtime.metrics.registry)
