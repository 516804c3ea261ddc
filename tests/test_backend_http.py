"""The HTTP backend (smee.backends.http) against a fake inventory service.

The service is a small Klein app serving hardware records in each of the
three formats; tests talk to it through treq's StubTreq (in memory, on a
Clock), plus one test over a real loopback socket with treq's HTTPClient.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest
import pytest_twisted
from fakes import formatted
from klein import Klein
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from smee.backends import AmbiguousHardware, HardwareBackend, LookupFailed
from smee.backends.http import ACCEPT, HTTPBackend

BASE = "http://inventory.test/api"
MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
IP1, IP2 = "192.0.2.10", "192.0.2.11"


# --- the fake inventory service ----------------------------------------------


def smee_yaml(records: list[tuple[str, str]]) -> tuple[bytes, str]:
    text = "".join(
        f"{mac}:\n  ipAddress: {ip}\n  subnetMask: 255.255.255.0\n  hostname: h-{ip.rsplit('.', 1)[1]}\n"
        for mac, ip in records
    )
    return text.encode(), "application/yaml"


def crd_yaml(records: list[tuple[str, str]]) -> tuple[bytes, str]:
    docs = [
        "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\n"
        f"metadata: {{name: h-{ip.rsplit('.', 1)[1]}, namespace: tink}}\n"
        "spec:\n  interfaces:\n"
        f"  - dhcp: {{mac: \"{mac}\", ip: {{address: {ip}, netmask: 255.255.255.0}}}}\n"
        "    netboot: {allowPXE: true}\n"
        for mac, ip in records
    ]
    return "---\n".join(docs).encode(), "application/yaml; charset=utf-8"


def tink_json(records: list[tuple[str, str]]) -> tuple[bytes, str]:
    objs = [
        {"id": f"h-{ip.rsplit('.', 1)[1]}", "network": {"interfaces": [
            {"dhcp": {"mac": mac, "ip": {"address": ip, "netmask": "255.255.255.0"}},
             "netboot": {"allow_pxe": True}},
        ]}}
        for mac, ip in records
    ]
    return json.dumps(objs, indent=1).encode(), "application/json"


FORMATS = {"smee-yaml": smee_yaml, "crd-yaml": crd_yaml, "tink-json": tink_json}


class Inventory:
    """GET /api/hardware?mac=|ip= → the matching records in ``fmt``, or 404.

    ``status``/``body`` override the answer; ``hold`` makes requests wait
    (``held``) until :meth:`release`; ``cancelled`` counts held requests whose
    client went away. Every request is recorded in ``seen`` as (args, headers).
    """

    app = Klein()

    def __init__(self, records: list[tuple[str, str]] | None = None, fmt: str = "smee-yaml") -> None:
        self.records = list(records if records is not None else [(MAC1, IP1), (MAC2, IP2)])
        self.fmt = fmt
        self.status: int | None = None
        self.body: bytes | None = None
        self.content_type = "text/plain"
        self.hold = False
        self.held: list[defer.Deferred[bytes]] = []
        self.cancelled = 0
        self.seen: list[tuple[dict[str, str], Any]] = []

    @app.route("/api/hardware", methods=["GET"])
    def hardware(self, request: Any) -> Any:
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.seen.append((args, request.requestHeaders))
        if self.hold:
            d: defer.Deferred[bytes] = defer.Deferred(lambda _: self._cancelled())
            self.held.append(d)
            d.addCallback(lambda _: self._answer(request, args))
            return d
        return self._answer(request, args)

    def _cancelled(self) -> None:
        self.cancelled += 1

    def _answer(self, request: Any, args: dict[str, str]) -> bytes:
        if self.status is not None:
            request.setResponseCode(self.status)
            request.setHeader("content-type", self.content_type)
            return self.body or b""
        if self.body is not None:
            request.setHeader("content-type", self.content_type)
            return self.body
        found = [(m, i) for m, i in self.records if m == args.get("mac") or i == args.get("ip")]
        if not found:
            request.setResponseCode(404)
            return b"not found\n"
        body, ctype = FORMATS[self.fmt](found)
        request.setHeader("content-type", ctype)
        return body

    def release(self) -> None:
        held, self.held = self.held, []
        for d in held:
            d.callback(b"")


class Harness:
    """An HTTPBackend on a Clock talking to an Inventory through StubTreq."""

    def __init__(self, inventory: Inventory | None = None, **kw: Any) -> None:
        self.inventory = inventory or Inventory()
        self.stub = StubTreq(self.inventory.app.resource())
        self.clock = Clock()
        self.clock.advance(1000)
        kw.setdefault("timeout", 2.0)
        kw.setdefault("ttl", 5.0)
        self.backend = HTTPBackend(self.stub, BASE, self.clock, **kw)

    def result(self, d: defer.Deferred[Any]) -> Any:
        """What ``d`` fired with (a Failure for errors), after the fake service ran."""
        self.stub.flush()
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "lookup still pending"
        return out[0]

    def found(self, d: defer.Deferred[Any]) -> Any:
        r = self.result(d)
        if hasattr(r, "raiseException"):
            r.raiseException()
        return r

    def error(self, d: defer.Deferred[Any]) -> BaseException:
        r = self.result(d)
        assert hasattr(r, "value"), f"expected a failure, got {r!r}"
        return r.value  # type: ignore[no-any-return]


@pytest.fixture
def logs() -> Iterator[Any]:
    """Captured log events; no Deferred may die with an unhandled failure."""
    with capturedLogs() as events:
        yield events
        gc.collect()
        unhandled = [t for t in formatted(events) if "Unhandled error" in t]
        assert not unhandled, unhandled


def warnings(events: Any) -> list[str]:
    return formatted([e for e in events if str(e.get("log_namespace", "")).startswith("smee.backends.http")
                      and e["log_level"] == LogLevel.warn])


# --- lookups -------------------------------------------------------------------


def test_is_a_hardware_backend() -> None:
    h = Harness()
    assert isinstance(h.backend, HardwareBackend) and h.backend.kind == "http"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_lookup_by_mac_and_ip_in_each_format(fmt: str, logs: Any) -> None:
    h = Harness(Inventory(fmt=fmt))
    m = h.found(h.backend.by_mac(MAC1))
    assert m.interface.mac == MAC1 and m.interface.ip == IPv4Address(IP1)
    m = h.found(h.backend.by_ip(IPv4Address(IP2)))
    assert m.interface.mac == MAC2 and m.interface.ip == IPv4Address(IP2)
    assert [args for args, _ in h.inventory.seen] == [{"mac": MAC1}, {"ip": IP2}]
    assert warnings(logs) == []


def test_request_url_and_accept_header() -> None:
    h = Harness()
    h.found(h.backend.by_mac("52-54-00-00-00-01"))  # any notation, normalised
    [(args, headers)] = h.inventory.seen
    assert args == {"mac": MAC1}
    assert headers.getRawHeaders("accept") == [ACCEPT]
    assert h.backend.url("mac", MAC1) == f"{BASE}/hardware?mac={MAC1}"
    assert HTTPBackend(h.stub, BASE + "/", h.clock).url("ip", IP1) == f"{BASE}/hardware?ip={IP1}"
    assert headers.getRawHeaders("authorization") is None


def test_credentials_in_the_url_become_basic_auth_and_leave_every_url() -> None:
    """Twisted's Agent would take ``user:pw@`` as part of the host; logged URLs must not carry it."""
    h = Harness()
    scheme, rest = BASE.split("://", 1)
    h.backend = HTTPBackend(h.stub, f"{scheme}://inv%40corp:s3cr%3At@{rest}/", h.clock)
    h.found(h.backend.by_mac(MAC1))
    [(_, headers)] = h.inventory.seen
    assert headers.getRawHeaders("authorization") == ["Basic " + __import__("base64").b64encode(b"inv@corp:s3cr:t").decode()]
    assert h.backend.base_url == BASE and "s3cr" not in h.backend.url("mac", MAC1)


