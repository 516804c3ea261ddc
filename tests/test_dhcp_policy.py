"""DHCP policy (smee.dhcp.policy): table-driven, pure data in and out.

Vectors are smee-study.md §1.2, §2.4–2.7 and §8.1–8.5, adapted where smee
deliberately differs from Smee (no traceparent / 43.69, an empty boot file
instead of ``/netboot-not-allowed``, 43.116 VLAN id, RFC 2131 REQUEST/NAK/INFORM
handling). Addresses are moved to documentation ranges (192.0.2.0/24,
198.51.100.0/24) where Smee's tests use private ones.

ClientInfo comes from the real :func:`smee.dhcp.classify.classify` when it is
implemented, otherwise from :func:`oracle`, a small re-statement of Smee's
rules (§1.2); ``test_oracle_agrees_with_classify`` keeps the two honest.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from smee.dhcp import classify as classify_mod
from smee.dhcp.classify import ARCH_RPI, ARCH_UNKNOWN, ClientInfo
from smee.dhcp.options import decode_tlv
from smee.dhcp.packet import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST_FLAG,
    DECLINE,
    DISCOVER,
    INFORM,
    NAK,
    OFFER,
    RELEASE,
    REQUEST,
    Packet,
    build,
    parse,
)
from smee.dhcp.policy import (
    AUTO_PROXY,
    MAX_HOPS,
    PROXY,
    RESERVATION,
    SUSPECT_GIADDR_OCTETS,
    Decision,
    DHCPConfig,
    decide,
    destination,
    needs_lookup,
    relay_problem,
    relay_refusal,
)
from smee.hardware import Hardware, Interface, Match
from smee.tap import Options

IP = IPv4Address
Z = b"\0\0\0\0"


def b4(addr: str) -> bytes:
    return IP(addr).packed


# --------------------------------------------------------------------------- requests

MAC = "52:54:00:00:00:01"
GUID = bytes(17)  # type 0 + 16-byte UUID
PXE_CLASS = b"PXEClient:Arch:00007:UNDI:003016"
HTTP_CLASS = b"HTTPClient:Arch:00016:UNDI:003001"


def chaddr(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")


def request(
    mt: int | None = DISCOVER,
    mac: str = MAC,
    opts: dict[int, bytes] | None = None,
    *,
    op: int = BOOTREQUEST,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    flags: int = 0,
    xid: int = 0xDEADBEEF,
) -> Packet:
    options: dict[int, bytes] = {} if mt is None else {53: bytes((mt,))}
    options.update(opts or {})
    return Packet(
        op, 1, 6, hops=1, xid=xid, secs=7, flags=flags, ciaddr=b4(ciaddr), giaddr=b4(giaddr),
        chaddr=chaddr(mac), options=options,
    )


def pxe(
    arch: int | None = 7,
    cls: bytes | None = PXE_CLASS,
    user: bytes | None = None,
    guid: bytes | None = GUID,
    **extra: bytes,
) -> dict[int, bytes]:
    """Options of a netboot client (§1.2 IsNetbootClient): 60, 93, 94, 97 and maybe 77."""
    o: dict[int, bytes] = {}
    if cls is not None:
        o[60] = cls
    if arch is not None:
        o[93] = arch.to_bytes(2, "big")
    o[94] = b"\x01\x03\x10"
    if guid is not None:
        o[97] = guid
    if user is not None:
        o[77] = user
    o.update({int(k[1:]): v for k, v in extra.items()})  # o61=b"...", o82=b"..."
    return o


# --------------------------------------------------------------------------- client info

#: smee-study.md §1.2, written out again rather than imported from classify.
BINARY_BY_ARCH = {
    **dict.fromkeys((0, 1, 2, 3, 4, 5), "undionly.kpxe"),
    **dict.fromkeys((6, 7, 8, 9, 15, 16), "ipxe.efi"),
    **dict.fromkeys((10, 11, 18, 19, 41), "snp.efi"),
}
RPI_OUIS = ("b8:27:eb", "dc:a6:32", "e4:5f:01", "28:cd:c1", "d8:3a:dd")


def oracle(p: Packet) -> ClientInfo:
    """Smee-HEAD's NewInfo (§1.2), for the packets these tests build."""
    o = p.options
    mac = p.mac
    rpi = mac[:8] in RPI_OUIS
    arch = ARCH_UNKNOWN
    raw93 = o.get(93, b"")
    for i in range(0, len(raw93) - 1, 2):
        value = int.from_bytes(raw93[i : i + 2], "big")
        if value <= 36:
            arch = value
            break
    if rpi:
        arch = ARCH_RPI
    elif arch == ARCH_RPI:
        arch = ARCH_UNKNOWN
    c60 = o.get(60)
    client_type = (
        "HTTPClient" if c60 and c60.startswith(b"HTTPClient") else "PXEClient" if c60 and c60.startswith(b"PXEClient") else ""
    )
    guid = o.get(97)
    is_netboot = (
        p.msg_type in (DISCOVER, REQUEST)
        and c60 is not None
        and (c60.startswith(b"PXEClient") or c60.startswith(b"HTTPClient"))
        and 93 in o
        and 94 in o
        and (not guid or (len(guid) == 17 and guid[0] == 0))
    )
    user = o.get(77, b"").decode("ascii", "replace")
    return ClientInfo(
        mac=mac, msg_type=p.msg_type, arch=arch, client_type=client_type, user_class=user,
        is_netboot=bool(is_netboot), is_ipxe=user in ("iPXE", "Tinkerbell") or 175 in o,
        ipxe_version=None, guid=guid, binary=BINARY_BY_ARCH.get(arch), rpi=rpi,
    )


def _real_classify_works() -> bool:
    try:
        classify_mod.classify(request(DISCOVER, opts=pxe()))
    except NotImplementedError:
        return False
    return True


REAL_CLASSIFY = _real_classify_works()


def info(p: Packet, **override: Any) -> ClientInfo:
    client = classify_mod.classify(p) if REAL_CLASSIFY else oracle(p)
    return client._replace(**override) if override else client


# --------------------------------------------------------------------------- hardware and config

SERVER, TFTP, HTTP, SYSLOG = "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"
RESERVED = "192.0.2.10"


def record(mac: str = MAC, source: str = "hw.yaml:1", **kw: Any) -> Match:
    fields: dict[str, Any] = dict(
        ip=IP(RESERVED), netmask=IP("255.255.255.0"), gateway=IP("192.0.2.254"),
        dns_servers=(IP("192.0.2.53"),), hostname="node-01", lease_time=86400, allow_pxe=True,
    )
    fields.update(kw)
    iface = Interface(mac=mac, **fields)
    return Match(Hardware(id="hw-1", interfaces=(iface,), source=source), iface)


def cfg(**kw: Any) -> DHCPConfig:
    fields: dict[str, Any] = dict(
        mode=RESERVATION, server_ip=IP(SERVER), syslog_ip=IP(SYSLOG), tftp_ip=IP(TFTP), tftp_port=69,
        http_binary_url=f"http://{HTTP}:8080/ipxe/", http_binary_ip=IP(HTTP),
        script_url=f"http://{HTTP}:8080/auto.ipxe", prepend_mac=True, ipxe_rom_chainload=False,
    )
    fields.update(kw)
    return DHCPConfig(**fields)


def run(p: Packet, match: Match | None = None, config: DHCPConfig | None = None, **client: Any) -> Decision:
    return decide(p, info(p, **client), match, config or cfg())


def opt43(reply: Packet) -> dict[int, bytes] | None:
    raw = reply.options.get(43)
    return None if raw is None else decode_tlv(raw)


def wire_order(reply: Packet) -> list[int]:
    """Option codes in the order build() puts them on the wire (and parse() reads them back)."""
    data = build(reply)
    codes, i = [], 240
    while data[i] != 255:
        codes.append(data[i])
        i += 2 + data[i + 1]
    assert list(parse(data).options) == codes
    return codes


SCRIPT_FOR_MAC = f"http://{HTTP}:8080/{MAC}/auto.ipxe"


# =========================================================================== §1.2 arch table


ARCH_ROWS = [(a, BINARY_BY_ARCH.get(a)) for a in range(37)] + [(255, None), (0x1234, None)]


@pytest.mark.parametrize("arch,binary", ARCH_ROWS, ids=[f"arch{a}" for a, _ in ARCH_ROWS])
def test_arch_table_reservation(arch: int, binary: str | None) -> None:
    d = run(request(DISCOVER, opts=pxe(arch=arch)), record())
    assert d.reply is not None and d.outcome == "offer"
    assert d.reply.yiaddr == b4(RESERVED)
    if binary is None:
        assert d.reply.file == b"" and d.reply.siaddr == Z and 43 not in d.reply.options
        expected_arch = arch if arch <= 36 else 255
        assert f"no iPXE binary for arch {expected_arch}" in d.reason
    else:
        assert d.reply.file == binary.encode() and d.reply.siaddr == b4(TFTP)
        assert opt43(d.reply) == {6: b"\x08"}


