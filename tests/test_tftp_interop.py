"""Real TFTP clients against a real ``twistd smee``, over loopback.

curl, atftp, tftp-hpa and busybox each fetch the real iPXE binaries (from
``make bindata``) and the result must be byte-exact, in both transfer modes
(a port per transfer, and ``--tftp-single-port``). Refusals must reach the
client as errors it reports, and the block size a client asks for must be
granted up to ``--tftp-block-size`` and no further.

Loopback only, on free high ports: these tests run beside the host's real
network. Each transfer's time is printed (``pytest -s`` shows them).
A missing client skips only its own tests, naming the package to install
(scripts/install-test-packages installs them all).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ipxe_bin import ipxe_bin

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).with_name("twistd")
HOST = "127.0.0.1"
BINARIES = ("undionly.kpxe", "ipxe.efi", "snp.efi")
MAC = "52:54:00:12:34:56"
DENIED_MAC = "52:54:00:12:34:57"

#: 127.0.0.1 may netboot, 127.0.0.2 may not, 127.0.0.3 is unknown (curl --interface picks the source).
HARDWARE = f"""\
{MAC}:
  ipAddress: 127.0.0.1
  subnetMask: 255.0.0.0
  netboot:
    allowPxe: true
{DENIED_MAC}:
  ipAddress: 127.0.0.2
  subnetMask: 255.0.0.0
  netboot:
    allowPxe: false
"""

#: client → Debian package
PACKAGES = {"curl": "curl", "atftp": "atftp", "tftp": "tftp-hpa", "busybox": "busybox"}

#: Every wait is bounded: one transfer of ~1 MB over loopback takes well under a second.
CLIENT_TIMEOUT = 60.0
START_TIMEOUT = 30.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"needs {tool} (apt-get install {PACKAGES[tool]}, or run scripts/install-test-packages)")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ipxe_dir() -> Path:
    return ipxe_bin(BINARIES)


@dataclass
class Smee:
    """One ``twistd -n --pidfile= smee`` serving TFTP on loopback."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 5.0) -> str:
        """The log once it contains ``needle`` (the server logs after the client's last ACK,
        which can be after the client has exited); fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while needle not in (text := self.text()):
            if time.monotonic() > deadline:
                pytest.fail(f"{needle!r} not in smee's log after {timeout:g}s:\n{text[-3000:]}")
            time.sleep(0.02)
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_smee(workdir: Path, ipxe: Path, *extra: str) -> Smee:
    """Start smee with only TFTP enabled and wait (bounded) until it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    hw = workdir / "hardware.yaml"
    hw.write_text(HARDWARE)
    port = free_udp_port()
    argv = [
        str(TWISTD), "-n", "--pidfile=", "smee",
        "--backend-file-enabled=true", f"--backend-file-path={hw}",
        f"--public-ip={HOST}", "--dhcp-enabled=false",
        f"--dhcp-addr={HOST}:{free_udp_port()}",
        f"--tftp-addr={HOST}", f"--tftp-port={port}", f"--ipxe-dir={ipxe}",
        f"--http-port={free_tcp_port()}", f"--syslog-port={free_udp_port()}",
        *extra,
    ]
    log = workdir / "smee.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1"))
    smee = Smee(proc, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while f"TFTP listening on {HOST}:{port}" not in smee.text():
        if proc.poll() is not None or time.monotonic() > deadline:
            smee.stop()
            pytest.fail(f"smee did not start TFTP on {HOST}:{port}:\n{smee.text()}")
        time.sleep(0.05)
    return smee


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, ipxe_dir: Path) -> Iterator[dict[str, Smee]]:
    """The three configurations, started once for the module and checked for a clean exit."""
    root = tmp_path_factory.mktemp("tftp-interop")
    running: dict[str, Smee] = {}
    try:
        running["per-transfer"] = start_smee(root / "per-transfer", ipxe_dir)
        running["single-port"] = start_smee(root / "single-port", ipxe_dir, "--tftp-single-port=true")
        running["blksize-1468"] = start_smee(root / "blksize-1468", ipxe_dir, "--tftp-block-size=1468")
        yield running
    finally:
        for smee in running.values():
            smee.stop()
    for name, smee in running.items():
        text = smee.text()
        assert "Traceback" not in text, f"{name}:\n{text}"
        assert "Server Shut Down." in text, f"{name}:\n{text}"


@dataclass
class Result:
    returncode: int
    output: str
    seconds: float


def run_client(argv: list[str], label: str) -> Result:
    started = time.monotonic()
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                             stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{label}: no result after {CLIENT_TIMEOUT:g}s: {' '.join(argv)}")
    seconds = time.monotonic() - started
    print(f"\n{label}: {seconds:.3f}s (rc {run.returncode})")
    return Result(run.returncode, run.stdout + run.stderr, seconds)


