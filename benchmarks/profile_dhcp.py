#!/usr/bin/env python
"""CPU cost of smee's DHCP request path, per packet, in one process (issue 9).

    .venv/bin/python benchmarks/profile_dhcp.py [--mode inproc|socket|both] [-n 20000]
        [--repeats 7] [--client pxe|ipxe] [--memo on|off] [--profile]

The runtime is built the way ``twistd smee`` builds it (:func:`smee.tap.makeRuntime`:
file backend with 200 records, reservation mode, the instrumented backend,
metrics, boot timeline, smee's log observer at ``--log-level=error`` as the
benchmark harness runs it) and the DHCP service by
:func:`smee.dhcp.service.makeService`, but bound to 127.0.0.1 (nothing is sent
off loopback). The requests are real ROM packets from the shared captures
(OVMF's PXE DISCOVER/REQUEST, or iPXE's with ``--client ipxe``), rewritten
for the 200 MACs, relayed (giaddr set, hops 1) and, for REQUEST, asking for
the reserved address from this server, so every request gets an OFFER or ACK.

``inproc``: the bytes go straight into the protocol's ``datagramReceived``;
the transport is swapped for one that only counts writes.
``socket``: a client socket on 127.0.0.1 sends bursts of ``--burst``
requests (default 32; 1 is ping-pong, one request per reactor wake-up as at
a low request rate) to the service's real Twisted UDP port and the reactor
is iterated until every reply came back; ``server doRead`` is the time inside
the port's ``doRead`` (recvfrom, the protocol, sendto, and the recvfrom that
ends each wake-up with EAGAIN), ``whole loop`` the whole round including the
client's syscalls and the reactor's epoll and timer bookkeeping.

The same 400 requests go round and round (xid aside, as perfdhcp's do), so
with the reply memo on (the default) nearly every one is answered from it:
that is the memo's hit path. ``--memo off`` builds the protocols without it:
the full path, as every request of a machine's first boot takes it.

Each repeat times ``-n`` packets (DISCOVER and REQUEST alternating, MACs in
turn) in CPU time (``time.process_time``/``thread_time``, so time spent
preempted by other processes does not count); the best repeat is the figure
(the machine is shared and noisy: cache and frequency effects remain). No
timing here is asserted anywhere: this is a measuring tool, not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pcap import CAPTURES, dhcp_payloads

RECORDS = 200
SERVER_IP = "192.0.2.1"
RELAY_IP = "192.0.2.100"
CAPTURE = {
    "pxe": ("uefi_ovmf-edk2-pxe__upstream-built-ipxe-efi.pcap", None),
    "ipxe": ("uefi_ovmf-edk2-pxe__upstream-built-ipxe-efi.pcap", b"Tinkerbell"),
}


def mac_of(i: int) -> str:
    return "02:00:00:00:" + f"{i >> 8:02x}:{i & 0xFF:02x}"


def ip_of(i: int) -> str:
    return f"198.51.100.{10 + i}" if i < 200 else f"203.0.113.{i - 190}"


def write_hardware(path: Path, n: int) -> None:
    """Smee file-backend YAML, n records with the options a real site sets."""
    lines = []
    for i in range(n):
        lines += [
            f"{mac_of(i)}:",
            f"  ipAddress: {ip_of(i)}",
            "  subnetMask: 255.255.255.0",
            "  defaultGateway: 198.51.100.1",
            "  nameServers: [198.51.100.53]",
            f"  hostname: node-{i}",
            "  domainName: lab.example.com",
            "  leaseTime: 86400",
            "  netboot: {allowPxe: true}",
        ]
    path.write_text("\n".join(lines) + "\n")


def request_templates(client: str) -> tuple[Any, Any]:
    """The first DISCOVER and REQUEST of the chosen client in its capture, parsed."""
    from smee.dhcp.packet import DISCOVER, REQUEST, parse

    name, user_class = CAPTURE[client]
    found: dict[int, Any] = {}
    for d in dhcp_payloads(CAPTURES / name):
        p = parse(d.payload)
        if p.op != 1 or p.msg_type not in (DISCOVER, REQUEST) or p.msg_type in found:
            continue
        if p.options.get(77) != user_class:
            continue
        found[p.msg_type] = p
    return found[DISCOVER], found[REQUEST]


def relayed_requests(client: str, relay: str) -> list[bytes]:
    """DISCOVER, REQUEST for each record's MAC, as a relay forwards them (giaddr, hops 1)."""
    from dataclasses import replace

    from smee.dhcp.packet import build
    from smee.hardware import mac_bytes

    discover, req = request_templates(client)
    giaddr = IPv4Address(relay).packed
    out = []
    for i in range(RECORDS):
        chaddr = mac_bytes(mac_of(i)).ljust(16, b"\0")
        common: dict[str, Any] = {"chaddr": chaddr, "giaddr": giaddr, "hops": 1, "xid": 0x10000 + i}
        out.append(build(replace(discover, options=dict(discover.options), **common)))
        ropts = dict(req.options)
        ropts[50] = IPv4Address(ip_of(i)).packed
        ropts[54] = IPv4Address(SERVER_IP).packed
        if 61 in ropts:
            ropts[61] = b"\x01" + chaddr[:6]
        out.append(build(replace(req, options=ropts, **common)))
    return out


