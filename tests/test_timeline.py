"""The boot timeline: a simulated boot through DHCP, TFTP and HTTP, eviction, /machines."""

from __future__ import annotations

import json

import pytest
from fakes import hardware
from test_dhcp_protocol import make, replies, request
from test_http_app import Server as HTTPServer
from test_http_app import known
from test_tftp_protocol import CLIENT, MAC, Server, fetch
from twisted.internet.task import Clock

from smee.dhcp.packet import ACK, DISCOVER, OFFER, REQUEST
from smee.metrics import Metrics
from smee.timeline import STAGES, BootTimeline

IPXE = {77: b"iPXE"}
REQ = {54: bytes([192, 0, 2, 1]), 50: bytes([192, 0, 2, 10])}


def test_simulated_boot() -> None:
    clock = Clock()
    clock.advance(1000)
    metrics = Metrics()
    timeline = BootTimeline(clock, metrics=metrics)

    # the firmware's DHCP
    from fakes import FakeBackend

    backend = FakeBackend()
    backend.add(hardware(MAC, CLIENT[0]))
    dhcp, transport, _ = make(backend=backend, timeline=timeline)
    dhcp.datagramReceived(request(MAC, DISCOVER), ("0.0.0.0", 68))
    clock.advance(0.5)
    dhcp.datagramReceived(request(MAC, DISCOVER), ("0.0.0.0", 68))  # a retransmission: not a new stage
    clock.advance(0.5)
    dhcp.datagramReceived(request(MAC, REQUEST, options=REQ), ("0.0.0.0", 68))
    assert [p.msg_type for p, _ in replies(transport)] == [OFFER, OFFER, ACK]
    # TFTP of the iPXE binary
    clock.advance(1)
    tftp = Server(backend=backend)
    tftp.protocol.timeline = timeline
    tftp.reactor.advance(0)
    assert fetch(tftp, "ipxe.efi").error is None
    # iPXE's own DHCP
    clock.advance(2)
    dhcp.datagramReceived(request(MAC, DISCOVER, options=IPXE), ("0.0.0.0", 68))
    dhcp.datagramReceived(request(MAC, REQUEST, options={**IPXE, **REQ}), ("0.0.0.0", 68))
    assert [p.msg_type for p, _ in replies(transport)] == [OFFER, ACK]
    # the script over HTTP
    clock.advance(1)
    http = HTTPServer(backend=backend)
    http.app.timeline = timeline
    assert http.fetch(f"/{MAC}/auto.ipxe").code == 200
    clock.advance(3)
    timeline.seen(MAC, "syslog", message="hello from the installer")

    [summary] = timeline.machines()
    assert summary == {
        "mac": MAC, "first_seen": 1000.0, "last_seen": 1008.0, "last_stage": "syslog",
        "stages": {
            "dhcp-discover": 0.0, "dhcp-offer": 0.0, "dhcp-ack": 1.0, "tftp-start": 2.0, "tftp-end": 2.0,
            "ipxe-dhcp": 4.0, "ipxe-ack": 4.0, "script": 5.0, "syslog": 8.0,
        },
    }
    assert list(summary["stages"]) == list(STAGES)
    detail = timeline.machine(MAC)
    assert detail is not None and detail["boot"] == 1 and detail["missing"] == []
    by_stage = {entry["stage"]: entry for entry in detail["timeline"]}
    assert by_stage["tftp-start"]["file"] == "ipxe.efi"
    assert by_stage["syslog"]["message"] == "hello from the installer"
    assert by_stage["script"]["at"] == 1005.0
    # stage durations went to the histogram
    get = metrics.registry.get_sample_value
    assert get("boot_stage_seconds_sum", {"from_stage": "dhcp-offer", "to_stage": "dhcp-ack"}) == 1.0
    assert get("boot_stage_seconds_sum", {"from_stage": "script", "to_stage": "syslog"}) == 3.0
    assert get("boot_stage_seconds_count", {"from_stage": "ipxe-ack", "to_stage": "script"}) == 1

    # the next DISCOVER (after the script) starts a new boot
    clock.advance(100)
    dhcp.datagramReceived(request(MAC, DISCOVER), ("0.0.0.0", 68))
    detail = timeline.machine(MAC)
    assert detail is not None and detail["boot"] == 2
    assert detail["stages"] == {"dhcp-discover": 0.0, "dhcp-offer": 0.0}
    assert detail["first_seen"] == 1108.0


