"""classify(): Smee-HEAD's client classification (smee-study.md §1.2, vectors of §8.1) plus our extensions.

The extensions under test: option 60 values that are neither PXEClient nor
HTTPClient give client_type "" (Smee says PXEClient), RFC 3004 length-prefixed
user classes, option 175 (iPXE version), and classification of the first
DISCOVER of every real client in the captures.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pcap import capture_files, dhcp_payloads

from smee.dhcp.classify import (
    ARCH_BINARIES,
    ARCH_RPI,
    ARCH_UNKNOWN,
    RPI_OUIS,
    ClientInfo,
    classify,
)
from smee.dhcp.options import IPXE_VERSION, decode_tlv, tlv
from smee.dhcp.packet import (
    ACK,
    DECLINE,
    DISCOVER,
    INFORM,
    OFFER,
    RELEASE,
    REQUEST,
    Packet,
    build,
    parse,
)

MAC = bytes.fromhex("010203040506")
GUID = b"\x00" + bytes(range(1, 17))


def packet(options: dict[int, bytes], chaddr: bytes = MAC, hlen: int = 6) -> Packet:
    return Packet(op=1, hlen=hlen, chaddr=chaddr.ljust(16, b"\0"), options=options)


def arch93(*values: int) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in values)


def netboot_options(**overrides: bytes | None) -> dict[int, bytes]:
    """The §8.1 NewInfo vector; keyword ``oNN=None`` removes option NN, ``oNN=b"..."`` replaces it."""
    options = {
        53: bytes((DISCOVER,)),
        93: arch93(16),
        77: b"Tinkerbell",
        60: b"HTTPClient:Arch:00016:UNDI:003001",
        94: bytes.fromhex("010203040506"),
        97: GUID,
    }
    for key, value in overrides.items():
        code = int(key[1:])
        if value is None:
            options.pop(code, None)
        else:
            options[code] = value
    return options


# --- §8.1 vectors -------------------------------------------------------------------------------


def test_arch_0() -> None:
    assert classify(packet({93: arch93(0)})).arch == 0


def test_rpi_mac_without_options_is_arch_41() -> None:
    info = classify(packet({}, chaddr=bytes.fromhex("b827eb000000")))
    assert (info.arch, info.rpi, info.binary) == (ARCH_RPI, True, "snp.efi")


def test_arch_255_is_unknown() -> None:
    assert classify(packet({93: arch93(255)})).arch == ARCH_UNKNOWN


def test_no_option_93_is_unknown() -> None:
    info = classify(packet({}))
    assert (info.arch, info.binary) == (ARCH_UNKNOWN, None)


def test_new_info_http_client() -> None:
    info = classify(packet(netboot_options()))
    assert info == ClientInfo(
        mac="01:02:03:04:05:06",
        msg_type=DISCOVER,
        arch=16,
        client_type="HTTPClient",
        user_class="Tinkerbell",
        is_netboot=True,
        is_ipxe=True,
        ipxe_version=None,
        guid=GUID,
        binary="ipxe.efi",
        rpi=False,
    )


def test_new_info_pxe_client_unknown_arch() -> None:
    info = classify(packet(netboot_options(o93=arch93(255), o60=b"PXEClient:Arch:00007:UNDI:003001")))
    assert (info.client_type, info.arch, info.binary) == ("PXEClient", ARCH_UNKNOWN, None)
    # Smee's IsNetbootClient only asks for option 93 to be present; the unmapped arch is the policy's business.
    assert info.is_netboot


NETBOOT_FAILURES: dict[str, dict[str, bytes | None]] = {
    "inform": {"o53": bytes((INFORM,))},
    "offer": {"o53": bytes((OFFER,))},
    "ack": {"o53": bytes((ACK,))},
    "decline": {"o53": bytes((DECLINE,))},
    "release": {"o53": bytes((RELEASE,))},
    "no-msg-type": {"o53": None},
    "msg-type-wrong-length": {"o53": b"\x01\x01"},
    "no-60": {"o60": None},
    "60-BadClient": {"o60": b"BadClient"},
    "60-other-vendor": {"o60": b"udhcp 1.35"},
    "60-lowercase": {"o60": b"pxeclient:Arch:00000"},
    "no-93": {"o93": None},
    "no-94": {"o94": None},
    "97-first-byte-1": {"o97": b"\x01" + GUID[1:]},
    "97-two-bytes": {"o97": b"\x00\x01"},
    "97-sixteen-bytes": {"o97": GUID[:16]},
    "97-eighteen-bytes": {"o97": GUID + b"\x00"},
}


@pytest.mark.parametrize("overrides", NETBOOT_FAILURES.values(), ids=NETBOOT_FAILURES.keys())
def test_is_netboot_fails(overrides: dict[str, bytes | None]) -> None:
    assert not classify(packet(netboot_options(**overrides))).is_netboot


NETBOOT_PASSES: dict[str, dict[str, bytes | None]] = {
    "discover": {},
    "request": {"o53": bytes((REQUEST,))},
    "97-empty": {"o97": b""},
    "97-absent": {"o97": None},
    "pxeclient": {"o60": b"PXEClient:Arch:00000:UNDI:002001"},
    "bare-pxeclient": {"o60": b"PXEClient"},
    "93-empty": {"o93": b""},
    "94-empty": {"o94": b""},
    "no-user-class": {"o77": None},
}


@pytest.mark.parametrize("overrides", NETBOOT_PASSES.values(), ids=NETBOOT_PASSES.keys())
def test_is_netboot_passes(overrides: dict[str, bytes | None]) -> None:
    assert classify(packet(netboot_options(**overrides))).is_netboot


# --- §1.2 architecture table --------------------------------------------------------------------

#: Written out again (not derived from ARCH_BINARIES) so that a wrong table entry fails here.
EXPECTED_BINARY: dict[int, str] = {
    **dict.fromkeys((0, 1, 2, 3, 4, 5), "undionly.kpxe"),
    **dict.fromkeys((6, 7, 8, 9, 15, 16), "ipxe.efi"),
    **dict.fromkeys((10, 11, 18, 19), "snp.efi"),
}


@pytest.mark.parametrize("value", range(37))
def test_known_arch(value: int) -> None:
    info = classify(packet({93: arch93(value)}))
    assert info.arch == value
    assert info.binary == EXPECTED_BINARY.get(value)
    assert not info.rpi


@pytest.mark.parametrize("value", [37, 40, 41, 254, 255, 256, 0x0100 | 7, 0xFFFF])
def test_unknown_arch_from_non_pi(value: int) -> None:
    info = classify(packet({93: arch93(value)}))
    assert (info.arch, info.binary) == (ARCH_UNKNOWN, None)


def test_binary_table_matches_module_table() -> None:
    assert ARCH_BINARIES == {**EXPECTED_BINARY, ARCH_RPI: "snp.efi"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((41, 11), 11),
        ((255, 7), 7),
        ((37, 300, 0), 0),
        ((9, 7), 9),
        ((37, 255), ARCH_UNKNOWN),
        ((), ARCH_UNKNOWN),
    ],
)
def test_first_known_arch_wins(values: tuple[int, ...], expected: int) -> None:
    assert classify(packet({93: arch93(*values)})).arch == expected


@pytest.mark.parametrize(("raw", "expected"), [(b"\x00\x07\x00", 7), (b"\x00", ARCH_UNKNOWN), (b"\x07", ARCH_UNKNOWN)])
def test_odd_length_option_93_uses_complete_values(raw: bytes, expected: int) -> None:
    assert classify(packet({93: raw})).arch == expected


@pytest.mark.parametrize("oui", sorted(RPI_OUIS))
@pytest.mark.parametrize("opt93", [None, arch93(0), arch93(11), arch93(41), arch93(255)], ids=["none", "0", "11", "41", "255"])
def test_rpi_oui_is_arch_41_whatever_93_says(oui: str, opt93: bytes | None) -> None:
    chaddr = bytes.fromhex(oui.replace(":", "")) + b"\x12\x34\x56"
    info = classify(packet({} if opt93 is None else {93: opt93}, chaddr=chaddr))
    assert (info.arch, info.binary, info.rpi) == (ARCH_RPI, "snp.efi", True)
    assert info.mac.startswith(oui)


def test_pi5_netboot_request() -> None:
    """The Pi 5 sends a full PXE DISCOVER with 93 = 0; it still gets the ARM binary."""
    options = netboot_options(o93=arch93(0), o60=b"PXEClient:Arch:00000:UNDI:002001", o77=None)
    info = classify(packet(options, chaddr=bytes.fromhex("d83add123456")))
    assert (info.arch, info.binary, info.is_netboot, info.is_ipxe) == (ARCH_RPI, "snp.efi", True, False)


def test_rpi_needs_three_address_bytes() -> None:
    """A Pi OUI beyond hlen is not the client's address (Smee matches the hlen-long hardware address)."""
    info = classify(packet({93: arch93(0)}, chaddr=bytes.fromhex("b827eb000000"), hlen=2))
    assert (info.rpi, info.arch, info.mac) == (False, 0, "b8:27")


