"""DHCPServerProtocol with a fake transport, a fake clock and scripted backends (no sockets)."""

from __future__ import annotations

import gc
from ipaddress import IPv4Address
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from fakes import FakeBackend, FakeUDPTransport, formatted, hardware
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from smee.backends import AmbiguousHardware, LookupFailed
from smee.dhcp.classify import classify
from smee.dhcp.packet import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    DISCOVER,
    NAK,
    OFFER,
    REQUEST,
    Packet,
    build,
    parse,
)
from smee.dhcp.policy import Decision, DHCPConfig
from smee.dhcp.protocol import DHCPServerProtocol
from smee.hardware import mac_bytes

SERVER = IPv4Address("192.0.2.1")
RELAY = "192.0.2.254"
MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
IP1, IP2 = "192.0.2.10", "192.0.2.11"
#: a PXE ROM's DISCOVER options (x86-64 UEFI): netboot per Smee's rules
PXE = {
    60: b"PXEClient:Arch:00007:UNDI:003016",
    93: b"\x00\x07",
    94: b"\x01\x03\x10",
    97: b"\x00" + bytes(range(16)),
}


def config(mode: str = "reservation") -> DHCPConfig:
    return DHCPConfig(
        mode=mode,
        server_ip=SERVER,
        syslog_ip=SERVER,
        tftp_ip=SERVER,
        tftp_port=69,
        http_binary_url="http://192.0.2.1:8080/ipxe/",
        http_binary_ip=SERVER,
        script_url="http://192.0.2.1:8080/auto.ipxe",
        prepend_mac=True,
        ipxe_rom_chainload=False,
    )


def request(
    mac: str = MAC1,
    msg_type: int | None = DISCOVER,
    *,
    xid: int = 0x1234,
    giaddr: str = "0.0.0.0",
    ciaddr: str = "0.0.0.0",
    pxe: bool = True,
    options: dict[int, bytes] | None = None,
) -> bytes:
    opts: dict[int, bytes] = {} if msg_type is None else {53: bytes((msg_type,))}
    if pxe:
        opts.update(PXE)
    opts.update(options or {})
    return build(
        Packet(
            BOOTREQUEST,
            xid=xid,
            ciaddr=IPv4Address(ciaddr).packed,
            giaddr=IPv4Address(giaddr).packed,
            chaddr=mac_bytes(mac),
            options=opts,
        )
    )


def make(
    backend: Any = None, mode: str = "reservation", clock: Clock | None = None, **kw: Any
) -> tuple[DHCPServerProtocol, FakeUDPTransport, Clock]:
    clock = clock or Clock()
    if backend is None:
        backend = FakeBackend()
        backend.add(hardware(MAC1, IP1))
        backend.add(hardware(MAC2, IP2))
    proto = DHCPServerProtocol(backend, config(mode), clock, "eth1", **kw)
    transport = FakeUDPTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def replies(transport: FakeUDPTransport) -> list[tuple[Packet, tuple[str, int]]]:
    return [(parse(data), addr) for data, addr in transport.clear()]


def ours(events: Any) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_namespace") == "smee.dhcp"]


@pytest.fixture
def logs() -> Iterator[Any]:
    """Captured log events; at the end, no Deferred may have died with an unhandled failure."""
    with capturedLogs() as events:
        yield events
        gc.collect()
        unhandled = [t for t in formatted(events) if "Unhandled error" in t]
        assert not unhandled, unhandled


BCAST = ("0.0.0.0", 68)

# --- reply destinations (real classify and policy) ---------------------------


def test_relayed_discover_goes_to_giaddr_port_67(logs: Any) -> None:
    proto, transport, _ = make()
    proto.datagramReceived(request(giaddr=RELAY), (RELAY, 67))
    [(reply, dest)] = replies(transport)
    assert dest == (RELAY, 67)
    assert reply.op == BOOTREPLY and reply.msg_type == OFFER and reply.xid == 0x1234
    assert reply.yiaddr == IPv4Address(IP1).packed and reply.giaddr == IPv4Address(RELAY).packed


def test_destination_ports_are_overridable(logs: Any) -> None:
    proto, transport, _ = make(server_port=10067, client_port=10068)
    proto.datagramReceived(request(giaddr=RELAY), (RELAY, 10067))
    proto.datagramReceived(request(), BCAST)
    assert [dest for _, dest in replies(transport)] == [(RELAY, 10067), ("255.255.255.255", 10068)]


