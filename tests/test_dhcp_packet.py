"""DHCPv4 codec: real captured packets, RFC 3396 long options, option 52 overload, errors, properties.

Pure bytes: no sockets. The property tests hold the codec to its one
promise for the protocol layer: ``parse`` returns a Packet or raises
DHCPParseError, never anything else, and what it accepts classify() can read.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pcap import capture_files, dhcp_payloads

from smee.dhcp.classify import classify
from smee.dhcp.packet import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    DEFAULT_MAX_SIZE,
    DISCOVER,
    MAGIC,
    MIN_SIZE,
    OFFER,
    DHCPParseError,
    Packet,
    PacketTooLarge,
    _parse_options,
    build,
    parse,
)

CAPTURED: list[tuple[str, int, bytes]] = [
    (path.name, i, d.payload) for path in capture_files() for i, d in enumerate(dhcp_payloads(path))
]
PAYLOADS = [payload for _, _, payload in CAPTURED]
CHAINLOAD = "bios_seabios-ipxe-rom__debian-undionly__chainload-loop.pcap"


def captured(name: str, index: int) -> bytes:
    return next(p for n, i, p in CAPTURED if n == name and i == index)


def raw_message(
    options: bytes, *, op: int = BOOTREQUEST, hlen: int = 6, sname: bytes = b"", file: bytes = b"", magic: bytes = MAGIC
) -> bytes:
    """A hand-made message: fixed header, the given raw options field (not terminated for you)."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        op, 1, hlen, 0, 0x12345678, 0, 0, b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4,
        bytes.fromhex("525400000001").ljust(16, b"\0"), sname.ljust(64, b"\0"), file.ljust(128, b"\0"),
    )
    return header + magic + options


# --- real captures ----------------------------------------------------------------------------


def test_captures_present() -> None:
    assert len(CAPTURED) >= 90  # 96 DHCP datagrams in 8 files when written


@pytest.mark.parametrize("payload", PAYLOADS, ids=[f"{n}#{i}" for n, i, _ in CAPTURED])
def test_captured_packet_decodes_and_round_trips(payload: bytes) -> None:
    p = parse(payload)
    assert p.msg_type is not None
    assert p.op == (BOOTREQUEST if p.msg_type in (1, 3, 4, 7, 8) else BOOTREPLY)
    assert parse(build(p)) == p
    # Every captured sender pads and orders like we do: byte-exact.
    assert build(p) == payload


def test_ipxe_rom_discover_fields() -> None:
    p = parse(captured(CHAINLOAD, 0))
    assert (p.op, p.xid, p.mac, p.msg_type, p.flags, p.secs) == (BOOTREQUEST, 0x125FE733, "52:54:00:00:00:01", DISCOVER, 0, 4)
    assert list(p.options) == [53, 57, 93, 94, 60, 77, 55, 175, 61, 97]
    assert p.options[60] == b"PXEClient:Arch:00000:UNDI:002001"
    assert p.options[77] == b"iPXE"
    assert p.options[93] == b"\0\0"
    assert p.options[97] == bytes.fromhex("0011111111222233334444000000000001")
    assert p.max_size() == 1472 - 28
    assert (p.ciaddr, p.yiaddr, p.siaddr, p.giaddr) == (b"\0" * 4,) * 4
    assert (p.sname, p.file) == (b"", b"")
    assert len(captured(CHAINLOAD, 0)) == 400


def test_offer_fields() -> None:
    p = parse(captured(CHAINLOAD, 2))
    assert (p.op, p.xid, p.msg_type) == (BOOTREPLY, 0x125FE733, OFFER)
    assert p.yiaddr == bytes([192, 0, 2, 135])
    assert list(p.options) == [53, 54, 51, 67, 58, 59, 1, 28, 3]
    assert p.options[54] == bytes([192, 0, 2, 1])


