"""The HTTP service (smee.http.service): a real port on 127.0.0.1, bind errors, the tap wiring."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import pytest_twisted
import treq
from fakes import FakeBackend, formatted, hardware
from prometheus_client import generate_latest
from test_http_app import SCRIPT_SETTINGS, dhcp_config
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.web.client import HTTPConnectionPool

from installers import load
from installers.registry import Registry
from smee.http.app import HTTPConfig, IPXEApp
from smee.listen import TCP_LISTEN_BACKLOG
from smee.http.service import HTTPBindError, HTTPService, Site, makeService
from smee.tap import Options
from smee.tap import makeService as makeTap
from smee.tftp.files import Binaries

MAC = "52:54:00:aa:88:2a"
EFI = bytes(range(256)) * 64
HW = """\
52:54:00:00:00:01:
  ipAddress: 192.0.2.10
  subnetMask: 255.255.255.0
  netboot: {allowPxe: true}
"""


def app(reactor: Any, backend: Any = None) -> IPXEApp:
    backend = backend if backend is not None else FakeBackend()
    binaries = Binaries(directory="/srv/ipxe", files=MappingProxyType({"ipxe.efi": EFI}))
    config = HTTPConfig(dhcp=dhcp_config(), script=SCRIPT_SETTINGS)
    return IPXEApp(config, backend, binaries, load(Registry()), reactor)


@pytest_twisted.ensureDeferred
async def test_real_port_script_and_range() -> None:
    from twisted.internet import reactor

    backend = FakeBackend()
    backend.add(hardware(MAC, "127.0.0.1", allow_pxe=True, ipxe_url="https://boot.netboot.xyz"))
    service = HTTPService(app(reactor, backend), reactor, ("127.0.0.1", 0))
    service.privilegedStartService()
    service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        host = service.port.getHost()
        assert host.host == "127.0.0.1" and host.port > 0
        base = f"http://127.0.0.1:{host.port}"
        with capturedLogs() as events:
            r = await treq.get(f"{base}/auto.ipxe", pool=pool)
            assert r.code == 200
            assert await r.text() == (
                "#!ipxe\n\necho Loading custom Tinkerbell iPXE script...\nchain --autofree https://boot.netboot.xyz\n"
            )
            r = await treq.get(f"{base}/ipxe/ipxe.efi", headers={"Range": "bytes=1000-1999"}, pool=pool)
            assert r.code == 206 and r.length == 1000
            assert r.headers.getRawHeaders("content-range") == [f"bytes 1000-1999/{len(EFI)}"]
            assert await r.content() == EFI[1000:2000]
            r = await treq.get(f"{base}/ipxe/ipxe.efi", pool=pool)
            assert r.code == 200 and r.length == len(EFI)
            assert await r.content() == EFI
        # one line per request, and none of Twisted's combined-format access log
        lines = formatted(e for e in events if e.get("log_namespace") == "smee.http" and "code" in e)
        assert len(lines) == 3, lines
        assert lines[0].startswith("127.0.0.1 GET /auto.ipxe 200 ")
        assert not [line for line in formatted(events) if '"GET /' in line]
    finally:
        await pool.closeCachedConnections()
        await service.stopService()
    assert service.port is None


@pytest_twisted.ensureDeferred
async def test_port_in_use_is_a_bind_error() -> None:
    from twisted.internet import reactor

    taken = reactor.listenTCP(0, Site(app(reactor).resource()), interface="127.0.0.1")
    try:
        number = taken.getHost().port
        service = HTTPService(app(reactor), reactor, ("127.0.0.1", number))
        with pytest.raises(HTTPBindError) as e:
            service.privilegedStartService()
        assert isinstance(e.value, SystemExit)
        assert str(e.value).startswith(f"smee: --http-addr=127.0.0.1 --http-port={number}: cannot listen for HTTP")
        assert "another HTTP server is listening" in str(e.value)
        assert service.port is None
    finally:
        await taken.stopListening()


class RefusingReactor(MemoryReactorClock):
    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, self.error)


@pytest.mark.parametrize(
    "code, hint",
    [
        (errno.EACCES, "ports below 1024 need root"),
        (errno.EADDRNOTAVAIL, "set --http-addr to one"),
    ],
)
def test_bind_error_hints(code: int, hint: str) -> None:
    reactor = RefusingReactor(OSError(code, "nope"))
    service = HTTPService(app(reactor), reactor, ("192.0.2.99", 80))
    with pytest.raises(HTTPBindError, match=hint):
        service.startService()


def test_service_listens_in_privileged_start_only_once() -> None:
    reactor = MemoryReactorClock()
    service = HTTPService(app(reactor), reactor, ("127.0.0.1", 8080))
    service.privilegedStartService()
    service.startService()
    [(port, factory, backlog, interface)] = reactor.tcpServers
    assert (port, interface) == (8080, "127.0.0.1")
    assert backlog == TCP_LISTEN_BACKLOG  # a boot storm's connections queue, not Twisted's 50
    assert isinstance(factory, Site) and factory is service.site


def test_site_writes_no_combined_log() -> None:
    site = Site(app(Clock()).resource())
    assert site.log(object()) is None  # would fail on a fake request if it formatted one
    assert site.noisy is False


# --- makeService and the tap ---------------------------------------------------------


@pytest.fixture
def hwfile(tmp_path: Path) -> str:
    path = tmp_path / "hardware.yaml"
    path.write_text(HW)
    return str(path)


def options(hwfile: str, *args: str) -> Options:
    o = Options(environ={}, detect_ip=lambda iface: IPv4Address("192.0.2.1"))
    o.parseOptions(["--backend-file-enabled=true", f"--backend-file-path={hwfile}", *args])
    return o


def test_make_service_from_settings(hwfile: str) -> None:
    from smee.tap import makeRuntime

    o = options(hwfile, "--http-addr=127.0.0.1", "--http-port=8081", "--trusted-proxies=10.0.0.0/8",
                "--osie-url=http://192.0.2.1/hook", "--dhcp-mode=proxy")
    runtime = makeRuntime(o.settings, FakeBackend(), Clock())
    svc = makeService(o.settings, runtime, Clock())
    assert isinstance(svc, HTTPService) and svc.address == ("127.0.0.1", 8081)
    c = svc.app.config
    assert c.mode == "proxy" and [str(n) for n in c.trusted_proxies] == ["10.0.0.0/8"]
    assert c.script.osie_url == "http://192.0.2.1/hook" and c.script.base_url == "http://192.0.2.1:8080"
    assert c.dhcp is runtime.dhcp
    assert svc.app.installers is runtime.installers and svc.app.metrics is runtime.metrics
    # the process collectors, in a registry of its own (a second runtime gets another)
    assert b"python_info" in generate_latest(runtime.metrics)
    assert makeRuntime(o.settings, FakeBackend(), Clock()).metrics is not runtime.metrics


def test_make_service_bad_script_setting_exits_cleanly(hwfile: str) -> None:
    from smee.tap import makeRuntime

    o = options(hwfile, "--tink-server=a b")
    with pytest.raises(SystemExit) as e:
        makeService(o.settings, makeRuntime(o.settings, FakeBackend(), Clock()), Clock())
    assert str(e.value).startswith("smee: --tink-server: ")


@pytest.mark.parametrize(
    "flags, present",
    [
        ([], True),
        (["--http-ipxe-script-enabled=false"], True),
        (["--http-ipxe-binary-enabled=false"], True),
        (["--http-ipxe-binary-enabled=false", "--http-ipxe-script-enabled=false"], False),
    ],
)
def test_tap_has_an_http_child(hwfile: str, flags: list[str], present: bool) -> None:
    top = makeTap(options(hwfile, *flags), reactor=Clock())
    names = [svc.name for svc in top]
    assert ("http" in names) is present
    if present:
        http = top.getServiceNamed("http")
        assert isinstance(http, HTTPService)
        assert http.app.backend.wrapped is top.getServiceNamed("backend")
        assert http.address == ("192.0.2.1", 8080)


def test_auto_proxy_serves_the_static_script_to_unknown_machines(tmp_path: Path) -> None:
    from treq.testing import StubTreq

    from smee.tap import makeRuntime

    o = Options(environ={}, detect_ip=lambda iface: IPv4Address("192.0.2.1"))
    o.parseOptions(["--backend-noop-enabled=true", "--dhcp-mode=auto-proxy", "--osie-url=http://192.0.2.1/hook"])
    clock = Clock()
    svc = makeService(o.settings, makeRuntime(o.settings, makeTap(o, reactor=clock).getServiceNamed("backend"), clock), clock)
    client = StubTreq(svc.app.resource())
    r = client.get("http://192.0.2.1:8080/52:54:00:00:00:99/auto.ipxe")
    client.flush()
    response = r.result
    assert response.code == 200
    body = response.text()
    client.flush()
    text = body.result
    assert "set download-url http://192.0.2.1/hook" in text and "set worker_id ${mac}" in text


@pytest_twisted.ensureDeferred
async def test_real_port_file_backend_answers_scripts_without_a_deferred(hwfile: str) -> None:
    """As ``twistd smee`` wires it, the file backend's by_mac_now reaches the app (through
    the metrics wrapper), and /<mac>/auto.ipxe is answered without by_mac, on persistent
    and on one-shot connections alike."""
    from twisted.internet import reactor

    from smee import tap

    o = options(hwfile, "--osie-url=http://192.0.2.1/hook", "--log-level=error")
    backend = tap._makeBackend(o.settings, reactor)
    svc = makeService(o.settings, tap.makeRuntime(o.settings, backend, reactor), reactor)

    def no_deferreds(mac: str) -> Any:
        raise AssertionError(f"by_mac({mac!r}) called: the synchronous path was not taken")

    svc.app.backend.by_mac = no_deferreds
    svc.address = ("127.0.0.1", 0)
    svc.privilegedStartService()
    svc.startService()
    pools = [HTTPConnectionPool(reactor, persistent=True), HTTPConnectionPool(reactor, persistent=False)]
    try:
        url = f"http://127.0.0.1:{svc.port.getHost().port}/52-54-00-00-00-01/auto.ipxe"
        for pool in pools:
            for _ in range(2):
                r = await treq.get(url, pool=pool)
                assert r.code == 200
                text = await r.text()
                assert text.startswith("#!ipxe") and "set download-url http://192.0.2.1/hook" in text
        r = await treq.get(url.replace("52-54-00-00-00-01", "52:54:00:00:00:99"), pool=pools[0])
        assert r.code == 404 and (await r.text()).startswith("#!ipxe\necho smee: no hardware with MAC")
        counted = generate_latest(svc.app.metrics).decode()
        assert 'http_requests_total{code="200",route="auto.ipxe"} 4.0' in counted
    finally:
        for pool in pools:
            await pool.closeCachedConnections()
        await svc.stopService()