def test_json_without_json_suffix_still_parses_as_json_source() -> None:
    inv = Inventory(fmt="tink-json")
    h = Harness(inv)
    m = h.found(h.backend.by_mac(MAC1))
    # the record names where it came from: the URL (the fragment only picks the JSON reader)
    assert m.hardware.source.startswith(f"{BASE}/hardware?mac={MAC1}#.json")


def test_404_is_not_found_and_cached(logs: Any) -> None:
    h = Harness()
    assert h.found(h.backend.by_mac(MAC3)) is None
    assert h.found(h.backend.by_mac(MAC3)) is None
    assert len(h.inventory.seen) == 1
    assert h.backend.state()["ready"] is True and warnings(logs) == []


def test_record_without_the_key_is_not_found() -> None:
    inv = Inventory()
    inv.body, inv.content_type = smee_yaml([(MAC2, IP2)])  # answers with another machine
    h = Harness(inv)
    assert h.found(h.backend.by_mac(MAC1)) is None


def test_two_records_claiming_the_mac_are_ambiguous() -> None:
    inv = Inventory()
    inv.body, inv.content_type = tink_json([(MAC1, IP1), (MAC1, IP2)])
    h = Harness(inv)
    e = h.error(h.backend.by_mac(MAC1))
    assert isinstance(e, AmbiguousHardware) and MAC1 in str(e)
    # the service's answer, so it is cached like any answer
    assert isinstance(h.error(h.backend.by_mac(MAC1)), AmbiguousHardware)
    assert len(inv.seen) == 1


