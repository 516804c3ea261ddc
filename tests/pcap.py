"""Read UDP payloads out of the captures in ../shared/captures (classic pcap, Ethernet)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

#: The project's shared material lies beside the repository (as in CI); SMEE_SHARED overrides.
SHARED = Path(os.environ.get("SMEE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
CAPTURES = SHARED / "captures"


@dataclass(frozen=True)
class Datagram:
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def read_udp(path: Path) -> list[Datagram]:
    """Every IPv4/UDP datagram in a pcap file (Ethernet or Linux cooked link type)."""
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    offset, out = 24, []
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if linktype == 1:  # Ethernet
            ethertype, l3 = struct.unpack_from("!H", frame, 12)[0], 14
        elif linktype == 113:  # Linux cooked (SLL)
            ethertype, l3 = struct.unpack_from("!H", frame, 14)[0], 16
        else:
            raise ValueError(f"{path.name}: unsupported link type {linktype}")
        if ethertype != 0x0800 or frame[l3 + 9] != 17:
            continue
        ihl = (frame[l3] & 0x0F) * 4
        src, dst = _ip(frame[l3 + 12 : l3 + 16]), _ip(frame[l3 + 16 : l3 + 20])
        sport, dport, length = struct.unpack_from("!HHH", frame, l3 + ihl)
        payload = frame[l3 + ihl + 8 : l3 + ihl + length]
        out.append(Datagram((src, sport), (dst, dport), payload))
    return out


def dhcp_payloads(path: Path) -> list[Datagram]:
    return [d for d in read_udp(path) if {d.src[1], d.dst[1]} & {67, 68}]


def capture_files() -> list[Path]:
    """The real client captures; their absence is an error, not an empty test."""
    files = sorted(CAPTURES.glob("*.pcap"))
    if not files:
        raise FileNotFoundError(
            f"no captures in {CAPTURES}: the tests expect the project's shared/ folder beside the "
            "repository (or set SMEE_SHARED to it)"
        )
    return files