def start_logging() -> None:
    """smee's observer at error level, begun the way twistd --logger does it."""
    from twisted.logger import globalLogBeginner

    from smee.logs import observer

    obs = observer(stream=sys.stderr, argv=["twistd", "smee", "--log-level=error"], environ={})
    globalLogBeginner.beginLoggingTo([obs], redirectStandardIO=False)


def build_service(hw: Path, reactor: Any, memo: bool = True) -> Any:
    """The DHCP service exactly as makeService builds it, then moved to 127.0.0.1:0."""
    from smee import tap
    from smee.dhcp import service as dhcp_service

    options = tap.Options(environ={}, detect_ip=lambda iface: IPv4Address(SERVER_IP))
    options.parseOptions([
        "--backend-file-enabled=true", f"--backend-file-path={hw}", "--dhcp-mode=reservation",
        "--log-level=error", f"--ipxe-dir={ROOT / 'ipxe' / 'bin'}", "--dhcp-rate-limit=0",
    ])
    settings = options.settings
    backend = tap._makeBackend(settings, reactor)
    runtime = tap.makeRuntime(settings, backend, reactor)
    svc = dhcp_service.makeService(settings, runtime, reactor)
    svc.address = ("127.0.0.1", 0)
    svc.ifaces = ()
    if not memo:
        from functools import partial

        from smee.dhcp.protocol import DHCPServerProtocol

        svc.protocol_factory = partial(DHCPServerProtocol, memo_size=0)
    return svc


class CountingTransport:
    """Stands in for the UDP port in ``inproc`` mode: counts writes, keeps the last."""

    def __init__(self) -> None:
        self.count = 0
        self.last: tuple[bytes, Any] | None = None

    def write(self, data: bytes, addr: Any = None) -> None:
        self.count += 1
        self.last = (data, addr)


def check_reply(data: bytes, want: int) -> None:
    from smee.dhcp.packet import parse

    reply = parse(data)
    if reply.msg_type != want:
        raise SystemExit(f"expected reply type {want}, got {reply.msg_type}: the benchmark is not measuring OFFER/ACK")


def run_inproc(proto: Any, packets: list[bytes], n: int) -> float:
    """Seconds for n packets through datagramReceived."""
    addr = (RELAY_IP, 67)
    received = proto.datagramReceived
    count = len(packets)
    t0 = time.process_time()
    for i in range(n):
        received(packets[i % count], addr)
    return time.process_time() - t0


class SocketDriver:
    """Client socket on 127.0.0.1 and the server's real udp.Port, driven by reactor.iterate."""

    def __init__(self, reactor: Any, port: Any, client: socket.socket, burst: int) -> None:
        self.reactor = reactor
        self.burst = burst
        self.port = port
        self.client = client
        self.dest = ("127.0.0.1", port.getHost().port)
        self.server_seconds = 0.0
        inner = port.doRead

        def timed_read() -> Any:
            t = time.thread_time()
            try:
                return inner()
            finally:
                self.server_seconds += time.thread_time() - t

        port.doRead = timed_read  # the reactor looks the method up on the instance

    def run(self, packets: list[bytes], n: int, deadline: float = 60.0) -> tuple[float, float]:
        """(loop seconds, server seconds) for n packets, in bursts."""
        self.server_seconds = 0.0
        client, dest, count = self.client, self.dest, len(packets)
        stop = time.monotonic() + deadline
        t0 = time.process_time()
        sent = 0
        while sent < n:
            burst = min(self.burst, n - sent)
            for k in range(burst):
                client.sendto(packets[(sent + k) % count], dest)
            got = 0
            while got < burst:
                self.reactor.iterate(0.05)
                while True:
                    try:
                        client.recv(2048)
                    except BlockingIOError:
                        break
                    got += 1
                if time.monotonic() > stop:
                    raise SystemExit(f"socket mode: {burst - got} replies missing after {deadline} s")
            sent += burst
        return time.process_time() - t0, self.server_seconds


