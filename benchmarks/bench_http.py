"""HTTP: smee's iPXE script route against nginx serving the same scripts as static files.

Issue 9's target: smee answers at least 0.9x as many requests/s as nginx when every
request comes on a new connection (iPXE fetches its script once per boot, on a fresh
connection). smee runs as ``twistd smee`` with only the HTTP component, the file backend
holding ``RECORDS`` machines, and answers ``GET /<mac>/auto.ipxe`` by looking the MAC up and
rendering the default (OSIE/Hook) script. nginx (one worker, ``sendfile``, keep-alive, no
access log) serves a copy of exactly the bytes smee answered, one file per MAC. Both run in
the ``srv`` namespace on CPU 0; ``wrk -t1`` runs in ``cli`` on CPU 1 with a Lua script
(benchmarks/http/rotate.lua) that cycles through every MAC, so each smee request is a real
lookup and render of a different machine.

Each round starts smee, measures, stops it, then does the same with nginx (both want
192.0.2.1:8080), so a busy moment on the shared machine hits both alike; a short keep-alive
warm-up run precedes each server's measurements. Rows: requests/s with ``Connection: close``
(the target), requests/s with keep-alive, server CPU µs per request (keep-alive; the
server's user+system time from /proc, nginx master + worker), and wrk's p50/p99 latency with
new connections. wrk's non-2xx and socket-error counts go in the notes: a run with errors
does not count as faster.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import Bench, Row, Section, Series

HERE = Path(__file__).resolve().parent / "http"
PORT = 8080
BASE = f"http://{harness.SERVER_IP}:{PORT}"
#: hardware records in the file backend; wrk cycles through all of them
RECORDS = 200
#: wrk connections (one thread): enough to keep a one-CPU server busy
CONNECTIONS = 32
#: seconds of one measured wrk run (quick: QUICK_SECONDS) and of the warm-up before a server's runs
SECONDS, QUICK_SECONDS, WARMUP_SECONDS = 5, 2, 1
OSIE_URL = "http://192.0.2.1:8080/hook"
TINK_SERVER = "192.0.2.1:42113"


# --- inputs -------------------------------------------------------------------


def _macs(count: int) -> list[str]:
    return [f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}" for i in range(1, count + 1)]


def _hardware_yaml(macs: list[str]) -> str:
    """File-backend records (examples/hardware.yaml format), one per MAC; data only, never contacted."""
    out = []
    for n, mac in enumerate(macs, start=1):
        net, host = ("198.51.100", n) if n <= 254 else ("203.0.113", n - 254)
        out.append(
            f"{mac}:\n  ipAddress: {net}.{host}\n  subnetMask: 255.255.255.0\n  defaultGateway: {net}.254\n"
            f"  hostname: node-{n:04d}\n  arch: x86_64\n  netboot:\n    allowPxe: true\n    facility: bench\n"
        )
    return "".join(out)


def _nginx_conf(tmp: Path, root: Path) -> Path:
    """The smallest nginx.conf that serves ``root`` like a production static server would."""
    temp = tmp / "nginx-temp"
    temp.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
user root root;
error_log {tmp / 'nginx-error.log'} error;
pid {tmp / 'nginx.pid'};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    types {{ }}
    default_type "text/plain; charset=utf-8";
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen {harness.SERVER_IP}:{PORT} backlog=4096;
        root {root};
        location / {{ }}
    }}
}}
""")
    return conf


# --- wrk ------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkRun:
    """One wrk run as its done() hook reported it (rotate.lua)."""

    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    #: share of its CPU the client (wrk) used: near 1.0 means wrk, not the server, was the limit
    client_busy: float
    #: share of one CPU the server used: well below 1.0 with wrk also idle means something else held the CPU
    server_busy: float

    @property
    def rps(self) -> float:
        """Answers per second that were 2xx: an error answer does not count as served."""
        return (self.requests - self.non2xx) / self.seconds

    @property
    def clean(self) -> bool:
        return self.non2xx == 0 and self.socket_errors == 0


_BENCH_LINE = re.compile(r"^BENCH (.*)$", re.MULTILINE)


def _parse(stdout: str) -> dict[str, int]:
    found = _BENCH_LINE.search(stdout)
    if found is None:
        raise RuntimeError(f"wrk printed no BENCH line:\n{stdout}")
    return {k: int(v) for k, v in (kv.split("=") for kv in found.group(1).split())}


