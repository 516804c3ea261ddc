"""Shared machinery for the side-by-side benchmarks that ``benchmarks/run`` drives.

Method (issue 9): the server under test runs in its own network namespace pinned
to CPU 0 (``taskset -c 0``), the load generator in another namespace pinned to
CPU 1, joined by one veth pair, addresses from 192.0.2.0/24 (more client hosts
from 198.51.100.0/24 and 203.0.113.0/24). Server CPU time comes from
``/proc/<pid>/stat`` (all threads). Each point is run ``runs`` times and reported
as median (min–max). Nothing here touches the root namespace's interfaces:
namespaces and links are made by ``tests/netns.Lab`` and removed when it closes.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from netns import Lab, Netns, Process, which  # noqa: E402,F401 (which: re-exported for the bench modules)

SERVER_CPU = 0
CLIENT_CPU = 1
SERVER_IP = "192.0.2.1"
CLIENT_IP = "192.0.2.100"
PREFIX = 24
#: Extra client host addresses (simulated machines, relay-style clients) on the client side.
EXTRA_NETS = ("198.51.100", "203.0.113")
TWISTD = Path(sys.executable).with_name("twistd")
#: Where benchmarks/install-peers unpacks peers that cannot be installed side by side (atftpd).
PEERS = HERE / ".peers"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- numbers ----------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """Repeated measurements of one point; reported as median (min–max)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def fmt(self, digits: int = 1) -> str:
        if not self.values:
            return "—"
        m, lo, hi = self.median, min(self.values), max(self.values)
        return f"{m:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def series(measure: Callable[[], float], runs: int) -> Series:
    """Run ``measure`` ``runs`` times."""
    return Series(tuple(measure() for _ in range(runs)))


@dataclass
class Row:
    """One line of RESULTS.md: smee against one peer on one metric.

    ``ratio`` is always smee/peer of the metric itself; ``higher_is_better`` says
    how to read it, ``target`` is the ratio the issue asks for (e.g. ">= 1.0").
    """

    what: str
    tool: str
    unit: str
    ours: Series
    peer: str
    theirs: Series | None
    higher_is_better: bool
    target: str = ""
    digits: int = 1
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.theirs is None or not self.theirs.values or not self.ours.values or self.theirs.median == 0:
            return None
        return self.ours.median / self.theirs.median

    def met(self) -> str:
        if not self.target or self.ratio is None:
            return ""
        op, _, num = self.target.partition(" ")
        want = float(num)
        ok = self.ratio >= want if op == ">=" else self.ratio <= want
        return "yes" if ok else "**no**"


@dataclass
class Section:
    """A benchmark's rows plus notes (what it did, what limited it)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    #: rows without a peer: (what, value, note)
    table: list[tuple[str, str, str]] = field(default_factory=list)


# --- machine ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, in seconds (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return idle, sum(parts)


def idle_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs' time spent idle over ``seconds``."""
    i0, t0 = _cpu_times()
    time.sleep(seconds)
    i1, t1 = _cpu_times()
    return (i1 - i0) / max(1, t1 - t0)


def idle_check(min_idle: float = 0.9, tries: int = 10) -> str:
    """Wait (bounded) for an idle machine before a series; a note saying how idle it was."""
    frac = 0.0
    for _ in range(tries):
        frac = idle_fraction(1.0)
        if frac >= min_idle:
            return f"idle check: {frac:.0%} idle"
    return f"idle check: only {frac:.0%} idle after {tries} s (numbers may be skewed)"


