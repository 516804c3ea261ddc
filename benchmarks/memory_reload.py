#!/usr/bin/env python
"""Memory, load/reload time, lookup time and reactor stalls of the file backend.

    .venv/bin/python benchmarks/memory_reload.py [--records 100000] [--runs 5]

Generates a Smee-format file with N records (MACs 02:00:xx:xx:xx:xx, addresses
from 10.0.0.0/8 -- written to a file only, no traffic is sent), plus the same
with 1,000 records to show that lookups are O(1). Every run is a fresh
subprocess, for each of the two reload modes:

* ``sync``   -- ``parse_in_thread=False``: the old behaviour, the reload
  parses on the reactor thread;
* ``thread`` -- ``parse_in_thread=True``: parse and index in the reactor's
  thread pool, swap on the reactor thread.

Each child measures VmRSS (``/proc/self/status``) before and after the first
load, the first load, a reload after rewriting the file with different
content, and the longest gap between ticks of a 10 ms LoopingCall from the
start of that reload until 0.2 s after it (the reactor stall). The ``thread``
child also times 100,000 random ``by_mac``/``by_ip`` lookups one by one
(``perf_counter_ns`` around each call, so ~50-100 ns of timer overhead is
included) and reports the median.

Prints a Markdown table (median and min-max over the runs) and appends it to
benchmarks/RESULTS.md. Bounded: each child is killed after --timeout seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOOKUPS = 100_000


def record(i: int, tag: str) -> str:
    b = i.to_bytes(4, "big")
    mac = "02:00:" + ":".join(f"{x:02x}" for x in b)
    return (
        f"{mac}:\n"
        f"  ipAddress: 10.{b[1]}.{b[2]}.{b[3]}\n"
        f"  subnetMask: 255.0.0.0\n"
        f"  defaultGateway: 10.0.0.1\n"
        f"  nameServers: [10.0.0.53]\n"
        f"  hostname: {tag}-{i}\n"
        f"  netboot: {{allowPxe: true}}\n"
    )


def generate(path: Path, n: int, tag: str) -> None:
    path.write_text("".join(record(i, tag) for i in range(n)))


def vmrss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- child -------------------------------------------------------------------


def child(mode: str, a: str, b: str, n: int, work: str) -> dict[str, float]:
    from ipaddress import IPv4Address

    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall

    from smee.backends.file import FileBackend

    path = os.path.join(work, f"hw-{os.getpid()}.yaml")
    shutil.copyfile(a, path)
    out: dict[str, float] = {}
    backend = FileBackend(
        path, reactor, poll_interval=0, use_inotify=False, parse_in_thread=(mode == "thread")
    )
    out["rss_before_mib"] = vmrss_kib() / 1024
    t = time.perf_counter()
    backend.load()
    out["load_s"] = time.perf_counter() - t
    out["rss_after_mib"] = vmrss_kib() / 1024
    assert backend.state()["records"] == n, backend.state()

    if mode == "thread":
        rng = random.Random(1)
        idx = [rng.randrange(n) for _ in range(LOOKUPS)]
        macs = ["02:00:" + ":".join(f"{x:02x}" for x in i.to_bytes(4, "big")) for i in idx]
        ips = [IPv4Address(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}") for i in idx]
        clock = time.perf_counter_ns
        for name, fn, keys in (("by_mac", backend.by_mac, macs), ("by_ip", backend.by_ip, ips)):
            times = []
            append = times.append
            for k in keys:
                t0 = clock()
                fn(k)
                append(clock() - t0)
            out[f"{name}_ns"] = statistics.median(times)
        assert backend.by_mac(macs[0]).result.hardware is not None  # type: ignore[attr-defined]

    shutil.copyfile(b, path)  # different hostnames: a real reload, not a no-op
    ticks: list[float] = []
    window: list[float] = []

    def tick() -> None:
        ticks.append(time.perf_counter())

    loop = LoopingCall(tick)

    def finish(_: object) -> None:
        window.append(time.perf_counter())
        out["reload_s"] = window[1] - window[0]
        reactor.callLater(0.2, stop)

    def stop() -> None:
        window.append(time.perf_counter())
        loop.stop()
        reactor.stop()

    def start() -> None:
        loop.start(0.01)
        reactor.callLater(0.2, begin)

    def begin() -> None:
        window.append(time.perf_counter())
        d = backend.reload()
        d.addCallback(finish)

    reactor.callWhenRunning(start)
    reactor.run()
    inside = [x for x in ticks if window[0] <= x <= window[2]]
    # The gap spanning the start of the reload counts too.
    before = [x for x in ticks if x < window[0]][-1:]
    pts = before + inside + [window[2]]
    out["stall_ms"] = max(y - x for x, y in itertools.pairwise(pts)) * 1000
    assert "new-0" == backend.by_mac("02:00:00:00:00:00").result.interface.hostname  # type: ignore[attr-defined]
    out["rss_after_reload_mib"] = vmrss_kib() / 1024
    os.unlink(path)
    return out


# --- parent ------------------------------------------------------------------


def fmt(values: list[float], digits: int) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def machine() -> str:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception as e:  # pragma: no cover
            return f"? ({e})"

    mem = run("free", "-g").splitlines()
    mem_line = next((line for line in mem if line.startswith("Mem:")), "?")
    return (
        f"`nproc` {run('nproc')}; `free -g` total {mem_line.split()[1]} GiB; "
        f"Python {platform.python_version()}; kernel {run('uname', '-r')}"
    )


def measure(records: int, small: int, runs: int, timeout: float) -> list[tuple[str, str, str]]:
    """(what, median (min–max), note) rows for ``small`` and ``records`` records, each child a fresh process."""
    rows: list[tuple[str, str, str]] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="smee-bench-") as work:
        for n in sorted({small, records}):
            a, b = Path(work, f"a-{n}.yaml"), Path(work, f"b-{n}.yaml")
            generate(a, n, "old")
            generate(b, n, "new")
            size = a.stat().st_size / 2**20
            res: dict[str, list[dict[str, float]]] = {"sync": [], "thread": []}
            for run in range(runs):
                for mode in ("sync", "thread"):
                    cmd = [sys.executable, __file__, "--child", mode, str(a), str(b), str(n), work]
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
                    if p.returncode != 0:
                        sys.stderr.write(p.stderr)
                        raise RuntimeError(f"child {mode} n={n} failed: {p.stderr[-2000:]}")
                    res[mode].append(json.loads(p.stdout.strip().splitlines()[-1]))
                    print(f"n={n} run {run + 1}/{runs} {mode}: {res[mode][-1]}", file=sys.stderr)
            both = res["sync"] + res["thread"]
            t = res["thread"]
            s = res["sync"]
            k = f"{n:,} records ({size:.1f} MiB YAML)"
            rows += [
                (f"{k}: RSS before load (MiB)", fmt([r["rss_before_mib"] for r in both], 0), "after imports"),
                (f"{k}: RSS after load (MiB)", fmt([r["rss_after_mib"] for r in both], 0), "VmRSS"),
                (
                    f"{k}: RSS growth by load (MiB)",
                    fmt([r["rss_after_mib"] - r["rss_before_mib"] for r in both], 0),
                    f"≈ {statistics.median([(r['rss_after_mib'] - r['rss_before_mib']) * 2**20 / n for r in both]) / 1024:.1f} KiB/record",
                ),
                (
                    f"{k}: RSS after reload, synchronous (MiB)",
                    fmt([r["rss_after_reload_mib"] for r in s], 0),
                    "peak of old + new data during the reload; freed memory is not returned to the OS",
                ),
                (
                    f"{k}: RSS after reload, worker thread (MiB)",
                    fmt([r["rss_after_reload_mib"] for r in t], 0),
                    "same, plus the reactor thread pool's thread (malloc arena)",
                ),
                (f"{k}: initial load (s)", fmt([r["load_s"] for r in both], 2), "synchronous, at start-up"),
                (f"{k}: reload, synchronous (s)", fmt([r["reload_s"] for r in s], 2), "parse_in_thread=False (before)"),
                (f"{k}: reload, worker thread (s)", fmt([r["reload_s"] for r in t], 2), "parse_in_thread=True (after)"),
                (
                    f"{k}: longest reactor stall during reload, before (ms)",
                    fmt([r["stall_ms"] for r in s], 0),
                    "max gap of a 10 ms LoopingCall, sync path",
                ),
                (
                    f"{k}: longest reactor stall during reload, after (ms)",
                    fmt([r["stall_ms"] for r in t], 0),
                    "max gap of a 10 ms LoopingCall, threaded path",
                ),
                (
                    f"{k}: by_mac lookup (ns)",
                    fmt([r["by_mac_ns"] for r in t], 0),
                    f"median of {LOOKUPS:,} random lookups per run, incl. timer overhead",
                ),
                (
                    f"{k}: by_ip lookup (ns)",
                    fmt([r["by_ip_ns"] for r in t], 0),
                    "IPv4Address argument; same method",
                ),
            ]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=1_000, help="second size, to show O(1) lookups")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per child process")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--child", nargs=5, metavar=("MODE", "A", "B", "N", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, a, b, n, work = args.child
        print(json.dumps(child(mode, a, b, int(n), work)))
        return 0

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = measure(args.records, args.small, args.runs, args.timeout)
    lines = [
        f"### memory_reload.py — {started}, {args.runs} runs per point",
        "",
        f"Machine: {machine()}.",
        "",
        "| what | value (median, min–max) | notes |",
        "|---|---|---|",
        *[f"| {w} | {v} | {n} |" for w, v, n in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        with open(args.results, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
