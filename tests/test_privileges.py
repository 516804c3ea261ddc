"""Least privilege (issue 10, item 7): after binding, smee runs without root; it writes nothing
outside its state directory.

Both tests start ``twistd -u 65534 -g 65534 smee`` with every component on the standard
ports (67, 69, 80, 514) in a network namespace, then run a whole flow against it from a
client namespace: a DHCP lease (ISC dhclient), a TFTP download and the iPXE script (curl),
a syslog datagram, a SIGHUP reload of the hardware file and a SIGTERM stop.

* :func:`test_binds_as_root_then_serves_as_nobody_without_capabilities` reads
  ``/proc/<pid>/status`` after the ports are bound: every uid and gid 65534, no
  supplementary group but 65534, no inheritable, permitted, effective or ambient
  capability. (test_deploy.py checks the ids and the sockets; this adds the capability
  sets and that the unprivileged process still answers every protocol.)
* :func:`test_writes_nothing_outside_its_state_directory` runs the same flow under
  ``strace -f`` and checks every path a file system call could write: see
  :data:`WRITE_CALLS` and :func:`allowed` for what is allowed and why.

Where the interpreter lives under a directory nobody may enter (a pyenv in /root, 0700, in
the development environment), the process gets a private mount namespace in which that
directory is a read-only-by-mode tmpfs holding only the interpreter's directory (bind
mounted): the same files, readable by uid 65534 as a root-owned world-readable
/opt/smee/venv is in production. test_deploy.py covers that production layout itself
(a venv from Debian's python3 and ``pip install``), at the price of an install.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import REPO, TWISTD, Lab, Netns, Smee, netns_lab_fixture, which  # noqa: F401

NOBODY = 65534
SERVER, MACHINE = "192.0.2.1", "192.0.2.11"
MAC = "52:54:00:00:00:01"
HARDWARE = f"""\
{MAC}:
  ipAddress: {MACHINE}
  subnetMask: 255.255.255.0
  netboot:
    allowPxe: true
    facility: lab1
"""
HARDWARE2 = HARDWARE + """\
52:54:00:00:00:02:
  ipAddress: 192.0.2.12
  subnetMask: 255.255.255.0
"""
#: A stand-in iPXE binary: smee serves whatever bytes the directory holds.
IPXE_EFI = bytes(range(256)) * 23

#: File system calls that can create, change or remove a file (strace ``-e trace=``).
WRITE_CALLS = (
    "open", "openat", "openat2", "creat", "truncate", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat",
    "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "mknod", "mknodat",
    "chmod", "fchmodat", "chown", "lchown", "fchownat", "utimensat", "chdir",
)
_WRITE_FLAGS = re.compile(r"\bO_(?:WRONLY|RDWR|CREAT|TRUNC|APPEND|TMPFILE)\b")
_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<args>.*)$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_DIRFD = re.compile(r"^(?:AT_FDCWD|\d+)(?:<(?P<dir>[^>]*)>)?")


# --- what the strace log says ------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One file system call that could write ``path`` (absolute), as strace printed it."""

    path: str
    call: str
    line: str


def writes(lines: Iterable[str], cwd: str) -> list[Write]:
    """Every path a traced call could have written (whether or not it succeeded).

    ``open*``/``creat`` count when their flags can write; the others always do. A
    relative path is resolved against the directory of its ``dirfd`` (strace ``-y``)
    or ``cwd``. ``chdir`` is included so that a change of directory is seen too.
    """
    found = []
    for line in lines:
        m = _CALL.match(line)
        if m is None or m.group("call") not in WRITE_CALLS:
            continue
        call, args = m.group("call"), m.group("args")
        if call in ("open", "openat", "openat2") and not _WRITE_FLAGS.search(args):
            continue
        base = cwd
        dirfd = _DIRFD.match(args)
        if dirfd and dirfd.group("dir"):
            base = dirfd.group("dir")
        for raw in _STRING.findall(args)[: 1 if call.startswith("open") or call == "creat" else 2]:
            path = raw.encode("latin-1", "backslashreplace").decode("unicode_escape")
            found.append(Write(os.path.normpath(os.path.join(base, path)), call, line.rstrip()))
    return found