@pytest.mark.parametrize("arch,binary", ARCH_ROWS, ids=[f"arch{a}" for a, _ in ARCH_ROWS])
@pytest.mark.parametrize("mode", [PROXY, AUTO_PROXY])
def test_arch_table_proxy(mode: str, arch: int, binary: str | None) -> None:
    d = run(request(DISCOVER, opts=pxe(arch=arch)), record(), cfg(mode=mode))
    if binary is None:
        assert d.reply is None and d.outcome == "no-binary"
    else:
        assert d.reply is not None and d.reply.file == binary.encode()


RPI_MAC = "b8:27:eb:12:34:56"
RPI_SUBS = {
    6: b"\x08",
    9: bytes.fromhex("00001152617370626572727920506920426f6f74"),
    10: bytes.fromhex("00505845"),
}


@pytest.mark.parametrize("oui", RPI_OUIS)
@pytest.mark.parametrize("mode", [RESERVATION, PROXY, AUTO_PROXY])
def test_raspberry_pi_by_oui(mode: str, oui: str) -> None:
    mac = oui + ":00:00:01"
    # The Pi 5 sends option 93 = 0; the OUI makes it arch 41 → snp.efi.
    d = run(request(DISCOVER, mac, pxe(arch=0)), record(mac), cfg(mode=mode))
    assert d.reply is not None
    assert d.reply.file == b"snp.efi"
    assert opt43(d.reply) == RPI_SUBS


def test_non_pi_sending_41_is_unknown() -> None:
    d = run(request(DISCOVER, opts=pxe(arch=41)), record())
    assert d.reply is not None and d.reply.file == b"" and "arch 255" in d.reason


# =========================================================================== §2.4 reservation gating


GATING = [
    # name, request options, record kwargs, client overrides, expected (file, siaddr, 43, 60)
    ("pxe-allowed", pxe(), {}, {}, (b"ipxe.efi", TFTP, {6: b"\x08"}, None)),
    ("http-allowed", pxe(arch=16, cls=HTTP_CLASS), {}, {},
     (f"http://{HTTP}:8080/ipxe/{MAC}/ipxe.efi".encode(), HTTP, {6: b"\x08"}, b"HTTPClient")),
    ("pxe-not-allowed", pxe(), {"allow_pxe": False}, {}, (b"", "0.0.0.0", None, None)),
    ("http-not-allowed", pxe(arch=16, cls=HTTP_CLASS), {"allow_pxe": False}, {}, (b"", "0.0.0.0", None, None)),
    ("arch-unmapped", pxe(arch=22), {}, {}, (b"", "0.0.0.0", None, None)),
    ("no-arch-option", pxe(arch=None), {}, {}, (b"", SERVER, None, None)),  # not a netboot client
    ("dhclient", {12: b"node-01"}, {}, {}, (b"", SERVER, None, None)),
    ("dhclient-not-allowed", {}, {"allow_pxe": False}, {}, (b"", SERVER, None, None)),
    ("bad-guid", pxe(guid=b"\x01" + bytes(16)), {}, {}, (b"", SERVER, None, None)),
    ("empty-guid", pxe(guid=b""), {}, {}, (b"ipxe.efi", TFTP, {6: b"\x08"}, None)),
    ("no-guid", pxe(guid=None), {}, {}, (b"ipxe.efi", TFTP, {6: b"\x08"}, None)),
]


@pytest.mark.parametrize("name,opts,hw,client,expected", GATING, ids=[g[0] for g in GATING])
def test_reservation_netboot_gating(name: str, opts: dict, hw: dict, client: dict, expected: tuple) -> None:
    file, siaddr, o43, o60 = expected
    d = run(request(DISCOVER, opts=opts), record(**hw), **client)
    r = d.reply
    assert r is not None and d.outcome == "offer"
    assert r.yiaddr == b4(RESERVED), "a lease is always given"
    assert (r.file, r.siaddr, opt43(r), r.options.get(60)) == (file, b4(siaddr), o43, o60)
    assert r.sname == b""
    assert 97 not in r.options, "reservation mode does not echo the GUID"


def test_unavailable_binary_is_treated_as_unmapped() -> None:
    config = cfg(available_binaries=frozenset({"undionly.kpxe"}))
    d = run(request(DISCOVER, opts=pxe(arch=7)), record(), config)
    assert d.reply is not None and d.reply.file == b"" and d.reply.siaddr == Z
    assert "no iPXE binary for arch 7 (ipxe.efi is not available)" in d.reason
    d = run(request(DISCOVER, opts=pxe(arch=0)), record(), config)
    assert d.reply is not None and d.reply.file == b"undionly.kpxe"
    d = run(request(DISCOVER, opts=pxe(arch=7)), record(), dataclasses.replace(config, mode=PROXY))
    assert d.reply is None and d.outcome == "no-binary"


def test_not_allowed_reason() -> None:
    d = run(request(DISCOVER, opts=pxe()), record(allow_pxe=False))
    assert d.reason == f"OFFER {RESERVED} to {MAC}, no boot file: netboot not allowed for {MAC}"


# =========================================================================== §2.6 matrix per mode

SITUATIONS = {
    "unknown": lambda: None,
    "disabled": lambda: record(disable_dhcp=True),
    "not-allowed": lambda: record(allow_pxe=False),
    "arch-unknown": lambda: record(),
}
# (situation, mode) → (reply sent?, outcome, boot file when sent)
MATRIX = [
    ("unknown", RESERVATION, None, "unknown", None),
    ("unknown", PROXY, None, "unknown", None),
    ("unknown", AUTO_PROXY, True, "offer", b"ipxe.efi"),
    ("disabled", RESERVATION, None, "disabled", None),
    ("disabled", PROXY, True, "offer", b"ipxe.efi"),  # Smee: disableDhcp is not read in proxy mode
    ("disabled", AUTO_PROXY, True, "offer", b"ipxe.efi"),
    ("not-allowed", RESERVATION, True, "offer", b""),  # a lease without boot file
    ("not-allowed", PROXY, None, "not-allowed", None),
    ("not-allowed", AUTO_PROXY, True, "offer", b"ipxe.efi"),
    ("arch-unknown", RESERVATION, True, "offer", b""),
    ("arch-unknown", PROXY, None, "no-binary", None),
    ("arch-unknown", AUTO_PROXY, None, "no-binary", None),
]


@pytest.mark.parametrize("situation,mode,sent,outcome,file", MATRIX, ids=[f"{m[0]}-{m[1]}" for m in MATRIX])
def test_behaviour_matrix(situation: str, mode: str, sent: bool | None, outcome: str, file: bytes | None) -> None:
    arch = 22 if situation == "arch-unknown" else 7
    match = SITUATIONS[situation]()
    config = cfg(mode=mode)
    client = info(request(DISCOVER, opts=pxe(arch=arch)))
    if not needs_lookup(client, config):
        match = None  # auto-proxy never looks up
    d = decide(request(DISCOVER, opts=pxe(arch=arch)), client, match, config)
    assert d.outcome == outcome
    assert MAC in d.reason
    if sent:
        assert d.reply is not None and d.reply.file == file
    else:
        assert d.reply is None


@pytest.mark.parametrize("mode,expected", [(RESERVATION, True), (PROXY, True), (AUTO_PROXY, False)])
def test_needs_lookup(mode: str, expected: bool) -> None:
    assert needs_lookup(info(request(DISCOVER, opts=pxe())), cfg(mode=mode)) is expected


def test_disabled_and_no_address_reasons_name_the_record() -> None:
    d = run(request(DISCOVER, opts=pxe()), record(disable_dhcp=True, source="hw.yaml:7"))
    assert (d.reply, d.outcome) == (None, "disabled")
    assert d.reason == f"no reply to {MAC}: DHCP is disabled in its hardware record (hw.yaml:7)"
    d = run(request(DISCOVER, opts=pxe()), record(ip=None, source="hw.yaml:9"))
    assert (d.reply, d.outcome) == (None, "no-address")
    assert d.reason == f"no reply to {MAC}: its hardware record (hw.yaml:9) has no IP address"
    d = run(request(DISCOVER), None)
    assert d.reason == f"no reply to DISCOVER from {MAC}: unknown MAC"


# =========================================================================== §8.1 Bootfile / NextServer

M6 = "01:02:03:04:05:06"
M7 = "01:02:03:04:05:07"
ALT = "198.51.100.4"