def machine() -> str:
    """One line naming the machine the numbers come from."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB RAM, kernel {platform.release()}, "
            f"Python {platform.python_version()}")


def pinned(cpu: int, argv: Sequence[str | Path]) -> list[str]:
    """``argv`` run on one CPU only."""
    return ["taskset", "-c", str(cpu), *[str(a) for a in argv]]


def tool_version(argv: Sequence[str]) -> str:
    """First line a tool prints about its version (for the results' notes)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    out = (done.stdout or done.stderr).strip().splitlines()
    return out[0] if out else "?"


def deb_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "?"


# --- lab --------------------------------------------------------------------


@dataclass
class Bench:
    """A two-namespace lab: ``srv`` (server, CPU 0) and ``cli`` (load, CPU 1) on one veth."""

    lab: Lab
    srv: Netns
    cli: Netns
    srv_if: str
    cli_if: str
    tmp: Path

    def server(self, name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> Process:
        """Start a server in ``srv`` pinned to CPU 0; stopped by PID when the lab closes."""
        proc = self.srv.spawn(pinned(SERVER_CPU, argv), name=name, env=env, cwd=cwd)
        return proc

    def client(self, argv: Sequence[str | Path], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a load generator in ``cli`` pinned to CPU 1, bounded by ``timeout`` seconds."""
        return self.cli.run(*pinned(CLIENT_CPU, argv), timeout=timeout, check=check)

    def client_spawn(self, name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None) -> Process:
        """A background load generator in ``cli`` on CPU 1."""
        return self.cli.spawn(pinned(CLIENT_CPU, argv), name=name, env=env)

    def add_client_hosts(self, count: int) -> list[str]:
        """``count`` extra client addresses on the client side (198.51.100.x, then 203.0.113.x),
        routed from the server through the veth; returns them in order."""
        hosts: list[str] = []
        for net in EXTRA_NETS:
            for i in range(1, 255):
                if len(hosts) == count:
                    break
                hosts.append(f"{net}.{i}")
        if len(hosts) < count:
            raise ValueError(f"at most {len(EXTRA_NETS) * 254} extra client hosts")
        batch = "".join(f"addr add {h}/32 dev {self.cli_if}\n" for h in hosts)
        self.lab.run(["ip", "-n", self.cli.name, "-batch", "-"], input=batch, timeout=60)
        for net in EXTRA_NETS[: (count + 253) // 254]:
            self.srv.route(f"{net}.0/24", via=CLIENT_IP)
        return hosts


@contextmanager
def bench_lab(tmp: Path, mtu: int = 1500) -> Iterator[Bench]:
    """Namespaces ``srv`` and ``cli`` joined by a veth; torn down (by PID, then links) on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    with Lab(tmp) as lab:
        srv, cli = lab.namespace("bsrv"), lab.namespace("bcli")
        s_if, c_if = lab.veth(srv, cli)
        srv.addr(s_if, f"{SERVER_IP}/{PREFIX}")
        cli.addr(c_if, f"{CLIENT_IP}/{PREFIX}")
        if mtu != 1500:
            srv.ip("link", "set", s_if, "mtu", str(mtu))
            cli.ip("link", "set", c_if, "mtu", str(mtu))
        yield Bench(lab, srv, cli, s_if, c_if, tmp)


def smee_argv(hardware: Path, *args: str) -> list[str]:
    """``twistd smee`` in the foreground with the file backend, logging only errors."""
    return [str(TWISTD), "-n", "--pidfile=", "--logger=smee.logs.observer", "smee",
            "--log-level=error", "--backend-file-enabled=true", f"--backend-file-path={hardware}",
            *args]


def smee_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def wait_port(ns: Netns, port: int, proto: str = "udp", timeout: float = 30.0) -> None:
    """Bounded wait until something in ``ns`` listens on ``port``."""
    flag = "-uln" if proto == "udp" else "-tln"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ns.run("ss", "-H", flag, timeout=5).stdout
        if any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if len(line.split()) > 3):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {proto} {port} in {ns.name} after {timeout} s")


# --- the runner's contract ----------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What ``benchmarks/run`` hands each benchmark module."""

    runs: int
    tmp: Path
    quick: bool
    deadline: float  # time.monotonic() by which the module must have returned

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Benchmark(Protocol):
    """A module under benchmarks/ with ``run(ctx) -> list[Section]``."""

    def run(self, ctx: Context) -> list[Section]: ...