def _server_cpu(pids: list[int]) -> float:
    return sum(harness.cpu_seconds(p) for p in pids)


def _wrk(bench: Bench, paths_file: Path, seconds: float, close: bool, pids: list[int]) -> WrkRun:
    """One bounded wrk run against the server; server CPU measured around it."""
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", "--timeout", "2s",
            "-s", str(HERE / "rotate.lua")]
    if close:
        argv += ["-H", "Connection: close"]
    argv += [BASE, "--", str(paths_file)]
    cpu0 = _server_cpu(pids)
    done = bench.client(argv, timeout=seconds + 30)
    cpu = _server_cpu(pids) - cpu0
    got = _parse(done.stdout)
    requests = got["requests"]
    return WrkRun(
        requests=requests,
        seconds=got["duration_us"] / 1e6,
        non2xx=got["status"],
        socket_errors=got["connect"] + got["read"] + got["write"] + got["timeout"],
        p50_ms=got["p50_us"] / 1000,
        p99_ms=got["p99_us"] / 1000,
        cpu_us_per_request=cpu / requests * 1e6 if requests else float("nan"),
        client_busy=got["cpu_ticks"] / harness.CLK_TCK / (got["duration_us"] / 1e6),
        server_busy=cpu / (got["duration_us"] / 1e6),
    )


# --- servers --------------------------------------------------------------------


def _start_smee(bench: Bench, hardware: Path) -> harness.Process:
    from netns import only_components

    argv = harness.smee_argv(hardware, f"--public-ip={harness.SERVER_IP}", f"--http-addr={harness.SERVER_IP}",
                             f"--http-port={PORT}", f"--osie-url={OSIE_URL}", f"--tink-server={TINK_SERVER}",
                             *only_components("http"))
    cwd = bench.tmp / "smee.cwd"
    cwd.mkdir(exist_ok=True)
    proc = bench.server("smee", argv, env=harness.smee_env(), cwd=cwd)
    _wait_listening(bench, proc)
    return proc


def _start_nginx(bench: Bench, conf: Path) -> harness.Process:
    nginx = harness.which("nginx") or "/usr/sbin/nginx"
    proc = bench.server("nginx", [nginx, "-c", str(conf), "-e", str(bench.tmp / "nginx-error.log"),
                                  "-p", str(bench.tmp)])
    _wait_listening(bench, proc)
    return proc


def _wait_listening(bench: Bench, proc: harness.Process, timeout: float = 30.0) -> None:
    try:
        harness.wait_port(bench.srv, PORT, "tcp", timeout)
    except TimeoutError:
        raise RuntimeError(f"{proc.name} did not listen on {PORT}:\n{proc.describe()}") from None
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited:\n{proc.describe()}")


def _stop(proc: harness.Process) -> None:
    """Stop a server (by PID); both set SO_REUSEADDR, so the next one can bind at once."""
    proc.stop(timeout=10)


def _pids(proc: harness.Process, want: int) -> list[int]:
    """The server's process and its children (nginx's worker): ``want`` of them, bounded wait."""
    deadline = time.monotonic() + 10
    while True:
        pids = [proc.pid]
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
        if len(pids) >= want or time.monotonic() > deadline:
            if len(pids) != want:
                raise RuntimeError(f"{proc.name}: expected {want} processes, found {pids}")
            return pids
        time.sleep(0.05)


# --- content check -----------------------------------------------------------------


