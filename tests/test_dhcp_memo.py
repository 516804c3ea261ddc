"""The DHCP reply memo changes nothing but the cost: a differential test against the protocol without it.

Two protocols side by side, one with the memo and one built with
``memo_size=0``, share the backend's records (the very same Match objects),
the clock and the chainload record; each has its own transport, metrics
(including the instrumented backend's lookup counters), boot timeline and
log capture. Every request goes to both and everything observable must be
equal: the datagrams written and their destinations, the log events, the
counters, the timeline. The inputs are every DHCP payload of the shared
captures, repeated with new xids, and hypothesis' variations of them; then
the cases where the memo must not answer: a reload (new Match objects), a
changed chainload state, eviction at the bound.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any, Iterator

import pytest
from fakes import FakeUDPTransport, hardware
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pcap import capture_files, dhcp_payloads
from test_dhcp_protocol import config as base_config
from test_dhcp_protocol import request
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from smee.chainload import Chainloads
from smee.dhcp.classify import classify
from smee.dhcp.packet import BOOTREQUEST, REQUEST, DHCPParseError, parse
from smee.dhcp.policy import DHCPConfig
from smee.dhcp.protocol import DEFAULT_MEMO_SIZE, DHCPServerProtocol
from smee.hardware import Match
from smee.metrics import InstrumentedBackend, Metrics
from smee.timeline import BootTimeline

BCAST = ("0.0.0.0", 68)


class SyncBackend:
    """An in-memory backend with ``by_mac_now``, like the file backend: the memo's path."""

    kind = "sync"

    def __init__(self, matches: dict[str, Match | Exception] | None = None) -> None:
        self.matches: dict[str, Match | Exception] = dict(matches or {})

    def by_mac_now(self, mac: str) -> Match | None:
        found = self.matches.get(mac)
        if isinstance(found, Exception):
            raise found
        return found

    def by_mac(self, mac: str) -> defer.Deferred[Match | None]:
        return defer.maybeDeferred(self.by_mac_now, mac)


class Side:
    """One protocol with its own transport, metrics, timeline."""

    def __init__(self, backend: SyncBackend, cfg: DHCPConfig, clock: Clock, chainloads: Chainloads,
                 memo_size: int, log_level: str) -> None:
        self.metrics = Metrics()
        self.timeline = BootTimeline(clock, metrics=self.metrics)
        self.proto = DHCPServerProtocol(
            InstrumentedBackend(backend, self.metrics, clock), cfg, clock, "eth1",
            chainloads=chainloads, metrics=self.metrics, timeline=self.timeline,
            log_level=log_level, memo_size=memo_size,
        )
        self.transport = FakeUDPTransport()
        self.proto.makeConnection(self.transport)

    def receive(self, data: bytes, addr: Any) -> tuple[list[tuple[bytes, Any]], list[dict[str, Any]]]:
        """What one datagram caused: the datagrams written and the log events (comparable parts)."""
        with capturedLogs() as events:
            self.proto.datagramReceived(data, addr)
        return self.transport.clear(), [_comparable(e) for e in events]

    def state(self) -> tuple[Any, Any]:
        samples = sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for family in self.metrics.collect()
            for s in family.samples
            if s.name.startswith(("dhcp_messages", "backend_lookups", "boot_stage_seconds"))
            and not s.name.endswith("_created")
        )
        return samples, self.timeline.machines()


def _comparable(event: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in event.items() if not k.startswith("log_") or k in ("log_format", "log_level")}
    failure = event.get("log_failure")
    if failure is not None:
        keep["failure"] = (type(failure.value), str(failure.value))
    return keep