def test_non_pi_oui_is_not_rpi() -> None:
    info = classify(packet({93: arch93(41)}, chaddr=bytes.fromhex("b827ec000000")))
    assert (info.rpi, info.arch) == (False, ARCH_UNKNOWN)


# --- option 60 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vendor", "expected"),
    [
        (b"HTTPClient:Arch:00016:UNDI:003001", "HTTPClient"),
        (b"HTTPClient", "HTTPClient"),
        (b"PXEClient:Arch:00000:UNDI:002001", "PXEClient"),
        (b"PXEClient", "PXEClient"),
        (b"udhcp 1.35", ""),
        (b"MSFT 5.0", ""),
        (b"BadClient", ""),
        (b"", ""),
        (b"\xff\x00PXEClient", ""),
        (None, ""),
    ],
)
def test_client_type(vendor: bytes | None, expected: str) -> None:
    assert classify(packet({} if vendor is None else {60: vendor})).client_type == expected


# --- option 77 and option 175 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "is_ipxe"),
    [
        (b"iPXE", "iPXE", True),
        (b"Tinkerbell", "Tinkerbell", True),
        (b"iPXE\0", "iPXE", True),
        (b"Tinkerbell\0\0", "Tinkerbell", True),
        (b"\x04iPXE", "iPXE", True),
        (b"\x0aTinkerbell", "Tinkerbell", True),
        (b"\x04iPXE\0", "iPXE", True),
        (b"\x0aTinkerbell\x04iPXE", "Tinkerbell", True),
        (b"\x04iPXE\x0aTinkerbell", "iPXE", True),
        (b"\x03foo\x04iPXE", "foo", False),
        (b"foo", "foo", False),
        (b"ipxe", "ipxe", False),
        (b"", "", False),
        (b"\0", "", False),
        # Not RFC 3004 (bad length / empty item / non-printable item): taken as a plain string.
        (b"\x05iPXE", "\x05iPXE", False),
        (b"\x04iPX", "\x04iPX", False),
        (b"\x04iPXE\x00\x02ab", "\x04iPXE\x02ab", False),
        (b"\x02a\x01", "\x02a\x01", False),
        (b"\xffiPXE", "\ufffdiPXE", False),
        (b"iP\0XE", "iPXE", True),
    ],
)
def test_user_class(raw: bytes, expected: str, is_ipxe: bool) -> None:
    info = classify(packet({77: raw}))
    assert (info.user_class, info.is_ipxe) == (expected, is_ipxe)