BOOTFILE = [
    # name, mac, request options, config overrides, expected file, expected siaddr
    ("tinkerbell-script", M6, pxe(user=b"Tinkerbell"), dict(script_url="/ipxe-script", prepend_mac=False),
     "/ipxe-script", TFTP),
    ("httpclient", M6, pxe(arch=16, cls=HTTP_CLASS),
     dict(http_binary_url=f"http://{ALT}:8080/", http_binary_ip=IP(ALT)),
     f"http://{ALT}:8080/{M6}/ipxe.efi", ALT),
    ("ipxe-rom-chainload", M6, pxe(arch=0, user=b"iPXE"),
     dict(tftp_ip=IP(ALT), tftp_port=69, ipxe_rom_chainload=True),
     f"tftp://{ALT}:69/{M6}/undionly.kpxe", ALT),
    ("plain-pxe", M6, pxe(arch=0), dict(tftp_ip=IP(ALT)), "undionly.kpxe", ALT),
    ("nextserver-httpclient-8989", M6, pxe(arch=16, cls=b"HTTPClient"),
     dict(http_binary_url=f"http://{ALT}:8989/", http_binary_ip=IP(ALT)),
     f"http://{ALT}:8989/{M6}/ipxe.efi", ALT),
    # §8.2 TestBootfileAndNextServer (tracing rows dropped: smee has no tracing)
    ("8.2-tinkerbell", M6, pxe(user=b"Tinkerbell"),
     dict(script_url="http://localhost:8080/auto.ipxe", prepend_mac=False),
     "http://localhost:8080/auto.ipxe", TFTP),
    ("8.2-http-arm64", M6, pxe(arch=19, cls=HTTP_CLASS),
     dict(http_binary_url="http://127.0.0.1:8181/", http_binary_ip=IP("127.0.0.1")),
     f"http://127.0.0.1:8181/{M6}/snp.efi", "127.0.0.1"),
    ("8.2-ipxe-rom", M7, pxe(arch=0, user=b"iPXE"), dict(tftp_ip=IP("192.0.2.65"), ipxe_rom_chainload=True),
     f"tftp://192.0.2.65:69/{M7}/undionly.kpxe", "192.0.2.65"),
    ("8.2-no-user-class", M7, pxe(arch=0), dict(tftp_ip=IP("192.0.2.65")), "undionly.kpxe", "192.0.2.65"),
    # precedence (§1.2: Tinkerbell, then HTTPClient, then iPXE, then plain)
    ("tinkerbell-over-httpclient", M6, pxe(arch=16, cls=HTTP_CLASS, user=b"Tinkerbell"), {},
     f"http://{HTTP}:8080/{M6}/auto.ipxe", HTTP),
    ("httpclient-over-ipxe", M6, pxe(arch=16, cls=HTTP_CLASS, user=b"iPXE"), dict(ipxe_rom_chainload=True),
     f"http://{HTTP}:8080/ipxe/{M6}/ipxe.efi", HTTP),
    ("tinkerbell-http-dns-host", M6, pxe(arch=16, cls=HTTP_CLASS, user=b"Tinkerbell"),
     dict(http_binary_url="http://boot.example:8080/ipxe/", http_binary_ip=None),
     f"http://{HTTP}:8080/{M6}/auto.ipxe", "0.0.0.0"),
    ("httpclient-dns-host", M6, pxe(arch=16, cls=HTTP_CLASS),
     dict(http_binary_url="http://boot.example:8080/ipxe/", http_binary_ip=None),
     f"http://boot.example:8080/ipxe/{M6}/ipxe.efi", "0.0.0.0"),
    # foreign iPXE ROM: the script by default, Smee's tftp chainload when asked
    ("ipxe-rom-default", M6, pxe(arch=0, user=b"iPXE"), {}, f"http://{HTTP}:8080/{M6}/auto.ipxe", TFTP),
    ("ipxe-rom-custom-port", M6, pxe(arch=7, user=b"iPXE"), dict(ipxe_rom_chainload=True, tftp_port=6969),
     f"tftp://{TFTP}:6969/{M6}/ipxe.efi", TFTP),
]


@pytest.mark.parametrize("name,mac,opts,config,file,siaddr", BOOTFILE, ids=[b[0] for b in BOOTFILE])
def test_bootfile_and_next_server(name: str, mac: str, opts: dict, config: dict, file: str, siaddr: str) -> None:
    d = run(request(DISCOVER, mac, opts), record(mac), cfg(**config))
    assert d.reply is not None
    assert d.reply.file == file.encode()
    assert d.reply.siaddr == b4(siaddr)
    assert d.reason == f"OFFER {RESERVED} to {mac}, boot file {file} (next server {siaddr})"


def test_rpi_vendor_sub_options_only_for_pi() -> None:
    d = run(request(DISCOVER, M6, pxe(arch=11)), record(M6))
    assert d.reply is not None and opt43(d.reply) == {6: b"\x08"}
    d = run(request(DISCOVER, RPI_MAC, {}), record(RPI_MAC))  # a Pi with no options: not netboot
    assert d.reply is not None and 43 not in d.reply.options


# =========================================================================== §8.2 SetNetworkBootOpts / SetDHCPOpts


def test_set_network_boot_opts_not_allowed() -> None:
    d = run(request(DISCOVER, M6, pxe(arch=16, cls=b"HTTPClient:xxxxx", user=b"Tinkerbell")), record(M6, allow_pxe=False))
    r = d.reply
    assert r is not None
    assert (r.file, r.siaddr) == (b"", Z)  # Smee: "/netboot-not-allowed"
    assert 43 not in r.options and 60 not in r.options


def test_set_network_boot_opts_hardware_url() -> None:
    url = f"http://localhost:8181/{M6}/auto.ipxe"
    d = run(request(DISCOVER, M6, pxe(arch=16, cls=b"HTTPClient:xxxxx", user=b"Tinkerbell")), record(M6, ipxe_url=url))
    r = d.reply
    assert r is not None
    assert r.file == url.encode()
    assert opt43(r) == {6: b"\x08"}  # Smee also sends 69 = 26 zero bytes
    assert r.options[60] == b"HTTPClient"
    assert r.siaddr == b4(HTTP)


def test_set_network_boot_opts_unmapped_arch() -> None:
    d = run(request(DISCOVER, M6, pxe(arch=22, user=b"Tinkerbell")), record(M6))
    assert d.reply is not None and (d.reply.file, d.reply.siaddr) == (b"", Z)


def test_set_dhcp_opts() -> None:
    match = record(
        M6, ip=IP("192.0.2.44"), netmask=IP("255.255.255.0"), gateway=IP("192.0.2.41"),
        dns_servers=(IP("198.51.100.8"), IP("198.51.100.9")), hostname="test-server", domain_name="mynet.local",
        broadcast=IP("192.0.2.255"), ntp_servers=(IP("198.51.100.2"), IP("198.51.100.3")), lease_time=84600,
        domain_search=("mynet.local",),
    )
    d = run(request(DISCOVER, M6), match, cfg(syslog_ip=IP("192.0.2.77")))
    r = d.reply
    assert r is not None and r.yiaddr == b4("192.0.2.44")
    assert r.options == {
        1: b4("255.255.255.0"),
        3: b4("192.0.2.41"),
        6: b4("198.51.100.8") + b4("198.51.100.9"),
        7: b4("192.0.2.77"),
        12: b"test-server",
        15: b"mynet.local",
        28: b4("192.0.2.255"),
        42: b4("198.51.100.2") + b4("198.51.100.3"),
        51: (84600).to_bytes(4, "big"),
        53: bytes((OFFER,)),
        54: b4(SERVER),
        119: b"\x05mynet\x05local\x00",
    }
    assert list(r.options) == sorted(r.options)


def test_minimal_record_and_no_syslog() -> None:
    match = record(netmask=None, gateway=None, dns_servers=(), hostname="", lease_time=0)
    d = run(request(DISCOVER), match, cfg(syslog_ip=None))
    assert d.reply is not None
    assert d.reply.options == {51: bytes(4), 53: b"\x02", 54: b4(SERVER)}


# =========================================================================== §8.3 TestHandle

HANDLE_GUID = bytes.fromhex("0002030405060002030405060002030405")


def handle_request(mt: int) -> Packet:
    return request(mt, M6, {77: b"Tinkerbell", 60: b"HTTPClient:Arch:xxxxx:UNDI:yyyzzz", 93: b"\x00\x10",
                            94: bytes.fromhex("010203040506"), 97: HANDLE_GUID}, xid=0x01020304)


def handle_setup() -> tuple[Match, DHCPConfig]:
    match = record(
        M6, ip=IP("192.0.2.100"), netmask=IP("255.255.255.0"), gateway=IP("192.0.2.1"),
        dns_servers=(IP("198.51.100.1"),), hostname="test-host", domain_name="mydomain.com",
        broadcast=IP("192.0.2.255"), ntp_servers=(IP("198.51.100.2"),), lease_time=60,
        domain_search=("mydomain.com",), allow_pxe=True, ipxe_url="http://localhost:8181/auto.ipxe",
    )
    config = cfg(server_ip=IP("127.0.0.1"), syslog_ip=None, http_binary_url="http://localhost:8080/ipxe/",
                 http_binary_ip=None)
    return match, config


