"""Deployment: the systemd unit, the privilege drop, SIGTERM (graceful, exit 0) and SIGHUP (reload)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeUDPReactor
from netns import Lab, Smee, netns_lab_fixture, which  # noqa: F401
from smee.shutdown import SignalService, clear_exit_signal
from smee.tftp.packet import RRQ, encode_request

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "contrib" / "smee.service"
NOBODY = 65534


# --- SIGTERM exit status -------------------------------------------------------


class _Reactor:
    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Any]] = []
        self.called: list[Any] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> tuple[str, str, Any]:
        self.triggers.append((phase, event, f))
        return (phase, event, f)

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.called.append(f)
        f(*args)


def test_clear_exit_signal_only_clears_sigterm() -> None:
    r: Any = _Reactor()
    r._exitSignal = signal.SIGTERM
    assert clear_exit_signal(r) is True and r._exitSignal is None
    r._exitSignal = signal.SIGINT
    assert clear_exit_signal(r) is False and r._exitSignal == signal.SIGINT
    assert clear_exit_signal(object()) is False  # no such attribute: left alone


def test_the_attribute_is_what_twisted_uses() -> None:
    """If Twisted renames it, clearing becomes a no-op: this test says so first."""
    from twisted.internet.base import ReactorBase

    assert "_exitSignal" in vars(ReactorBase)
    import inspect

    from twisted.application import app

    assert "reactor._exitSignal" in inspect.getsource(app.ApplicationRunner.startReactor)


class _Backend:
    def __init__(self) -> None:
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1


def test_signal_service_sighup_reloads_and_restores_handler() -> None:
    before = signal.getsignal(signal.SIGHUP)
    backend, reactor = _Backend(), _Reactor()
    svc = SignalService(backend, reactor)
    svc.startService()
    try:
        assert [(p, e) for p, e, _ in reactor.triggers] == [("during", "shutdown")]
        os.kill(os.getpid(), signal.SIGHUP)
        assert backend.reloads == 1
    finally:
        svc.stopService()
    assert signal.getsignal(signal.SIGHUP) == before
    # The shutdown trigger turns a SIGTERM stop into exit 0.
    reactor._exitSignal = signal.SIGTERM
    reactor.triggers[0][2]()
    assert reactor._exitSignal is None


def test_sighup_without_a_reloadable_backend_does_not_kill_smee() -> None:
    """Kubernetes and HTTP backends have nothing to reload; SIGHUP's default action would terminate."""
    from twisted.logger import capturedLogs

    before = signal.getsignal(signal.SIGHUP)
    svc = SignalService(object(), _Reactor())
    svc.startService()
    assert signal.getsignal(signal.SIGHUP) not in (before, signal.SIG_DFL)
    with capturedLogs() as events:
        svc.reload()
    assert any("nothing to reload" in e.get("log_format", "") for e in events)
    svc.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


