"""DHCP floods (issue 10, item 4): one MAC flooding is rate-limited without starving the others.

In-process tests drive :class:`smee.dhcp.protocol.DHCPServerProtocol` with a
fake transport and a :class:`~twisted.internet.task.Clock` (no sockets, no
timing): the per-MAC token bucket, its bounded table, the counter and the log
line, the order (before the reply memo), the settings. The relay-field checks
(hops, giaddr) are in test_dhcp_protocol.py and test_dhcp_policy.py.

The end-to-end test floods a real ``twistd smee`` in network namespaces
(tests/netns.py) from one MAC, as a relay agent would send it, thousands of
DISCOVERs a second, while ISC dhclient gets its lease from another namespace;
smee's /metrics must show the rate-limited count.
"""

from __future__ import annotations

import json
import random
import struct
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fakes import hardware
from netns import Lab, netns_lab_fixture, only_components  # noqa: F401  (netns_lab fixture)
from pcap import capture_files
from test_dhcp_memo import SyncBackend
from test_dhcp_protocol import (
    BCAST,
    IP1,
    IP2,
    MAC1,
    MAC2,
    MAC3,
    config,
    make,
    ours,
    replies,
    request,
)
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.usage import UsageError

from smee.dhcp.packet import OFFER, REQUEST
from smee.dhcp.protocol import (
    DEFAULT_RATE_BURST,
    DEFAULT_RATE_LIMIT,
    DEFAULT_RATE_TABLE,
    DHCPServerProtocol,
    MacRateLimiter,
)
from smee.logs import SmeeObserver
from smee.metrics import Metrics

RATE, BURST = 5.0, 10


def value(metrics: Metrics, **labels: str) -> float:
    return metrics.registry.get_sample_value("dhcp_messages_total", labels) or 0.0


def limited(**kw: Any) -> tuple[DHCPServerProtocol, Any, Clock, Metrics]:
    """A protocol with the default per-MAC limit (5/s, burst 10), a clock that has run a while, metrics."""
    clock = Clock()
    clock.advance(1_000_000)
    metrics = Metrics()
    kw.setdefault("rate_limit", RATE)
    kw.setdefault("rate_burst", BURST)
    proto, transport, _ = make(clock=clock, metrics=metrics, **kw)
    return proto, transport, clock, metrics


def timed_requests(path: Path) -> list[tuple[float, bytes]]:
    """(capture time, payload) of every datagram to port 67 in a classic pcap (tests/pcap.py drops the times)."""
    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e9 if data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e6
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    l3 = 14 if linktype == 1 else 16
    offset, out = 24, []
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        if frame[l3 - 2:l3] != b"\x08\x00" or frame[l3 + 9] != 17:
            continue
        ihl = (frame[l3] & 0x0F) * 4
        _, dport, length = struct.unpack_from("!HHH", frame, l3 + ihl)
        if dport == 67:
            out.append((sec + frac / scale, frame[l3 + ihl + 8:l3 + ihl + length]))
    return out


def _requests(path: Path) -> list[tuple[float, bytes]]:
    return [(t, d) for t, d in timed_requests(path) if len(d) >= 240 and d[0] == 1]


@pytest.mark.parametrize("path", [p for p in capture_files() if _requests(p)], ids=lambda p: p.stem)
def test_defaults_never_bother_a_real_client(path: Path) -> None:
    """Every captured boot (PXE ROMs, iPXE, chainload loops, dhclient), at its real pace, stays within half the burst."""
    requests = _requests(path)
    clock = Clock()
    limiter = MacRateLimiter(clock, DEFAULT_RATE_LIMIT, DEFAULT_RATE_BURST)
    lowest: dict[bytes, float] = {}
    for when, data in requests:
        clock.rightNow = when
        key = data[28:28 + data[2]]
        assert limiter.check(key) is None, f"{path.name}: request at {when} from {key.hex(':')} limited"
        lowest[key] = min(lowest.get(key, DEFAULT_RATE_BURST), limiter._buckets[key][0])
    assert min(lowest.values()) >= DEFAULT_RATE_BURST / 2, lowest