def test_renewal_is_unicast_to_ciaddr_port_68(logs: Any) -> None:
    proto, transport, _ = make()
    proto.datagramReceived(request(msg_type=REQUEST, ciaddr=IP1, pxe=False), (IP1, 68))
    [(reply, dest)] = replies(transport)
    assert reply.msg_type == ACK and reply.yiaddr == IPv4Address(IP1).packed
    assert dest == (IP1, 68)


def test_local_discover_is_broadcast(logs: Any) -> None:
    proto, transport, _ = make()
    proto.datagramReceived(request(), BCAST)
    [(reply, dest)] = replies(transport)
    assert reply.msg_type == OFFER and dest == ("255.255.255.255", 68)
    # the boot file of a netboot client made it through the codec
    assert reply.file.endswith(b"ipxe.efi")


# --- logging -----------------------------------------------------------------


def test_reply_logged_at_debug_refusals_and_nak_at_info(logs: Any) -> None:
    proto, transport, _ = make()
    proto.datagramReceived(request(xid=1), BCAST)  # OFFER
    proto.datagramReceived(request(MAC3, xid=2), BCAST)  # unknown MAC
    proto.datagramReceived(  # asks for an address that is not its reservation
        request(msg_type=REQUEST, xid=3, options={50: IPv4Address("192.0.2.99").packed, 54: SERVER.packed}),
        BCAST,
    )
    sent = replies(transport)
    assert [r.msg_type for r, _ in sent] == [OFFER, NAK]
    events = ours(logs)
    by_xid = {e["xid"]: e for e in events}
    assert set(by_xid) == {1, 2, 3}
    offer, unknown, nak = by_xid[1], by_xid[2], by_xid[3]
    assert offer["log_level"] == LogLevel.debug and offer["outcome"] == "offer"
    assert offer["mac"] == MAC1 and offer["msg_type"] == "DISCOVER" and offer["iface"] == "eth1"
    assert offer["dst"] == ("255.255.255.255", 68)
    assert unknown["log_level"] == LogLevel.info and unknown["outcome"] == "unknown"
    assert unknown["mac"] == MAC3 and "unknown MAC" in unknown["reason"]
    assert nak["log_level"] == LogLevel.info and nak["outcome"] == "nak"
    text = formatted(events)
    assert any(MAC3 in t and "unknown MAC" in t and "0x00000002" in t for t in text)


def test_other_server_chosen_is_logged_at_info(logs: Any) -> None:
    proto, transport, _ = make()
    other = IPv4Address("192.0.2.200").packed
    proto.datagramReceived(request(msg_type=REQUEST, options={54: other, 50: IPv4Address(IP1).packed}), BCAST)
    assert transport.written == []
    [event] = ours(logs)
    assert event["log_level"] == LogLevel.info and event["outcome"] == "ignored"
    assert "another server" in event["reason"]


def test_not_netboot_in_proxy_mode_is_quiet(logs: Any) -> None:
    proto, transport, _ = make(mode="proxy")
    proto.datagramReceived(request(pxe=False), BCAST)
    assert transport.written == []
    [event] = ours(logs)
    assert event["outcome"] == "not-netboot" and event["log_level"] == LogLevel.debug


# --- junk ---------------------------------------------------------------------

JUNK = [
    b"",
    b"\x01",
    b"GET / HTTP/1.0\r\n\r\n",
    b"\x01" + b"\0" * 300,  # no magic cookie
    request()[:236] + b"\x63\x82\x53\x63" + b"\x35\x05\x01",  # option runs past the end
    b"\x07" + request()[1:],  # bad op
]


def test_junk_never_raises_and_is_logged_with_sender(logs: Any) -> None:
    proto, transport, _ = make()
    for i, data in enumerate(JUNK):
        proto.datagramReceived(data, ("192.0.2.77", 6800 + i))
    assert transport.written == []
    events = ours(logs)
    assert len(events) == len(JUNK)
    for i, (event, text) in enumerate(zip(events, formatted(events))):
        assert event["outcome"] == "malformed" and event["src"] == ("192.0.2.77", 6800 + i)
        assert f"192.0.2.77:{6800 + i}" in text and event["error"] in text


def test_bootreply_is_ignored(logs: Any) -> None:
    proto, transport, _ = make()
    reply = bytearray(request())
    reply[0] = BOOTREPLY
    proto.datagramReceived(bytes(reply), ("192.0.2.5", 67))
    assert transport.written == []
    assert [e["outcome"] for e in ours(logs)] == ["not-request"]


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=700), st.binary(min_size=1, max_size=64).map(lambda b: request()[:240] + b)))
def test_fuzz_never_raises(data: bytes) -> None:
    proto, _, _ = make()
    with capturedLogs() as events:
        proto.datagramReceived(data, ("192.0.2.77", 68))
    assert not [e for e in events if e.get("log_failure") is not None]


