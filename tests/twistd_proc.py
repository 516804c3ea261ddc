"""Start ``twistd smee`` as a subprocess, wait until it answers, stop it with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def run_then_sigterm(args: list[str], cwd: Path, env: dict[str, str], http_port: int,
                     stdout: IO[Any], stderr: Any, report: Callable[[], str], timeout: float = 30.0) -> int:
    """Run until /healthcheck answers (the reactor runs, so SIGTERM is handled), then SIGTERM; the exit status."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=stdout, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, report()
            assert time.monotonic() < deadline, report()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthcheck", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