def best(label: str, fn: Callable[[], float], n: int, repeats: int) -> float:
    times = [fn() for _ in range(repeats)]
    us = [t / n * 1e6 for t in times]
    print(f"{label:<44} best {min(us):7.2f} µs/packet   (median {sorted(us)[len(us) // 2]:.2f}, "
          f"worst {max(us):.2f}, {repeats} × {n})")
    return min(us)


def profile(fn: Callable[[], Any], top: int = 25) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)
    print(out.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("inproc", "socket", "both"), default="both")
    ap.add_argument("-n", type=int, default=20000, help="packets per repeat (default 20000)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--client", choices=tuple(CAPTURE), default="pxe")
    ap.add_argument("--burst", type=int, default=32, help="socket mode: requests in flight at once (1..64)")
    ap.add_argument("--memo", choices=("on", "off"), default="on",
                    help="the reply memo (default on: repeated requests are its hit path)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile top list (tottime)")
    args = ap.parse_args()
    if args.n < 1 or args.n > 10_000_000 or args.repeats < 1 or args.repeats > 100 or not 1 <= args.burst <= 64:
        raise SystemExit("-n must be 1..10,000,000, --repeats 1..100 and --burst 1..64")

    from twisted.internet import reactor

    start_logging()
    with tempfile.TemporaryDirectory() as tmp:
        hw = Path(tmp) / "hardware.yaml"
        write_hardware(hw, RECORDS)
        svc = build_service(hw, reactor, memo=args.memo == "on")
        svc.startService()
        try:
            port, proto = svc.ports[0], svc.protocols[0]
            from smee.dhcp.packet import ACK, OFFER

            if args.mode in ("inproc", "both"):
                packets = relayed_requests(args.client, RELAY_IP)
                real = proto.transport
                fake = CountingTransport()
                proto.transport = fake
                try:
                    for i, want in ((0, OFFER), (1, ACK)):
                        fake.last = None
                        proto.datagramReceived(packets[i], (RELAY_IP, 67))
                        assert fake.last is not None, "no reply: the benchmark is not measuring OFFER/ACK"
                        check_reply(fake.last[0], want)
                    run_inproc(proto, packets, min(args.n, 2000))  # warm-up
                    fake.count = 0
                    best("in-process (datagramReceived)", lambda: run_inproc(proto, packets, args.n),
                         args.n, args.repeats)
                    if fake.count != args.n * args.repeats:
                        raise SystemExit(f"only {fake.count} of {args.n * args.repeats} requests were answered")
                    if args.profile:
                        profile(lambda: run_inproc(proto, packets, args.n))
                finally:
                    proto.transport = real

            if args.mode in ("socket", "both"):
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(("127.0.0.1", 0))
                client.setblocking(False)
                try:
                    # Relayed from 127.0.0.1: replies go to giaddr:<server_port>, our client.
                    svc.server_port = proto.server_port = client.getsockname()[1]
                    packets = relayed_requests(args.client, "127.0.0.1")
                    driver = SocketDriver(reactor, port, client, args.burst)
                    driver.run(packets, min(args.n, 2000))  # warm-up
                    results = [driver.run(packets, args.n) for _ in range(args.repeats)]
                    loop = [r[0] / args.n * 1e6 for r in results]
                    server = [r[1] / args.n * 1e6 for r in results]
                    for label, us in ((f"loopback socket, burst {args.burst}: server doRead", server),
                                      (f"loopback socket, burst {args.burst}: whole loop", loop)):
                        print(f"{label:<44} best {min(us):7.2f} µs/packet   (median "
                              f"{sorted(us)[len(us) // 2]:.2f}, worst {max(us):.2f}, "
                              f"{args.repeats} × {args.n})")
                    if args.profile:
                        profile(lambda: driver.run(packets, args.n))
                finally:
                    client.close()
            print(f"reply memo {args.memo}: {proto.memo_hits} requests answered from it")
        finally:
            svc.stopService()


if __name__ == "__main__":
    main()
