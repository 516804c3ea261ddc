"""DHCP end to end: real Linux clients (ISC dhclient, busybox udhcpc) and a real relay
(ISC dhcrelay) against ``twistd smee`` in network namespaces (tests/netns.py).

Topologies (all inside namespaces of this test; nothing in the root namespace)::

    direct:   [srv 192.0.2.1/25]──veth──[cli, MAC 02:00:00:00:00:10, no address]

    relayed:  [srv 192.0.2.1/25]──veth──[rly 192.0.2.2/25 | 192.0.2.129/25]──veth──[cli]
              srv: 192.0.2.128/25 via 192.0.2.2; dhcrelay -id <rly→cli> -iu <rly→srv> 192.0.2.1

The first test checks the harness itself with busybox udhcpd as the server, so a
failure in the smee tests is smee's, not the lab's. Run with ``-s`` to see the
timelines (seconds from client start to lease).
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import NamedTuple

import pytest
from netns import (
    Capture,
    DhcpResult,
    Lab,
    Netns,
    Smee,
    netns_lab_fixture,  # noqa: F401  (provides the netns_lab fixture)
    only_components,
)

from smee.dhcp.packet import parse

pytestmark = pytest.mark.netns

SERVER_IP = "192.0.2.1"
CLIENT_MAC = "02:00:00:00:00:10"
RELAYED_MAC = "02:00:00:00:00:20"
UNKNOWN_MAC = "02:00:00:00:00:99"

HARDWARE = f"""\
{CLIENT_MAC}:
  ipAddress: 192.0.2.10
  subnetMask: 255.255.255.128
  defaultGateway: 192.0.2.1
  nameServers: [192.0.2.53]
  hostname: client-a
  domainName: example.test
  leaseTime: 7200
{RELAYED_MAC}:
  ipAddress: 192.0.2.130
  subnetMask: 255.255.255.128
  defaultGateway: 192.0.2.129
  nameServers: [192.0.2.53]
  hostname: client-b
  domainName: example.test
  leaseTime: 3600