@pytest.mark.parametrize(
    "status, body, ctype, cause",
    [
        (500, b"database is down", "text/plain", "HTTP 500: database is down"),
        (403, b"", "text/plain", "HTTP 403"),
        (None, b"\x00\xff\xfe garbage", "application/octet-stream", "not valid UTF-8"),
        (None, b"{not json", "application/json", "invalid hardware document"),
        (None, b"52:54:00:00:00:01:\n  ipAddress: 192.0.2.300\n  subnetMask: 255.255.255.0\n",
         "application/yaml", "invalid hardware document"),
    ],
)
def test_bad_answers_fail_the_lookup_and_are_logged(
    status: int | None, body: bytes, ctype: str, cause: str, logs: Any
) -> None:
    inv = Inventory()
    inv.status, inv.body, inv.content_type = status, body, ctype
    h = Harness(inv)
    e = h.error(h.backend.by_mac(MAC1))
    assert type(e) is LookupFailed
    assert f"GET {BASE}/hardware?mac={MAC1}" in str(e) and cause in str(e)
    [line] = warnings(logs)
    assert str(e) in line
    state = h.backend.state()
    assert state["ready"] is False and state["failures"] == 1 and state["last_error"] == str(e)
    # failures are not cached: the next lookup asks again, and a fixed service is used at once
    inv.status = inv.body = None
    assert h.found(h.backend.by_mac(MAC1)).interface.mac == MAC1
    assert len(inv.seen) == 2 and h.backend.state()["ready"] is True


def test_invalid_record_error_names_the_line() -> None:
    inv = Inventory()
    inv.body = b"52:54:00:00:00:01:\n  ipAddress: 192.0.2.10\n  subnetMask: nope\n"
    inv.content_type = "application/yaml"
    h = Harness(inv)
    e = h.error(h.backend.by_mac(MAC1))
    assert f"{BASE}/hardware?mac={MAC1}:3:" in str(e)


def test_bad_keys_fail_without_a_request() -> None:
    h = Harness()
    assert isinstance(h.error(h.backend.by_mac("nope")), LookupFailed)
    assert isinstance(h.error(h.backend.by_ip("192.0.2.300")), LookupFailed)
    assert h.inventory.seen == []