@pytest.mark.parametrize("mt,reply_type", [(DISCOVER, OFFER), (REQUEST, ACK)])
def test_handle_full_reply(mt: int, reply_type: int) -> None:
    match, config = handle_setup()
    req = handle_request(mt)
    d = decide(req, info(req), match, config)
    r = d.reply
    assert r is not None and d.outcome == ("offer" if mt == DISCOVER else "ack")
    assert (r.op, r.htype, r.hlen, r.hops, r.xid, r.secs, r.flags) == (BOOTREPLY, 1, 6, 0, 0x01020304, 0, 0)
    assert (r.ciaddr, r.yiaddr, r.siaddr, r.giaddr) == (Z, b4("192.0.2.100"), Z, Z)
    assert r.chaddr == req.chaddr
    assert (r.sname, r.file) == (b"", b"http://localhost:8181/auto.ipxe")
    assert r.options == {
        1: b4("255.255.255.0"),
        3: b4("192.0.2.1"),
        6: b4("198.51.100.1"),
        12: b"test-host",
        15: b"mydomain.com",
        28: b4("192.0.2.255"),
        42: b4("198.51.100.2"),
        43: b"\x06\x01\x08",  # Smee adds 45 1A + 26 zero bytes (traceparent)
        51: (60).to_bytes(4, "big"),
        53: bytes((reply_type,)),
        54: b4("127.0.0.1"),
        60: b"HTTPClient",
        119: b"\x08mydomain\x03com\x00",
    }
    assert wire_order(r) == [1, 3, 6, 12, 15, 28, 42, 43, 51, 53, 54, 60, 119]
    assert destination(req, r) == ("255.255.255.255", 68)


def test_handle_no_reply_cases() -> None:
    match, config = handle_setup()
    req = handle_request(DISCOVER)
    assert decide(req, info(req), None, config).reply is None  # not found / backend error
    req = handle_request(RELEASE)
    assert decide(req, info(req), match, config).reply is None


# =========================================================================== §8.4 realistic sequence

EXAMPLE_MAC = "52:54:00:aa:88:2a"
EXAMPLE_YAML = """\
52:54:00:aa:88:2a:
  ipAddress: 192.0.2.15
  subnetMask: 255.255.255.0
  defaultGateway: 192.0.2.1
  nameServers: [198.51.100.8, 198.51.100.9]
  hostname: sandbox
  domainName: example.com
  broadcastAddress: 192.0.2.255
  ntpServers: [198.51.100.2, 198.51.100.3]
  leaseTime: 86400
  domainSearch: [example.com]
  netboot:
    allowPxe: true
    ipxeScriptUrl: https://boot.netboot.xyz
"""
EXAMPLE_GUID = b"\x00" + bytes(range(1, 17))
EXAMPLE_PXE = {60: b"PXEClient:Arch:00007:UNDI:003016", 93: b"\x00\x07", 94: b"\x01\x03\x10", 97: EXAMPLE_GUID}
ONE = "192.0.2.1"


def example_match(text: str = EXAMPLE_YAML) -> Match:
    from smee.formats import parse_text

    (hw,) = parse_text(text, "example.yaml").hardware
    iface = hw.interface_by_mac(EXAMPLE_MAC)
    assert iface is not None
    return Match(hw, iface)


def example_config(mode: str = RESERVATION) -> DHCPConfig:
    return cfg(mode=mode, server_ip=IP(ONE), syslog_ip=IP(ONE), tftp_ip=IP(ONE), http_binary_ip=IP(ONE),
               http_binary_url=f"http://{ONE}:8080/ipxe/", script_url=f"http://{ONE}:8080/auto.ipxe")


EXAMPLE_OPTIONS = {
    1: b4("255.255.255.0"),
    3: b4("192.0.2.1"),
    6: b4("198.51.100.8") + b4("198.51.100.9"),
    7: b4(ONE),
    12: b"sandbox",
    15: b"example.com",
    28: b4("192.0.2.255"),
    42: b4("198.51.100.2") + b4("198.51.100.3"),
    43: b"\x06\x01\x08",
    51: bytes.fromhex("00015180"),
    53: b"\x02",
    54: b4(ONE),
    119: b"\x07example\x03com\x00",
}


def test_realistic_sequence() -> None:
    match, config = example_match(), example_config()
    # 1. PXE ROM DISCOVER, broadcast
    discover = request(DISCOVER, EXAMPLE_MAC, EXAMPLE_PXE, flags=BROADCAST_FLAG)
    d = decide(discover, info(discover), match, config)
    offer = d.reply
    assert offer is not None
    assert destination(discover, offer) == ("255.255.255.255", 68)
    assert (offer.yiaddr, offer.siaddr, offer.sname, offer.file) == (b4("192.0.2.15"), b4(ONE), b"", b"ipxe.efi")
    assert offer.flags == BROADCAST_FLAG
    assert offer.options == EXAMPLE_OPTIONS  # no option 60 (PXEClient), no 97
    wire = build(offer)
    assert len(wire) >= 300
    assert wire_order(offer) == list(EXAMPLE_OPTIONS)
    assert d.reason == f"OFFER 192.0.2.15 to {EXAMPLE_MAC}, boot file ipxe.efi (next server {ONE})"

    # 2. REQUEST (SELECTING) → the same reply as an ACK
    req = request(REQUEST, EXAMPLE_MAC, {**EXAMPLE_PXE, 50: b4("192.0.2.15"), 54: b4(ONE)}, flags=BROADCAST_FLAG)
    d = decide(req, info(req), match, config)
    ack = d.reply
    assert ack is not None and d.outcome == "ack"
    assert ack.options == {**EXAMPLE_OPTIONS, 53: b"\x05"}
    assert (ack.yiaddr, ack.siaddr, ack.file) == (offer.yiaddr, offer.siaddr, offer.file)
    assert destination(req, ack) == ("255.255.255.255", 68)

    # 4. our iPXE (user class Tinkerbell) → the record's script URL
    ipxe = request(DISCOVER, EXAMPLE_MAC, {**EXAMPLE_PXE, 77: b"Tinkerbell"})
    d = decide(ipxe, info(ipxe), match, config)
    assert d.reply is not None
    assert (d.reply.file, d.reply.siaddr) == (b"https://boot.netboot.xyz", b4(ONE))
    # ... and for a record without ipxeScriptUrl, the global URL with the MAC
    plain = example_match(EXAMPLE_YAML.replace("    ipxeScriptUrl: https://boot.netboot.xyz\n", ""))
    d = decide(ipxe, info(ipxe), plain, config)
    assert d.reply is not None
    assert d.reply.file == f"http://{ONE}:8080/{EXAMPLE_MAC}/auto.ipxe".encode()


def test_realistic_sequence_wire_round_trip() -> None:
    """The reply survives build → parse with the same fields (what the client really sees)."""
    match, config = example_match(), example_config()
    discover = parse(build(dataclasses.replace(request(DISCOVER, EXAMPLE_MAC, EXAMPLE_PXE), op=BOOTREQUEST)))
    d = decide(discover, info(discover), match, config)
    assert d.reply is not None
    back = parse(build(d.reply))
    assert back == d.reply


# =========================================================================== §8.5 proxy vector

RELAY = "198.51.100.1"


@pytest.mark.parametrize("mode", [PROXY, AUTO_PROXY])
@pytest.mark.parametrize("guid", [EXAMPLE_GUID, None], ids=["guid", "no-guid"])
def test_proxy_vector(mode: str, guid: bytes | None) -> None:
    opts = dict(EXAMPLE_PXE)
    if guid is None:
        del opts[97]
    opts[61] = b"\x01" + bytes.fromhex(EXAMPLE_MAC.replace(":", ""))
    opts[82] = b"\x01\x04circ"
    req = request(DISCOVER, EXAMPLE_MAC, opts, giaddr=RELAY)
    client = info(req)
    match = example_match() if needs_lookup(client, example_config(mode)) else None
    d = decide(req, client, match, example_config(mode))
    r = d.reply
    assert r is not None and d.outcome == "offer"
    assert destination(req, r) == (RELAY, 67)
    assert (r.op, r.xid, r.hops, r.secs, r.flags) == (BOOTREPLY, req.xid, 0, 0, 0)
    assert (r.ciaddr, r.yiaddr, r.siaddr, r.giaddr) == (Z, Z, b4(ONE), b4(RELAY))
    assert (r.sname, r.file) == (ONE.encode(), b"ipxe.efi")
    assert r.options == {
        43: b"\x06\x01\x08",
        53: b"\x02",
        54: b4(ONE),
        60: b"PXEClient",
        61: opts[61],
        97: b"" if guid is None else guid,
        82: opts[82],
    }
    assert wire_order(r) == [43, 53, 54, 60, 61, 97, 82]
    if guid is None:
        assert build(r).find(b"\x61\x00") > 240, "zero-length option 97 is on the wire"


@pytest.mark.parametrize("match,outcome", [(None, "unknown"), ("not-allowed", "not-allowed")])
def test_proxy_vector_no_packet(match: Any, outcome: str) -> None:
    if match == "not-allowed":
        match = example_match(EXAMPLE_YAML.replace("allowPxe: true", "allowPxe: false"))
    req = request(DISCOVER, EXAMPLE_MAC, EXAMPLE_PXE, giaddr=RELAY)
    d = decide(req, info(req), match, example_config(PROXY))
    assert (d.reply, d.outcome) == (None, outcome)
    if outcome == "not-allowed":
        assert d.reason == f"no reply to {EXAMPLE_MAC}: netboot not allowed for {EXAMPLE_MAC}"
    d = decide(req, info(req), match, example_config(AUTO_PROXY))
    assert d.reply is not None


