"""What kind of client sent a request: architecture, PXE/HTTP boot, iPXE, user class.

Smee-HEAD's rules (smee-study.md §1.2), plus what it skips: RFC 3004
length-prefixed user classes and iPXE's option 175 are decoded too. One
deliberate difference: an option 60 that is neither ``PXEClient…`` nor
``HTTPClient…`` gives client_type "" (Smee-HEAD says PXEClient), so that an
OS DHCP client's vendor class never reads as a PXE ROM.
"""

from __future__ import annotations

from typing import NamedTuple

from smee.dhcp.options import (
    CLIENT_ARCH,
    CLIENT_GUID,
    CLIENT_NDI,
    IPXE_ENCAP,
    IPXE_VERSION,
    USER_CLASS,
    VENDOR_CLASS,
)
from smee.dhcp.packet import DISCOVER, REQUEST, Packet

#: Unknown architecture (no option 93, or no value we know).
ARCH_UNKNOWN = 255
#: Raspberry Pi, decided by OUI (the Pi 5 sends option 93 = 0).
ARCH_RPI = 41

#: Option 93 value → iPXE binary (smee-study.md §1.2). Absent = cannot netboot.
ARCH_BINARIES: dict[int, str] = {
    **dict.fromkeys((0, 1, 2, 3, 4, 5), "undionly.kpxe"),
    **dict.fromkeys((6, 7, 8, 9, 15, 16), "ipxe.efi"),
    **dict.fromkeys((10, 11, 18, 19, ARCH_RPI), "snp.efi"),
}

RPI_OUIS = frozenset(("b8:27:eb", "dc:a6:32", "e4:5f:01", "28:cd:c1", "d8:3a:dd"))


class ClientInfo(NamedTuple):
    """Everything the policy needs to know about the client, read once per packet.

    A NamedTuple, not a frozen dataclass: one is built for every request, and
    a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)
    cost several times the rest of :func:`classify`. Just as immutable;
    ``client._replace(...)`` where ``dataclasses.replace`` was used.
    """

    mac: str
    msg_type: int | None
    #: RFC 4578 architecture (first known value of option 93), ARCH_RPI, or ARCH_UNKNOWN
    arch: int
    #: "PXEClient", "HTTPClient" (option 60 prefix) or "" when option 60 is absent/other
    client_type: str
    #: option 77 as a string ("iPXE", "Tinkerbell", …); first class if RFC 3004-encoded
    user_class: str
    #: Smee's IsNetbootClient: DISCOVER/REQUEST, 60 PXEClient/HTTPClient, 93, 94, sane 97
    is_netboot: bool
    #: iPXE is running (option 175 present, or user class iPXE/Tinkerbell)
    is_ipxe: bool
    #: option 175 sub-option 235 (iPXE version, e.g. b"\x01\x15\x01"), if sent
    ipxe_version: bytes | None
    #: option 97 raw value (None when absent; may be b"")
    guid: bytes | None
    #: the iPXE binary for this arch, None when the arch cannot netboot
    binary: str | None
    #: chaddr OUI is a Raspberry Pi
    rpi: bool


#: RFC 4578 §2.1 / IANA "Processor Architecture Types" values with a name in
#: insomniacslk/dhcp (0..36); Smee-HEAD only accepts a named value.
_MAX_KNOWN_ARCH = 36

_RPI_PREFIXES = tuple(RPI_OUIS)
_IPXE_USER_CLASSES = ("iPXE", "Tinkerbell")
#: bytes.translate(None, _PRINTABLE) leaves only the non-printable bytes: one C call per item.
_PRINTABLE = bytes(range(0x20, 0x7F))


def _arch(value: bytes | None) -> int:
    """First known RFC 4578 value of option 93 (list of uint16), else ARCH_UNKNOWN.

    An odd trailing byte is ignored rather than voiding the whole option:
    the complete values before it are still what the firmware meant.
    """
    if value is None:
        return ARCH_UNKNOWN
    for i in range(0, len(value) - 1, 2):
        if value[i] == 0 and value[i + 1] <= _MAX_KNOWN_ARCH:
            return value[i + 1]
    return ARCH_UNKNOWN