def test_non_ethernet_hardware_address_skips_the_backend(logs: Any) -> None:
    backend = FakeBackend()
    proto, transport, _ = make(backend)
    data = bytearray(request())
    data[2] = 0  # hlen 0 (as InfiniBand clients send)
    proto.datagramReceived(bytes(data), BCAST)
    assert backend.calls == [] and transport.written == []
    [event] = ours(logs)
    assert event["outcome"] == "unknown"


# --- slow, failing and raising backends ---------------------------------------


def test_slow_backend_times_out_without_reply_and_leaves_no_timer(logs: Any) -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    backend = FakeBackend({MAC1: pending})
    proto, transport, clock = make(backend, lookup_timeout=3.0)
    proto.datagramReceived(request(), BCAST)
    assert backend.calls == [("mac", MAC1)]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2.9)
    assert transport.written == [] and ours(logs) == []
    clock.advance(0.1)
    assert transport.written == []
    assert clock.getDelayedCalls() == []
    [event] = ours(logs)
    assert event["outcome"] == "lookup-timeout" and event["mac"] == MAC1
    assert event["log_level"] == LogLevel.warn
    assert "timed out after 3.0s" in formatted([event])[0]
    # The backend answering late changes nothing and raises nothing.
    pending.callback(hardware(MAC1, IP1))
    assert transport.written == []
    assert proto._pending == set()


def test_slow_backend_answering_in_time_gets_a_reply(logs: Any) -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    proto, transport, clock = make(FakeBackend({MAC1: pending}))
    proto.datagramReceived(request(giaddr=RELAY), (RELAY, 67))
    clock.advance(1)
    pending.callback(hardware(MAC1, IP1))
    [(reply, dest)] = replies(transport)
    assert reply.msg_type == OFFER and dest == (RELAY, 67)
    assert clock.getDelayedCalls() == [] and proto._pending == set()


class CountingClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0

    def callLater(self, *args: Any, **kw: Any) -> Any:
        self.scheduled += 1
        return super().callLater(*args, **kw)


def test_fired_lookup_schedules_no_timer(logs: Any) -> None:
    clock = CountingClock()
    proto, transport, _ = make(clock=clock)
    proto.datagramReceived(request(), BCAST)
    assert len(transport.written) == 1 and clock.scheduled == 0


@pytest.mark.parametrize(
    "error, why",
    [
        (LookupFailed("backend unavailable"), "backend unavailable"),
        (AmbiguousHardware("MAC 52:54:00:00:00:01 is claimed by a.yaml:1 and b.yaml:7"), "claimed by"),
        (RuntimeError("boom"), "RuntimeError: boom"),
    ],
)
def test_backend_failure_means_no_reply_and_one_log_line(logs: Any, error: Exception, why: str) -> None:
    proto, transport, _ = make(FakeBackend({MAC1: error}))
    proto.datagramReceived(request(), BCAST)
    assert transport.written == []
    [event] = ours(logs)
    assert event["mac"] == MAC1 and event["xid"] == 0x1234
    text = formatted([event])[0]
    assert MAC1 in text and why in text
    assert event["log_level"] in (LogLevel.warn, LogLevel.error)


def test_backend_failing_later_means_no_reply(logs: Any) -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    proto, transport, clock = make(FakeBackend({MAC1: pending}))
    proto.datagramReceived(request(), BCAST)
    pending.errback(AmbiguousHardware("two records"))
    assert transport.written == [] and clock.getDelayedCalls() == []
    assert [e["outcome"] for e in ours(logs)] == ["lookup-failed"]


def test_backend_raising_instead_of_failing(logs: Any) -> None:
    class Raising:
        def by_mac(self, mac: str) -> Any:
            raise LookupFailed("not even a Deferred")

    proto, transport, _ = make(Raising())
    proto.datagramReceived(request(), BCAST)
    assert transport.written == []
    [event] = ours(logs)
    assert event["outcome"] == "lookup-failed" and "not even a Deferred" in formatted([event])[0]


def test_good_client_served_after_junk_and_after_another_clients_failure(logs: Any) -> None:
    backend = FakeBackend({MAC2: AmbiguousHardware("duplicate")})
    backend.add(hardware(MAC1, IP1))
    slow: defer.Deferred[Any] = defer.Deferred()
    backend.set(MAC3, slow)
    proto, transport, clock = make(backend)
    proto.datagramReceived(b"\xff" * 50, ("192.0.2.77", 68))
    proto.datagramReceived(request(MAC2, xid=2), BCAST)
    proto.datagramReceived(request(MAC3, xid=3), BCAST)  # stays pending
    proto.datagramReceived(request(MAC1, xid=1), BCAST)
    [(reply, _)] = replies(transport)
    assert reply.xid == 1 and reply.yiaddr == IPv4Address(IP1).packed
    clock.advance(3)
    proto.datagramReceived(request(MAC1, xid=4), BCAST)
    assert [r.xid for r, _ in replies(transport)] == [4]
    assert clock.getDelayedCalls() == []


