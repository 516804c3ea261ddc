"""DHCPv4 wire codec (RFC 2131/2132, RFC 3396 long options, option 52 overload).

Pure bytes in, :class:`Packet` out, and back; no I/O, no policy. Malformed
input raises :class:`DHCPParseError` and nothing else, so the protocol has
one thing to catch. Header addresses stay as 4 raw bytes: the policy reads
few of them, and converting all four on every packet would cost more than
the rest of the parse.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

BOOTREQUEST, BOOTREPLY = 1, 2

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_TYPES = {
    DISCOVER: "DISCOVER",
    OFFER: "OFFER",
    REQUEST: "REQUEST",
    DECLINE: "DECLINE",
    ACK: "ACK",
    NAK: "NAK",
    RELEASE: "RELEASE",
    INFORM: "INFORM",
}

MAGIC = b"\x63\x82\x53\x63"
ZERO4 = b"\0\0\0\0"
BROADCAST_FLAG = 0x8000

OPT_PAD, OPT_END = 0, 255
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_MAX_SIZE = 57

#: The BOOTP minimum message size (RFC 1542): replies are padded to it.
MIN_SIZE = 300
#: Smallest message every client must accept (576-byte IP datagram, RFC 2131),
#: less 20 bytes of IP and 8 of UDP header.
DEFAULT_MAX_SIZE = 576 - 28
#: Largest message that fits one Ethernet frame unfragmented (1500-byte MTU
#: less IP and UDP headers); PXE ROMs do not reassemble IP fragments.
ETHERNET_MAX_SIZE = 1500 - 28

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_FIXED = _HEADER.size + len(MAGIC)  # 240


class DHCPParseError(ValueError):
    """The datagram is not a well-formed DHCP message; the text says why."""


class PacketTooLarge(ValueError):
    """A reply does not fit the client's maximum message size, even using option overload."""


@dataclass(slots=True)
class Packet:
    """One DHCP message. ``options`` keeps wire order; values are raw bytes.

    Repeated option codes are concatenated on parse (RFC 3396) and long
    values are split on build, so callers only ever see one value per code.
    """

    op: int
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: bytes = ZERO4
    yiaddr: bytes = ZERO4
    siaddr: bytes = ZERO4
    giaddr: bytes = ZERO4
    chaddr: bytes = b"\0" * 16
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def msg_type(self) -> int | None:
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value and len(value) == 1 else None

    @property
    def mac(self) -> str:
        """The client hardware address as ``aa:bb:cc:dd:ee:ff`` (``hlen`` bytes of ``chaddr``)."""
        return self.chaddr[: min(self.hlen, 16)].hex(":")

    def max_size(self) -> int:
        """Largest reply (DHCP message bytes) the client accepts, from option 57."""
        value = self.options.get(OPT_MAX_SIZE)
        if value is not None and len(value) == 2:
            return max(DEFAULT_MAX_SIZE, int.from_bytes(value, "big") - 28)
        return DEFAULT_MAX_SIZE