class Pair:
    """The protocol with the memo and the one without, fed the same datagrams."""

    def __init__(self, matches: dict[str, Match | Exception], cfg: DHCPConfig, *,
                 memo_size: int = DEFAULT_MEMO_SIZE, log_level: str = "debug") -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.backend = SyncBackend(matches)
        self.chainloads = Chainloads(self.clock)
        self.memo = Side(self.backend, cfg, self.clock, self.chainloads, memo_size, log_level)
        self.plain = Side(self.backend, cfg, self.clock, self.chainloads, 0, log_level)

    def send(self, data: bytes, addr: Any = BCAST) -> tuple[bool, list[tuple[bytes, Any]]]:
        """Both sides get ``data``; asserts they did the same. (answered from the memo?, datagrams)."""
        hits = self.memo.proto.memo_hits
        got = self.memo.receive(data, addr)
        want = self.plain.receive(data, addr)
        assert got == want
        assert self.memo.state() == self.plain.state()
        return self.memo.proto.memo_hits > hits, got[0]


def with_xid(data: bytes, xid: int) -> bytes:
    return data[:4] + xid.to_bytes(4, "big") + data[8:] if len(data) >= 8 else data


def _capture_payloads() -> list[tuple[bytes, tuple[str, int]]]:
    out = []
    for path in capture_files():
        for d in dhcp_payloads(path):
            out.append((d.payload, d.src))
    return out


CAPTURED = _capture_payloads()


def _requests() -> list[bytes]:
    out = []
    for data, _ in CAPTURED:
        try:
            p = parse(data)
        except DHCPParseError:
            continue
        if p.op == BOOTREQUEST:
            out.append(data)
    return out


REQUESTS = _requests()


def _records() -> dict[str, Match | Exception]:
    """A record for every client MAC in the captures (one with a VLAN, one without netboot)."""
    macs = sorted({parse(d).mac for d in REQUESTS if d[2] == 6})
    out: dict[str, Match | Exception] = {}
    for i, mac in enumerate(macs):
        extra: dict[str, Any] = {"vlan_id": "42"} if i == 1 else {}
        out[mac] = hardware(mac, f"192.0.2.{10 + i}", gateway="192.0.2.1", allow_pxe=i != 2,
                            hostname=f"node-{i}", **extra)
    return out


def config(mode: str, chainload: bool = False) -> DHCPConfig:
    return replace(base_config(mode), ipxe_rom_chainload=chainload)


CONFIGS = [("reservation", False), ("reservation", True), ("proxy", False), ("auto-proxy", False)]


def test_captures_are_there() -> None:
    assert len(REQUESTS) > 20
    assert {classify(parse(d)).user_class for d in REQUESTS} >= {"iPXE", "Tinkerbell", ""}


@pytest.mark.parametrize("mode, chainload", CONFIGS)
@pytest.mark.parametrize("log_level", ["debug", "error"])
def test_every_captured_datagram_repeated_with_new_xids(mode: str, chainload: bool, log_level: str) -> None:
    pair = Pair(_records(), config(mode, chainload), log_level=log_level)
    answered = hits = 0
    for round_ in range(3):
        for i, (data, src) in enumerate(CAPTURED):
            hit, sent = pair.send(with_xid(data, 0x5EED0000 + 7919 * i + round_) if round_ else data, src)
            answered += bool(sent)
            hits += hit
    # Not a vacuous comparison: the memo did answer the repeats.
    assert answered > 0 and hits > 0
    assert hits >= answered * 2 // 3  # every answered datagram of rounds 2 and 3 at least


def test_repeats_with_new_xids_are_answered_from_the_memo_with_that_xid() -> None:
    mac = "52:54:00:00:00:01"
    pair = Pair({mac: hardware(mac, "192.0.2.10")}, config("reservation"))
    hit, [(first, dest)] = pair.send(request(mac, xid=1))
    assert not hit
    for xid in (2, 3, 0xFFFFFFFF, 1):
        hit, [(again, dest2)] = pair.send(request(mac, xid=xid))
        assert hit and dest2 == dest
        assert parse(again).xid == xid and again[:4] + again[8:] == first[:4] + first[8:]