"""

#: What dhclient's script must see for CLIENT_MAC (values as dhclient formats them).
DHCLIENT_EXPECTED = {
    "new_ip_address": "192.0.2.10",
    "new_subnet_mask": "255.255.255.128",
    "new_routers": "192.0.2.1",
    "new_domain_name_servers": "192.0.2.53",
    "new_host_name": "client-a",
    "new_domain_name": "example.test",
    "new_dhcp_lease_time": "7200",
    "new_dhcp_server_identifier": SERVER_IP,
}

#: The same lease as udhcpc's script sees it.
UDHCPC_EXPECTED = {
    "ip": "192.0.2.10",
    "subnet": "255.255.255.128",
    "router": "192.0.2.1",
    "dns": "192.0.2.53",
    "hostname": "client-a",
    "domain": "example.test",
    "lease": "7200",
    "serverid": SERVER_IP,
}

DHCPOFFER, DHCPACK = 2, 5


def direct(lab: Lab, client_mac: str = CLIENT_MAC) -> tuple[Netns, Netns, str, str]:
    """Server and client namespaces joined by one veth; the server end has 192.0.2.1/25."""
    srv, cli = lab.namespace("srv"), lab.namespace("cli")
    s_if, c_if = lab.veth(srv, cli, b_mac=client_mac)
    srv.addr(s_if, f"{SERVER_IP}/25")
    return srv, cli, s_if, c_if


def start_smee(lab: Lab, srv: Netns, s_if: str) -> Smee:
    return lab.smee(
        srv, HARDWARE,
        f"--public-ip={SERVER_IP}", f"--dhcp-iface={s_if}", "--log-level=debug",
        *only_components("dhcp"),
    )


def report(test: str, result: DhcpResult, smee_start: float | None = None) -> str:
    line = f"[{test}] {result.timeline()}"
    if smee_start is not None:
        line += f"; smee listening {smee_start:.2f}s after launch"
    print(line)
    return line


def picked(env: dict[str, str], expected: dict[str, str]) -> dict[str, str | None]:
    return {k: env.get(k) for k in expected}


class Reply(NamedTuple):
    dst: tuple[str, int]
    msg_type: int | None
    yiaddr: str
    giaddr: str


def server_replies(cap: Capture) -> list[Reply]:
    """Every DHCP message the server (192.0.2.1:67) sent, in capture order."""
    return [
        Reply(d.dst, p.msg_type, str(IPv4Address(p.yiaddr)), str(IPv4Address(p.giaddr)))
        for d in cap.datagrams()
        if d.src == (SERVER_IP, 67)
        for p in [parse(d.payload)]
    ]


# --- the harness, proven without smee -----------------------------------------


def test_harness_with_udhcpd_standin(netns_lab: Lab) -> None:
    """dhclient, udhcpc and dhcrelay as the smee tests drive them, against busybox udhcpd."""
    lab = netns_lab
    lab.require("dhclient", "busybox", "dhcrelay", "tcpdump")
    srv, cli = lab.namespace("srv"), lab.namespace("cli")
    rly, far = lab.namespace("rly"), lab.namespace("far")
    # srv: a bridge holding 192.0.2.1/25 joins the direct client and the relay's upstream leg
    s_if, c_if = lab.veth(srv, cli, b_mac=CLIENT_MAC)
    s2_if, r_up = lab.veth(srv, rly)
    br = lab.bridge(srv, [s_if, s2_if])
    srv.addr(br, f"{SERVER_IP}/25")
    srv.route("192.0.2.128/25", via="192.0.2.2")
    r_down, f_if = lab.veth(rly, far, b_mac=RELAYED_MAC)
    rly.addr(r_up, "192.0.2.2/25")
    rly.addr(r_down, "192.0.2.129/25")
    # plain reachability across the bridge
    cli.addr(c_if, "192.0.2.99/25")
    cli.run("busybox", "ping", "-c", "1", "-W", "2", "192.0.2.2")
    cli.ip("addr", "flush", "dev", c_if)

    cap = lab.tcpdump(srv, br)
    lab.udhcpd(
        srv, br, ("192.0.2.10", "192.0.2.20"),
        options=["subnet 255.255.255.128", "router 192.0.2.1", "dns 192.0.2.53",
                 "domain example.test", "hostname client-a", "lease 7200"],
        static={CLIENT_MAC: "192.0.2.10", RELAYED_MAC: "192.0.2.130"},
    )
    lab.dhcrelay(rly, r_down, r_up, SERVER_IP)

    lease = lab.dhclient(cli, c_if)
    report("udhcpd/dhclient", lease)
    assert lease.ok, lease.output
    assert picked(lease.env, DHCLIENT_EXPECTED) == DHCLIENT_EXPECTED
    lease = lab.udhcpc(cli, c_if)
    report("udhcpd/udhcpc", lease)
    assert lease.ok, lease.output
    assert picked(lease.env, UDHCPC_EXPECTED) == UDHCPC_EXPECTED
    lease = lab.dhclient(far, f_if)
    report("udhcpd/relayed dhclient", lease)
    assert lease.ok, lease.output
    assert lease.env["new_ip_address"] == "192.0.2.130"
    cap.stop()
    to_relay = [r for r in server_replies(cap) if r.dst == ("192.0.2.129", 67)]
    assert {r.msg_type for r in to_relay} == {DHCPOFFER, DHCPACK}, server_replies(cap)


# --- smee ---------------------------------------------------------------------


def test_dhclient_gets_its_reservation(netns_lab: Lab) -> None:
    lab = netns_lab
    lab.require("dhclient", "tcpdump")
    srv, cli, s_if, c_if = direct(lab)
    cap = lab.tcpdump(srv, s_if)
    smee = start_smee(lab, srv, s_if)
    lease = lab.dhclient(cli, c_if)
    line = report("smee/dhclient", lease, smee.elapsed_until_listening)
    assert lease.ok, f"{line}\n{lease.output}"
    assert picked(lease.env, DHCLIENT_EXPECTED) == DHCLIENT_EXPECTED, line
    assert lease.elapsed is not None and lease.elapsed < 5, line
    assert "Traceback" not in smee.text()
    cap.stop()
    replies = server_replies(cap)
    print(f"[smee/dhclient] replies: {replies}")
    assert [r.msg_type for r in replies] == [DHCPOFFER, DHCPACK], replies
    # a client without an address (ciaddr 0, no relay) can only be reached on port 68
    assert {r.dst[1] for r in replies} == {68}, replies


def test_udhcpc_gets_its_reservation(netns_lab: Lab) -> None:
    lab = netns_lab
    lab.require("busybox")
    srv, cli, s_if, c_if = direct(lab)
    smee = start_smee(lab, srv, s_if)
    lease = lab.udhcpc(cli, c_if, tries=5, wait=2)
    line = report("smee/udhcpc", lease, smee.elapsed_until_listening)
    assert lease.ok, f"{line}\n{lease.output}"
    assert picked(lease.env, UDHCPC_EXPECTED) == UDHCPC_EXPECTED, line
    assert lease.env.get("mask") == "25", line
    assert lease.elapsed is not None and lease.elapsed < 5, line
    assert "Traceback" not in smee.text()


def test_unknown_mac_gets_no_lease_and_the_log_says_why(netns_lab: Lab) -> None:
    lab = netns_lab
    lab.require("busybox", "tcpdump")
    srv, cli, s_if, c_if = direct(lab, client_mac=UNKNOWN_MAC)
    cap = lab.tcpdump(srv, s_if)
    smee = start_smee(lab, srv, s_if)
    lease = lab.udhcpc(cli, c_if, tries=3, wait=1)
    line = report("smee/unknown MAC", lease, smee.elapsed_until_listening)
    assert not lease.ok, f"{line}: an unknown MAC got a lease: {lease.env}"
    assert lease.output.count("discover") >= 3, lease.output  # it did try, three times
    cap.stop()
    assert server_replies(cap) == [], "smee answered an unknown MAC"
    why = [ln for ln in smee.text().splitlines() if UNKNOWN_MAC in ln and "no reply" in ln]
    assert why, f"smee logged nothing about {UNKNOWN_MAC}:\n{smee.text()}"
    assert any("unknown" in ln.lower() or "no hardware" in ln.lower() or "not found" in ln.lower()
               for ln in why), why
    print(f"[smee/unknown MAC] smee says: {why[0]}")


def test_relayed_client_gets_its_reservation_via_giaddr(netns_lab: Lab) -> None:
    lab = netns_lab
    lab.require("dhclient", "dhcrelay", "tcpdump")
    srv, rly, cli = lab.namespace("srv"), lab.namespace("rly"), lab.namespace("cli")
    s_if, r_up = lab.veth(srv, rly)
    r_down, c_if = lab.veth(rly, cli, b_mac=RELAYED_MAC)
    srv.addr(s_if, f"{SERVER_IP}/25")
    srv.route("192.0.2.128/25", via="192.0.2.2")
    rly.addr(r_up, "192.0.2.2/25")
    rly.addr(r_down, "192.0.2.129/25")
    cap = lab.tcpdump(srv, s_if)
    smee = start_smee(lab, srv, s_if)
    relay = lab.dhcrelay(rly, r_down, r_up, SERVER_IP)
    lease = lab.dhclient(cli, c_if)
    line = report("smee/relayed dhclient", lease, smee.elapsed_until_listening)
    assert lease.ok, f"{line}\n{lease.output}\n{relay.text()}"
    expected = {
        "new_ip_address": "192.0.2.130",
        "new_subnet_mask": "255.255.255.128",
        "new_routers": "192.0.2.129",
        "new_domain_name_servers": "192.0.2.53",
        "new_host_name": "client-b",
        "new_dhcp_lease_time": "3600",
        "new_dhcp_server_identifier": SERVER_IP,
    }
    assert picked(lease.env, expected) == expected, line
    cap.stop()
    replies = server_replies(cap)
    # every reply went unicast to the relay's giaddr, port 67; none was broadcast
    assert replies, "no reply from smee in the capture"
    assert {(r.dst, r.giaddr) for r in replies} == {(("192.0.2.129", 67), "192.0.2.129")}, replies
    assert [r.msg_type for r in replies] == [DHCPOFFER, DHCPACK], replies
    assert {r.yiaddr for r in replies} == {"192.0.2.130"}, replies
