"""The HTTP routes (smee.http.app), served in memory with treq's StubTreq.

StubTreq's connections always come from 127.0.0.1, so tests that need
another client address trust 127.0.0.1/32 as a proxy and name the client
in X-Forwarded-For, which is also how a proxied deployment looks.
"""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Any

import pytest
from fakes import FakeBackend, formatted, hardware
from prometheus_client import CollectorRegistry, Counter, generate_latest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from installers import load
from installers.registry import Context, Registry, ScriptSettings, deterministic
from installers.script import ScriptError
from smee.backends import LookupFailed
from smee.dhcp.policy import DHCPConfig
from smee.http.app import UNSATISFIABLE, HTTPConfig, IPXEApp, byte_range
from smee.tftp.files import Binaries

MAC = "52:54:00:aa:88:2a"
IP = "192.0.2.10"
LOCAL = (IPv4Network("127.0.0.1/32"),)
EFI = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable
KPXE = b"undionly" * 10

SCRIPT_SETTINGS = ScriptSettings(
    osie_url="http://127.1.1.1", tink_server="192.0.2.1:42113", tink_tls=False, tink_insecure_tls=False,
    syslog_host="192.0.2.1", extra_kernel_args=(), retries=0, retry_delay=2, base_url="http://192.0.2.1:8080",
)


def dhcp_config(mode: str = "reservation") -> DHCPConfig:
    return DHCPConfig(
        mode=mode, server_ip=IPv4Address("192.0.2.1"), syslog_ip=IPv4Address("192.0.2.1"),
        tftp_ip=IPv4Address("192.0.2.1"), tftp_port=69, http_binary_url="http://192.0.2.1:8080/ipxe/",
        http_binary_ip=IPv4Address("192.0.2.1"), script_url="http://192.0.2.1:8080/auto.ipxe",
        prepend_mac=True, ipxe_rom_chainload=False,
    )


