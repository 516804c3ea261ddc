"""The syslog receiver: SyslogProtocol with fake transports and backends, SyslogService, one real socket."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
import pytest_twisted
from fakes import FakeBackend, FakeUDPReactor, FakeUDPTransport, formatted, hardware
from twisted.internet import defer
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs

from smee.syslog.parse import MAX_DATAGRAM
from smee.syslog.protocol import MAX_WAITING, TIMELINE_TEXT, SyslogProtocol, level_for
from smee.syslog.service import SyslogBindError, SyslogService, makeService

IP = "192.0.2.10"
MAC = "52:54:00:00:00:01"
SRC = (IP, 4000)


class Counter:
    """A prometheus Counter with an ``outcome`` label, in miniature."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def labels(self, outcome: str) -> Counter._Child:
        return Counter._Child(self, outcome)

    class _Child:
        def __init__(self, parent: Counter, outcome: str) -> None:
            self.parent, self.outcome = parent, outcome

        def inc(self) -> None:
            self.parent.counts[self.outcome] = self.parent.counts.get(self.outcome, 0) + 1


class Timeline:
    def __init__(self) -> None:
        self.seen_: list[tuple[str, str, dict[str, Any]]] = []

    def seen(self, mac: str, kind: str, **kw: Any) -> None:
        self.seen_.append((mac, kind, kw))


def make(backend: FakeBackend | None = None, **kw: Any) -> tuple[SyslogProtocol, Clock]:
    clock = Clock()
    proto = SyslogProtocol(backend if backend is not None else FakeBackend(), clock, **kw)
    proto.makeConnection(FakeUDPTransport("192.0.2.1", 514))
    return proto, clock


def machine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "smee.syslog.machine"]


def test_structured_event_with_mac() -> None:
    backend = FakeBackend()
    backend.add(hardware(MAC, IP))
    counter, timeline = Counter(), Timeline()
    proto, _ = make(backend, messages=counter, timeline=timeline)
    with capturedLogs() as events:
        proto.datagramReceived(b"<6>ipxe: Configuring (net0 52:54:00:00:00:01)... ok", SRC)
    [e] = machine(events)
    assert e["log_level"] == LogLevel.info
    assert {k: e[k] for k in ("facility", "severity", "hostname", "app_name", "procid", "msgid", "msg", "host", "mac")} == {
        "facility": "kern", "severity": "INFO", "hostname": None, "app_name": "ipxe", "procid": None,
        "msgid": None, "msg": "Configuring (net0 52:54:00:00:00:01)... ok", "host": IP, "mac": MAC,
    }
    assert (e["rfc"], e["priority"], e["lookup"], e["truncated"]) == (3164, 6, "found", False)
    assert formatted([e]) == [f"{IP} ({MAC}) kern.INFO ipxe: Configuring (net0 52:54:00:00:00:01)... ok"]
    assert backend.calls == [("ip", __import__("ipaddress").IPv4Address(IP))]
    assert counter.counts == {"parsed": 1}
    assert timeline.seen_ == [(MAC, "syslog", {"message": "Configuring (net0 52:54:00:00:00:01)... ok"})]


def test_timeline_detail_is_short() -> None:
    backend = FakeBackend()
    backend.add(hardware(MAC, IP))
    timeline = Timeline()
    proto, _ = make(backend, timeline=timeline)
    with capturedLogs():
        proto.datagramReceived(b"<14>app: " + b"w" * 1000, SRC)
    [(_, _, detail)] = timeline.seen_
    assert len(detail["message"]) <= TIMELINE_TEXT


def test_rfc5424_fields_and_json() -> None:
    proto, _ = make()
    with capturedLogs() as events:
        proto.datagramReceived(
            b'<165>1 2003-10-11T22:14:15.003Z node1 tink-worker 77 ACT - {"action":"stream","ok":true}\n', SRC)
    [e] = machine(events)
    assert (e["facility"], e["severity"], e["hostname"], e["app_name"], e["procid"], e["msgid"]) == (
        "local4", "NOTICE", "node1", "tink-worker", "77", "ACT")
    assert e["fields"] == {"action": "stream", "ok": True}
    assert e["timestamp"] == "2003-10-11T22:14:15.003000+00:00"
    assert e["msg"] == '{"action":"stream","ok":true}'  # trailing newline not shown
    assert e["rfc"] == 5424 and e["log_level"] == LogLevel.info


