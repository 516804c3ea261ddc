"""The README's run command starts smee on the bundled example hardware and stops cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from twistd_proc import run_then_sigterm

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_twistd_smee_runs_on_example_hardware_and_stops_on_sigterm(tmp_path: Path) -> None:
    # The same twistd invocation as scripts/run, but every listener on loopback
    # and on a free high port: this test runs beside the host's real network.
    args = [
        str(Path(sys.executable).with_name("twistd")), "--nodaemon", "--pidfile=", "smee",
        "--backend-file-enabled=true", f"--backend-file-path={REPO / 'examples' / 'hardware.yaml'}",
        "--public-ip=127.0.0.1",
        f"--dhcp-addr=127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--dhcp-iface=lo",
        f"--tftp-port={free_port(socket.SOCK_DGRAM)}",
        f"--http-port={(http_port := free_port(socket.SOCK_STREAM))}",
        f"--syslog-port={free_port(socket.SOCK_DGRAM)}",
    ]
    run_script = (REPO / "scripts" / "run").read_text()
    assert "--backend-file-enabled=true --backend-file-path=examples/hardware.yaml" in run_script
    log = tmp_path / "smee.log"
    with open(log, "w") as out:
        status = run_then_sigterm(args, tmp_path, dict(os.environ, PYTHONPATH=str(REPO)), http_port,
                                  out, subprocess.STDOUT, log.read_text)
    # SIGTERM is a clean stop: exit status 0 (smee.shutdown clears twistd's re-raise).
    assert status == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text
    assert "examples/hardware.yaml: 3 records" in text
    assert "DHCP listening on 127.0.0.1:" in text
    assert "Server Shut Down." in text