class FakeInstallers:
    """A registry whose script names the machine; ``error`` makes render raise it."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.contexts: list[Context] = []
        self.assets: dict[str, Any] = {}

    def render(self, ctx: Context) -> str:
        self.contexts.append(ctx)
        if self.error is not None:
            raise self.error
        return f"#!ipxe\necho script for {ctx.interface.mac}\n"

    def asset(self, path: str) -> Any:
        return self.assets.get(path)


class Server:
    """One app on a Clock, a StubTreq client, and synchronous helpers."""

    def __init__(
        self,
        backend: FakeBackend | None = None,
        installers: Any = None,
        *,
        mode: str = "reservation",
        trusted: tuple[IPv4Network, ...] = LOCAL,
        binaries: dict[str, bytes] | None = None,
        static_script: str | None = None,
        **config: Any,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.backend = backend if backend is not None else FakeBackend()
        self.installers = installers if installers is not None else FakeInstallers()
        self.metrics = CollectorRegistry()
        files = {"ipxe.efi": EFI, "undionly.kpxe": KPXE} if binaries is None else binaries
        self.binaries = Binaries(directory="/srv/ipxe", files=MappingProxyType(files))
        self.config = HTTPConfig(
            mode=mode, trusted_proxies=trusted, dhcp=dhcp_config(mode), script=SCRIPT_SETTINGS, **config
        )
        self.app = IPXEApp(
            self.config, self.backend, self.binaries, self.installers, self.clock,
            metrics=self.metrics, static_script=static_script,
        )
        self.stub = StubTreq(self.app.resource())

    def request(self, path: str, method: str = "GET", client: str | None = None,
                headers: dict[str, str] | None = None) -> defer.Deferred[Any]:
        all_headers = dict(headers or {})
        if client is not None:
            all_headers["X-Forwarded-For"] = client
        return self.stub.request(method, "http://smee.test" + path, headers=all_headers)

    def done(self, d: defer.Deferred[Any]) -> Response:
        """The answer to a request that has been answered."""
        self.stub.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "no response yet"
        response = results[0]
        if isinstance(response, BaseException) or hasattr(response, "raiseException"):
            response.raiseException()
        body: list[Any] = []
        response.content().addBoth(body.append)
        self.stub.flush()
        assert body and isinstance(body[0], bytes), body
        return Response(response, body[0])

    def answered(self, d: defer.Deferred[Any]) -> bool:
        """Whether ``d`` has a response (``called`` is also true while it waits on another Deferred)."""
        self.stub.flush()
        results: list[Any] = []
        d.addBoth(lambda r: results.append(r) or r)
        return bool(results)

    def fetch(self, path: str, method: str = "GET", client: str | None = None,
              headers: dict[str, str] | None = None) -> Response:
        return self.done(self.request(path, method, client, headers))


class Response:
    def __init__(self, response: Any, body: bytes) -> None:
        self.code: int = response.code
        self.length = response.length
        self.headers = response.headers
        self.body = body

    def header(self, name: str) -> str | None:
        value = self.headers.getRawHeaders(name.encode())
        return None if value is None else value[0].decode()

    @property
    def text(self) -> str:
        return self.body.decode()


def known(server: Server, mac: str = MAC, ip: str | None = IP, **fields: Any) -> Any:
    return server.backend.add(hardware(mac, ip, allow_pxe=fields.pop("allow_pxe", True), source="hw.yaml:3", **fields))


# --- auto.ipxe ------------------------------------------------------------------


@pytest.mark.parametrize("notation", [MAC, MAC.upper(), "52-54-00-aa-88-2a", "5254.00aa.882a"])
def test_script_by_mac_in_any_notation(notation: str) -> None:
    server = Server()
    known(server)
    r = server.fetch(f"/{notation}/auto.ipxe")
    assert r.code == 200
    assert r.text == f"#!ipxe\necho script for {MAC}\n"
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert server.backend.calls == [("mac", MAC)]
    [ctx] = server.installers.contexts
    assert ctx.interface.mac == MAC and ctx.settings is SCRIPT_SETTINGS
    assert ctx.hardware.source == "hw.yaml:3"


def test_script_by_client_address() -> None:
    server = Server()
    known(server)
    r = server.fetch("/auto.ipxe", client=IP)
    assert r.code == 200 and r.text == f"#!ipxe\necho script for {MAC}\n"
    assert server.backend.calls == [("ip", IPv4Address(IP))]


@pytest.mark.parametrize("path", ["/foo/auto.ipxe", "/52:54:00:aa:88/auto.ipxe", "/a/b/auto.ipxe"])
def test_script_path_element_not_a_mac_falls_back_to_address(path: str) -> None:
    server = Server()
    known(server)
    r = server.fetch(path, client=IP)
    assert r.code == 200
    assert server.backend.calls == [("ip", IPv4Address(IP))]


def test_script_without_trusted_proxies_ignores_forwarded_for() -> None:
    server = Server(trusted=())
    known(server)
    r = server.fetch("/auto.ipxe", client=IP)
    assert r.code == 404
    assert server.backend.calls == [("ip", IPv4Address("127.0.0.1"))]


def test_unknown_mac_is_404_with_a_readable_body() -> None:
    server = Server()
    r = server.fetch(f"/{MAC}/auto.ipxe")
    assert r.code == 404
    assert r.text == f"#!ipxe\necho smee: no hardware with MAC {MAC}\nexit 1\n"


def test_unknown_address_is_404() -> None:
    server = Server()
    r = server.fetch("/auto.ipxe", client=IP)
    assert r.code == 404
    assert r.text == f"#!ipxe\necho smee: no hardware with IP {IP}\nexit 1\n"


def test_netboot_not_allowed_is_404() -> None:
    server = Server()
    known(server, allow_pxe=False)
    with capturedLogs() as events:
        r = server.fetch(f"/{MAC}/auto.ipxe")
    assert r.code == 404
    assert r.text == f"#!ipxe\necho smee: netboot not allowed for {MAC}\nexit 1\n"
    assert server.installers.contexts == []
    assert any(f"netboot not allowed for {MAC}" in line for line in formatted(events))


def test_backend_failure_is_503_and_logged() -> None:
    server = Server()
    server.backend.set(MAC, LookupFailed("two records claim 52:54:00:aa:88:2a"))
    with capturedLogs() as events:
        r = server.fetch(f"/{MAC}/auto.ipxe")
    assert r.code == 503
    assert r.text == "#!ipxe\necho smee: hardware lookup failed, try again\nexit 1\n"
    [line] = [e for e in events if e.get("code") == 503]
    assert line["log_level"] == LogLevel.warn
    assert "two records claim" in formatted([line])[0]


def test_backend_exception_is_503_without_traceback_to_client() -> None:
    server = Server()
    server.backend.set(MAC, RuntimeError("backend bug"))
    with capturedLogs() as events:
        r = server.fetch(f"/{MAC}/auto.ipxe")
    assert r.code == 503
    assert "Traceback" not in r.text and "backend bug" not in r.text
    assert any(e.get("log_failure") is not None for e in events)


def test_slow_backend_is_503_after_the_timeout() -> None:
    server = Server()
    slow: defer.Deferred[Any] = defer.Deferred()
    server.backend.set(MAC, slow)
    d = server.request(f"/{MAC}/auto.ipxe")
    assert not server.answered(d)
    server.clock.advance(2.9)
    assert not server.answered(d)
    with capturedLogs() as events:
        server.clock.advance(0.2)
        r = server.done(d)
    assert r.code == 503
    assert r.text == "#!ipxe\necho smee: hardware lookup timed out, try again\nexit 1\n"
    assert any("timed out after 3.0s" in line for line in formatted(events))


def test_backend_answering_in_time() -> None:
    server = Server()
    slow: defer.Deferred[Any] = defer.Deferred()
    server.backend.set(MAC, slow)
    d = server.request(f"/{MAC}/auto.ipxe")
    server.clock.advance(2.5)
    slow.callback(hardware(MAC, IP, allow_pxe=True))
    r = server.done(d)
    assert r.code == 200
    server.clock.advance(10)  # the timeout was cancelled
    assert server.clock.getDelayedCalls() == []


def test_script_error_is_500_without_traceback() -> None:
    server = Server()
    known(server)
    server.installers.error = ScriptError("facility: 'x\\nshell' contains U+000A")
    with capturedLogs() as events:
        r = server.fetch(f"/{MAC}/auto.ipxe")
    assert r.code == 500
    assert r.text == f"#!ipxe\necho smee: cannot write the boot script for {MAC}, see the smee log\nexit 1\n"
    [line] = [e for e in events if e.get("code") == 500]
    assert line["log_level"] == LogLevel.error
    text = formatted([line])[0]
    assert "hw.yaml:3" in text and "contains U+000A" in text


def test_unexpected_exception_is_a_plain_500() -> None:
    server = Server()
    known(server)
    server.installers.error = RuntimeError("installer bug")
    with capturedLogs() as events:
        r = server.fetch(f"/{MAC}/auto.ipxe")
    assert r.code == 500
    assert r.text == "internal server error\n"
    assert [e for e in events if e.get("log_failure") is not None]
    assert any(e.get("code") == 500 for e in events)


def test_custom_ipxe_vector_with_the_real_registry() -> None:
    """smee-study.md §8.4 step 5, and step 6 (the same by address; unknown MAC and /foo are 404)."""
    server = Server(installers=load(Registry()))
    server.backend.add(hardware(MAC, "192.168.2.15", allow_pxe=True, ipxe_url="https://boot.netboot.xyz"))
    expected = "#!ipxe\n\necho Loading custom Tinkerbell iPXE script...\nchain --autofree https://boot.netboot.xyz\n"
    r = server.fetch(f"/{MAC}/auto.ipxe")
    assert (r.code, r.text) == (200, expected)
    r = server.fetch("/auto.ipxe", client="192.168.2.15")
    assert (r.code, r.text) == (200, expected)
    assert server.fetch("/52:54:00:aa:88:2b/auto.ipxe").code == 404
    assert server.fetch("/foo").code == 404


class Counting:
    """A default installer that counts its calls and writes the call number into the script."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ctx: Context) -> str:
        self.calls += 1
        return f"#!ipxe\necho {ctx.hardware.facility or 'none'} call {self.calls}\n"


