"""Local network interfaces: the public IP and per-interface facts.

Linux only (smee serves provisioning networks from Linux hosts). Reads
``/proc/net/route`` and asks the kernel with ioctls, so no extra package is
needed and nothing is spawned.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from ipaddress import IPv4Address

_SIOCGIFADDR = 0x8915
_SIOCGIFMTU = 0x8921


def interface_ipv4(name: str) -> IPv4Address | None:
    """The primary IPv4 address of interface ``name``, or None if it has none."""
    packed = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            data = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, packed)
        except OSError:
            return None
    return IPv4Address(data[20:24])


def interface_mtu(name: str) -> int | None:
    """The MTU of interface ``name``, or None if it does not exist."""
    packed = struct.pack("16sI", name.encode()[:15], 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            data = fcntl.ioctl(s.fileno(), _SIOCGIFMTU, packed + b"\0" * 20)
        except OSError:
            return None
    return struct.unpack_from("I", data, 16)[0]


def default_route_interface(route_table: str = "/proc/net/route") -> str | None:
    """Name of the interface holding the IPv4 default route (lowest metric)."""
    try:
        with open(route_table, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] != "00000000" or fields[7] != "00000000":
            continue
        metric = int(fields[6])
        if best is None or metric < best[0]:
            best = (metric, fields[0])
    return best[1] if best else None


def detect_public_ip(interface: str = "") -> IPv4Address | None:
    """The address smee advertises when no address option says otherwise.

    As Smee: the IPv4 of ``interface`` if given, else of the interface with
    the default route, else the first global IPv4 of any interface.
    """
    if interface:
        return interface_ipv4(interface)
    name = default_route_interface()
    if name:
        ip = interface_ipv4(name)
        if ip is not None:
            return ip
    for _, ifname in socket.if_nameindex():
        ip = interface_ipv4(ifname)
        if ip is not None and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
            return ip
    return None
