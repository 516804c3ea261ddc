"""Run every side-by-side benchmark once and write ``benchmarks/RESULTS.md``.

Started by ``benchmarks/run`` (which installs the peers). Each module named in
MODULES gets a share of the total time budget; a module that fails or runs out of
time leaves its section with the error instead of numbers, never a made-up row.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import harness
from harness import Context, Section

#: module name -> share of the time budget (seconds, at --runs 5).
MODULES = {
    "bench_dhcp": 1500,
    "bench_tftp": 900,
    "bench_http": 420,
    "bench_storm": 600,
    "bench_memory": 900,
}


def render(sections: list[Section], started: datetime, seconds: float, runs: int, idle: str) -> str:
    out = [
        "# Benchmark results",
        "",
        f"Written by `benchmarks/run` on {started:%Y-%m-%d %H:%M} UTC in one run of {seconds / 60:.0f} min; "
        f"{runs} runs per point, median (min–max).",
        "",
        f"Machine: {harness.machine()}. Server pinned to CPU {harness.SERVER_CPU} in its own network "
        f"namespace, load generator on CPU {harness.CLIENT_CPU} in another, one veth pair, "
        f"192.0.2.0/24. {idle}.",
        "",
        "Ratio is smee ÷ peer for the metric in that row; *target* is the issue's goal for that ratio.",
        "",
    ]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        if sec.error:
            out += ["**Not measured in this run:**", "", "```", sec.error.strip(), "```", ""]
        if sec.rows:
            out += ["| what | tool | unit | smee | peer | peer value | ratio | target | met |",
                    "|---|---|---|---|---|---|---|---|---|"]
            for r in sec.rows:
                ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "—"
                theirs = r.theirs.fmt(r.digits) if r.theirs is not None else "—"
                out.append(f"| {r.what} | {r.tool} | {r.unit} | {r.ours.fmt(r.digits)} | {r.peer or '—'} | "
                           f"{theirs} | {ratio} | {r.target or '—'} | {r.met() or '—'} |")
            out.append("")
        if sec.table:
            out += ["| what | smee, median (min–max) | notes |", "|---|---|---|"]
            out += [f"| {w} | {v} | {n} |" for w, v, n in sec.table]
            out.append("")
        notes = [n for r in sec.rows if r.note for n in [f"{r.what} vs {r.peer}: {r.note}"]] + sec.notes
        out += [f"* {n}" for n in notes]
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the scripts work")
    ap.add_argument("--only", action="append", default=[], help="run only this module (repeatable)")
    ap.add_argument("--results", default=str(harness.HERE / "RESULTS.md"))
    args = ap.parse_args()
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    idle = harness.idle_check()
    print(idle, flush=True)
    sections: list[Section] = []
    scale = args.runs / 5 if not args.quick else 0.3
    for name, budget in MODULES.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"smee-{name}-") as tmp:
            ctx = Context(runs=args.runs, tmp=Path(tmp), quick=args.quick,
                          deadline=time.monotonic() + max(60.0, budget * scale))
            try:
                module = importlib.import_module(name)
                got = module.run(ctx)
            except Exception:  # noqa: BLE001 (the section says what failed; other modules still run)
                got = [Section(title=name, error=traceback.format_exc())]
        for sec in got:
            print(render([sec], started, 0, args.runs, idle).split("\n", 10)[-1], flush=True)
        sections += got
    text = render(sections, started, time.monotonic() - t0, args.runs, idle)
    Path(args.results).write_text(text)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