def allowed(path: str, state: str) -> bool:
    """What smee may write, and why.

    * its state directory (the working directory, ``StateDirectory=`` in the unit):
      the only place that is smee's own;
    * ``/dev/null``: standard streams pointed at it are opened for writing;
    * ``/proc/self/...`` and ``/proc/thread-self/...``: the process's own kernel
      settings (e.g. a thread's name), not files.
    Nothing else: no pid file (``--pidfile=``), no plugin cache (refreshed beforehand,
    as the unit's ExecStartPre does), no bytecode (PYTHONDONTWRITEBYTECODE, as in
    the unit), no temporary files, no leases, no logs but stdout.
    """
    return (
        path in (state, "/dev/null")
        or path.startswith((state.rstrip("/") + "/", "/proc/self/", "/proc/thread-self/"))
    )


def test_the_strace_check_sees_writes_and_their_directories() -> None:
    """The parser behind the strace test: it must be able to find what it exists to find."""
    log = [
        '101 openat(AT_FDCWD, "/usr/lib/python3/x.py", O_RDONLY|O_CLOEXEC) = 3',
        '101 openat(AT_FDCWD, "/etc/smee/evil", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = -1 EACCES (Permission denied)',
        '102 openat(AT_FDCWD, "leases", O_RDWR|O_CREAT, 0600 <unfinished ...>',
        '102 openat(7</var/lib/smee/sub>, "f", O_APPEND) = 4',
        '103 openat2(AT_FDCWD, "/tmp/t", {flags=O_RDWR|O_CREAT, mode=0600, resolve=0}, 24) = 5',
        '104 rename("/var/lib/smee/a.tmp", "/etc/a") = 0',
        '104 unlinkat(AT_FDCWD, "/var/lib/smee/old", 0) = 0',
        '104 mkdir("/run/smee", 0755) = 0',
        '105 chdir("/") = 0',
        '105 openat(AT_FDCWD, "/dev/null", O_WRONLY) = 6',
        '105 openat(AT_FDCWD, "/proc/self/task/105/comm", O_RDWR) = 6',
        '106 <... openat resumed>) = 3',
        '107 +++ exited with 0 +++',
    ]
    found = writes(log, "/var/lib/smee")
    assert [(w.call, w.path) for w in found] == [
        ("openat", "/etc/smee/evil"), ("openat", "/var/lib/smee/leases"), ("openat", "/var/lib/smee/sub/f"),
        ("openat2", "/tmp/t"), ("rename", "/var/lib/smee/a.tmp"), ("rename", "/etc/a"),
        ("unlinkat", "/var/lib/smee/old"), ("mkdir", "/run/smee"), ("chdir", "/"),
        ("openat", "/dev/null"), ("openat", "/proc/self/task/105/comm"),
    ]
    bad = [w.path for w in found if not allowed(w.path, "/var/lib/smee")]
    assert bad == ["/etc/smee/evil", "/tmp/t", "/etc/a", "/run/smee", "/"]


# --- a smee that uid 65534 can run ---------------------------------------------------


def _blocked_ancestor(path: Path) -> tuple[Path, Path] | None:
    """The first directory above ``path`` that others may not enter, and its child on the way."""
    parts = path.parts
    for i in range(1, len(parts)):
        ancestor = Path(*parts[:i])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            for j in range(i + 1, len(parts)):
                deeper = Path(*parts[:j])
                if not os.stat(deeper).st_mode & stat.S_IXOTH:
                    pytest.skip(f"{deeper} is not searchable by others; uid {NOBODY} cannot load Python from it")
            return ancestor, Path(*parts[: i + 1])
    return None