def test_stop_abandons_pending_lookups(logs: Any) -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    proto, transport, clock = make(FakeBackend({MAC1: pending}))
    proto.datagramReceived(request(), BCAST)
    proto.doStop()
    assert clock.getDelayedCalls() == [] and proto._pending == set()
    pending.callback(hardware(MAC1, IP1))  # ignored: the Deferred was cancelled
    clock.advance(10)
    assert transport.written == []
    assert [e["outcome"] for e in ours(logs)] == ["lookup-cancelled"]


def test_auto_proxy_never_asks_the_backend(logs: Any) -> None:
    backend = FakeBackend(default=RuntimeError("must not be called"))
    proto, transport, _ = make(backend, mode="auto-proxy")
    proto.datagramReceived(request(MAC3), BCAST)
    assert backend.calls == []
    [(reply, dest)] = replies(transport)
    assert reply.msg_type == OFFER and reply.yiaddr == b"\0\0\0\0" and dest == ("255.255.255.255", 68)


# --- policy errors and reply size (fake policy) --------------------------------


def fake_policy(reply_options: dict[int, bytes] | None = None, decide: Any = None) -> SimpleNamespace:
    def _decide(request: Packet, client: Any, match: Any, cfg: Any, served: bool = False) -> Decision:
        opts = {53: bytes((OFFER,))}
        opts.update(reply_options or {})
        return Decision(Packet(BOOTREPLY, xid=request.xid, chaddr=request.chaddr, options=opts), "test offer", "offer")

    return SimpleNamespace(
        needs_lookup=lambda client, cfg: True,
        decide=decide or _decide,
        destination=lambda request, reply: ("255.255.255.255", 68),
    )


def test_reply_respects_client_max_size(logs: Any) -> None:
    # 10 options of 40 bytes do not fit 548 bytes in the options field alone:
    # the codec moves some into file/sname (option 52), still <= the limit.
    big = {code: bytes(40) for code in range(200, 210)}
    proto, transport, _ = make(policy=fake_policy(big))
    proto.datagramReceived(request(options={57: (576).to_bytes(2, "big")}), BCAST)
    [(data, _)] = transport.written
    assert 548 < 240 + sum(2 + len(v) for v in big.values()) + 3
    assert len(data) <= 548
    assert all(parse(data).options[code] == bytes(40) for code in big)


def test_reply_too_large_for_client_is_dropped_and_logged(logs: Any) -> None:
    huge = {code: bytes(250) for code in range(200, 204)}
    proto, transport, _ = make(policy=fake_policy(huge))
    proto.datagramReceived(request(options={57: (576).to_bytes(2, "big")}), BCAST)
    assert transport.written == []
    [event] = ours(logs)
    assert event["outcome"] == "too-large" and event["log_level"] == LogLevel.error
    assert event["max_size"] == 548 and event["mac"] == MAC1
    # A client announcing a larger limit gets the same reply.
    proto.datagramReceived(request(options={57: (1500).to_bytes(2, "big")}), BCAST)
    [(data, _)] = transport.written
    assert 548 < len(data) <= 1500 - 28


def test_real_reply_fits_a_minimal_client(logs: Any) -> None:
    proto, transport, _ = make()
    proto.datagramReceived(request(options={57: (576).to_bytes(2, "big")}), BCAST)
    [(data, _)] = transport.written
    assert len(data) <= 548


def test_policy_bug_is_logged_not_raised(logs: Any) -> None:
    def broken(*args: Any) -> Decision:
        raise ZeroDivisionError("policy bug")

    proto, transport, _ = make(policy=fake_policy(decide=broken))
    proto.datagramReceived(request(), BCAST)
    assert transport.written == []
    [event] = ours(logs)
    assert event["log_level"] == LogLevel.error and event["mac"] == MAC1
    assert event["log_failure"].check(ZeroDivisionError)


def test_policy_bug_after_slow_lookup_is_logged_not_unhandled(logs: Any) -> None:
    def broken(*args: Any) -> Decision:
        raise ZeroDivisionError("policy bug")

    pending: defer.Deferred[Any] = defer.Deferred()
    proto, transport, clock = make(FakeBackend({MAC1: pending}), policy=fake_policy(decide=broken))
    proto.datagramReceived(request(), BCAST)
    pending.callback(None)
    assert transport.written == [] and clock.getDelayedCalls() == []
    assert [e["log_level"] for e in ours(logs)] == [LogLevel.error]