def _user_class(raw: bytes | None) -> str:
    """Option 77 as a string: the first class if RFC 3004-encoded, else the whole value.

    iPXE sends the bare string (b"iPXE"); RFC 3004 says length-prefixed items
    (b"\\x04iPXE"). The value is taken as RFC 3004 only if it parses exactly
    as non-empty printable items, which a plain printable string can only do
    by accident when it is at least 33 bytes long (its first byte is then a
    length >= 0x20), so short class names are never misread.
    """
    if not raw:
        return ""
    raw = raw.rstrip(b"\0")  # some ROMs NUL-terminate
    first = None
    i, n = 0, len(raw)
    while i < n:
        stop = i + 1 + raw[i]
        item = raw[i + 1 : stop]
        if stop == i + 1 or stop > n or item.translate(None, _PRINTABLE):
            first = None
            break
        if first is None:
            first = item
        i = stop
    chosen = raw if first is None else first
    return chosen.replace(b"\0", b"").decode("ascii", "replace")


def _ipxe_version(encap: bytes) -> bytes | None:
    """Sub-option 235 of option 175, like ``decode_tlv(encap).get(235)`` but stopping when found.

    iPXE puts the version near the front of ~15 sub-options and never
    repeats one, so the early exit skips most of the walk (and the dict).
    Same leniency as decode_tlv: PAD skipped, END or a truncated item ends it.
    """
    i, end = 0, len(encap)
    while i + 1 < end:
        code = encap[i]
        if code == 0:
            i += 1
            continue
        stop = i + 2 + encap[i + 1]
        if code == 255 or stop > end:
            return None
        if code == IPXE_VERSION:
            return encap[i + 2 : stop]
        i = stop
    return None


def classify(packet: Packet) -> ClientInfo:
    """Read the client's type from its request (pure; cheap enough for every packet).

    Never raises for a Packet that :func:`smee.dhcp.packet.parse` returned,
    whatever the option contents: a garbage option means "unknown", not an
    error, because the policy still has to answer (or ignore) the client.
    """
    options = packet.options
    mac = packet.mac
    msg_type = packet.msg_type

    rpi = mac.startswith(_RPI_PREFIXES)
    arch_opt = options.get(CLIENT_ARCH)
    arch = ARCH_RPI if rpi else _arch(arch_opt)

    vendor = options.get(VENDOR_CLASS)
    if vendor is None:
        client_type = ""
    elif vendor.startswith(b"HTTPClient"):
        client_type = "HTTPClient"
    elif vendor.startswith(b"PXEClient"):
        client_type = "PXEClient"
    else:
        # Smee-HEAD says PXEClient here; we do not, so that e.g. "udhcp 1.35"
        # or "MSFT 5.0" never makes a plain OS client look like a PXE ROM.
        client_type = ""

    user_class = _user_class(options.get(USER_CLASS))
    guid = options.get(CLIENT_GUID)
    ipxe_encap = options.get(IPXE_ENCAP)

    is_netboot = (
        (msg_type == DISCOVER or msg_type == REQUEST)
        and client_type != ""
        and arch_opt is not None
        and CLIENT_NDI in options
        # option 97: absent or empty (buggy ROMs), or 17 bytes of type 0 (RFC 4578 §2.3)
        and (not guid or (len(guid) == 17 and guid[0] == 0))
    )
    # Positional, in field order: keywords cost as much again as the tuple.
    return ClientInfo(
        mac,
        msg_type,
        arch,
        client_type,
        user_class,
        is_netboot,
        ipxe_encap is not None or user_class in _IPXE_USER_CLASSES,  # is_ipxe
        None if ipxe_encap is None else _ipxe_version(ipxe_encap),  # ipxe_version
        guid,
        ARCH_BINARIES.get(arch),  # binary
        rpi,
    )
