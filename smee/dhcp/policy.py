"""DHCP policy: (request, client, hardware, config) → reply or no reply, and why.

Pure functions, table-tested; no I/O, no clock, no logging (the reason goes
back to the protocol, which logs it).

The behaviour follows Smee-HEAD (smee-study.md §1.2, §2.2–2.7) except where
Smee breaks RFC 2131 or loses information; each such place says so below and
in the README's "DHCP behaviour" section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from socket import inet_ntoa
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from smee.dhcp import options as opt
from smee.dhcp.classify import ClientInfo
from smee.dhcp.packet import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST_FLAG,
    DECLINE,
    DISCOVER,
    INFORM,
    MESSAGE_TYPES,
    NAK,
    OFFER,
    RELEASE,
    REQUEST,
    ZERO4,
    Packet,
)
from smee.hardware import Interface, Match

RESERVATION, PROXY, AUTO_PROXY = "reservation", "proxy", "auto-proxy"

#: RFC 1542 §4.1.1: a relay agent discards a BOOTREQUEST whose ``hops`` exceeds 16, so
#: one that arrives with more has looped or is forged; smee drops it too.
MAX_HOPS = 16

#: First octets of the giaddrs :func:`relay_problem` may refuse (0/8, 127/8, 224/4, 240/4):
#: a giaddr starting otherwise is fine, so the protocol checks no further.
SUSPECT_GIADDR_OCTETS = frozenset((0, 127, *range(224, 256)))

_TINKERBELL, _IPXE = "Tinkerbell", "iPXE"
_HTTP_CLIENT = "HTTPClient"
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: option 53 values, ready to use
_MT_OFFER, _MT_ACK, _MT_NAK = bytes((OFFER,)), bytes((ACK,)), bytes((NAK,))
#: option 43 = {6: 08}: PXE_DISCOVERY_CONTROL "skip discovery, boot from file"
_PXE_BASE = opt.tlv(((opt.PXE_DISCOVERY_CONTROL, b"\x08"),))
_RPI_SUBS = opt.tlv(
    (
        (opt.PXE_BOOT_SERVERS_RPI, bytes.fromhex("00001152617370626572727920506920426f6f74")),
        (opt.PXE_BOOT_MENU_RPI, bytes.fromhex("00505845")),
    )
)
_NAK_TEXT = b"requested address is not reserved for this client"


@dataclass(frozen=True, slots=True)
class DHCPConfig:
    """The settings the DHCP policy reads, resolved once at start-up."""

    mode: str
    #: option 54 and siaddr for non-netboot clients (--dhcp-ip-for-packet)
    server_ip: IPv4Address
    #: option 7 (--dhcp-syslog-ip)
    syslog_ip: IPv4Address | None
    #: next-server for PXE ROMs (--dhcp-tftp-ip / --dhcp-tftp-port)
    tftp_ip: IPv4Address
    tftp_port: int
    #: base URL for UEFI HTTP Boot binaries, ending in "/" (e.g. "http://192.0.2.1:8080/ipxe/")
    http_binary_url: str
    #: the host of http_binary_url if it is an IPv4 address (siaddr for HTTPClient), else None
    http_binary_ip: IPv4Address | None
    #: global iPXE script URL (e.g. "http://192.0.2.1:8080/auto.ipxe")
    script_url: str
    #: insert the MAC as the last-but-one path element (/auto.ipxe → /<mac>/auto.ipxe)
    prepend_mac: bool
    #: answer user class "iPXE" with tftp://<tftp-ip>:<port>/<mac>/<binary> (Smee) instead of the script URL
    ipxe_rom_chainload: bool
    #: binaries actually available; None = all (a missing one is treated as an unmapped arch)
    available_binaries: frozenset[str] | None = None

    # --- derived in __post_init__: packed addresses and URL pieces for the hot path ---
    server_id: bytes = field(init=False, repr=False, compare=False)
    syslog_packed: bytes | None = field(init=False, repr=False, compare=False)
    tftp_packed: bytes = field(init=False, repr=False, compare=False)
    tftp_sname: bytes = field(init=False, repr=False, compare=False)
    tftp_url_prefix: str = field(init=False, repr=False, compare=False)
    http_packed: bytes = field(init=False, repr=False, compare=False)
    http_sname: bytes = field(init=False, repr=False, compare=False)
    #: the script URL split around the place the MAC goes: prefix + mac + suffix
    script_prefix: str = field(init=False, repr=False, compare=False)
    script_suffix: str = field(init=False, repr=False, compare=False)
    #: each record's reply options, encoded once (a memo, not state: same answer without it)
    leases: _LeaseCache = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "server_id", self.server_ip.packed)
        put(self, "syslog_packed", None if self.syslog_ip is None else self.syslog_ip.packed)
        put(self, "tftp_packed", self.tftp_ip.packed)
        put(self, "tftp_sname", str(self.tftp_ip).encode())
        put(self, "tftp_url_prefix", f"tftp://{self.tftp_ip}:{self.tftp_port}/")
        http = self.http_binary_ip
        put(self, "http_packed", ZERO4 if http is None else http.packed)
        put(self, "http_sname", b"" if http is None else str(http).encode())
        prefix, suffix = _split_for_mac(self.script_url)
        put(self, "script_prefix", prefix)
        put(self, "script_suffix", suffix)
        put(self, "leases", _LeaseCache())

    @classmethod
    def from_settings(cls, settings: Any) -> DHCPConfig:
        """Build from :class:`smee.config.Settings`."""
        s = settings
        script = s.dhcp_http_ipxe_script_url or _url(
            s.dhcp_http_ipxe_script_scheme,
            s.dhcp_http_ipxe_script_host,
            s.dhcp_http_ipxe_script_port,
            s.dhcp_http_ipxe_script_path,
            omit_default_port=True,
        )
        # As Smee, the binary URL always carries the port; the path ends in "/"
        # and is joined without a double slash (smee#229).
        binary_path = _clean_path(s.dhcp_http_ipxe_binary_path)
        if not binary_path.endswith("/"):
            binary_path += "/"
        binary = _url(
            s.dhcp_http_ipxe_binary_scheme,
            s.dhcp_http_ipxe_binary_host,
            s.dhcp_http_ipxe_binary_port,
            binary_path,
            omit_default_port=False,
        )
        try:
            http_ip: IPv4Address | None = IPv4Address(str(s.dhcp_http_ipxe_binary_host))
        except ValueError:
            http_ip = None
        return cls(
            mode=s.dhcp_mode,
            server_ip=s.dhcp_ip_for_packet,
            syslog_ip=s.dhcp_syslog_ip,
            tftp_ip=s.dhcp_tftp_ip,
            tftp_port=s.dhcp_tftp_port,
            http_binary_url=binary,
            http_binary_ip=http_ip,
            script_url=script,
            prepend_mac=s.dhcp_http_ipxe_script_prepend_mac,
            ipxe_rom_chainload=s.dhcp_ipxe_rom_chainload,
        )

    def script_url_for(self, mac: str) -> str:
        """The global script URL for ``mac`` (MAC inserted when prepend_mac)."""
        if self.prepend_mac:
            return self.script_prefix + mac + self.script_suffix
        return self.script_url


def _clean_path(path: str) -> str:
    """Collapse runs of slashes and make the path absolute ("" stays "")."""
    if not path:
        return ""
    path = re.sub("/{2,}", "/", path)
    return path if path.startswith("/") else "/" + path


def _url(scheme: str, host: str, port: int, path: str, omit_default_port: bool) -> str:
    netloc = str(host)
    if not (omit_default_port and _DEFAULT_PORTS.get(scheme) == port):
        netloc += f":{port}"
    return f"{scheme}://{netloc}{_clean_path(path)}"


def _split_for_mac(url: str) -> tuple[str, str]:
    """Split ``url`` so that prefix + mac + suffix inserts the MAC before the last path element.

    ``http://h/auto.ipxe`` → (``http://h/``, ``/auto.ipxe``); a URL whose path is
    empty or ``/`` gets the MAC as its whole path plus a trailing slash
    (``https://h`` → ``https://h/<mac>/``); query and fragment stay at the end.
    """
    if not url:
        return "", ""
    parts = urlsplit(url)
    head = f"{parts.scheme}://{parts.netloc}" if parts.scheme else ""
    directory, _, last = parts.path.rpartition("/")
    tail = ""
    if parts.query:
        tail += "?" + parts.query
    if parts.fragment:
        tail += "#" + parts.fragment
    return f"{head}{directory}/", f"/{last}{tail}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request: the reply (or None), why, and a short outcome label for metrics."""

    reply: Packet | None
    #: one human-readable line for the log, e.g. "OFFER 192.0.2.10, boot file ipxe.efi" or "unknown MAC"
    reason: str
    #: "offer", "ack", "nak" with a reply; without one: "ignored", "unknown",
    #: "disabled", "no-address", "release", "decline", "not-netboot",
    #: "no-binary", "not-allowed", "too-many-hops", "bad-giaddr"
    outcome: str


def needs_lookup(client: ClientInfo, config: DHCPConfig) -> bool:
    """Whether the backend must be asked before deciding (auto-proxy never asks)."""
    return config.mode != AUTO_PROXY


def decide(
    request: Packet, client: ClientInfo, match: Match | None, config: DHCPConfig, served: bool = False
) -> Decision:
    """The reply to ``request``; ``match`` is the lookup by MAC (None = not found / not looked up).

    ``served``: smee's TFTP server sent this MAC an iPXE binary moments ago
    (:class:`smee.chainload.Chainloads`), so an "iPXE" client is our binary.
    """
    if request.op != BOOTREQUEST:
        return Decision(None, f"ignored a BOOTREPLY (op {request.op}) from {client.mac}", "ignored")
    if config.mode == RESERVATION:
        return _reservation(request, client, match, config, served)
    return _proxy(request, client, match, config, served)


def relay_problem(hops: int, giaddr: bytes, source: str = "") -> str | None:
    """Why a request's relay fields forbid any reply: an outcome label, or None when they are fine.

    Cheap enough for every relayed request; the protocol calls it on the raw
    header, before the reply memo, :func:`relay_refusal` says why in words.

    * RFC 1542 §4.1.1: relays discard a request with more than :data:`MAX_HOPS`
      hops; one that arrives with more has looped or is forged: "too-many-hops".
    * RFC 2131 §4.1: a relayed reply goes to giaddr:67, so giaddr must be a
      unicast address a relay agent can own. Broadcast, multicast, class E
      and 0.0.0.0/8 (but 0.0.0.0 itself, "not relayed") are "bad-giaddr", and
      so is loopback unless the request came from loopback (``source``): a
      relay on this host may use 127.0.0.1, but from the network it would
      aim smee's reply at a service on this host.

    ``hops`` above 0 with giaddr 0.0.0.0 is accepted: no RFC 1542 relay sends
    it, but the reply then goes to the broadcast address of the interface the
    request came in on, where its sender is.
    """
    if hops > MAX_HOPS:
        return "too-many-hops"
    if giaddr != ZERO4 and _bogus_giaddr(giaddr, source) is not None:
        return "bad-giaddr"
    return None


def relay_refusal(request: Packet, client: ClientInfo, source: str = "") -> Decision | None:
    """:func:`relay_problem` for a parsed request, as a Decision without a reply (None: no problem)."""
    outcome = relay_problem(request.hops, request.giaddr, source)
    if outcome is None:
        return None
    what = f"dropped {_mt_name(client.msg_type)} from {client.mac}"
    if outcome == "too-many-hops":
        reason = (f"{what}: {request.hops} relay hops, more than the {MAX_HOPS} RFC 1542 allows "
                  "(a relay loop or a forged packet)")
    else:
        why = _bogus_giaddr(request.giaddr, source)
        reason = f"{what}: relay address (giaddr) {_ip(request.giaddr)} is {why}; no reply sent there"
    return Decision(None, reason, outcome)


def _bogus_giaddr(giaddr: bytes, source: str = "") -> str | None:
    """What makes a non-zero giaddr unusable as a reply destination, or None when it will do."""
    if len(giaddr) != 4:
        return "not an IPv4 address"
    first = giaddr[0]
    if first == 0:
        return 'in 0.0.0.0/8 ("this network")'
    if first == 127:
        if source.startswith("127."):
            return None
        return "a loopback address (accepted only from a relay on this host)"
    if 224 <= first <= 239:
        return "a multicast address"
    if giaddr == b"\xff\xff\xff\xff":
        return "the broadcast address"
    if first >= 240:
        return "a reserved (class E) address"
    return None


def _mt_name(msg_type: int | None) -> str:
    if msg_type is None:
        return "a request without a DHCP message type"
    return MESSAGE_TYPES.get(msg_type, f"message type {msg_type}")


def destination(request: Packet, reply: Packet) -> tuple[str, int]:
    """Where the reply goes (RFC 2131 §4.1): giaddr:67, else ciaddr:68, else broadcast:68."""
    if request.giaddr != ZERO4:
        return inet_ntoa(request.giaddr), 67
    if request.ciaddr != ZERO4 and reply.options.get(53) == _MT_ACK:
        return inet_ntoa(request.ciaddr), 68
    return "255.255.255.255", 68


# --- helpers ---


def _ip(packed: bytes) -> str:
    return inet_ntoa(packed) if len(packed) == 4 else f"<{packed.hex() or 'empty'}>"


def _where(match: Match) -> str:
    """`` (file.yaml:12)`` naming the record's source, for a refusal's reason; "" if unknown."""
    source = match.hardware.source
    return f" ({source})" if source else ""


def _binary(client: ClientInfo, config: DHCPConfig) -> str | None:
    """The iPXE binary for the client's arch, None when unmapped or not available."""
    binary = client.binary
    if binary is None:
        return None
    available = config.available_binaries
    if available is not None and binary not in available:
        return None
    return binary


def _no_binary_reason(client: ClientInfo) -> str:
    if client.binary is None:
        return f"no iPXE binary for arch {client.arch}"
    return f"no iPXE binary for arch {client.arch} ({client.binary} is not available)"


def _boot(
    client: ClientInfo, binary: str, hw_script_url: str, config: DHCPConfig, served: bool
) -> tuple[str, bytes, bytes]:
    """(file, siaddr, sname) for a netboot client, smee-study §1.2, first match wins.

    ``hw_script_url`` is the per-hardware script URL ("" = use the global one).
    sname is the next server as dotted text (only proxy mode sends it).
    """
    mac = client.mac
    http = client.client_type == _HTTP_CLIENT
    user_class = client.user_class
    if user_class == _TINKERBELL:
        url = hw_script_url or config.script_url_for(mac)
        if http:
            return url, config.http_packed, config.http_sname
        return url, config.tftp_packed, config.tftp_sname
    if http:
        return f"{config.http_binary_url}{mac}/{binary}", config.http_packed, config.http_sname
    if user_class == _IPXE:
        # A foreign iPXE ROM: Smee chains it to our iPXE over TFTP, but a stock
        # ROM-loaded iPXE does not set user class Tinkerbell, so it would come
        # back here forever. Send it straight to the script unless told otherwise,
        # and even then once it runs the binary we just served (``served``): its
        # request looks like the ROM's (Debian's build even reports the same version).
        if config.ipxe_rom_chainload and not served:
            url = f"{config.tftp_url_prefix}{mac}/{binary}"
        else:
            url = hw_script_url or config.script_url_for(mac)
        return url, config.tftp_packed, config.tftp_sname
    return binary, config.tftp_packed, config.tftp_sname


def _vendor(client: ClientInfo, vlan_sub: bytes) -> bytes:
    """Option 43: {6: 08}, + RPi 9/10, + ``vlan_sub`` (116 = VLAN id, read by the iPXE script)."""
    if client.rpi:
        return _PXE_BASE + _RPI_SUBS + vlan_sub
    return _PXE_BASE + vlan_sub


class _Lease(NamedTuple):
    """What an Interface contributes to every reply, encoded once (interfaces are immutable)."""

    reserved: bytes
    ip_text: str
    #: options 1, 3, 6 (before 7, which comes from the config) and 12, 15, 28, 42
    head: tuple[tuple[int, bytes], ...]
    tail: tuple[tuple[int, bytes], ...]
    lease_time: bytes
    domain_search: bytes | None
    #: option 43 sub-option 116 (TLV-encoded), b"" without a VLAN
    vlan_sub: bytes


def _lease(iface: Interface) -> _Lease:
    """The record's options, encoded (once per record: :class:`_LeaseCache`)."""
    ip = iface.ip
    assert ip is not None
    head = []
    if iface.netmask is not None:
        head.append((opt.SUBNET_MASK, iface.netmask.packed))
    if iface.gateway is not None:
        head.append((opt.ROUTER, iface.gateway.packed))
    if iface.dns_servers:
        head.append((opt.DNS, opt.ips(iface.dns_servers)))
    tail = []
    if iface.hostname:
        tail.append((opt.HOSTNAME, opt.text(iface.hostname)))
    if iface.domain_name:
        tail.append((opt.DOMAIN_NAME, opt.text(iface.domain_name)))
    if iface.broadcast is not None:
        tail.append((opt.BROADCAST, iface.broadcast.packed))
    if iface.ntp_servers:
        tail.append((opt.NTP, opt.ips(iface.ntp_servers)))
    vlan = iface.vlan_id.encode("ascii", "replace")
    return _Lease(
        reserved=ip.packed,
        ip_text=str(ip),
        head=tuple(head),
        tail=tuple(tail),
        lease_time=opt.u32(min(max(iface.lease_time, 0), 0xFFFFFFFF)),
        domain_search=opt.domain_search(iface.domain_search) if iface.domain_search else None,
        vlan_sub=bytes((opt.PXE_VLAN_ID, len(vlan))) + vlan if vlan else b"",
    )


class _LeaseCache:
    """Interface → its :class:`_Lease`, for the ``limit`` interfaces most recently added.

    Hardware records are immutable and a reload builds new ones, so an entry
    is keyed by the interface's identity and keeps that interface alive: an
    ``id`` cannot be reused while its entry exists, and a reload's records
    simply miss and push the old ones out (oldest first) as machines ask.
    """

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._entries: dict[int, tuple[Interface, _Lease]] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, iface: Interface) -> _Lease:
        entries = self._entries
        hit = entries.get(id(iface))
        if hit is not None and hit[0] is iface:
            return hit[1]
        lease = _lease(iface)
        if len(entries) >= self.limit:
            del entries[next(iter(entries))]
        entries[id(iface)] = (iface, lease)
        return lease