def test_send_error_is_logged(logs: Any) -> None:
    proto, transport, _ = make()

    def refuse(data: bytes, addr: Any = None) -> None:
        raise OSError(101, "Network is unreachable")

    transport.write = refuse  # type: ignore[method-assign]
    proto.datagramReceived(request(), BCAST)
    [event] = ours(logs)
    assert event["log_level"] == LogLevel.error and "Network is unreachable" in str(event["log_failure"].value)


def test_classify_and_policy_are_injectable(logs: Any) -> None:
    seen = []

    def my_classify(packet: Packet) -> Any:
        seen.append(packet.xid)
        return classify(packet)

    proto, transport, _ = make(classify=my_classify, policy=fake_policy())
    proto.datagramReceived(request(xid=77), BCAST)
    assert seen == [77] and len(transport.written) == 1



# --- relay fields that forbid a reply (issue 10) -----------------------------------


def _hops(data: bytes, hops: int) -> bytes:
    return data[:3] + bytes((hops,)) + data[4:]


@pytest.mark.parametrize(("hops", "giaddr", "outcome"), [
    (17, RELAY, "too-many-hops"),
    (200, "0.0.0.0", "too-many-hops"),
    (1, "255.255.255.255", "bad-giaddr"),
    (1, "224.0.0.9", "bad-giaddr"),
    (1, "240.1.2.3", "bad-giaddr"),
    (1, "0.0.0.7", "bad-giaddr"),
    (1, "127.0.0.1", "bad-giaddr"),  # claimed by a sender on the network
])
def test_bad_relay_fields_get_no_reply_no_lookup_and_one_line(logs: Any, hops: int, giaddr: str,
                                                               outcome: str) -> None:
    from smee.metrics import Metrics

    metrics = Metrics()
    backend = FakeBackend()
    backend.add(hardware(MAC1, IP1))
    proto, transport, _ = make(backend, metrics=metrics)
    proto.datagramReceived(_hops(request(giaddr=giaddr), hops), (RELAY, 67))
    assert transport.written == [] and backend.calls == []
    [event] = ours(logs)
    assert event["outcome"] == outcome and event["log_level"] == LogLevel.info and event["mac"] == MAC1
    [text] = formatted([event])
    assert MAC1 in text and (giaddr in text if outcome == "bad-giaddr" else f"{hops} relay hops" in text)
    assert metrics.registry.get_sample_value("dhcp_messages_total", {"type": "DISCOVER", "outcome": outcome}) == 1


def test_sixteen_hops_and_hops_without_giaddr_are_answered(logs: Any) -> None:
    proto, transport, _ = make()
    proto.datagramReceived(_hops(request(giaddr=RELAY), 16), (RELAY, 67))
    proto.datagramReceived(_hops(request(xid=2), 3), BCAST)
    assert [dest for _, dest in replies(transport)] == [(RELAY, 67), ("255.255.255.255", 68)]


def test_loopback_giaddr_only_from_this_host_even_from_the_memo(logs: Any) -> None:
    # The memo's key leaves the sender out: the check must come before it.
    from test_dhcp_memo import SyncBackend

    proto = DHCPServerProtocol(SyncBackend({MAC1: hardware(MAC1, IP1)}), config(), Clock(), "eth1")
    transport = FakeUDPTransport()
    proto.makeConnection(transport)
    data = request(giaddr="127.0.0.1")
    proto.datagramReceived(data, ("127.0.0.1", 67))  # a relay on this host
    proto.datagramReceived(data, ("127.0.0.1", 67))  # from the memo
    assert proto.memo_hits == 1
    assert [dest for _, dest in transport.clear()] == [("127.0.0.1", 67)] * 2
    proto.datagramReceived(data, ("192.0.2.77", 67))  # the same bytes from the network
    assert transport.written == [] and proto.memo_hits == 1
    assert ours(logs)[-1]["outcome"] == "bad-giaddr"


def test_malformed_relayed_junk_is_still_malformed(logs: Any) -> None:
    proto, transport, _ = make()
    data = _hops(request(giaddr="255.255.255.255"), 1)
    proto.datagramReceived(data[:240] + b"\x35\x01\x01\x0c\x10abc", BCAST)  # option 12 runs past the end
    assert transport.written == []
    assert [e["outcome"] for e in ours(logs)] == ["malformed"]
