# -*- test-case-name: tests.test_explain -*-
"""``smee explain --mac M``: what one machine would get at each boot stage, computed offline.

Operators debugging PXE used to need tcpdump on the boot network. This runs
the code the servers run on synthetic requests shaped like real firmware's
and prints the result: the same option parsing (flags > SMEE_* > --config),
backend and :func:`smee.tap.makeRuntime`; DHCP's classify/decide; the TFTP
gate and autoexec.ipxe; and smee's own HTTP app, served in memory, for the
binary and script answers (so a 404 or 500 is the server's, with the reason
its access log would give, not a copy of its rules). Nothing is bound and
nothing is sent: the backend is loaded synchronously, every lookup is an
already-fired Deferred, and the clock is a :class:`~twisted.internet.task.Clock`.

The logic is :func:`explain` (settings + runtime in, a JSON-able report
out) and :func:`render_text`; :func:`main` only parses options and picks an
exit status, so tests can drive each part on its own.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from socket import inet_ntoa
from typing import Any, NamedTuple, TextIO
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from smee import tap
from smee.backends import LookupFailed
from smee.dhcp import options as opt
from smee.dhcp.classify import classify
from smee.dhcp.packet import (
    BOOTREQUEST,
    DISCOVER,
    MESSAGE_TYPES,
    ZERO4,
    Packet,
    PacketTooLarge,
    build,
)
from smee.dhcp.policy import DHCPConfig, decide, needs_lookup
from smee.hardware import HardwareError, Match, mac_bytes, normalize_mac
from smee.tftp import files as tftp_files

__all__ = ["CLIENTS", "ExplainOptions", "discover", "explain", "main", "render_json", "render_text"]

#: --client values: what kind of DHCP client the machine's firmware is.
CLIENTS = ("pxe", "ipxe", "http", "linux")
_CLIENT_TITLES = {
    "pxe": "firmware PXE ROM",
    "ipxe": "iPXE ROM",
    "http": "UEFI HTTP Boot",
    "linux": "OS DHCP client",
}

#: The arch a stock iPXE binary reports in option 93: its own build, whatever
#: the firmware that loaded it said (an HTTP Boot client sends 16, ipxe.efi 7).
_BINARY_ARCH = {"undionly.kpxe": 0, "ipxe.efi": 7, "snponly.efi": 7, "snp.efi": 11}
#: Binaries that ask the server they came from for autoexec.ipxe (README: BIOS undionly does not).
_ASKS_AUTOEXEC = frozenset(("ipxe.efi", "snp.efi", "snponly.efi"))
#: Option 55 as the captured clients send it (shared/captures/CLIENT-FINGERPRINTS.txt).
_PRL_FIRMWARE = bytes((1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135))
_PRL_IPXE = bytes((1, 3, 6, 7, 12, 15, 17, 26, 42, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134, 135, 175, 203))
_PRL_LINUX = bytes((1, 3, 6, 12, 15, 28, 42, 119))
#: Sent when the binaries' own version is unknown; what Debian's build and QEMU's ROM send.
_DEFAULT_IPXE_VERSION = "1.0.0"

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2

#: The in-memory HTTP client's address, trusted so X-Forwarded-For can name the machine.
_LOOPBACK = IPv4Network("127.0.0.1/32")


# --- synthetic requests ------------------------------------------------------


def _guid(mac: str) -> bytes:
    """Option 97: type 0 and a UUID derived from the MAC, so output is the same on every run."""
    return b"\0" + bytes(10) + mac_bytes(mac)


def discover(
    mac: str,
    arch: int,
    kind: str,
    user_class: str = "",
    ipxe_version: str = _DEFAULT_IPXE_VERSION,
) -> Packet:
    """A DHCPDISCOVER carrying the options a real client of ``kind`` sends.

    The option sets follow the captured clients: an EDK2/PXE ROM sends 93,
    94, 60 ``PXEClient:Arch:…:UNDI:003000`` and 97; iPXE adds 77 and 175 (with
    its version in 175.235) and 61; UEFI HTTP Boot says ``HTTPClient``; an
    OS client sends neither 60 nor 93. The policy reads only these, so the
    answer is the one the real client would get.
    """
    o: dict[int, bytes] = {opt.MESSAGE_TYPE: bytes((DISCOVER,))}
    arch16 = arch.to_bytes(2, "big")
    if kind == "linux":
        o[opt.MAX_SIZE] = (576).to_bytes(2, "big")
        o[opt.PARAM_REQUEST] = _PRL_LINUX
        o[opt.CLIENT_ID] = b"\x01" + mac_bytes(mac)
    elif kind == "ipxe":
        o[opt.MAX_SIZE] = (1500 - 28).to_bytes(2, "big")
        o[opt.CLIENT_ARCH] = arch16
        o[opt.CLIENT_NDI] = b"\x01\x03\x0a" if arch else b"\x01\x02\x01"
        o[opt.VENDOR_CLASS] = f"PXEClient:Arch:{arch:05d}:UNDI:{'003010' if arch else '002001'}".encode()
        o[opt.USER_CLASS] = (user_class or "iPXE").encode()
        o[opt.PARAM_REQUEST] = _PRL_IPXE
        o[opt.IPXE_ENCAP] = opt.tlv(((1, b"\x01"), (opt.IPXE_VERSION, tftp_files.version_bytes(ipxe_version))))
        o[opt.CLIENT_ID] = b"\x01" + mac_bytes(mac)
        o[opt.CLIENT_GUID] = _guid(mac)
    else:  # pxe, http: the firmware's own client
        prefix = "HTTPClient" if kind == "http" else "PXEClient"
        o[opt.MAX_SIZE] = (1500 - 28).to_bytes(2, "big")
        o[opt.PARAM_REQUEST] = _PRL_FIRMWARE
        o[opt.CLIENT_GUID] = _guid(mac)
        o[opt.CLIENT_NDI] = b"\x01\x03\x00" if arch else b"\x01\x02\x01"
        o[opt.CLIENT_ARCH] = arch16
        o[opt.VENDOR_CLASS] = f"{prefix}:Arch:{arch:05d}:UNDI:003000".encode()
    return Packet(BOOTREQUEST, xid=0x534D4545, flags=0x8000, chaddr=mac_bytes(mac), options=o)


def default_arch(match: Match | None, kind: str) -> tuple[int, str]:
    """(option 93 value, why) when --arch is not given: read from the hardware record.

    The record's ``arch`` names the CPU and ``uefi`` the firmware; BIOS is
    assumed when ``uefi`` is false, as Tinkerbell does. Without a record
    x86-64 UEFI, today's common case, is assumed and the output says so.
    """
    http = kind == "http"
    if match is None:
        return (16 if http else 7), "assumed x86-64 UEFI: no hardware record, pass --arch"
    iface = match.interface
    cpu = (iface.arch or "x86_64").lower()
    where = f"from the hardware record: arch {iface.arch or '(empty)'}, uefi {str(iface.uefi).lower()}"
    if cpu in ("aarch64", "arm64"):
        return (19 if http else 11), where
    if http:
        return 16, where
    return (7 if iface.uefi else 0), where


# --- decoding what goes on the wire ------------------------------------------

OPTION_NAMES: Mapping[int, str] = {
    opt.SUBNET_MASK: "subnet mask",
    opt.ROUTER: "router",
    opt.DNS: "DNS servers",
    opt.LOG_SERVER: "log servers",
    opt.HOSTNAME: "hostname",
    opt.DOMAIN_NAME: "domain name",
    opt.BROADCAST: "broadcast address",
    opt.NTP: "NTP servers",
    opt.VENDOR: "vendor (PXE)",
    opt.LEASE_TIME: "lease time",
    opt.MESSAGE_TYPE: "message type",
    opt.SERVER_ID: "server identifier",
    opt.MESSAGE: "message",
    opt.VENDOR_CLASS: "vendor class",
    opt.CLIENT_ID: "client identifier",
    67: "boot file name",
    opt.RELAY_AGENT: "relay agent info",
    opt.CLIENT_GUID: "client GUID",
    opt.DOMAIN_SEARCH: "domain search",
}
_IP_LISTS = frozenset((opt.SUBNET_MASK, opt.ROUTER, opt.DNS, opt.LOG_SERVER, opt.BROADCAST, opt.NTP, opt.SERVER_ID))
_TEXTS = frozenset((opt.HOSTNAME, opt.DOMAIN_NAME, opt.MESSAGE, opt.VENDOR_CLASS, 67))
_PXE_SUBS = {
    opt.PXE_DISCOVERY_CONTROL: "discovery control",
    opt.PXE_BOOT_SERVERS_RPI: "boot servers",
    opt.PXE_BOOT_MENU_RPI: "boot menu",
    opt.PXE_VLAN_ID: "VLAN id",
}


def _ips(value: bytes) -> str:
    if not value or len(value) % 4:
        return f"<malformed: {value.hex() or 'empty'}>"
    return ", ".join(inet_ntoa(value[i : i + 4]) for i in range(0, len(value), 4))


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{seconds} s ({n} {unit}{'s' if n != 1 else ''})"
    return f"{seconds} s"


def dns_names(data: bytes) -> list[str]:
    """RFC 1035 names as in option 119 (RFC 3397), compression pointers included."""
    names: list[str] = []
    i = 0
    while i < len(data):
        labels: list[str] = []
        j, resume, hops = i, None, 0
        while True:
            if j >= len(data):
                raise ValueError("name runs past the end")
            n = data[j]
            if n == 0:
                j += 1
                break
            if n & 0xC0 == 0xC0:
                if j + 1 >= len(data) or hops > 32:
                    raise ValueError("bad compression pointer")
                resume = j + 2 if resume is None else resume
                j, hops = ((n & 0x3F) << 8) | data[j + 1], hops + 1
                continue
            labels.append(data[j + 1 : j + 1 + n].decode("ascii", "replace"))
            j += 1 + n
        names.append(".".join(labels))
        i = resume if resume is not None else j
    return names


def decode_option(code: int, value: bytes) -> str:
    """One option value as an operator reads it; unknown codes as hex."""
    try:
        if code in _IP_LISTS:
            return _ips(value)
        if code in _TEXTS:
            return repr(value.decode("ascii", "replace"))
        if code == opt.LEASE_TIME and len(value) == 4:
            return _duration(int.from_bytes(value, "big"))
        if code == opt.MESSAGE_TYPE and len(value) == 1:
            return MESSAGE_TYPES.get(value[0], str(value[0]))
        if code == opt.VENDOR:
            parts = []
            for sub, raw in opt.decode_tlv(value).items():
                name = _PXE_SUBS.get(sub, "")
                shown = repr(raw.decode("ascii", "replace")) if sub == opt.PXE_VLAN_ID else raw.hex()
                if sub == opt.PXE_DISCOVERY_CONTROL and raw == b"\x08":
                    shown += " (boot from the file given, no PXE discovery)"
                parts.append(f"{sub}{f' {name}' if name else ''}={shown}")
            return "; ".join(parts) or "(empty)"
        if code == opt.CLIENT_GUID:
            if not value:
                return "(empty)"
            if len(value) == 17 and value[0] == 0:
                h = value[1:].hex()
                return f"type 0, {h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if code == opt.DOMAIN_SEARCH:
            return ", ".join(dns_names(value))
    except ValueError:
        pass
    return value.hex(":") if value else "(empty)"


def describe_options(options: Mapping[int, bytes]) -> list[dict[str, Any]]:
    """Every option, in wire order, with its name and decoded value."""
    return [
        {"code": code, "name": OPTION_NAMES.get(code, ""), "value": decode_option(code, value)}
        for code, value in options.items()
    ]


def _boot_file(reply: Packet) -> str:
    """What the client boots: option 67 when the name did not fit the header field."""
    long = reply.options.get(67)
    raw = long if long is not None else reply.file
    return raw.decode("ascii", "replace")


def _describe_request(request: Packet) -> str:
    """One line naming what identifies the synthetic client to the policy."""
    o = request.options
    parts = [f"DISCOVER from {request.mac}"]
    if opt.VENDOR_CLASS in o:
        parts.append(f"60 {o[opt.VENDOR_CLASS].decode()!r}")
    if opt.CLIENT_ARCH in o:
        parts.append(f"93 arch {int.from_bytes(o[opt.CLIENT_ARCH], 'big')}")
    if opt.USER_CLASS in o:
        parts.append(f"77 user class {o[opt.USER_CLASS].decode()!r}")
    if opt.IPXE_ENCAP in o:
        version = opt.decode_tlv(o[opt.IPXE_ENCAP]).get(opt.IPXE_VERSION, b"")
        parts.append(f"175 iPXE {'.'.join(map(str, version))}")
    if opt.CLIENT_GUID in o:
        parts.append("97 GUID")
    if opt.VENDOR_CLASS not in o:
        parts.append("no 60/93: not a netboot client")
    return ", ".join(parts)


# --- the servers, offline ----------------------------------------------------


def _now(d: Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (the file and noop backends answer at once).

    A failure is raised here, and consumed, so Twisted logs no "Unhandled
    error in Deferred" for it at exit.
    """
    box: list[Any] = []
    d.addBoth(box.append)
    if not box:
        raise RuntimeError("no synchronous answer; explain needs the file or noop backend")
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _lookup(fn: Callable[[Any], Deferred[Any]], key: Any) -> tuple[Match | None, str]:
    """(match, error): a LookupFailed (duplicates, bad key) becomes text, as the servers log it."""
    try:
        return _now(fn(key)), ""
    except LookupFailed as e:
        return None, str(e)


