"""DHCP option codes and typed encoders/decoders (RFC 2132, 3004, 3397, 4578, PXE).

Kept apart from the codec: the codec moves bytes, this module knows what
the bytes of the options smee reads and writes mean.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Iterable

SUBNET_MASK = 1
ROUTER = 3
DNS = 6
LOG_SERVER = 7
HOSTNAME = 12
DOMAIN_NAME = 15
BROADCAST = 28
NTP = 42
VENDOR = 43  # PXE vendor-specific sub-options
REQUESTED_IP = 50
LEASE_TIME = 51
MESSAGE_TYPE = 53
SERVER_ID = 54
PARAM_REQUEST = 55
MESSAGE = 56
MAX_SIZE = 57
VENDOR_CLASS = 60
CLIENT_ID = 61
USER_CLASS = 77
RELAY_AGENT = 82
CLIENT_ARCH = 93
CLIENT_NDI = 94
CLIENT_GUID = 97
DOMAIN_SEARCH = 119
IPXE_ENCAP = 175

# Option 43 (PXE) sub-options
PXE_DISCOVERY_CONTROL = 6
PXE_BOOT_SERVERS_RPI = 9
PXE_BOOT_MENU_RPI = 10
PXE_VLAN_ID = 116  # read by the iPXE script as ${43.116:string}

# Option 175 (iPXE) sub-options
IPXE_VERSION = 235


def ip(addr: IPv4Address) -> bytes:
    return addr.packed


def ips(addrs: Iterable[IPv4Address]) -> bytes:
    return b"".join(a.packed for a in addrs)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def text(value: str) -> bytes:
    return value.encode("ascii", "replace")


def domain_search(names: Iterable[str]) -> bytes:
    """RFC 3397: each name as DNS labels, uncompressed (compression is optional)."""
    out = bytearray()
    for name in names:
        for label in name.strip(".").split("."):
            raw = label.encode("ascii", "replace")
            out += bytes((len(raw),)) + raw
        out += b"\0"
    return bytes(out)


def tlv(items: Iterable[tuple[int, bytes]]) -> bytes:
    """Encode sub-options (option 43, 175, 82 style): code, length, value."""
    return b"".join(bytes((code, len(value))) + value for code, value in items)


def decode_tlv(data: bytes) -> dict[int, bytes]:
    """Decode sub-options; stops quietly at a truncated item (firmware is sloppy here)."""
    out: dict[int, bytes] = {}
    i, end = 0, len(data)
    while i + 1 < end:
        code, length = data[i], data[i + 1]
        if code == 0:
            i += 1
            continue
        if code == 255 or i + 2 + length > end:
            break
        out[code] = data[i + 2 : i + 2 + length]
        i += 2 + length
    return out
