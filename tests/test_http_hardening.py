"""HTTP hardening (issue 10, item 6): slow clients, oversized requests, no internals, who sees what.

Three layers:

* :class:`smee.http.service.Channel` driven byte by byte on a ``Clock`` and a
  ``StringTransport``: the head deadline against a trickling (slowloris)
  client, the idle timeout, the size limits and their status codes, the
  connection caps;
* the same on a real port on 127.0.0.1 (one slow client while a good one
  is served; an oversized request line);
* the routes (in memory, :class:`test_http_app.Server`): every error an
  operator can provoke (backend, installer, asset, health, metrics and
  timeline raising; a Host werkzeug refuses; a path that is not UTF-8)
  answered in plain text without a traceback, a path or an exception's
  text; /machines and /healthcheck's details for ``--http-admin-networks``
  only.
"""

from __future__ import annotations

import json
import select
import socket
import time
from ipaddress import IPv4Network
from typing import Any

import pytest
import pytest_twisted
import treq
from fakes import FakeBackend, hardware
from prometheus_client import generate_latest
from test_http_app import IP, MAC, Server, known
from twisted.internet import threads
from twisted.internet.address import IPv4Address as TCPAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from installers.script import ScriptError
from smee.http.app import HTTPConfig
from smee.http.service import (
    MAX_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    Channel,
    HTTPService,
    Limits,
    Site,
)
from smee.timeline import BootTimeline

PEER = "192.0.2.50"
#: What no answer to a client may contain: a traceback, a source path, an exception's name or text.
LEAKS = ("Traceback", 'File "', ".py", "Error", "Exception", "boom", "/srv/", "s3cret", "<html", "Processing Failed")


def assert_no_internals(body: bytes) -> None:
    text = body.decode("utf-8", "replace")
    for leak in LEAKS:
        assert leak not in text, (leak, text)


# --- the channel, on a Clock -----------------------------------------------------------