def test_a_discover_before_the_script_is_the_same_boot() -> None:
    clock = Clock()
    timeline = BootTimeline(clock)
    timeline.seen(MAC, "dhcp-discover")
    clock.advance(1)
    timeline.seen(MAC, "tftp-start")
    clock.advance(30)
    timeline.seen(MAC, "dhcp-discover")  # stuck, retrying
    detail = timeline.machine(MAC)
    assert detail is not None and detail["boot"] == 1
    assert detail["stages"] == {"dhcp-discover": 0.0, "tftp-start": 1.0}
    assert detail["last_seen"] == 31.0 and detail["last_stage"] == "tftp-start"
    assert detail["missing"] == ["dhcp-offer", "dhcp-ack"]


def test_unknown_clients_are_not_recorded() -> None:
    timeline = BootTimeline(Clock())
    dhcp, _, _ = make(timeline=timeline)
    dhcp.datagramReceived(request("52:54:00:00:00:77", DISCOVER), ("0.0.0.0", 68))
    assert timeline.machines() == []


def test_least_recently_seen_machines_are_evicted() -> None:
    clock = Clock()
    timeline = BootTimeline(clock, limit=3)
    macs = [f"52:54:00:00:00:{i:02x}" for i in range(5)]
    for mac in macs[:3]:
        clock.advance(1)
        timeline.seen(mac, "dhcp-discover")
    clock.advance(1)
    timeline.seen(macs[0], "dhcp-offer")  # seen again: now the most recent
    timeline.seen(macs[3], "dhcp-discover")
    timeline.seen(macs[4], "dhcp-discover")
    assert len(timeline) == 3
    assert [m["mac"] for m in timeline.machines()] == [macs[4], macs[3], macs[0]]
    assert timeline.machine(macs[1]) is None and timeline.machine(macs[2]) is None
    with pytest.raises(ValueError):
        BootTimeline(clock, limit=0)


def test_long_details_are_clipped() -> None:
    timeline = BootTimeline(Clock())
    timeline.seen(MAC, "syslog", message="x" * 10000)
    detail = timeline.machine(MAC)
    assert detail is not None
    assert len(detail["timeline"][0]["message"]) < 300


# --- GET /machines ---------------------------------------------------------------


def test_machines_routes() -> None:
    http = HTTPServer()
    clock = http.clock
    timeline = http.app.timeline = BootTimeline(clock)
    known(http)
    from test_http_app import MAC as HTTP_MAC

    timeline.seen(HTTP_MAC, "dhcp-discover")
    clock.advance(2)
    assert http.fetch(f"/{HTTP_MAC}/auto.ipxe").code == 200
    r = http.fetch("/machines")
    assert r.code == 200 and r.header("content-type") == "application/json"
    assert json.loads(r.body) == {"machines": [{
        "mac": HTTP_MAC, "first_seen": 1000.0, "last_seen": 1002.0, "last_stage": "script",
        "stages": {"dhcp-discover": 0.0, "script": 2.0},
    }]}
    for notation in (HTTP_MAC, HTTP_MAC.upper(), HTTP_MAC.replace(":", "-")):
        r = http.fetch(f"/machines/{notation}")
        assert r.code == 200, notation
        assert json.loads(r.body)["mac"] == HTTP_MAC
    assert http.fetch("/machines/52:54:00:00:00:99").code == 404
    assert http.fetch("/machines/not-a-mac").code == 404
    assert http.fetch("/machines/x/y").code == 404
    assert http.fetch("/machines", method="POST").code == 405


def test_machines_without_a_timeline_is_empty() -> None:
    http = HTTPServer()
    assert json.loads(http.fetch("/machines").body) == {"machines": []}
    assert http.fetch("/machines/52:54:00:00:00:01").code == 404


