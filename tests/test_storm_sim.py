"""The boot-storm simulator's wire formats (benchmarks/storm.py) against smee's own codecs.

The simulator builds and parses DHCP and TFTP itself (it must not share smee's
code paths, and must be cheap); these tests check that what it sends is what a
PXE ROM and iPXE send as smee reads them, and that it reads smee's replies
right. No network, no root.
"""

from __future__ import annotations

import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import storm

from smee.dhcp import packet as dhcp
from smee.dhcp.classify import classify
from smee.dhcp.policy import RESERVATION, DHCPConfig, decide
from smee.hardware import Hardware, Interface, Match
from smee.tftp import packet as tftp

MAC = bytes.fromhex("02005e000001")
GIADDR = IPv4Address("198.51.100.254").packed
GUID = bytes(range(16))
RESERVED = IPv4Address("198.51.100.1")
SERVER = IPv4Address("192.0.2.1")


def _request(msg_type: int, ipxe: bool, **kw: bytes) -> dhcp.Packet:
    return dhcp.parse(storm.build_request(msg_type, 0x5E000001, MAC, GIADDR, GUID, ipxe, **kw))


# --- DHCP requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("ipxe", [False, True])
def test_discover_header_is_a_relayed_request(ipxe: bool) -> None:
    p = _request(dhcp.DISCOVER, ipxe)
    assert (p.op, p.htype, p.hlen, p.hops, p.xid) == (dhcp.BOOTREQUEST, 1, 6, 1, 0x5E000001)
    assert p.giaddr == GIADDR and p.ciaddr == dhcp.ZERO4
    assert p.mac == "02:00:5e:00:00:01"
    assert p.flags == dhcp.BROADCAST_FLAG
    assert p.msg_type == dhcp.DISCOVER
    assert p.max_size() == 1472 - 28
    assert p.options[97] == b"\0" + GUID
    assert len(storm.build_request(dhcp.DISCOVER, 1, MAC, GIADDR, GUID, ipxe)) >= dhcp.MIN_SIZE


def test_pxe_rom_discover_classifies_as_bios_pxe() -> None:
    client = classify(_request(dhcp.DISCOVER, ipxe=False))
    assert client.is_netboot and not client.is_ipxe
    assert (client.arch, client.client_type, client.user_class) == (0, "PXEClient", "")
    assert client.binary == "undionly.kpxe"


def test_ipxe_discover_classifies_as_ipxe() -> None:
    p = _request(dhcp.DISCOVER, ipxe=True)
    client = classify(p)
    assert client.is_netboot and client.is_ipxe
    assert client.user_class == "iPXE"
    assert client.ipxe_version == b"\x01\x00\x00"
    assert p.options[61] == b"\x01" + MAC
    assert 175 in p.options[55]


@pytest.mark.parametrize("ipxe", [False, True])
def test_request_carries_requested_address_and_server_id(ipxe: bool) -> None:
    p = _request(dhcp.REQUEST, ipxe, requested=RESERVED.packed, server_id=SERVER.packed)
    assert p.msg_type == dhcp.REQUEST
    assert p.options[50] == RESERVED.packed and p.options[54] == SERVER.packed


# --- DHCP replies, made by smee's policy and codec ---------------------------------------------


def _config() -> DHCPConfig:
    return DHCPConfig(mode=RESERVATION, server_ip=SERVER, syslog_ip=SERVER, tftp_ip=SERVER, tftp_port=69,
                      http_binary_url="http://192.0.2.1:8080/ipxe/", http_binary_ip=SERVER,
                      script_url="http://192.0.2.1:8080/auto.ipxe", prepend_mac=True, ipxe_rom_chainload=False)


def _match() -> Match:
    iface = Interface(mac="02:00:5e:00:00:01", ip=RESERVED, netmask=IPv4Address("255.255.255.0"),
                      gateway=IPv4Address("198.51.100.254"), hostname="storm-0001", allow_pxe=True)
    return Match(Hardware(id="storm-0001", interfaces=(iface,)), iface)


def _smee_reply(request: dhcp.Packet) -> storm.Reply:
    decision = decide(request, classify(request), _match(), _config())
    assert decision.reply is not None, decision.reason
    reply = storm.parse_reply(dhcp.build(decision.reply, request.max_size()))
    assert reply is not None
    return reply