def test_script_is_reused_for_the_same_record_and_rendered_afresh_when_it_changes() -> None:
    installer = Counting()
    registry = Registry()
    registry.register_default(deterministic(installer))
    server = Server(installers=registry)
    first = known(server)
    assert server.fetch(f"/{MAC}/auto.ipxe").text == "#!ipxe\necho none call 1\n"
    assert server.fetch(f"/{MAC}/auto.ipxe").text == "#!ipxe\necho none call 1\n"
    assert server.fetch("/auto.ipxe", client=IP).text == "#!ipxe\necho none call 1\n"
    assert installer.calls == 1
    # A reload gives new objects: even an equal record is rendered again, a changed one shows its change.
    server.backend.add(hardware(MAC, IP, allow_pxe=True, source="hw.yaml:3"))
    assert server.fetch(f"/{MAC}/auto.ipxe").text == "#!ipxe\necho none call 2\n"
    changed = first._replace(hardware=replace(first.hardware, facility="lab2"))
    server.backend.add(changed)
    assert server.fetch(f"/{MAC}/auto.ipxe").text == "#!ipxe\necho lab2 call 3\n"
    # A new registration may change which installer a record gets.
    registry.register_distro("other", deterministic(Counting()))
    assert server.fetch(f"/{MAC}/auto.ipxe").text == "#!ipxe\necho lab2 call 4\n"
    assert installer.calls == 4


def test_script_of_an_unmarked_installer_is_rendered_every_time() -> None:
    installer = Counting()
    registry = Registry()
    registry.register_default(installer)
    server = Server(installers=registry)
    known(server)
    assert server.fetch(f"/{MAC}/auto.ipxe").text == "#!ipxe\necho none call 1\n"
    assert server.fetch(f"/{MAC}/auto.ipxe").text == "#!ipxe\necho none call 2\n"


