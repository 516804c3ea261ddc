"""The hardware model: everything the boot flow needs to know about a machine.

One immutable, validated shape for the three input formats (Smee's file YAML,
Tinkerbell ``Hardware`` objects, the seed era's Tink JSON). Parsers in
:mod:`smee.formats` build it; backends index it; DHCP, TFTP and HTTP policy
read it and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

#: Lease time sent when a record has none. Smee sends 0, which makes clients
#: renew in a tight loop (smee#45), so we default to one day.
DEFAULT_LEASE_TIME = 86400

_HEX = "0123456789abcdef"
_MAC_RE = re.compile(
    r"""^(?:
        (?P<colon>[0-9a-f]{1,2}(?::[0-9a-f]{1,2}){5})        # aa:bb:cc:dd:ee:ff (and a:b:..)
      | (?P<dash>[0-9a-f]{2}(?:-[0-9a-f]{2}){5})            # aa-bb-cc-dd-ee-ff
      | (?P<dot>[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4})      # aabb.ccdd.eeff
      | (?P<bare>[0-9a-f]{12})                             # aabbccddeeff
    )$""",
    re.VERBOSE,
)
_VLAN_RE = re.compile(r"^[0-9]{1,4}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})?$")


class HardwareError(ValueError):
    """A hardware record is invalid; the message names the field."""


def normalize_mac(value: object) -> str:
    """Return ``value`` as a lower-case, colon-separated 6-byte MAC.

    Accepts upper or lower case and the ``:``, ``-``, ``.`` (Cisco) and bare
    12-hex-digit forms, so operators can paste what their tools print.
    """
    if isinstance(value, bytes) and len(value) == 6:
        return ":".join(f"{b:02x}" for b in value)
    if not isinstance(value, str):
        raise HardwareError(f"MAC address must be a string, got {value!r}")
    text = value.strip().lower()
    m = _MAC_RE.fullmatch(text)
    if m is None:
        raise HardwareError(f"{value!r} is not a MAC address")
    if m.group("colon"):
        return ":".join(part.rjust(2, "0") for part in text.split(":"))
    digits = text.replace("-", "").replace(".", "")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def mac_bytes(mac: str) -> bytes:
    """The 6 raw bytes of a normalised MAC."""
    return bytes.fromhex(mac.replace(":", ""))


def parse_ipv4(value: object, what: str) -> IPv4Address:
    """Parse an IPv4 address or raise :class:`HardwareError` naming ``what``."""
    if isinstance(value, IPv4Address):
        return value
    try:
        return IPv4Address(str(value).strip())
    except ValueError:
        raise HardwareError(f"{what}: {value!r} is not an IPv4 address") from None


def parse_netmask(value: object, what: str) -> IPv4Address:
    """Parse a dotted netmask (or a prefix length like ``24``); it must be contiguous."""
    text = str(value).strip()
    try:
        if text.isdigit():
            return IPv4Network(f"0.0.0.0/{text}").netmask
        mask = IPv4Address(text)
        IPv4Network(f"0.0.0.0/{mask}")  # rejects non-contiguous masks
        return mask
    except ValueError:
        raise HardwareError(f"{what}: {value!r} is not a netmask") from None


def parse_vlan(value: object, what: str) -> str:
    """VLAN id as the decimal string that 43.116 and ``vlan_id=`` carry ("" = none)."""
    if value is None or value == "":
        return ""
    text = str(value).strip()
    if not _VLAN_RE.fullmatch(text) or not 0 <= int(text) <= 4096:
        raise HardwareError(f"{what}: {value!r} is not a VLAN id (0-4096)")
    return str(int(text))


def check_hostname(value: object, what: str) -> str:
    """Host and domain names go into DHCP options and iPXE scripts: no spaces, no control bytes."""
    if value is None:
        return ""
    text = str(value)
    if text and not _HOSTNAME_RE.fullmatch(text):
        raise HardwareError(f"{what}: {value!r} is not a valid host or domain name")
    return text


def freeze(value: Any) -> Any:
    """Deep-freeze JSON-like data (dict → read-only mapping, list → tuple)."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@dataclass(frozen=True, slots=True)
class OSIE:
    """Per-hardware overrides of the OSIE/Hook kernel location ("" = use the global setting)."""

    base_url: str = ""
    kernel: str = ""
    initrd: str = ""


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface of a machine: its reservation and netboot settings."""

    mac: str
    ip: IPv4Address | None = None
    netmask: IPv4Address | None = None
    gateway: IPv4Address | None = None
    broadcast: IPv4Address | None = None
    hostname: str = ""
    domain_name: str = ""
    dns_servers: tuple[IPv4Address, ...] = ()
    ntp_servers: tuple[IPv4Address, ...] = ()
    domain_search: tuple[str, ...] = ()
    lease_time: int = DEFAULT_LEASE_TIME
    arch: str = ""
    uefi: bool = False
    vlan_id: str = ""
    iface_name: str = ""
    allow_pxe: bool = False
    allow_workflow: bool = False
    disable_dhcp: bool = False
    ipxe_url: str = ""
    ipxe_script: str = ""
    osie: OSIE = field(default_factory=OSIE)
    console: str = ""


@dataclass(frozen=True, slots=True)
class OperatingSystem:
    """``metadata.instance.operating_system``: what the installers dispatch on."""

    slug: str = ""
    distro: str = ""
    version: str = ""
    image_tag: str = ""
    installer: str = ""
    installer_data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Instance:
    """``metadata.instance``: the workload assigned to the machine, if any."""

    id: str = ""
    state: str = ""
    hostname: str = ""
    allow_pxe: bool = False
    rescue: bool = False
    always_pxe: bool = False
    ipxe_script_url: str = ""
    userdata: str = ""
    operating_system: OperatingSystem = field(default_factory=OperatingSystem)


@dataclass(frozen=True, slots=True)
class Hardware:
    """A machine: identity, interfaces, and the metadata installers use.

    ``source`` says where the record came from (``file:line`` or an object
    name) so that every log line about it can point the operator there.
    """

    id: str
    interfaces: tuple[Interface, ...]
    facility: str = ""
    plan: str = ""
    manufacturer: str = ""
    state: str = ""
    instance: Instance | None = None
    source: str = ""

    def interface_by_mac(self, mac: str) -> Interface | None:
        for iface in self.interfaces:
            if iface.mac == mac:
                return iface
        return None


class Match(NamedTuple):
    """What a backend lookup returns: the machine and the interface that matched."""

    hardware: Hardware
    interface: Interface