def test_no_user_class() -> None:
    assert classify(packet({})).user_class == ""


@pytest.mark.parametrize(
    ("raw", "version"),
    [
        (bytes.fromhex("eb03011501"), b"\x01\x15\x01"),
        (bytes.fromhex("100102150101eb03020000"), b"\x02\x00\x00"),
        (bytes.fromhex("00eb03010000ff"), b"\x01\x00\x00"),
        (bytes.fromhex("100102"), None),
        (b"", None),
        (bytes.fromhex("eb05010203"), None),  # truncated sub-option: ignored, not an error
        (bytes.fromhex("eb"), None),
    ],
)
def test_option_175(raw: bytes, version: bytes | None) -> None:
    info = classify(packet({175: raw}))
    assert (info.ipxe_version, info.is_ipxe, info.user_class) == (version, True, "")


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.integers(1, 254), st.binary(max_size=12), max_size=20),
    st.binary(max_size=4).filter(lambda b: b"\xeb" not in b),  # a truncated/garbage tail, no second 235
)
def test_option_175_version_matches_decode_tlv(subs: dict[int, bytes], tail: bytes) -> None:
    """The early-exit scan agrees with options.decode_tlv (the codec's sub-option reader) on iPXE-style data."""
    raw = tlv(subs.items()) + tail
    decoded = decode_tlv(raw)
    assert classify(packet({175: raw})).ipxe_version == decoded.get(IPXE_VERSION)


def test_no_option_175() -> None:
    info = classify(packet({77: b"foo"}))
    assert (info.ipxe_version, info.is_ipxe) == (None, False)


def test_guid_is_raw_option_97() -> None:
    assert classify(packet({97: b"\x01\x02"})).guid == b"\x01\x02"
    assert classify(packet({97: b""})).guid == b""
    assert classify(packet({})).guid is None


# --- real clients from the captures --------------------------------------------------------------


def _first_discovers() -> dict[str, tuple[str, Packet]]:
    """First DISCOVER of each distinct client fingerprint (MAC, option codes in order, 60, 77, 175)."""
    seen: dict[str, tuple[str, Packet]] = {}
    for path in capture_files():
        for datagram in dhcp_payloads(path):
            p = parse(datagram.payload)
            if p.msg_type != DISCOVER:
                continue
            o = p.options
            key = f"{p.mac} {list(o)} {o.get(60)!r} {o.get(77)!r} {o.get(175, b'').hex()}"
            seen.setdefault(key, (path.name, p))
    return seen


FIRST_DISCOVERS = _first_discovers()


Expected = tuple[int, str, str, bool, bool, str | None]


