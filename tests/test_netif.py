"""Public-IP detection and interface facts (smee.netif)."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from smee import netif

ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth2\t00000000\t010200C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth3\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
"""


def test_default_route_interface_picks_lowest_metric(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(ROUTES)
    assert netif.default_route_interface(str(table)) == "eth3"


def test_no_default_route(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[1] + "\n")
    assert netif.default_route_interface(str(table)) is None
    assert netif.default_route_interface(str(tmp_path / "missing")) is None


def test_loopback_facts() -> None:
    assert netif.interface_ipv4("lo") == IPv4Address("127.0.0.1")
    assert netif.interface_mtu("lo") == 65536
    assert netif.interface_ipv4("no-such-if0") is None
    assert netif.interface_mtu("no-such-if0") is None


def test_detect_with_named_interface() -> None:
    assert netif.detect_public_ip("lo") == IPv4Address("127.0.0.1")
    assert netif.detect_public_ip("no-such-if0") is None