def test_ack_with_boot_file_in_header() -> None:
    p = parse(captured("linux_udhcpc-then-dhclient.pcap", 5))
    assert (p.msg_type, p.file, p.sname) == (ACK, b"undionly.kpxe", b"")


def test_edk2_discover_option_order() -> None:
    p = parse(captured("uefi_ovmf-edk2-pxe__tinkerbell-ipxe-efi.pcap", 0))
    assert (p.mac, p.flags) == ("52:54:00:00:00:02", 0x8000)
    assert list(p.options) == [53, 57, 55, 97, 94, 93, 60]
    assert p.options[93] == b"\0\x07"


def test_dhclient_discover() -> None:
    p = parse(captured("linux_udhcpc-then-dhclient.pcap", 6))
    assert (p.xid, p.msg_type, list(p.options), p.options[12]) == (0x53A18032, DISCOVER, [53, 12, 55], b"vm")
    assert p.max_size() == DEFAULT_MAX_SIZE


# --- RFC 3396 long options ----------------------------------------------------------------------


def test_repeated_code_is_concatenated_in_order() -> None:
    p = parse(raw_message(b"\x2b\x02ab" + b"\x3c\x01x" + b"\x2b\x02cd" + b"\x00\x00" + b"\x2b\x00" + b"\xff"))
    assert p.options == {43: b"abcd", 60: b"x"}
    assert list(p.options) == [43, 60]


def test_600_byte_option_split_255_255_90() -> None:
    value = bytes(range(256)) * 2 + bytes(88)
    assert len(value) == 600
    wire = build(Packet(op=BOOTREPLY, options={53: b"\x02", 43: value}))
    opts = wire[240:]
    assert opts[:3] == b"\x35\x01\x02"
    assert opts[3:5] == b"\x2b\xff" and opts[5:260] == value[:255]
    assert opts[260:262] == b"\x2b\xff" and opts[262:517] == value[255:510]
    assert opts[517:519] == b"\x2b\x5a" and opts[519:609] == value[510:]
    assert opts[609:] == b"\xff"
    assert parse(wire).options[43] == value


