"""Two smee instances on one backend answer identically (running several for availability).

smee keeps no lease state: every reply is a function of the request, the
settings and the backend's record. So two complete service trees -- built by
``smee.tap.makeService`` from the same flags and the same hardware file, each
with its own clock set to a different time, as two hosts started at different
moments -- must send byte-identical DHCP datagrams to the same destinations
and serve byte-identical iPXE scripts. Components are not started (no
sockets): the DHCP protocol is fed datagrams with the tree's own backend and
config, and the tree's HTTP app is served through StubTreq.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeUDPTransport
from treq.testing import StubTreq
from twisted.internet.task import Clock

from smee.dhcp.packet import (
    ACK,
    BOOTREQUEST,
    DISCOVER,
    OFFER,
    REQUEST,
    Packet,
    build,
    parse,
)
from smee.dhcp.protocol import DHCPServerProtocol
from smee.hardware import mac_bytes
from smee.tap import Options, makeService

PUBLIC = IPv4Address("192.0.2.1")
RELAY = "192.0.2.254"
MAC1, MAC2, UNKNOWN = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:99"
IP1, IP2 = "192.0.2.10", "192.0.2.11"
HW = f"""\
{MAC1}:
  ipAddress: {IP1}
  subnetMask: 255.255.255.0
  defaultGateway: 192.0.2.254
  nameServers: [192.0.2.53]
  hostname: node-1
  arch: x86_64
  uefi: true
  netboot: {{allowPxe: true, allowWorkflow: true, console: ttyS0, facility: lab1}}
{MAC2}:
  ipAddress: {IP2}
  subnetMask: 255.255.255.0
  hostname: node-2
  netboot: {{allowPxe: false}}