def _nak(request: Packet, client: ClientInfo, config: DHCPConfig, why: str) -> Decision:
    """RFC 2131 §4.3.2 DHCPNAK: no addresses, broadcast bit set when relayed."""
    o: dict[int, bytes] = {53: _MT_NAK, 54: config.server_id, 56: _NAK_TEXT}
    ropts = request.options
    value = ropts.get(61)
    if value is not None:
        o[61] = value
    value = ropts.get(82)
    if value is not None:
        o[82] = value
    flags = request.flags
    if request.giaddr != ZERO4:
        flags |= BROADCAST_FLAG
    reply = Packet(
        BOOTREPLY, request.htype, request.hlen, 0, request.xid, 0, flags,
        ZERO4, ZERO4, ZERO4, request.giaddr, request.chaddr, b"", b"", o,
    )
    return Decision(reply, f"NAK to {client.mac}: {why}", "nak")


# --- reservation mode ---


def _reservation(
    request: Packet, client: ClientInfo, match: Match | None, config: DHCPConfig, served: bool
) -> Decision:
    mac = client.mac
    mt = client.msg_type
    if mt == DISCOVER:
        reply_type, label, outcome = _MT_OFFER, "OFFER", "offer"
    elif mt == REQUEST or mt == INFORM:
        reply_type, label, outcome = _MT_ACK, "ACK", "ack"
    elif mt == RELEASE or mt == DECLINE:
        name = MESSAGE_TYPES[mt]
        address = _ip(request.ciaddr if mt == RELEASE else request.options.get(50, b""))
        return Decision(None, f"{name} from {mac} of {address}: no reply (smee keeps no lease state)", name.lower())
    elif mt is None:
        return Decision(None, f"ignored a request from {mac} without a DHCP message type", "ignored")
    else:
        name = MESSAGE_TYPES.get(mt, f"message type {mt}")
        return Decision(None, f"ignored {name} from {mac}", "ignored")

    ropts = request.options
    if mt == REQUEST:
        server = ropts.get(54)
        if server is not None and server != config.server_id:
            # RFC 2131 §4.3.2: the client accepted another server's offer.
            return Decision(
                None, f"ignored REQUEST from {mac} for server {_ip(server)}: the client chose another server", "ignored"
            )

    if match is None:
        return Decision(None, f"no reply to {MESSAGE_TYPES[mt]} from {mac}: unknown MAC", "unknown")
    iface = match.interface
    if iface.disable_dhcp:
        where = _where(match)
        return Decision(None, f"no reply to {mac}: DHCP is disabled in its hardware record{where}", "disabled")
    if iface.ip is None:
        where = _where(match)
        return Decision(None, f"no reply to {mac}: its hardware record{where} has no IP address", "no-address")
    lease = config.leases.get(iface)
    reserved = lease.reserved

    ciaddr = ZERO4
    if mt == REQUEST:
        requested = ropts.get(50)
        if requested is not None:
            # SELECTING (54 = us) or INIT-REBOOT (no 54, ciaddr 0)
            if requested != reserved:
                return _nak(request, client, config, f"requested {_ip(requested)}, reserved {lease.ip_text}")
        elif request.ciaddr != ZERO4:
            # RENEWING / REBINDING
            if request.ciaddr != reserved:
                return _nak(request, client, config, f"renewing {_ip(request.ciaddr)}, reserved {lease.ip_text}")
            ciaddr = request.ciaddr
    elif mt == INFORM:
        ciaddr = request.ciaddr

    # Netboot fields.
    file = ""
    o43 = o60 = None
    if mt != INFORM and client.is_netboot:
        siaddr = ZERO4
        binary = _binary(client, config)
        if not iface.allow_pxe:
            note = f", no boot file: netboot not allowed for {mac}"
        elif binary is None:
            note = f", no boot file: {_no_binary_reason(client)}"
        else:
            file, siaddr, _ = _boot(client, binary, iface.ipxe_url, config, served)
            o43 = _vendor(client, lease.vlan_sub)
            if client.client_type == _HTTP_CLIENT:
                o60 = b"HTTPClient"
            note = f", boot file {file} (next server {_ip(siaddr)})"
    else:
        siaddr = config.server_id
        note = " (not a netboot client)" if mt != INFORM else ""

    # Options, in ascending code order with 82 last (as Smee on the wire).
    o: dict[int, bytes] = dict(lease.head)
    if config.syslog_packed is not None:
        o[7] = config.syslog_packed
    o.update(lease.tail)
    if o43 is not None:
        o[43] = o43
    if mt != INFORM:  # RFC 2131 §4.3.5: no lease time in an ACK to INFORM
        o[51] = lease.lease_time
    o[53] = reply_type
    o[54] = config.server_id
    if o60 is not None:
        o[60] = o60
    file_field = _bootfile(file, o)
    value = ropts.get(61)
    if value is not None:
        o[61] = value
    if lease.domain_search is not None:
        o[119] = lease.domain_search
    value = ropts.get(82)
    if value is not None:
        o[82] = value

    if mt == INFORM:
        yiaddr = ZERO4
        what = f"ACK to INFORM from {mac} at {_ip(ciaddr)}"
    else:
        yiaddr = reserved
        what = f"{label} {lease.ip_text} to {mac}"
    reply = Packet(
        BOOTREPLY, request.htype, request.hlen, 0, request.xid, 0, request.flags,
        ciaddr, yiaddr, siaddr, request.giaddr, request.chaddr, b"", file_field, o,
    )
    return Decision(reply, what + note, outcome)