def client_argv(client: str, name: str, out: Path, port: int) -> list[str]:
    """The command for one download; each client asks for blksize 1468 except curl-512/tftp-hpa."""
    if client == "curl-512":
        return [require("curl"), "-sS", "--max-time", "30", f"tftp://{HOST}:{port}/{name}", "-o", str(out)]
    if client == "curl-1468":
        return [require("curl"), "-sS", "--max-time", "30", "--tftp-blksize", "1468",
                f"tftp://{HOST}:{port}/{name}", "-o", str(out)]
    if client == "atftp":
        # atftp 0.8: one --option per option, "name value" in one argument; windowsize is RFC 7440.
        return [require("atftp"), "--get", "-r", name, "-l", str(out),
                "--option", "blksize 1468", "--option", "windowsize 16", HOST, str(port)]
    if client == "tftp-hpa":
        return [require("tftp"), HOST, str(port), "-m", "binary", "-c", "get", name, str(out)]
    if client == "busybox":
        require("busybox")
        if "tftp" not in subprocess.run(["busybox", "--list"], capture_output=True, text=True, timeout=10,
                                        check=False).stdout.split():
            pytest.skip("this busybox has no tftp applet")
        return ["busybox", "tftp", "-g", "-r", name, "-l", str(out), "-b", "1468", HOST, str(port)]
    raise AssertionError(client)


CLIENTS = ("curl-512", "curl-1468", "atftp", "tftp-hpa", "busybox")


@pytest.mark.parametrize("mode", ["per-transfer", "single-port"])
@pytest.mark.parametrize("name", BINARIES)
@pytest.mark.parametrize("client", CLIENTS)
def test_download_is_byte_exact(servers: dict[str, Smee], ipxe_dir: Path, tmp_path: Path,
                                client: str, name: str, mode: str) -> None:
    smee = servers[mode]
    out = tmp_path / name
    result = run_client(client_argv(client, name, out, smee.port), f"{client} {name} {mode}")
    assert result.returncode == 0, result.output
    assert out.is_file(), result.output
    assert sha256(out) == sha256(ipxe_dir / name), f"{client} got {out.stat().st_size} bytes\n{smee.text()[-3000:]}"


@pytest.mark.parametrize("mode", ["per-transfer", "single-port"])
@pytest.mark.parametrize("client", CLIENTS)
def test_unknown_file_is_reported_by_the_client(servers: dict[str, Smee], tmp_path: Path,
                                                client: str, mode: str) -> None:
    smee = servers[mode]
    out = tmp_path / "out"
    result = run_client(client_argv(client, "pxelinux.0", out, smee.port), f"{client} denied {mode}")
    if client.startswith("curl"):
        # 68 is CURLE_TFTP_NOTFOUND. curl 7.88 prints a stale "getpeername() failed"
        # instead of the server's message (curl/curl#11332), so its exit code is what counts.
        assert result.returncode == 68, result.output
    else:
        # tftp-hpa exits 0 even after an error: the server's message is what counts.
        assert "not found" in result.output.lower(), result.output
    assert not out.exists() or out.stat().st_size == 0
    smee.wait_for("refused pxelinux.0 to 127.0.0.1:")


@pytest.mark.parametrize(
    "source, curl_rc, logged",
    [
        ("127.0.0.2", 69, f"netboot not allowed for {DENIED_MAC}"),
        ("127.0.0.3", 69, "no hardware record has IP 127.0.0.3"),
    ],
)
def test_clients_not_allowed_to_netboot_get_access_violation(servers: dict[str, Smee], tmp_path: Path,
                                                             source: str, curl_rc: int, logged: str) -> None:
    smee = servers["per-transfer"]
    out = tmp_path / "out"
    argv = [require("curl"), "-sS", "--max-time", "30", "--interface", source,
            f"tftp://{HOST}:{smee.port}/ipxe.efi", "-o", str(out)]
    result = run_client(argv, f"curl from {source}")
    assert result.returncode == curl_rc, result.output  # 69: "TFTP: Access Violation"
    smee.wait_for(logged)


def test_autoexec_ipxe_is_generated_for_the_client(servers: dict[str, Smee], tmp_path: Path) -> None:
    smee = servers["per-transfer"]
    out = tmp_path / "autoexec.ipxe"
    result = run_client([require("curl"), "-sS", "--max-time", "30", f"tftp://{HOST}:{smee.port}/autoexec.ipxe",
                         "-o", str(out)], "curl autoexec.ipxe")
    assert result.returncode == 0, result.output
    script = out.read_text()
    assert script.startswith("#!ipxe\n") and f"/{MAC}/auto.ipxe" in script


@pytest.mark.parametrize("server, granted", [("per-transfer", 512), ("blksize-1468", 1468)])
def test_blksize_is_granted_up_to_the_setting(servers: dict[str, Smee], ipxe_dir: Path, tmp_path: Path,
                                              server: str, granted: int) -> None:
    smee = servers[server]
    out = tmp_path / "ipxe.efi"
    argv = [require("atftp"), "--trace", "--get", "-r", "ipxe.efi", "-l", str(out),
            "--option", "blksize 1468", HOST, str(smee.port)]
    result = run_client(argv, f"atftp blksize 1468 asked, {server}")
    assert result.returncode == 0, result.output
    assert f"received OACK <blksize: {granted}," in result.output, result.output[:2000]
    assert sha256(out) == sha256(ipxe_dir / "ipxe.efi")
    smee.wait_for(f"blksize {granted},")
