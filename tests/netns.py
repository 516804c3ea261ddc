"""Network-namespace labs for end-to-end tests: real clients against a real ``twistd smee``.

Nothing here touches the root namespace: every namespace, veth and bridge is
created *inside* a namespace this module made (``ip -n NS link add ... peer
... netns NS2``), and carries a random per-lab suffix so concurrent runs
cannot collide. Everything is undone in reverse order when the lab closes,
also when the test failed; every wait is bounded.

Use it from a test module (tests/ is on sys.path under pytest's default
"prepend" import mode). Importing ``netns_lab_fixture`` provides the fixture
``netns_lab`` (a conftest.py could instead say ``pytest_plugins = ["netns"]``)::

    import pytest
    from netns import Lab, netns_lab_fixture, only_components  # noqa: F401

    pytestmark = pytest.mark.netns

    def test_something(netns_lab: Lab) -> None:
        lab = netns_lab
        lab.require("dhclient")                       # skips with the apt package to install
        srv, cli = lab.namespace("srv"), lab.namespace("cli")
        s_if, c_if = lab.veth(srv, cli, b_mac="02:00:00:00:00:10")
        srv.addr(s_if, "192.0.2.1/25")
        cap = lab.tcpdump(srv, s_if)                  # optional pcap, read with cap.datagrams()
        smee = lab.smee(srv, HARDWARE_YAML, "--public-ip=192.0.2.1", f"--dhcp-iface={s_if}",
                        *only_components("dhcp"))     # waits until UDP :67 is bound
        lease = lab.dhclient(cli, c_if)               # DhcpResult: .env, .elapsed, .ok
        assert lease.env["new_ip_address"] == "192.0.2.10", smee.text()

When a test using ``netns_lab`` fails, the report gets a "netns lab" section:
the addresses and routes of every namespace and the tail of every process
log (smee, tcpdump decoded, clients, relays) — no need to rerun with prints.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

REPO = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).with_name("twistd")

#: tool -> Debian package that provides it (scripts/install-test-packages installs them all).
PACKAGES = {
    "ip": "iproute2",
    "ss": "iproute2",
    "dhclient": "isc-dhcp-client",
    "busybox": "busybox",
    "dhcrelay": "isc-dhcp-relay",
    "tcpdump": "tcpdump",
    # for later e2e tests (see ../shared/reference/e2e-notes.md)
    "qemu-system-x86_64": "qemu-system-x86",
    "atftp": "atftp",
    "tftp": "tftp-hpa",
    "curl": "curl",
    "dnsmasq": "dnsmasq-base",  # not "dnsmasq": that package starts a system DNS service
    "perfdhcp": "kea-admin",
}

#: A clean environment for client programs (their scripts see only what the client sets).
CLIENT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

#: Linux limits interface names to 15 characters (IFNAMSIZ - 1).
IFNAMSIZ = 15
SUFFIX_LEN = 6


class LabError(RuntimeError):
    """A lab operation failed (command error, timeout, process died); the message has the details."""


def which(tool: str) -> str | None:
    """The tool's path, also looking in the sbin directories a non-login PATH may lack."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(tool, path=path)