@pytest.mark.parametrize("length", [0, 1, 254, 255, 256, 510, 511])
def test_long_option_boundaries(length: int) -> None:
    value = b"v" * length
    wire = build(Packet(op=BOOTREPLY, options={43: value}))
    assert parse(wire).options == {43: value}
    assert wire.count(b"\x2b") == max(1, -(-length // 255))


# --- option 52 overload: parse ------------------------------------------------------------------


def test_overload_file() -> None:
    p = parse(raw_message(b"\x34\x01\x01\x35\x01\x02\xff", file=b"\x43\x03abc\xff", sname=b"server"))
    assert p.options == {53: b"\x02", 67: b"abc"}
    assert (p.file, p.sname) == (b"", b"server")


def test_overload_sname() -> None:
    p = parse(raw_message(b"\x34\x01\x02\x35\x01\x02\xff", sname=b"\x42\x03tft\xff", file=b"boot.efi"))
    assert p.options == {53: b"\x02", 66: b"tft"}
    assert (p.file, p.sname) == (b"boot.efi", b"")


def test_overload_both_concatenates_options_file_sname() -> None:
    p = parse(
        raw_message(
            b"\x2b\x02op\x34\x01\x03\xff",
            file=b"\x2b\x04file\x0c\x01h\xff",
            sname=b"\x2b\x05sname\xff",
        )
    )
    assert p.options == {43: b"opfilesname", 12: b"h"}
    assert list(p.options) == [43, 12]
    assert (p.file, p.sname) == (b"", b"")


def test_overload_fields_without_end_and_with_pad() -> None:
    p = parse(raw_message(b"\x34\x01\x03", file=b"\x00\x00\x0c\x01h", sname=b"\x0f\x01d"))
    assert p.options == {12: b"h", 15: b"d"}


@pytest.mark.parametrize("value", [b"\x00", b"\x04", b"\xff", b"\x01\x01", b""])
def test_bad_overload_value(value: bytes) -> None:
    with pytest.raises(DHCPParseError, match="overload"):
        parse(raw_message(bytes((52, len(value))) + value + b"\xff"))


def test_overload_with_garbage_in_file_is_an_error() -> None:
    """A file name where options were promised: here its first bytes read as a length past the field."""
    with pytest.raises(DHCPParseError, match="file"):
        parse(raw_message(b"\x34\x01\x01\xff", file=b"\x0c\xc8" + b"vmlinuz"))


# --- option 52 overload: build ------------------------------------------------------------------


def _many(count: int, size: int, first: int = 100) -> dict[int, bytes]:
    return {53: b"\x02", **{code: bytes([code]) * size for code in range(first, first + count)}}


def test_build_spills_into_file() -> None:
    p = Packet(op=BOOTREPLY, xid=7, options=_many(8, 40))  # 3 + 8*42 + 1 = 340 > 548 - 240
    wire = build(p, max_size=548)
    assert len(wire) <= 548
    assert b"\x34\x01\x01\xff" in wire[240:]
    assert wire[108] in range(100, 108)  # the file field starts with an option
    q = parse(wire)
    assert q.options == p.options and list(q.options) == list(p.options)
    assert q == p


def test_build_spills_into_file_and_sname() -> None:
    p = Packet(op=BOOTREPLY, options=_many(11, 40))  # main 304 + file 127 + sname 63 room
    wire = build(p, max_size=548)
    assert len(wire) <= 548
    assert b"\x34\x01\x03\xff" in wire[240:]
    assert wire[44] in range(100, 111) and wire[108] in range(100, 111)
    assert parse(wire) == p


def test_build_spills_into_sname_only_when_file_is_used() -> None:
    p = Packet(op=BOOTREPLY, file=b"undionly.kpxe", options=_many(8, 40))
    wire = build(p, max_size=548)
    assert b"\x34\x01\x02\xff" in wire[240:]
    assert wire[108:236] == b"undionly.kpxe".ljust(128, b"\0")
    q = parse(wire)
    assert q == p and q.file == b"undionly.kpxe"


def test_build_overload_places_largest_first() -> None:
    """A big option late in the list still gets the options field; small early ones move out instead."""
    p = Packet(op=BOOTREPLY, options={53: b"\x02", **{c: b"s" * 20 for c in range(100, 106)}, 43: b"x" * 200})
    wire = build(p, max_size=548)  # 3 + 6*22 + 202 = 337 > 308; 43 only fits the options field
    assert len(wire) <= 548
    assert wire[240:243] == b"\x35\x01\x02"  # message type stays first in the options field
    assert wire[108] in range(100, 106)
    q = parse(wire)
    assert q == p and q.options[43] == b"x" * 200


def test_build_too_large_even_with_overload() -> None:
    with pytest.raises(PacketTooLarge):
        build(Packet(op=BOOTREPLY, options=_many(20, 40)), max_size=548)
    with pytest.raises(PacketTooLarge):
        build(Packet(op=BOOTREPLY, file=b"f", sname=b"s", options=_many(8, 40)), max_size=548)
    with pytest.raises(PacketTooLarge):  # one option larger than any field
        build(Packet(op=BOOTREPLY, options={53: b"\x02", 43: b"x" * 400}), max_size=548)


def test_build_fits_without_overload_at_the_limit() -> None:
    p = Packet(op=BOOTREPLY, options={43: b"x" * 255, 60: b"y" * 48})  # 240 + 257 + 50 + 1 = 548
    wire = build(p, max_size=548)
    assert len(wire) == 548 and wire[-1] == 0xFF and wire[108:236] == bytes(128)
    assert parse(wire) == p
    wire = build(p, max_size=547)  # one byte less: option 60 moves to the file field
    assert len(wire) <= 547 and wire[108:110] == b"\x3c\x30"
    assert parse(wire) == p


def test_default_max_size_is_one_ethernet_frame() -> None:
    """Without the request's max_size, replies still fit a 1500-byte MTU unfragmented (1472 + 28)."""
    big = {43: b"x" * 255, 60: b"y" * 255, 61: b"z" * 255, 62: b"w" * 255}
    fits = Packet(op=BOOTREPLY, options={**big, 12: b"v" * 100, 13: b"u" * 99})
    assert len(build(fits)) == 240 + 4 * 257 + 102 + 101 + 1 == 1472
    spills = Packet(op=BOOTREPLY, options={**fits.options, 14: b"\x01"})
    wire = build(spills)
    assert len(wire) <= 1472 and b"\x34\x01\x01" in wire[240:]
    assert wire[108:110] == b"\x0d\x63"  # option 13 moved to the file field
    assert parse(wire) == spills


def test_sname_or_file_too_long() -> None:
    with pytest.raises(PacketTooLarge):
        build(Packet(op=BOOTREPLY, sname=b"s" * 65))
    with pytest.raises(PacketTooLarge):
        build(Packet(op=BOOTREPLY, file=b"f" * 129))
    full = Packet(op=BOOTREPLY, sname=b"s" * 64, file=b"f" * 128)
    assert parse(build(full)) == full


# --- header fields and padding ------------------------------------------------------------------


def test_padded_to_300_bytes() -> None:
    wire = build(Packet(op=BOOTREPLY, options={53: b"\x02"}))
    assert len(wire) == MIN_SIZE
    assert wire[240:244] == b"\x35\x01\x02\xff"
    assert wire[244:] == bytes(MIN_SIZE - 244)


def test_not_padded_when_longer() -> None:
    wire = build(Packet(op=BOOTREPLY, options={43: b"x" * 100}))
    assert len(wire) == 240 + 102 + 1 and wire[-1] == 0xFF


def test_sname_and_file_nul_padded() -> None:
    p = Packet(op=BOOTREPLY, sname=b"tftp.example", file=b"undionly.kpxe")
    wire = build(p)
    assert wire[44:108] == b"tftp.example".ljust(64, b"\0")
    assert wire[108:236] == b"undionly.kpxe".ljust(128, b"\0")
    assert wire[236:240] == MAGIC
    assert parse(wire) == p


def test_sname_file_cut_at_first_nul() -> None:
    p = parse(raw_message(b"\xff", sname=b"srv\0junk", file=b"boot.efi\0\x01\x02"))
    assert (p.sname, p.file) == (b"srv", b"boot.efi")


def test_header_round_trip() -> None:
    p = Packet(
        op=BOOTREPLY, htype=1, hlen=6, hops=3, xid=0xDEADBEEF, secs=65535, flags=0x8000,
        ciaddr=b"\x01\x02\x03\x04", yiaddr=b"\xc0\x00\x02\x0a", siaddr=b"\xc0\x00\x02\x01", giaddr=b"\x0a\x00\x00\x01",
        chaddr=bytes(range(16)), sname=b"s", file=b"f", options={53: b"\x05", 54: b"\xc0\x00\x02\x01"},
    )
    assert parse(build(p)) == p
    assert p.mac == "00:01:02:03:04:05"


def test_mac_and_msg_type() -> None:
    assert Packet(op=1, hlen=0).mac == ""
    assert Packet(op=1, hlen=16, chaddr=bytes(range(16))).mac.count(":") == 15
    assert Packet(op=1).msg_type is None
    assert Packet(op=1, options={53: b""}).msg_type is None
    assert Packet(op=1, options={53: b"\x01\x01"}).msg_type is None
    assert Packet(op=1, options={53: b"\x03"}).msg_type == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 548),
        ((1472).to_bytes(2, "big"), 1444),
        ((576).to_bytes(2, "big"), 548),
        ((1500).to_bytes(2, "big"), 1472),
        ((100).to_bytes(2, "big"), 548),
        (b"\x00\x00", 548),
        ((65535).to_bytes(2, "big"), 65507),
        (b"\x05", 548),
        (b"\x05\xc0\x00", 548),
        (b"", 548),
    ],
)
def test_max_size(value: bytes | None, expected: int) -> None:
    p = Packet(op=BOOTREQUEST, options={} if value is None else {57: value})
    assert p.max_size() == expected