def _readable_view(hold: Path, paths: Iterable[Path]) -> list[str]:
    """Shell commands (run as root in a private mount namespace) that let others reach ``paths``.

    For each directory on the way that others may not enter (e.g. /root): its needed
    child is bind-mounted aside, a mode-0755 tmpfs covers the directory, and the child
    is bind-mounted back. The files themselves are untouched and nothing else is exposed.
    """
    needed: dict[Path, set[Path]] = {}
    for p in paths:
        found = _blocked_ancestor(Path(os.path.realpath(p)))
        if found:
            needed.setdefault(found[0], set()).add(found[1])
    commands: list[str] = []
    n = 0
    for ancestor, children in sorted(needed.items()):
        after: list[str] = []
        for child in sorted(children):
            n += 1
            aside = hold / str(n)
            is_dir = child.is_dir()
            commands.append(f"mkdir -p {aside}" if is_dir else f"touch {aside}")
            commands.append(f"mount --bind {shlex.quote(str(child))} {aside}")
            after.append(f"mkdir -p {shlex.quote(str(child))}" if is_dir else f"touch {shlex.quote(str(child))}")
            after.append(f"mount --bind {aside} {shlex.quote(str(child))}")
        commands.append(f"mount -t tmpfs -o mode=0755,size=64k smee-view {shlex.quote(str(ancestor))}")
        commands.extend(after)
    return commands


@dataclass
class Run:
    smee: Smee
    srv: Netns
    cli: Netns
    cli_if: str
    hw: Path
    state: Path
    work: Path


def _refresh_plugin_cache(env: dict[str, str]) -> None:
    """As the unit's ExecStartPre: rewrite Twisted's dropin.cache as root, before smee starts."""
    subprocess.run([sys.executable, "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"],
                   env=env, check=True, timeout=120, cwd="/", capture_output=True)