def _parse_options(data: bytes, start: int, end: int, into: dict[int, bytes], where: str) -> None:
    """TLV loop over ``data[start:end]``; concatenates repeated codes (RFC 3396)."""
    i = start
    while i < end:
        code = data[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            return
        if i + 1 >= end:
            raise DHCPParseError(f"option {code} in {where} has no length byte")
        stop = i + 2 + data[i + 1]
        if stop > end:
            raise DHCPParseError(f"option {code} in {where} runs past the end ({stop} > {end})")
        value = data[i + 2 : stop]
        prev = into.get(code)
        into[code] = value if prev is None else prev + value
        i = stop
    # A missing END is tolerated: several ROMs omit it.


def parse(data: bytes) -> Packet:
    """Decode a DHCP message; raises :class:`DHCPParseError` on anything malformed."""
    if len(data) < _FIXED:
        raise DHCPParseError(f"too short for a DHCP message: {len(data)} bytes")
    if data[236:240] != MAGIC:
        raise DHCPParseError(f"bad magic cookie {data[236:240].hex()}")
    op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, ch, sname, file = _HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DHCPParseError(f"bad op {op}")
    if hlen > 16:
        raise DHCPParseError(f"bad hlen {hlen}")
    options: dict[int, bytes] = {}
    _parse_options(data, _FIXED, len(data), options, "options")
    overload = options.get(OPT_OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise DHCPParseError(f"bad option overload value {overload.hex()}")
        # RFC 3396 concatenation order: options, then file, then sname.
        if overload[0] & 1:
            _parse_options(file, 0, len(file), options, "file")
            file = b""
        if overload[0] & 2:
            _parse_options(sname, 0, len(sname), options, "sname")
            sname = b""
        del options[OPT_OVERLOAD]
    return Packet(
        op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, ch,
        sname.split(b"\0", 1)[0], file.split(b"\0", 1)[0], options,
    )


def _check(packet: Packet) -> None:
    """Reject a header the wire format cannot carry, instead of silently emitting a different packet.

    ``struct`` pads or truncates ``4s``/``16s`` fields without a word. Option
    codes are checked as they are encoded (:func:`_encode_options`).
    """
    if packet.op not in (BOOTREQUEST, BOOTREPLY):
        raise ValueError(f"bad op {packet.op}")
    if not 0 <= packet.hlen <= 16 or len(packet.chaddr) > 16:
        raise ValueError(f"hlen {packet.hlen} / chaddr of {len(packet.chaddr)} bytes exceed 16")
    if not len(packet.ciaddr) == len(packet.yiaddr) == len(packet.siaddr) == len(packet.giaddr) == 4:
        raise ValueError("ciaddr, yiaddr, siaddr and giaddr must be 4 bytes each")


def _encode_options(options: dict[int, bytes]) -> bytearray:
    """TLV-encode, splitting values over 255 bytes into consecutive items (RFC 3396).

    Codes 0/255 would be read back as PAD/END, and option 52 belongs to the
    codec (which adds it itself when it overloads): any of them raises
    ValueError. One bytearray grows in place: this runs for every reply.
    """
    out = bytearray()
    append = out.append
    for code, value in options.items():
        if not 0 < code < 255 or code == OPT_OVERLOAD:
            raise ValueError(f"option code {code} cannot be sent as an option")
        n = len(value)
        if n <= 255:
            append(code)
            append(n)
            out += value
            continue
        for i in range(0, n, 255):
            chunk = value[i : i + 255]
            append(code)
            append(len(chunk))
            out += chunk
    return out


def build(packet: Packet, max_size: int = ETHERNET_MAX_SIZE) -> bytes:
    """Encode a message: options in the given order, END, padded to 300 bytes.

    If the options do not fit ``max_size`` (pass the request's
    :meth:`Packet.max_size`), unused ``sname``/``file`` fields carry the
    overflow (option 52); if that is not enough either,
    :class:`PacketTooLarge` is raised rather than sending a truncated reply.
    A packet the wire format cannot represent (bad op, option code 0, 52 or
    255, address of the wrong length) raises plain :class:`ValueError`.
    """
    _check(packet)
    body = _encode_options(packet.options)
    sname, file = packet.sname, packet.file
    if len(sname) > 64 or len(file) > 128:
        raise PacketTooLarge(f"sname ({len(sname)}) or file ({len(file)}) too long")
    body.append(OPT_END)
    if _FIXED + len(body) > max_size:
        body, sname, file = _overload(packet, max_size)  # type: ignore[assignment]
    message = _HEADER.pack(
        packet.op, packet.htype, packet.hlen, packet.hops, packet.xid, packet.secs, packet.flags,
        packet.ciaddr, packet.yiaddr, packet.siaddr, packet.giaddr, packet.chaddr,
        sname, file,
    ) + MAGIC + body
    if len(message) < MIN_SIZE:
        message += bytes(MIN_SIZE - len(message))
    return message


def _overload(packet: Packet, max_size: int) -> tuple[bytes, bytes, bytes]:
    """Spill whole options into the unused file (then sname) field (RFC 2132 §9.3).

    Placement is first-fit decreasing (largest option first into the first
    area with room), so one big option late in the list does not fail a reply
    that fits. The message type is placed before anything else so that it
    always stays in the options field, where every client looks for it.
    Within each area options keep the caller's order.
    """
    limits = [max_size - _FIXED - 3 - 1]  # option 52 itself, and END
    file_area = sname_area = -1
    if not packet.file:
        file_area = len(limits)
        limits.append(128 - 1)  # END needs a byte
    if not packet.sname:
        sname_area = len(limits)
        limits.append(64 - 1)
    items = [(i, _encode_options({code: value}), code) for i, (code, value) in enumerate(packet.options.items())]
    order = sorted(items, key=lambda it: (it[2] != OPT_MESSAGE_TYPE, -len(it[1]), it[0]))
    used_room = [0] * len(limits)
    placed: list[list[tuple[int, bytes]]] = [[] for _ in limits]
    for index, item, _ in order:
        for area, limit in enumerate(limits):
            if used_room[area] + len(item) <= limit:
                used_room[area] += len(item)
                placed[area].append((index, item))
                break
        else:
            raise PacketTooLarge(f"reply needs more than {max_size} bytes even with option overload")
    main, *spills = (b"".join(item for _, item in sorted(area)) for area in placed)
    file, sname, used = packet.file, packet.sname, 0
    for area, chunk in enumerate(spills, start=1):
        if not chunk:
            continue
        if area == file_area:
            file, used = chunk + b"\xff", used | 1
        elif area == sname_area:
            sname, used = chunk + b"\xff", used | 2
    return main + bytes((OPT_OVERLOAD, 1, used)) + b"\xff", sname, file