"""
#: a PXE ROM (x86-64 UEFI)
PXE = {
    60: b"PXEClient:Arch:00007:UNDI:003016",
    93: b"\x00\x07",
    94: b"\x01\x03\x10",
    97: b"\x00" + bytes(range(16)),
}
#: iPXE running on that machine
IPXE = {**PXE, 77: b"iPXE", 175: b"\x13\x01\x01"}
#: a Linux dhclient: no PXE options at all
LINUX = {55: bytes((1, 3, 6, 12, 15, 28, 42)), 61: b"\x01" + mac_bytes(MAC2), 12: b"node-2"}


def dhcp(mac: str, msg_type: int, opts: dict[int, bytes], *, xid: int = 0x1234,
         giaddr: str = "0.0.0.0", ciaddr: str = "0.0.0.0", **extra: bytes) -> bytes:
    options = {53: bytes((msg_type,)), **opts}
    options.update({int(k[1:]): v for k, v in extra.items()})  # o50=..., o54=...
    return build(Packet(
        BOOTREQUEST, xid=xid, ciaddr=IPv4Address(ciaddr).packed, giaddr=IPv4Address(giaddr).packed,
        chaddr=mac_bytes(mac), options=options,
    ))


BCAST = ("0.0.0.0", 68)
SERVER = PUBLIC.packed
#: (name, datagram, source address, the message type expected back or None for silence)
CONVERSATION: list[tuple[str, bytes, tuple[str, int], int | None]] = [
    ("pxe discover", dhcp(MAC1, DISCOVER, PXE, xid=1), BCAST, OFFER),
    ("pxe request", dhcp(MAC1, REQUEST, PXE, xid=1, o50=IPv4Address(IP1).packed, o54=SERVER), BCAST, ACK),
    ("ipxe discover", dhcp(MAC1, DISCOVER, IPXE, xid=2), BCAST, OFFER),
    ("ipxe request", dhcp(MAC1, REQUEST, IPXE, xid=2, o50=IPv4Address(IP1).packed, o54=SERVER), BCAST, ACK),
    ("relayed pxe discover", dhcp(MAC1, DISCOVER, PXE, xid=3, giaddr=RELAY), (RELAY, 67), OFFER),
    ("linux discover", dhcp(MAC2, DISCOVER, LINUX, xid=4), BCAST, OFFER),
    ("linux request", dhcp(MAC2, REQUEST, LINUX, xid=4, o50=IPv4Address(IP2).packed, o54=SERVER), BCAST, ACK),
    ("linux renewal", dhcp(MAC2, REQUEST, LINUX, xid=5, ciaddr=IP2), (IP2, 68), ACK),
    ("unknown machine", dhcp(UNKNOWN, DISCOVER, PXE, xid=6), BCAST, None),
    ("request for another server", dhcp(MAC1, REQUEST, PXE, xid=7, o50=IPv4Address(IP1).packed,
                                        o54=IPv4Address("192.0.2.200").packed), BCAST, None),
]


class Instance:
    """One complete ``twistd smee`` service tree, not started, with in-memory I/O."""

    def __init__(self, hwfile: Path, started_at: float) -> None:
        self.clock = Clock()
        self.clock.advance(started_at)
        options = Options(environ={}, detect_ip=lambda iface: PUBLIC)
        options.parseOptions([
            "--backend-file-enabled=true", f"--backend-file-path={hwfile}",
            f"--public-ip={PUBLIC}", "--osie-url=http://192.0.2.5/hook", "--tink-server=192.0.2.1:42113",
        ])
        self.top = makeService(options, reactor=self.clock)
        svc = self.top.getServiceNamed("dhcp")
        self.dhcp = DHCPServerProtocol(
            svc.backend, svc.config, self.clock, "eth0",
            lookup_timeout=svc.lookup_timeout, chainloads=svc.chainloads,
        )
        self.transport = FakeUDPTransport()
        self.dhcp.makeConnection(self.transport)
        self.http = StubTreq(self.top.getServiceNamed("http").app.resource())

    def datagram(self, data: bytes, src: tuple[str, int]) -> list[tuple[bytes, Any]]:
        self.dhcp.datagramReceived(data, src)
        return self.transport.clear()

    def get(self, path: str) -> tuple[int, list[bytes], bytes]:
        d = self.http.get("http://192.0.2.1:8080" + path)
        self.http.flush()
        out: list[Any] = []
        d.addBoth(out.append)
        [response] = out
        body: list[Any] = []
        response.content().addBoth(body.append)
        self.http.flush()
        return response.code, response.headers.getRawHeaders("content-type"), body[0]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Instance, Instance]:
    hwfile = tmp_path / "hardware.yaml"
    hwfile.write_text(HW)
    # Started at different times, with separate trees: nothing may depend on either.
    return Instance(hwfile, 1_700_000_000.0), Instance(hwfile, 1_700_003_600.5)


def test_the_trees_are_separate_instances(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    assert a.top is not b.top
    assert a.top.getServiceNamed("backend") is not b.top.getServiceNamed("backend")
    assert [s.name for s in a.top] == [s.name for s in b.top]


@pytest.mark.parametrize("name, data, src, expected", CONVERSATION, ids=[c[0] for c in CONVERSATION])
def test_dhcp_replies_are_byte_identical(
    pair: tuple[Instance, Instance], name: str, data: bytes, src: tuple[str, int], expected: int | None
) -> None:
    a, b = pair
    ra, rb = a.datagram(data, src), b.datagram(data, src)
    assert ra == rb  # same bytes, same destinations
    if expected is None:
        assert ra == []
        return
    [(reply, dest)] = ra
    packet = parse(reply)
    assert packet.msg_type == expected and packet.xid == parse(data).xid
    assert packet.options[54] == SERVER  # the server identifier both put in
    assert dest[0] in ("255.255.255.255", RELAY, IP2)


def test_whole_conversation_in_order_is_identical(pair: tuple[Instance, Instance]) -> None:
    """Replies do not depend on what an instance saw before (no lease state)."""
    a, b = pair
    seen_a = [a.datagram(data, src) for _, data, src, _ in CONVERSATION]
    # b hears only every other packet first (a client's broadcast lost on its segment), then all
    for _, data, src, _ in CONVERSATION[::2]:
        b.datagram(data, src)
    seen_b = [b.datagram(data, src) for _, data, src, _ in CONVERSATION]
    assert seen_a == seen_b


@pytest.mark.parametrize("path", [f"/{MAC1}/auto.ipxe", f"/{MAC1.replace(':', '-')}/auto.ipxe",
                                  f"/{UNKNOWN}/auto.ipxe", f"/{MAC2}/auto.ipxe"])
def test_ipxe_scripts_are_byte_identical(pair: tuple[Instance, Instance], path: str) -> None:
    a, b = pair
    ga, gb = a.get(path), b.get(path)
    assert ga == gb
    if path.startswith(f"/{MAC1}"):
        code, _, body = ga
        assert code == 200 and body.startswith(b"#!ipxe") and b"192.0.2.5/hook" in body
