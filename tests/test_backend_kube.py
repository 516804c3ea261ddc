"""The Kubernetes backend against tests/kube_fake.py (real TLS on 127.0.0.1), plus Clock-driven units."""

from __future__ import annotations

import copy
import gc
import random
import time
from ipaddress import IPv4Address
from typing import Any

import pytest
import pytest_twisted
from kube_fake import PKI, FakeAPIServer, hardware
from summary import publish
from twisted.internet import defer, ssl, task
from twisted.internet.error import ConnectionRefusedError

from smee.backends import AmbiguousHardware, LookupFailed
from smee.backends.kube import KubeBackend
from smee.backends.kubeconfig import KubeConnection, TLSPolicy
from smee.backends.live import LiveIndex
from smee.formats import hardware_from_object


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def sleep(seconds: float) -> None:
    await task.deferLater(_reactor(), seconds)


async def eventually(predicate: Any, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await sleep(0.01)


class Env:
    """A started fake API server and a backend pointed at it; ``close()`` tears both down."""

    def __init__(self, objects: list[dict[str, Any]] = (), start_backend: bool = True, **kw: Any) -> None:  # type: ignore[assignment]
        self.reactor = _reactor()
        self.fake = FakeAPIServer(self.reactor, pki=kw.pop("pki", None))
        for obj in objects:
            self.fake.add(obj)
        self.fake.start()
        self.kw = {"backoff_initial": 0.05, "backoff_cap": 0.2, "sync_timeout": 5.0, **kw}
        self.backend: KubeBackend | None = None
        if start_backend:
            self.start()

    def connection(self, token: str | None = None, ca: bytes | None = None, client_cert: Any = None) -> KubeConnection:
        tok = self.fake.token if token is None else token
        headers = (lambda: {"Authorization": f"Bearer {tok}"}) if tok else (dict)
        policy = TLSPolicy(ssl.Certificate.loadPEM(ca or self.fake.pki.ca_pem), client_cert)
        return KubeConnection(self.fake.url, headers, policy)

    def start(self, conn: KubeConnection | None = None, **kw: Any) -> KubeBackend:
        self.backend = KubeBackend.from_connection(conn or self.connection(), self.reactor, **{**self.kw, **kw})
        self.backend.startService()
        return self.backend

    async def synced(self) -> KubeBackend:
        assert self.backend is not None
        await eventually(lambda: self.backend.state()["ready"], what="first LIST")  # type: ignore[union-attr]
        await eventually(lambda: len(self.fake.watches) == 1, what="a watch")
        return self.backend

    def watch_requests(self) -> list[Any]:
        return [r for r in self.fake.requests if r.params.get("watch") == "true"]

    def list_requests(self) -> list[Any]:
        return [r for r in self.fake.requests if "watch" not in r.params]

    async def close(self) -> None:
        if self.backend is not None and self.backend.running:
            await self.backend.stopService()
        await self.fake.stop()
        await sleep(0.01)  # let aborted connections finish closing


async def mac(backend: KubeBackend, key: str) -> str | None:
    m = await backend.by_mac(key)
    return m.hardware.id if m else None


# --- LIST, lookups, sync wait -------------------------------------------


@pytest_twisted.ensureDeferred
async def test_paginated_list_then_lookups_by_mac_and_ip() -> None:
    objs = [hardware(f"m{i}", f"02:00:00:00:00:0{i}", f"10.0.0.{10 + i}") for i in range(5)]
    env = Env(objs, page_size=2)
    try:
        b = await env.synced()
        lists = env.list_requests()
        assert [r.params.get("limit") for r in lists] == ["2", "2", "2"]
        assert "continue" not in lists[0].params and all("continue" in r.params for r in lists[1:])
        (watch,) = env.watch_requests()
        assert watch.params == {
            "watch": "true",
            "resourceVersion": str(env.fake.resource_version),
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        assert await mac(b, "02:00:00:00:00:03") == "default/m3"
        assert await mac(b, "02-00-00-00-00-04") == "default/m4"  # any notation
        assert await mac(b, "02:00:00:00:00:99") is None
        m = await b.by_ip(IPv4Address("10.0.0.12"))
        assert m is not None and m.hardware.id == "default/m2" and m.interface.mac == "02:00:00:00:00:02"
        assert (await b.by_ip("10.0.0.14")).hardware.id == "default/m4"  # type: ignore[union-attr]
        assert await b.by_ip("10.0.0.99") is None
        with pytest.raises(LookupFailed):
            await b.by_mac("not-a-mac")
        st = b.state()
        assert st["ready"] and st["records"] == 5 and st["resource_version"] == "6"
        assert st["relists"] == 0 and st["reconnects"] == 0 and st["last_error"] == ""
        assert st["server"] == env.fake.url and st["namespace"] == "(all)"
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_lookup_before_first_list_waits_for_it() -> None:
    env = Env([hardware("m", "02:00:00:00:00:01", "10.0.0.2")], start_backend=False)
    env.fake.list_delay = 0.3
    try:
        b = env.start()
        d = b.by_mac("02:00:00:00:00:01")
        d2 = b.by_ip("10.0.0.2")
        assert not d.called and not b.state()["ready"]
        m = await d
        assert m is not None and m.hardware.id == "default/m"
        assert (await d2).hardware.id == "default/m"  # type: ignore[union-attr]
    finally:
        await env.close()


class _Hanging:
    """A treq-like client whose requests never answer (or fail, if ``fail`` is set)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.pending: list[defer.Deferred[Any]] = []
        self.fail = False

    def get(self, url: str, **kw: Any) -> defer.Deferred[Any]:
        self.calls.append({"url": url, **kw})
        if self.fail:
            return defer.fail(ConnectionRefusedError("refused"))
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d


class _Ceiling(random.Random):
    """Jitter that always picks the top of the range, so the backoff ceiling is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_lookup_fails_after_sync_timeout_and_stop_leaves_no_timers() -> None:
    clock = task.Clock()
    client = _Hanging()
    b = KubeBackend(client, "https://192.0.2.1:6443", clock, sync_timeout=10.0)
    b.startService()
    early = b.by_mac("02:00:00:00:00:01")
    clock.advance(4)
    late = b.by_ip("10.0.0.1")
    assert not early.called and not late.called
    clock.advance(6)  # 10 s after start: both fail, whenever they were asked
    for d in (early, late):
        failure = []
        d.addErrback(failure.append)
        assert failure and failure[0].check(LookupFailed)
        assert "not synced after 10s" in str(failure[0].value)
    # after the deadline, lookups fail at once instead of piling up
    now = []
    b.by_mac("02:00:00:00:00:01").addErrback(now.append)
    assert now and now[0].check(LookupFailed)
    assert client.calls[0]["url"] == "https://192.0.2.1:6443/apis/tinkerbell.org/v1alpha1/hardware"
    b.stopService()
    assert client.pending[0].called  # the in-flight LIST was cancelled
    assert clock.getDelayedCalls() == []


def test_backoff_grows_is_capped_and_stop_cancels_it() -> None:
    clock = task.Clock()
    client = _Hanging()
    client.fail = True
    b = KubeBackend(client, "https://192.0.2.1:6443", clock, backoff_initial=0.5, backoff_cap=30.0, rng=_Ceiling())
    b.startService()
    delays = []
    for _ in range(9):
        delays.append(b.last_delay)
        (call,) = clock.getDelayedCalls()[-1:]
        clock.advance(call.getTime() - clock.seconds())
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.state()["reconnects"] == 10 and "refused" in b.state()["last_error"]
    assert len(client.calls) == 10
    b.stopService()
    assert clock.getDelayedCalls() == []


def test_backoff_uses_full_jitter() -> None:
    clock = task.Clock()
    client = _Hanging()
    client.fail = True
    b = KubeBackend(client, "https://x:1", clock, rng=random.Random(7))
    b.startService()
    seen = []
    for n in range(8):
        seen.append(b.last_delay)
        assert 0 <= b.last_delay <= min(30.0, 0.5 * 2**n)
        clock.advance(b.last_delay)
    assert len(set(seen)) == len(seen)  # jittered, not a fixed ladder
    b.stopService()
    assert clock.getDelayedCalls() == []


# --- watch events -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_added_modified_deleted() -> None:
    env = Env([hardware("a", "02:00:00:00:00:0a", "10.0.0.10")])
    try:
        b = await env.synced()
        env.fake.add(hardware("b", "02:00:00:00:00:0b", "10.0.0.11"))
        await eventually(lambda: b.state()["records"] == 2)
        assert await mac(b, "02:00:00:00:00:0b") == "default/b"
        changed = hardware("a", "02:00:00:00:00:0a", "10.0.0.20")
        env.fake.modify(changed)
        await eventually(lambda: b.state()["resource_version"] == str(env.fake.resource_version))
        assert await b.by_ip("10.0.0.10") is None
        assert (await b.by_ip("10.0.0.20")).hardware.id == "default/a"  # type: ignore[union-attr]
        env.fake.delete("default", "b")
        await eventually(lambda: b.state()["records"] == 1)
        assert await mac(b, "02:00:00:00:00:0b") is None
        assert await b.by_ip("10.0.0.11") is None
        assert b.state()["events"] == 3 and b.state()["resource_version"] == str(env.fake.resource_version)
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_modified_moves_a_mac_from_one_object_to_another() -> None:
    X = "02:00:00:00:00:aa"
    env = Env([hardware("a", X, "10.0.0.1"), hardware("b", "02:00:00:00:00:bb", "10.0.0.2")])
    try:
        b = await env.synced()
        assert await mac(b, X) == "default/a"
        # B claims X before A lets go: both claim it, so no answer beats a wrong one
        env.fake.modify(hardware("b", X, "10.0.0.2"))
        await eventually(lambda: b.state()["events"] == 1)
        with pytest.raises(AmbiguousHardware) as e:
            await b.by_mac(X)
        assert "default/a" in str(e.value) and "default/b" in str(e.value)
        # A lets go: X is B's
        env.fake.modify(hardware("a", "02:00:00:00:00:cc", "10.0.0.1"))
        await eventually(lambda: b.state()["events"] == 2)
        assert await mac(b, X) == "default/b"
        assert await mac(b, "02:00:00:00:00:bb") is None
        assert await mac(b, "02:00:00:00:00:cc") == "default/a"
        assert (await b.by_ip("10.0.0.2")).interface.mac == X  # type: ignore[union-attr]
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_duplicates_in_the_list_are_ambiguous() -> None:
    env = Env([
        hardware("a", "02:00:00:00:00:01", "10.0.0.1"),
        hardware("b", "02:00:00:00:00:01", "10.0.0.2"),
        hardware("c", "02:00:00:00:00:03", "10.0.0.2", namespace="other"),
    ])
    try:
        b = await env.synced()
        with pytest.raises(AmbiguousHardware, match="MAC 02:00:00:00:00:01 is claimed by 2"):
            await b.by_mac("02:00:00:00:00:01")
        with pytest.raises(AmbiguousHardware, match="other/c"):
            await b.by_ip("10.0.0.2")
        assert len(b.duplicates()) == 2
        env.fake.delete("default", "b")
        await eventually(lambda: b.state()["records"] == 2)
        assert await mac(b, "02:00:00:00:00:01") == "default/a"
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_invalid_object_is_skipped_logged_once_and_removed() -> None:
    bad = hardware("bad", "02:00:00:00:00:01", "10.0.0.1")
    bad["spec"]["interfaces"][0]["dhcp"]["mac"] = "not-a-mac"
    env = Env([bad, hardware("ok", "02:00:00:00:00:02")])
    try:
        b = await env.synced()
        assert b.state()["records"] == 1 and b.state()["invalid"] == 1
        env.fake.modify(hardware("bad", "02:00:00:00:00:01", "10.0.0.1"))  # fixed
        await eventually(lambda: b.state()["records"] == 2)
        assert b.state()["invalid"] == 0
        env.fake.modify(bad)  # broken again: not served any more
        await eventually(lambda: b.state()["records"] == 1)
        assert await mac(b, "02:00:00:00:00:01") is None
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_bookmark_advances_resource_version_used_by_the_next_watch() -> None:
    env = Env([hardware("a", "02:00:00:00:00:01", namespace="tink")], namespace="tink")
    try:
        b = await env.synced()
        start = b.state()["resource_version"]
        env.fake.bump("elsewhere")  # invisible to a tink-scoped watch
        env.fake.bump("elsewhere")
        await sleep(0.05)
        assert b.state()["resource_version"] == start
        env.fake.bookmark()
        await eventually(lambda: b.state()["resource_version"] == str(env.fake.resource_version))
        assert b.state()["records"] == 1  # a bookmark changes no object
        env.fake.end_watches()  # as timeoutSeconds would: re-watch at once, from the bookmark
        await eventually(lambda: len(env.watch_requests()) == 2)
        assert env.watch_requests()[1].params["resourceVersion"] == str(env.fake.resource_version)
        assert b.state()["reconnects"] == 0 and b.state()["relists"] == 0
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_watch_dropped_mid_line_reconnects_without_applying_garbage() -> None:
    env = Env([hardware("a", "02:00:00:00:00:01", "10.0.0.1")])
    try:
        b = await env.synced()
        env.fake.add(hardware("b", "02:00:00:00:00:02"))
        await eventually(lambda: b.state()["records"] == 2)
        rv = b.state()["resource_version"]
        assert env.fake.drop_watches(mid_line=True) == 1
        await eventually(lambda: len(env.watch_requests()) == 2, what="re-watch")
        assert env.watch_requests()[1].params["resourceVersion"] == rv
        assert b.partial_bytes_dropped > 0
        assert await mac(b, "02:99:99:99:99:99") is None  # the ghost in the cut line
        env.fake.add(hardware("c", "02:00:00:00:00:03"))
        await eventually(lambda: b.state()["records"] == 3)
        st = b.state()
        assert st["relists"] == 0 and st["reconnects"] == 1 and st["last_error"] == ""
        assert st["resource_version"] == str(env.fake.resource_version)
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_410_error_event_during_watch_relists_and_loses_nothing() -> None:
    env = Env([hardware(f"m{i}", f"02:00:00:00:00:0{i}") for i in range(3)], page_size=2)
    try:
        b = await env.synced()
        env.fake.expire_watches()  # ERROR event, Status 410
        await eventually(lambda: b.state()["relists"] == 1 and len(env.fake.watches) == 1)
        assert len(env.list_requests()) == 4  # 2 pages, twice
        assert b.state()["records"] == 3 and b.state()["reconnects"] == 0
        # now the compaction path: changes happen while the client is away and history is compacted
        env.fake.drop_watches()
        env.fake.delete("default", "m0")
        env.fake.modify(hardware("m1", "02:00:00:00:00:11"))
        env.fake.add(hardware("m9", "02:00:00:00:00:09"))
        env.fake.compact()
        await eventually(lambda: b.state()["relists"] == 2 and len(env.fake.watches) == 1, what="relist")
        assert sorted(h.id for h in b._index) == ["default/m1", "default/m2", "default/m9"]
        assert await mac(b, "02:00:00:00:00:01") is None
        assert await mac(b, "02:00:00:00:00:11") == "default/m1"
        assert b.state()["resource_version"] == str(env.fake.resource_version)
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_expired_continue_token_restarts_the_list() -> None:
    env = Env([hardware(f"m{i}", f"02:00:00:00:00:0{i}") for i in range(5)], start_backend=False)
    fired = []

    def compact_after_first_page(req: Any) -> None:
        if "watch" not in req.params and "continue" not in req.params and not fired:
            fired.append(req)
            env.reactor.callLater(0, lambda: (env.fake.delete("default", "m4"), env.fake.compact()))

    env.fake.on_request = compact_after_first_page
    env.fake.list_delay = 0.05  # the compaction lands between page 1 and page 2
    try:
        b = env.start(page_size=2)
        await env.synced()
        codes = [(("continue" in r.params), r.code) for r in env.list_requests()]
        assert (True, 410) in codes
        assert codes[-1][1] == 200 and b.state()["records"] == 4
        assert b.state()["resource_version"] == str(env.fake.resource_version)
    finally:
        await env.close()


# --- failures, auth, TLS, scope -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_down_backs_off_then_recovers() -> None:
    env = Env([hardware("a", "02:00:00:00:00:01")])
    try:
        b = await env.synced()
        await env.fake.stop()  # refuse connections and cut the watch
        await eventually(lambda: b.state()["reconnects"] >= 4, what="retries")
        assert "refused" in b.state()["last_error"].lower()
        assert b.state()["ready"]  # still serving the last synced data
        assert await mac(b, "02:00:00:00:00:01") == "default/a"
        env.fake.add(hardware("b", "02:00:00:00:00:02"))  # changed while we were away
        env.fake.listen()
        await eventually(lambda: b.state()["records"] == 2, what="recovery")
        assert b.state()["last_error"] == "" and b.state()["relists"] == 0
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_wrong_token_is_logged_backs_off_and_does_not_crash() -> None:
    env = Env([hardware("a", "02:00:00:00:00:01")], start_backend=False)
    try:
        b = env.start(env.connection(token="wrong"), sync_timeout=0.3)
        await eventually(lambda: b.state()["reconnects"] >= 2)
        assert b.state()["last_error"].startswith("401") and not b.state()["ready"]
        assert all(not r.authorized and r.code == 401 for r in env.fake.requests)
        with pytest.raises(LookupFailed, match="not synced.*401"):
            await b.by_mac("02:00:00:00:00:01")
        env.fake.token = "wrong"  # the operator fixes the RBAC/token: it recovers
        await eventually(lambda: b.state()["ready"])
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_tls_with_the_wrong_ca_fails() -> None:
    env = Env([hardware("a", "02:00:00:00:00:01")], start_backend=False)
    try:
        b = env.start(env.connection(ca=PKI.generate().ca_pem), sync_timeout=0.3)
        await eventually(lambda: b.state()["reconnects"] >= 1)
        assert not b.state()["ready"] and env.fake.requests == []  # nothing got past the handshake
        assert "certificate" in b.state()["last_error"].lower() or "ssl" in b.state()["last_error"].lower()
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_client_certificate_auth_with_an_ip_addressed_server() -> None:
    env = Env([hardware("a", "02:00:00:00:00:01")], start_backend=False)
    pki = env.fake.pki
    cert = ssl.PrivateCertificate.loadPEM(pki.client_key_pem + pki.client_pem)
    try:
        assert env.fake.url.startswith("https://127.0.0.1:")
        b = env.start(env.connection(token="", client_cert=cert))
        await env.synced()
        assert await mac(b, "02:00:00:00:00:01") == "default/a"
        assert all("authorization" not in str(r.params) and r.authorized for r in env.fake.requests)
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_namespace_scoped_and_cluster_wide() -> None:
    objs = [hardware("a", "02:00:00:00:00:01", namespace="tink"), hardware("b", "02:00:00:00:00:02", namespace="other")]
    env = Env(objs, namespace="tink")
    try:
        b = await env.synced()
        assert {r.path for r in env.fake.requests} == {"/apis/tinkerbell.org/v1alpha1/namespaces/tink/hardware"}
        assert b.state()["records"] == 1 and b.state()["namespace"] == "tink"
        env.fake.add(hardware("c", "02:00:00:00:00:03", namespace="other"))
        env.fake.add(hardware("d", "02:00:00:00:00:04", namespace="tink"))
        await eventually(lambda: b.state()["records"] == 2)
        assert await mac(b, "02:00:00:00:00:03") is None
        assert await mac(b, "02:00:00:00:00:04") == "tink/d"
        await b.stopService()
        wide = env.start(namespace="")
        await eventually(lambda: wide.state()["ready"])
        assert wide.state()["records"] == 4
        assert env.fake.requests[-1].path == "/apis/tinkerbell.org/v1alpha1/hardware"
    finally:
        await env.close()


@pytest_twisted.ensureDeferred
async def test_stop_service_closes_the_watch() -> None:
    env = Env([hardware("a", "02:00:00:00:00:01")])
    try:
        b = await env.synced()
        await b.stopService()
        await eventually(lambda: env.fake.watches == [], what="server sees the watch closed")
        n = len(env.fake.requests)
        await sleep(0.3)
        assert len(env.fake.requests) == n  # no reconnect after stop
        with pytest.raises(LookupFailed):  # not running and never... (synced data stays readable)
            await KubeBackend(None, "https://x", env.reactor).by_mac("02:00:00:00:00:01")
    finally:
        await env.close()


# --- scale ----------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4  # resident pages, 4 KiB


@pytest_twisted.ensureDeferred
async def test_10000_objects_sync_through_pages_of_500() -> None:
    n = 10_000
    env = Env(start_backend=False, sync_timeout=60.0)
    for i in range(n):
        env.fake.add(hardware(f"m{i:05d}", f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                              f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))
    try:
        gc.collect()
        rss0 = _rss_kib()
        t0 = time.perf_counter()
        b = env.start(page_size=500)
        m = await b.by_mac("02:00:00:00:27:0f")  # waits for the sync
        elapsed = time.perf_counter() - t0
        gc.collect()
        rss1 = _rss_kib()
        assert m is not None and m.hardware.id == "default/m09999"
        assert b.state()["records"] == n
        assert len(env.list_requests()) == n // 500
        env.fake.modify(hardware("m00000", "02:00:00:ff:ff:ff"))
        await eventually(lambda: b.state()["events"] == 1)
        assert await mac(b, "02:00:00:ff:ff:ff") == "default/m00000"
        # The RSS figure includes the in-process fake server's work; tracemalloc
        # measures just what the client keeps: the converted records and the index.
        import tracemalloc

        objs = [env.fake.store.current(k) for k in env.fake.store.keys]
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        idx = LiveIndex((f"default/{o['metadata']['name']}", hardware_from_object(o, "kube:x")) for o in objs)  # type: ignore[index]
        kept = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert len(idx) == n
        publish(
            "kube backend: 10,000 Hardware synced (LIST pages of 500, TLS, fake API server in-process)",
            f"time {elapsed:.2f} s, RSS +{(rss1 - rss0) / 1024:.1f} MiB (client + fake server);"
            f" index with its records: {kept / 1024 / 1024:.1f} MiB (tracemalloc)",
        )
    finally:
        await env.close()


# --- LiveIndex --------------------------------------------------------------


def test_live_index_put_replace_remove() -> None:
    a = hardware_from_object(hardware("a", "02:00:00:00:00:01", "10.0.0.1"), "kube:default/a")
    a2 = hardware_from_object(hardware("a", "02:00:00:00:00:02", "10.0.0.1"), "kube:default/a")
    b = hardware_from_object(hardware("b", "02:00:00:00:00:02", "10.0.0.3"), "kube:default/b")
    idx = LiveIndex()
    assert idx.put("default/a", a) == []
    assert idx.put("default/b", b) == []
    reports = idx.put("default/a", a2)
    assert reports and "02:00:00:00:00:02" in reports[0]
    assert idx.by_mac("02:00:00:00:00:01") is None
    with pytest.raises(AmbiguousHardware):
        idx.by_mac("02:00:00:00:00:02")
    assert idx.remove("default/b") is b
    assert idx.by_mac("02:00:00:00:00:02").hardware is a2  # type: ignore[union-attr]
    assert idx.by_ip(IPv4Address("10.0.0.3")) is None
    assert idx.remove("nope") is None and len(idx) == 1 and idx.duplicates() == []
    idx2 = LiveIndex([("x", copy.copy(a))])
    assert len(idx2) == 1