def _bootfile(file: str, options: dict[int, bytes]) -> bytes:
    """The ``file`` header value; a name longer than its 128 bytes goes in option 67 instead.

    Per-hardware script URLs can be long; iPXE reads option 67 before the
    header field, so the URL still arrives whole. Call it where 67 belongs in
    the ascending option order (after 60, before 61).
    """
    raw = file.encode("ascii", "replace")
    if len(raw) <= 128:
        return raw
    options[67] = raw
    return b""


# --- proxy and auto-proxy modes ---


def _proxy(
    request: Packet, client: ClientInfo, match: Match | None, config: DHCPConfig, served: bool
) -> Decision:
    mac = client.mac
    mt = client.msg_type
    if mt == DISCOVER:
        reply_type, label, outcome = _MT_OFFER, "OFFER", "offer"
    elif mt == REQUEST:
        reply_type, label, outcome = _MT_ACK, "ACK", "ack"
    else:
        name = "a request without a DHCP message type" if mt is None else MESSAGE_TYPES.get(mt, f"message type {mt}")
        return Decision(None, f"ignored {name} from {mac} ({config.mode} mode answers only DISCOVER and REQUEST)", "ignored")
    if not client.is_netboot:
        return Decision(None, f"no reply to {MESSAGE_TYPES[mt]} from {mac}: not a netboot client", "not-netboot")
    binary = _binary(client, config)
    if binary is None:
        return Decision(None, f"no reply to {mac}: {_no_binary_reason(client)}", "no-binary")
    vlan_sub = b""
    if config.mode != AUTO_PROXY:
        if match is None:
            return Decision(None, f"no reply to {mac}: unknown MAC", "unknown")
        iface: Interface = match.interface
        if not iface.allow_pxe:
            return Decision(None, f"no reply to {mac}: netboot not allowed for {mac}", "not-allowed")
        if iface.vlan_id:
            raw = iface.vlan_id.encode("ascii", "replace")
            vlan_sub = bytes((opt.PXE_VLAN_ID, len(raw))) + raw

    # The global script URL only: Smee does not use the hardware's URL in proxy mode.
    file, siaddr, sname = _boot(client, binary, "", config, served)
    http = client.client_type == _HTTP_CLIENT
    ropts = request.options
    o: dict[int, bytes] = {43: _vendor(client, vlan_sub), 53: reply_type}
    # Option 54 names the next server so PXE ROMs do not go on to port 4011;
    # with a DNS-named HTTP binary host there is no address, so name ourselves.
    o[54] = siaddr if siaddr != ZERO4 else config.server_id
    o[60] = b"HTTPClient" if http else b"PXEClient"
    file_field = _bootfile(file, o)
    value = ropts.get(61)
    if value is not None:
        o[61] = value
    guid = client.guid
    o[97] = b"" if guid is None else guid  # always, zero-length when absent (as Smee)
    value = ropts.get(82)
    if value is not None:
        o[82] = value
    reply = Packet(
        BOOTREPLY, request.htype, request.hlen, 0, request.xid, 0, request.flags,
        ZERO4, ZERO4, siaddr, request.giaddr, request.chaddr, sname, file_field, o,
    )
    return Decision(reply, f"{label} (proxy) to {mac}: boot file {file} (next server {_ip(siaddr)})", outcome)
