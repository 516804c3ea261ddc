"""FileBackend: lookups, last-good-data, reload by poll/inotify/rename/symlink swap, clean stop.

Clock-driven tests cover the timing logic deterministically (a Clock is not an
IReactorFDSet, so no inotify is used); the real-reactor tests at the end prove
the inotify path end to end, waiting with a deadline rather than sleeping.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from smee.backends import AmbiguousHardware, HardwareBackend, LookupFailed
from smee.backends import file as file_mod
from smee.backends.file import FileBackend, wanted
from smee.formats import HardwareFileError, ParseResult
from smee.hardware import Match

M1, M2, M3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


def machine(mac: str, ip: str, hostname: str = "m") -> str:
    """One record in Smee's file format; the flow map last so truncation breaks YAML."""
    return (
        f"{mac}:\n"
        f"  ipAddress: {ip}\n"
        f"  subnetMask: 255.255.255.0\n"
        f"  hostname: {hostname}\n"
        f"  netboot: {{allowPxe: true}}\n"
    )


GOOD = machine(M1, "192.0.2.10", "m1")
GOOD2 = machine(M1, "192.0.2.10", "m1") + machine(M2, "192.0.2.11", "m2")
GARBAGE = "52:54:00:00:00:01: [unclosed\n  - : : :\n"