def _expected(p: Packet) -> tuple[Expected, bool]:
    """(arch, client_type, user_class, is_netboot, is_ipxe, binary) and "has a 17-byte GUID" per client kind.

    The kinds are those of CLIENT-FINGERPRINTS.txt; an unknown one fails the test.
    """
    uc = (p.options.get(77) or b"").decode()
    if p.mac == "52:54:00:00:00:01":  # SeaBIOS + iPXE ROM (iPXE), then chainloaded undionly.kpxe (Tinkerbell)
        assert uc in ("iPXE", "Tinkerbell")
        return (0, "PXEClient", uc, True, True, "undionly.kpxe"), True
    if p.mac == "52:54:00:00:00:02" and not uc:  # OVMF's own EDK2 PXE
        return (7, "PXEClient", "", True, False, "ipxe.efi"), True
    if p.mac == "52:54:00:00:00:02":  # iPXE EFI (e1000 ROM: iPXE; chainloaded: Tinkerbell)
        assert uc in ("iPXE", "Tinkerbell")
        return (7, "PXEClient", uc, True, True, "ipxe.efi"), True
    if p.mac == "02:00:00:00:00:10" and 60 in p.options:  # udhcpc -V PXEClient:…, but no option 93/94
        return (ARCH_UNKNOWN, "PXEClient", "", False, False, None), False
    if p.mac == "02:00:00:00:00:10":  # dhclient
        return (ARCH_UNKNOWN, "", "", False, False, None), False
    raise AssertionError(f"a client nobody described: {p}")


@pytest.mark.parametrize("key", FIRST_DISCOVERS, ids=[f"{f}:{k[:60]}" for k, (f, _) in FIRST_DISCOVERS.items()])
def test_captured_client(key: str) -> None:
    _, p = FIRST_DISCOVERS[key]
    info = classify(p)
    expected, has_guid = _expected(p)
    assert (info.arch, info.client_type, info.user_class, info.is_netboot, info.is_ipxe, info.binary) == expected
    assert (info.mac, info.msg_type, info.rpi) == (p.mac, DISCOVER, False)
    if has_guid:
        assert info.guid is not None and len(info.guid) == 17 and info.guid[0] == 0
    else:
        assert info.guid is None
    if info.is_ipxe:
        assert info.ipxe_version in (b"\x01\x00\x00", b"\x02\x00\x00")
    else:
        assert info.ipxe_version is None


def test_captures_cover_every_client_kind() -> None:
    kinds = {
        (p.mac, p.options.get(77), 60 in p.options, 93 in p.options) for _, p in FIRST_DISCOVERS.values()
    }
    assert kinds == {
        ("52:54:00:00:00:01", b"iPXE", True, True),
        ("52:54:00:00:00:01", b"Tinkerbell", True, True),
        ("52:54:00:00:00:02", None, True, True),
        ("52:54:00:00:00:02", b"iPXE", True, True),
        ("52:54:00:00:00:02", b"Tinkerbell", True, True),
        ("02:00:00:00:00:10", None, True, False),
        ("02:00:00:00:00:10", None, False, False),
    }


def test_every_captured_request_classifies() -> None:
    """REQUESTs keep the DISCOVER's classification; replies from the server are never netboot clients."""
    for path in capture_files():
        for datagram in dhcp_payloads(path):
            p = parse(datagram.payload)
            info = classify(p)
            if p.op == 2:
                assert not info.is_netboot
            elif p.msg_type == REQUEST and p.mac != "02:00:00:00:00:10":
                assert info.is_netboot and info.binary is not None


# --- robustness ----------------------------------------------------------------------------------

INTERESTING = [53, 57, 60, 61, 77, 93, 94, 97, 175]


@settings(max_examples=300, deadline=None)
@given(
    options=st.dictionaries(st.sampled_from(INTERESTING), st.binary(max_size=40), max_size=len(INTERESTING)),
    chaddr=st.binary(max_size=16),
    hlen=st.integers(0, 16),
)
def test_classify_never_raises_and_is_consistent(options: dict[int, bytes], chaddr: bytes, hlen: int) -> None:
    info = classify(packet(options, chaddr=chaddr, hlen=hlen))
    assert info.arch in range(37) or info.arch in (ARCH_RPI, ARCH_UNKNOWN)
    assert info.binary == ARCH_BINARIES.get(info.arch)
    assert info.client_type in ("", "PXEClient", "HTTPClient")
    assert "\0" not in info.user_class
    assert not info.is_netboot or (info.client_type and 93 in options and 94 in options)
    assert info.rpi == (info.arch == ARCH_RPI)
    assert info.guid == options.get(97)


def test_round_trip_through_codec_keeps_classification() -> None:
    p = packet(netboot_options())
    assert classify(parse(build(p))) == classify(p)

