"""TFTP codec: round trips of every packet type, every parse error, and the
property that ``parse`` returns a packet or raises TFTPParseError, nothing else.

Pure bytes: no sockets.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smee.tftp.packet import (
    ACK,
    DATA,
    ERR_NOT_FOUND,
    ERR_OPTIONS,
    ERROR,
    OACK,
    RRQ,
    WRQ,
    Ack,
    Data,
    Error,
    OAck,
    Request,
    TFTPParseError,
    ack_block,
    encode_ack,
    encode_data,
    encode_error,
    encode_oack,
    encode_request,
    parse,
)


def test_error_codes_are_rfc_numbers() -> None:
    assert (ERR_NOT_FOUND, ERR_OPTIONS) == (1, 8)
    assert (RRQ, WRQ, DATA, ACK, ERROR, OACK) == (1, 2, 3, 4, 5, 6)


# --- round trips ------------------------------------------------------------------------------


def test_rrq_with_options_round_trip() -> None:
    wire = encode_request(RRQ, "ipxe.efi", "octet", {"tsize": "0", "blksize": "1468", "windowsize": "4"})
    assert wire == b"\0\x01ipxe.efi\0octet\0tsize\x000\0blksize\x001468\0windowsize\x004\0"
    packet = parse(wire)
    assert packet == Request(RRQ, "ipxe.efi", "octet", {"tsize": "0", "blksize": "1468", "windowsize": "4"})
    assert isinstance(packet, Request)
    assert list(packet.options) == ["tsize", "blksize", "windowsize"]


def test_wrq_without_options() -> None:
    assert parse(encode_request(WRQ, "upload.bin", "netascii")) == Request(WRQ, "upload.bin", "netascii", {})


def test_request_lowercases_mode_and_option_names_not_values() -> None:
    packet = parse(b"\0\x01Boot/File\0OcTeT\0BlkSize\x001468\0TSIZE\x000\0X-Opt\0VaLuE\0")
    assert packet == Request(RRQ, "Boot/File", "octet", {"blksize": "1468", "tsize": "0", "x-opt": "VaLuE"})


def test_repeated_option_first_occurrence_wins() -> None:
    packet = parse(b"\0\x01f\0octet\0blksize\x001468\0tsize\x000\0BLKSIZE\x00512\0")
    assert isinstance(packet, Request)
    assert packet.options == {"blksize": "1468", "tsize": "0"}


def test_filename_bytes_survive_as_latin1() -> None:
    raw = bytes(range(1, 256))  # every byte but NUL
    packet = parse(b"\0\x01" + raw + b"\0octet\0")
    assert isinstance(packet, Request)
    assert packet.filename.encode("latin-1") == raw
    assert encode_request(RRQ, packet.filename) == b"\0\x01" + raw + b"\0octet\0"


def test_empty_filename_is_well_formed() -> None:
    """Not the codec's business: the file lookup answers "not found"."""
    assert parse(b"\0\x01\0octet\0") == Request(RRQ, "", "octet", {})


def test_request_longer_than_512_bytes_is_accepted() -> None:
    options = {f"opt{i}": "x" * 20 for i in range(40)}
    wire = encode_request(RRQ, "a" * 300, "octet", options)
    assert len(wire) > 512
    packet = parse(wire)
    assert isinstance(packet, Request)
    assert packet.options == options


@pytest.mark.parametrize("block", [0, 1, 255, 256, 65535])
@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 2])
def test_data_round_trip(block: int, payload: bytes) -> None:
    wire = encode_data(block, payload)
    assert wire[:4] == bytes([0, 3, block >> 8, block & 0xFF])
    assert parse(wire) == Data(block, payload)


def test_data_block_rolls_over_and_payload_may_be_a_memoryview() -> None:
    data = b"0123456789"
    assert encode_data(65536, memoryview(data)[2:5]) == b"\x00\x03\x00\x00" + b"234"
    assert encode_data(65535 + 65536, b"") == b"\0\x03\xff\xff"
    assert isinstance(encode_data(1, memoryview(data)), bytes)


@pytest.mark.parametrize("block", [0, 1, 4660, 65535])
def test_ack_round_trip(block: int) -> None:
    assert parse(encode_ack(block)) == Ack(block)
    assert encode_ack(block + 65536) == encode_ack(block)


def test_error_round_trip() -> None:
    wire = encode_error(ERR_NOT_FOUND, "file [autoexec.ipxe] unknown: file does not exist")
    assert wire == b"\0\x05\0\x01file [autoexec.ipxe] unknown: file does not exist\0"
    assert parse(wire) == Error(1, "file [autoexec.ipxe] unknown: file does not exist")
    assert parse(encode_error(ERR_OPTIONS, "")) == Error(8, "")