def test_timeout_fails_the_lookup_and_cancels_the_request(logs: Any) -> None:
    inv = Inventory()
    inv.hold = True
    h = Harness(inv, timeout=2.0)
    d = h.backend.by_mac(MAC1)
    h.stub.flush()
    assert len(inv.held) == 1 and not d.called
    h.clock.advance(1.9)
    assert not d.called
    h.clock.advance(0.2)
    e = h.error(d)
    assert type(e) is LookupFailed and "no answer within 2s" in str(e) and MAC1 in str(e)
    assert inv.cancelled == 1  # the service saw the client go away
    assert h.backend.state()["in_flight"] == 0 and h.clock.getDelayedCalls() == []
    assert len(warnings(logs)) == 1


def test_connection_error_is_a_lookup_failure(logs: Any) -> None:
    class Refusing:
        def get(self, url: str, **kw: Any) -> defer.Deferred[Any]:
            from twisted.internet.error import ConnectionRefusedError
            return defer.fail(ConnectionRefusedError("111: Connection refused"))

    backend = HTTPBackend(Refusing(), BASE, Clock())
    out: list[Any] = []
    backend.by_mac(MAC1).addErrback(out.append)
    [f] = out
    assert f.check(LookupFailed) and "Connection refused" in str(f.value) and BASE in str(f.value)
    assert backend.state()["failures"] == 1


# --- cache ---------------------------------------------------------------------


def test_cache_hit_then_expiry() -> None:
    h = Harness(ttl=5.0)
    first = h.found(h.backend.by_mac(MAC1))
    h.clock.advance(4.9)
    assert h.found(h.backend.by_mac(MAC1)) is first
    assert len(h.inventory.seen) == 1 and h.backend.state()["hits"] == 1
    h.clock.advance(0.2)
    assert h.found(h.backend.by_mac(MAC1)).interface.mac == MAC1
    assert len(h.inventory.seen) == 2


def test_mac_and_ip_are_cached_separately() -> None:
    h = Harness()
    h.found(h.backend.by_mac(MAC1))
    h.found(h.backend.by_ip(IP1))
    h.found(h.backend.by_ip(IP1))
    assert [a for a, _ in h.inventory.seen] == [{"mac": MAC1}, {"ip": IP1}]


def test_zero_ttl_disables_the_cache() -> None:
    h = Harness(ttl=0)
    for _ in range(3):
        h.found(h.backend.by_mac(MAC1))
    assert len(h.inventory.seen) == 3 and h.backend.state()["cache"] == 0


def test_cache_is_bounded_oldest_evicted() -> None:
    records = [(f"52:54:00:00:01:{i:02x}", f"192.0.2.{100 + i}") for i in range(5)]
    h = Harness(Inventory(records), max_entries=3)
    for mac, _ in records:
        h.found(h.backend.by_mac(mac))
    assert h.backend.state()["cache"] == 3
    h.found(h.backend.by_mac(records[4][0]))  # young: hit
    h.found(h.backend.by_mac(records[0][0]))  # evicted: asked again
    assert [a["mac"] for a, _ in h.inventory.seen] == [m for m, _ in records] + [records[0][0]]


# --- coalescing ----------------------------------------------------------------


def test_100_concurrent_identical_lookups_make_one_request(logs: Any) -> None:
    inv = Inventory()
    inv.hold = True
    h = Harness(inv)
    ds = [h.backend.by_mac(MAC1) for _ in range(100)]
    h.stub.flush()
    assert len(inv.seen) == 1 and len(inv.held) == 1
    assert len({id(d) for d in ds}) == 100  # every caller its own Deferred
    assert not any(d.called for d in ds)
    inv.release()
    matches = [h.found(d) for d in ds]
    assert all(m is matches[0] for m in matches) and matches[0].interface.mac == MAC1
    state = h.backend.state()
    assert (state["requests"], state["coalesced"], state["hits"]) == (1, 99, 0)
    # ...and the next wave is served from the cache
    assert h.found(h.backend.by_mac(MAC1)) is matches[0] and len(inv.seen) == 1