def tftp_gate(runtime: Any, client_ip: IPv4Address) -> tuple[bool, str, Match | None]:
    """(allowed, why, match): the TFTP server's check before it serves any file.

    Mirrors :meth:`smee.tftp.protocol.TFTPServerProtocol._gate`: reservation
    mode looks the client's source IP up (the address smee leased it) and
    wants a record with allowPxe; proxy modes serve everyone, since the
    address came from another DHCP server.
    """
    config: DHCPConfig = runtime.dhcp
    if config.mode != "reservation":
        return True, f"allowed: {config.mode} mode serves without a hardware lookup", None
    match, error = _lookup(runtime.backend.by_ip, client_ip)
    if error:
        return False, f"ERROR 0 (server error): backend lookup by IP {client_ip} failed: {error}", None
    if match is None:
        return False, f"access violation: no hardware record has IP {client_ip}", None
    mac = match.interface.mac
    if not match.interface.allow_pxe:
        return False, f"access violation: netboot not allowed for {mac} (IP {client_ip})", match
    return True, f"allowed: IP {client_ip} is {mac}, allowPxe true", match


class HTTPProbe:
    """smee's own HTTP app (:class:`smee.http.app.IPXEApp`), served in memory.

    Built by the same factory ``twistd smee`` uses, so the answer (200, 404,
    500, the static auto-proxy script…) is the server's, not a copy of its
    rules; the reason comes from the access-log event the app emits. The
    in-memory client is 127.0.0.1, so that address is trusted as a proxy and
    the machine's IP is passed in X-Forwarded-For. Nothing is bound.
    """

    def __init__(self, settings: Any, runtime: Any, clock: Any) -> None:
        from smee.http.service import makeService

        self.running = bool(settings.http_ipxe_binary_enabled or settings.http_ipxe_script_enabled)
        self.error = ""
        self._stub: Any = None
        if not self.running:
            return
        try:
            app = makeService(settings, runtime, clock).app
        except SystemExit as e:  # a setting the HTTP server refuses at start-up
            self.error = str(e.code)
            return
        from treq.testing import StubTreq

        app.config = replace(app.config, trusted_proxies=tuple(app.config.trusted_proxies) + (_LOOPBACK,))
        self._stub = StubTreq(app.resource())

    def get(self, url: str, client_ip: IPv4Address | None) -> tuple[int, bytes, str]:
        """(status, body, the reason the access log gives) for ``GET url`` from ``client_ip``."""
        if self._stub is None:
            why = (f"smee would not start: {self.error}" if self.error
                   else "no HTTP server runs (--http-ipxe-binary-enabled and --http-ipxe-script-enabled are false)")
            return 0, b"", why
        events: list[Any] = []

        def observe(event: Any) -> None:
            if event.get("log_namespace") == "smee.http" and "code" in event:
                events.append(event)

        headers = {} if client_ip is None else {"X-Forwarded-For": str(client_ip)}
        globalLogPublisher.addObserver(observe)
        try:
            d = self._stub.get(url, headers=headers)
            self._stub.flush()
            response = _now(d)
            body = _now(self._stub.content(response))
        finally:
            globalLogPublisher.removeObserver(observe)
        reason = next((str(e.get("reason") or "") for e in events), "")
        return int(response.code), body, reason