# --- one MAC floods, another is served ------------------------------------------------


def test_ten_thousand_discovers_in_a_second_get_burst_plus_rate_replies() -> None:
    proto, transport, clock, metrics = limited()
    flood, other = [], []
    with capturedLogs() as events:
        for i in range(10_000):
            proto.datagramReceived(request(MAC1, xid=i), BCAST)
            if i % 1000 == 500:  # the other machine boots now and then: 10 requests in the second
                proto.datagramReceived(request(MAC2, xid=0x100000 + i), BCAST)
            clock.advance(1e-4)  # 10,000 in 1 s
        for reply, _ in replies(transport):
            (flood if reply.xid < 0x100000 else other).append(reply)
    # at most burst + rate x 1 s for the flooder; every answer for the other
    assert BURST <= len(flood) <= BURST + RATE, len(flood)
    assert all(r.msg_type == OFFER and r.yiaddr == _packed(IP1) for r in flood)
    assert len(other) == 10 and all(r.msg_type == OFFER and r.yiaddr == _packed(IP2) for r in other)
    # every dropped request is counted, by its message type
    assert value(metrics, type="DISCOVER", outcome="rate-limited") == 10_000 - len(flood)
    assert value(metrics, type="DISCOVER", outcome="offer") == len(flood) + 10
    # one warning about the flooder (not one per dropped packet), naming it; none about the other
    warned = [e for e in ours(events) if e.get("outcome") == "rate-limited"]
    assert len(warned) == 1, warned
    [line] = warned
    assert line["log_level"] == LogLevel.warn and line["mac"] == MAC1 and line["dropped"] == 1
    assert not [e for e in ours(events) if e.get("mac") == MAC2 and e.get("outcome") != "offer"]


def test_another_line_a_minute_later_says_how_many_were_dropped() -> None:
    proto, _, clock, _ = limited()
    with capturedLogs() as events:
        for i in range(BURST + 100):
            proto.datagramReceived(request(MAC1, xid=i), BCAST)
        clock.advance(30)  # bucket full again, but still within the minute: no new line
        for i in range(BURST + 50):
            proto.datagramReceived(request(MAC1, xid=i), BCAST)
        clock.advance(31)
        proto.datagramReceived(request(MAC1, xid=1), BCAST)  # allowed (refilled): no line
        for i in range(BURST + 7):
            proto.datagramReceived(request(MAC1, xid=i), BCAST)
    lines = [e for e in ours(events) if e.get("outcome") == "rate-limited"]
    # first drop, then the 99 + 50 + 1 dropped since, reported when the minute has passed
    assert [e["dropped"] for e in lines] == [1, 150], lines


def test_the_limit_applies_before_the_reply_memo() -> None:
    # An in-memory backend (by_mac_now): replies are remembered and repeated
    # requests answered from the memo, which must not bypass the limit.
    backend = SyncBackend({MAC1: hardware(MAC1, IP1), MAC2: hardware(MAC2, IP2)})
    clock = Clock()
    metrics = Metrics()
    proto = DHCPServerProtocol(backend, config(), clock, "eth1", metrics=metrics,
                               rate_limit=RATE, rate_burst=BURST)
    transport = _connect(proto)
    for i in range(1000):
        proto.datagramReceived(request(MAC1, xid=i), BCAST)
    assert len(transport.written) == BURST
    assert proto.memo_hits == BURST - 1  # the memo did answer, within the limit
    assert value(metrics, type="DISCOVER", outcome="rate-limited") == 1000 - BURST
    clock.advance(1)  # five more tokens
    for i in range(100):
        proto.datagramReceived(request(MAC1, xid=i), BCAST)
    assert len(transport.written) == BURST + RATE