def result(d: Deferred[Any]) -> Any:
    """The result (or Failure) of an already-fired Deferred: the backend answers synchronously."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "backend Deferred did not fire synchronously"
    return out[0]


def served(backend: FileBackend, mac: str) -> Match | None:
    found = result(backend.by_mac(mac))
    assert not isinstance(found, Failure), found
    return found


def hostname(backend: FileBackend, mac: str = M1) -> str | None:
    found = served(backend, mac)
    return found.interface.hostname if found else None


def make(path: Path, clock: Clock | None = None, **kw: Any) -> FileBackend:
    kw.setdefault("poll_interval", 30.0)
    return FileBackend(str(path), clock or Clock(), **kw)


def texts(events: list[Any], level: LogLevel | None = None) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if level is None or e.get("log_level") == level]


# --- lookups ------------------------------------------------------------


def test_is_a_hardware_backend_named_file(tmp_path: Path) -> None:
    backend = make(tmp_path / "hw.yaml")
    assert isinstance(backend, HardwareBackend)
    assert backend.kind == "file"


@pytest.mark.parametrize(
    "mac", [M1, "52:54:00:00:00:01".upper(), "52-54-00-00-00-01", "5254.0000.0001", "525400000001", "52:54:0:0:0:1"]
)
def test_lookup_by_any_mac_notation(tmp_path: Path, mac: str) -> None:
    (tmp_path / "hw.yaml").write_text(GOOD)
    backend = make(tmp_path / "hw.yaml")
    backend.load()
    found = served(backend, mac)
    assert found is not None
    assert found.interface.mac == M1
    assert found.interface.ip == IPv4Address("192.0.2.10")


def test_lookup_by_ip_as_address_or_string(tmp_path: Path) -> None:
    (tmp_path / "hw.yaml").write_text(GOOD2)
    backend = make(tmp_path / "hw.yaml")
    backend.load()
    assert result(backend.by_ip(IPv4Address("192.0.2.11"))).interface.mac == M2
    assert result(backend.by_ip("192.0.2.10")).interface.mac == M1
    assert result(backend.by_ip(IPv4Address("192.0.2.99"))) is None
    assert served(backend, M3) is None


def test_garbage_keys_fail_with_lookup_failed(tmp_path: Path) -> None:
    (tmp_path / "hw.yaml").write_text(GOOD)
    backend = make(tmp_path / "hw.yaml")
    backend.load()
    for d in (backend.by_mac("not-a-mac"), backend.by_mac(None), backend.by_ip("300.1.1.1")):  # type: ignore[arg-type]
        failure = result(d)
        assert isinstance(failure, Failure) and failure.check(LookupFailed)


def test_duplicate_mac_across_files_fails_only_that_lookup(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD2)
    (tmp_path / "b.yaml").write_text(machine(M1, "192.0.2.20", "other") + machine(M3, "192.0.2.12"))
    backend = make(tmp_path)
    with capturedLogs() as events:
        backend.load()
    failure = result(backend.by_mac(M1))
    assert isinstance(failure, Failure) and failure.check(AmbiguousHardware)
    assert "a.yaml" in failure.getErrorMessage() and "b.yaml" in failure.getErrorMessage()
    # Every other key, including the other IPs of the two claimants, still answers.
    assert served(backend, M2) is not None and served(backend, M3) is not None
    assert result(backend.by_ip("192.0.2.10")).interface.hostname == "m1"
    assert result(backend.by_ip("192.0.2.20")).interface.hostname == "other"
    assert backend.state()["duplicates"] == 1
    assert any(M1 in t for t in texts(events, LogLevel.warn))


def test_duplicate_ip_fails_only_that_lookup(tmp_path: Path) -> None:
    (tmp_path / "hw.yaml").write_text(machine(M1, "192.0.2.10") + machine(M2, "192.0.2.10"))
    backend = make(tmp_path / "hw.yaml")
    backend.load()
    failure = result(backend.by_ip("192.0.2.10"))
    assert isinstance(failure, Failure) and failure.check(AmbiguousHardware)
    assert served(backend, M1) is not None and served(backend, M2) is not None


def test_state(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1000)
    (tmp_path / "hw.yaml").write_text(GOOD2)
    backend = make(tmp_path / "hw.yaml", clock)
    assert backend.state()["ready"] is False and backend.state()["records"] == 0
    backend.load()
    assert backend.state() == {
        "backend": "file",
        "path": str(tmp_path / "hw.yaml"),
        "ready": True,
        "records": 2,
        "last_load": 1000.0,
        "errors": [],
        "duplicates": 0,
        "degraded": False,
    }


# --- first load -----------------------------------------------------------


def test_first_load_of_broken_file_raises_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GARBAGE)
    backend = make(path)
    with pytest.raises(HardwareFileError) as err:
        backend.load()
    assert str(err.value).startswith(f"{path}:")
    assert err.value.line is not None
    assert backend.state()["ready"] is False
    assert backend.state()["errors"] == [str(err.value)]


def test_first_load_of_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(HardwareFileError, match="hw.yaml"):
        make(tmp_path / "hw.yaml").load()
    with pytest.raises(HardwareFileError, match="nodir"):
        make(tmp_path / "nodir" / "hw.yaml").load()


def test_start_service_loads_and_fails_before_running(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GARBAGE)
    clock = Clock()
    backend = make(path, clock)
    with pytest.raises(HardwareFileError):
        backend.startService()
    assert not backend.running and clock.getDelayedCalls() == []
    path.write_text(GOOD)
    backend.startService()
    assert backend.running and hostname(backend) == "m1"
    backend.stopService()


def test_path_created_as_a_directory_after_a_failed_first_load(tmp_path: Path) -> None:
    d = tmp_path / "hw"
    backend = make(d)
    with pytest.raises(HardwareFileError):
        backend.load()
    d.mkdir()
    (d / "a.yaml").write_text(GOOD)
    backend.load()
    assert hostname(backend) == "m1" and backend.state()["errors"] == []


def test_first_load_then_fix_after_failure(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GARBAGE)
    backend = make(path)
    with pytest.raises(HardwareFileError):
        backend.load()
    path.write_text(GOOD)
    backend.load()
    assert hostname(backend) == "m1" and backend.state()["errors"] == []


# --- reload: poll, debounce, forced ----------------------------------------


def test_poll_picks_up_in_place_write(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock)
    backend.startService()
    path.write_text(GOOD2.replace("m1", "m1-renamed"))
    clock.advance(29)
    assert served(backend, M2) is None
    with capturedLogs() as events:
        clock.advance(1)
    assert hostname(backend) == "m1-renamed" and served(backend, M2) is not None
    assert f"reloaded hardware from {path}: 2 records (was 1)" in texts(events, LogLevel.info)
    assert backend.state()["last_load"] == 30.0
    backend.stopService()


def test_poll_picks_up_same_size_rewrite_in_the_same_clock_tick(tmp_path: Path) -> None:
    # Same inode, same size and possibly the same coarse mtime: the signature
    # cannot tell, so a file modified just before it was read is re-read.
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock)
    backend.startService()
    path.write_text(GOOD.replace("m1", "m9"))
    clock.advance(30)
    assert hostname(backend) == "m9"
    backend.stopService()


def test_unchanged_check_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    old = time.time() - 60  # well outside the "racily clean" window
    os.utime(path, (old, old))
    clock = Clock()
    backend = make(path, clock)
    backend.startService()
    calls: list[str] = []
    real = file_mod.load_file
    with pytest.MonkeyPatch.context() as mp, capturedLogs() as events:
        mp.setattr(file_mod, "load_file", lambda p: calls.append(p) or real(p))
        clock.advance(30)
        clock.advance(30)
    assert calls == [] and texts(events) == []
    assert backend.state()["last_load"] == 0.0
    backend.stopService()


def test_touch_without_content_change_does_not_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock)
    backend.startService()
    os.utime(path, (time.time() - 5, time.time() - 5))
    with capturedLogs() as events:
        clock.advance(30)
    assert not any("reloaded" in t for t in texts(events))
    assert backend.state()["last_load"] == 0.0
    backend.stopService()


def test_poll_picks_up_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock)
    backend.startService()
    tmp = tmp_path / ".hw.yaml.tmp"
    tmp.write_text(GOOD2)
    os.replace(tmp, path)
    clock.advance(30)
    assert served(backend, M2) is not None
    backend.stopService()


def test_debounce_coalesces_a_burst_into_one_check(tmp_path: Path) -> None:
    # Binary fractions so that float sums land exactly on the deadlines.
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock, poll_interval=0, debounce=0.25)
    backend.startService()
    checks: list[float] = []
    backend._check = lambda: checks.append(clock.seconds())  # type: ignore[method-assign]
    for _ in range(5):
        backend._on_event(None, None, 0x2)  # IN_MODIFY, as inotify would deliver
        clock.advance(0.125)
    assert checks == []  # each event pushed the check back
    clock.advance(0.125)
    assert checks == [0.75]  # last event at 0.5 + debounce
    backend._on_event(None, None, 0x80)
    clock.advance(0.25)
    assert checks == [0.75, 1.0]
    backend.stopService()


def test_debounce_is_capped_for_a_directory_that_never_settles(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock, poll_interval=0, debounce=0.2)
    backend.startService()
    checks: list[float] = []
    backend._check = lambda: checks.append(clock.seconds())  # type: ignore[method-assign]
    for _ in range(100):  # an event every 0.1 s for 10 s
        backend._on_event(None, None, 0x2)
        clock.advance(0.1)
    assert 3 <= len(checks) <= 6
    backend.stopService()


def test_debounced_event_reloads(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock, poll_interval=0)
    backend.startService()
    path.write_text(GOOD2)
    backend._on_event(None, None, 0x8)  # IN_CLOSE_WRITE
    clock.advance(0.2)
    assert served(backend, M2) is not None
    backend.stopService()


def test_reload_forces_a_reread(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend = make(path, Clock(), poll_interval=0)
    backend.load()
    path.write_text(GOOD2)
    backend.reload()
    assert served(backend, M2) is not None


def test_warnings_are_logged_at_warn_once_per_content(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD + "  bogus: 1\n")
    clock = Clock()
    backend = make(path, clock)
    with capturedLogs() as events:
        backend.startService()
    [warning] = [t for t in texts(events, LogLevel.warn)]
    assert warning.startswith(f"{path}:6: ") and "bogus" in warning
    with capturedLogs() as events:
        backend.reload()  # same content: no new warning
    assert texts(events, LogLevel.warn) == []
    backend.stopService()


def test_poll_survives_an_unexpected_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock)
    backend.startService()
    real = file_mod.load_file

    def boom(p: str) -> ParseResult:
        raise RuntimeError("boom")

    path.write_text(GOOD2)
    monkeypatch.setattr(file_mod, "load_file", boom)
    with capturedLogs() as events:
        clock.advance(30)
    assert any(e.get("log_failure") for e in events)
    monkeypatch.setattr(file_mod, "load_file", real)
    clock.advance(30)
    assert served(backend, M2) is not None
    backend.stopService()


# --- last good data ---------------------------------------------------------


def _started(path: Path) -> tuple[FileBackend, Clock]:
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock)
    backend.startService()
    return backend, clock


def _replace_by_garbage(path: Path) -> None:
    path.write_text(GARBAGE)


def _truncate(path: Path) -> None:
    text = GOOD2
    path.write_text(text[: text.rindex("{allowPxe") + 5])  # cut inside the last flow map


def _delete(path: Path) -> None:
    path.unlink()


def _make_it_a_directory(path: Path) -> None:
    # Stands in for "unreadable" (root ignores chmod 000): stat works, reading fails.
    path.unlink()
    path.mkdir()


def _chmod_000(path: Path) -> None:
    path.chmod(0)


@pytest.mark.parametrize(
    "breakage", [_replace_by_garbage, _truncate, _delete, _make_it_a_directory, _chmod_000]
)
def test_last_good_data_survives_and_recovers(tmp_path: Path, breakage: Callable[[Path], None]) -> None:
    if breakage is _chmod_000 and os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root reading (covered by _make_it_a_directory)")
    path = tmp_path / "hw.yaml"
    backend, clock = _started(path)
    with capturedLogs() as events:
        breakage(path)
        clock.advance(30)
    assert hostname(backend) == "m1" and backend.state()["records"] == 1
    [error] = backend.state()["errors"]
    assert error.startswith(str(path))
    errors = texts(events, LogLevel.error)
    assert len(errors) == 1 and str(path) in errors[0] and "keeping 1 records" in errors[0]
    # A broken file stays broken without repeating the error on every poll.
    with capturedLogs() as events:
        clock.advance(30)
    assert texts(events, LogLevel.error) == []
    # Fixed: the new content is served and the error is gone.
    if path.is_dir():
        path.rmdir()
    elif path.exists():
        path.chmod(0o644)
    path.write_text(GOOD2.replace("m1", "m1-fixed"))
    clock.advance(30)
    assert hostname(backend) == "m1-fixed" and served(backend, M2) is not None
    assert backend.state()["errors"] == []
    backend.stopService()


def test_parse_error_is_logged_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    backend, clock = _started(path)
    path.write_text(GOOD + "52:54:00:00:00:02:\n  ipAddress: 999.1.1.1\n")
    with capturedLogs() as events:
        clock.advance(30)
    [error] = texts(events, LogLevel.error)
    [state_error] = backend.state()["errors"]
    assert re.match(rf"{re.escape(str(path))}:\d+: ", state_error), state_error
    assert state_error in error
    backend.stopService()


# --- directory mode and ConfigMaps ------------------------------------------


def test_directory_reads_only_hardware_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(machine(M1, "192.0.2.10"))
    (tmp_path / "b.yml").write_text(machine(M2, "192.0.2.11"))
    (tmp_path / "c.json").write_text(f'{{"{M3}": {{"ipAddress": "192.0.2.12", "subnetMask": "255.255.255.0"}}}}')
    junk = machine("52:54:00:00:00:99", "192.0.2.99")
    for name in (".a.yaml.swp", "a.yaml~", ".hidden.yaml", "notes.txt", "a.yaml.bak"):
        (tmp_path / name).write_text(junk)
    (tmp_path / "sub.yaml").mkdir()
    (tmp_path / "sub.yaml" / "x.yaml").write_text(junk)
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "x.yaml").write_text(junk)
    backend = make(tmp_path)
    backend.load()
    assert backend.state()["records"] == 3 and backend.state()["errors"] == []
    assert served(backend, "52:54:00:00:00:99") is None


@pytest.mark.parametrize(
    "name, ok",
    [("hw.yaml", True), ("HW.YML", True), ("x.json", True), (".x.yaml", False), ("x.yaml~", False),
     (".x.yaml.swp", False), ("..data", False), ("x.txt", False), ("#x.yaml#", False)],
)
def test_wanted(name: str, ok: bool) -> None:
    assert wanted(name) is ok


def test_directory_add_and_remove_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(machine(M1, "192.0.2.10"))
    clock = Clock()
    backend = make(tmp_path, clock)
    backend.startService()
    (tmp_path / "b.yaml").write_text(machine(M2, "192.0.2.11"))
    clock.advance(30)
    assert served(backend, M2) is not None and backend.state()["records"] == 2
    with capturedLogs() as events:
        (tmp_path / "a.yaml").unlink()
        clock.advance(30)
    assert served(backend, M1) is None and backend.state()["records"] == 1
    assert backend.state()["errors"] == []
    assert any("a.yaml removed: dropped 1 records" in t for t in texts(events, LogLevel.info))
    backend.stopService()


def test_directory_broken_file_among_good_ones(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(machine(M1, "192.0.2.10"))
    (tmp_path / "b.yaml").write_text(GARBAGE)
    clock = Clock()
    backend = make(tmp_path, clock)
    backend.startService()  # some good data: no exception
    assert served(backend, M1) is not None
    [error] = backend.state()["errors"]
    assert "b.yaml" in error
    (tmp_path / "b.yaml").write_text(machine(M2, "192.0.2.11"))
    clock.advance(30)
    assert served(backend, M2) is not None and backend.state()["errors"] == []
    backend.stopService()


def test_directory_with_only_broken_files_raises(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GARBAGE)
    (tmp_path / "b.yaml").write_text(GARBAGE)
    with pytest.raises(HardwareFileError, match="a.yaml"):
        make(tmp_path).load()


def test_empty_directory_loads_with_no_records(tmp_path: Path) -> None:
    backend = make(tmp_path)
    with capturedLogs() as events:
        backend.load()
    assert backend.state()["ready"] is True and backend.state()["records"] == 0
    assert any("no hardware files" in t for t in texts(events, LogLevel.warn))


def test_directory_removed_keeps_everything_then_recovers(tmp_path: Path) -> None:
    d = tmp_path / "hw"
    d.mkdir()
    (d / "a.yaml").write_text(GOOD)
    clock = Clock()
    backend = make(d, clock)
    backend.startService()
    shutil.rmtree(d)
    clock.advance(30)
    assert hostname(backend) == "m1"
    assert backend.state()["errors"] and str(d) in backend.state()["errors"][0]
    d.mkdir()
    (d / "a.yaml").write_text(GOOD2)
    clock.advance(30)
    assert served(backend, M2) is not None and backend.state()["errors"] == []
    backend.stopService()


def _configmap(root: Path, version: str, text: str) -> None:
    """What the kubelet does: write a timestamped dir, then atomically swap ``..data``."""
    target = root / f"..{version}"
    target.mkdir()
    (target / "hardware.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(target.name)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    os.replace(tmp, root / "..data")
    if not (root / "hardware.yaml").is_symlink():
        (root / "hardware.yaml").symlink_to("..data/hardware.yaml")
    if old:
        shutil.rmtree(root / old)


@pytest.mark.parametrize("mode", ["file", "directory"])
def test_configmap_symlink_swap(tmp_path: Path, mode: str) -> None:
    _configmap(tmp_path, "2024_01", GOOD)
    clock = Clock()
    backend = make(tmp_path / "hardware.yaml" if mode == "file" else tmp_path, clock)
    backend.startService()
    assert backend.state()["records"] == 1
    _configmap(tmp_path, "2024_02", GOOD2)
    clock.advance(30)
    assert backend.state()["records"] == 2 and served(backend, M2) is not None
    assert backend.state()["errors"] == []
    backend.stopService()


# --- stop ---------------------------------------------------------------


def test_stop_service_leaves_no_pending_calls(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    clock = Clock()
    backend = make(path, clock)
    backend.startService()
    backend._on_event(None, None, 0x2)  # a debounced check is pending
    assert len(clock.getDelayedCalls()) == 2  # poll + debounce
    backend.stopService()
    assert clock.getDelayedCalls() == []
    assert not backend.running
    clock.advance(3600)
    assert hostname(backend) == "m1"  # still answers from the last index


# --- real reactor: inotify ----------------------------------------------------


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, 0.02, lambda: None)


def _real(path: Path) -> FileBackend:
    from twisted.internet import reactor

    # The poll is an hour away: only inotify can explain a reload within 2 s.
    backend = FileBackend(str(path), reactor, poll_interval=3600, debounce=0.05)
    backend.startService()
    assert backend._notifier is not None, "inotify watch was not set up"
    return backend


@pytest_twisted.ensureDeferred
async def test_inotify_in_place_write(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend = _real(path)
    try:
        path.write_text(GOOD2)
        await wait_for(lambda: served(backend, M2) is not None)
    finally:
        backend.stopService()


@pytest_twisted.ensureDeferred
async def test_inotify_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend = _real(path)
    try:
        for n, host in enumerate(["second", "third"]):
            tmp = tmp_path / f".hw.yaml.{n}.tmp"
            tmp.write_text(GOOD2.replace("m1", host))
            os.replace(tmp, path)
            await wait_for(lambda: hostname(backend) == host)  # noqa: B023
    finally:
        backend.stopService()


@pytest_twisted.ensureDeferred
async def test_inotify_configmap_swap(tmp_path: Path) -> None:
    _configmap(tmp_path, "2024_01", GOOD)
    backend = _real(tmp_path / "hardware.yaml")
    try:
        _configmap(tmp_path, "2024_02", GOOD2)
        await wait_for(lambda: served(backend, M2) is not None)
    finally:
        backend.stopService()


@pytest_twisted.ensureDeferred
async def test_inotify_directory_add_remove_and_bad_edit(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(machine(M1, "192.0.2.10", "m1"))
    backend = _real(tmp_path)
    try:
        (tmp_path / "b.yaml").write_text(machine(M2, "192.0.2.11"))
        await wait_for(lambda: served(backend, M2) is not None)
        (tmp_path / "a.yaml").write_text(GARBAGE)
        await wait_for(lambda: bool(backend.state()["errors"]))
        assert hostname(backend) == "m1"
        (tmp_path / "a.yaml").unlink()
        await wait_for(lambda: served(backend, M1) is None)
        assert backend.state()["errors"] == []
    finally:
        backend.stopService()


@pytest_twisted.ensureDeferred
async def test_inotify_stop_releases_the_watch(tmp_path: Path) -> None:
    from twisted.internet import reactor

    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend = _real(path)
    notifier = backend._notifier
    assert notifier in reactor.getReaders()
    path.write_text(GOOD2)  # an event may be pending when we stop
    backend.stopService()
    assert notifier not in reactor.getReaders()
    assert notifier.fileno() == -1 or not notifier.connected
    assert backend._pending is None and backend._poll is None


@pytest_twisted.ensureDeferred
async def test_watch_comes_back_with_a_deleted_directory(tmp_path: Path) -> None:
    from twisted.internet import reactor

    d = tmp_path / "hw"
    d.mkdir()
    (d / "a.yaml").write_text(GOOD)
    backend = FileBackend(str(d), reactor, poll_interval=0.2, debounce=0.05)
    backend.startService()
    try:
        shutil.rmtree(d)
        await wait_for(lambda: backend._notifier is None)  # DELETE_SELF seen
        await wait_for(lambda: bool(backend.state()["errors"]))
        assert hostname(backend) == "m1"  # last good data kept
        d.mkdir()
        (d / "a.yaml").write_text(GOOD2)
        await wait_for(lambda: served(backend, M2) is not None)
        assert backend._notifier is not None  # re-created by the poll
    finally:
        backend.stopService()


# --- real reactor: reloads in a worker thread -----------------------------------


def big(n: int, tag: str, extra: str = "") -> str:
    """``n`` records (MACs 02:00:…, addresses from 10.0.0.0/8), hostnames ``{tag}-{i}``."""
    out = []
    for i in range(n):
        b = i.to_bytes(4, "big")
        mac = "02:00:" + ":".join(f"{x:02x}" for x in b)
        out.append(machine(mac, f"10.{b[1]}.{b[2]}.{b[3]}", f"{tag}-{i}"))
    return "".join(out) + extra


BIG_M0 = "02:00:00:00:00:00"


def test_parse_in_thread_follows_the_reactor(tmp_path: Path) -> None:
    from twisted.internet import reactor

    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    assert make(path)._parse_in_thread is False  # a Clock has no thread pool
    assert FileBackend(str(path), reactor)._parse_in_thread is True
    assert FileBackend(str(path), reactor, parse_in_thread=False)._parse_in_thread is False
    with pytest.raises(ValueError, match="IReactorThreads"):
        make(path, parse_in_thread=True)


def _threaded(path: Path) -> FileBackend:
    from twisted.internet import reactor

    # No poll, no inotify: only the test's own calls reload.
    backend = FileBackend(str(path), reactor, poll_interval=0, use_inotify=False)
    assert backend._parse_in_thread
    backend.startService()
    return backend


@pytest_twisted.ensureDeferred
async def test_big_reload_runs_off_the_reactor_thread(tmp_path: Path) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    n = 20_000
    path = tmp_path / "hw.yaml"
    path.write_text(big(n, "old"))
    backend = _threaded(path)
    seen: list[str | None] = []
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        seen.append(hostname(backend, BIG_M0))  # a lookup mid-reload

    path.write_text(big(n, "new", extra=machine(M1, "192.0.2.10", "added")))
    loop = LoopingCall(tick)
    loop.clock = reactor
    try:
        start = time.monotonic()
        loop.start(0.01)
        d = backend.reload()
        assert not d.called and hostname(backend, BIG_M0) == "old-0"
        await d
        took = time.monotonic() - start
        ticks_during = len([t for t in ticks if t <= start + took])
    finally:
        loop.stop()
        backend.stopService()
    # The parse alone takes well over 0.1 s for 20,000 records; a blocked
    # reactor would have ticked once or twice (LoopingCall skips missed ticks).
    assert took > 0.1, took
    assert ticks_during >= max(10, int(took / 0.01 * 0.3)), (ticks_during, took)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < took / 2, (max(gaps), took)
    # Lookups during the reload answered from the old data only, then the new.
    assert seen and set(seen) == {"old-0"}, set(seen)
    assert hostname(backend, BIG_M0) == "new-0" and hostname(backend, M1) == "added"
    assert backend.state()["records"] == n + 1


@pytest_twisted.ensureDeferred
async def test_change_during_a_reload_is_picked_up_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    path = tmp_path / "hw.yaml"
    path.write_text(big(5_000, "old"))
    backend = _threaded(path)
    real = file_mod.load_file
    lock = threading.Lock()
    active = [0, 0, 0]  # now, most at once, calls

    def counting(p: str) -> ParseResult:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
            active[2] += 1
        try:
            return real(p)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(file_mod, "load_file", counting)
    try:
        path.write_text(big(5_000, "second"))
        first = backend._check()
        assert backend._busy is not None
        path.write_text(GOOD2)  # arrives while the first reload parses
        second = backend._check()  # what inotify/poll would do
        third = backend._check()  # a burst: still only one more pass
        await first
        await second
        await third
    finally:
        backend.stopService()
    assert hostname(backend) == "m1" and backend.state()["records"] == 2
    assert active[1] == 1, "two reloads ran at once"
    assert active[2] == 2, active  # the first pass and exactly one follow-up
    assert backend._busy is None


@pytest_twisted.ensureDeferred
async def test_threaded_reload_keeps_last_good_data_and_logs_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend = _threaded(path)
    try:
        path.write_text(GOOD + "52:54:00:00:00:02:\n  ipAddress: 999.1.1.1\n")
        with capturedLogs() as events:
            await backend.reload()
        assert hostname(backend) == "m1" and backend.state()["records"] == 1
        [error] = texts(events, LogLevel.error)
        assert error.startswith(f"{path}:7: ") and "keeping 1 records" in error
        assert backend.state()["errors"] == [error.split(" (keeping")[0]]
        path.write_text(GOOD2)
        await backend.reload()
        assert served(backend, M2) is not None and backend.state()["errors"] == []
    finally:
        backend.stopService()


@pytest_twisted.ensureDeferred
async def test_threaded_reload_survives_an_unexpected_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend = _threaded(path)
    real = file_mod.load_file

    def boom(p: str) -> ParseResult:
        raise RuntimeError("boom")

    try:
        path.write_text(GOOD2)
        monkeypatch.setattr(file_mod, "load_file", boom)
        with capturedLogs() as events:
            await backend.reload()  # never fails
        assert any(e.get("log_failure") for e in events)
        assert served(backend, M2) is None and hostname(backend) == "m1"
        monkeypatch.setattr(file_mod, "load_file", real)
        await backend.reload()
        assert served(backend, M2) is not None
    finally:
        backend.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_during_a_threaded_reload_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(big(3_000, "old"))
    backend = _threaded(path)
    path.write_text(big(3_000, "new"))
    backend.reload()
    backend._check()  # queued: must not start after the stop
    stopped = backend.stopService()
    assert stopped is not None and not stopped.called
    await stopped
    assert backend._busy is None and not backend._again
    assert hostname(backend, BIG_M0) == "new-0"  # the finished parse was committed