def _stage(number: int, key: str, title: str, status: str, summary: str, **facts: Any) -> dict[str, Any]:
    return {"stage": number, "key": key, "title": title, "status": status, "summary": summary,
            "facts": {k: v for k, v in facts.items() if v is not None}}


def _skipped(number: int, key: str, title: str, why: str) -> dict[str, Any]:
    return _stage(number, key, title, "not-reached", why)


# --- the stages --------------------------------------------------------------


def _dhcp_stage(
    number: int, key: str, title: str, request: Packet, match: Match | None, lookup_error: str,
    config: DHCPConfig, served: bool = False,
) -> tuple[dict[str, Any], Packet | None]:
    """Classify and decide one request as the DHCP protocol does: the stage and the reply."""
    client = classify(request)
    facts: dict[str, Any] = {"request": _describe_request(request)}
    looked_up = needs_lookup(client, config)
    if looked_up and lookup_error:
        # The protocol logs the failure and sends nothing.
        return _stage(number, key, title, "no-reply", f"no reply: backend lookup failed: {lookup_error}", **facts), None
    decision = decide(request, client, match if looked_up else None, config, served)
    reply = decision.reply
    facts.update(outcome=decision.outcome, reason=decision.reason)
    if reply is None:
        return _stage(number, key, title, "no-reply", f"no reply: {decision.reason}", **facts), None
    try:
        size = len(build(reply, max_size=request.max_size()))
    except PacketTooLarge as e:
        why = f"reply does not fit the client's {request.max_size()}-byte limit: {e}"
        return _stage(number, key, title, "no-reply", f"no reply: {why}", **facts), None
    facts.update(
        reply=MESSAGE_TYPES.get(reply.msg_type or 0, "?"),
        yiaddr=inet_ntoa(reply.yiaddr),
        siaddr=inet_ntoa(reply.siaddr),
        sname=reply.sname.decode("ascii", "replace") or None,
        file=_boot_file(reply) or "(none)",
        size=f"{size} bytes",
    )
    stage = _stage(number, key, title, decision.outcome, decision.reason, **facts)
    stage["options"] = describe_options(reply.options)
    return stage, reply


