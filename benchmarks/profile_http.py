#!/usr/bin/env python
"""Profile smee's HTTP ``/<mac>/auto.ipxe`` path on 127.0.0.1: µs of server CPU per request.

    .venv/bin/python benchmarks/profile_http.py [--requests 2000] [--concurrency 1]
        [--runs 3] [--profile] [--keep-alive] [--floor web|raw] [--path /02:00:00:00:00:01/auto.ipxe]

The server is the real thing, built as ``twistd smee`` builds it
(:func:`smee.tap.makeRuntime`: file backend with one record, reservation
mode, the installers registry, metrics and timeline, then
:func:`smee.http.service.makeService`), listening on 127.0.0.1 with an
ephemeral port, logging at error level (as the benchmarks run it). Each
request renders the real Hook script after a backend lookup by MAC.

The client is a small Python HTTP/1.1 client in a subprocess (its CPU is not
the server's): ``--requests`` GETs, a new TCP connection for each
(``Connection: close``), or with ``--keep-alive`` each of the ``--concurrency``
connections sending its share one after another (HTTP/1.1 persistent
connections, one request in flight per connection). It checks
every answer is ``200`` with the script. The server's CPU time
(``time.process_time``) and wall time are taken between the client's
"ready" and its result. Reported: requests/s (wall) and server CPU µs per
request, best of ``--runs`` server processes; ``--profile`` runs one more
under cProfile and prints the top entries. Note that the client is Python
too: at concurrency 1 the wall-clock rate includes its time; server CPU
per request is the number that does not depend on the client.

``--floor web`` serves the same script bytes from a bare twisted.web leaf
resource behind the same Site (no routing, lookup, access log or metrics),
``--floor raw`` from a bare Twisted Protocol that only finds the end of each
request head: smee minus web is smee's own share, web minus raw is
twisted.web's HTTP/1.1 machinery, raw is the reactor and the kernel.

Nothing leaves loopback; every loop is bounded (request count, 5 s socket
timeouts, a 120 s overall limit).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

MAC = "02:00:00:00:00:01"
LIMIT = 120.0


def _pin(cpu: int) -> None:
    """Server on CPU 0, client on CPU 1 (as the issue's method), when there are two CPUs:
    otherwise the numbers depend on whether the scheduler put both on one CPU."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass  # not allowed on that CPU (a cpuset): leave it to the scheduler


# --- the client (subprocess) ----------------------------------------------------------------------


def client_main(argv: list[str]) -> None:
    """``--client PORT PATH REQUESTS CONCURRENCY [keep-alive]``: print ready, wait for go, run, print JSON."""
    _pin(1)
    port, path, requests, concurrency = int(argv[0]), argv[1], int(argv[2]), int(argv[3])
    if argv[4:] == ["keep-alive"]:
        keep_alive_client(port, path, requests, concurrency)
        return
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: iPXE/1.21.1\r\nConnection: close\r\n\r\n".encode()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("client: no go")
    sel = selectors.DefaultSelector()
    started = time.perf_counter()
    deadline = time.monotonic() + LIMIT
    issued = done = 0
    first_body = b""
    statuses: dict[str, int] = {}

    def issue() -> None:
        nonlocal issued
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE, [b"", time.monotonic()])
        issued += 1

    for _ in range(min(concurrency, requests)):
        issue()
    while done < requests:
        if time.monotonic() > deadline:
            raise SystemExit("client: over the time limit")
        for key, events in sel.select(1.0):
            s, state = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                s.send(request)
                sel.modify(s, selectors.EVENT_READ, state)
                continue
            chunk = s.recv(65536)
            if chunk:
                state[0] += chunk
                continue
            sel.unregister(s)
            s.close()
            response = state[0]
            status = response[9:12].decode("ascii", "replace")
            statuses[status] = statuses.get(status, 0) + 1
            if not first_body:
                first_body = response
            done += 1
            if issued < requests:
                issue()
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            if now - key.data[1] > 5.0:
                raise SystemExit("client: a request took over 5 s")
    wall = time.perf_counter() - started
    head, _, body = first_body.partition(b"\r\n\r\n")
    print("result " + json.dumps({"wall": wall, "requests": done, "statuses": statuses,
                                  "head": head.decode("latin-1"), "body_bytes": len(body)}), flush=True)