def test_retransmissions_with_growing_secs_are_answered_from_the_memo() -> None:
    """Firmware retransmits with the same xid and a larger ``secs``; the policy never reads secs."""
    mac = "52:54:00:00:00:01"
    pair = Pair({mac: hardware(mac, "192.0.2.10")}, config("reservation"))
    first = request(mac, xid=7)
    hit, [(reply, dest)] = pair.send(first)
    assert not hit
    for secs in (1, 4, 12, 65535):
        again = first[:8] + secs.to_bytes(2, "big") + first[10:]
        hit, [(reply2, dest2)] = pair.send(again)
        assert hit and (reply2, dest2) == (reply, dest)


def test_reload_makes_new_matches_and_the_memo_misses() -> None:
    mac = "52:54:00:00:00:01"
    pair = Pair({mac: hardware(mac, "192.0.2.10")}, config("reservation"))
    pair.send(request(mac, xid=1))
    assert pair.send(request(mac, xid=2))[0]
    pair.backend.matches[mac] = hardware(mac, "192.0.2.10")  # equal, but a reload's new object
    hit, [(data, _)] = pair.send(request(mac, xid=3))
    assert not hit and parse(data).yiaddr == IPv4Address("192.0.2.10").packed
    pair.backend.matches[mac] = hardware(mac, "192.0.2.77")  # the record changed
    hit, [(data, _)] = pair.send(request(mac, xid=4))
    assert not hit and parse(data).yiaddr == IPv4Address("192.0.2.77").packed
    assert pair.send(request(mac, xid=5))[0]
    del pair.backend.matches[mac]  # removed: refused, and nothing remembered for it
    assert pair.send(request(mac, xid=6)) == (False, [])
    pair.backend.matches[mac] = RuntimeError("backend broke")
    assert pair.send(request(mac, xid=7)) == (False, [])


def test_backend_or_config_replaced_forgets_everything() -> None:
    mac = "52:54:00:00:00:01"
    pair = Pair({mac: hardware(mac, "192.0.2.10")}, config("reservation"))
    pair.send(request(mac, xid=1))
    proto = pair.memo.proto
    assert len(proto._memo) == 1
    proto.config = config("proxy")
    assert len(proto._memo) == 0
    pair.plain.proto.config = config("proxy")
    pair.send(request(mac, xid=2))
    proto.backend = proto.backend
    assert len(proto._memo) == 0


def test_changed_chainload_state_is_not_answered_from_the_memo() -> None:
    mac = "52:54:00:00:00:01"
    pair = Pair({mac: hardware(mac, "192.0.2.10")}, config("reservation", chainload=True))
    ipxe = request(mac, xid=1, options={77: b"iPXE"})
    hit, [(rom, _)] = pair.send(ipxe)
    assert not hit and parse(rom).file.startswith(b"tftp://")
    assert pair.send(with_xid(ipxe, 2))[0]
    pair.chainloads.served(mac)  # smee's TFTP just sent it our binary
    hit, [(ours, _)] = pair.send(with_xid(ipxe, 3))
    assert not hit and parse(ours).file == b"http://192.0.2.1:8080/52:54:00:00:00:01/auto.ipxe"
    assert pair.send(with_xid(ipxe, 4))[0]
    pair.clock.advance(10_000)  # the record expired: a ROM again
    hit, [(again, _)] = pair.send(with_xid(ipxe, 5))
    assert not hit and again[8:] == rom[8:]


def test_eviction_at_the_bound() -> None:
    macs = [f"52:54:00:00:00:{i:02x}" for i in range(1, 6)]
    pair = Pair({m: hardware(m, f"192.0.2.{10 + i}") for i, m in enumerate(macs)}, config("reservation"),
                memo_size=3)
    for i, mac in enumerate(macs):
        assert not pair.send(request(mac, xid=i))[0]
    assert len(pair.memo.proto._memo) == 3
    assert not pair.send(request(macs[0], xid=10))[0]  # evicted (oldest first)
    assert pair.send(request(macs[4], xid=11))[0]  # still there
    assert len(pair.memo.proto._memo) == 3


def test_stopped_protocol_counts_like_the_plain_one() -> None:
    mac = "52:54:00:00:00:01"
    pair = Pair({mac: hardware(mac, "192.0.2.10")}, config("reservation"))
    pair.send(request(mac, xid=1))
    pair.memo.proto.transport = pair.plain.proto.transport = None
    assert pair.send(request(mac, xid=2)) == (False, [])