def test_script_error_is_not_kept() -> None:
    registry = Registry()
    calls = []

    @deterministic
    def broken(ctx: Context) -> str:
        calls.append(ctx)
        raise ScriptError("facility: bad")

    registry.register_default(broken)
    server = Server(installers=registry)
    known(server)
    assert server.fetch(f"/{MAC}/auto.ipxe").code == 500
    assert server.fetch(f"/{MAC}/auto.ipxe").code == 500
    assert len(calls) == 2


def test_real_registry_bad_custom_url_is_500() -> None:
    server = Server(installers=load(Registry()))
    server.backend.add(hardware(MAC, IP, allow_pxe=True, ipxe_url="ftp://example.org/x"))
    assert server.fetch(f"/{MAC}/auto.ipxe").code == 500


@pytest.mark.parametrize("path", ["/foo", "/", "/auto.ipxe.bak", "/foo/auto", "/ipxe"])
def test_other_paths_are_404(path: str) -> None:
    server = Server()
    known(server)
    assert server.fetch(path, client=IP).code == 404
    assert server.installers.contexts == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_script_other_methods_are_405(method: str) -> None:
    server = Server()
    r = server.fetch(f"/{MAC}/auto.ipxe", method=method)
    assert r.code == 405 and r.header("allow") == "GET, HEAD"
    assert server.backend.calls == []


def test_head_script() -> None:
    server = Server()
    known(server)
    r = server.fetch(f"/{MAC}/auto.ipxe", method="HEAD")
    assert r.code == 200 and r.body == b""
    assert r.header("content-length") == str(len(f"#!ipxe\necho script for {MAC}\n"))


def test_scripts_disabled() -> None:
    server = Server(scripts_enabled=False)
    known(server)
    assert server.fetch(f"/{MAC}/auto.ipxe").code == 404
    assert server.backend.calls == []
    assert server.fetch("/ipxe/ipxe.efi").code == 200
    assert server.fetch("/healthcheck").code == 200


def test_auto_proxy_unknown_machine_gets_the_static_script() -> None:
    static = "#!ipxe\necho static\n"
    server = Server(mode="auto-proxy", static_script=static)
    r = server.fetch(f"/{MAC}/auto.ipxe")
    assert (r.code, r.text) == (200, static)
    known(server, allow_pxe=False)
    assert server.fetch(f"/{MAC}/auto.ipxe").code == 404  # a record saying no still wins


def test_auto_proxy_without_a_static_script_is_404() -> None:
    server = Server(mode="auto-proxy")
    assert server.fetch(f"/{MAC}/auto.ipxe").code == 404


# --- installer assets -------------------------------------------------------------


def test_asset_for_the_asking_machine() -> None:
    server = Server()
    known(server)
    seen: list[Context] = []

    def kickstart(ctx: Context) -> tuple[str, bytes]:
        seen.append(ctx)
        return "text/plain", f"network --device={ctx.mac}\n".encode()

    server.installers.assets["/vmware/ks-esxi.cfg"] = kickstart
    r = server.fetch("/vmware/ks-esxi.cfg", client=IP)
    assert (r.code, r.text) == (200, f"network --device={MAC}\n")
    assert r.header("content-type") == "text/plain"
    assert server.backend.calls == [("ip", IPv4Address(IP))]
    assert server.fetch("/vmware/ks-esxi.cfg", client="192.0.2.99").code == 404


def test_asset_error_is_500() -> None:
    server = Server()
    known(server)

    def broken(ctx: Context) -> tuple[str, bytes]:
        raise ScriptError("root password: not set")

    server.installers.assets["/flatcar/ignition.json"] = broken
    r = server.fetch("/flatcar/ignition.json", client=IP)
    assert r.code == 500 and "root password" not in r.text


def test_real_registry_serves_its_assets() -> None:
    registry = load(Registry())
    for path in ("/vmware/ks-esxi.cfg", "/flatcar/ignition.json"):
        assert registry.asset(path) is not None, path
    server = Server(installers=registry)
    assert server.fetch("/vmware/ks-esxi.cfg", client=IP).code == 404  # unknown machine


# --- binaries ---------------------------------------------------------------------


def test_binary_get() -> None:
    server = Server()
    r = server.fetch("/ipxe/ipxe.efi")
    assert r.code == 200 and r.body == EFI
    assert r.length == len(EFI)
    assert r.header("content-type") == "application/octet-stream"
    assert r.header("accept-ranges") == "bytes"
    assert r.header("etag").startswith('"')
    assert server.backend.calls == []  # served to anyone