def _complete(data: bytes) -> int:
    """The length of the first whole response in ``data`` (by Content-Length), 0 if not all here yet."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return 0
    length = 0
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    total = end + 4 + length
    return total if len(data) >= total else 0


def keep_alive_client(port: int, path: str, requests: int, concurrency: int) -> None:
    """``requests`` GETs over ``concurrency`` persistent connections, one in flight on each."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: iPXE/1.21.1\r\n\r\n".encode()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("client: no go")
    sel = selectors.DefaultSelector()
    started = time.perf_counter()
    deadline = time.monotonic() + LIMIT
    issued = done = 0
    first = b""
    statuses: dict[str, int] = {}
    for _ in range(min(concurrency, requests)):
        s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(request)
        issued += 1
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, [b""])
    while done < requests:
        if time.monotonic() > deadline:
            raise SystemExit("client: over the time limit")
        events = sel.select(5.0)
        if not events:
            raise SystemExit("client: no answer for 5 s")
        for key, _ in events:
            s, state = key.fileobj, key.data
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("client: the server closed a persistent connection")
            state[0] += chunk
            size = _complete(state[0])
            if not size:
                continue
            response, state[0] = state[0][:size], state[0][size:]
            status = response[9:12].decode("ascii", "replace")
            statuses[status] = statuses.get(status, 0) + 1
            first = first or response
            done += 1
            if issued < requests:
                s.sendall(request)
                issued += 1
            else:
                sel.unregister(s)
                s.close()
    wall = time.perf_counter() - started
    head, _, body = first.partition(b"\r\n\r\n")
    print("result " + json.dumps({"wall": wall, "requests": done, "statuses": statuses,
                                  "head": head.decode("latin-1"), "body_bytes": len(body)}), flush=True)


# --- the server (this process) ----------------------------------------------------------------------


def _hardware(directory: str) -> str:
    path = os.path.join(directory, "hardware.yaml")
    with open(path, "w") as f:
        f.write(
            f"{MAC}:\n  ipAddress: 127.0.0.1\n  subnetMask: 255.0.0.0\n  defaultGateway: 127.0.0.1\n"
            f"  hostname: bench\n  arch: x86_64\n  netboot: {{allowPxe: true, facility: lab1}}\n"
        )
    return path


def build(reactor: Any, directory: str) -> Any:
    """The HTTP service as ``twistd smee`` builds it, on 127.0.0.1:<ephemeral>."""
    from smee import tap
    from smee.http import service as http_service

    args = [
        "--public-ip=127.0.0.1", "--log-level=error",
        "--dhcp-enabled=false", "--tftp-enabled=false", "--syslog-enabled=false",
        "--backend-kube-enabled=false",
        "--backend-file-enabled=true", f"--backend-file-path={_hardware(directory)}",
        "--http-addr=127.0.0.1", "--osie-url=http://127.0.0.1:8081/hook", "--tink-server=127.0.0.1:42113",
        f"--ipxe-dir={ROOT / 'ipxe' / 'bin'}",
    ]
    options = tap.Options(environ={})
    options.parseOptions(args)
    settings = options.settings
    backend = tap._makeBackend(settings, reactor)
    runtime = tap.makeRuntime(settings, backend, reactor)
    svc = http_service.makeService(settings, runtime, reactor)
    svc.address = ("127.0.0.1", 0)
    svc.startService()
    return svc