PROXY_CASES = [
    # name, mt, options, config overrides, expected: (file, siaddr, sname, 54, 60) or outcome
    ("request-ack", REQUEST, pxe(o54=b4("203.0.113.1"), o50=b4("203.0.113.7")), {},
     (b"ipxe.efi", TFTP, TFTP, TFTP, b"PXEClient")),
    ("http-client", DISCOVER, pxe(arch=16, cls=HTTP_CLASS), {},
     (f"http://{HTTP}:8080/ipxe/{MAC}/ipxe.efi".encode(), HTTP, HTTP, HTTP, b"HTTPClient")),
    ("http-client-dns-host", DISCOVER, pxe(arch=16, cls=HTTP_CLASS),
     dict(http_binary_url="http://boot.example:8080/ipxe/", http_binary_ip=None),
     (f"http://boot.example:8080/ipxe/{MAC}/ipxe.efi".encode(), "0.0.0.0", "", SERVER, b"HTTPClient")),
    ("tinkerbell-global-script", DISCOVER, pxe(user=b"Tinkerbell"), {},
     (SCRIPT_FOR_MAC.encode(), TFTP, TFTP, TFTP, b"PXEClient")),
    ("tinkerbell-no-prepend", DISCOVER, pxe(user=b"Tinkerbell"), dict(prepend_mac=False),
     (f"http://{HTTP}:8080/auto.ipxe".encode(), TFTP, TFTP, TFTP, b"PXEClient")),
    ("ipxe-rom-chainload", DISCOVER, pxe(user=b"iPXE"), dict(ipxe_rom_chainload=True),
     (f"tftp://{TFTP}:69/{MAC}/ipxe.efi".encode(), TFTP, TFTP, TFTP, b"PXEClient")),
    ("ipxe-rom-script", DISCOVER, pxe(user=b"iPXE"), {},
     (SCRIPT_FOR_MAC.encode(), TFTP, TFTP, TFTP, b"PXEClient")),
    ("not-netboot", DISCOVER, {}, {}, "not-netboot"),
    ("no-94", DISCOVER, {60: PXE_CLASS, 93: b"\x00\x07"}, {}, "not-netboot"),
    ("release", RELEASE, pxe(), {}, "ignored"),
    ("decline", DECLINE, pxe(), {}, "ignored"),
    ("inform", INFORM, pxe(), {}, "ignored"),
    ("no-msg-type", None, pxe(), {}, "ignored"),
]


@pytest.mark.parametrize("mode", [PROXY, AUTO_PROXY])
@pytest.mark.parametrize("name,mt,opts,config,expected", PROXY_CASES, ids=[c[0] for c in PROXY_CASES])
def test_proxy_cases(mode: str, name: str, mt: int | None, opts: dict, config: dict, expected: Any) -> None:
    # the hardware URL is never used in proxy mode (as Smee)
    match = record(ipxe_url="http://192.0.2.99/custom.ipxe")
    d = run(request(mt, opts=opts), match, cfg(mode=mode, **config))
    if isinstance(expected, str):
        assert (d.reply, d.outcome) == (None, expected)
        assert MAC in d.reason
        return
    file, siaddr, sname, server, cls = expected
    r = d.reply
    assert r is not None
    assert (r.file, r.siaddr, r.sname) == (file, b4(siaddr), sname.encode())
    assert (r.options[54], r.options[60]) == (b4(server), cls)
    assert r.yiaddr == Z
    assert d.outcome == ("ack" if mt == REQUEST else "offer")


def test_proxy_request_for_other_server_is_answered() -> None:
    """In proxy mode the REQUEST names the real DHCP server; the option-54 check does not apply."""
    opts = pxe(o54=b4("203.0.113.1"), o50=b4("203.0.113.7"))
    d = run(request(REQUEST, opts=opts, ciaddr="0.0.0.0"), record(), cfg(mode=PROXY))
    assert d.reply is not None and d.reply.options[53] == bytes((ACK,))


# =========================================================================== VLAN 43.116


@pytest.mark.parametrize("mode", [RESERVATION, PROXY])
@pytest.mark.parametrize("vlan,expected", [("100", {6: b"\x08", 116: b"100"}), ("", {6: b"\x08"})])
def test_vlan_sub_option(mode: str, vlan: str, expected: dict) -> None:
    d = run(request(DISCOVER, opts=pxe()), record(vlan_id=vlan), cfg(mode=mode))
    assert d.reply is not None and opt43(d.reply) == expected


def test_vlan_with_raspberry_pi_keeps_sub_option_order() -> None:
    d = run(request(DISCOVER, RPI_MAC, pxe(arch=0)), record(RPI_MAC, vlan_id="42"))
    assert d.reply is not None
    raw = d.reply.options[43]
    assert list(decode_tlv(raw)) == [6, 9, 10, 116]
    assert decode_tlv(raw)[116] == b"42"


def test_vlan_not_sent_without_boot_file() -> None:
    d = run(request(DISCOVER, opts=pxe()), record(vlan_id="100", allow_pxe=False))
    assert d.reply is not None and 43 not in d.reply.options


def test_auto_proxy_has_no_vlan() -> None:
    d = run(request(DISCOVER, opts=pxe()), None, cfg(mode=AUTO_PROXY))
    assert d.reply is not None and opt43(d.reply) == {6: b"\x08"}


# =========================================================================== script URL: prepend_mac, hardware URL

SCRIPT_URLS = [
    # name, config overrides, record ipxe_url, expected file
    ("prepend", {}, "", SCRIPT_FOR_MAC),
    ("no-prepend", dict(prepend_mac=False), "", f"http://{HTTP}:8080/auto.ipxe"),
    ("hardware-wins", {}, "http://192.0.2.99/custom.ipxe", "http://192.0.2.99/custom.ipxe"),
    ("hardware-not-prepended", dict(prepend_mac=True), "https://boot.netboot.xyz", "https://boot.netboot.xyz"),
    ("deep-path", dict(script_url="https://boot.example/a/b/auto.ipxe"), "",
     f"https://boot.example/a/b/{MAC}/auto.ipxe"),
    ("query-kept", dict(script_url="http://boot.example/auto.ipxe?x=1"), "",
     f"http://boot.example/{MAC}/auto.ipxe?x=1"),
    ("no-path", dict(script_url="https://boot.netboot.xyz"), "", f"https://boot.netboot.xyz/{MAC}/"),
    ("no-path-no-prepend", dict(script_url="https://boot.netboot.xyz", prepend_mac=False), "",
     "https://boot.netboot.xyz"),
]


@pytest.mark.parametrize("name,config,hw_url,file", SCRIPT_URLS, ids=[s[0] for s in SCRIPT_URLS])
def test_script_url(name: str, config: dict, hw_url: str, file: str) -> None:
    d = run(request(DISCOVER, opts=pxe(user=b"Tinkerbell")), record(ipxe_url=hw_url), cfg(**config))
    assert d.reply is not None and d.reply.file == file.encode()
    # a foreign iPXE ROM gets the same URL (unless ipxe_rom_chainload)
    d = run(request(DISCOVER, opts=pxe(user=b"iPXE")), record(ipxe_url=hw_url), cfg(**config))
    assert d.reply is not None and d.reply.file == file.encode()


@pytest.mark.parametrize("chainload,file", [
    (False, SCRIPT_FOR_MAC),
    (True, f"tftp://{TFTP}:69/{MAC}/ipxe.efi"),
])
@pytest.mark.parametrize("mode", [RESERVATION, PROXY, AUTO_PROXY])
def test_ipxe_rom_chainload(mode: str, chainload: bool, file: str) -> None:
    d = run(request(DISCOVER, opts=pxe(user=b"iPXE")), record(), cfg(mode=mode, ipxe_rom_chainload=chainload))
    assert d.reply is not None
    assert d.reply.file == file.encode() and d.reply.siaddr == b4(TFTP)


# =========================================================================== HTTPClient option 60


@pytest.mark.parametrize("mode", [RESERVATION, PROXY, AUTO_PROXY])
@pytest.mark.parametrize("cls,expected", [
    (HTTP_CLASS, b"HTTPClient"),
    (b"HTTPClient", b"HTTPClient"),
    (PXE_CLASS, None),
])
def test_http_client_option_60(mode: str, cls: bytes, expected: bytes | None) -> None:
    d = run(request(DISCOVER, opts=pxe(arch=16, cls=cls)), record(), cfg(mode=mode))
    assert d.reply is not None
    if mode == RESERVATION:
        assert d.reply.options.get(60) == expected  # reservation: echoed for HTTPClient only
    else:
        assert d.reply.options[60] == (expected or b"PXEClient")


# =========================================================================== RFC 2131 (where Smee is wrong)

OTHER = "203.0.113.1"
WRONG = "192.0.2.99"

