"""smee.logs: the ``twistd --logger`` observer (JSON lines, TTY text, levels, rate limiting)."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from twistd_proc import run_then_sigterm
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from smee.logs import RateLimiter, SmeeObserver, _level_from, observer

REPO = Path(__file__).resolve().parent.parent
T0 = 1795680000.25  # 2026-11-26T08:00:00.250Z


def make(level: str = "info", tty: bool = False, clock: Clock | None = None, **kw: Any) -> tuple[Any, io.StringIO, Clock]:
    clock = clock or Clock()
    stream = io.StringIO()
    obs = observer(stream=stream, argv=["twistd", "smee", f"--log-level={level}"], environ={}, clock=clock, tty=tty, **kw)
    return obs, stream, clock


def logger_for(obs: Any, namespace: str) -> Logger:
    publisher = LogPublisher(obs)
    return Logger(namespace=namespace, observer=publisher)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(stream)]


def event(fmt: str, level: LogLevel = LogLevel.info, namespace: str = "smee.dhcp", **fields: Any) -> dict[str, Any]:
    return dict(fields, log_format=fmt, log_level=level, log_namespace=namespace, log_time=T0)


# --- JSON and text ---


def test_factory_returns_an_ilogobserver() -> None:
    obs, _, _ = make()
    assert ILogObserver.providedBy(obs)


def test_json_line_for_a_structured_event() -> None:
    obs, stream, _ = make()
    obs(event("{iface}: OFFER {ip} to {mac}", iface="eth1", ip="192.0.2.10",
              mac="52:54:00:12:34:56", outcome="offer", src=("192.0.2.1", 68), xid=0x1234))
    [rec] = records(stream)
    assert rec == {
        "time": "2026-11-26T08:00:00.250Z",
        "level": "info",
        "namespace": "smee.dhcp",
        "message": "eth1: OFFER 192.0.2.10 to 52:54:00:12:34:56",
        "iface": "eth1", "ip": "192.0.2.10", "mac": "52:54:00:12:34:56",
        "outcome": "offer", "src": ["192.0.2.1", 68], "xid": 0x1234,
    }
    assert list(rec)[:4] == ["time", "level", "namespace", "message"]


def test_json_through_a_real_logger() -> None:
    obs, stream, _ = make()
    logger_for(obs, "smee.tftp").warn("{peer}: refused {file}: {reason}", peer="192.0.2.7", file="x", reason="no such file", outcome="not-found")
    [rec] = records(stream)
    assert rec["level"] == "warn" and rec["namespace"] == "smee.tftp"
    assert rec["message"] == "192.0.2.7: refused x: no such file"
    assert rec["reason"] == "no such file" and not any(k.startswith("log_") for k in rec)


def test_text_on_a_tty_without_repeating_fields() -> None:
    obs, stream, _ = make(tty=True)
    obs(event("{iface}: OFFER {ip} to {mac}", iface="eth1", ip="192.0.2.10", mac="52:54:00:12:34:56"))
    obs(event("lookup failed", LogLevel.warn, "smee.backends.http"))
    assert lines(stream) == [
        "2026-11-26T08:00:00Z info  smee.dhcp  eth1: OFFER 192.0.2.10 to 52:54:00:12:34:56",
        "2026-11-26T08:00:00Z warn  smee.backends.http  lookup failed",
    ]


def test_tty_detected_from_the_stream() -> None:
    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert SmeeObserver(TTY(), clock=Clock()).tty is True
    assert SmeeObserver(io.StringIO(), clock=Clock()).tty is False


def test_non_serialisable_fields_become_text() -> None:
    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    loop: list[Any] = []
    loop.append(loop)
    obs, stream, _ = make()
    obs(event("x", ip=IPv4Address("192.0.2.1"), data=b"\x01", nan=float("nan"), boom=Boom(),
              loop=loop, tuplekeys={(1, 2): 3}, ok={"a": [1, None, True]}))
    [rec] = records(stream)
    assert rec["ip"] == "192.0.2.1"
    assert rec["data"] == "b'\\x01'"
    assert rec["nan"] == "nan"
    assert "Boom object at" in rec["boom"]  # str() failed: its repr
    assert isinstance(rec["loop"], str)
    assert rec["tuplekeys"] == "{(1, 2): 3}"
    assert rec["ok"] == {"a": [1, None, True]}


def test_failure_adds_a_traceback() -> None:
    obs, stream, _ = make()
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logger_for(obs, "smee.dhcp").failure("{iface}: error handling a datagram", iface="eth1")
    [rec] = records(stream)
    assert rec["level"] == "critical"
    assert rec["message"] == "eth1: error handling a datagram"
    assert "ZeroDivisionError" in rec["traceback"] and "Traceback" in rec["traceback"]


def test_failure_on_a_tty_prints_the_traceback_after_the_line() -> None:
    obs, stream, _ = make(tty=True)
    obs(event("boom", LogLevel.error, log_failure=Failure(ValueError("bad"))))
    out = lines(stream)
    assert out[0].endswith("error smee.dhcp  boom")
    assert any("ValueError: bad" in line for line in out[1:])


def test_legacy_events_are_recorded_without_duplicate_keys() -> None:
    obs, stream, _ = make()
    obs({"system": "-", "message": ("hello",), "time": T0, "isError": 0, "log_time": T0, "log_text": "hello",
         "log_format": "{log_text}", "log_level": LogLevel.info, "log_namespace": "log_legacy", "log_system": "-"})
    [rec] = records(stream)
    assert rec == {"time": "2026-11-26T08:00:00.250Z", "level": "info", "namespace": "log_legacy",
                   "message": "hello", "system": "-"}


# --- levels ---


def test_debug_hidden_at_info_and_shown_at_debug() -> None:
    for level, expected in (("info", ["info"]), ("debug", ["debug", "info"]), ("warn", []), ("error", [])):
        obs, stream, _ = make(level)
        obs(event("per packet", LogLevel.debug))
        obs(event("refused", LogLevel.info))
        assert [r["level"] for r in records(stream)] == expected, level


def test_errors_pass_at_every_level() -> None:
    obs, stream, _ = make("error")
    obs(event("warned", LogLevel.warn))
    obs(event("broke", LogLevel.error))
    assert [r["message"] for r in records(stream)] == ["broke"]


def test_twisted_port_chatter_is_demoted_to_debug() -> None:
    noisy = ["SmeeDHCP starting on 67", "(UDP Port 6969 Closed)", "(TCP Port 8080 Closed)",
             "Starting protocol <smee.tftp.protocol.X object at 0x1>", "Stopping protocol <X>",
             "Starting factory <twisted.web.server.Site object at 0x1>"]
    kept = "twistd 26.10.0 starting up."
    for level in ("info", "debug"):
        obs, stream, _ = make(level)
        for text in noisy + [kept]:
            obs({"log_text": text, "log_format": "{log_text}", "log_level": LogLevel.info,
                 "log_namespace": "log_legacy", "log_time": T0})
        recs = records(stream)
        if level == "info":
            assert [r["message"] for r in recs] == [kept]
        else:
            assert [(r["message"], r["level"]) for r in recs] == [(t, "debug") for t in noisy] + [(kept, "info")]
    # smee's own lines are never demoted, whatever they say.
    obs, stream, _ = make()
    obs(event("DHCP listening on 127.0.0.1:67; Stopping protocol x"))
    obs(event("tftp starting on 69"))
    assert len(records(stream)) == 2


def test_level_from_precedence_flag_env_file_default(tmp_path: Path) -> None:
    cfg = tmp_path / "smee.yaml"
    cfg.write_text("log-level: warn\n")
    other = tmp_path / "other.yaml"
    other.write_text("log_level: error\n")
    twistd = ["twistd", "-n", "--pidfile=", "smee"]
    assert _level_from(twistd, {}) == ("info", None)
    assert _level_from(twistd + [f"--config={cfg}"], {}) == ("warn", None)
    assert _level_from(twistd + ["--config", str(cfg)], {}) == ("warn", None)
    assert _level_from(twistd, {"SMEE_CONFIG": str(other)}) == ("error", None)
    assert _level_from(twistd + [f"--config={cfg}"], {"SMEE_CONFIG": str(other)}) == ("warn", None)
    assert _level_from(twistd + [f"--config={cfg}"], {"SMEE_LOG_LEVEL": "debug"}) == ("debug", None)
    assert _level_from(twistd + [f"--config={cfg}", "--log-level", "error"], {"SMEE_LOG_LEVEL": "debug"}) == ("error", None)
    assert _level_from(twistd + ["--log-level=debug", "--log-level=WARN"], {}) == ("warn", None)
    # Only the smee subcommand's options count.
    assert _level_from(["twistd", "--log-level=debug", "smee"], {}) == ("info", None)
    assert _level_from(["twistd", "--log-level=debug"], {"SMEE_LOG_LEVEL": "error"}) == ("error", None)


def test_invalid_level_falls_back_to_info_with_one_warning(tmp_path: Path) -> None:
    level, warning = _level_from(["twistd", "smee", "--log-level=loud"], {})
    assert level == "info" and warning is not None and "--log-level" in warning and "'loud'" in warning
    level, warning = _level_from(["twistd", "smee"], {"SMEE_LOG_LEVEL": "trace"})
    assert level == "info" and warning is not None and "SMEE_LOG_LEVEL" in warning
    bad = tmp_path / "bad.yaml"
    bad.write_text("no-such-setting: 1\n")
    level, warning = _level_from(["twistd", "smee", f"--config={bad}"], {})
    assert level == "info" and warning is not None and "no-such-setting" in warning
    level, warning = _level_from(["twistd", "smee", f"--config={tmp_path / 'missing.yaml'}"], {})
    assert level == "info" and warning is not None

    stream = io.StringIO()
    obs = observer(stream=stream, argv=["twistd", "smee", "--log-level=loud"], environ={}, clock=Clock(), tty=False)
    [rec] = records(stream)
    assert rec["level"] == "warn" and rec["namespace"] == "smee.logs" and "'loud'" in rec["message"]
    obs(event("per packet", LogLevel.debug))
    obs(event("shown", LogLevel.info))
    assert [r["message"] for r in records(stream)][1:] == ["shown"]


# --- rate limiting ---


def refusal(mac: str, level: LogLevel = LogLevel.info, outcome: str = "unknown-mac") -> dict[str, Any]:
    return event("{iface}: ignored {mac}: {reason}", level, iface="eth1", mac=mac, reason="unknown MAC", outcome=outcome)


def test_rate_limiter_passes_n_then_suppresses_and_summarises_after_the_window() -> None:
    clock = Clock()
    clock.advance(T0)
    obs, stream, _ = make(clock=clock)
    for i in range(25):
        obs(refusal(f"52:54:00:00:00:{i:02x}"))
        clock.advance(1)
    recs = records(stream)
    assert len(recs) == 10 and recs[-1]["mac"] == "52:54:00:00:00:09"
    clock.advance(35)  # the window (60 s from the first event) ends: one summary line
    recs = records(stream)
    assert len(recs) == 11
    summary = recs[-1]
    assert summary["message"] == "suppressed 15 similar messages in the last 60 s: {iface}: ignored {mac}: {reason}"
    assert summary["level"] == "info" and summary["namespace"] == "smee.dhcp"
    assert summary["suppressed"] == 15 and summary["outcome"] == "unknown-mac"
    clock.advance(600)
    assert len(records(stream)) == 11  # no repeated summary
    obs(refusal("52:54:00:00:01:00"))  # a fresh window
    assert records(stream)[-1]["mac"] == "52:54:00:00:01:00"


def test_rate_limiter_rolls_over_on_the_next_event_without_a_timer() -> None:
    clock = Clock()
    limiter = RateLimiter(clock, per_key=2, window=10.0)
    emitted: list[dict[str, Any]] = []
    limiter.emit = emitted.append
    e = refusal("m")
    assert [limiter.allow(e) for _ in range(5)] == [True, True, False, False, False]
    clock.advance(10)  # the scheduled call fires
    assert [s["suppressed"] for s in emitted] == [3]
    assert [limiter.allow(e) for _ in range(3)] == [True, True, False]
    # Expire by time alone, with the timer cancelled: the next event rolls the window over.
    for call in clock.getDelayedCalls():
        call.cancel()
    clock.advance(10)
    assert limiter.allow(e) is True
    assert [s["suppressed"] for s in emitted] == [3, 1]
    assert "last 10 s" in formatted(emitted[-1])


def formatted(ev: dict[str, Any]) -> str:
    from twisted.logger import formatEvent

    return formatEvent(ev)


def test_rate_limiter_keys_are_separate() -> None:
    obs, stream, _ = make()
    for _ in range(12):
        obs(refusal("m", outcome="unknown-mac"))
        obs(refusal("m", outcome="pxe-disallowed"))
        obs(refusal("m", LogLevel.warn))
        obs(event("other {x}", x=1, outcome="malformed"))
        obs(event("no outcome"))  # not a refusal: never limited
        obs(event("not smee", namespace="twisted.web", outcome="x"))  # not smee.*: never limited
    msgs = [r["message"] for r in records(stream)]
    assert msgs.count("eth1: ignored m: unknown MAC") == 30
    assert msgs.count("other 1") == 10
    assert msgs.count("no outcome") == 12 and msgs.count("not smee") == 12


def test_errors_are_never_suppressed() -> None:
    obs, stream, clock = make()
    for _ in range(50):
        obs(refusal("m", LogLevel.error))
        obs(refusal("m", LogLevel.critical))
    assert len(records(stream)) == 100
    clock.advance(120)
    assert len(records(stream)) == 100


def test_debug_refusals_are_not_limited_or_counted() -> None:
    obs, stream, _ = make("debug")
    for _ in range(30):
        obs(refusal("m", LogLevel.debug))
    assert len(records(stream)) == 30
    # Hidden debug events do not use up the info budget either.
    obs, stream, _ = make("info")
    for _ in range(30):
        obs(event("{iface}: ignored {mac}: {reason}", LogLevel.debug, iface="e", mac="m", reason="r", outcome="unknown-mac"))
    for _ in range(10):
        obs(refusal("m"))
    assert len(records(stream)) == 10


# --- twistd --logger=smee.logs.observer ---


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_twistd_logger_writes_json_lines(tmp_path: Path) -> None:
    assert "--logger=smee.logs.observer" in (REPO / "scripts" / "run").read_text()
    args = [
        str(Path(sys.executable).with_name("twistd")), "--nodaemon", "--pidfile=", "--logger=smee.logs.observer", "smee",
        "--backend-file-enabled=true", f"--backend-file-path={REPO / 'examples' / 'hardware.yaml'}",
        "--public-ip=127.0.0.1", "--dhcp-enabled=false", "--syslog-enabled=false",
        f"--tftp-port={free_port(socket.SOCK_DGRAM)}",
        f"--http-port={(http_port := free_port(socket.SOCK_STREAM))}",
    ]
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEE_")}
    env["PYTHONPATH"] = str(REPO)
    with open(out_path, "w") as out, open(err_path, "w") as err:
        status = run_then_sigterm(args, tmp_path, env, http_port, out, err,
                                  lambda: f"{out_path.read_text()}\n{err_path.read_text()}")
    assert status == 0, out_path.read_text()
    recs = []
    for line in out_path.read_text().splitlines():
        rec = json.loads(line)
        assert isinstance(rec, dict), line
        assert {"time", "level", "namespace", "message"} <= set(rec), line
        assert rec["time"].endswith("Z") and rec["level"] in ("info", "warn", "error", "critical"), line
        recs.append(rec)
    messages = [r["message"] for r in recs]
    assert any("starting up" in m for m in messages), messages
    assert "Server Shut Down." in messages
    # Port chatter is debug, so not shown at the default level.
    assert not any("starting on" in m or "Port" in m and "Closed" in m for m in messages), messages
    [start] = [r for r in recs if r["namespace"] == "smee.tap" and r.get("mode")]
    assert start["mode"] == "reservation" and start["backend"] == "file" and start["ip"] == "127.0.0.1"
    assert "Traceback" not in out_path.read_text()


def test_pending_summaries_are_written_at_shutdown() -> None:
    """A window still open when smee stops is summed up, not lost (the observer registers flush)."""
    import io

    from twisted.internet.task import Clock

    from smee.logs import observer

    class ShutdownClock(Clock):
        def __init__(self) -> None:
            super().__init__()
            self.triggers: list[tuple[str, str, Any]] = []

        def addSystemEventTrigger(self, phase: str, event: str, fn: Any) -> None:
            self.triggers.append((phase, event, fn))

    clock, out = ShutdownClock(), io.StringIO()
    obs = observer(stream=out, argv=["twistd", "smee"], environ={}, clock=clock, tty=False)
    for i in range(25):
        obs({"log_format": "dropped {n}", "n": i, "outcome": "malformed", "log_level": LogLevel.info,
             "log_namespace": "smee.dhcp", "log_time": 0.0})
    assert out.getvalue().count("\n") == 10
    [(phase, event, flush)] = clock.triggers
    assert (phase, event) == ("after", "shutdown")
    flush()
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last["suppressed"] == 15 and "suppressed 15 similar messages" in last["message"]