def _content(binaries: tftp_files.Binaries, name: str) -> tuple[bool, str]:
    """(present, description) of one of the binaries smee serves."""
    data = binaries.get(name)
    where = binaries.directory or "the iPXE directory"
    if data is None:
        return False, f"MISSING: no {name} in {where} (see --ipxe-dir, 'make bindata')"
    source = binaries.sources.get(name, name)
    return True, f"{where}/{source}, {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}…"


def _chain_url(script: str) -> str | None:
    """The URL autoexec.ipxe chains to (its one ``chain --autofree URL ||`` line)."""
    for line in script.splitlines():
        if line.startswith("chain --autofree "):
            return line.split()[2]
    return None


class _Fetched(NamedTuple):
    """What stage 2 hands on: the binary now running and where its script comes from."""

    binary: str | None = None
    #: TFTP recorded the MAC as chainloaded (only for <mac>/<binary> names, smee.chainload)
    chainloaded: bool = False
    #: the URL autoexec.ipxe chains to, or the script URL stage 1 already gave an iPXE ROM
    script_url: str | None = None
    script_from: str = ""


def _tftp_fetch(settings: Any, runtime: Any, path: str, server: str, reply: Packet) -> tuple[dict[str, Any], _Fetched]:
    """Stage 2 over TFTP: the gate, the file, then autoexec.ipxe for the EFI builds."""
    config: DHCPConfig = runtime.dhcp
    title = "TFTP"
    facts: dict[str, Any] = {"request": f"RRQ {path!r} to {server}"}
    if not settings.tftp_enabled:
        facts["note"] = "TFTP is disabled here (--tftp-enabled=false): another server must answer"
    resolved = tftp_files.resolve(path)
    if resolved is None:
        return _stage(2, "fetch", title, "not-found", f"ERROR 1: {path!r} is not a file smee serves", **facts), _Fetched()
    name, path_mac = resolved
    present, facts["content"] = _content(runtime.binaries, name)
    allowed, facts["gate"], gate_match = tftp_gate(runtime, IPv4Address(reply.yiaddr))
    if not allowed:
        return _stage(2, "fetch", title, "refused", f"ERROR: {facts['gate']}", **facts), _Fetched()
    if not present:
        return _stage(2, "fetch", title, "not-found", f"ERROR 1: file [{name}] not found", **facts), _Fetched()
    fetched = _Fetched(binary=name, chainloaded=path_mac is not None)
    stage = _stage(2, "fetch", title, "served", f"serves {name}", **facts)
    if name not in _ASKS_AUTOEXEC:
        stage["facts"]["autoexec.ipxe"] = f"not asked for: {name} goes straight to its own DHCP"
        return stage, fetched
    try:
        script = tftp_files.autoexec_for(config, gate_match).decode("ascii")
    except ValueError as e:
        stage["facts"]["autoexec.ipxe"] = f"ERROR 1 (not found; iPXE goes on with its own DHCP): {e}"
        return stage, fetched
    stage["facts"]["autoexec.ipxe"] = "served: it runs DHCP as user class Tinkerbell, then chains the script"
    stage["scripts"] = {"autoexec.ipxe": script}
    return stage, fetched._replace(script_url=_chain_url(script), script_from="autoexec.ipxe")