def _start(lab: Lab, strace_log: Path | None = None) -> Run:
    """twistd -u/-g 65534 smee, every component on the standard ports, in a fresh namespace."""
    lab.require("ss", "dhclient", "curl")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (apt-get install util-linux)")
    if strace_log is not None and which("strace") is None:
        pytest.skip("needs strace (apt-get install strace)")
    srv, cli = lab.namespace("srv"), lab.namespace("cli")
    s_if, c_if = lab.veth(srv, cli, b_mac=MAC)
    srv.addr(s_if, f"{SERVER}/24")

    work = Path(tempfile.mkdtemp(prefix="smee-priv-", dir="/tmp"))
    lab.defer(f"remove {work}", lambda: shutil.rmtree(work, ignore_errors=True))
    work.chmod(0o755)
    ipxe = work / "ipxe"
    ipxe.mkdir(mode=0o755)
    (ipxe / "ipxe.efi").write_bytes(IPXE_EFI)
    (ipxe / "ipxe.efi").chmod(0o644)
    hw = work / "hardware.yaml"
    hw.write_text(HARDWARE)
    hw.chmod(0o644)
    state = work / "state"  # what systemd's StateDirectory=smee is: owned by the service user
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    hold = lab.path("view")
    hold.mkdir()

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    _refresh_plugin_cache(env)
    twistd = [str(TWISTD), "-n", "--pidfile=", "-u", str(NOBODY), "-g", str(NOBODY), "--logger=smee.logs.observer",
              "smee", f"--public-ip={SERVER}", "--backend-file-enabled=true", f"--backend-file-path={hw}",
              f"--ipxe-dir={ipxe}", "--http-port=80", f"--dhcp-iface={s_if}", "--log-level=info"]
    if strace_log is not None:
        twistd = [which("strace") or "strace", "-f", "-qq", "-y", "-s", "4096", "-o", str(strace_log),
                  "-e", "trace=" + ",".join(WRITE_CALLS), "--", *twistd]
    view = _readable_view(hold, [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable), REPO, work])
    script = "set -e\n" + "\n".join(view) + '\nexec "$@"\n'
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "smee-view", *twistd]
    smee = Smee("smee", srv, argv, lab.path("smee.log"), env=env, cwd=state)
    lab.processes.append(smee)
    lab.defer(f"stop smee (pid {smee.pid})", lambda: smee.stop(timeout=20))
    if strace_log is not None:
        # unshare and sh exec: the pid is strace's; twistd is its child.
        children = Path(f"/proc/{smee.pid}/task/{smee.pid}/children")

        def child() -> int | None:
            if not smee.alive():
                raise AssertionError(smee.describe())
            text = children.read_text().split() if children.exists() else []
            return int(text[0]) if text and Path(f"/proc/{text[0]}/cmdline").read_bytes().find(b"twistd") >= 0 else None

        deadline = 100
        while (pid := child()) is None and deadline:
            deadline -= 1
            subprocess.run(["sleep", "0.1"], check=True)
        assert pid is not None, smee.describe()
        smee.pid = pid  # wait_listening and stop() act on twistd; strace exits with it
    for proto, port in (("udp", 67), ("udp", 69), ("tcp", 80), ("udp", 514)):
        smee.wait_listening(port, proto, timeout=60)
    smee.wait_for(r"set uid/gid 65534/65534", 20)
    return Run(smee, srv, cli, c_if, hw, state, work)


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _serve_everything(lab: Lab, run: Run) -> None:
    """DHCP, TFTP, HTTP, syslog, SIGHUP: each answered by the unprivileged process."""
    smee, cli = run.smee, run.cli
    lease = lab.dhclient(cli, run.cli_if, timeout=20)
    assert lease.ok and lease.env.get("new_ip_address") == MACHINE, lease.output + smee.describe()

    cli.addr(run.cli_if, f"{MACHINE}/24")  # the lease, as the machine would configure it
    got = lab.path("ipxe.efi")
    cli.run("curl", "-sS", "--max-time", "20", "-o", got, f"tftp://{SERVER}/ipxe.efi", timeout=30)
    assert got.read_bytes() == IPXE_EFI, smee.describe()

    script = cli.run("curl", "-sS", "--max-time", "10", f"http://{SERVER}/{MAC}/auto.ipxe", timeout=20).stdout
    assert script.startswith("#!ipxe") and f"worker_id={MAC}" in script, script + smee.describe()

    cli.run(sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto("
            f"b'<14>1 - - hook - - - least-privilege-syslog-check', ('{SERVER}', 514))")
    smee.wait_for(r"least-privilege-syslog-check", 10)

    run.hw.write_text(HARDWARE2)
    os.kill(smee.pid, signal.SIGHUP)
    smee.wait_for(r"reloaded hardware from \S+: 2 records \(was 1\)", 10)
    assert smee.alive()


def _stop(run: Run) -> str:
    os.kill(run.smee.pid, signal.SIGTERM)
    assert run.smee.popen.wait(timeout=30) == 0, run.smee.describe()
    text = run.smee.text()
    assert "Traceback" not in text and '"level": "critical"' not in text, text
    return text


@pytest.mark.netns
@pytest.mark.slow
def test_binds_as_root_then_serves_as_nobody_without_capabilities(netns_lab: Lab) -> None:
    run = _start(netns_lab)
    status = _status(run.smee.pid)
    ids = str(NOBODY)
    assert status["Uid"].split() == [ids] * 4 and status["Gid"].split() == [ids] * 4, status
    assert set(status["Groups"].split()) <= {ids}, status
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps}={status[caps]} after the privilege drop"
    _serve_everything(netns_lab, run)
    # still unprivileged after serving (nothing re-acquires anything)
    status = _status(run.smee.pid)
    assert status["Uid"].split() == [ids] * 4 and int(status["CapEff"], 16) == 0, status
    _stop(run)


@pytest.mark.netns
@pytest.mark.slow
def test_writes_nothing_outside_its_state_directory(netns_lab: Lab) -> None:
    trace = netns_lab.path("strace.log")
    run = _start(netns_lab, strace_log=trace)
    _serve_everything(netns_lab, run)
    _stop(run)
    lines = trace.read_text(errors="replace").splitlines()
    assert any("openat(" in line for line in lines), "strace recorded nothing: the check would be empty"
    found = writes(lines, str(run.state))
    bad = [w for w in found if not allowed(w.path, str(run.state))]
    assert not bad, "writes outside the state directory:\n" + "\n".join(w.line for w in bad[:40])