class Wire:
    """One app behind a :class:`Site` on the server's Clock; connections are StringTransports."""

    def __init__(self, **limits: Any) -> None:
        self.server = Server()
        self.clock = self.server.clock
        self.site = Site(self.server.app.resource(), reactor=self.clock, limits=Limits(**limits),
                         metrics=self.server.app.metrics)

    def connect(self, host: str = PEER, port: int = 40000) -> tuple[Any, StringTransport]:
        address = TCPAddress("TCP", host, port)
        protocol = self.site.buildProtocol(address)
        transport = StringTransport(hostAddress=TCPAddress("TCP", "192.0.2.1", 8080), peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    @staticmethod
    def close(protocol: Any) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))

    def counted(self, code: int) -> float:
        text = generate_latest(self.server.metrics).decode()
        prefix = f'http_requests_total{{code="{code}",route="other"}} '
        return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def status(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


def refusals(events: list[Any]) -> list[Any]:
    return [e for e in events if e.get("log_namespace") == "smee.http" and "refused" in e.get("log_format", "")]


def test_trickling_client_is_cut_at_the_header_timeout() -> None:
    """A header byte every 2 s resets Twisted's 60 s idle timeout for ever; the deadline does not reset."""
    wire = Wire(header_timeout=10.0)
    channel, transport = wire.connect()
    started = wire.clock.seconds()
    channel.dataReceived(b"GET /healthcheck HTTP/1.1\r\nHost: smee.test\r\nX-Slow: ")
    with capturedLogs() as events:
        for _ in range(100):  # bounded: 200 s of Clock time
            if transport.disconnecting:
                break
            wire.clock.advance(2)
            channel.dataReceived(b"a")
    assert transport.disconnecting, "a client trickling one byte every 2 s was never cut off"
    assert wire.clock.seconds() - started <= 12
    assert status(transport) == 408
    assert transport.value().endswith(b"\r\n\r\nrequest timeout\n") and b"Connection: close" in transport.value()
    [line] = refusals(events)
    assert line["outcome"] == "slow-client" and line["peer"] == PEER and "--http-header-timeout" in line["why"]
    assert wire.counted(408) == 1
    # a client that does not read its 408 either is aborted, as after Twisted's idle timeout
    assert not transport.disconnected
    wire.clock.advance(channel.abortTimeout)
    assert transport.disconnected
    wire.close(channel)
    assert wire.clock.getDelayedCalls() == []
    assert wire.site.limits.open == 0 and wire.site.limits.by_peer == {}


def test_silent_connection_is_closed_at_the_header_timeout() -> None:
    wire = Wire(header_timeout=10.0, idle_timeout=60.0)
    channel, transport = wire.connect()
    wire.clock.advance(9.9)
    assert not transport.disconnecting
    wire.clock.advance(0.2)
    assert transport.disconnecting and status(transport) == 408
    wire.close(channel)
    assert wire.clock.getDelayedCalls() == []


def test_keep_alive_idle_then_a_trickled_second_request() -> None:
    """Between requests only the idle timeout runs; a new request's deadline starts at its first byte."""
    wire = Wire(header_timeout=10.0, idle_timeout=60.0)
    channel, transport = wire.connect()
    channel.dataReceived(b"GET /healthcheck HTTP/1.1\r\nHost: smee.test\r\n\r\n")
    assert status(transport) == 200
    transport.clear()
    wire.clock.advance(50)  # idle, well past the header timeout: still open
    assert not transport.disconnecting
    channel.dataReceived(b"GET /metr")
    for _ in range(9):
        wire.clock.advance(1)
        channel.dataReceived(b"i")
    assert not transport.disconnecting
    wire.clock.advance(1.5)
    assert transport.disconnecting and status(transport) == 408
    wire.close(channel)


def test_idle_keep_alive_connection_is_closed_with_one_smee_line() -> None:
    wire = Wire(header_timeout=10.0, idle_timeout=30.0)
    channel, transport = wire.connect()
    channel.dataReceived(b"GET /healthcheck HTTP/1.1\r\nHost: smee.test\r\n\r\n")
    transport.clear()
    with capturedLogs() as events:
        wire.clock.advance(29)
        assert not transport.disconnecting
        wire.clock.advance(2)
    assert transport.disconnecting and transport.value() == b""
    [line] = events
    assert line["log_namespace"] == "smee.http" and line["outcome"] == "idle-timeout" and line["peer"] == PEER
    wire.close(channel)
    assert wire.clock.getDelayedCalls() == []


def test_pipelined_requests_are_answered_and_do_not_trip_the_deadline() -> None:
    wire = Wire(header_timeout=10.0)
    channel, transport = wire.connect()
    one = b"GET /healthcheck HTTP/1.1\r\nHost: smee.test\r\n\r\n"
    channel.dataReceived(one * 3)
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    wire.clock.advance(30)
    assert not transport.disconnecting
    wire.close(channel)


HEAD = b"GET /healthcheck HTTP/1.1\r\nHost: smee.test\r\n"


@pytest.mark.parametrize("request_bytes, code", [
    pytest.param(b"GET /" + b"a" * (MAX_LINE + 10) + b" HTTP/1.1\r\n\r\n", 414, id="long-request-line"),
    pytest.param(b"GET /" + b"a" * (MAX_LINE + 10), 414, id="long-request-line-unfinished"),
    pytest.param(HEAD + b"X-Big: " + b"b" * (MAX_LINE + 10) + b"\r\n\r\n", 431, id="long-header"),
    pytest.param(HEAD + b"X-Big: " + b"b" * (MAX_LINE + 10), 431, id="long-header-unfinished"),
    pytest.param(HEAD + b"X-Big: " + b"b" * 17000 + b"\r\n\r\n", 431, id="header-over-16k"),
    pytest.param(HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n", 431,
                 id="too-many-headers"),
    pytest.param(HEAD + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(20)) + b"\r\n", 431,
                 id="head-over-16k"),
    pytest.param(b"HELLO\r\n\r\n", 400, id="garbage-request-line"),
    pytest.param(HEAD + b"no colon here\r\n\r\n", 400, id="header-without-colon"),
    pytest.param(HEAD + b"Content-Length: x1\r\n\r\n", 400, id="bad-content-length"),
    pytest.param(HEAD + b"Content-Length: 10000000\r\n\r\n", 413, id="huge-body"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 413, id="chunked-body"),
])
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_oversized_and_malformed_requests_are_refused_and_closed(
    request_bytes: bytes, code: int, bytewise: bool
) -> None:
    wire = Wire()
    channel, transport = wire.connect()
    with capturedLogs() as events:
        if bytewise:  # every length check also holds when the request comes in pieces
            for i in range(0, len(request_bytes), 997):
                if transport.disconnecting:
                    break
                channel.dataReceived(request_bytes[i : i + 997])
        else:
            channel.dataReceived(request_bytes)
        channel.dataReceived(b"GET /healthcheck HTTP/1.1\r\nHost: smee.test\r\n\r\n")  # ignored: refused
    assert transport.disconnecting
    answer = transport.value()
    assert status(transport) == code, answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close\r\n" in answer
    assert_no_internals(answer)
    [line] = refusals(events)
    assert line["code"] == code and line["outcome"] in ("request-too-large", "bad-request")
    assert not [e for e in events if e.get("log_failure") is not None]
    assert wire.counted(code) == 1
    wire.close(channel)
    assert wire.site.limits.open == 0


