"""Run every fuzz target for N executions (each bounded in time) and record the results.

Called by ``fuzz/run``; never by CI (tests/test_fuzz.py does a short pass).
Targets run one after another, each in its own process
(``fuzz/harness.py``), seeded from fuzz/targets.py. The table of counts,
exec/s, coverage and findings replaces the block between the RESULTS
markers of fuzz/README.md (``--no-write`` leaves it alone).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = HERE / "README.md"
BEGIN, END = "<!-- BEGIN results -->", "<!-- END results -->"

sys.path.insert(0, str(HERE))


@dataclass
class Result:
    """What one target's run reported (libFuzzer's final stats and DONE line)."""

    name: str
    seeds: int = 0
    runs: int = 0
    exec_per_sec: int = 0
    seconds: float = 0.0
    cov: int = 0
    features: int = 0
    corpus: int = 0
    new_units: int = 0
    peak_rss_mb: int = 0
    exit_code: int | None = None
    findings: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def status(self) -> str:
        if self.findings:
            return "**crash**"
        if self.exit_code != 0:
            return f"**exit {self.exit_code}**"
        return "clean"


def parse_output(result: Result, text: str) -> None:
    """Fill ``result`` from libFuzzer's stderr: ``stat::`` lines, the last ``cov:`` line, crashes."""
    stats = dict(re.findall(r"^stat::(\w+):\s*(\d+)", text, re.MULTILINE))
    result.runs = int(stats.get("number_of_executed_units", result.runs))
    result.exec_per_sec = int(stats.get("average_exec_per_sec", result.exec_per_sec))
    result.new_units = int(stats.get("new_units_added", result.new_units))
    result.peak_rss_mb = int(stats.get("peak_rss_mb", result.peak_rss_mb))
    progress = re.findall(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", text, re.MULTILINE)
    if progress:
        last = progress[-1]
        result.runs = max(result.runs, int(last[0]))
        result.cov, result.features, result.corpus = int(last[1]), int(last[2]), int(last[3])
    for match in re.finditer(r"Test unit written to (\S+)", text):
        result.findings.append(match.group(1))
    if result.findings:
        # The Python exception atheris printed: its last line names it.
        errors = re.findall(r"=== Uncaught Python exception: ===\n([^\n]+)", text)
        if errors:
            result.note = errors[-1][:300]


def run_target(name: str, runs: int, max_time: int, workdir: Path, findings: Path) -> Result:
    """One target, in its own process, bounded by -runs, -max_total_time and a hard timeout."""
    result = Result(name)
    corpus = workdir / name
    python = sys.executable
    harness = str(HERE / "harness.py")
    result.seeds = int(subprocess.run(
        [python, harness, name, "--write-seeds", str(corpus)], check=True, capture_output=True, text=True,
        timeout=300,
    ).stdout.strip())
    findings.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    cmd = [
        python, harness, name, f"-runs={runs}", f"-max_total_time={max_time}", "-print_final_stats=1",
        "-timeout=20", "-rss_limit_mb=3072", f"-artifact_prefix={findings}/{name}-",
    ]
    if corpus.with_suffix(".dict").exists():
        cmd.append(f"-dict={corpus.with_suffix('.dict')}")
    cmd.append(str(corpus))
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            result.exit_code = proc.wait(timeout=max_time + 300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the fuzzer we started
            proc.wait()
            result.exit_code = -9
            result.note = f"killed after {max_time + 300} s"
    result.seconds = time.monotonic() - started
    parse_output(result, log_path.read_text(errors="replace"))
    if not result.exec_per_sec and result.seconds:
        result.exec_per_sec = int(result.runs / result.seconds)
    print(f"{name}: {result.runs} runs, {result.exec_per_sec} exec/s, cov {result.cov}, "
          f"{result.status} ({log_path})", flush=True)
    return result


_HEADER = (
    "| target | run (UTC) | seeds | executions | exec/s | time (s) | cov (edges) | features | corpus "
    "| peak RSS (MB) | result |"
)


def render(results: list[Result], when: datetime, runs: int, max_time: int, kept: Sequence[str] = ()) -> str:
    """The results block of fuzz/README.md; ``kept`` are earlier rows of targets not run this time."""
    lines = [
        BEGIN,
        (f"`fuzz/run --runs {runs} --max-time {max_time}` on {os.cpu_count()} cores, "
         f"Python {sys.version.split()[0]}; cov = libFuzzer edges in smee's own (instrumented) modules."),
        "",
        _HEADER,
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *kept,
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {when:%Y-%m-%d %H:%M} | {r.seeds} | {r.runs:,} | {r.exec_per_sec:,} | {r.seconds:.0f} "
            f"| {r.cov} | {r.features} | {r.corpus} | {r.peak_rss_mb} | {r.status} |"
        )
    notes = [f"* {r.name}: {r.note or ''} {' '.join(r.findings)}".rstrip() for r in results if r.findings or r.note]
    if notes:
        lines += ["", *notes]
    lines.append(END)
    return "\n".join(lines)


def earlier_rows(names: list[str]) -> list[str]:
    """Rows of the current README table for targets other than ``names`` (kept when a subset is run)."""
    if not README.exists():
        return []
    text = README.read_text()
    if BEGIN not in text or END not in text:
        return []
    block = text[text.index(BEGIN) : text.index(END)]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| target ")]
    return [row for row in rows if row.split("|")[1].strip() not in names]


def write_readme(block: str) -> None:
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + block + text[end:])


def main(argv: list[str] | None = None) -> int:
    import targets

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per target (default 1,000,000)")
    parser.add_argument("--max-time", type=int, default=900, help="seconds per target at most (default 900)")
    parser.add_argument("--targets", default=",".join(targets.TARGETS), help="comma-separated target names")
    parser.add_argument("--findings", type=Path, default=HERE / "findings", help="where crashing inputs go")
    parser.add_argument("--no-write", action="store_true", help="do not update fuzz/README.md")
    args = parser.parse_args(argv)
    names = [n for n in args.targets.split(",") if n]
    unknown = set(names) - set(targets.TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    results = []
    with tempfile.TemporaryDirectory(prefix="smee-fuzz-") as tmp:
        for name in names:
            results.append(run_target(name, args.runs, args.max_time, Path(tmp), args.findings))
            # Keep the logs of failed runs where they can be read after the temporary directory goes.
            if results[-1].status != "clean":
                args.findings.mkdir(parents=True, exist_ok=True)
                (args.findings / f"{name}.log").write_text((Path(tmp) / f"{name}.log").read_text(errors="replace"))
    block = render(results, datetime.now(UTC), args.runs, args.max_time, earlier_rows(names))
    print(block)
    if not args.no_write:
        write_readme(block)
    return 0 if all(r.status == "clean" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