def _http_fetch(url: str, reply: Packet, http: HTTPProbe, binaries: tftp_files.Binaries) -> tuple[dict[str, Any], _Fetched]:
    """Stage 2 for UEFI HTTP Boot: the binary from smee's HTTP server, then autoexec.ipxe next to it."""
    title = "HTTP (iPXE binary)"
    client_ip = IPv4Address(reply.yiaddr) if reply.yiaddr != ZERO4 else None
    facts: dict[str, Any] = {"request": f"GET {url}"}
    resolved = tftp_files.resolve(urlsplit(url).path.rsplit("/", 2)[-1])
    name = resolved[0] if resolved else ""
    if name:
        facts["content"] = _content(binaries, name)[1]
    code, _, reason = http.get(url, client_ip)
    if code != 200:
        return _stage(2, "fetch", title, str(code or "refused"), f"{code or 'no answer'}: {reason}", **facts), _Fetched()
    fetched = _Fetched(binary=name)
    stage = _stage(2, "fetch", title, "200", f"200: serves {name}", **facts)
    if name not in _ASKS_AUTOEXEC:
        return stage, fetched
    autoexec = url.rsplit("/", 1)[0] + "/" + tftp_files.AUTOEXEC
    code, body, reason = http.get(autoexec, client_ip)
    if code != 200:
        stage["facts"]["autoexec.ipxe"] = f"GET {autoexec}: {code}: {reason} (iPXE goes on with its own DHCP)"
        return stage, fetched
    script = body.decode("ascii", "replace")
    stage["facts"]["autoexec.ipxe"] = f"GET {autoexec}: 200: DHCP as user class Tinkerbell, then chain the script"
    stage["scripts"] = {"autoexec.ipxe": script}
    return stage, fetched._replace(script_url=_chain_url(script), script_from="autoexec.ipxe")


def _fetch_stage(
    settings: Any, runtime: Any, boot: str, reply: Packet, http: HTTPProbe,
) -> tuple[dict[str, Any], _Fetched]:
    """Stage 2: what the firmware does with the boot file stage 1 gave it."""
    config: DHCPConfig = runtime.dhcp
    parts = urlsplit(boot)
    if parts.scheme in ("http", "https"):
        if boot.startswith(config.http_binary_url):
            return _http_fetch(boot, reply, http, runtime.binaries)
        stage = _stage(2, "fetch", "TFTP", "skipped", "the boot file is a script URL: the client already runs iPXE")
        return stage, _Fetched(script_url=boot, script_from="stage 1")
    if parts.scheme == "tftp":
        return _tftp_fetch(settings, runtime, parts.path, parts.netloc, reply)
    return _tftp_fetch(settings, runtime, boot, f"{inet_ntoa(reply.siaddr)}:69", reply)