def _fetch(bench: Bench, paths_file: Path, out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    done = bench.cli.run(sys.executable, HERE / "fetch.py", BASE, paths_file, out, timeout=120)
    return json.loads(done.stdout)


def _check_smee(statuses: dict[str, int], out: Path, macs: list[str]) -> None:
    """Every smee answer is a real rendered script for its own machine."""
    for mac in macs:
        path = f"/{mac}/auto.ipxe"
        body = (out / path.lstrip("/")).read_bytes()
        if statuses.get(path) != 200:
            raise RuntimeError(f"smee answered {path} with {statuses.get(path)}: {body[:200]!r}")
        text = body.decode()
        if not text.startswith("#!ipxe") or "kernel ${download-url}/${kernel}" not in text \
                or f"worker_id={mac}" not in text or f"hw_addr={mac}" not in text:
            raise RuntimeError(f"smee's {path} is not the machine's Hook script:\n{text}")


def _check_nginx(statuses: dict[str, int], out: Path, want: Path, macs: list[str]) -> None:
    """nginx serves byte for byte what smee rendered."""
    for mac in macs:
        rel = f"{mac}/auto.ipxe"
        if statuses.get("/" + rel) != 200 or (out / rel).read_bytes() != (want / rel).read_bytes():
            raise RuntimeError(f"nginx does not serve smee's bytes for /{rel} ({statuses.get('/' + rel)})")


# --- the benchmark -----------------------------------------------------------------


@dataclass
class Results:
    """Per server: the runs with new connections and with keep-alive."""

    close: dict[str, list[WrkRun]]
    keep: dict[str, list[WrkRun]]

    @classmethod
    def empty(cls) -> Results:
        return cls({"smee": [], "nginx": []}, {"smee": [], "nginx": []})


def _measure(bench: Bench, proc: harness.Process, name: str, paths_file: Path, seconds: float,
             res: Results) -> None:
    _wrk(bench, paths_file, WARMUP_SECONDS, close=False, pids=[proc.pid])
    pids = _pids(proc, 2 if name == "nginx" else 1)
    res.close[name].append(_wrk(bench, paths_file, seconds, close=True, pids=pids))
    res.keep[name].append(_wrk(bench, paths_file, seconds, close=False, pids=pids))
    if not proc.alive():
        raise RuntimeError(f"{name} died during the runs:\n{proc.describe()}")


def _rounds(bench: Bench, ctx: harness.Context, res: Results, notes: list[str]) -> None:
    macs = _macs(RECORDS)
    hardware = bench.tmp / "hardware.yaml"
    hardware.write_text(_hardware_yaml(macs))
    paths_file = bench.tmp / "paths.txt"
    paths_file.write_text("".join(f"/{m}/auto.ipxe\n" for m in macs))
    root = bench.tmp / "www"
    conf = _nginx_conf(bench.tmp, root)
    seconds = QUICK_SECONDS if ctx.quick else SECONDS
    # one round: two servers x (start + warm-up + 2 runs + stop), with margin
    per_round = 2 * (2 * seconds + WARMUP_SECONDS + 8)
    for n in range(ctx.runs):
        if ctx.left() < per_round:
            notes.append(f"stopped after {n} of {ctx.runs} rounds: time budget used up")
            return
        smee = _start_smee(bench, hardware)
        if n == 0:
            _check_smee(_fetch(bench, paths_file, root), root, macs)
            notes.append(f"checked: all {RECORDS} smee answers are 200 Hook scripts (`#!ipxe`, kernel line with "
                         f"worker_id/hw_addr = the MAC), {len((root / macs[0] / 'auto.ipxe').read_bytes())} bytes each; "
                         "nginx serves the same bytes")
        _measure(bench, smee, "smee", paths_file, seconds, res)
        _stop(smee)
        nginx = _start_nginx(bench, conf)
        if n == 0:
            _check_nginx(_fetch(bench, paths_file, bench.tmp / "nginx-got"), bench.tmp / "nginx-got", root, macs)
        _measure(bench, nginx, "nginx", paths_file, seconds, res)
        _stop(nginx)


def _errors_note(res: Results) -> str:
    parts = []
    for mode, runs in (("new connections", res.close), ("keep-alive", res.keep)):
        for name, got in runs.items():
            bad = sum(r.non2xx for r in got)
            sock = sum(r.socket_errors for r in got)
            total = sum(r.requests for r in got)
            parts.append(f"{name} {mode}: {bad} non-2xx, {sock} socket errors in {total:,} requests")
    return "wrk errors — " + "; ".join(parts)


def _client_note(res: Results) -> str:
    """How busy each side's CPU was: a server answering as fast as wrk can ask is only a lower bound,
    and a server using well under its CPU with wrk idle too was held back by something else."""
    parts, bound = [], []
    for mode, runs in (("new connections", res.close), ("keep-alive", res.keep)):
        for name, got in runs.items():
            busy = max((r.client_busy for r in got), default=0.0)
            server = statistics.median(r.server_busy for r in got) if got else 0.0
            parts.append(f"{name} {mode}: server {server:.0%}, wrk {busy:.0%}")
            if busy >= 0.9:
                bound.append(f"{name} {mode}")
    text = "CPU use during the runs (server median, wrk max; 100% = one CPU): " + "; ".join(parts)
    if bound:
        text += (f". Client-bound (wrk ≥ 90% of its CPU): {', '.join(bound)} — those requests/s are lower "
                 "bounds of what the server can do")
    return text


def _rows(res: Results) -> list[Row]:
    def s(runs: list[WrkRun], attr: str) -> Series:
        return Series(tuple(getattr(r, attr) for r in runs))

    wrk = f"wrk -c{CONNECTIONS}"
    rows = [
        Row("requests/s, new connection per request", wrk, "req/s", s(res.close["smee"], "rps"), "nginx",
            s(res.close["nginx"], "rps"), True, ">= 0.9", digits=0),
        Row("requests/s, keep-alive", wrk, "req/s", s(res.keep["smee"], "rps"), "nginx",
            s(res.keep["nginx"], "rps"), True, digits=0),
        Row("server CPU per request, keep-alive", "/proc stat", "µs", s(res.keep["smee"], "cpu_us_per_request"),
            "nginx", s(res.keep["nginx"], "cpu_us_per_request"), False, digits=1),
        Row("latency p50, new connections", wrk, "ms", s(res.close["smee"], "p50_ms"), "nginx",
            s(res.close["nginx"], "p50_ms"), False, digits=2),
        Row("latency p99, new connections", wrk, "ms", s(res.close["smee"], "p99_ms"), "nginx",
            s(res.close["nginx"], "p99_ms"), False, digits=2),
    ]
    for row, runs in zip(rows[:2], (res.close, res.keep)):
        if not all(r.clean for got in runs.values() for r in got):
            row.note = "some runs had errors (see the wrk errors note); their requests/s do not count as faster"
    return rows


def _versions() -> str:
    wrk = harness.tool_version(["wrk", "-v"]).split(" Copyright")[0]
    nginx = harness.tool_version([harness.which("nginx") or "nginx", "-v"])
    return f"peers: {nginx} (Debian nginx-light {harness.deb_version('nginx-light')}), {wrk}"


def run(ctx: harness.Context) -> list[Section]:
    sec = Section("HTTP: iPXE script (smee) vs static file (nginx)")
    for tool in ("wrk", "nginx", "taskset"):
        if harness.which(tool) is None:
            sec.error = f"{tool} is not installed (benchmarks/install-peers)"
            return [sec]
    seconds = QUICK_SECONDS if ctx.quick else SECONDS
    sec.notes += [
        (f"`GET /<mac>/auto.ipxe` for {RECORDS} machines in the file backend, wrk's Lua script cycling through all "
         f"{RECORDS} MACs (smee: backend lookup + Hook script render per request; nginx: one static file per MAC "
         f"with smee's bytes); `wrk -t1 -c{CONNECTIONS} -d{seconds}s`, new connections = `-H 'Connection: close'`; "
         f"{WARMUP_SECONDS} s keep-alive warm-up after each server start; servers restarted every round, "
         "smee and nginx alternating; requests/s counts 2xx answers only"),
        ("nginx: 1 worker (+ master, both counted for CPU), sendfile, tcp_nopush, access_log off, "
         "keepalive_requests 1000000 (Twisted has no per-connection request limit); smee: `twistd smee` with only "
         "the http component, --log-level=error (no access log lines)"),
        _versions(),
    ]
    res = Results.empty()
    try:
        with harness.bench_lab(ctx.tmp / "lab") as bench:
            _tune(bench)
            _rounds(bench, ctx, res, sec.notes)
    except Exception as e:  # noqa: BLE001 (the section says what failed; rows measured so far stay)
        sec.error = f"{type(e).__name__}: {e}"
    if res.close["smee"] and res.close["nginx"]:
        sec.rows = _rows(res)
        sec.notes += [_errors_note(res), _client_note(res)]
    return [sec]


def _tune(bench: Bench) -> None:
    """Let the client open tens of thousands of short connections (its own namespace only)."""
    bench.cli.sysctl("net.ipv4.ip_local_port_range", "1024 65000")
    bench.cli.sysctl("net.ipv4.tcp_tw_reuse", 1)
    bench.srv.sysctl("net.core.somaxconn", 4096)