def test_binary_head() -> None:
    server = Server()
    r = server.fetch("/ipxe/undionly.kpxe", method="HEAD")
    assert r.code == 200 and r.body == b""
    assert r.header("content-length") == str(len(KPXE))
    assert r.header("accept-ranges") == "bytes"


@pytest.mark.parametrize(
    "header, code, first, last",
    [
        ("bytes=0-9", 206, 0, 9),
        ("bytes=100-", 206, 100, 1023),
        ("bytes=-24", 206, 1000, 1023),
        ("bytes=1000-5000", 206, 1000, 1023),
        ("bytes=-5000", 206, 0, 1023),
        ("BYTES = 5-5", 206, 5, 5),
        ("bytes=0-1,5-6", 200, 0, 1023),
        ("bytes=9-0", 200, 0, 1023),
        ("items=0-9", 200, 0, 1023),
        ("bytes=abc", 200, 0, 1023),
    ],
)
def test_binary_range(header: str, code: int, first: int, last: int) -> None:
    server = Server()
    r = server.fetch("/ipxe/ipxe.efi", headers={"Range": header})
    assert r.code == code
    assert r.body == EFI[first : last + 1]
    assert r.length == last - first + 1
    if code == 206:
        assert r.header("content-range") == f"bytes {first}-{last}/{len(EFI)}"
    else:
        assert r.header("content-range") is None


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
def test_binary_range_not_satisfiable(header: str) -> None:
    server = Server()
    r = server.fetch("/ipxe/ipxe.efi", headers={"Range": header})
    assert r.code == 416
    assert r.header("content-range") == f"bytes */{len(EFI)}"


def test_binary_if_range() -> None:
    server = Server()
    etag = server.fetch("/ipxe/ipxe.efi").header("etag")
    r = server.fetch("/ipxe/ipxe.efi", headers={"Range": "bytes=0-1", "If-Range": etag})
    assert r.code == 206 and r.body == EFI[:2]
    r = server.fetch("/ipxe/ipxe.efi", headers={"Range": "bytes=0-1", "If-Range": '"other"'})
    assert r.code == 200 and r.body == EFI


def test_head_ignores_range() -> None:
    server = Server()
    r = server.fetch("/ipxe/ipxe.efi", method="HEAD", headers={"Range": "bytes=0-1"})
    assert r.code == 200 and r.header("content-length") == str(len(EFI))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_binary_other_methods_are_405(method: str) -> None:
    """smee-study.md §8.8: POST /ipxe/ipxe.efi → 405."""
    server = Server()
    r = server.fetch("/ipxe/ipxe.efi", method=method)
    assert r.code == 405 and r.header("allow") == "GET, HEAD"


@pytest.mark.parametrize(
    "path",
    [
        "/ipxe/foo",  # smee-study.md §8.8
        "/ipxe/../x",
        "/ipxe/%2e%2e/x",
        "/ipxe/%2e%2e/ipxe.efi",
        "/ipxe/..%2fipxe.efi",
        "/ipxe/a/b/ipxe.efi",
        "/ipxe/not-a-mac/ipxe.efi",
        "/ipxe/IPXE.EFI",
        "/ipxe/ipxe.efi%00",
        "/ipxe/%5cipxe.efi",
    ],
)
def test_binary_unknown_names_and_traversal_are_404(path: str) -> None:
    server = Server()
    assert server.fetch(path).code == 404