def _is_smee_script(url: str, config: DHCPConfig) -> bool:
    """Whether ``url`` is one smee hands out as its own script URL (with or without the MAC)."""
    if url == config.script_url:
        return True
    parts, ours = urlsplit(url), urlsplit(config.script_url)
    return (parts.scheme, parts.netloc) == (ours.scheme, ours.netloc) and url.endswith(config.script_suffix)


def _script_stage(
    runtime: Any, url: str, client_ip: IPv4Address | None, ip_note: str, machine: Match | None, http: HTTPProbe,
) -> dict[str, Any]:
    """Stage 4: GET the script URL from smee's HTTP app; name the installer it chose."""
    title = "HTTP (iPXE script)"
    facts: dict[str, Any] = {"request": f"GET {url}"}
    if not _is_smee_script(url, runtime.dhcp):
        host = urlsplit(url).netloc or url
        if machine is not None and url == machine.interface.ipxe_url:
            why = f"the hardware record's own script URL (ipxe_url): iPXE fetches it from {host}, not from smee"
        else:
            why = f"not smee's script URL ({runtime.dhcp.script_url}): iPXE fetches it from {host}"
        return _stage(4, "script", title, "external", why, **facts)
    path = urlsplit(url).path.split("/")
    try:
        by_mac = normalize_mac(path[-2]) if len(path) >= 3 else None
    except HardwareError:
        by_mac = None
    if by_mac is not None:
        facts["identified by"] = f"MAC {by_mac} in the URL path"
        found, _ = _lookup(runtime.backend.by_mac, by_mac)
    elif client_ip is not None:
        facts["identified by"] = f"client IP {client_ip}" + (f" ({ip_note})" if ip_note else "")
        found, _ = _lookup(runtime.backend.by_ip, client_ip)
    else:
        facts["identified by"] = "the client's IP, which another DHCP server leases: unknown offline"
        return _stage(4, "script", title, "unknown", "cannot tell offline which machine asks", **facts)
    code, body, reason = http.get(url, client_ip)
    if code in (200, 500) and found is not None and runtime.installers is not None:
        # The app says what it served; the registry says which installer wrote it and why.
        facts["installer"], _ = runtime.installers.resolve(found.hardware, found.interface)
    text = body.decode("utf-8", "replace")
    if code == 200:
        summary = f"200: {reason}" + (f", installer {facts['installer']}" if "installer" in facts else "")
    else:
        summary = f"{code or 'no answer'}: {reason}"
    stage = _stage(4, "script", title, str(code or "no-answer"), summary, **facts)
    if text.startswith("#!ipxe"):
        stage["scripts"] = {"auto.ipxe" if code == 200 else "body": text}
    return stage


def _hardware_facts(match: Match) -> dict[str, Any]:
    hw, iface = match.hardware, match.interface
    os_ = hw.instance.operating_system if hw.instance is not None else None
    facts = {
        "id": hw.id,
        "source": hw.source or None,
        "ip": str(iface.ip) if iface.ip else "(none)",
        "hostname": iface.hostname or None,
        "arch": iface.arch or None,
        "uefi": iface.uefi,
        "allow_pxe": iface.allow_pxe,
        "disable_dhcp": iface.disable_dhcp or None,
        "vlan_id": iface.vlan_id or None,
        "ipxe_url": iface.ipxe_url or None,
        "ipxe_script": f"{len(iface.ipxe_script)} characters" if iface.ipxe_script else None,
        "os": " ".join(filter(None, (os_.installer, os_.slug, os_.distro))) or None if os_ else None,
    }
    return {k: v for k, v in facts.items() if v is not None}