def missing_reason(*tools: str) -> str | None:
    """Why the lab cannot run here (not root, a tool missing), or None if it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", *tools):
        if which(tool) is None:
            return f"needs {tool} (apt-get install {PACKAGES.get(tool, tool)})"
    return None


def only_components(*keep: str) -> list[str]:
    """``--<component>-enabled=false`` for every smee component not in ``keep``.

    Derived from smee.config, so it follows components as they appear;
    backends are left alone (tests pick one explicitly).
    """
    from smee import config

    return [
        f"--{s.name}=false"
        for s in config.SETTINGS
        if s.name.endswith("-enabled") and s.group not in keep and s.group != "backend"
    ]


def _tail(text: str, lines: int) -> str:
    parts = text.splitlines()
    if len(parts) <= lines:
        return text
    return f"[... {len(parts) - lines} earlier lines ...]\n" + "\n".join(parts[-lines:])


def _wait(predicate: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] = str,
          interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy, or raise LabError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}\n{detail()}")
        time.sleep(interval)


# --- processes -------------------------------------------------------------


class Process:
    """A background program in a namespace; output (stdout+stderr) goes to ``log_path``.

    Started by ``ip netns exec``, which execs the program: ``pid`` is the
    program's own pid. Stopped by pid only: SIGTERM, then SIGKILL after a bound.
    """

    def __init__(self, name: str, ns: Netns | None, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.ns = ns
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        full = (["ip", "netns", "exec", ns.name] if ns else []) + self.argv
        self.started = time.monotonic()
        with open(log_path, "wb") as out:
            self.popen = subprocess.Popen(
                full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd,
            )
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        return f"<Process {self.name} pid={self.pid} in {self.ns.name if self.ns else 'root ns'}>"

    def text(self) -> str:
        """Everything the process has written so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def describe(self, lines: int = 80) -> str:
        state = "running" if self.alive() else f"exited {self.returncode}"
        return (f"--- {self.name} (pid {self.pid}, {state}): {' '.join(self.argv)}\n"
                f"{_tail(self.text(), lines)}")

    def wait_for(self, pattern: str, timeout: float = 10.0, flags: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log; LabError if it does not appear in time
        or the process exits without printing it."""
        rx = re.compile(pattern, flags)

        def check() -> re.Match[str] | None:
            found = rx.search(self.text())
            if found is None and not self.alive():
                # one last read: output may have landed just before exit
                found = rx.search(self.text())
                if found is None:
                    raise LabError(f"{self.name} exited ({self.returncode}) before printing "
                                   f"{pattern!r}\n{self.describe()}")
            return found

        return _wait(check, timeout, f"{pattern!r} from {self.name}", self.describe)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; LabError (process left running) on timeout."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{self.name} still running after {timeout:g} s\n{self.describe()}") from None

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM), then SIGKILL if still running after ``timeout`` s. Idempotent."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
        return self.popen.returncode


class Smee(Process):
    """``twistd -n --pidfile= smee ...`` in a namespace."""

    #: seconds from launch until the last wait_listening() succeeded
    elapsed_until_listening: float | None = None

    def wait_listening(self, port: int = 67, proto: str = "udp", timeout: float = 30.0) -> None:
        """Wait until a socket of this process is bound to ``port`` (checked with ``ss`` in its
        namespace, so it does not depend on log wording)."""
        assert self.ns is not None
        flag = "-u" if proto == "udp" else "-t"

        def bound() -> bool:
            if not self.alive():
                raise LabError(f"smee exited ({self.returncode}) before listening on "
                               f"{proto}/{port}\n{self.describe(200)}")
            out = self.ns.run("ss", "-Hanp", flag, f"sport = :{port}", check=False, timeout=5).stdout
            return f"pid={self.pid}," in out

        _wait(bound, timeout, f"smee to listen on {proto}/{port}", lambda: self.describe(200),
              interval=0.05)
        self.elapsed_until_listening = time.monotonic() - self.started


class Capture(Process):
    """tcpdump writing a pcap; ``datagrams()`` reads it back (IPv4/UDP only)."""

    def __init__(self, name: str, ns: Netns, iface: str, pcap: Path, log_path: Path,
                 filter: str) -> None:
        self.pcap = pcap
        self.iface = iface
        tcpdump = which("tcpdump") or "tcpdump"
        argv = [tcpdump, "-i", iface, "-n", "-s", "0", "-B", "32768", "-U", "--immediate-mode",
                "-w", str(pcap)] + ([filter] if filter else [])
        super().__init__(name, ns, argv, log_path)

    def wait_ready(self, timeout: float = 10.0) -> None:
        self.wait_for(r"listening on", timeout)

    def datagrams(self) -> list[Any]:
        """Every IPv4/UDP datagram captured so far (tests/pcap.py Datagram: src, dst, payload)."""
        from pcap import read_udp

        if not self.pcap.exists() or self.pcap.stat().st_size < 24:
            return []
        return read_udp(self.pcap)

    def decoded(self, lines: int = 200) -> str:
        """tcpdump's own verbose decoding of the capture (for failure reports)."""
        if not self.pcap.exists():
            return "(no pcap)"
        try:
            out = subprocess.run(
                [which("tcpdump") or "tcpdump", "-r", str(self.pcap), "-n", "-e", "-v"],
                check=False, capture_output=True, text=True, timeout=10,
            )
        except subprocess.TimeoutExpired:
            return "(tcpdump -r timed out)"
        return _tail(out.stdout + out.stderr, lines)

    def describe(self, lines: int = 80) -> str:
        return super().describe(10) + f"\n{self.pcap}:\n{self.decoded(lines * 3)}"


# --- namespaces ------------------------------------------------------------


class Netns:
    """One network namespace of a lab; loopback up, IPv6 off."""

    def __init__(self, lab: Lab, role: str, name: str) -> None:
        self.lab = lab
        self.role = role
        self.name = name

    def __repr__(self) -> str:
        return f"<Netns {self.name}>"

    def run(self, *argv: str | Path, timeout: float = 10.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace to completion (text output captured)."""
        return self.lab.run(["ip", "netns", "exec", self.name, *map(str, argv)],
                            timeout=timeout, check=check, input=input)

    def ip(self, *args: str) -> str:
        """``ip -n NS ARGS...`` (stdout)."""
        return self.lab.run(["ip", "-n", self.name, *args]).stdout

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def up(self, iface: str) -> None:
        self.ip("link", "set", iface, "up")

    def addr(self, iface: str, cidr: str) -> None:
        """Add an address (``192.0.2.1/25``) to an interface of this namespace."""
        self.ip("addr", "add", cidr, "dev", iface)

    def route(self, dst: str, via: str | None = None, dev: str | None = None) -> None:
        args = ["route", "add", dst] + (["via", via] if via else []) + (["dev", dev] if dev else [])
        self.ip(*args)

    def wait_oper_up(self, iface: str, timeout: float = 5.0) -> None:
        """Wait until the kernel reports the link as operationally up (carrier)."""
        path = f"/sys/class/net/{iface}/operstate"
        _wait(lambda: self.run("cat", path, check=False).stdout.strip() == "up", timeout,
              f"{iface} in {self.name} to come up", self.state, interval=0.05)

    def set_mac(self, iface: str, mac: str) -> None:
        self.ip("link", "set", iface, "address", mac)

    def mac(self, iface: str) -> str:
        out = self.ip("-br", "link", "show", iface).split()
        return out[2]

    def spawn(self, argv: Sequence[str | Path], name: str | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Process:
        """Start a background process here; the lab stops it (by pid) at teardown."""
        return self.lab.spawn(argv, ns=self, name=name, env=env, cwd=cwd)

    def state(self) -> str:
        """Addresses and routes, for failure reports."""
        out = subprocess.run(
            f"ip -n {self.name} -br link; ip -n {self.name} -br addr; ip -n {self.name} route",
            shell=True, check=False, capture_output=True, text=True, timeout=10,
        )
        return out.stdout + out.stderr


@dataclass
class DhcpResult:
    """What a DHCP client script saw. ``env`` is the environment of the final (bound) call."""

    client: str
    ok: bool
    elapsed: float | None  # seconds from client start to the bound script call
    env: dict[str, str] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)  # (s since start, reason)
    output: str = ""

    def timeline(self) -> str:
        steps = ", ".join(f"{t:.3f}s {r}" for t, r in self.events) or "no script calls"
        done = f"lease after {self.elapsed:.3f}s" if self.ok and self.elapsed is not None else "NO lease"
        return f"{self.client}: {done} ({steps})"


#: Client script shared by dhclient and udhcpc: one env dump per call, named by sequence and
#: reason (dhclient passes $reason, udhcpc passes it as $1), plus an events line with a timestamp.
_CLIENT_SCRIPT = """#!/bin/sh
dir='{dir}'
reason="${{reason:-$1}}"
now=$(date +%s.%N)
n=$(ls "$dir" | grep -c '\\.env$')
env | LC_ALL=C sort > "$dir/$n-$reason.env"
echo "$now $reason" >> "$dir/events"
exit 0
"""


class Lab:
    """A set of namespaces, links and processes, all removed by ``close()`` in reverse order."""

    def __init__(self, tmp_path: Path, suffix: str | None = None) -> None:
        self.tmp = tmp_path
        self.suffix = suffix or secrets.token_hex(SUFFIX_LEN // 2)
        self.namespaces: dict[str, Netns] = {}
        self.processes: list[Process] = []
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        self._names: set[str] = set()
        self._closed = False

    # -- bookkeeping --------------------------------------------------------

    def defer(self, what: str, undo: Callable[[], Any]) -> None:
        """Register a teardown step; steps run in reverse order of registration."""
        self._undo.append((what, undo))

    def close(self) -> None:
        """Undo everything, in reverse order; every step runs even if an earlier one failed."""
        if self._closed:
            return
        self._closed = True
        errors = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as e:  # noqa: BLE001 (keep tearing down; report at the end)
                errors.append(f"{what}: {e!r}")
        if errors:
            raise LabError("netns lab teardown: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def require(self, *tools: str) -> None:
        """Skip the test unless every tool is installed (the reason names the apt package)."""
        reason = missing_reason(*tools)
        if reason:
            pytest.skip(reason)

    def run(self, argv: Sequence[str | Path], timeout: float = 10.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to completion, bounded; LabError with its output if it fails."""
        argv = [str(a) for a in argv]
        try:
            done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                                  input=input, stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"timed out after {timeout:g} s: {' '.join(argv)}\n"
                           f"{e.stdout or ''}{e.stderr or ''}") from None
        if check and done.returncode != 0:
            raise LabError(f"exit {done.returncode}: {' '.join(argv)}\n{done.stdout}{done.stderr}")
        return done

    def ifname(self, prefix: str) -> str:
        """A unique interface name: ``<prefix[:8]>-<suffix>`` (at most 15 characters)."""
        name = f"{prefix[: IFNAMSIZ - SUFFIX_LEN - 1]}-{self.suffix}"
        assert len(name) <= IFNAMSIZ
        return name

    def path(self, name: str) -> Path:
        """A fresh file path in the lab's tmp directory (``name``, ``name.1``, ...)."""
        p = self.tmp / name
        n = 0
        while p.exists():
            n += 1
            p = self.tmp / f"{name}.{n}"
        return p

    # -- topology -----------------------------------------------------------

    def namespace(self, role: str) -> Netns:
        """Create namespace ``smee-<role>-<suffix>``: lo up, IPv6 disabled, IPv4 forwarding off."""
        if role in self.namespaces:
            raise ValueError(f"namespace role {role!r} already exists in this lab")
        name = f"smee-{role}-{self.suffix}"
        done = self.run(["ip", "netns", "add", name], check=False)
        if done.returncode != 0:
            if "Operation not permitted" in done.stderr and not self.namespaces:
                pytest.skip(f"cannot create network namespaces here: {done.stderr.strip()}")
            raise LabError(f"ip netns add {name}: {done.stderr.strip()}")
        self.defer(f"delete namespace {name}", lambda: self.run(["ip", "netns", "del", name]))
        ns = Netns(self, role, name)
        self.namespaces[role] = ns
        # before any interface exists, so new ones inherit "default"
        for scope in ("all", "default"):
            ns.sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", 1)
        ns.up("lo")
        return ns

    def veth(self, a: Netns, b: Netns, a_name: str | None = None, b_name: str | None = None,
             a_mac: str | None = None, b_mac: str | None = None, up: bool = True) -> tuple[str, str]:
        """A veth pair with one end in ``a`` and the other in ``b`` (created there directly,
        never in the root namespace). Names default to ``<role>0-<suffix>`` style. Returns
        (name in a, name in b)."""
        a_name = a_name or self._free_name(a.role[:4])
        b_name = b_name or self._free_name(b.role[:4])
        args = ["ip", "-n", a.name, "link", "add", a_name]
        args += ["address", a_mac] if a_mac else []
        args += ["type", "veth", "peer", "name", b_name]
        args += ["address", b_mac] if b_mac else []
        args += ["netns", b.name]
        self.run(args)
        # deleting either namespace removes the pair; an explicit step keeps the order exact
        self.defer(f"delete veth {a_name}", lambda: self.run(["ip", "-n", a.name, "link", "del", a_name],
                                                           check=False))
        self._names.update({a_name, b_name})
        if up:
            a.up(a_name)
            b.up(b_name)
            a.wait_oper_up(a_name)
            b.wait_oper_up(b_name)
        return a_name, b_name

    def bridge(self, ns: Netns, ports: Sequence[str] = (), name: str | None = None) -> str:
        """A Linux bridge in ``ns`` (STP off, forward delay 0) enslaving ``ports``; up."""
        name = name or self._free_name("br")
        ns.ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self.defer(f"delete bridge {name}", lambda: self.run(["ip", "-n", ns.name, "link", "del", name],
                                                           check=False))
        self._names.add(name)
        for port in ports:
            ns.ip("link", "set", port, "master", name)
        ns.up(name)
        return name

    def tap(self, ns: Netns, bridge: str | None = None, name: str | None = None) -> str:
        """A persistent tap device in ``ns`` (for ``qemu -netdev tap,ifname=NAME,script=no,
        downscript=no`` run with ``ip netns exec``), up, and enslaved to ``bridge`` if given."""
        name = name or self._free_name("tap")
        ns.ip("tuntap", "add", "dev", name, "mode", "tap")
        self.defer(f"delete tap {name}", lambda: self.run(["ip", "-n", ns.name, "link", "del", name],
                                                        check=False))
        self._names.add(name)
        if bridge:
            ns.ip("link", "set", name, "master", bridge)
        ns.up(name)
        return name

    def _free_name(self, base: str) -> str:
        """``<base><n>-<suffix>`` with the first n not yet used in this lab."""
        n = 0
        while (name := self.ifname(f"{base[: 8 - len(str(n))]}{n}")) in self._names:
            n += 1
        return name

    # -- processes ----------------------------------------------------------

    def spawn(self, argv: Sequence[str | Path], ns: Netns | None = None, name: str | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Process:
        """Start a background process (in ``ns``) whose log is in the lab's tmp directory;
        it is stopped (by pid) at teardown."""
        name = name or Path(str(argv[0])).name
        proc = Process(name, ns, argv, self.path(f"{name}.log"), env=env, cwd=cwd)
        self.processes.append(proc)
        self.defer(f"stop {name} (pid {proc.pid})", proc.stop)
        return proc

    def tcpdump(self, ns: Netns, iface: str, filter: str = "udp port 67 or udp port 68",
                name: str | None = None) -> Capture:
        """Start a capture (waits until tcpdump is listening); stop it with ``.stop()`` before
        reading for a complete file, although -U flushes each packet as it comes."""
        name = name or f"tcpdump-{iface}"
        pcap = self.path(f"{name}.pcap")
        cap = Capture(name, ns, iface, pcap, self.path(f"{name}.log"), filter)
        self.processes.append(cap)
        self.defer(f"stop {name} (pid {cap.pid})", cap.stop)
        cap.wait_ready()
        return cap

    def smee(self, ns: Netns, hardware: str | None, *args: str, name: str = "smee",
             listen: Sequence[tuple[str, int]] = (("udp", 67),), timeout: float = 30.0,
             env: dict[str, str] | None = None) -> Smee:
        """Start ``twistd -n --pidfile= smee`` in ``ns`` and wait (bounded) until it listens.

        ``hardware`` is written to a file and passed as ``--backend-file-path`` with
        ``--backend-file-enabled=true`` (None: pass no backend flags). ``args`` go to smee.
        ``listen`` lists the (proto, port) sockets to wait for; empty = do not wait.
        """
        argv: list[str] = [str(TWISTD), "-n", "--pidfile=", "smee"]
        if hardware is not None:
            hw = self.path("hardware.yaml")
            hw.write_text(hardware)
            argv += ["--backend-file-enabled=true", f"--backend-file-path={hw}"]
        argv += list(args)
        run_env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        run_env.update(env or {})
        workdir = self.path(f"{name}.cwd")
        workdir.mkdir()
        proc = Smee(name, ns, argv, self.path(f"{name}.log"), env=run_env, cwd=workdir)
        self.processes.append(proc)
        self.defer(f"stop {name} (pid {proc.pid})", lambda: proc.stop(timeout=10))
        for proto, port in listen:
            proc.wait_listening(port, proto, timeout)
        return proc

    # -- DHCP peers -------------------------------------------------------

    def dhcrelay(self, ns: Netns, downstream: str, upstream: str, server: str,
                 name: str = "dhcrelay", extra: Sequence[str] = ()) -> Process:
        """ISC dhcrelay in the foreground: clients on ``downstream`` (whose address becomes
        giaddr), ``server`` reached through ``upstream``. Returns once it is listening."""
        self.require("dhcrelay")
        argv = [which("dhcrelay") or "dhcrelay", "-d", "-4", "--no-pid", "-id", downstream,
                "-iu", upstream, *extra, server]
        proc = ns.spawn(argv, name=name, env=CLIENT_ENV)
        proc.wait_for(r"Sending on\s+Socket/fallback", 10)
        return proc

    def udhcpd(self, ns: Netns, iface: str, pool: tuple[str, str], options: Sequence[str] = (),
               static: dict[str, str] | None = None, name: str = "udhcpd") -> Process:
        """busybox udhcpd on ``iface`` (a stand-in DHCP server: validates client harnesses and
        topologies without smee). ``options`` are udhcpd "option" lines, e.g. "router 192.0.2.1";
        ``static`` maps MAC -> IP. Returns once its socket is bound."""
        self.require("busybox")
        leases = self.path(f"{name}.leases")
        leases.touch()
        conf = self.path(f"{name}.conf")
        lines = [f"start {pool[0]}", f"end {pool[1]}", f"interface {iface}",
                 f"lease_file {leases}", f"pidfile {self.path(name + '.pid')}"]
        lines += [f"option {o}" for o in options]
        lines += [f"static_lease {mac} {ip}" for mac, ip in (static or {}).items()]
        conf.write_text("\n".join(lines) + "\n")
        proc = ns.spawn([which("busybox") or "busybox", "udhcpd", "-f", conf], name=name, env=CLIENT_ENV)

        def bound() -> bool:
            if not proc.alive():
                raise LabError(f"udhcpd exited\n{proc.describe()}")
            return f"pid={proc.pid}," in ns.run("ss", "-Hunlp", "sport = :67", check=False).stdout

        _wait(bound, 5, "udhcpd to listen", proc.describe, interval=0.05)
        return proc

    def dnsmasq(self, ns: Netns, iface: str, args: Sequence[str] = (), name: str = "dnsmasq",
                timeout: float = 10.0) -> Process:
        """dnsmasq in the foreground as a plain DHCP server on ``iface`` of ``ns``: no DNS
        (``--port=0``), no config, hosts, resolv, lease or pid file, logging to its output (the
        lab's log). ``args`` add the rest, e.g. ``--dhcp-range=192.0.2.100,192.0.2.150,1h``.
        It binds UDP 67 on all addresses of its namespace, so give it a namespace of its own
        when smee runs too. Returns once its DHCP socket is bound."""
        self.require("dnsmasq")
        argv = [which("dnsmasq") or "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                "--no-resolv", "--no-hosts", "--pid-file=", "--leasefile-ro", "--log-facility=-",
                "--user=root", f"--interface={iface}", "--bind-interfaces", *args]
        proc = ns.spawn(argv, name=name, env=CLIENT_ENV)

        def bound() -> bool:
            if not proc.alive():
                raise LabError(f"dnsmasq exited\n{proc.describe()}")
            return f"pid={proc.pid}," in ns.run("ss", "-Hunlp", "sport = :67", check=False).stdout

        _wait(bound, timeout, "dnsmasq to listen", proc.describe, interval=0.05)
        return proc

    # -- DHCP clients -------------------------------------------------------

    def _client_dir(self, name: str) -> tuple[Path, Path]:
        d = self.path(name)
        d.mkdir()
        script = d / "script.sh"
        events = d / "events.d"
        events.mkdir()
        script.write_text(_CLIENT_SCRIPT.format(dir=events))
        script.chmod(0o755)
        return events, script

    @staticmethod
    def _collect(client: str, events_dir: Path, start_wall: float, bound: Sequence[str],
                 output: str) -> DhcpResult:
        events: list[tuple[float, str]] = []
        ev = events_dir / "events"
        if ev.exists():
            for line in ev.read_text().splitlines():
                ts, _, reason = line.partition(" ")
                events.append((float(ts) - start_wall, reason))
        env: dict[str, str] = {}
        elapsed = None
        files = sorted(events_dir.glob("*.env"), key=lambda p: int(p.name.split("-", 1)[0]))
        for n, f in enumerate(files):
            reason = f.name.split("-", 1)[1][: -len(".env")]
            if reason in bound:
                env = dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line)
                if n < len(events):
                    elapsed = events[n][0]
        return DhcpResult(client, bool(env), elapsed, env, events, output)

    def dhclient(self, ns: Netns, iface: str, timeout: float = 20.0, name: str = "dhclient",
                 extra_conf: str = "") -> DhcpResult:
        """Run ISC dhclient once (``-1 -d``) on ``iface``; return when it is bound, has given
        up, or ``timeout`` + 5 s have passed. It never touches files outside the lab's tmp
        (own conf, script, lease and pid files) and never configures the interface."""
        self.require("dhclient")
        events, script = self._client_dir(name)
        conf = self.path(f"{name}.conf")
        conf.write_text(
            f"timeout {int(timeout)};\nretry 1;\ninitial-interval 1;\n"
            "request subnet-mask, broadcast-address, time-offset, routers, domain-name,\n"
            "        domain-name-servers, host-name, interface-mtu;\n" + extra_conf
        )
        binary = _unconfined(which("dhclient") or "dhclient", self.tmp)
        argv = [binary, "-4", "-1", "-d", "-v", "-cf", conf, "-sf", script,
                "-lf", self.path(f"{name}.leases"), "-pf", self.path(f"{name}.pid"), iface]
        start_wall = time.time()
        proc = ns.spawn(argv, name=name, env=CLIENT_ENV)

        log = events / "events"

        def finished() -> bool:
            # the events line is the script's last write: the env file is complete by then
            done = log.exists() and any(r in ("BOUND", "REBOOT") for _, _, r in
                                        (ln.partition(" ") for ln in log.read_text().splitlines()))
            return done or not proc.alive()

        try:
            _wait(finished, timeout + 5, f"{name} to finish", proc.describe, interval=0.01)
        except LabError:
            pass  # reported as no lease, with the output
        proc.stop()
        return self._collect(name, events, start_wall, ("BOUND", "REBOOT"), proc.text())

    def udhcpc(self, ns: Netns, iface: str, tries: int = 5, wait: int = 2, name: str = "udhcpc",
               extra: Sequence[str] = ()) -> DhcpResult:
        """Run ``busybox udhcpc -n -q -f -t TRIES -T WAIT`` on ``iface`` (exits by itself:
        with a lease, or failing after its retries); bounded by tries*wait + 10 s."""
        self.require("busybox")
        events, script = self._client_dir(name)
        argv = [which("busybox") or "busybox", "udhcpc", "-i", iface, "-n", "-q", "-f",
                "-t", str(tries), "-T", str(wait), "-s", str(script), *extra]
        start_wall = time.time()
        proc = ns.spawn(argv, name=name, env=CLIENT_ENV)
        try:
            proc.wait(tries * wait + 10)
        except LabError:
            pass
        proc.stop()
        result = self._collect(name, events, start_wall, ("bound", "renew"), proc.text())
        result.ok = result.ok and proc.returncode == 0
        return result

    # -- reporting ----------------------------------------------------------

    def dump(self) -> str:
        """Everything useful after a failure: namespace state and every process's log."""
        parts = [f"lab suffix {self.suffix}, tmp {self.tmp}"]
        for ns in self.namespaces.values():
            try:
                parts.append(f"--- namespace {ns.name}\n{ns.state()}")
            except Exception as e:  # noqa: BLE001 (namespace already gone)
                parts.append(f"--- namespace {ns.name}: {e!r}")
        for proc in self.processes:
            lines = 300 if isinstance(proc, Smee) else 60
            parts.append(proc.describe(lines))
        return "\n".join(parts)


def _unconfined(binary: str, tmp: Path) -> str:
    """dhclient under an enforcing AppArmor profile (Ubuntu, some Debian) may not run scripts or
    write leases in /tmp; the profile is attached by path, so run a copy from the lab's tmp."""
    try:
        enabled = Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        enabled = False
    if not enabled or not Path(f"/etc/apparmor.d/{binary.strip('/').replace('/', '.')}").exists():
        return binary
    copy = tmp / Path(binary).name
    if not copy.exists():
        shutil.copy2(binary, copy)
    return str(copy)


# --- pytest integration ----------------------------------------------------


class _ReportPlugin:
    """Adds the lab dump to the report of a failed test that used ``netns_lab``."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
        report = yield
        lab = getattr(item, "funcargs", {}).get("netns_lab")
        if isinstance(lab, Lab) and report.failed and call.when == "call":
            try:
                report.sections.append(("netns lab", lab.dump()))
            except Exception as e:  # noqa: BLE001 (a report must not fail)
                report.sections.append(("netns lab", f"(dump failed: {e!r})"))
        return report


@pytest.fixture(name="netns_lab")
def netns_lab_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """A fresh :class:`Lab`; skips unless root with ``ip`` and ``ss``; torn down in reverse order."""
    reason = missing_reason("ss")
    if reason:
        pytest.skip(reason)
    pm = request.config.pluginmanager
    if pm.get_plugin("smee-netns-report") is None:
        pm.register(_ReportPlugin(), "smee-netns-report")
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