@pytest.mark.parametrize(
    "path",
    [
        f"/ipxe/{MAC}/ipxe.efi",
        "/ipxe/52-54-00-AA-88-2A/ipxe.efi",
        "/ipxe/ipxe.efi-00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        f"/ipxe/{MAC}/ipxe.efi-00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
def test_binary_with_mac_directory_and_traceparent(path: str) -> None:
    server = Server()
    r = server.fetch(path)
    assert r.code == 200 and r.body == EFI


def test_missing_binary_is_404_and_says_why() -> None:
    server = Server()
    with capturedLogs() as events:
        r = server.fetch("/ipxe/snp.efi")
    assert r.code == 404
    [line] = [e for e in events if e.get("code") == 404]
    assert line["log_level"] == LogLevel.warn
    assert "no snp.efi in /srv/ipxe" in formatted([line])[0]


def test_binaries_disabled() -> None:
    server = Server(binaries_enabled=False)
    assert server.fetch("/ipxe/ipxe.efi").code == 404


def test_autoexec_reservation_known_client() -> None:
    server = Server()
    known(server)
    r = server.fetch("/ipxe/autoexec.ipxe", client=IP)
    assert r.code == 200
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.text.startswith("#!ipxe\n")
    assert f"chain --autofree http://192.0.2.1:8080/{MAC}/auto.ipxe ||" in r.text
    assert server.backend.calls == [("ip", IPv4Address(IP))]
    r = server.fetch("/ipxe/autoexec.ipxe", client=IP, headers={"Range": "bytes=0-5"})
    assert (r.code, r.text) == (206, "#!ipxe")


def test_autoexec_reservation_uses_the_record_url() -> None:
    server = Server()
    known(server, ipxe_url="https://boot.netboot.xyz")
    r = server.fetch(f"/ipxe/{MAC}/autoexec.ipxe", client=IP)
    assert r.code == 200 and "chain --autofree https://boot.netboot.xyz ||" in r.text


@pytest.mark.parametrize("allow_pxe", [None, False])
def test_autoexec_reservation_refused(allow_pxe: bool | None) -> None:
    server = Server()
    if allow_pxe is not None:
        known(server, allow_pxe=allow_pxe)
    r = server.fetch("/ipxe/autoexec.ipxe", client=IP)
    assert r.code == 404 and r.text == "not found\n"


def test_autoexec_reservation_backend_down() -> None:
    server = Server()
    server.backend.set(IP, LookupFailed("down"))
    assert server.fetch("/ipxe/autoexec.ipxe", client=IP).code == 503


def test_autoexec_unsafe_record_url_is_404() -> None:
    server = Server()
    known(server, ipxe_url="http://example.org/a b")
    assert server.fetch("/ipxe/autoexec.ipxe", client=IP).code == 404


@pytest.mark.parametrize("mode", ["proxy", "auto-proxy"])
def test_autoexec_proxy_modes_need_no_lookup(mode: str) -> None:
    server = Server(mode=mode)
    r = server.fetch("/ipxe/autoexec.ipxe", client=IP)
    assert r.code == 200
    assert "chain --autofree http://192.0.2.1:8080/${net${idx}/mac}/auto.ipxe ||" in r.text
    assert server.backend.calls == []


# --- health, metrics, access log ----------------------------------------------------


def test_healthcheck() -> None:
    server = Server()
    server.clock.advance(42.5)
    r = server.fetch("/healthcheck")
    assert r.code == 200 and r.header("content-type") == "application/json"
    body = json.loads(r.body)
    assert body == {
        "ready": True,
        "degraded": False,
        "version": server.app.version,
        "uptime": 42.5,
        "backend": {"backend": "fake", "ready": True, "records": 0},
        "binaries": ["ipxe.efi", "undionly.kpxe"],
    }
    assert server.fetch("/healthcheck", method="POST").code == 405


class _StatedBackend(FakeBackend):
    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self._state = state

    def state(self) -> dict[str, Any]:
        return dict(self._state)


@pytest.mark.parametrize(("state", "ready", "degraded"), [
    ({"backend": "kube", "ready": False, "error": "connection refused"}, False, False),
    ({"backend": "file", "ready": True, "degraded": True, "errors": ["hw.yaml:3: bad"]}, True, True),
])
def test_healthcheck_reports_readiness_and_stays_200(state: dict[str, Any], ready: bool, degraded: bool) -> None:
    """Readiness is in the body; the status stays 200 so a liveness probe never restarts smee for its backend."""
    server = Server(backend=_StatedBackend(state))
    r = server.fetch("/healthcheck")
    body = json.loads(r.body)
    assert r.code == 200 and (body["ready"], body["degraded"]) == (ready, degraded)


def test_healthcheck_hides_credentials_from_admins_too() -> None:
    server = Server(backend=_StatedBackend(
        {"backend": "http", "ready": False, "last_error": "GET http://inv:hunter2@192.0.2.9/hardware: refused"}))
    r = server.fetch("/healthcheck")  # the test client is an admin (loopback)
    assert "hunter2" not in r.text and json.loads(r.body)["backend"]["last_error"].startswith("GET http://inv:")


def test_metrics() -> None:
    server = Server()
    Counter("smee_test_requests", "a test counter", registry=server.metrics).inc(3)
    r = server.fetch("/metrics")
    assert r.code == 200
    assert r.header("content-type").startswith("text/plain; version=")
    assert "smee_test_requests_total 3.0" in r.text


def test_access_log_one_line_per_request() -> None:
    server = Server()
    known(server)
    with capturedLogs() as events:
        server.fetch(f"/{MAC}/auto.ipxe", client=IP)
        server.fetch("/ipxe/ipxe.efi", headers={"Range": "bytes=0-99"})
        server.fetch("/metrics")
        server.fetch("/healthcheck")
        server.fetch("/nope")
    lines = [e for e in events if e.get("log_namespace") == "smee.http" and "code" in e]
    assert len(lines) == 5
    script, binary, metrics, health, nope = lines
    assert script["log_level"] == LogLevel.info
    text = formatted([script])[0]
    assert text.startswith(f"{IP} (via 127.0.0.1) GET /{MAC}/auto.ipxe 200 ")
    assert f"script for {MAC}" in text
    assert script["size"] == len(f"#!ipxe\necho script for {MAC}\n") and script["duration_ms"] == 0
    assert (binary["code"], binary["size"], binary["client"]) == (206, 100, "127.0.0.1")
    assert formatted([binary])[0].startswith("127.0.0.1 GET /ipxe/ipxe.efi 206 100 bytes 0.0 ms")
    assert metrics["log_level"] == health["log_level"] == LogLevel.debug
    assert nope["code"] == 404 and nope["log_level"] == LogLevel.info


def test_access_log_below_the_log_level_is_not_built_but_counted() -> None:
    """With --log-level=warn the info/debug access lines are skipped (smee's observer
    would drop them); 5xx lines (warn) still come, and every request is counted."""
    server = Server(log_level="warn")
    known(server)
    other = "52:54:00:00:00:99"
    server.backend.set(other, LookupFailed("two records claim it"))
    with capturedLogs() as events:
        assert server.fetch(f"/{MAC}/auto.ipxe").code == 200
        assert server.fetch("/healthcheck").code == 200
        assert server.fetch(f"/{other}/auto.ipxe").code == 503
    lines = [e for e in events if e.get("log_namespace") == "smee.http" and "code" in e]
    assert [(e["code"], e["log_level"]) for e in lines] == [(503, LogLevel.warn)]
    text = generate_latest(server.metrics).decode()
    assert 'http_requests_total{code="200",route="auto.ipxe"} 1.0' in text
    assert 'http_requests_total{code="200",route="healthcheck"} 1.0' in text
    assert 'http_requests_total{code="503",route="auto.ipxe"} 1.0' in text


def test_access_log_duration_from_the_clock() -> None:
    server = Server()
    slow: defer.Deferred[Any] = defer.Deferred()
    server.backend.set(MAC, slow)
    with capturedLogs() as events:
        d = server.request(f"/{MAC}/auto.ipxe")
        server.clock.advance(0.25)
        slow.callback(None)
        server.done(d)
    [line] = [e for e in events if "duration_ms" in e]
    assert line["duration_ms"] == 250.0 and line["code"] == 404


# --- byte_range --------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, size, expected",
    [
        (None, 10, None),
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=0-", 10, (0, 9)),
        ("bytes=-1", 10, (9, 9)),
        ("bytes=-0", 10, UNSATISFIABLE),
        ("bytes=10-", 10, UNSATISFIABLE),
        ("bytes=0-", 0, UNSATISFIABLE),
        ("bytes=-5", 0, UNSATISFIABLE),
        ("bytes=3-2", 10, None),
        ("bytes=-", 10, None),
        ("bytes=1-2,", 10, (1, 2)),
        ("bytes=1-2, 4-5", 10, None),
        ("bytes=+1-2", 10, None),
        ("bytes=١-2", 10, None),
        ("bytes", 10, None),
    ],
)
def test_byte_range(header: str | None, size: int, expected: Any) -> None:
    assert byte_range(header, size) == expected


def test_config_from_settings() -> None:
    from smee import config

    settings, _ = config.resolve(
        config.Sources({"backend-file-enabled": "true", "backend-file-path": "/", "trusted-proxies": "10.0.0.0/8",
                        "dhcp-mode": "proxy", "http-ipxe-binary-enabled": "false"}, {}, {}),
        lambda iface: IPv4Address("192.0.2.1"),
    )
    c = HTTPConfig.from_settings(settings, "dhcp", "script")
    assert c == replace(
        HTTPConfig(), binaries_enabled=False, mode="proxy", trusted_proxies=(IPv4Network("10.0.0.0/8"),),
        dhcp="dhcp", script="script", log_level="info",
    )


def test_client_gone_during_lookup() -> None:
    """The lookup is cancelled, nothing is written, and the access line says so."""
    server = Server()
    slow: defer.Deferred[Any] = defer.Deferred()
    server.backend.set(MAC, slow)
    with capturedLogs() as events:
        d = server.request(f"/{MAC}/auto.ipxe")
        server.stub.flush()
        d.addErrback(lambda f: None)
        d.cancel()
        server.stub.flush()
    assert slow.called  # cancelled along with the request
    [line] = [e for e in events if "duration_ms" in e]
    assert line["aborted"] is True
    assert formatted([line])[0] == f"127.0.0.1 GET /{MAC}/auto.ipxe aborted 0 bytes 0.0 ms"
    assert server.clock.getDelayedCalls() == []


# --- the hot route without Klein (IPXEApp.answer_now) ------------------------------


class SyncBackend(FakeBackend):
    """A FakeBackend that also answers by MAC synchronously, as the file backend does (``by_mac_now``)."""

    def by_mac_now(self, mac: str) -> Any:
        self.calls.append(("mac_now", mac))
        value = self.answers.get(self._key(mac), self.default)
        if isinstance(value, BaseException):
            raise value
        assert not isinstance(value, defer.Deferred), "a synchronous backend has no slow answers"
        return value


def _exchange(server: Server, path: str, method: str, headers: dict[str, str] | None) -> dict[str, Any]:
    """Everything a client and an operator see of one request: the answer, the log, the counters."""
    with capturedLogs() as events:
        r = server.fetch(path, method, headers=headers)
    seen = {name: values for name, values in r.headers.getAllRawHeaders() if name.lower() != b"date"}
    log = []
    for e in events:
        failure = e.get("log_failure")
        if failure is not None:  # the traceback's frames differ; what failed and the message do not
            log.append((e["log_level"], e["log_format"], repr(failure.value)))
        else:
            log.append((e["log_level"], formatted([e])[0]))
    counters = [line for line in generate_latest(server.metrics).decode().splitlines() if "_created" not in line]
    return {"code": r.code, "headers": seen, "body": r.body, "log": log, "metrics": counters}


def _prepare(server: Server, case: str) -> None:
    if case == "unknown":
        return
    known(server, allow_pxe=case != "not-allowed")
    if case == "lookup-failed":
        server.backend.set(MAC, LookupFailed("two records claim 52:54:00:aa:88:2a"))
    elif case == "lookup-raises":
        server.backend.set(MAC, RuntimeError("backend bug"))
    elif case == "script-error":
        server.installers.error = ScriptError("facility: 'x\\nshell' contains U+000A")
    elif case == "installer-bug":
        server.installers.error = RuntimeError("installer bug")


@pytest.mark.parametrize("case", [
    "known", "unknown", "not-allowed", "lookup-failed", "lookup-raises", "script-error", "installer-bug",
])
@pytest.mark.parametrize("path, method, headers, taken", [
    (f"/{MAC}/auto.ipxe", "GET", None, True),
    (f"/{MAC.upper()}/auto.ipxe", "GET", None, True),
    ("/5254.00aa.882a/auto.ipxe?x=1", "GET", {"User-Agent": "iPXE/1.21.1"}, True),
    (f"/{MAC}/auto.ipxe", "GET", {"Host": "smee.test:8080"}, True),
    (f"/{MAC}/auto.ipxe", "HEAD", None, False),
    (f"/{MAC}/auto.ipxe", "POST", None, False),
    ("/52%3A54%3A00%3Aaa%3A88%3A2a/auto.ipxe", "GET", None, False),
    (f"/{MAC}/auto.ipxe", "GET", {"Host": "a..b"}, False),  # werkzeug would raise BadHost: a plain 400
    (f"//{MAC}/auto.ipxe", "GET", None, False),
    (f"/{MAC}/auto.ipxe/", "GET", None, False),
])
def test_answer_now_is_the_routed_answer(
    case: str, path: str, method: str, headers: dict[str, str] | None, taken: bool
) -> None:
    """With a synchronous backend, the answer, the access line and the counters are the routed ones."""
    routed, now = Server(), Server(SyncBackend())
    for server in (routed, now):
        _prepare(server, case)
    expected = _exchange(routed, path, method, headers)
    assert _exchange(now, path, method, headers) == expected
    assert ("mac_now" in {by for by, _ in now.backend.calls}) is taken


@pytest.mark.parametrize("mode, static", [("auto-proxy", "#!ipxe\necho static\n"), ("reservation", None)])
@pytest.mark.parametrize("enabled", [True, False])
def test_answer_now_modes(mode: str, static: str | None, enabled: bool) -> None:
    routed = Server(mode=mode, static_script=static, scripts_enabled=enabled)
    now = Server(SyncBackend(), mode=mode, static_script=static, scripts_enabled=enabled)
    path = "/52:54:00:00:00:99/auto.ipxe"
    assert _exchange(now, path, "GET", None) == _exchange(routed, path, "GET", None)


def test_answer_now_is_taken_only_for_get_with_a_mac() -> None:
    server = Server(SyncBackend())
    known(server)
    assert server.fetch(f"/{MAC.upper()}/auto.ipxe").code == 200
    assert server.fetch(f"/{MAC}/auto.ipxe", method="HEAD").code == 200
    assert server.fetch("/52%3A54%3A00%3Aaa%3A88%3A2a/auto.ipxe").code == 200
    assert server.fetch("/auto.ipxe", client=IP).code == 200
    assert server.backend.calls == [("mac_now", MAC), ("mac", MAC), ("mac", MAC), ("ip", IPv4Address(IP))]