@pytest.mark.parametrize("severity, level", [
    (0, LogLevel.error), (3, LogLevel.error), (4, LogLevel.warn), (5, LogLevel.info),
    (6, LogLevel.info), (7, LogLevel.debug),
])
def test_severity_maps_to_level(severity: int, level: LogLevel) -> None:
    assert level_for(severity) == level
    proto, _ = make()
    with capturedLogs() as events:
        proto.datagramReceived(b"<%d>a: b" % (8 + severity), SRC)
    [e] = machine(events)
    assert e["log_level"] == level


def test_unknown_ip_logs_mac_none() -> None:
    timeline = Timeline()
    proto, _ = make(FakeBackend(), timeline=timeline)
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: hi", SRC)
    [e] = machine(events)
    assert (e["mac"], e["lookup"]) == (None, "unknown")
    assert formatted([e]) == [f"{IP} user.INFO app: hi"]
    assert timeline.seen_ == []


def test_backend_failure_still_logs_without_mac() -> None:
    backend = FakeBackend({IP: RuntimeError("backend down")})
    proto, _ = make(backend)
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: hi", SRC)
    [e] = machine(events)
    assert (e["mac"], e["lookup"], e["msg"]) == (None, "failed", "hi")


def test_backend_raising_synchronously_still_logs() -> None:
    class Broken(FakeBackend):
        def by_ip(self, ip: Any) -> Any:
            raise ValueError("oops")

    proto, _ = make(Broken())
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: hi", SRC)
    [e] = machine(events)
    assert (e["mac"], e["lookup"]) == (None, "failed")


def test_slow_lookup_times_out_after_one_second() -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    proto, clock = make(FakeBackend({IP: pending}))
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: one", SRC)
        proto.datagramReceived(b"<14>app: two", SRC)  # joins the lookup in flight
        assert machine(events) == []
        clock.advance(0.999)
        assert machine(events) == []
        clock.advance(0.001)
    assert [(e["msg"], e["mac"], e["lookup"]) for e in machine(events)] == [
        ("one", None, "timeout"), ("two", None, "timeout")]
    assert clock.getDelayedCalls() == []


def test_messages_wait_for_the_lookup_in_flight_and_stay_in_order() -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    backend = FakeBackend({IP: pending})
    proto, clock = make(backend)
    with capturedLogs() as events:
        for i in range(3):
            proto.datagramReceived(b"<14>app: %d" % i, SRC)
        pending.callback(hardware(MAC, IP))
    assert [(e["msg"], e["mac"]) for e in machine(events)] == [("0", MAC), ("1", MAC), ("2", MAC)]
    assert len(backend.calls) == 1
    assert clock.getDelayedCalls() == []
    # No cache: the next message looks up again.
    backend.set(IP, None)
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: later", SRC)
    assert [(e["msg"], e["mac"]) for e in machine(events)] == [("later", None)]
    assert len(backend.calls) == 2


def test_too_many_waiting_are_logged_at_once() -> None:
    proto, _ = make(FakeBackend({IP: defer.Deferred()}), burst=MAX_WAITING + 2)
    with capturedLogs() as events:
        for i in range(MAX_WAITING + 2):
            proto.datagramReceived(b"<14>app: %d" % i, SRC)
    assert [(e["msg"], e["lookup"]) for e in machine(events)] == [
        (str(MAX_WAITING), "busy"), (str(MAX_WAITING + 1), "busy")]


def test_stop_logs_what_was_waiting() -> None:
    proto, clock = make(FakeBackend({IP: defer.Deferred()}))
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: last words", SRC)
        proto.doStop()
    assert [(e["msg"], e["lookup"]) for e in machine(events)] == [("last words", "cancelled")]
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("data", [b"", b"garbage", b"<999>x", b"<14>1 - h a - - [sd] x", b"\xff\xfe<"])
def test_malformed_is_logged_raw(data: bytes) -> None:
    counter = Counter()
    backend = FakeBackend()
    proto, _ = make(backend, messages=counter)
    with capturedLogs() as events:
        proto.datagramReceived(data, SRC)
    [e] = machine(events)
    assert e["log_level"] == LogLevel.info and e["outcome"] == "malformed"
    assert formatted([e])[0].startswith(f"malformed syslog from {IP}: {data!r} (")
    assert counter.counts == {"malformed": 1}
    assert backend.calls == []


def test_malformed_raw_is_cut() -> None:
    proto, _ = make()
    with capturedLogs() as events:
        proto.datagramReceived(b"x" * 5000, SRC)
    [text] = formatted(machine(events))
    assert len(text) < 700 and "... (5000 bytes)" in text