def explain(settings: Any, runtime: Any, mac: str, client: str = "pxe", arch: int | None = None) -> dict[str, Any]:
    """What ``mac`` gets at each stage, as a JSON-able report (see :func:`render_text`).

    ``runtime`` is :func:`smee.tap.makeRuntime`'s (backend, binaries, dhcp,
    installers). The report's ``exit_status`` is 1 when the MAC is unknown
    and the mode needs a record; auto-proxy serves unknown machines, so
    there it is only a note.
    """
    from twisted.internet.task import Clock

    mac = normalize_mac(mac)
    config: DHCPConfig = runtime.dhcp
    backend = runtime.backend
    match, lookup_error = _lookup(backend.by_mac, mac)
    state = dict(backend.state())
    report: dict[str, Any] = {
        "mac": mac,
        "mode": config.mode,
        "backend": {k: state[k] for k in ("backend", "path", "records") if k in state},
        "hardware": _hardware_facts(match) if match is not None else None,
        "warnings": list(runtime.binaries.warnings) + list(state.get("errors") or ()),
        "exit_status": EXIT_OK,
    }
    if lookup_error:
        report["error"] = f"backend lookup of {mac} failed: {lookup_error}"
        report["exit_status"] = EXIT_NOT_FOUND
    elif match is None:
        where = f"{state.get('backend', backend.kind)} backend" + (f" {state['path']}" if state.get("path") else "")
        report["error"] = f"no hardware record has MAC {mac} ({where}, {state.get('records', 0)} records)"
        if config.mode == "auto-proxy":
            report["error"] += "; auto-proxy mode answers it anyway"
        else:
            report["exit_status"] = EXIT_NOT_FOUND
    if not settings.dhcp_enabled:
        report["warnings"].append("DHCP is disabled here (--dhcp-enabled=false): shown is what smee would answer")
    http = HTTPProbe(settings, runtime, Clock())
    if http.error:
        report["warnings"].append(f"the HTTP server would not start: {http.error}")
    chosen_arch, arch_why = (arch, "from --arch") if arch is not None else default_arch(match, client)
    report["client"] = {"kind": client, "arch": chosen_arch, "arch_from": arch_why}
    stages: list[dict[str, Any]] = []
    report["stages"] = stages

    def rest(start: int, why: str) -> dict[str, Any]:
        titles = {2: ("fetch", "TFTP"), 3: ("dhcp-ipxe", "DHCP (iPXE)"), 4: ("script", "HTTP (iPXE script)")}
        stages.extend(_skipped(n, *titles[n], why) for n in range(start, 5))
        return report

    # 1. the firmware's DHCP
    request = discover(mac, chosen_arch, client)
    first, reply = _dhcp_stage(1, "dhcp-firmware", f"DHCP ({_CLIENT_TITLES[client]})", request, match, lookup_error, config)
    stages.append(first)
    if reply is None:
        return rest(2, "no reply in stage 1")
    if client == "linux":
        return rest(2, "an OS DHCP client does not netboot")
    boot = _boot_file(reply)
    if not boot:
        # Nothing to fetch; still say what TFTP would answer if the firmware tried.
        fetch = _skipped(2, "fetch", "TFTP", f"no boot file in stage 1 ({first['summary']})")
        if reply.yiaddr != ZERO4:
            fetch["facts"]["gate"] = tftp_gate(runtime, IPv4Address(reply.yiaddr))[1]
        stages.append(fetch)
        return rest(3, "no boot file in stage 1")

    # 2. the boot file
    fetch, fetched = _fetch_stage(settings, runtime, boot, reply, http)
    stages.append(fetch)
    client_ip, ip_note = (IPv4Address(reply.yiaddr), "") if reply.yiaddr != ZERO4 else (None, "")
    if client_ip is None and match is not None and match.interface.ip is not None:
        client_ip, ip_note = match.interface.ip, "assumed: the record's IP; another DHCP server leases it"
    script_url = fetched.script_url

    # 3. iPXE's own DHCP
    if fetched.script_from == "stage 1":
        stages.append(_stage(3, "dhcp-ipxe", "DHCP (iPXE)", "skipped", "stage 1 was already iPXE's DHCP"))
    elif fetched.binary is None:
        return rest(3, "no iPXE binary was served in stage 2")
    else:
        user_class = "Tinkerbell" if fetched.script_from == "autoexec.ipxe" else "iPXE"
        version = runtime.binaries.version or _DEFAULT_IPXE_VERSION
        ipxe_request = discover(mac, _BINARY_ARCH.get(fetched.binary, chosen_arch), "ipxe", user_class, version)
        served = fetched.chainloaded and user_class == "iPXE"
        third, ipxe_reply = _dhcp_stage(
            3, "dhcp-ipxe", f"DHCP (iPXE, user class {user_class})", ipxe_request, match, lookup_error, config, served
        )
        stages.append(third)
        if ipxe_reply is None:
            return rest(4, "iPXE got no DHCP reply: it gives up")
        if ipxe_reply.yiaddr != ZERO4:
            client_ip, ip_note = IPv4Address(ipxe_reply.yiaddr), ""
        dhcp_file = _boot_file(ipxe_reply)
        if script_url is None:
            script_url = dhcp_file
            third["facts"]["script URL"] = f"{dhcp_file} (the boot file iPXE runs)"
        else:
            # Proxy modes: autoexec.ipxe leaves the MAC to iPXE (${net${idx}/mac}).
            script_url = script_url.replace(tftp_files.IPXE_MAC, mac)
            unused = "" if dhcp_file == script_url else f"; the boot file {dhcp_file!r} is not used"
            third["facts"]["script URL"] = f"{script_url} (chained by autoexec.ipxe{unused})"
        if urlsplit(script_url).scheme not in ("http", "https"):
            loop = " (an iPXE binary again: a chainload loop)" if script_url.startswith(config.tftp_url_prefix) else ""
            return rest(4, f"iPXE loads {script_url!r}, not a script{loop}")

    # 4. the script
    if script_url:
        stages.append(_script_stage(runtime, script_url, client_ip, ip_note, match, http))
    else:
        rest(4, "no script URL")
    return report