def test_naks_and_replies_to_non_ethernet_and_auto_proxy_clients() -> None:
    mac = "52:54:00:00:00:01"
    pair = Pair({mac: hardware(mac, "192.0.2.10")}, config("reservation"))
    nak = request(mac, REQUEST, xid=1, options={50: IPv4Address("192.0.2.99").packed})
    for xid in range(1, 4):
        assert pair.send(with_xid(nak, xid))[0] == (xid > 1)
    auto = Pair({}, config("auto-proxy"))
    odd = bytearray(request(mac, xid=1))
    odd[2] = 0  # hlen 0: not looked up, still answered in auto-proxy mode
    for xid in range(1, 4):
        hit, [_] = auto.send(with_xid(bytes(odd), xid))
        assert hit == (xid > 1)


def test_memo_is_off_with_someone_elses_policy_or_classify() -> None:
    from types import SimpleNamespace

    from smee.dhcp import policy

    other = SimpleNamespace(needs_lookup=policy.needs_lookup, decide=policy.decide, destination=policy.destination)
    assert DHCPServerProtocol(SyncBackend(), config("proxy"), Clock(), policy=other)._memo is None
    assert DHCPServerProtocol(SyncBackend(), config("proxy"), Clock(), classify=classify)._memo is not None
    assert DHCPServerProtocol(SyncBackend(), config("proxy"), Clock(), classify=lambda p: classify(p))._memo is None
    assert DHCPServerProtocol(SyncBackend(), config("proxy"), Clock(), memo_size=0)._memo is None


class _Socket:
    def __init__(self, error: OSError | None) -> None:
        self.error = error
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        if self.error is not None:
            raise self.error
        self.sent.append((data, addr))
        return len(data)


@pytest.mark.parametrize("error", [None, OSError(11, "Resource temporarily unavailable")])
def test_replies_go_to_the_socket_and_to_port_write_when_it_fails(error: OSError | None) -> None:
    mac = "52:54:00:00:00:01"
    proto = DHCPServerProtocol(SyncBackend({mac: hardware(mac, "192.0.2.10")}), config("reservation"), Clock())
    transport = FakeUDPTransport()
    transport.socket = _Socket(error)  # type: ignore[attr-defined]
    proto.makeConnection(transport)
    for xid in (1, 2):  # the normal path, then the memo's
        proto.datagramReceived(request(mac, xid=xid), BCAST)
    sent = transport.socket.sent + transport.written  # type: ignore[attr-defined]
    assert [(parse(d).xid, dest) for d, dest in sent] == [(1, ("255.255.255.255", 68)), (2, ("255.255.255.255", 68))]
    assert (transport.written == []) == (error is None)
    # A new transport (tests swap them) is used at once, not the old socket.
    other = FakeUDPTransport()
    proto.transport = other
    proto.datagramReceived(request(mac, xid=3), BCAST)
    assert len(other.written) == 1


# --- hypothesis: variations of the captured requests --------------------------


def _pairs() -> Iterator[Pair]:
    records = _records()
    while True:
        for mode, chainload in CONFIGS:
            yield Pair(records, config(mode, chainload))


_PAIRS = _pairs()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(REQUESTS),
    edits=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(200, 600)),
    xids=st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=3),
    served=st.booleans(),
)
def test_variations_of_captured_requests(
    base: bytes, edits: list[tuple[int, int]], cut: int | None, xids: list[int], served: bool
) -> None:
    pair = next(_PAIRS)
    data = bytearray(base)
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    varied = bytes(data[:cut] if cut is not None else data)
    sequence = [base, varied] + [with_xid(varied, x) for x in xids] + [with_xid(base, 0xABCD)]
    for i, item in enumerate(sequence):
        if served and i == 2:
            for mac in pair.backend.matches:
                pair.chainloads.served(mac)
        pair.send(item, BCAST if i % 2 else ("192.0.2.254", 67))
