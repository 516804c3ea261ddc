"""TFTP wire codec (RFC 1350, RFC 2347 options and OACK).

Pure bytes in, a frozen packet object out, and back; no I/O, no policy.
Malformed input raises :class:`TFTPParseError` and nothing else, so the
protocol has one thing to catch. Text fields decode as latin-1: it maps every
byte to one character, so a filename is never rejected for its encoding and
``filename.encode("latin-1")`` gives back the bytes the client sent.

The 512-byte request limit of RFC 1350 is not enforced: clients with many
options (or long paths) exceed it, and other servers accept them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

(
    ERR_UNDEFINED,
    ERR_NOT_FOUND,
    ERR_ACCESS,
    ERR_DISK_FULL,
    ERR_ILLEGAL,
    ERR_UNKNOWN_TID,
    ERR_EXISTS,
    ERR_NO_USER,
    ERR_OPTIONS,
) = range(9)

OPCODES = {RRQ: "RRQ", WRQ: "WRQ", DATA: "DATA", ACK: "ACK", ERROR: "ERROR", OACK: "OACK"}

# Opcode plus block number (DATA, ACK) or error code (ERROR): every TFTP
# packet is at least this long.
_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")


class TFTPParseError(ValueError):
    """The datagram is not a well-formed TFTP packet; the text says why."""


@dataclass(frozen=True, slots=True)
class Request:
    """RRQ or WRQ. ``mode`` is lower-cased; ``options`` has lower-cased names
    in wire order, first occurrence winning (RFC 2347 names are case-insensitive)."""

    opcode: int
    filename: str
    mode: str
    options: dict[str, str]


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OAck:
    options: dict[str, str]


Packet = Request | Data | Ack | Error | OAck


def _fields(body: bytes, what: str) -> list[bytes]:
    """Split NUL-terminated fields; the last one must be terminated too."""
    if not body.endswith(b"\0"):
        raise TFTPParseError(f"{what}: last field is not NUL-terminated")
    return body[:-1].split(b"\0")


def _options(fields: list[bytes], what: str) -> dict[str, str]:
    """``name, value`` pairs → dict with lower-cased names, first occurrence winning."""
    if len(fields) % 2:
        raise TFTPParseError(f"{what}: option {fields[-1].decode('latin-1')!r} has no value")
    options: dict[str, str] = {}
    for i in range(0, len(fields), 2):
        name, value = fields[i], fields[i + 1]
        if not name:
            raise TFTPParseError(f"{what}: empty option name")
        if not value:
            raise TFTPParseError(f"{what}: option {name.decode('latin-1')!r} has an empty value")
        options.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return options


def parse(datagram: bytes) -> Packet:
    """Decode one TFTP datagram; raises :class:`TFTPParseError` on anything malformed."""
    if len(datagram) < 4:
        # The shortest packets (ACK, empty DATA, a one-letter RRQ) have 4 bytes.
        raise TFTPParseError(f"too short for a TFTP packet: {len(datagram)} bytes")
    opcode, number = _HEADER.unpack_from(datagram)
    # Most frequent first: ACKs arrive once per window of a transfer.
    if opcode == ACK:
        if len(datagram) != 4:
            raise TFTPParseError(f"ACK of {len(datagram)} bytes, not 4")
        return Ack(number)
    if opcode == DATA:
        return Data(number, datagram[4:])
    if opcode in (RRQ, WRQ):
        what = OPCODES[opcode]
        fields = _fields(datagram[2:], what)
        if len(fields) < 2:
            raise TFTPParseError(f"{what}: no mode field")
        filename, mode = fields[0], fields[1]
        if not mode:
            raise TFTPParseError(f"{what}: empty mode")
        return Request(
            opcode, filename.decode("latin-1"), mode.decode("latin-1").lower(), _options(fields[2:], what)
        )
    if opcode == ERROR:
        # A missing NUL after the message is tolerated: an ERROR only ends the
        # transfer, and rejecting it would keep us retransmitting to a client
        # that has given up.
        return Error(number, datagram[4:].split(b"\0", 1)[0].decode("latin-1"))
    if opcode == OACK:
        # At least one option (RFC 2347): the length check above already
        # refuses an OACK with none.
        return OAck(_options(_fields(datagram[2:], "OACK"), "OACK"))
    raise TFTPParseError(f"unknown opcode {opcode}")


def ack_block(datagram: bytes) -> int | None:
    """The block number of a well-formed ACK, None for any other datagram.

    The one packet a transfer receives per window, decoded without building
    an :class:`Ack`; exactly what :func:`parse` would accept as an ACK.
    """
    if len(datagram) == 4 and datagram[0] == 0 and datagram[1] == ACK:
        return (datagram[2] << 8) | datagram[3]
    return None


#: ``data_header(block)``: the 4 bytes before a DATA payload, ``block`` already
#: taken modulo 65536 by the caller (a C call, for the per-block paths).
data_header: Callable[[int], bytes] = partial(_HEADER.pack, DATA)


def encode_data(block: int, payload: bytes | memoryview) -> bytes:
    """DATA; ``block`` is taken modulo 65536 (rollover). ``payload`` may be a
    memoryview slice of the file, so the datagram is the only copy made."""
    return _HEADER.pack(DATA, block & 0xFFFF) + payload


def encode_ack(block: int) -> bytes:
    """ACK; ``block`` is taken modulo 65536."""
    return _HEADER.pack(ACK, block & 0xFFFF)


def encode_error(code: int, message: str) -> bytes:
    """ERROR; characters outside latin-1 become ``?`` so an abort never fails."""
    return _HEADER.pack(ERROR, code) + message.encode("latin-1", "replace") + b"\0"


def _encode_options(options: Mapping[str, str]) -> bytes:
    return b"".join(f"{name}\0{value}\0".encode("latin-1") for name, value in options.items())


def encode_oack(options: Mapping[str, str]) -> bytes:
    """OACK carrying ``options`` in the mapping's order."""
    return _OPCODE.pack(OACK) + _encode_options(options)


def encode_request(
    opcode: int, filename: str, mode: str = "octet", options: Mapping[str, str] | None = None
) -> bytes:
    """RRQ or WRQ, for tests and clients; ``filename`` is encoded as latin-1 (see the module doc)."""
    if opcode not in (RRQ, WRQ):
        raise ValueError(f"not a request opcode: {opcode}")
    return (
        _OPCODE.pack(opcode)
        + f"{filename}\0{mode}\0".encode("latin-1")
        + (_encode_options(options) if options else b"")
    )