def test_rate_limited_requests_are_counted_by_type_without_parsing() -> None:
    proto, transport, _, metrics = limited()
    for i in range(BURST):
        proto.datagramReceived(request(MAC1, xid=i), BCAST)
    transport.clear()
    proto.datagramReceived(request(MAC1, REQUEST, options={54: b"\xc0\x00\x02\x01"}), BCAST)
    proto.datagramReceived(request(MAC1, None), BCAST)  # no option 53
    head = request(MAC1, None, pxe=False)[:240]
    # option 53 after a pad and another option: found; cut short: None
    proto.datagramReceived(head + b"\x00\x0c\x04host\x35\x01\x01\xff", BCAST)
    proto.datagramReceived(head + b"\x0c\x04host\x35\x01", BCAST)
    assert transport.written == []
    assert value(metrics, type="REQUEST", outcome="rate-limited") == 1
    assert value(metrics, type="type-None", outcome="rate-limited") == 2
    assert value(metrics, type="DISCOVER", outcome="rate-limited") == 1


def test_junk_is_not_charged_to_anyone() -> None:
    # Datagrams parse() rejects stay "malformed" (or "not-request"), never "rate-limited".
    proto, _, _, metrics = limited()
    good = request(MAC1)
    bad_cookie = good[:236] + b"\0\0\0\0" + good[240:]
    for _ in range(50):
        proto.datagramReceived(bad_cookie, BCAST)
        proto.datagramReceived(good[:200], BCAST)
    assert value(metrics, type="type-None", outcome="malformed") == 100
    assert sum(s.value for f in metrics.dhcp_messages.collect() for s in f.samples
               if s.labels.get("outcome") == "rate-limited") == 0


def test_the_limit_is_per_hardware_address_not_per_byte_pattern() -> None:
    # Changing the chaddr padding, the xid or the secs does not make a new client.
    proto, transport, _, _ = limited()
    for i in range(200):
        data = bytearray(request(MAC1, xid=i))
        data[34:44] = i.to_bytes(10, "big")  # chaddr bytes beyond hlen 6
        data[8:10] = (i % 60).to_bytes(2, "big")  # secs
        proto.datagramReceived(bytes(data), BCAST)
    assert len(transport.written) == BURST


def test_off_when_the_rate_is_zero() -> None:
    proto, transport, _, metrics = limited(rate_limit=0)
    assert proto.limiter is None
    for i in range(500):
        proto.datagramReceived(request(MAC1, xid=i), BCAST)
    assert len(transport.written) == 500
    assert value(metrics, type="DISCOVER", outcome="offer") == 500


# --- the table is bounded --------------------------------------------------------------


def test_table_stays_bounded_under_100000_random_macs_and_the_flooder_stays_limited() -> None:
    # Random MACs (unknown to the backend: no replies) interleaved with one
    # known flooder; log events at warn only, as a production --log-level
    # would not build the info lines either.
    backend = SyncBackend({MAC3: hardware(MAC3, IP1)})
    proto, transport, clock, metrics = limited(backend=backend, log_level="warn")
    rng = random.Random(10)
    template = bytearray(request(MAC2, pxe=False))
    sizes = []
    for i in range(100_000):
        template[28:34] = b"\x02" + rng.randbytes(5)
        proto.datagramReceived(bytes(template), BCAST)
        if i % 100 == 0:
            proto.datagramReceived(request(MAC3, xid=i), BCAST)  # the flooder
        if i % 10_000 == 0:
            sizes.append(len(proto.limiter))
        clock.advance(1e-5)  # 100,000 in 1 s
    assert max(sizes + [len(proto.limiter)]) <= DEFAULT_RATE_TABLE
    assert len(proto.limiter) == DEFAULT_RATE_TABLE
    # the flooder (1,000 requests in the second) was seen between every 100 others: never forgotten
    answered = len(replies(transport))
    assert BURST <= answered <= BURST + RATE, answered
    assert value(metrics, type="DISCOVER", outcome="rate-limited") == 1000 - answered