def floor(reactor: Any, svc: Any, kind: str) -> Any:
    """``--floor=web``: what twisted.web alone costs for the same answer, on its own port.

    A leaf resource that sets the same Content-Type and returns the same
    script bytes (rendered once by smee's app) for every path, behind the same
    :class:`smee.http.service.Site`: no routing, lookup, access log or
    metrics. The difference to smee's number is smee's (and Klein's) share.
    """
    from twisted.web.resource import Resource

    from smee.http.service import Site

    app = svc.app
    match = app.backend.by_mac_now(MAC)
    body = app._render(match.hardware, match.interface)

    class Fixed(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return body

    if kind == "web":
        return reactor.listenTCP(0, Site(Fixed(), reactor=reactor), interface="127.0.0.1")
    return reactor.listenTCP(0, _raw_factory(body), interface="127.0.0.1")


def _raw_factory(body: bytes) -> Any:
    """``--floor=raw``: the reactor alone. A bare Protocol that answers every request head with
    prepared bytes (same headers as twisted.web sends), honouring ``Connection: close``; no
    HTTP parsing beyond finding the end of the head. Not a server, a measuring stick."""
    from twisted.internet.protocol import Factory, Protocol

    head = (b"HTTP/1.1 200 OK\r\nServer: TwistedWeb\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body))
    keep, close = head + b"\r\n" + body, head + b"Connection: close\r\n\r\n" + body

    class Raw(Protocol):
        buf = b""

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                request, self.buf = self.buf[:end], self.buf[end + 4 :]
                if b"connection: close" in request.lower():
                    self.transport.write(close)
                    self.transport.loseConnection()
                    return
                self.transport.write(keep)

    factory = Factory.forProtocol(Raw)
    factory.noisy = False
    return factory


def _log_at_error() -> None:
    """What ``twistd --logger=smee.logs.observer smee --log-level=error`` does (as the benchmarks run smee)."""
    from twisted.logger import globalLogBeginner

    from smee.logs import observer

    globalLogBeginner.beginLoggingTo(
        [observer(stream=sys.stderr, argv=["twistd", "smee", "--log-level=error"], environ={})], redirectStandardIO=False)



def round_main(a: argparse.Namespace) -> None:
    _pin(0)
    from twisted.internet import protocol, reactor

    _log_at_error()
    profile = cProfile.Profile() if a.profile else None
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        svc = build(reactor, directory)
        port = (floor(reactor, svc, a.floor) if a.floor else svc.port).getHost().port

        class Client(protocol.ProcessProtocol):
            buf = b""

            def outReceived(self, data: bytes) -> None:
                self.buf += data
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    if line == b"ready":
                        out["cpu0"], out["wall0"] = time.process_time(), time.perf_counter()
                        if profile is not None:
                            profile.enable()
                        self.transport.write(b"go\n")
                    elif line.startswith(b"result "):
                        if profile is not None:
                            profile.disable()
                        out["cpu1"], out["wall1"] = time.process_time(), time.perf_counter()
                        out["result"] = json.loads(line[7:])

            def errReceived(self, data: bytes) -> None:
                sys.stderr.write(data.decode(errors="replace"))

            def processEnded(self, reason: Any) -> None:
                reactor.stop()

        argv = [sys.executable, __file__, "--client", str(port), a.path, str(a.requests), str(a.concurrency)]
        if a.keep_alive:
            argv.append("keep-alive")
        proc = reactor.spawnProcess(Client(), sys.executable, argv, env=os.environ.copy())
        killer = reactor.callLater(LIMIT + 10, proc.signalProcess, "KILL")
        reactor.run()
        if killer.active():
            killer.cancel()
    if "result" not in out:
        raise SystemExit("no result from the client")
    r = out["result"]
    if r["statuses"] != {"200": r["requests"]}:
        raise SystemExit(f"unexpected answers: {r['statuses']}\n{r['head']}")
    cpu = out["cpu1"] - out["cpu0"]
    print(json.dumps({
        "requests_per_s": r["requests"] / r["wall"],
        "cpu_us_per_request": 1e6 * cpu / r["requests"],
        "cpu_share": cpu / (out["wall1"] - out["wall0"]),
        "body_bytes": r["body_bytes"],
    }))
    if a.show:
        print(r["head"], file=sys.stderr)
    if profile is not None:
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(a.top)
        stats.sort_stats("cumulative").print_stats(a.top)


def server_main(a: argparse.Namespace) -> None:
    rounds = []
    for i in range(a.runs + (1 if a.profile else 0)):
        profiled = a.profile and i == a.runs
        argv = [sys.executable, __file__, "--round", "--requests", str(a.requests),
                "--concurrency", str(a.concurrency), "--path", a.path]
        if a.keep_alive:
            argv.append("--keep-alive")
        if a.floor:
            argv.append(f"--floor={a.floor}")
        if profiled:
            argv += ["--profile", "--top", str(a.top)]
        if a.show and i == 0:
            argv.append("--show")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=LIMIT + 30, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"round {i} failed")
        if done.stderr:
            sys.stderr.write(done.stderr)
        lines = done.stdout.splitlines()
        summary = json.loads(lines[0])
        if profiled:
            print("\n".join(lines[1:]))
        else:
            rounds.append(summary)
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in summary.items()))
    best_rate = max(r["requests_per_s"] for r in rounds)
    best_cpu = min(r["cpu_us_per_request"] for r in rounds)
    how = ("keep-alive" if a.keep_alive else "a new connection each") + (f", {a.floor} floor" if a.floor else "")
    print(f"best of {len(rounds)}: {a.requests} requests ({how}), concurrency {a.concurrency}, {a.path}: "
          f"{best_rate:.0f} requests/s, {best_cpu:.0f} us server CPU per request "
          f"(at most {1e6 / best_cpu:.0f} requests/s on one core)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--path", default=f"/{MAC}/auto.ipxe")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--keep-alive", action="store_true", help="persistent connections instead of one per request")
    p.add_argument("--floor", choices=("web", "raw"),
                   help="serve the same bytes from a bare twisted.web resource (web) or a bare Twisted "
                        "Protocol (raw) instead of smee: what Twisted itself costs")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--show", action="store_true", help="print the first response's headers")
    p.add_argument("--round", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.round:
        round_main(a)
    else:
        server_main(a)


if __name__ == "__main__":
    main()
