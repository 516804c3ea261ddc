"""Profile smee's HTTP request path under wrk load (a one-off aid for optimising, not a benchmark row).

Starts the same lab, smee and wrk load as bench_http.py (new connections by default,
``--keep-alive`` for the other mode) and samples smee with py-spy (``pip install py-spy``
into the venv). py-spy pauses smee for each sample (consistent stacks; the req/s printed is
then lower than unprofiled); ``--nonblocking`` does not, but then some stacks come out
truncated. Prints the top
functions by self and by cumulative share of smee's busy samples (idle samples excluded).

    .venv/bin/python benchmarks/http/profile.py [--seconds 10] [--keep-alive] [--top 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_http
import harness

PY_SPY = Path(sys.executable).with_name("py-spy")


def tally(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """Self and cumulative sample counts per function from py-spy's collapsed-stack output."""
    self_: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith("process ")]  # py-spy's per-process root frame
        if not frames:
            continue
        total += n
        self_[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            cumulative[frame] += n
    return self_, cumulative, total


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where}" if where else name


#: Frames every request sits under: the twistd start-up and the reactor's dispatch.
LOOP = ("<module> (twistd", "run (twisted/", "runApp ", "runReactorWithLogging ", "ApplicationRunner.",
        "UnixApplicationRunner.", "ReactorBase.", "EPollReactor.doPoll ", "callWithLogger ", "callWithContext ",
        "ThreadedContextTracker.", "ContextTracker.", "_PollLikeMixin._doReadOrWrite ")


def rootless(raw: str) -> list[str]:
    """Innermost frames of the samples not under the reactor's mainLoop (threads, GC, start-up)."""
    out = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if "mainLoop" not in stack and count.isdigit():
            out += [_short(stack.split(";")[-1].strip())] * int(count)
    return out


def by_package(self_: Counter[str]) -> Counter[str]:
    """Self samples per top-level package/file area (twisted/web, klein, smee/http, ...)."""
    out: Counter[str] = Counter()
    for frame, n in self_.items():
        where = frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
        parts = where.split("/")
        out["/".join(parts[:2]) if len(parts) > 2 else parts[0] or "?"] += n
    return out


def table(title: str, counts: Counter[str], total: int, top: int) -> str:
    lines = [f"{title} (of {total} busy samples)", "", "| % | samples | function |", "|---:|---:|---|"]
    lines += [f"| {n / total:.1%} | {n} | `{f}` |" for f, n in counts.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--keep-alive", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--save", type=Path, help="also keep py-spy's collapsed stacks in this file")
    ap.add_argument("--nonblocking", action="store_true",
                    help="do not pause smee while sampling (less overhead, but some stacks come out truncated)")
    args = ap.parse_args()
    if not PY_SPY.exists():
        raise SystemExit(f"needs py-spy: {Path(sys.executable).with_name('pip')} install py-spy")
    with tempfile.TemporaryDirectory(prefix="smee-http-profile-") as d, harness.bench_lab(Path(d)) as bench:
        tmp = Path(d)
        bench_http._tune(bench)
        macs = bench_http._macs(bench_http.RECORDS)
        hardware = tmp / "hardware.yaml"
        hardware.write_text(bench_http._hardware_yaml(macs))
        paths = tmp / "paths.txt"
        paths.write_text("".join(f"/{m}/auto.ipxe\n" for m in macs))
        smee = bench_http._start_smee(bench, hardware)
        bench_http._wrk(bench, paths, bench_http.WARMUP_SECONDS, close=False, pids=[smee.pid])
        out = tmp / "raw.txt"
        load: list[bench_http.WrkRun] = []
        wrk = threading.Thread(target=lambda: load.append(bench_http._wrk(
            bench, paths, args.seconds + 2, close=not args.keep_alive, pids=[smee.pid])))
        wrk.start()
        try:
            subprocess.run([str(PY_SPY), "record", "-p", str(smee.pid), "-d", f"{args.seconds:g}",
                            "-r", str(args.rate), *(["--nonblocking"] if args.nonblocking else []), "--function", "-f", "raw", "-o", str(out)],
                           check=True, timeout=args.seconds + 60, capture_output=True, text=True)
        finally:
            wrk.join(timeout=args.seconds + 60)
        raw_text = out.read_text()
        if args.save:
            args.save.write_text(raw_text)
        self_, cumulative, total = tally(raw_text)
    mode = "keep-alive" if args.keep_alive else "new connection per request"
    if load:
        print(f"load: wrk -c{bench_http.CONNECTIONS}, {mode}: {load[0].rps:,.0f} req/s, "
              f"{load[0].cpu_us_per_request:.0f} µs smee CPU/request (while sampled)\n")
    print(table(f"Top {args.top} by self time", self_, total, args.top))
    print()
    below = Counter({f: n for f, n in cumulative.items() if not f.startswith(LOOP)})
    print(table(f"Top {args.top} by cumulative time, below the reactor loop (twistd, mainLoop, doPoll, "
                "callWithLogger/Context, _doReadOrWrite left out)", below, total, args.top))
    roots = Counter(r for r in rootless(raw_text))
    if roots:
        print("\nSamples outside the reactor loop, by innermost frame:", dict(roots.most_common(8)))
    print()
    print(table("Self time by package", by_package(self_), total, 20))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