RFC_CASES = [
    # name, mt, options, ciaddr, giaddr, expected outcome, expected ciaddr in reply, reply yiaddr
    ("discover", DISCOVER, {}, "0.0.0.0", "0.0.0.0", "offer", "0.0.0.0", RESERVED),
    ("selecting-other-server", REQUEST, {54: b4(OTHER), 50: b4(RESERVED)}, "0.0.0.0", "0.0.0.0", "ignored", None, None),
    ("selecting-ok", REQUEST, {54: b4(SERVER), 50: b4(RESERVED)}, "0.0.0.0", "0.0.0.0", "ack", "0.0.0.0", RESERVED),
    ("selecting-wrong-ip", REQUEST, {54: b4(SERVER), 50: b4(WRONG)}, "0.0.0.0", "0.0.0.0", "nak", "0.0.0.0", "0.0.0.0"),
    ("init-reboot-ok", REQUEST, {50: b4(RESERVED)}, "0.0.0.0", "0.0.0.0", "ack", "0.0.0.0", RESERVED),
    ("init-reboot-wrong", REQUEST, {50: b4(WRONG)}, "0.0.0.0", "0.0.0.0", "nak", "0.0.0.0", "0.0.0.0"),
    ("init-reboot-bad-50", REQUEST, {50: b"\x01"}, "0.0.0.0", "0.0.0.0", "nak", "0.0.0.0", "0.0.0.0"),
    ("renew-ok", REQUEST, {}, RESERVED, "0.0.0.0", "ack", RESERVED, RESERVED),
    ("renew-wrong", REQUEST, {}, WRONG, "0.0.0.0", "nak", "0.0.0.0", "0.0.0.0"),
    ("rebind-ok", REQUEST, {}, RESERVED, "0.0.0.0", "ack", RESERVED, RESERVED),
    ("no-50-no-ciaddr", REQUEST, {}, "0.0.0.0", "0.0.0.0", "ack", "0.0.0.0", RESERVED),  # lenient, as Smee
    ("relayed-init-reboot-wrong", REQUEST, {50: b4(WRONG)}, "0.0.0.0", RELAY, "nak", "0.0.0.0", "0.0.0.0"),
    ("release", RELEASE, {54: b4(SERVER)}, RESERVED, "0.0.0.0", "release", None, None),
    ("decline", DECLINE, {54: b4(SERVER), 50: b4(RESERVED)}, "0.0.0.0", "0.0.0.0", "decline", None, None),
    ("inform", INFORM, {}, RESERVED, "0.0.0.0", "ack", RESERVED, "0.0.0.0"),
    ("no-msg-type", None, {}, "0.0.0.0", "0.0.0.0", "ignored", None, None),
    ("offer-from-client", OFFER, {}, "0.0.0.0", "0.0.0.0", "ignored", None, None),
    ("ack-from-client", ACK, {}, "0.0.0.0", "0.0.0.0", "ignored", None, None),
    ("leasequery", 10, {}, "0.0.0.0", "0.0.0.0", "ignored", None, None),
]


@pytest.mark.parametrize("name,mt,opts,ciaddr,giaddr,outcome,reply_ci,yiaddr", RFC_CASES, ids=[c[0] for c in RFC_CASES])
def test_rfc2131(name: str, mt: int | None, opts: dict, ciaddr: str, giaddr: str, outcome: str,
                 reply_ci: str | None, yiaddr: str | None) -> None:
    opts = {**opts, 61: b"\x01\x52\x54\x00\x00\x00\x01", 82: b"\x01\x02ab"}
    req = request(mt, opts=opts, ciaddr=ciaddr, giaddr=giaddr)
    d = run(req, record())
    assert d.outcome == outcome, d.reason
    assert MAC in d.reason
    if reply_ci is None:
        assert d.reply is None
        return
    r = d.reply
    assert r is not None
    assert (r.op, r.xid, r.hops, r.secs, r.giaddr, r.chaddr) == (BOOTREPLY, req.xid, 0, 0, req.giaddr, req.chaddr)
    assert (r.ciaddr, r.yiaddr) == (b4(reply_ci), b4(yiaddr))
    assert r.options[61] == opts[61] and list(r.options)[-1] == 82
    if outcome == "nak":
        assert r.options == {53: bytes((NAK,)), 54: b4(SERVER), 56: r.options[56], 61: opts[61], 82: opts[82]}
        assert r.options[56] and r.options[56].isascii()
        assert (r.siaddr, r.file, r.sname) == (Z, b"", b"")
        assert r.flags == (BROADCAST_FLAG if giaddr != "0.0.0.0" else 0)
        assert destination(req, r) == ((RELAY, 67) if giaddr != "0.0.0.0" else ("255.255.255.255", 68))
    else:
        assert r.options[53] == bytes((ACK if outcome == "ack" else OFFER,))
        assert (51 in r.options) is (mt != INFORM), "INFORM: no lease time (RFC 2131 §4.3.5)"
        assert r.options[54] == b4(SERVER) and r.options[1] == b4("255.255.255.0")
        expected_dst = (reply_ci, 68) if reply_ci != "0.0.0.0" else ("255.255.255.255", 68)
        assert destination(req, r) == expected_dst


def test_other_server_reason() -> None:
    d = run(request(REQUEST, opts={54: b4(OTHER), 50: b4(RESERVED)}), record())
    assert d.reason == f"ignored REQUEST from {MAC} for server {OTHER}: the client chose another server"
    # also when the MAC is unknown: it is not ours to answer either way
    d = run(request(REQUEST, opts={54: b4(OTHER)}), None)
    assert (d.reply, d.outcome) == (None, "ignored")


def test_nak_reasons() -> None:
    d = run(request(REQUEST, opts={54: b4(SERVER), 50: b4(WRONG)}), record())
    assert d.reason == f"NAK to {MAC}: requested {WRONG}, reserved {RESERVED}"
    d = run(request(REQUEST, ciaddr=WRONG), record())
    assert d.reason == f"NAK to {MAC}: renewing {WRONG}, reserved {RESERVED}"


def test_nak_keeps_client_broadcast_flag() -> None:
    d = run(request(REQUEST, opts={50: b4(WRONG)}, flags=BROADCAST_FLAG), record())
    assert d.reply is not None and d.reply.flags == BROADCAST_FLAG


def test_release_decline_reasons() -> None:
    d = run(request(RELEASE, ciaddr=RESERVED), record())
    assert d.reason == f"RELEASE from {MAC} of {RESERVED}: no reply (smee keeps no lease state)"
    d = run(request(DECLINE, opts={50: b4(RESERVED)}), None)
    assert (d.outcome, d.reason) == ("decline", f"DECLINE from {MAC} of {RESERVED}: no reply (smee keeps no lease state)")


def test_inform_has_no_netboot_fields() -> None:
    d = run(request(INFORM, opts=pxe(), ciaddr=RESERVED), record(), is_netboot=True)
    r = d.reply
    assert r is not None and r.file == b"" and 43 not in r.options and r.yiaddr == Z
    assert r.siaddr == b4(SERVER)
    assert d.reason == f"ACK to INFORM from {MAC} at {RESERVED}"


def test_bootreply_is_ignored() -> None:
    for mode in (RESERVATION, PROXY, AUTO_PROXY):
        d = run(request(DISCOVER, opts=pxe(), op=BOOTREPLY), record(), cfg(mode=mode))
        assert (d.reply, d.outcome) == (None, "ignored")


def test_renew_of_netboot_client_keeps_boot_file() -> None:
    d = run(request(REQUEST, opts=pxe(), ciaddr=RESERVED), record())
    assert d.reply is not None and d.reply.file == b"ipxe.efi" and d.reply.ciaddr == b4(RESERVED)


# =========================================================================== header copying, wire order


def test_header_copied_from_relayed_request() -> None:
    req = request(DISCOVER, opts=pxe(), giaddr=RELAY, flags=BROADCAST_FLAG, xid=42)
    req.hops, req.secs = 3, 99
    d = run(req, record())
    r = d.reply
    assert r is not None
    assert (r.op, r.htype, r.hlen, r.hops, r.xid, r.secs, r.flags) == (BOOTREPLY, 1, 6, 0, 42, 0, BROADCAST_FLAG)
    assert (r.giaddr, r.chaddr) == (b4(RELAY), req.chaddr)
    assert destination(req, r) == (RELAY, 67)


def test_wire_order_sorted_with_82_last() -> None:
    match = record(
        vlan_id="7", broadcast=IP("192.0.2.255"), ntp_servers=(IP("198.51.100.2"),), domain_name="lab.example",
        domain_search=("lab.example",),
    )
    opts = pxe(arch=16, cls=HTTP_CLASS, o61=b"\x01abcdef", o82=b"\x01\x01x")
    d = run(request(DISCOVER, opts=opts), match)
    assert d.reply is not None
    assert wire_order(d.reply) == [1, 3, 6, 7, 12, 15, 28, 42, 43, 51, 53, 54, 60, 61, 119, 82]
    d = run(request(REQUEST, opts={50: b4(WRONG), 82: b"\x01\x01x", 61: b"\x01abcdef"}), match)
    assert d.reply is not None and wire_order(d.reply) == [53, 54, 56, 61, 82]


# =========================================================================== destination


DESTINATIONS = [
    # request ciaddr, giaddr, reply message type → destination
    ("0.0.0.0", "0.0.0.0", OFFER, ("255.255.255.255", 68)),
    ("0.0.0.0", "0.0.0.0", ACK, ("255.255.255.255", 68)),
    ("192.0.2.10", "0.0.0.0", ACK, ("192.0.2.10", 68)),
    ("192.0.2.10", "0.0.0.0", OFFER, ("255.255.255.255", 68)),
    ("192.0.2.10", "0.0.0.0", NAK, ("255.255.255.255", 68)),
    ("0.0.0.0", RELAY, OFFER, (RELAY, 67)),
    ("192.0.2.10", RELAY, ACK, (RELAY, 67)),
    ("0.0.0.0", RELAY, NAK, (RELAY, 67)),
]


