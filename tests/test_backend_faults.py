"""Backend faults (issue 10, item 5): every backend keeps answering what it can, says why it cannot, recovers.

* **File**: a hardware file deleted, truncated, replaced by garbage, made
  unreadable, grown huge, or crashing the parser keeps serving its last good
  data; one clear log line names the file and the cause; ``state()`` (what
  /healthcheck shows) says ``degraded``; fixing the file recovers. Clock
  driven; the permission case runs in a child process without root, because
  root reads a ``chmod 000`` file all the same.
* **Kubernetes**: API refused at start, silent (accepts, never answers),
  wrong server certificate, 410 on the watch (once: relist at once; back to
  back: backoff), slow LISTs -> bounded retries, lookups fail cleanly after
  the sync timeout, recovery, readiness in ``state()``. Real TLS on 127.0.0.1
  (tests/kube_fake.py) where the socket matters, a Clock and a scripted
  client where timing does.
* **HTTP**: an inventory service that never answers, cuts the body, sends
  garbage, a 500, an endless or trickling body -> LookupFailed within the
  timeout, never cached, the connection closed, recovery. Real loopback
  sockets.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fakes import formatted
from kube_fake import PKI, FakeAPIServer, hardware
from twisted.internet import defer, protocol, ssl, task
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from smee.backends import LookupFailed
from smee.backends import file as file_mod
from smee.backends import http as http_mod
from smee.backends.file import FileBackend
from smee.backends.http import HTTPBackend
from smee.backends.kube import KubeBackend
from smee.backends.kubeconfig import KubeConnection, TLSPolicy

M1, M2, M3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


def record(mac: str, ip: str, hostname: str) -> str:
    return (
        f"{mac}:\n  ipAddress: {ip}\n  subnetMask: 255.255.255.0\n"
        f"  hostname: {hostname}\n  netboot:\n    allowPxe: true\n"
    )


GOOD = record(M1, "192.0.2.10", "m1") + record(M2, "192.0.2.11", "m2")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` on the real reactor, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await task.deferLater(_reactor(), 0.01)


def fired(d: defer.Deferred[Any]) -> Any:
    """What an already-fired Deferred holds (a Failure for errors)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def hostname(backend: Any, mac: str) -> str | None:
    found = fired(backend.by_mac(mac))
    assert not isinstance(found, Failure), found
    return found.interface.hostname if found else None


def errors_logged(events: list[Any]) -> list[str]:
    """Error lines (tracebacks, logged separately for bug reports, are not counted)."""
    return formatted([e for e in events if e.get("log_level") == LogLevel.error and not e.get("log_failure")])


def age(path: Path, seconds: float = 60) -> None:
    """Give ``path`` an old mtime, outside the backend's "racily clean" window."""
    old = time.time() - seconds
    os.utime(path, (old, old))


# --- file backend ---------------------------------------------------------------


def _file_backend(path: Path, **kw: Any) -> tuple[FileBackend, Clock]:
    clock = Clock()
    backend = FileBackend(str(path), clock, poll_interval=30.0, **kw)
    backend.startService()
    return backend, clock