def test_limiter_forgets_the_least_recently_seen_first() -> None:
    clock = Clock()
    limiter = MacRateLimiter(clock, rate=1, burst=1, size=3)
    assert limiter.check(b"a") is None and limiter.check(b"b") is None and limiter.check(b"c") is None
    assert limiter.check(b"a") == 1  # a is limited, and now the most recent
    assert limiter.check(b"d") is None  # b, the least recently seen, goes
    assert len(limiter) == 3
    assert limiter.check(b"a") == 0  # a kept its empty bucket (a line was just due)
    assert limiter.check(b"b") is None  # b came back with a full bucket


def test_limiter_survives_a_clock_that_steps_back() -> None:
    clock = Clock()
    clock.advance(1000)
    limiter = MacRateLimiter(clock, rate=1, burst=2)
    assert limiter.check(b"m") is None and limiter.check(b"m") is None
    assert limiter.check(b"m") == 1
    clock.rightNow = 10.0  # the wall clock jumped back
    assert limiter.check(b"m") == 1  # limited (no tokens yet), and a line is due (time ran back)
    clock.advance(1)
    assert limiter.check(b"m") is None  # one token a second from the new time, not 990 s later


@pytest.mark.parametrize(("rate", "burst", "size"), [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_limiter_rejects_nonsense(rate: float, burst: int, size: int) -> None:
    with pytest.raises(ValueError):
        MacRateLimiter(Clock(), rate, burst, size)


# --- logs: the observer's refusal limiting keeps a storm of flooders to a few lines -----


def test_many_flooding_macs_make_a_few_log_lines() -> None:
    proto, _, clock, _ = limited()
    lines: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            lines.extend(t for t in text.splitlines() if t)

        def flush(self) -> None:
            pass

    observer = SmeeObserver(Stream(), "info", tty=False, clock=clock)  # type: ignore[arg-type]
    with capturedLogs() as events:
        for n in range(50):
            mac = f"02:00:00:00:01:{n:02x}"
            for i in range(BURST + 20):
                proto.datagramReceived(request(mac, xid=i), BCAST)
    for event in events:
        observer(event)
    warned = [json.loads(t) for t in lines]
    rate_lines = [r for r in warned if r.get("outcome") == "rate-limited"]
    # one event per MAC from the protocol, of which the observer lets 10 a minute through
    assert len([e for e in events if e.get("outcome") == "rate-limited"]) == 50
    assert len(rate_lines) == 10 and all(r["level"] == "warn" for r in rate_lines)
    assert "rate-limiting 02:00:00:00:01:00" in rate_lines[0]["message"]
    # The window ends (on a timer when the reactor thread is known, else at the next such line).
    clock.advance(61)
    observer(events[-1])
    later = [json.loads(t) for t in lines[len(warned):]]
    # (the 50 unknown MACs' own refusals are summarised too, as "unknown")
    assert [r["suppressed"] for r in later if "suppressed" in r and r["outcome"] == "rate-limited"] == [40], later


# --- settings ---------------------------------------------------------------------------


@pytest.fixture
def hwfile(tmp_path: Path) -> str:
    path = tmp_path / "hardware.yaml"
    path.write_text(f"{MAC1}:\n  ipAddress: {IP1}\n  subnetMask: 255.255.255.0\n")
    return str(path)


@pytest.mark.parametrize(("flags", "rate", "burst"), [
    ([], 5.0, 10),
    (["--dhcp-rate-limit=0"], 0.0, 10),
    (["--dhcp-rate-limit=0.5", "--dhcp-rate-burst=3"], 0.5, 3),
])
def test_settings_reach_each_protocol(hwfile: str, flags: list[str], rate: float, burst: int) -> None:
    from test_dhcp_socket import file_args, options
    from twisted.internet import reactor

    from smee.tap import makeService

    top = makeService(options(file_args(hwfile) + ["--dhcp-addr=127.0.0.1:1067"] + flags), reactor=Clock())
    dhcp = top.getServiceNamed("dhcp")
    assert (dhcp.rate_limit, dhcp.rate_burst) == (rate, burst)
    dhcp.reactor, dhcp.address = reactor, ("127.0.0.1", 0)
    dhcp.startService()
    try:
        [protocol] = dhcp.protocols
        if rate == 0:
            assert protocol.limiter is None
        else:
            assert protocol.limiter is not None
            assert (protocol.limiter.rate, protocol.limiter.burst) == (rate, burst)
            assert protocol.limiter._clock is reactor
    finally:
        dhcp.stopService()


@pytest.mark.parametrize("flag", [
    "--dhcp-rate-limit=-1", "--dhcp-rate-limit=nan", "--dhcp-rate-limit=inf", "--dhcp-rate-limit=fast",
    "--dhcp-rate-burst=0", "--dhcp-rate-burst=2.5",
])
def test_bad_settings_name_the_option(hwfile: str, flag: str) -> None:
    from test_dhcp_socket import file_args, options

    with pytest.raises(UsageError, match=flag.split("=")[0]):
        options(file_args(hwfile) + [flag])


# --- end to end: a flooder and dhclient against twistd smee ------------------------------

SERVER_IP = "192.0.2.1"
FLOODER_IP = "192.0.2.5"
CLIENT_MAC = "02:00:00:00:00:10"
FLOOD_MAC = "02:00:00:00:00:66"
FLOOD_COUNT, FLOOD_RATE, FLOOD_MAX_SECONDS = 20_000, 4_000, 10.0

HARDWARE = f"""\
{CLIENT_MAC}:
  ipAddress: 192.0.2.10
  subnetMask: 255.255.255.128
  defaultGateway: 192.0.2.1
  leaseTime: 7200
{FLOOD_MAC}:
  ipAddress: 192.0.2.66
  subnetMask: 255.255.255.128
  leaseTime: 7200
"""

#: The flooder: a relay agent gone mad. It sends DISCOVERs for one MAC, with
#: giaddr = its own address, from port 67 (where smee's replies come back),
#: paced at RATE/s, COUNT at most, MAX_SECONDS at most; counts the replies and
#: prints one JSON line. Only to SERVER, inside the test's namespaces.
FLOODER = textwrap.dedent(
    """
    import json, socket, struct, sys, time
    server, me, mac, count, rate, limit = sys.argv[1], sys.argv[2], sys.argv[3], *map(float, sys.argv[4:7])
    count = int(count)
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\\0")
    def discover(xid):
        head = struct.pack("!BBBBIHH4s4s4s4s16s", 1, 1, 6, 1, xid, 0, 0, bytes(4), bytes(4), bytes(4),
                           socket.inet_aton(me), chaddr)
        return head + bytes(192) + b"\\x63\\x82\\x53\\x63" + b"\\x35\\x01\\x01\\xff"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((me, 67))
    s.setblocking(False)
    sent = replies = 0
    start = time.monotonic()
    print("flooding", flush=True)
    def drain():
        global replies
        while True:
            try:
                data = s.recv(4096)
            except BlockingIOError:
                return
            if len(data) > 240 and data[0] == 2 and data[28:34] == chaddr[:6]:
                replies += 1
    while sent < count and time.monotonic() - start < limit:
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            try:
                s.sendto(discover(0x66000000 + sent), (server, 67))
            except BlockingIOError:
                break
            sent += 1
        drain()
        time.sleep(0.001)
    elapsed = time.monotonic() - start
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        drain()
        time.sleep(0.01)
    print(json.dumps({"sent": sent, "replies": replies, "elapsed": elapsed}), flush=True)
    """
)


def _metrics(text: str) -> dict[tuple[str, str], float]:
    """dhcp_messages_total by (type, outcome) from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.labels["type"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "dhcp_messages_total"
    }


@pytest.mark.netns
def test_flooding_relay_is_limited_while_dhclient_gets_its_lease(netns_lab: Lab) -> None:
    """srv: a bridge (192.0.2.1/25, smee) joining cli (dhclient) and fld (the flooder, 192.0.2.5)."""
    lab = netns_lab
    lab.require("dhclient")
    srv, cli, fld = lab.namespace("srv"), lab.namespace("cli"), lab.namespace("fld")
    s_if, c_if = lab.veth(srv, cli, b_mac=CLIENT_MAC)
    s2_if, f_if = lab.veth(srv, fld)
    br = lab.bridge(srv, [s_if, s2_if])
    srv.addr(br, f"{SERVER_IP}/25")
    fld.addr(f_if, f"{FLOODER_IP}/25")
    smee = lab.smee(
        srv, HARDWARE, f"--public-ip={SERVER_IP}", f"--dhcp-iface={br}", "--http-ipxe-binary-enabled=false",
        *only_components("dhcp", "http"), listen=(("udp", 67), ("tcp", 8080)),
    )
    script = lab.path("flooder.py")
    script.write_text(FLOODER)
    flooder = fld.spawn([sys.executable, script, SERVER_IP, FLOODER_IP, FLOOD_MAC,
                         str(FLOOD_COUNT), str(FLOOD_RATE), str(FLOOD_MAX_SECONDS)], name="flooder")
    flooder.wait_for("flooding", timeout=10)
    smee.wait_for("rate-limiting " + FLOOD_MAC, timeout=10)  # the flood is on and being limited

    lease = lab.dhclient(cli, c_if)
    print(f"[flood/dhclient] {lease.timeline()}")
    assert lease.ok, f"{lease.timeline()}\n{lease.output}"
    assert lease.env.get("new_ip_address") == "192.0.2.10"
    assert lease.elapsed is not None and lease.elapsed < 5, lease.timeline()

    flooder.wait(FLOOD_MAX_SECONDS + 10)
    result = json.loads(flooder.text().strip().splitlines()[-1])
    print(f"[flood] {result}")
    assert result["sent"] >= 5000, result  # thousands a second for over a second
    # the flooder is answered now and then, never more than burst + rate x time (+1 s for scheduling)
    assert 1 <= result["replies"] <= BURST + RATE * (result["elapsed"] + 1), result

    fetch = ("import urllib.request as u; o = u.build_opener(u.ProxyHandler({})); "
             f"print(o.open('http://{SERVER_IP}:8080/metrics', timeout=5).read().decode())")
    page = srv.run(sys.executable, "-c", fetch).stdout
    counts = _metrics(page)
    print(f"[flood] smee counted {counts}")
    dropped = counts.get(("DISCOVER", "rate-limited"), 0)
    # every DISCOVER smee received was answered or rate-limited (the kernel may drop a few under load)
    assert dropped >= 0.9 * (result["sent"] - result["replies"]), (dropped, result)
    assert counts.get(("DISCOVER", "offer"), 0) + dropped <= result["sent"] + 10, counts
    assert "Traceback" not in smee.text()
    warnings = [ln for ln in smee.text().splitlines() if "rate-limiting " + FLOOD_MAC in ln]
    assert 1 <= len(warnings) <= 2, warnings  # once a minute per MAC at most
    assert not [ln for ln in smee.text().splitlines() if "rate-limiting " + CLIENT_MAC in ln]


def _packed(ip: str) -> bytes:
    from ipaddress import IPv4Address

    return IPv4Address(ip).packed


def _connect(proto: DHCPServerProtocol) -> Any:
    from fakes import FakeUDPTransport

    transport = FakeUDPTransport()
    proto.makeConnection(transport)
    return transport