@pytest.mark.parametrize("ciaddr,giaddr,mt,expected", DESTINATIONS)
def test_destination(ciaddr: str, giaddr: str, mt: int, expected: tuple[str, int]) -> None:
    req = request(REQUEST, ciaddr=ciaddr, giaddr=giaddr)
    reply = Packet(BOOTREPLY, options={53: bytes((mt,))})
    assert destination(req, reply) == expected


# =========================================================================== DHCPConfig.from_settings


@pytest.fixture
def hwfile(tmp_path: Path) -> str:
    path = tmp_path / "hardware.yaml"
    path.write_text("52:54:00:00:00:01:\n  ipAddress: 192.0.2.10\n  subnetMask: 255.255.255.0\n")
    return str(path)


def settings(hwfile: str, *args: str) -> Any:
    o = Options(environ={}, detect_ip=lambda iface: IP("192.0.2.1"))
    o.parseOptions(["--backend-file-enabled=true", f"--backend-file-path={hwfile}", *args])
    return o.settings


def test_from_settings_defaults(hwfile: str) -> None:
    c = DHCPConfig.from_settings(settings(hwfile))
    assert c == DHCPConfig(
        mode=RESERVATION, server_ip=IP("192.0.2.1"), syslog_ip=IP("192.0.2.1"), tftp_ip=IP("192.0.2.1"),
        tftp_port=69, http_binary_url="http://192.0.2.1:8080/ipxe/", http_binary_ip=IP("192.0.2.1"),
        script_url="http://192.0.2.1:8080/auto.ipxe", prepend_mac=True, ipxe_rom_chainload=False,
        available_binaries=None,
    )
    assert c.script_url_for(MAC) == f"http://192.0.2.1:8080/{MAC}/auto.ipxe"


FROM_SETTINGS = [
    # args, attribute, expected
    (["--dhcp-http-ipxe-script-port=80"], "script_url", "http://192.0.2.1/auto.ipxe"),
    (["--dhcp-http-ipxe-script-scheme=https", "--dhcp-http-ipxe-script-port=443"], "script_url",
     "https://192.0.2.1/auto.ipxe"),
    (["--dhcp-http-ipxe-script-scheme=https", "--dhcp-http-ipxe-script-port=80"], "script_url",
     "https://192.0.2.1:80/auto.ipxe"),
    (["--dhcp-http-ipxe-script-scheme=http", "--dhcp-http-ipxe-script-port=443"], "script_url",
     "http://192.0.2.1:443/auto.ipxe"),
    (["--dhcp-http-ipxe-script-host=boot.example", "--dhcp-http-ipxe-script-path=/x/auto.ipxe"], "script_url",
     "http://boot.example:8080/x/auto.ipxe"),
    (["--dhcp-http-ipxe-script-url=https://boot.netboot.xyz", "--dhcp-http-ipxe-script-port=80"], "script_url",
     "https://boot.netboot.xyz"),
    (["--dhcp-http-ipxe-binary-path=/ipxe"], "http_binary_url", "http://192.0.2.1:8080/ipxe/"),
    (["--dhcp-http-ipxe-binary-path=//ipxe//"], "http_binary_url", "http://192.0.2.1:8080/ipxe/"),
    (["--dhcp-http-ipxe-binary-path=/"], "http_binary_url", "http://192.0.2.1:8080/"),
    (["--dhcp-http-ipxe-binary-port=80"], "http_binary_url", "http://192.0.2.1:80/ipxe/"),  # port always, as Smee
    (["--dhcp-http-ipxe-binary-scheme=https", "--dhcp-http-ipxe-binary-port=443"], "http_binary_url",
     "https://192.0.2.1:443/ipxe/"),
    (["--dhcp-http-ipxe-binary-host=boot.example"], "http_binary_ip", None),
    (["--dhcp-http-ipxe-binary-host=198.51.100.7"], "http_binary_ip", IP("198.51.100.7")),
    (["--dhcp-ipxe-rom-chainload=true"], "ipxe_rom_chainload", True),
    (["--dhcp-http-ipxe-script-prepend-mac=false"], "prepend_mac", False),
    (["--dhcp-ip-for-packet=192.0.2.5"], "server_ip", IP("192.0.2.5")),
    (["--dhcp-syslog-ip=192.0.2.6"], "syslog_ip", IP("192.0.2.6")),
    (["--dhcp-tftp-ip=192.0.2.7", "--dhcp-tftp-port=6969"], "tftp_url_prefix", "tftp://192.0.2.7:6969/"),
    (["--dhcp-mode=auto-proxy"], "mode", AUTO_PROXY),
    (["--public-ip=198.51.100.1"], "server_id", b4("198.51.100.1")),
]


@pytest.mark.parametrize("args,attr,expected", FROM_SETTINGS, ids=[" ".join(f[0]) for f in FROM_SETTINGS])
def test_from_settings(hwfile: str, args: list[str], attr: str, expected: Any) -> None:
    assert getattr(DHCPConfig.from_settings(settings(hwfile, *args)), attr) == expected


def test_binary_url_join_has_no_double_slash(hwfile: str) -> None:
    """smee#229: the binary URL joins to <base>/<mac>/<binary>, one slash each."""
    c = DHCPConfig.from_settings(settings(hwfile, "--dhcp-http-ipxe-binary-path=/ipxe//"))
    d = run(request(DISCOVER, opts=pxe(arch=16, cls=HTTP_CLASS)), record(), c)
    assert d.reply is not None
    assert d.reply.file == f"http://192.0.2.1:8080/ipxe/{MAC}/ipxe.efi".encode()
    assert b"//" not in d.reply.file.split(b"://", 1)[1]


def test_replace_recomputes_derived_fields() -> None:
    c = dataclasses.replace(cfg(), server_ip=IP("198.51.100.9"), tftp_ip=IP("198.51.100.10"))
    assert c.server_id == b4("198.51.100.9") and c.tftp_packed == b4("198.51.100.10")


# =========================================================================== real classify()


@pytest.mark.skipif(not REAL_CLASSIFY, reason="smee.dhcp.classify.classify is not implemented yet")
@pytest.mark.parametrize("opts,mac,mt", [
    (EXAMPLE_PXE, EXAMPLE_MAC, DISCOVER),
    ({**EXAMPLE_PXE, 77: b"Tinkerbell"}, EXAMPLE_MAC, DISCOVER),
    ({**EXAMPLE_PXE, 77: b"iPXE"}, EXAMPLE_MAC, REQUEST),
    (pxe(arch=16, cls=HTTP_CLASS), M6, DISCOVER),
    (pxe(arch=22), M6, DISCOVER),
    (pxe(arch=0), RPI_MAC, DISCOVER),
    (pxe(guid=b"\x01" + bytes(16)), M6, DISCOVER),
    ({}, M6, DISCOVER),
    (pxe(), M6, INFORM),
])
def test_oracle_agrees_with_classify(opts: dict, mac: str, mt: int) -> None:
    p = request(mt, mac, opts)
    real, mine = classify_mod.classify(p), oracle(p)
    keys = ("mac", "msg_type", "arch", "client_type", "user_class", "is_netboot", "guid", "binary", "rpi")
    assert {k: getattr(real, k) for k in keys} == {k: getattr(mine, k) for k in keys}


# =========================================================================== reloaded records


def test_reloaded_record_values_are_used() -> None:
    first = record()
    d = run(request(DISCOVER), first)
    assert d.reply is not None and d.reply.yiaddr == b4(RESERVED)
    # a reload makes a new (immutable) Interface: its own values are used
    iface = dataclasses.replace(first.interface, ip=IP("192.0.2.20"), hostname="renamed", vlan_id="5")
    second = Match(first.hardware, iface)
    d = run(request(DISCOVER, opts=pxe()), second)
    assert d.reply is not None and d.reply.yiaddr == b4("192.0.2.20") and d.reply.options[12] == b"renamed"
    assert opt43(d.reply) == {6: b"\x08", 116: b"5"}
    d = run(request(DISCOVER), first)
    assert d.reply is not None and d.reply.yiaddr == b4(RESERVED)


# =========================================================================== long boot file names


@pytest.mark.parametrize("mode", [RESERVATION, PROXY])
def test_boot_file_longer_than_the_header_field_goes_in_option_67(mode: str) -> None:
    long_url = "http://192.0.2.1:8080/" + "x" * 200 + "/auto.ipxe"
    config = cfg(mode=mode, script_url=long_url, prepend_mac=False)
    d = run(request(DISCOVER, opts=pxe(user=b"Tinkerbell")), record(), config)
    assert d.reply is not None
    assert d.reply.file == b"" and d.reply.options[67] == long_url.encode()
    assert wire_order(d.reply) == sorted(wire_order(d.reply), key=lambda c: (c == 82, c))
    # and it survives the codec (option 67 split over two TLVs, RFC 3396)
    assert parse(build(d.reply)).options[67] == long_url.encode()