def test_error_message_outside_latin1_is_replaced_not_raised() -> None:
    assert parse(encode_error(0, "bad ☃ name")) == Error(0, "bad ? name")


def test_error_without_terminator_or_with_trailing_bytes_is_tolerated() -> None:
    assert parse(b"\0\x05\0\x08no nul") == Error(8, "no nul")
    assert parse(b"\0\x05\0\x08") == Error(8, "")
    assert parse(b"\0\x05\0\x00msg\0padding\0") == Error(0, "msg")


def test_oack_round_trip_keeps_order() -> None:
    options = {"tsize": "1048576", "blksize": "1468", "windowsize": "4"}
    wire = encode_oack(options)
    assert wire == b"\0\x06tsize\x001048576\0blksize\x001468\0windowsize\x004\0"
    packet = parse(wire)
    assert packet == OAck(options)
    assert isinstance(packet, OAck)
    assert list(packet.options) == list(options)


def test_encode_request_rejects_other_opcodes() -> None:
    with pytest.raises(ValueError):
        encode_request(DATA, "f")


# --- parse errors -----------------------------------------------------------------------------

MALFORMED = {
    "empty": b"",
    "one byte": b"\0",
    "opcode only": b"\0\x04",
    "three bytes": b"\0\x04\0",
    "opcode 0": b"\0\0\0\0",
    "opcode 7": b"\0\x07\0\x01",
    "opcode 0xffff": b"\xff\xff\0\x01",
    "ACK too long": b"\0\x04\0\x01\0",
    "ACK much too long": b"\0\x04\0\x01" + bytes(512),
    "RRQ filename unterminated": b"\0\x01boot",
    "RRQ no mode": b"\0\x01boot\0",
    "RRQ mode unterminated": b"\0\x01boot\0octet",
    "RRQ empty mode": b"\0\x01boot\0\0",
    "WRQ empty mode": b"\0\x02boot\0\0",
    "RRQ option without value": b"\0\x01boot\0octet\0blksize\0",
    "RRQ option value unterminated": b"\0\x01boot\0octet\0blksize\x001468",
    "RRQ empty option name": b"\0\x01boot\0octet\0\x001468\0",
    "RRQ empty option value": b"\0\x01boot\0octet\0blksize\0\0",
    "RRQ trailing NUL padding": b"\0\x01boot\0octet\0blksize\x001468\0\0",
    "OACK without options": b"\0\x06",
    "OACK of NULs": b"\0\x06\0\0",
    "OACK unterminated": b"\0\x06blksize\x001468",
    "OACK option without value": b"\0\x06blksize\0",
    "OACK empty value": b"\0\x06blksize\0\0",
    "OACK empty name": b"\0\x06\x001468\0",
}


@pytest.mark.parametrize("datagram", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_raises_parse_error(datagram: bytes) -> None:
    with pytest.raises(TFTPParseError):
        parse(datagram)


def test_parse_error_is_a_value_error() -> None:
    assert issubclass(TFTPParseError, ValueError)


# --- properties -------------------------------------------------------------------------------

_PACKETS = (Request, Data, Ack, Error, OAck)


@given(st.binary(max_size=600))
def test_parse_returns_a_packet_or_raises_parse_error(datagram: bytes) -> None:
    try:
        assert isinstance(parse(datagram), _PACKETS)
    except TFTPParseError:
        pass


@given(st.sampled_from(range(8)), st.binary(max_size=120))
def test_parse_with_plausible_opcodes(opcode: int, body: bytes) -> None:
    try:
        assert isinstance(parse(bytes([0, opcode]) + body), _PACKETS)
    except TFTPParseError:
        pass


_text = st.text(st.characters(min_codepoint=1, max_codepoint=255), min_size=1, max_size=30)


@given(
    st.sampled_from([RRQ, WRQ]),
    st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=60),
    _text.map(str.lower),
    st.dictionaries(_text.map(str.lower), _text, max_size=6),
)
def test_request_round_trip_property(opcode: int, filename: str, mode: str, options: dict[str, str]) -> None:
    assert parse(encode_request(opcode, filename, mode, options)) == Request(opcode, filename, mode, options)


@given(st.binary(max_size=6))
def test_ack_block_is_parse_for_acks_only(datagram: bytes) -> None:
    """The transfer ports' shortcut agrees with parse: a number exactly when parse gives an Ack."""
    try:
        packet = parse(datagram)
    except TFTPParseError:
        packet = None
    expected = packet.block if isinstance(packet, Ack) else None
    assert ack_block(datagram) == expected


def test_ack_block_of_encode_ack() -> None:
    assert [ack_block(encode_ack(n)) for n in (0, 1, 255, 256, 65535, 65536)] == [0, 1, 255, 256, 65535, 0]
    assert ack_block(encode_data(1, b"")) is None