def test_make_service_has_signals_child(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from smee.tap import Options, makeService

    hw = tmp_path / "hw.yaml"
    hw.write_text("52:54:00:00:00:01:\n  ipAddress: 192.0.2.11\n  subnetMask: 255.255.255.0\n")
    o = Options(environ={}, detect_ip=lambda _: None)
    o.parseOptions(["--public-ip=127.0.0.1", "--backend-file-enabled=true", f"--backend-file-path={hw}"])
    top = makeService(o, reactor=Clock())
    sig = top.getServiceNamed("signals")
    assert isinstance(sig, SignalService) and sig.backend is top.getServiceNamed("backend")


# --- TFTP drain ------------------------------------------------------------------


def _drain_service(timeout: float) -> tuple[Any, FakeUDPReactor]:
    from test_tftp_protocol import service

    reactor = FakeUDPReactor()
    svc = service(reactor)
    svc.drain_timeout = timeout
    svc.startService()
    return svc, reactor


def test_stop_lets_transfers_finish() -> None:
    from test_tftp_protocol import CLIENT
    from smee.tftp.packet import Data, encode_ack, parse

    svc, reactor = _drain_service(10.0)
    listener = reactor.ports[0]
    listener.receive(encode_request(RRQ, "ipxe.efi"), CLIENT)
    transfer = reactor.open_ports[1]
    d = svc.stopService()
    assert not d.called and not listener.listening and transfer.listening
    reactor.advance(1)
    assert not d.called
    while transfer.listening:  # the client acknowledges every block: the transfer completes
        block = parse(transfer.written[-1][0])
        assert isinstance(block, Data)
        transfer.receive(encode_ack(block.block), CLIENT)
    reactor.advance(0.2)
    assert d.called and reactor.open_ports == [] and reactor.getDelayedCalls() == []


def test_stop_ends_transfers_after_the_bound() -> None:
    from test_tftp_protocol import CLIENT
    from smee.tftp.packet import Error, parse

    svc, reactor = _drain_service(0.5)
    reactor.ports[0].receive(encode_request(RRQ, "ipxe.efi"), CLIENT)
    transfer = reactor.open_ports[1]
    d = svc.stopService()
    reactor.pump([0.1] * 4)
    assert not d.called and transfer.listening
    reactor.pump([0.1] * 2)
    assert d.called and reactor.open_ports == [] and reactor.getDelayedCalls() == []
    assert parse(transfer.written[-1][0]) == Error(0, "server shutting down")


def test_stop_without_transfers_is_immediate() -> None:
    svc, reactor = _drain_service(10.0)
    assert svc.stopService().called and reactor.getDelayedCalls() == []


# --- the systemd unit ------------------------------------------------------------


def _unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_shipped_unit_key_lines() -> None:
    s = _unit_settings(UNIT.read_text())
    assert s["User"] == ["smee"] and s["Group"] == ["smee"]
    assert "CAP_NET_BIND_SERVICE" in s["AmbientCapabilities"][0].split()
    assert "CAP_NET_BIND_SERVICE" in s["CapabilityBoundingSet"][0].split()
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    (pre,) = s["ExecStartPre"]
    assert pre.startswith("+/opt/smee/venv/bin/python ") and "getPlugins(IPlugin)" in pre
    (start,) = s["ExecStart"]
    assert start.startswith("/opt/smee/venv/bin/twistd --nodaemon --pidfile= --logger=smee.logs.observer smee ")
    assert "--config=/etc/smee/smee.yaml" in start
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def _verify(unit_dir: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    unit = unit_dir / "smee.service"
    unit.write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """The shipped unit, its /opt/smee/venv paths pointed at this test's own (real) programs."""
    if which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    for name, target in (("python", sys.executable), ("twistd", str(Path(sys.executable).with_name("twistd")))):
        (venv / name).symlink_to(target)
    text = UNIT.read_text().replace("/opt/smee/venv/", f"{tmp_path}/venv/")
    result = _verify(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr
    # and verify does catch a broken unit (so the pass above means something)
    broken = _verify(tmp_path, UNIT.read_text().replace("/opt/smee/venv/", f"{tmp_path}/missing/"))
    assert broken.returncode != 0 and "missing/bin/twistd" in broken.stdout + broken.stderr


# --- privilege drop in a network namespace -----------------------------------------

HARDWARE = """\
52:54:00:00:00:01:
  ipAddress: 192.0.2.11
  subnetMask: 255.255.255.0
"""
HARDWARE2 = HARDWARE + """\
52:54:00:00:00:02:
  ipAddress: 192.0.2.12
  subnetMask: 255.255.255.0
"""


@pytest.fixture(scope="module")
def system_venv() -> Iterator[Path]:
    """smee installed into a venv of Debian's /usr/bin/python3 in a world-readable directory."""
    if os.geteuid() != 0:
        pytest.skip("needs root (privilege drop)")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("needs /usr/bin/python3 (apt-get install python3-venv)")
    base = Path(tempfile.mkdtemp(prefix="smee-deploy-", dir="/tmp"))
    try:
        base.chmod(0o755)
        src = base / "src"
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".hypothesis", "dropin.cache"))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        venv = base / "venv"
        made = subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], env=env,
                              capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            pytest.skip(f"/usr/bin/python3 -m venv failed (apt-get install python3-venv): {made.stderr[-500:]}")
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], env=env,
                             capture_output=True, text=True, timeout=900)
        assert pip.returncode == 0, pip.stderr[-2000:]
        # the documented step: the plugin cache, written as root
        subprocess.run([str(venv / "bin" / "python"), "-c",
                        "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"],
                       env=env, check=True, timeout=120, cwd="/")
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        yield venv
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _status_ids(pid: int) -> tuple[list[str], list[str]]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(.*)$", status, re.M)
    gid = re.search(r"^Gid:\s+(.*)$", status, re.M)
    assert uid and gid
    return uid.group(1).split(), gid.group(1).split()