GARBAGE: dict[str, bytes] = {
    "binary": bytes(range(256)) * 4,
    "invalid-yaml": b"52:54:00:00:00:01: [unclosed\n  - : : :\n",
    "yaml-list-of-numbers": b"- 1\n- 2\n- 3.5\n",
    "yaml-scalar": b"just a string\n",
    "json-in-yaml-file": b'{"id": 1, "network": "no"}\n',
    "half-a-record": GOOD.encode()[: GOOD.index("192.0.2.11") + 6],
    "deeply-nested": b"[" * 5000 + b"]" * 5000,
    "nul-bytes": b"\0" * 100,
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_file_garbage_keeps_last_good_data_logs_file_and_recovers(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend, clock = _file_backend(path)
    assert backend.state()["degraded"] is False
    with capturedLogs() as events:
        path.write_bytes(GARBAGE[kind])
        clock.advance(30)
        clock.advance(30)  # a second poll must not repeat the error
    assert hostname(backend, M1) == "m1" and hostname(backend, M2) == "m2"
    state = backend.state()
    assert state["ready"] and state["degraded"] and state["records"] == 2
    [error] = errors_logged(events)
    assert str(path) in error and "keeping 2 records" in error, error
    assert state["errors"][0].startswith(str(path)) and state["errors"][0] in error
    path.write_text(GOOD.replace("m1", "m1-fixed"))
    clock.advance(30)
    assert hostname(backend, M1) == "m1-fixed" and backend.state()["degraded"] is False
    backend.stopService()


def test_file_deleted_keeps_last_good_data_then_recreated(tmp_path: Path) -> None:
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend, clock = _file_backend(path)
    with capturedLogs() as events:
        path.unlink()
        clock.advance(30)
    assert hostname(backend, M2) == "m2" and backend.state()["degraded"]
    [error] = errors_logged(events)
    assert str(path) in error and "No such file" in error
    path.write_text(record(M3, "192.0.2.12", "m3"))
    clock.advance(30)
    assert hostname(backend, M3) == "m3" and hostname(backend, M1) is None
    assert backend.state()["degraded"] is False
    backend.stopService()


def test_file_truncated_to_zero_bytes_keeps_last_good_data(tmp_path: Path) -> None:
    """0 bytes is an interrupted write (O_TRUNC, then ENOSPC or a crash); ``{}`` empties the file on purpose."""
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend, clock = _file_backend(path)
    with capturedLogs() as events:
        path.write_bytes(b"")
        clock.advance(30)
    assert hostname(backend, M1) == "m1" and backend.state()["degraded"]
    [error] = errors_logged(events)
    assert str(path) in error and "is empty" in error and "keeping 2 records" in error
    path.write_text("{}\n")
    clock.advance(30)
    assert hostname(backend, M1) is None and backend.state()["records"] == 0
    assert backend.state()["degraded"] is False
    backend.stopService()


def test_file_too_big_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ISO copied over the hardware file is refused from its size, before it is read into memory."""
    path = tmp_path / "hw.yaml"
    path.write_text(GOOD)
    backend, clock = _file_backend(path, max_file_size=4096)
    reads: list[str] = []
    real = file_mod.load_file
    monkeypatch.setattr(file_mod, "load_file", lambda p: reads.append(p) or real(p))
    with capturedLogs() as events:
        path.write_bytes(b"\x00" * 100_000)
        clock.advance(30)
    assert reads == [] and hostname(backend, M1) == "m1"
    [error] = errors_logged(events)
    assert str(path) in error and "100000 bytes" in error and "4096-byte limit" in error
    path.write_text(GOOD)
    clock.advance(30)
    assert backend.state()["degraded"] is False
    backend.stopService()


def test_a_parser_crash_in_one_file_does_not_stop_the_others_reloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception (a parser bug) is confined to its file and reported like a parse error."""
    (tmp_path / "a.yaml").write_text(record(M1, "192.0.2.10", "m1"))
    (tmp_path / "b.yaml").write_text(record(M2, "192.0.2.11", "m2"))
    backend, clock = _file_backend(tmp_path)
    real = file_mod.load_file

    def crashing(p: str) -> Any:
        if p.endswith("b.yaml"):
            raise RecursionError("maximum recursion depth exceeded")
        return real(p)

    monkeypatch.setattr(file_mod, "load_file", crashing)
    with capturedLogs() as events:
        (tmp_path / "b.yaml").write_text(record(M2, "192.0.2.11", "m2-new"))
        (tmp_path / "a.yaml").write_text(record(M1, "192.0.2.10", "m1-new"))
        clock.advance(30)
    assert hostname(backend, M1) == "m1-new"  # the good file's change is served
    assert hostname(backend, M2) == "m2"  # the crashing file's last good data too
    [error] = errors_logged(events)
    assert "b.yaml" in error and "RecursionError" in error and "keeping 1 records" in error
    assert backend.state()["degraded"] and "b.yaml" in backend.state()["errors"][0]
    # plus one traceback, at error (not critical): a parser bug, not a smee outage
    [crash] = [e for e in events if e.get("log_failure") is not None]
    assert crash["log_level"] == LogLevel.error and crash["log_failure"].check(RecursionError)
    monkeypatch.setattr(file_mod, "load_file", real)
    (tmp_path / "b.yaml").write_text(record(M2, "192.0.2.11", "m2-fixed"))
    clock.advance(30)
    assert hostname(backend, M2) == "m2-fixed" and backend.state()["degraded"] is False
    backend.stopService()


def test_directory_one_bad_file_keeps_the_rest_and_degraded_names_it(tmp_path: Path) -> None:
    for i, mac in enumerate((M1, M2, M3)):
        (tmp_path / f"{i}.yaml").write_text(record(mac, f"192.0.2.{10 + i}", f"m{i}"))
    backend, clock = _file_backend(tmp_path)
    with capturedLogs() as events:
        (tmp_path / "1.yaml").write_bytes(GARBAGE["binary"])
        (tmp_path / "2.yaml").write_text(record(M3, "192.0.2.12", "m2-new"))
        clock.advance(30)
    assert [hostname(backend, m) for m in (M1, M2, M3)] == ["m0", "m1", "m2-new"]
    [error] = errors_logged(events)
    assert str(tmp_path / "1.yaml") in error and "UTF-8" in error
    state = backend.state()
    assert state["degraded"] and len(state["errors"]) == 1 and state["records"] == 3
    assert fired(backend.by_ip(IPv4Address("192.0.2.11"))).interface.hostname == "m1"
    backend.stopService()


_UNPRIVILEGED_CHILD = r"""
import json, os, sys, time
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from smee.backends.file import FileBackend

path = sys.argv[1]
mac = "52:54:00:00:00:01"
out = {"uid": os.getuid()}
old = time.time() - 60
os.utime(path, (old, old))  # an old, trusted signature: only the mode changes below
clock = Clock()
backend = FileBackend(path, clock, poll_interval=30.0)
backend.startService()

def snapshot(tag):
    found = []
    backend.by_mac(mac).addBoth(found.append)
    state = backend.state()
    out[tag] = {
        "hostname": getattr(getattr(found[0], "interface", None), "hostname", repr(found[0])),
        "degraded": state["degraded"], "errors": state["errors"], "records": state["records"],
    }

with capturedLogs() as events:
    os.chmod(path, 0)
    clock.advance(30)
    snapshot("unreadable")
    os.chmod(path, 0o644)
    clock.advance(30)
    snapshot("readable")
out["logs"] = [[e["log_level"].name, formatEvent(e)] for e in events]
backend.stopService()
print(json.dumps(out))
"""


def test_file_permission_removed_without_root(tmp_path: Path) -> None:
    """chmod 000 on a served file (the backend runs without root after binding): kept, logged, recovered.

    Only the mode changes (mtime is old and untouched), so this also checks
    that a permission change alone is noticed by the poll.
    """
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run the backend as uid 65534")
    # pytest's tmp_path is private to root; the child needs a directory of its own.
    work = Path(tempfile.mkdtemp(prefix="smee-faults-", dir="/tmp"))
    try:
        work.chmod(0o755)
        path = work / "hw.yaml"
        path.write_text(GOOD)
        os.chown(work, 65534, 65534)
        os.chown(path, 65534, 65534)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        proc = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
             _UNPRIVILEGED_CHILD, str(path)],
            capture_output=True, text=True, timeout=60, cwd=str(work), env=env, check=False,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uid"] == 65534
    bad, good = out["unreadable"], out["readable"]
    assert bad["hostname"] == "m1" and bad["records"] == 2 and bad["degraded"] is True
    assert len(bad["errors"]) == 1 and "Permission denied" in bad["errors"][0]
    errors = [text for level, text in out["logs"] if level == "error"]
    assert len(errors) == 1 and str(path) in errors[0] and "Permission denied" in errors[0], out["logs"]
    assert good["hostname"] == "m1" and good["degraded"] is False and good["errors"] == []
    assert any("is readable again" in text for _, text in out["logs"]), out["logs"]


# --- Kubernetes backend: scripted client on a Clock ----------------------------


class _Transport:
    def __init__(self) -> None:
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True


class _Response:
    """A treq-like unbuffered response: ``code`` and a body delivered at once (or never: ``hang``)."""

    def __init__(self, code: int, body: bytes = b"", hang: bool = False) -> None:
        self.code = code
        self.body = body
        self.hang = hang
        self.transport = _Transport()

    def deliverBody(self, proto: Any) -> None:
        proto.makeConnection(self.transport)
        if self.hang:
            return
        if self.body:
            proto.dataReceived(self.body)
        proto.connectionLost(Failure(ResponseDone()))


def _page(rv: int, *objs: dict[str, Any]) -> bytes:
    items = []
    for obj in objs:
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(rv)
        items.append(obj)
    return json.dumps({"kind": "HardwareList", "metadata": {"resourceVersion": str(rv)}, "items": items}).encode()


_GONE = json.dumps({"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"})


class _Scripted:
    """A treq-like client: ``on_list``/``on_watch`` build each answer (a Deferred or a response).

    After ``limit`` requests every answer hangs, so a client that spins
    (retrying without waiting) stops instead of hanging the test.
    """

    def __init__(self, on_list: Callable[[], Any], on_watch: Callable[[], Any], limit: int = 300) -> None:
        self.on_list = on_list
        self.on_watch = on_watch
        self.limit = limit
        self.lists = 0
        self.watches = 0
        self.pending: list[defer.Deferred[Any]] = []

    def get(self, url: str, params: dict[str, str], headers: Any = None, unbuffered: bool = False) -> Any:
        if self.lists + self.watches >= self.limit:
            return self.hang()
        if params.get("watch") == "true":
            self.watches += 1
            answer = self.on_watch()
        else:
            self.lists += 1
            answer = self.on_list()
        return answer if isinstance(answer, defer.Deferred) else defer.succeed(answer)

    def hang(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d


class _Ceiling(random.Random):
    """Jitter at the top of its range: the backoff ceiling becomes visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _kube(client: Any, clock: Clock, **kw: Any) -> KubeBackend:
    kw = {"sync_timeout": 10.0, "backoff_initial": 0.5, "backoff_cap": 30.0, "rng": _Ceiling(), **kw}
    backend = KubeBackend(client, "https://192.0.2.1:6443", clock, **kw)
    backend.startService()
    return backend


def test_kube_http_410_on_the_watch_relists_once_at_once() -> None:
    clock = Clock()
    answers = iter([_Response(410, _GONE.encode())])
    client = _Scripted(lambda: _Response(200, _page(5, hardware("a", M1))),
                       lambda: next(answers, None) or _Response(200, hang=True))
    backend = _kube(client, clock)
    state = backend.state()
    assert (client.lists, client.watches, state["relists"], state["reconnects"]) == (2, 2, 1, 0)
    assert state["ready"] and not state["degraded"] and hostname(backend, M1) == "a"
    backend.stopService()


@pytest.mark.parametrize("how", ["status", "event"])
def test_kube_410_on_every_watch_backs_off_instead_of_spinning(how: str) -> None:
    """A server (or proxy) whose every watch is 410 must not get a full LIST per round trip."""
    clock = Clock()
    gone = (_Response(410, _GONE.encode()) if how == "status"
            else _Response(200, json.dumps({"type": "ERROR", "object": json.loads(_GONE)}).encode() + b"\n"))
    client = _Scripted(lambda: _Response(200, _page(5, hardware("a", M1))), lambda: gone)
    backend = _kube(client, clock)
    for _ in range(120):  # one minute
        clock.advance(0.5)
    assert client.lists + client.watches < client.limit, "relisted in a loop without waiting"
    assert 3 <= client.lists <= 12, client.lists  # 2 at once, then 0.5+1+2+4+8+16+30 s apart
    state = backend.state()
    assert state["ready"] and state["degraded"] and "410" in state["last_error"]
    assert state["failing_since"] is not None and hostname(backend, M1) == "a"  # still serving
    gone.hang = True  # the server behaves again: the next watch stays open
    gone.code = 200
    clock.advance(31)
    assert not backend.state()["degraded"] and backend.state()["failing_since"] is None
    backend.stopService()
    assert clock.getDelayedCalls() == []


def test_kube_slow_list_times_out_retries_with_backoff_and_recovers() -> None:
    """LISTs that never answer: each is cut at request_timeout; lookups fail at sync_timeout, cleanly."""
    clock = Clock()
    slow = [True]
    client = _Scripted(lambda: client.hang() if slow[0] else _Response(200, _page(7, hardware("a", M1))),
                       lambda: _Response(200, hang=True))
    backend = _kube(client, clock, request_timeout=3.0, sync_timeout=10.0)
    early = backend.by_mac(M1)
    for _ in range(20):
        clock.advance(0.5)
    failure = fired(early)
    assert isinstance(failure, Failure) and failure.check(LookupFailed)
    assert "not synced after 10s" in str(failure.value) and "request timed out after 3s" in str(failure.value)
    assert all(d.called for d in client.pending[:-1])  # every timed-out request was cancelled
    assert 3 <= client.lists <= 4  # at 0, 3.5, 7.5 (and 12.5 s): bounded, with backoff
    state = backend.state()
    assert not state["ready"] and state["degraded"] and state["failing_since"] == 3.0  # the first timeout
    slow[0] = False
    for _ in range(10):
        clock.advance(0.5)
    assert backend.state()["ready"] and not backend.state()["degraded"]
    assert hostname(backend, M1) == "a"
    backend.stopService()
    assert clock.getDelayedCalls() == []


# --- Kubernetes backend: real TLS on loopback ------------------------------------


def _connection(fake: FakeAPIServer, ca_pem: bytes | None = None) -> KubeConnection:
    token = fake.token
    policy = TLSPolicy(ssl.Certificate.loadPEM(ca_pem or fake.pki.ca_pem), None)
    return KubeConnection(fake.url, lambda: {"Authorization": f"Bearer {token}"}, policy)


def _real_kube(conn: KubeConnection, **kw: Any) -> KubeBackend:
    kw = {"backoff_initial": 0.05, "backoff_cap": 0.2, "sync_timeout": 0.5, **kw}
    backend = KubeBackend.from_connection(conn, _reactor(), **kw)
    backend.startService()
    return backend


@pytest_twisted.ensureDeferred
async def test_kube_api_down_at_start_fails_lookups_cleanly_then_recovers() -> None:
    fake = FakeAPIServer(_reactor())
    fake.add(hardware("a", M1, "192.0.2.10"))
    fake.start()
    await fake.stop_listening()  # the port is known, nothing listens: connection refused
    backend = _real_kube(_connection(fake))
    try:
        with pytest.raises(LookupFailed, match="not synced after 0.5s.*refused"):
            await backend.by_mac(M1)
        state = backend.state()
        assert not state["ready"] and state["degraded"] and state["reconnects"] >= 1
        assert state["failing_since"] is not None
        fake.listen()
        await eventually(lambda: backend.state()["ready"], what="recovery")
        assert (await backend.by_mac(M1)).hardware.id == "default/a"  # type: ignore[union-attr]
        await eventually(lambda: not backend.state()["degraded"], what="watch connected")
        assert backend.state()["failing_since"] is None and backend.state()["last_error"] == ""
        # down mid-watch: still serving, degraded, then back
        await eventually(lambda: len(fake.watches) == 1, what="a watch")
        await fake.stop()
        await eventually(lambda: backend.state()["degraded"], what="degraded")
        assert backend.state()["ready"] and (await backend.by_ip(IPv4Address("192.0.2.10"))) is not None
        fake.listen()
        await eventually(lambda: not backend.state()["degraded"], what="second recovery")
    finally:
        await backend.stopService()
        await fake.stop()


class _Silent(protocol.Protocol):
    """Accepts, reads, never answers (not even the TLS handshake)."""

    def connectionMade(self) -> None:
        self.factory.open += 1  # type: ignore[attr-defined]
        self.factory.total += 1  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.open -= 1  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_kube_silent_api_is_bounded_by_the_request_timeout_and_leaks_no_connection() -> None:
    factory = protocol.Factory.forProtocol(_Silent)
    factory.open = factory.total = 0  # type: ignore[attr-defined]
    port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    url = f"https://127.0.0.1:{port.getHost().port}"
    conn = KubeConnection(url, dict, TLSPolicy(ssl.Certificate.loadPEM(PKI.generate().ca_pem), None))
    backend = _real_kube(conn, request_timeout=0.3, sync_timeout=0.5)
    try:
        with pytest.raises(LookupFailed, match="not synced"):
            await backend.by_mac(M1)
        await eventually(lambda: backend.state()["reconnects"] >= 2, what="retries")
        assert backend.state()["last_error"] == "request timed out after 0.3s" and backend.state()["degraded"]
        await backend.stopService()
        # every attempt's connection was closed, not just abandoned
        await eventually(lambda: factory.open == 0, what="connections closed")  # type: ignore[attr-defined]
        assert factory.total >= 2  # type: ignore[attr-defined]
    finally:
        if backend.running:
            await backend.stopService()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_kube_server_certificate_for_another_address_is_refused_without_a_crash() -> None:
    fake = FakeAPIServer(_reactor(), pki=PKI.generate(ips=("192.0.2.99",)))  # trusted CA, wrong SAN
    fake.add(hardware("a", M1))
    fake.start()
    with capturedLogs() as events:
        backend = _real_kube(_connection(fake))
        try:
            with pytest.raises(LookupFailed, match="not synced"):
                await backend.by_mac(M1)
            await eventually(lambda: backend.state()["reconnects"] >= 2, what="retries")
            assert fake.requests == []  # nothing got past the handshake
            error = backend.state()["last_error"].lower()
            assert "certificate" in error or "ssl" in error or "verif" in error, error
            assert backend.state()["degraded"] and not backend.state()["ready"]
        finally:
            await backend.stopService()
            await fake.stop()
    assert not [e for e in events if e.get("log_failure") is not None], "a traceback was logged"


# --- HTTP backend: a misbehaving inventory service on loopback -------------------


class _Inventory(protocol.Protocol):
    """A raw HTTP/1.1 server whose behaviour is ``factory.mode``."""

    def connectionMade(self) -> None:
        f = self.factory  # type: ignore[attr-defined]
        f.open += 1
        f.total += 1
        self.buf = b""
        self.trickle: task.LoopingCall | None = None

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        mode = self.factory.mode  # type: ignore[attr-defined]
        t = self.transport
        if mode == "good":
            body = GOOD.encode()
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/yaml\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            t.loseConnection()
        elif mode == "silent":
            pass
        elif mode == "cut":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/yaml\r\nContent-Length: 1000\r\n\r\n"
                    + GOOD.encode()[:40])
            t.loseConnection()
        elif mode == "garbage":
            t.write(bytes(random.Random(1).randrange(256) for _ in range(300)))
            t.loseConnection()
        elif mode == "500":
            t.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 21\r\nConnection: close\r\n\r\n"
                    b"database unavailable\n")
            t.loseConnection()
        elif mode in ("trickle", "endless"):
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/yaml\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"# x\n" if mode == "trickle" else b"#" * 65535 + b"\n"
            self.sent = 0

            def more() -> None:
                self.sent += 1
                if self.sent > 2000:  # bounded: ~100 s of trickle, ~128 MiB endless
                    t.loseConnection()
                    return
                t.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

            self.trickle = task.LoopingCall(more)
            self.trickle.start(0.05 if mode == "trickle" else 0.0005)
        self.buf = b""

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.open -= 1  # type: ignore[attr-defined]
        if self.trickle is not None and self.trickle.running:
            self.trickle.stop()


@pytest.fixture
def inventory() -> Iterator[Any]:
    factory = protocol.Factory.forProtocol(_Inventory)
    factory.mode = "good"  # type: ignore[attr-defined]
    factory.open = factory.total = 0  # type: ignore[attr-defined]
    port = _reactor().listenTCP(0, factory, interface="127.0.0.1")
    factory.url = f"http://127.0.0.1:{port.getHost().port}/api"  # type: ignore[attr-defined]
    yield factory
    port.stopListening()


def _http_backend(url: str, timeout: float = 0.5) -> HTTPBackend:
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(_reactor(), persistent=True)
    backend = HTTPBackend(HTTPClient(Agent(_reactor(), pool=pool)), url, _reactor(), timeout=timeout, ttl=60.0,
                          close=pool.closeCachedConnections)
    backend.startService()
    return backend


@pytest.mark.parametrize("mode", ["silent", "cut", "garbage", "500", "trickle", "endless"])
@pytest_twisted.ensureDeferred
async def test_http_misbehaving_service_fails_bounded_uncached_closed_then_recovers(
    inventory: Any, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_mod, "MAX_BODY", 1024 * 1024)  # "endless" passes it in well under the timeout
    inventory.mode = mode
    backend = _http_backend(inventory.url, timeout=0.5 if mode != "endless" else 5.0)
    try:
        for attempt in (1, 2):  # a failure is never cached: the second lookup asks again
            with pytest.raises(LookupFailed) as caught:
                await backend.by_mac(M1)
            assert inventory.url in str(caught.value)
            assert backend.state()["failures"] == attempt and backend.state()["ready"] is False
            assert backend.state()["cache"] == 0 and backend.state()["in_flight"] == 0
        message = str(caught.value)
        expected = {"silent": "no answer within 0.5s", "trickle": "no answer within 0.5s", "500": "HTTP 500",
                    "endless": "too big"}
        assert expected.get(mode, "GET") in message, message
        assert inventory.total == 2
        # whatever the service was doing, our side closed (or saw closed) every connection
        await eventually(lambda: inventory.open == 0, timeout=5.0, what="connections closed")
        inventory.mode = "good"
        found = await backend.by_mac(M1)
        assert found is not None and found.interface.hostname == "m1"
        assert backend.state()["ready"] is True
    finally:
        await backend.stopService()