@pytest.mark.parametrize(
    "packet",
    [
        Packet(op=BOOTREPLY, options={0: b"x"}),
        Packet(op=BOOTREPLY, options={255: b"x"}),
        Packet(op=BOOTREPLY, options={52: b"\x01"}),
        Packet(op=BOOTREPLY, options={256: b"x"}),
        Packet(op=BOOTREPLY, options={-1: b"x"}),
        Packet(op=3),
        Packet(op=BOOTREPLY, yiaddr=b"\x01\x02\x03"),
        Packet(op=BOOTREPLY, giaddr=b"\x01\x02\x03\x04\x05"),
        Packet(op=BOOTREPLY, chaddr=bytes(17)),
        Packet(op=BOOTREPLY, hlen=17),
    ],
)
def test_build_rejects_unrepresentable_packets(packet: Packet) -> None:
    with pytest.raises(ValueError):
        build(packet)


# --- parse errors -------------------------------------------------------------------------------

ERRORS: dict[str, bytes] = {
    "empty": b"",
    "short": raw_message(b"")[:239],
    "header-only": raw_message(b"")[:236],
    "bad-cookie": raw_message(b"\xff", magic=b"\x63\x82\x53\x64"),
    "zero-cookie": raw_message(b"\xff", magic=b"\0\0\0\0"),
    "op-0": raw_message(b"\xff", op=0),
    "op-3": raw_message(b"\xff", op=3),
    "hlen-17": raw_message(b"\xff", hlen=17),
    "hlen-255": raw_message(b"\xff", hlen=255),
    "option-without-length": raw_message(b"\x35\x01\x01\x0c"),
    "option-past-end": raw_message(b"\x35\x01\x01\x0c\x05abc"),
    "option-past-end-by-one": raw_message(b"\x0c\x04abc"),
    "bad-overload": raw_message(b"\x34\x01\x07\xff"),
    "overload-file-truncated": raw_message(b"\x34\x01\x01\xff", file=b"\x00" * 126 + b"\x0c\x05"),
    "overload-sname-no-length": raw_message(b"\x34\x01\x02\xff", sname=b"\x00" * 63 + b"\x0c"),
}