def test_parses_smee_offer_to_the_pxe_rom() -> None:
    reply = _smee_reply(_request(dhcp.DISCOVER, ipxe=False))
    assert reply.msg_type == storm.OFFER
    assert reply.xid == 0x5E000001 and reply.chaddr == MAC
    assert reply.yiaddr == RESERVED.packed
    assert reply.siaddr == SERVER.packed
    assert reply.boot_file == "undionly.kpxe"
    assert reply.options[54] == SERVER.packed


def test_parses_smee_ack_to_ipxe_with_the_script_url() -> None:
    request = _request(dhcp.REQUEST, ipxe=True, requested=RESERVED.packed, server_id=SERVER.packed)
    reply = _smee_reply(request)
    assert reply.msg_type == storm.ACK
    assert reply.boot_file == "http://192.0.2.1:8080/02:00:5e:00:00:01/auto.ipxe"


def test_parses_option_67_and_overloaded_options() -> None:
    url = "http://192.0.2.1:8080/" + "x" * 150 + "/auto.ipxe"  # too long for the file field
    p = dhcp.Packet(dhcp.BOOTREPLY, xid=7, chaddr=MAC, yiaddr=RESERVED.packed,
                    options={53: bytes((dhcp.ACK,)), 54: SERVER.packed, 12: b"h" * 100, 15: b"d" * 60,
                             67: url.encode()})
    wire = dhcp.build(p, max_size=dhcp.DEFAULT_MAX_SIZE)  # forces option 52 overload
    assert wire[108] == 15  # option 15 was spilled into the file field (offset 108)
    reply = storm.parse_reply(wire)
    assert reply is not None
    assert reply.msg_type == storm.ACK and reply.boot_file == url
    assert reply.options[12] == b"h" * 100 and reply.options[15] == b"d" * 60


def test_ignores_what_is_not_a_dhcp_reply() -> None:
    assert storm.parse_reply(b"\x02" * 100) is None
    request = storm.build_request(dhcp.DISCOVER, 1, MAC, GIADDR, GUID, False)
    assert storm.parse_reply(request) is None  # a BOOTREQUEST


# --- TFTP ----------------------------------------------------------------------------------------


def test_rrq_as_smee_reads_it() -> None:
    req = tftp.parse(storm.tftp_rrq("undionly.kpxe", {"tsize": "0", "blksize": "1468"}))
    assert isinstance(req, tftp.Request)
    assert (req.opcode, req.filename, req.mode) == (tftp.RRQ, "undionly.kpxe", "octet")
    assert req.options == {"tsize": "0", "blksize": "1468"}


def test_ack_oack_error_match_smee() -> None:
    assert storm.tftp_ack(70000) == tftp.encode_ack(70000)
    assert storm.tftp_oack_options(tftp.encode_oack({"blksize": "1468", "tsize": "108847"})) == {
        "blksize": "1468", "tsize": "108847"}
    assert storm.tftp_error_text(tftp.encode_error(tftp.ERR_UNDEFINED, "server busy")) == "ERROR 0: server busy"


@pytest.mark.parametrize(("size", "blksize", "count", "last"), [(10, 4, 3, 2), (8, 4, 3, 0), (0, 512, 1, 0)])
def test_split_blocks_ends_with_a_short_block(size: int, blksize: int, count: int, last: int) -> None:
    data = bytes(range(size))
    blocks = storm.split_blocks(data, blksize)
    assert len(blocks) == count and len(blocks[-1]) == last
    assert b"".join(blocks) == data


# --- machines -------------------------------------------------------------------------------------


def test_machines_are_unique_and_relays_are_not_machines() -> None:
    ips = [storm.machine_ip(i) for i in range(500)]
    macs = [storm.machine_mac(i) for i in range(500)]
    assert len(set(ips)) == len(set(macs)) == 500
    relays = {storm.relay_ip(ip) for ip in ips}
    assert relays == {"198.51.100.254", "203.0.113.254"}
    assert not relays & set(ips)
    assert all(ip.startswith(("198.51.100.", "203.0.113.")) for ip in ips)
    assert int(macs[0].split(":")[0], 16) & 2  # locally administered