def _start_on_standard_ports(lab: Lab, venv: Path, launcher: list[str], twistd_args: list[str]) -> tuple[Any, Any, Path]:
    """smee from ``venv`` in a fresh namespace on 192.0.2.1, files readable by nobody; waits for :67 :69 :80 :514.

    ``launcher`` goes before twistd (e.g. setpriv), ``twistd_args`` between twistd and ``smee``.
    Returns (the process, the server namespace, the hardware file).
    """
    lab.require("ss")
    srv, peer = lab.namespace("srv"), lab.namespace("peer")
    s_if, p_if = lab.veth(srv, peer)
    srv.addr(s_if, "192.0.2.1/24")
    peer.addr(p_if, "192.0.2.2/24")
    files = venv.parent / f"run-{lab.path('x').parent.name}"
    files.mkdir(mode=0o755)
    (files / "ipxe").mkdir(mode=0o755)
    hw = files / "hardware.yaml"
    hw.write_text(HARDWARE)
    hw.chmod(0o644)
    argv = [*launcher, str(venv / "bin" / "twistd"), "-n", "--pidfile=", *twistd_args,
            "smee", "--public-ip=192.0.2.1", "--backend-file-enabled=true", f"--backend-file-path={hw}",
            f"--ipxe-dir={files / 'ipxe'}", "--http-port=80", f"--dhcp-iface={s_if}"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    smee = Smee("smee", srv, argv, lab.path("smee.log"), env=env, cwd=files)
    lab.processes.append(smee)
    lab.defer(f"stop smee (pid {smee.pid})", lambda: smee.stop(timeout=20))
    for proto, port in (("udp", 67), ("udp", 69), ("tcp", 80), ("udp", 514)):
        smee.wait_listening(port, proto)
    return smee, srv, hw


@pytest.mark.slow
@pytest.mark.netns
def test_twistd_binds_then_drops_privileges(netns_lab: Lab, system_venv: Path) -> None:
    smee, srv, hw = _start_on_standard_ports(
        netns_lab, system_venv, [], ["-u", str(NOBODY), "-g", str(NOBODY)])
    smee.wait_for(r"set uid/gid 65534/65534")
    uid, gid = _status_ids(smee.pid)
    assert uid == [str(NOBODY)] * 4 and gid == [str(NOBODY)] * 4, smee.describe()
    sockets = srv.run("ss", "-Hlnup").stdout + srv.run("ss", "-Hlntp").stdout
    for port in (67, 69, 80, 514):
        assert re.search(rf":{port}\s.*pid={smee.pid},", sockets), sockets
    text = smee.text()
    assert "Traceback" not in text and "Unable to write to plugin cache" not in text, smee.describe()

    # SIGHUP: a forced re-read, which sees the changed file.
    hw.write_text(HARDWARE2)
    os.kill(smee.pid, signal.SIGHUP)
    smee.wait_for(r"SIGHUP: reloading hardware")
    smee.wait_for(r"reloaded hardware from \S+: 2 records \(was 1\)")
    assert smee.alive()

    # SIGTERM: clean shutdown, exit status 0.
    os.kill(smee.pid, signal.SIGTERM)
    assert smee.wait(30) == 0, smee.describe()
    text = smee.text()
    assert "Server Shut Down." in text and "stopped by SIGTERM: exiting with status 0" in text, text
    assert "Traceback" not in text, text


@pytest.mark.slow
@pytest.mark.netns
def test_unprivileged_with_ambient_bind_capability_as_the_unit_runs(netns_lab: Lab, system_venv: Path) -> None:
    """The unit's way: User=smee from the first instruction, ports bound with CAP_NET_BIND_SERVICE only.

    systemd cannot run as PID 1 here, so ``setpriv`` sets up the same
    credentials the unit asks for (uid/gid, no supplementary groups, the bind
    capability inherited and ambient) before exec'ing twistd without -u/-g.
    """
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (apt-get install util-linux)")
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    smee, _srv, _hw = _start_on_standard_ports(netns_lab, system_venv, setpriv, ["--logger=smee.logs.observer"])
    uid, gid = _status_ids(smee.pid)
    assert uid == [str(NOBODY)] * 4 and gid == [str(NOBODY)] * 4, smee.describe()
    status = Path(f"/proc/{smee.pid}/status").read_text()
    effective = int(re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    assert effective == 1 << 10, f"only CAP_NET_BIND_SERVICE expected, CapEff={effective:#x}"
    os.kill(smee.pid, signal.SIGTERM)
    assert smee.wait(30) == 0, smee.describe()
    assert "Traceback" not in smee.text()