def test_different_keys_make_separate_requests() -> None:
    inv = Inventory()
    inv.hold = True
    h = Harness(inv)
    ds = [h.backend.by_mac(MAC1), h.backend.by_mac(MAC2), h.backend.by_ip(IP1), h.backend.by_mac(MAC1)]
    h.stub.flush()
    assert sorted(json.dumps(a) for a, _ in inv.seen) == sorted(
        json.dumps(a) for a in ({"mac": MAC1}, {"mac": MAC2}, {"ip": IP1})
    )
    inv.release()
    assert [h.found(d).interface.mac for d in ds] == [MAC1, MAC2, MAC1, MAC1]


def test_a_cancelled_waiter_does_not_affect_the_others(logs: Any) -> None:
    inv = Inventory()
    inv.hold = True
    h = Harness(inv)
    first, second, third = (h.backend.by_mac(MAC1) for _ in range(3))
    h.stub.flush()
    first.cancel()  # e.g. the DHCP server's own timeout
    assert isinstance(h.error(first), defer.CancelledError)
    assert inv.cancelled == 0 and not second.called
    inv.release()
    assert h.found(second).interface.mac == MAC1 and h.found(third).interface.mac == MAC1
    # even with every waiter gone, the request finishes and fills the cache
    lone = h.backend.by_mac(MAC2)
    h.stub.flush()
    lone.cancel()
    h.error(lone)
    inv.release()
    h.stub.flush()
    assert inv.cancelled == 0 and h.backend.state()["cache"] == 2


def test_a_failed_shared_request_fails_every_waiter_and_logs_once(logs: Any) -> None:
    inv = Inventory()
    inv.hold, inv.status = True, 503
    h = Harness(inv)
    ds = [h.backend.by_mac(MAC1) for _ in range(5)]
    h.stub.flush()
    inv.release()
    errors = [h.error(d) for d in ds]
    assert all(type(e) is LookupFailed and "HTTP 503" in str(e) for e in errors)
    assert len(warnings(logs)) == 1 and h.backend.state()["failures"] == 1


def test_stop_cancels_requests_in_flight(logs: Any) -> None:
    inv = Inventory()
    inv.hold = True
    closed: list[bool] = []
    h = Harness(inv, close=lambda: closed.append(True))
    h.backend.startService()
    d = h.backend.by_mac(MAC1)
    h.stub.flush()
    h.backend.stopService()
    assert "cancelled" in str(h.error(d)) and closed == [True] and inv.cancelled == 1


def test_state_is_json() -> None:
    h = Harness()
    h.found(h.backend.by_mac(MAC1))
    state = h.backend.state()
    json.dumps(state)
    assert state["url"] == BASE and state["backend"] == "http" and state["requests"] == 1


def test_from_settings() -> None:
    from types import SimpleNamespace

    settings = SimpleNamespace(backend_http_url="https://inv.example/", backend_http_timeout=1.5,
                               backend_http_cache_ttl=3.0)
    backend = HTTPBackend.from_settings(settings, Clock())
    assert (backend.base_url, backend.timeout, backend.ttl) == ("https://inv.example", 1.5, 3.0)
    assert isinstance(backend._client, HTTPClient)


# --- a real socket -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_real_port_with_treq_http_client() -> None:
    from twisted.internet import reactor

    inv = Inventory(fmt="crd-yaml")
    port = reactor.listenTCP(0, Site(inv.app.resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
    pool = HTTPConnectionPool(reactor, persistent=True)
    backend = HTTPBackend(
        HTTPClient(Agent(reactor, pool=pool)), f"http://127.0.0.1:{port.getHost().port}/api", reactor,
        timeout=5.0, close=pool.closeCachedConnections,
    )
    backend.startService()
    try:
        results = await defer.gatherResults([backend.by_mac(MAC1) for _ in range(10)])
        assert all(m is results[0] for m in results) and results[0].hardware.id == "tink/h-10"
        assert await backend.by_ip(IP2) is not None
        assert await backend.by_mac(MAC3) is None
        assert len(inv.seen) == 3
    finally:
        await backend.stopService()
        await port.stopListening()