# --- output ------------------------------------------------------------------


def _text_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_text_value, value)) or "(none)"
    return str(value)


def render_text(report: Mapping[str, Any]) -> str:
    """The report as plain text: a header, then one headed block per stage."""
    out: list[str] = []
    backend = report["backend"]
    where = backend.get("backend", "?") + (f" {backend['path']}" if backend.get("path") else "")
    out.append(f"smee explain {report['mac']}: {report['mode']} mode, {where} ({backend.get('records', 0)} records)")
    hw = report.get("hardware")
    if hw:
        out.append("hardware: " + ", ".join(f"{k} {_text_value(v)}" for k, v in hw.items()))
    if report.get("error"):
        out.append(f"error: {report['error']}")
    client = report.get("client")
    if client:
        out.append(f"client: {_CLIENT_TITLES[client['kind']]}, arch {client['arch']} ({client['arch_from']})")
    for warning in report.get("warnings", ()):
        out.append(f"warning: {warning}")
    for stage in report.get("stages", ()):
        out.append("")
        out.append(f"== {stage['stage']}. {stage['title']} ==")
        out.append(f"  result: {stage['summary']}")
        facts = stage["facts"]
        width = max((len(k) for k in facts), default=0)
        for key, value in facts.items():
            if key == "reason" and value in stage["summary"]:
                continue
            out.append(f"  {key + ':':<{width + 1}} {_text_value(value)}")
        if stage.get("options"):
            out.append("  options:")
            for o in stage["options"]:
                out.append(f"    {o['code']:>3} {o['name']:<18} {o['value']}")
        for name, text in stage.get("scripts", {}).items():
            out.append(f"  --- {name} ---")
            out.extend(f"  | {line}" for line in text.rstrip("\n").splitlines())
    return "\n".join(out) + "\n"


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


# --- command line ------------------------------------------------------------


class ExplainOptions(tap.Options):
    """``smee explain``: smee's own options (same env and --config precedence) plus explain's."""

    synopsis = "explain --mac MAC [--arch N] [--client pxe|ipxe|http|linux] [--json] [smee options]"
    longdesc = (
        "Print, offline, what the machine with MAC would get at each boot stage: the DHCP reply to "
        "its firmware, the boot file it fetches, iPXE's DHCP reply and the iPXE script. Takes every "
        "twistd smee option, SMEE_* variables and --config, so it explains the configuration you run. "
        "Nothing is bound or sent. Exit status: 0 explained, 1 unknown MAC or backend error, 2 usage."
    )
    optFlags = [["json", None, "Print the report as JSON."]]
    optParameters = [
        ["mac", None, None, "The machine's MAC address (any notation)."],
        ["arch", None, None, (
            "Option 93 the firmware sends: 0 BIOS, 7 x86-64 UEFI, 11 arm64 UEFI, 16 x86-64 HTTP… "
            "[default: from the hardware record]"
        )],
        ["client", None, "pxe", f"The firmware's DHCP client: {', '.join(CLIENTS)}."],
    ]

    def postOptions(self) -> None:
        if not self["mac"]:
            raise usage.UsageError("--mac is required")
        try:
            self["mac"] = normalize_mac(self["mac"])
        except HardwareError as e:
            raise usage.UsageError(f"--mac: {e}") from None
        if self["arch"] is not None:
            text = str(self["arch"]).strip()
            if not text.isdigit() or int(text) > 0xFFFF:
                raise usage.UsageError(f"--arch: {self['arch']!r} is not an option 93 value (0-65535)")
            self["arch"] = int(text)
        client = str(self["client"]).strip().lower()
        if client not in CLIENTS:
            raise usage.UsageError(f"--client: {self['client']!r} is not one of: {', '.join(CLIENTS)}")
        self["client"] = client
        super().postOptions()


def main(
    argv: list[str],
    environ: Mapping[str, str] | None = None,
    detect_ip: Callable[[str], Any] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``smee explain``; returns the exit status (0 explained, 1 unknown MAC or backend error, 2 usage)."""
    from twisted.internet.task import Clock

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    options = ExplainOptions(environ=environ, detect_ip=detect_ip)
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        err.write(f"smee explain: {e}\n(see smee explain --help)\n")
        return EXIT_USAGE
    settings = options.settings
    # A Clock, not the reactor: nothing here may schedule, bind or send.
    clock = Clock()
    try:
        backend = tap._makeBackend(settings, clock)
    except SystemExit as e:  # the tap's one-line start-up errors (bad hardware file)
        err.write(f"{e.code}\n")
        return EXIT_NOT_FOUND
    runtime = tap.makeRuntime(settings, backend, clock)
    report = explain(settings, runtime, options["mac"], options["client"], options["arch"])
    out.write(render_json(report) if options["json"] else render_text(report))
    return int(report["exit_status"])