def test_limits_leave_normal_requests_alone() -> None:
    """Just under every limit: answered as before (a small body is read and ignored)."""
    wire = Wire()
    channel, transport = wire.connect()
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 2))
    path = b"/" + b"a" * (MAX_LINE - 100)
    channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: smee.test\r\n" + headers + b"\r\n")
    assert status(transport) == 404 and not transport.disconnecting
    transport.clear()
    body = b"x" * 1000
    channel.dataReceived(b"POST /healthcheck HTTP/1.1\r\nHost: smee.test\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
    assert status(transport) == 405 and not transport.disconnecting
    transport.clear()
    half = (MAX_HEAD - len(HEAD)) // 2 - 100  # two long lines, each under MAX_LINE, together near MAX_HEAD
    assert half < MAX_LINE
    channel.dataReceived(HEAD + b"X-A: " + b"a" * half + b"\r\nX-B: " + b"b" * half + b"\r\n\r\n")
    assert status(transport) == 200
    assert MAX_BODY >= 1000
    wire.close(channel)


def test_connections_per_address_are_capped() -> None:
    wire = Wire(max_connections_per_ip=2)
    first, _ = wire.connect(port=1)
    second, _ = wire.connect(port=2)
    with capturedLogs() as events:
        third, t3 = wire.connect(port=3)
    assert not isinstance(third, Channel) and t3.disconnecting and status(t3) == 503
    assert_no_internals(t3.value())
    [line] = refusals(events)
    assert line["outcome"] == "too-many-connections" and "--http-max-connections-per-ip" in line["why"]
    other, t_other = wire.connect(host="192.0.2.51")  # another machine is not affected
    assert isinstance(other, Channel) and not t_other.disconnecting
    wire.close(first)
    again, t_again = wire.connect(port=4)
    assert isinstance(again, Channel) and not t_again.disconnecting
    assert wire.counted(503) == 1
    for protocol in (second, other, again):
        wire.close(protocol)
    assert wire.site.limits.open == 0 and wire.site.limits.by_peer == {}


def test_trusted_proxies_are_not_capped_per_address_but_the_total_is() -> None:
    wire = Wire(max_connections_per_ip=1, max_connections=3, exempt=(IPv4Network("192.0.2.60/32"),))
    proxied = [wire.connect(host="192.0.2.60", port=n) for n in range(3)]
    assert all(isinstance(p, Channel) and not t.disconnecting for p, t in proxied)
    refused, transport = wire.connect(host="192.0.2.61")
    assert not isinstance(refused, Channel) and status(transport) == 503
    for protocol, _ in proxied:
        wire.close(protocol)
    assert wire.site.limits.open == 0


def test_limits_from_the_config() -> None:
    config = HTTPConfig(header_timeout=3.0, idle_timeout=20.0, max_connections=7, max_connections_per_ip=2,
                        trusted_proxies=(IPv4Network("10.0.0.0/8"),))
    limits = Limits.from_config(config)
    assert (limits.header_timeout, limits.idle_timeout, limits.max_connections, limits.max_connections_per_ip,
            limits.exempt) == (3.0, 20.0, 7, 2, (IPv4Network("10.0.0.0/8"),))
    service = HTTPService(Server(header_timeout=3.0, idle_timeout=20.0).app, Server().clock, ("127.0.0.1", 0))
    assert service.site.timeOut == 20.0 and service.site.limits.header_timeout == 3.0
    assert service.site.displayTracebacks is False


# --- a real port on 127.0.0.1 --------------------------------------------------------------


def _slowloris(port: int, gap: float, budget: int) -> tuple[bytes, int]:
    """Trickle a never-ending header, one byte per ``gap`` s, at most ``budget`` bytes; (answer, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    answer, sent = b"", 0
    try:
        sock.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for _ in range(budget):
            readable, _, _ = select.select([sock], [], [], gap)
            if readable:
                break
            try:
                sock.send(b"a")
            except OSError:
                break
            sent += 1
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                return answer, sent
            answer += chunk
        return answer + b"<still open>", sent
    finally:
        sock.close()


def _oversized(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /" + b"x" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:  # our unread request bytes may turn the close into a reset
                break
            if not chunk:
                break
            answer += chunk
        return answer


@pytest_twisted.ensureDeferred
async def test_real_port_slow_client_is_cut_while_a_good_client_is_served() -> None:
    from twisted.internet import reactor

    server = Server(header_timeout=1.0)
    server.app.clock = reactor
    service = HTTPService(server.app, reactor, ("127.0.0.1", 0))
    service.privilegedStartService()
    service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        port = service.port.getHost().port
        slow = threads.deferToThread(_slowloris, port, 0.2, 50)  # at most 10 s of trickling
        r = await treq.get(f"http://127.0.0.1:{port}/healthcheck", pool=pool)
        assert r.code == 200 and json.loads(await r.content())["backend"]["ready"] is True
        answer, sent = await slow
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert not answer.endswith(b"<still open>")
        assert sent < 50, "the slow client was never cut off"
        big = await threads.deferToThread(_oversized, port)
        assert big.startswith(b"HTTP/1.1 414 ") and big.endswith(b"uri too long\n"), big[:200]
        r = await treq.get(f"http://127.0.0.1:{port}/healthcheck", pool=pool)
        assert r.code == 200
        await r.content()
        assert service.site.limits.open <= 1
    finally:
        await pool.closeCachedConnections()
        await service.stopService()


# --- the routes: no internals to clients -------------------------------------------------------


class Exploding(FakeBackend):
    def state(self) -> Any:
        raise RuntimeError("boom in /srv/smee/backend.py")


class Raising:
    def machines(self) -> Any:
        raise RuntimeError("boom in /srv/smee/timeline.py")

    def machine(self, mac: str) -> Any:
        raise RuntimeError("boom")

    def seen(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")


def _asset_raising(ctx: Any) -> Any:
    raise RuntimeError("boom with s3cret in /srv/smee/installers/vmware.py")


def _case(server: Server, case: str) -> tuple[str, dict[str, Any]]:
    """Set ``server`` up to fail as ``case`` says; the request (path, fetch arguments) that shows it."""
    secret = RuntimeError("boom: s3cret token in /srv/smee/x.py")
    if case == "backend-by-mac":
        server.backend.set(MAC, secret)
        return f"/{MAC}/auto.ipxe", {}
    if case == "backend-by-ip":
        server.backend.set(IP, secret)
        return "/auto.ipxe", {"client": IP}
    if case == "backend-autoexec":
        server.backend.set(IP, secret)
        return "/ipxe/autoexec.ipxe", {"client": IP}
    if case == "backend-asset":
        server.installers.assets["/vmware/ks-esxi.cfg"] = lambda ctx: ("text/plain", "x")
        server.backend.set(IP, secret)
        return "/vmware/ks-esxi.cfg", {"client": IP}
    if case == "installer-raises":
        known(server)
        server.installers.error = secret
        return f"/{MAC}/auto.ipxe", {}
    if case == "installer-script-error":
        known(server)
        server.installers.error = ScriptError("kernel args: 'password=s3cret\\n' contains U+000A")
        return f"/{MAC}/auto.ipxe", {}
    if case == "asset-raises":
        known(server)
        server.installers.assets["/vmware/ks-esxi.cfg"] = _asset_raising
        return "/vmware/ks-esxi.cfg", {"client": IP}
    if case == "asset-value-error":
        known(server)
        server.installers.assets["/vmware/ks-esxi.cfg"] = lambda ctx: (_ for _ in ()).throw(
            ValueError("s3cret in the record"))
        return "/vmware/ks-esxi.cfg", {"client": IP}
    if case == "timeline-raises":
        server.app.timeline = Raising()
        return "/machines", {}
    if case == "timeline-raises-one":
        server.app.timeline = Raising()
        return f"/machines/{MAC}", {}
    if case == "timeline-seen-raises":
        known(server)
        server.app.timeline = Raising()
        return f"/{MAC}/auto.ipxe", {}
    if case == "metrics-raise":
        class Broken:
            def collect(self) -> Any:
                raise RuntimeError("boom in /srv/smee/metrics.py")

        server.metrics.register(Broken())
        return "/metrics", {}
    if case == "bad-host":
        return f"/{MAC}/auto.ipxe", {"headers": {"Host": "a..b"}}
    if case == "bad-host-root":
        return "/healthcheck", {"headers": {"Host": "a..b"}}
    if case == "host-not-utf8":
        return "/healthcheck", {"headers": {b"Host": b"\xff\xfe"}}
    if case == "path-not-utf8":
        return "/%ff%fe/auto.ipxe", {}
    if case == "path-not-utf8-machines":
        return "/machines/%ff", {}
    raise AssertionError(case)


CASES = [
    "backend-by-mac", "backend-by-ip", "backend-autoexec", "backend-asset", "installer-raises",
    "installer-script-error", "asset-raises", "asset-value-error", "timeline-raises", "timeline-raises-one",
    "timeline-seen-raises", "metrics-raise", "bad-host", "bad-host-root", "host-not-utf8", "path-not-utf8",
    "path-not-utf8-machines",
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sync", [False, True], ids=["routed", "answer-now"])
def test_errors_reach_clients_without_internals(case: str, sync: bool) -> None:
    from test_http_app import SyncBackend

    server = Server(SyncBackend() if sync else None)
    path, kwargs = _case(server, case)
    with capturedLogs() as events:
        r = server.fetch(path, **kwargs)
    assert r.code in (400, 404, 500, 503), (r.code, r.body)
    assert_no_internals(r.body)
    assert (r.header("content-type") or "").startswith("text/plain"), r.header("content-type")
    if case.startswith(("bad-host", "host-", "path-")):
        assert r.code == 400 and r.body == b"bad request\n"
        assert not [e for e in events if e.get("log_failure") is not None]  # a client's mistake: no traceback
        [line] = [e for e in events if "code" in e]
        assert line["outcome"] == "bad-request" and line["code"] == 400
    else:  # a fault of smee's: the details are in the log, for the operator
        assert any(e.get("log_failure") is not None or "s3cret" in str(e.get("reason", "")) for e in events)


def test_backend_state_raising_is_a_plain_500() -> None:
    server = Server(Exploding())
    r = server.fetch("/healthcheck")
    assert r.code == 500 and r.body == b"internal server error\n"


# --- who sees what -----------------------------------------------------------------------------


class Detailed(FakeBackend):
    def state(self) -> Any:
        return {"backend": "file", "ready": True, "records": 3, "path": "/srv/hw/hardware.yaml",
                "errors": ["/srv/hw/bad.yaml:3: password: s3cret is not a MAC"]}


def test_machines_only_for_admin_networks() -> None:
    server = Server()
    server.app.timeline = BootTimeline(server.clock)
    server.app.timeline.seen(MAC, "dhcp-discover")
    # loopback (the default admin network): every machine
    r = server.fetch("/machines")
    assert r.code == 200 and [m["mac"] for m in json.loads(r.body)["machines"]] == [MAC]
    assert server.fetch(f"/machines/{MAC}").code == 200
    # a machine on the provisioning network (through the trusted proxy 127.0.0.1): 403, nothing about anyone
    with capturedLogs() as events:
        for path in ("/machines", f"/machines/{MAC}", "/machines/52:54:00:00:00:99", "/machines/not-a-mac"):
            r = server.fetch(path, client=IP)
            assert (r.code, r.body) == (403, b"forbidden\n"), path
    lines = [e for e in events if "code" in e]
    assert len(lines) == 4 and {e["outcome"] for e in lines} == {"forbidden"}
    assert "--http-admin-networks (127.0.0.0/8)" in lines[0]["reason"]
    # /machines/auto.ipxe is still a script path, for everyone
    known(server)
    assert server.fetch("/machines/auto.ipxe", client=IP).code == 200
    # an operator network added with --http-admin-networks
    ops = Server(admin_networks=(IPv4Network("192.0.2.0/28"),))
    assert ops.fetch("/machines", client=IP).code == 200
    assert ops.fetch("/machines", client="192.0.2.100").code == 403
    assert ops.fetch("/machines").code == 403  # loopback is not in this list
    assert Server(admin_networks=()).fetch("/machines").code == 403


def test_healthcheck_details_only_for_admin_networks() -> None:
    server = Server(Detailed())
    full = json.loads(server.fetch("/healthcheck").body)
    assert full["backend"]["path"] == "/srv/hw/hardware.yaml" and full["backend"]["errors"]
    r = server.fetch("/healthcheck", client=IP)
    assert r.code == 200
    short = json.loads(r.body)
    assert short["backend"] == {"backend": "file", "ready": True}
    assert set(short) == {"ready", "degraded", "version", "uptime", "backend", "binaries"}
    assert_no_internals(r.body)


def test_untrusted_forwarded_for_does_not_make_an_admin() -> None:
    """X-Forwarded-For counts only from --trusted-proxies: a machine cannot claim to be 127.0.0.1."""
    server = Server(trusted=(), admin_networks=(IPv4Network("192.0.2.0/24"),))
    r = server.fetch("/machines", headers={"X-Forwarded-For": "192.0.2.10"})
    assert r.code == 403  # the peer is 127.0.0.1, not in the admin networks; the header is ignored


def test_route_audit_for_a_stranger() -> None:
    """Every route, asked by an unknown address on the provisioning network: what it gets.

    Scripts by MAC go to anyone naming the MAC (Smee's behaviour; the MAC is iPXE's only
    key); everything by address needs a record for that address; the binaries are public;
    /metrics is counters only; /machines is refused; /healthcheck is short.
    """
    server = Server(Detailed())
    known(server)  # 52:54:00:aa:88:2a at 192.0.2.10
    stranger = "192.0.2.99"
    seen: dict[str, tuple[int, bytes]] = {}
    for path in (f"/{MAC}/auto.ipxe", "/auto.ipxe", "/ipxe/autoexec.ipxe", "/ipxe/ipxe.efi", "/vmware/ks-esxi.cfg",
                 "/machines", f"/machines/{MAC}", "/metrics", "/healthcheck"):
        r = server.fetch(path, client=stranger)
        seen[path] = (r.code, r.body)
    assert seen[f"/{MAC}/auto.ipxe"][0] == 200  # documented: by MAC, to anyone
    assert seen["/auto.ipxe"][0] == seen["/ipxe/autoexec.ipxe"][0] == seen["/vmware/ks-esxi.cfg"][0] == 404
    assert seen["/ipxe/ipxe.efi"][0] == 200
    assert seen["/machines"][0] == seen[f"/machines/{MAC}"][0] == 403
    assert seen["/metrics"][0] == seen["/healthcheck"][0] == 200
    for path, (_, body) in seen.items():
        if path != f"/{MAC}/auto.ipxe":
            assert MAC.encode() not in body and IP.encode() not in body, path
    assert b"s3cret" not in seen["/healthcheck"][1] and b"/srv/" not in seen["/healthcheck"][1]


def test_refusals_do_not_echo_the_record() -> None:
    """A record smee cannot script: the client learns that, not what the record says."""
    server = Server()
    known(server, hw_id="hw-with-s3cret")
    server.installers.error = ScriptError("custom ipxe url 'http://u:s3cret@x/' is not safe")
    r = server.fetch(f"/{MAC}/auto.ipxe")
    assert r.code == 500 and b"s3cret" not in r.body and b"see the smee log" in r.body
    server.backend.add(hardware("52:54:00:00:00:07", "192.0.2.7", allow_pxe=False))
    r = server.fetch("/52:54:00:00:00:07/auto.ipxe")
    assert r.code == 404 and r.body == b"#!ipxe\necho smee: netboot not allowed for 52:54:00:00:00:07\nexit 1\n"


def test_server_header_names_no_version() -> None:
    server = Server()
    for path in ("/healthcheck", "/nope", f"/{MAC}/auto.ipxe"):
        assert server.fetch(path).header("server") == "smee"