@pytest.mark.parametrize("data", ERRORS.values(), ids=ERRORS.keys())
def test_parse_errors(data: bytes) -> None:
    with pytest.raises(DHCPParseError):
        parse(data)


def test_lenient_inputs_accepted() -> None:
    assert parse(raw_message(b"")).options == {}  # exactly 240 bytes, no END
    assert parse(raw_message(b"\x35\x01\x01")).msg_type == DISCOVER  # no END (several ROMs)
    assert parse(raw_message(b"\x35\x01\x01\xff\x0c\x09garbage")).options == {53: b"\x01"}  # after END: ignored
    assert parse(raw_message(b"\x00" * 20 + b"\x35\x01\x01\xff")).options == {53: b"\x01"}
    assert parse(raw_message(b"\xff", hlen=16)).hlen == 16


# --- properties ---------------------------------------------------------------------------------


def _parse_or_error(data: bytes) -> None:
    """parse() returns a Packet or raises DHCPParseError; on a Packet, classify() and a rebuild work too."""
    try:
        p = parse(data)
    except DHCPParseError:
        return
    assert isinstance(p, Packet)
    classify(p)
    assert parse(build(p, max_size=1 << 20)) == p


_header_then_garbage = st.builds(
    lambda op, hlen, tail, sname, file: raw_message(tail, op=op, hlen=hlen, sname=sname, file=file),
    st.sampled_from([0, 1, 2, 3]),
    st.integers(0, 20),
    st.binary(max_size=400),
    st.one_of(st.just(b""), st.binary(max_size=64)),
    st.one_of(st.just(b""), st.binary(max_size=128)),
)
_option_soup = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 255), st.binary(max_size=20)).map(lambda t: bytes((t[0], len(t[1]))) + t[1]),
        st.sampled_from([b"\x00", b"\xff", b"\x34\x01\x01", b"\x34\x01\x02", b"\x34\x01\x03", b"\x35\x01\x01"]),
        st.binary(max_size=3),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600), _header_then_garbage))