def test_truncated_datagram_is_noted() -> None:
    proto, _ = make()
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: " + b"y" * MAX_DATAGRAM, SRC)
    [e] = machine(events)
    assert e["truncated"] is True
    assert formatted([e])[0].endswith(f"(datagram truncated to {MAX_DATAGRAM} bytes)")


def test_backspaces_removed_from_msg() -> None:
    proto, _ = make()
    with capturedLogs() as events:
        proto.datagramReceived(b"<6>ipxe: spinning|\b/\b-\bok", SRC)
    assert machine(events)[0]["msg"] == "spinning|/-ok"


def test_broken_metrics_and_timeline_never_raise() -> None:
    class Bad:
        def labels(self, **kw: Any) -> Any:
            raise RuntimeError("metrics")

        def seen(self, *a: Any, **kw: Any) -> None:
            raise RuntimeError("timeline")

    backend = FakeBackend()
    backend.add(hardware(MAC, IP))
    proto, _ = make(backend, messages=Bad(), timeline=Bad())
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: still here", SRC)
    assert [e["msg"] for e in machine(events)] == ["still here"]


def test_ipv6_or_odd_sender_never_raises() -> None:
    proto, _ = make()
    with capturedLogs() as events:
        proto.datagramReceived(b"<14>app: hi", ("::1", 514, 0, 0))
    [e] = machine(events)
    assert (e["host"], e["mac"], e["lookup"]) == ("::1", None, "failed")


# --- service ------------------------------------------------------------------------


def test_service_binds_in_privileged_start_once() -> None:
    reactor = FakeUDPReactor()
    svc = SyslogService(FakeBackend(), reactor, ("127.0.0.1", 5514))
    with capturedLogs() as events:
        svc.privilegedStartService()
        svc.startService()
    assert len(reactor.ports) == 1 and reactor.ports[0].host.port == 5514
    assert "syslog listening on 127.0.0.1:5514 (UDP)" in formatted(events)
    with capturedLogs() as events:
        reactor.ports[0].receive(b"<14>app: via port", SRC)
    assert [e["msg"] for e in machine(events)] == ["via port"]
    svc.stopService()
    assert reactor.open_ports == [] and svc.port is None


@pytest.mark.parametrize("code, hint", [
    (errno.EADDRINUSE, "another syslog server is listening; stop it, choose another --syslog-port"),
    (errno.EACCES, "ports below 1024 need root"),
    (errno.EADDRNOTAVAIL, "set --syslog-addr to one"),
])
def test_bind_errors_are_one_clear_line(code: int, hint: str) -> None:
    reactor = FakeUDPReactor()
    reactor.fail_listen = OSError(code, "boom")
    svc = SyslogService(FakeBackend(), reactor, ("192.0.2.1", 514))
    with pytest.raises(SyslogBindError) as e:
        svc.privilegedStartService()
    text = str(e.value)
    assert text.startswith("smee: --syslog-addr=192.0.2.1 --syslog-port=514: cannot listen for syslog on 192.0.2.1:514")
    assert hint in text and text.endswith(": boom")
    assert isinstance(e.value, SystemExit)


def test_make_service_uses_settings_and_runtime_extras() -> None:
    class Settings:
        syslog_addr = "127.0.0.1"
        syslog_port = 5514

    class Metrics:
        syslog_messages = Counter()

    class Runtime:
        backend = FakeBackend()
        metrics = Metrics()
        timeline = Timeline()

    svc = makeService(Settings(), Runtime(), FakeUDPReactor())
    assert svc.address == ("127.0.0.1", 5514)
    assert svc.messages is Metrics.syslog_messages and svc.timeline is Runtime.timeline

    class Bare:
        backend = FakeBackend()

    svc = makeService(Settings(), Bare(), FakeUDPReactor())
    assert svc.messages is None and svc.timeline is None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_real_socket_on_loopback() -> None:
    from twisted.internet import reactor

    backend = FakeBackend()
    backend.add(hardware(MAC, "127.0.0.1"))
    svc = SyslogService(backend, reactor, ("127.0.0.1", _free_udp_port()))
    svc.privilegedStartService()
    port = svc.port.getHost().port
    try:
        with capturedLogs() as events:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"<6>ipxe: over the wire", ("127.0.0.1", port))
                s.sendto(b"<14>app: " + b"z" * (MAX_DATAGRAM + 100), ("127.0.0.1", port))
            for _ in range(200):
                if len(machine(events)) >= 2:
                    break
                await deferLater(reactor, 0.01, lambda: None)
        first, second = machine(events)
        assert (first["msg"], first["host"], first["mac"]) == ("over the wire", "127.0.0.1", MAC)
        assert second["truncated"] is True
    finally:
        await svc.stopService()