def test_short_boot_file_stays_in_the_header() -> None:
    d = run(request(DISCOVER, opts=pxe(user=b"Tinkerbell")), record())
    assert d.reply is not None and d.reply.file.startswith(b"http://") and 67 not in d.reply.options


# =========================================================================== our own iPXE, by what smee served
#
# With --dhcp-ipxe-rom-chainload a foreign iPXE ROM is sent to our binary over
# TFTP. Stock binaries set no Tinkerbell user class of their own (BIOS
# undionly.kpxe never runs autoexec.ipxe), and Debian's build reports the same
# option 175.235 version (1.0.0) as many ROMs, so the request cannot tell them
# apart. smee's TFTP server records the MACs it completed a binary transfer to
# (smee.chainload.Chainloads); the protocol passes that to decide() as
# ``served``, and that is what ends the chain.

OURS = b"\x01\x00\x00"  # what Debian's 1.21.1+git20250501 binaries send (tests/test_tftp_files.py)


def ipxe_request(version: bytes | None = OURS, user: bytes | None = b"iPXE", arch: int = 7) -> tuple[Packet, dict[str, Any]]:
    """An iPXE DHCPDISCOVER with option 175 carrying ``version`` (and the classify override for the oracle)."""
    extra = {} if version is None else {"o175": bytes((0xEB, len(version))) + version + b"\x13\x01\x01"}
    p = request(DISCOVER, opts=pxe(arch=arch, user=user, **extra))
    return p, ({} if REAL_CLASSIFY else {"ipxe_version": version})


SERVED_CASES = [
    # name, chainload, served, user class, expected file
    ("rom-gets-our-binary", True, False, b"iPXE", f"tftp://{TFTP}:69/{MAC}/ipxe.efi"),
    ("our-binary-gets-the-script", True, True, b"iPXE", SCRIPT_FOR_MAC),
    ("switch-off-rom", False, False, b"iPXE", SCRIPT_FOR_MAC),
    ("switch-off-served", False, True, b"iPXE", SCRIPT_FOR_MAC),
    ("tinkerbell-always-the-script", True, False, b"Tinkerbell", SCRIPT_FOR_MAC),
    ("pxe-rom-is-unaffected", True, False, b"", "ipxe.efi"),
    ("pxe-rom-served-is-unaffected", True, True, b"", "ipxe.efi"),
]


@pytest.mark.parametrize("mode", [RESERVATION, PROXY, AUTO_PROXY])
@pytest.mark.parametrize("name,chainload,served,user,file", SERVED_CASES, ids=[c[0] for c in SERVED_CASES])
def test_chainload_ends_once_smee_served_the_binary(
    mode: str, name: str, chainload: bool, served: bool, user: bytes, file: str
) -> None:
    config = cfg(mode=mode, ipxe_rom_chainload=chainload)
    p, override = ipxe_request(user=user or None)
    d = decide(p, info(p, **override), record(), config, served)
    assert d.reply is not None, d.reason
    assert d.reply.file == file.encode() and d.reply.siaddr == b4(TFTP)


def test_served_binary_with_a_hardware_script_url() -> None:
    config = cfg(ipxe_rom_chainload=True)
    p, override = ipxe_request()
    d = decide(p, info(p, **override), record(ipxe_url="http://192.0.2.99/custom.ipxe"), config, True)
    assert d.reply is not None and d.reply.file == b"http://192.0.2.99/custom.ipxe"


@pytest.mark.parametrize("mode,sent", [(RESERVATION, True), (PROXY, False), (AUTO_PROXY, False)])
def test_missing_binary_gives_a_lease_without_boot_file(mode: str, sent: bool) -> None:
    """No snp.efi: an arm64 client still gets its address (reservation), but no boot file; proxy modes stay silent."""
    config = cfg(
        mode=mode, ipxe_rom_chainload=True,
        available_binaries=frozenset({"undionly.kpxe", "ipxe.efi", "ipxe.iso"}),
    )
    for served in (False, True):
        p, override = ipxe_request(arch=11)
        d = decide(p, info(p, **override), record(), config, served)
        if sent:
            assert d.reply is not None and d.reply.yiaddr == b4(RESERVED)
            assert d.reply.file == b"" and d.reply.siaddr == Z and 43 not in d.reply.options
            assert "snp.efi is not available" in d.reason
        else:
            assert d.reply is None and d.outcome == "no-binary"
    # and x86 UEFI, whose binary is there, is unaffected
    p, override = ipxe_request(arch=7)
    d = decide(p, info(p, **override), record(), config, True)
    assert d.reply is not None and d.reply.file == SCRIPT_FOR_MAC.encode()


def test_from_settings_knows_no_binaries() -> None:
    """from_settings alone offers every binary; makeRuntime fills in what --ipxe-dir has."""
    assert cfg().available_binaries is None


def test_runtime_loads_the_binaries_once(hwfile: str, tmp_path: Path) -> None:
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs

    from smee.dhcp.service import makeService
    from smee.tap import makeRuntime

    ipxe = tmp_path / "ipxe"
    ipxe.mkdir()
    (ipxe / "undionly.kpxe").write_bytes(b"compressed")
    (ipxe / "ipxe-amd64.efi").write_bytes(b"efi")
    s = settings(hwfile, f"--ipxe-dir={ipxe}")
    with capturedLogs() as events:
        runtime = makeRuntime(s, None, Clock())
        service = makeService(s, runtime, Clock())
    assert service.config.available_binaries == frozenset({"undionly.kpxe", "ipxe.efi"})
    assert service.chainloads is runtime.chainloads
    warned = [e["warning"] for e in events if "warning" in e]
    assert f"no snp.efi (arm64 UEFI) in {ipxe}: arm64 clients will get no boot file" in warned
    assert len(warned) == len(set(warned)), "each warning once"
    assert all(e["log_level"].name == "warn" for e in events if "warning" in e)


def test_runtime_without_binaries_still_starts(hwfile: str, tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from smee.tap import makeRuntime

    runtime = makeRuntime(settings(hwfile, f"--ipxe-dir={tmp_path / 'missing'}"), None, Clock())
    assert runtime.dhcp.available_binaries == frozenset()
    p, override = ipxe_request()
    d = decide(p, info(p, **override), record(), runtime.dhcp)
    assert d.reply is not None and d.reply.file == b"" and "not available" in d.reason


# =========================================================================== relay fields (issue 10)

#: hops, giaddr, sender → outcome (None: answer it). RFC 1542 §4.1.1 (hops), RFC 2131 §4.1 (giaddr).
RELAY_CASES = [
    (0, "0.0.0.0", "0.0.0.0", None),  # a local client
    (1, "0.0.0.0", "0.0.0.0", None),  # hops without giaddr: answered on the local segment
    (1, "192.0.2.129", "192.0.2.2", None),  # a relay (source is its upstream address)
    (MAX_HOPS, "198.51.100.1", "198.51.100.1", None),
    (MAX_HOPS + 1, "198.51.100.1", "198.51.100.1", "too-many-hops"),
    (255, "0.0.0.0", "0.0.0.0", "too-many-hops"),
    (1, "255.255.255.255", "192.0.2.2", "bad-giaddr"),
    (1, "224.0.0.1", "192.0.2.2", "bad-giaddr"),
    (1, "239.255.255.250", "192.0.2.2", "bad-giaddr"),
    (1, "240.0.0.1", "192.0.2.2", "bad-giaddr"),
    (1, "0.1.2.3", "192.0.2.2", "bad-giaddr"),
    (1, "127.0.0.1", "192.0.2.2", "bad-giaddr"),  # from the network: aims at this host
    (1, "127.0.0.1", "127.0.0.1", None),  # a relay on this host (as the loopback tests use)
    (1, "223.255.255.254", "192.0.2.2", None),  # the last class C address is unicast
    (1, "1.0.0.0", "192.0.2.2", None),
]


@pytest.mark.parametrize("hops,giaddr,source,outcome", RELAY_CASES)
def test_relay_problem(hops: int, giaddr: str, source: str, outcome: str | None) -> None:
    assert relay_problem(hops, b4(giaddr), source) == outcome
    p = dataclasses.replace(request(DISCOVER, opts=pxe(), giaddr=giaddr), hops=hops)
    refusal = relay_refusal(p, info(p), source)
    if outcome is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.reply is None and refusal.outcome == outcome
        assert MAC in refusal.reason and "DISCOVER" in refusal.reason
        assert (str(hops) if outcome == "too-many-hops" else giaddr) in refusal.reason


def test_relay_problem_without_a_source_refuses_loopback() -> None:
    assert relay_problem(1, b4("127.0.0.1")) == "bad-giaddr"
    assert relay_problem(1, b"\x7f\0\0") == "bad-giaddr"  # not 4 bytes


def test_suspect_octets_cover_every_refused_giaddr() -> None:
    # The protocol only asks relay_problem about giaddrs whose first octet is suspect.
    for first in range(256):
        refused = relay_problem(1, bytes((first, 1, 2, 3))) is not None
        assert refused == (first in SUSPECT_GIADDR_OCTETS), first