def test_random_bytes_parse_or_dhcp_error(data: bytes) -> None:
    _parse_or_error(data)


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        lambda opts, file, sname: raw_message(opts, file=file, sname=sname),
        _option_soup,
        _option_soup.map(lambda b: b[:128]),
        _option_soup.map(lambda b: b[:64]),
    )
)
def test_option_soup_parse_or_dhcp_error(data: bytes) -> None:
    """Structured garbage: plausible TLVs, overload flags, PAD/END, stray bytes, in all three areas."""
    _parse_or_error(data)


_flip = st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255))
_mutation = st.one_of(
    _flip,
    _flip,
    _flip,
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for kind, where, arg in mutations:
        at = min(where, len(buf))  # earlier deletions may have shortened it
        if kind == "flip" and at < len(buf):
            buf[at] ^= arg  # type: ignore[operator]
        elif kind == "insert":
            buf[at:at] = arg  # type: ignore[assignment]
        elif kind == "delete":
            del buf[at : at + arg]  # type: ignore[operator]
        elif kind == "truncate":
            del buf[at:]
    return bytes(buf)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PAYLOADS), st.lists(_mutation, min_size=1, max_size=6))
def test_mutated_captures_parse_or_dhcp_error(payload: bytes, mutations: list[tuple[str, int, object]]) -> None:
    # Mostly hit the options area, where the interesting structure is; the header gets only some
    # flips (a shifted header mostly tests the cookie check, which the error tests already cover).
    mutations = [
        (k, w % 240 if k == "flip" and w % 8 == 7 else 240 + w % max(1, len(payload) - 240), a)
        for k, w, a in mutations
    ]
    _parse_or_error(_mutate(payload, mutations))


_codes = st.integers(1, 254).filter(lambda c: c != 52)
_options = st.dictionaries(_codes, st.binary(max_size=600), max_size=12)


@settings(max_examples=200, deadline=None)
@given(_options, st.binary(max_size=64).map(lambda b: b.replace(b"\0", b"")), st.binary(max_size=128).map(lambda b: b.replace(b"\0", b"")))
def test_build_parse_round_trip(options: dict[int, bytes], sname: bytes, file: bytes) -> None:
    p = Packet(op=BOOTREPLY, xid=1, sname=sname, file=file, options=options)
    wire = build(p, max_size=1 << 20)
    assert len(wire) >= MIN_SIZE
    q = parse(wire)
    assert q == p
    assert list(q.options) == list(options)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_codes, st.binary(max_size=120), max_size=12), st.sampled_from([300, 548, 576, 700]))
def test_overload_round_trip(options: dict[int, bytes], max_size: int) -> None:
    p = Packet(op=BOOTREPLY, options=options)
    try:
        wire = build(p, max_size=max_size)
    except PacketTooLarge:
        # Only when the options really cannot fit in all three areas together.
        total = sum(len(v) + 2 * max(1, -(-len(v) // 255)) for v in options.values())
        assert total > max_size - 240 - 4
        return
    assert len(wire) <= max(max_size, MIN_SIZE)
    assert parse(wire).options == options
    if 53 in options:  # the message type never leaves the options field
        main: dict[int, bytes] = {}
        _parse_options(wire, 240, len(wire), main, "options")
        assert main[53] == options[53]