# --- tap -------------------------------------------------------------------------------


def _tap(tmp_path: Any, *extra: str) -> Any:
    from smee.tap import Options
    from smee.tap import makeService as makeTap

    hw = tmp_path / "hw.yaml"
    hw.write_text("52:54:00:00:00:01:\n  ipAddress: 192.0.2.10\n  subnetMask: 255.255.255.0\n")
    options = Options(environ={}, detect_ip=lambda iface: __import__("ipaddress").IPv4Address("192.0.2.1"))
    options.parseOptions(["--backend-file-enabled=true", f"--backend-file-path={hw}", *extra])
    return makeTap(options, reactor=Clock())


def test_tap_has_syslog_child(tmp_path: Any) -> None:
    top = _tap(tmp_path, "--syslog-port=5514")
    svc = top.getServiceNamed("syslog")
    assert isinstance(svc, SyslogService) and svc.address == ("192.0.2.1", 5514)
    # The runtime's backend (the backend child, possibly wrapped for metrics).
    assert callable(svc.backend.by_ip)


def test_tap_without_syslog(tmp_path: Any) -> None:
    with capturedLogs() as events:
        top = _tap(tmp_path, "--syslog-enabled=false")
    assert "syslog" not in [s.name for s in top]
    assert "syslog disabled by configuration" in formatted(events)


# --- per-sender limit ------------------------------------------------------------------


def test_flooding_sender_is_limited_and_others_are_not() -> None:
    """One address sending 5,000 lines at once gets its burst through; another machine loses nothing."""
    counter = Counter()
    proto, clock = make(messages=counter, rate=50, burst=100)
    other = ("192.0.2.11", 4000)
    with capturedLogs() as events:
        for i in range(5000):
            proto.datagramReceived(b"<6>flood: line %d" % i, SRC)
            if i % 1000 == 0:
                proto.datagramReceived(b"<6>installer: step %d" % i, other)
    lines = machine(events)
    assert sum(e["host"] == IP for e in lines) == 100
    assert [e["msg"] for e in lines if e["host"] == other[0]] == [f"step {i}" for i in range(0, 5000, 1000)]
    assert counter.counts["rate-limited"] == 4900 and counter.counts["parsed"] == 105
    # machine lines carry no "outcome": the observer's per-kind limiter must not lump all senders together
    assert all("outcome" not in e for e in lines)


def test_dropped_lines_are_summed_up_once_and_the_bucket_refills() -> None:
    proto, clock = make(rate=10, burst=5)
    with capturedLogs() as events:
        for _ in range(8):
            proto.datagramReceived(b"<6>x: y", SRC)
        clock.advance(1.0)  # 10 tokens back, capped at the burst of 5
        for _ in range(6):
            proto.datagramReceived(b"<6>x: y", SRC)
    warnings = [e for e in events if e.get("log_namespace") == "smee.syslog" and e["log_level"] == LogLevel.warn]
    assert [(e["host"], e["dropped"]) for e in warnings] == [(IP, 3)]  # written when the sender was let in again
    assert len(machine(events)) == 5 + 5
    with capturedLogs() as events:
        clock.advance(60)  # the summary timer of the second burst
    assert [(e["host"], e["dropped"]) for e in events if "dropped" in e] == [(IP, 1)]
    assert clock.getDelayedCalls() == []


def test_summaries_at_shutdown_and_for_forgotten_senders(monkeypatch: pytest.MonkeyPatch) -> None:
    import smee.syslog.protocol as mod

    monkeypatch.setattr(mod, "MAX_SENDERS", 3)
    proto, clock = make(rate=1, burst=1)
    with capturedLogs() as events:
        for n in range(5):
            host = (f"192.0.2.{20 + n}", 514)
            proto.datagramReceived(b"<6>a: b", host)
            proto.datagramReceived(b"<6>a: b", host)  # over the limit
        assert len(proto._buckets) == 3  # bounded: the longest-idle senders were forgotten (and summed up)
        proto.stopProtocol()
    dropped = sorted((e["host"], e["dropped"]) for e in events if "dropped" in e)
    assert dropped == [(f"192.0.2.{20 + n}", 1) for n in range(5)]
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


def test_limit_off() -> None:
    proto, _ = make(rate=0)
    with capturedLogs() as events:
        for _ in range(1000):
            proto.datagramReceived(b"<6>a: b", SRC)
    assert len(machine(events)) == 1000
