"""Start N TFTP downloads at once and wait (bounded) for all of them; print one JSON line.

Run inside the client namespace, pinned to the client CPU, by bench_tftp.py:
one process forks every client, so that they start together instead of one
``ip netns exec`` each. Each client is ``curl`` writing ``OUTDIR/<i>``; the
caller checks the files (sha256), this script only reports exit codes, the
wall time from the first start to the last exit, each client's own duration, and
each client's stderr tail. Every client is bounded (curl --max-time, then killed).

    python fanout.py N OUTDIR TIMEOUT URL [curl options...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def main() -> int:
    count, outdir, timeout, url = int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    extra = sys.argv[5:]
    outdir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    began: list[float] = []
    t0 = time.monotonic()
    for i in range(count):
        argv = ["curl", "-sS", "--max-time", str(int(timeout)), *extra, "-o", str(outdir / str(i)), url]
        with open(outdir / f"{i}.err", "wb") as err:  # a file, not a pipe: nothing can block on it
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err))
        began.append(time.monotonic() - t0)
    spawned = time.monotonic() - t0
    ended: list[float | None] = [None] * count
    codes: list[int | None] = [None] * count
    killed: set[int] = set()
    by_pid = {p.pid: i for i, p in enumerate(procs)}

    def kill_rest() -> None:
        for i, p in enumerate(procs):
            if ended[i] is None:
                killed.add(i)
                p.kill()

    # Block in wait() rather than poll: the clients share this CPU with us.
    timer = threading.Timer(max(0.0, t0 + timeout + 10 - time.monotonic()), kill_rest)
    timer.start()
    try:
        for _ in range(count):
            pid, status = os.wait()
            i = by_pid[pid]
            ended[i], codes[i] = time.monotonic() - t0, os.waitstatus_to_exitcode(status)
            procs[i].returncode = codes[i]
    finally:
        timer.cancel()
    errors: list[str] = []
    for i in range(count):
        if i in killed:
            errors.append("killed: still running at the deadline")
        else:
            errors.append((outdir / f"{i}.err").read_text(errors="replace").strip()[-300:])
    done = [e for e in ended if e is not None]
    durations = [e - b for e, b, i in zip(ended, began, range(count)) if e is not None and i not in killed]
    report = {
        "wall": max(done) if done else time.monotonic() - t0,
        "spawn": spawned,
        "durations": durations,
        "codes": [None if i in killed else c for i, c in enumerate(codes)],
        "errors": errors,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
