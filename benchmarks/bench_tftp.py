"""TFTP: smee against tftpd-hpa, atftpd and dnsmasq serving the same ~1 MiB iPXE binary.

What is measured (issue 9), each server alone in the ``srv`` namespace pinned to
CPU 0, every client in ``cli`` pinned to CPU 1, one veth (MTU 1500, so blksize
1468 is the largest that fits one frame):

1. **Lockstep, one client.** ``hyperfine -N`` runs ``atftp --option "blksize
   1468" -g -r snp.efi`` N times (after warm-up runs); the value of one run of
   the row is hyperfine's median wall time per transfer (process start-up of
   atftp included, the same for every server). smee vs tftpd-hpa and atftpd.
2. **Windowsize 16 (RFC 7440).** The same with ``--option "windowsize 16"``;
   smee vs atftpd (tftpd-hpa and dnsmasq do not implement windowsize). Before
   timing, one traced atftp transfer checks that the server's OACK really
   carries ``windowsize: 16`` and ``blksize: 1468``, otherwise no number.
3. **Many clients at once.** ``benchmarks/tftp/fanout.py`` (one process in
   ``cli``) starts N ``curl --tftp-blksize 1468`` downloads together and waits,
   bounded, for all. Reported: the server's CPU seconds per MiB delivered
   (byte-exact files only), wall time until the last client is done, and the
   number of clients that did not get a byte-exact file. Server CPU is the
   ``cpuacct.usage`` of a cgroup (v1) made for each server start, before and
   after, for every server alike: tftpd-hpa forks one child per transfer and
   ignores SIGCHLD, so the kernel reaps the children itself and their CPU never
   reaches the parent's cutime/cstime in ``/proc``; the cgroup counts them, also
   after they exited. The "after" reading waits (bounded) until the server has no
   live child. Without cpuacct the fallback is ``/proc/<pid>/stat``
   utime+stime+cutime+cstime, and tftpd-hpa's CPU row is then left empty.

Every downloaded file is checked against the sha256 of the original: at least
once per server in rows 1 and 2 (the last hyperfine download and the traced
one), every client's file in row 3. A failure is counted and reported with the
server's log, never dropped. Servers run with their per-request logging off.
Each run starts every server afresh, in a rotating order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness import Bench, Context, Process, Row, Section, Series, bench_lab
from netns import only_components, which

HERE = Path(__file__).resolve().parent
FILE = "snp.efi"
SOURCE = harness.REPO / "ipxe" / "bin" / FILE
BLKSIZE = 1468
WINDOW = 16
PORT = 69
#: the hardware record that lets the client's address netboot (smee gates TFTP by it in reservation mode)
HARDWARE = f"""\
02:00:00:00:01:00:
  ipAddress: {harness.CLIENT_IP}
  subnetMask: 255.255.255.0
  netboot:
    allowPxe: true
"""
#: bound on one concurrent round (every curl has --max-time this; fanout adds 10 s)
FANOUT_TIMEOUT = 120.0
#: bound on waiting for a forking server's children to be reaped
REAP_TIMEOUT = 10.0

SMEE, HPA, ATFTPD, DNSMASQ = "smee", "tftpd-hpa", "atftpd", "dnsmasq"
LOCKSTEP, WINDOWED = "lockstep", "window16"


# --- servers ------------------------------------------------------------------


def atftpd_path() -> Path:
    return harness.PEERS / "usr" / "sbin" / "atftpd"


def server_argv(name: str, root: Path, hardware: Path, fanout_max: int) -> tuple[list[str], dict[str, str] | None]:
    """How each server is started: foreground, bound to the server address, quiet."""
    ip = harness.SERVER_IP
    if name == SMEE:
        argv = harness.smee_argv(hardware, f"--public-ip={ip}", f"--tftp-addr={ip}",
                                 f"--tftp-block-size={BLKSIZE}", f"--ipxe-dir={SOURCE.parent}",
                                 *only_components("tftp"))
        return argv, harness.smee_env()
    if name == HPA:
        return [which("in.tftpd") or "/usr/sbin/in.tftpd", "-L", "-s", str(root), "-a", f"{ip}:{PORT}"], None
    if name == ATFTPD:
        return [str(atftpd_path()), "--daemon", "--no-fork", "--logfile", "/dev/null", "--verbose=1",
                "--bind-address", ip, "--port", str(PORT), str(root)], None
    if name == DNSMASQ:
        # --tftp-max: dnsmasq's default of 50 would refuse the 200-client round; smee's default is 1024.
        return [which("dnsmasq") or "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                "--no-resolv", "--no-hosts", "--pid-file=", "--user=root", "--log-facility=-", "--quiet-tftp",
                f"--listen-address={ip}", "--bind-interfaces", "--enable-tftp", f"--tftp-root={root}",
                f"--tftp-max={max(1024, fanout_max)}"], None
    raise ValueError(name)


def start(bench: Bench, name: str, run: int, root: Path, hardware: Path, fanout_max: int) -> Process:
    """Start one server and wait (bounded) until it listens on UDP 69."""
    argv, env = server_argv(name, root, hardware, fanout_max)
    proc = bench.server(f"{name}-{run}", argv, env=env, cwd=bench.tmp)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{name} exited ({proc.returncode}) at start-up\n{proc.describe(40)}")
        out = bench.srv.run("ss", "-Hunlp", f"sport = :{PORT}", check=False, timeout=5).stdout
        if f"pid={proc.pid}," in out:
            return proc
        time.sleep(0.05)
    raise RuntimeError(f"{name} not listening on udp/{PORT} after 30 s\n{proc.describe(40)}")


def stop(proc: Process) -> None:
    proc.stop(timeout=15)


# --- measuring ------------------------------------------------------------------


#: cgroup v1 CPU accounting hierarchy; a group per server start counts the server and every
#: child it forks, also children that exited (tftpd-hpa ignores SIGCHLD, so the kernel reaps
#: its per-transfer children itself and their CPU never reaches its cutime/cstime).
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class CpuMeter:
    """CPU seconds of one server and all its descendants: a cpuacct cgroup when possible,
    else ``/proc/<pid>/stat`` utime+stime+cutime+cstime (which misses auto-reaped children)."""

    def __init__(self, proc: Process, name: str) -> None:
        self.proc = proc
        self.group: Path | None = CPUACCT / f"smee-bench-tftp-{proc.pid}-{name}"
        self.why_not = ""
        try:
            self.group.mkdir()
            (self.group / "cgroup.procs").write_text(f"{proc.pid}\n")
        except OSError as e:
            self.why_not = f"no cpuacct cgroup ({e})"
            self.remove()
            self.group = None

    @property
    def method(self) -> str:
        return "cgroup" if self.group is not None else "proc"

    def seconds(self) -> float:
        if self.group is not None:
            return int((self.group / "cpuacct.usage").read_text()) / 1e9
        return cpu_with_children(self.proc.pid)

    def remove(self) -> None:
        """rmdir the group (bounded retries: a stopped server's tasks may take a moment to go)."""
        if self.group is None:
            return
        for _ in range(50):
            try:
                self.group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def cpu_with_children(pid: int) -> float:
    """utime+stime+cutime+cstime of ``pid`` in seconds (children count once waited for)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / harness.CLK_TCK


def live_children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def wait_reaped(pid: int, timeout: float = REAP_TIMEOUT) -> bool:
    """Bounded wait until ``pid`` has no child (exited children of tftpd-hpa are reaped)."""
    deadline = time.monotonic() + timeout
    while live_children(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def atftp_cmd(out: Path, window: bool, trace: bool = False) -> list[str]:
    argv = ["atftp"] + (["--trace"] if trace else []) + ["--option", f"blksize {BLKSIZE}"]
    if window:
        argv += ["--option", f"windowsize {WINDOW}"]
    return argv + ["-g", "-r", FILE, "-l", str(out), harness.SERVER_IP]


def check_negotiation(bench: Bench, out: Path, window: bool, want: str) -> str:
    """One traced atftp transfer: '' if the OACK grants what was asked and the file is
    byte-exact, else why not."""
    out.unlink(missing_ok=True)
    done = bench.client(atftp_cmd(out, window, trace=True), timeout=60, check=False)
    text = done.stdout + done.stderr
    oack = next((line for line in text.splitlines() if line.startswith("received OACK")), "")
    problems = []
    if done.returncode != 0:
        problems.append(f"atftp exited {done.returncode}: {text[-500:]}")
    if f"blksize: {BLKSIZE}" not in oack:
        problems.append(f"blksize {BLKSIZE} not granted (OACK line: {oack or 'none'})")
    if window and f"windowsize: {WINDOW}" not in oack:
        problems.append(f"windowsize {WINDOW} not granted (OACK line: {oack or 'none'})")
    if sha256(out) != want:
        problems.append("downloaded file is not byte-exact")
    return "; ".join(problems)


def hyperfine_ms(bench: Bench, out: Path, window: bool, runs: int, warmup: int, want: str,
                 timeout: float) -> float:
    """hyperfine's median ms per transfer; raises with hyperfine's output on any failure."""
    js = bench.tmp / "hyperfine.json"
    js.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    cmd = " ".join(f"'{a}'" if " " in a else a for a in atftp_cmd(out, window))
    done = bench.client(["hyperfine", "-N", "--style", "none", "--runs", str(runs), "--warmup", str(warmup),
                         "--export-json", str(js), cmd], timeout=timeout, check=False)
    if done.returncode != 0 or not js.exists():
        raise RuntimeError(f"hyperfine exited {done.returncode}: {(done.stdout + done.stderr)[-800:]}")
    if sha256(out) != want:
        raise RuntimeError("the last hyperfine download is not byte-exact")
    result = json.loads(js.read_text())["results"][0]
    return float(result["median"]) * 1000


@dataclass
class Fanout:
    """One round of N clients at once."""

    cpu: float
    wall: float
    ok: int
    failures: list[str]
    #: each finished client's own time, s
    durations: list[float]
    #: server's UDP datagrams sent beyond the minimum (OACK + every DATA block once, per client)
    extra_sent: int
    #: UDP error counters that moved, both namespaces ("srv InErrors" -> n)
    udp_errors: dict[str, int]
    #: share of the server CPU's time over the round spent on anything but this server
    others_on_server_cpu: float


#: the UDP counters of /proc/net/snmp worth reporting when they move
UDP_ERRORS = ("InErrors", "RcvbufErrors", "SndbufErrors", "NoPorts", "InCsumErrors")


def cpu_busy(cpu: int) -> tuple[float, float]:
    """(busy, total) seconds of one CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(x) for x in line.split()[1:]]
                return (sum(ticks) - ticks[3] - ticks[4]) / harness.CLK_TCK, sum(ticks) / harness.CLK_TCK
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def udp_counters(ns: harness.Netns) -> dict[str, int]:
    """The Udp: line of the namespace's /proc/net/snmp."""
    lines = ns.run("cat", "/proc/net/snmp", timeout=5).stdout.splitlines()
    head, values = (line.split()[1:] for line in lines if line.startswith("Udp:"))
    return dict(zip(head, map(int, values)))


def fanout(bench: Bench, proc: Process, meter: CpuMeter, clients: int, want: str, timeout: float) -> Fanout:
    """N curl clients started together; server CPU (children included) before/after."""
    outdir = bench.tmp / "fanout"
    shutil.rmtree(outdir, ignore_errors=True)
    srv0, cli0 = udp_counters(bench.srv), udp_counters(bench.cli)
    busy0 = cpu_busy(harness.SERVER_CPU)
    cpu0 = meter.seconds()
    done = bench.client([sys.executable, str(HERE / "tftp" / "fanout.py"), str(clients), str(outdir),
                         str(int(timeout)), f"tftp://{harness.SERVER_IP}/{FILE}", "--tftp-blksize", str(BLKSIZE)],
                        timeout=timeout + 30, check=False)
    reaped = wait_reaped(proc.pid)
    cpu1 = meter.seconds()
    busy1 = cpu_busy(harness.SERVER_CPU)
    srv1, cli1 = udp_counters(bench.srv), udp_counters(bench.cli)
    if done.returncode != 0:
        raise RuntimeError(f"fanout exited {done.returncode}: {done.stderr[-800:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    failures: list[str] = []
    ok = 0
    for i, (code, err) in enumerate(zip(report["codes"], report["errors"])):
        if code == 0 and sha256(outdir / str(i)) == want:
            ok += 1
        else:
            failures.append(f"client {i}: curl exit {code}, {'file differs' if code == 0 else err or 'no message'}")
    if not reaped:
        failures.append(f"server still had children {live_children(proc.pid)} after {REAP_TIMEOUT:g} s "
                        "(their CPU is not counted)")
    blocks = SOURCE.stat().st_size // BLKSIZE + 1
    extra = srv1["OutDatagrams"] - srv0["OutDatagrams"] - ok * (blocks + 1)  # failed clients' datagrams count too
    moved = {f"{side} {k}": after[k] - before[k] for side, before, after in (("srv", srv0, srv1), ("cli", cli0, cli1))
             for k in UDP_ERRORS if after.get(k, 0) != before.get(k, 0)}
    busy, total = busy1[0] - busy0[0], busy1[1] - busy0[1]
    others = max(0.0, busy - (cpu1 - cpu0)) / total if total > 0 else 0.0
    return Fanout(cpu1 - cpu0, float(report["wall"]), ok, failures, list(report["durations"]), extra, moved,
                  others)


# --- the plan -------------------------------------------------------------------

#: which measurements each server takes part in
PLAN: dict[str, tuple[str, ...]] = {
    SMEE: (LOCKSTEP, WINDOWED, "fanout"),
    HPA: (LOCKSTEP, "fanout"),
    ATFTPD: (LOCKSTEP, WINDOWED),
    DNSMASQ: ("fanout",),
}


@dataclass
class Results:
    """Per (metric, server): one value per run; notes collected on the way."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verified: dict[tuple[str, str], bool] = field(default_factory=dict)
    rounds: dict[tuple[int, str], list[Fanout]] = field(default_factory=dict)

    def add(self, metric: str, server: str, value: float) -> None:
        self.values.setdefault((metric, server), []).append(value)

    def series(self, metric: str, server: str) -> Series:
        return Series(tuple(self.values.get((metric, server), [])))


@dataclass(frozen=True)
class Sizes:
    hyper_runs: int
    warmup: int
    clients: tuple[int, ...]


def sizes(ctx: Context) -> Sizes:
    return Sizes(5, 1, (10, 20)) if ctx.quick else Sizes(20, 3, (50, 200))


def measure_server(bench: Bench, name: str, run: int, ctx: Context, sz: Sizes, root: Path, hardware: Path,
                   want: str, res: Results) -> None:
    """Start ``name``, take every measurement of its plan, stop it; failures become notes."""
    proc = start(bench, name, run, root, hardware, max(sz.clients))
    meter = CpuMeter(proc, name)
    # safety net for an aborted run (normally removed below): stop first, an occupied group stays
    bench.lab.defer(f"remove cgroup of {name}", lambda: (proc.stop(), meter.remove()))
    if meter.why_not:
        res.notes.append(f"run {run + 1}: {name}: {meter.why_not}; CPU from /proc/<pid>/stat instead")
    out = bench.tmp / f"download-{name}"
    try:
        for what in PLAN[name]:
            if ctx.left() < 20:
                res.notes.append(f"run {run + 1}: {name} {what} skipped, out of time")
                continue
            try:
                measure_one(bench, proc, meter, name, what, run, ctx, sz, out, want, res)
            except Exception as e:  # noqa: BLE001 (reported in the notes with the server's log)
                res.notes.append(f"run {run + 1}: {name} {what} FAILED: {e}; server log tail: "
                                 f"{proc.text()[-1500:] or '(empty)'}")
    finally:
        stop(proc)
        meter.remove()


def measure_one(bench: Bench, proc: Process, meter: CpuMeter, name: str, what: str, run: int, ctx: Context, sz: Sizes,
                out: Path, want: str, res: Results) -> None:
    if what in (LOCKSTEP, WINDOWED):
        window = what == WINDOWED
        if not res.verified.get((name, what)):
            problem = check_negotiation(bench, out, window, want)
            if problem:
                raise RuntimeError(f"negotiation/integrity check: {problem}")
            res.verified[(name, what)] = True
        res.add(what, name, hyperfine_ms(bench, out, window, sz.hyper_runs, sz.warmup, want,
                                         timeout=min(300.0, max(30.0, ctx.left() - 10))))
        return
    for n in sz.clients:
        if ctx.left() < 45:  # a round cut short by the budget would look like client failures
            res.notes.append(f"run {run + 1}: {name} with {n} clients skipped, out of time")
            continue
        timeout = min(FANOUT_TIMEOUT, ctx.left() - 20)
        got = fanout(bench, proc, meter, n, want, timeout)
        mib = got.ok * SOURCE.stat().st_size / 2**20
        if name == HPA and meter.method != "cgroup":
            res.notes.append(f"run {run + 1}: tftpd-hpa CPU not measured with {n} clients: without a cgroup "
                             "its per-transfer children (auto-reaped, SIGCHLD ignored) are invisible")
        elif mib:
            res.add(f"cpu{n}", name, got.cpu / mib * 1000)
        res.add(f"wall{n}", name, got.wall)
        res.add(f"fail{n}", name, float(len(got.failures)))
        res.rounds.setdefault((n, name), []).append(got)
        if got.failures:
            shown = "; ".join(got.failures[:5]) + (f"; … {len(got.failures) - 5} more" if len(got.failures) > 5 else "")
            res.notes.append(f"run {run + 1}: {name} with {n} clients: {len(got.failures)} failed — {shown}; "
                             f"server log tail: {proc.text()[-800:] or '(empty)'}")


# --- rows -----------------------------------------------------------------------


def rows(res: Results, sz: Sizes) -> list[Row]:
    hf = f"atftp, hyperfine {sz.hyper_runs} runs"
    out: list[Row] = []

    def row(what: str, tool: str, unit: str, metric: str, peer: str, target: str = "", digits: int = 1) -> None:
        theirs = res.series(metric, peer)
        out.append(Row(what, tool, unit, res.series(metric, SMEE), peer, theirs if theirs.values else None,
                       higher_is_better=False, target=target, digits=digits))

    lock = f"~1 MiB ({FILE}), blksize {BLKSIZE}, 1 client, lockstep"
    row(lock, hf, "ms per transfer", LOCKSTEP, HPA, "<= 1.0")
    row(lock, hf, "ms per transfer", LOCKSTEP, ATFTPD)
    row(f"~1 MiB, blksize {BLKSIZE}, windowsize {WINDOW}, 1 client", hf, "ms per transfer", WINDOWED, ATFTPD,
        "<= 1.0")
    for n in sz.clients:
        tool = f"{n} × curl at once"
        for peer, target in ((HPA, "<= 1.0"), (DNSMASQ, "")):
            row(f"{n} concurrent clients: server CPU per MiB delivered", tool, "CPU ms/MiB", f"cpu{n}", peer, target)
        for peer in (HPA, DNSMASQ):
            row(f"{n} concurrent clients: wall time until all done", tool, "s", f"wall{n}", peer, digits=2)
        for peer in (HPA, DNSMASQ):
            row(f"{n} concurrent clients: clients without a byte-exact file", tool, "count", f"fail{n}", peer,
                digits=0)
    return out


def round_notes(res: Results) -> list[str]:
    """Per server and client count, over all runs: how the clients' own times spread, whether the
    server had to retransmit, and whether the kernel dropped or refused datagrams."""
    out = []
    for (n, name), rounds in sorted(res.rounds.items()):
        durations = sorted(d for r in rounds for d in r.durations)
        spread = (f"per-client time median {statistics.median(durations):.2f} s, max {durations[-1]:.2f} s"
                  if durations else "no client finished")
        extra = [r.extra_sent for r in rounds]
        errors: dict[str, int] = {}
        for r in rounds:
            for k, v in r.udp_errors.items():
                errors[k] = errors.get(k, 0) + v
        udp = ", ".join(f"{k} +{v}" for k, v in sorted(errors.items())) or "none"
        share = ", ".join(f"{r.cpu / r.wall:.0%}" for r in rounds if r.wall > 0)
        others = ", ".join(f"{r.others_on_server_cpu:.0%}" for r in rounds)
        out.append(f"{n} clients, {name}: {spread}; server busy {share} of the wall time, CPU "
                   f"{harness.SERVER_CPU} time not charged to it (other processes, softirq) {others} (per run); datagrams the server sent beyond OACK + one per block of "
                   f"each complete transfer (retransmits) per run: {extra}; UDP error counters moved: {udp}")
    return out


def versions() -> str:
    atftpd = harness.tool_version([str(atftpd_path()), "-V"])
    return (f"peers: tftpd-hpa {harness.deb_version('tftpd-hpa')}, {atftpd} (unpacked in benchmarks/.peers), "
            f"dnsmasq {harness.deb_version('dnsmasq-base')}; clients: atftp {harness.deb_version('atftp')}, "
            f"curl {harness.deb_version('curl')}, {harness.tool_version(['hyperfine', '--version'])}")


def method_notes(sz: Sizes) -> list[str]:
    return [
        (f"File: ipxe/bin/{FILE}, {SOURCE.stat().st_size:,} bytes, served by smee from memory "
         "(--ipxe-dir) and copied into each peer's root; every download is checked with sha256."),
        ("smee: twistd smee with only the TFTP component, reservation mode (client 192.0.2.100 has a "
         f"hardware record allowing netboot), --tftp-block-size={BLKSIZE}, one port per transfer, log level "
         "error. tftpd-hpa: in.tftpd -L -s ROOT -a 192.0.2.1:69 (forks a child per transfer). atftpd: "
         "--daemon --no-fork --logfile /dev/null --verbose=1 (a thread per transfer). dnsmasq: "
         "--keep-in-foreground --port=0 --enable-tftp --quiet-tftp, no DHCP, --tftp-max raised to 1024 "
         "(smee's --tftp-max-sessions default) because its default of 50 refuses larger rounds."),
        (f"Rows 1–2: each run's value is hyperfine's median of {sz.hyper_runs} timed transfers after "
         f"{sz.warmup} warm-up(s), atftp process start-up included (same for every server). The windowsize row "
         f"counts only if a traced transfer showed the server's OACK granting windowsize {WINDOW} and blksize "
         f"{BLKSIZE} (atftpd 0.8 implements RFC 7440; tftpd-hpa and dnsmasq do not, so they have no such row)."),
        ("Concurrent rows: curl --tftp-blksize 1468 (lockstep), all started by one process in the client "
         "namespace; wall time is from the first start to the last exit (curl start-up of all clients on CPU 1 "
         "included, same for every server). Server CPU = Δ cpuacct.usage of a cgroup (v1 cpuacct) made for "
         "each server start, the server moved into it once listening: it counts the server and every child it "
         "forks, also children that have exited — tftpd-hpa forks a child per transfer and ignores SIGCHLD, so "
         "the kernel reaps them and their CPU never shows in its /proc cutime/cstime. The same method for every "
         "server; the reading waits (bounded) until the server has no live child. "
         "CPU per MiB divides by the MiB of byte-exact files only; failed clients are counted in their own row."),
        ("Wall-time rows need an idle machine: when other work shares the server CPU, the kernel's fair "
         "scheduler gives each runnable task a share, so tftpd-hpa's many per-transfer processes get far more of "
         "CPU 0 than a single-process server (smee, dnsmasq). The per-round notes below give the other work seen "
         "on the server CPU during each round; if it is not near 0%, read the wall-time ratios with care."),
    ]


def run(ctx: Context) -> list[Section]:
    sec = Section(title="TFTP: smee vs tftpd-hpa, atftpd, dnsmasq")
    missing = [t for t in ("atftp", "curl", "hyperfine", "in.tftpd", "dnsmasq") if which(t) is None]
    if not atftpd_path().exists():
        missing.append(str(atftpd_path()))
    if missing or not SOURCE.exists():
        sec.error = f"missing: {', '.join(missing) or SOURCE} (run benchmarks/install-peers, make bindata)"
        return [sec]
    sz = sizes(ctx)
    want = sha256(SOURCE)
    assert want is not None
    res = Results()
    sec.notes.append(harness.idle_check())
    ctx.tmp.chmod(0o755)  # the peers drop privileges (nobody) and must reach their root
    root = ctx.tmp / "root"
    root.mkdir(mode=0o755)
    shutil.copyfile(SOURCE, root / FILE)
    (root / FILE).chmod(0o644)
    hardware = ctx.tmp / "hardware.yaml"
    hardware.write_text(HARDWARE)
    order = list(PLAN)
    with bench_lab(ctx.tmp / "lab") as bench:
        for r in range(ctx.runs):
            turn = order[r % len(order):] + order[: r % len(order)]
            for name in turn:
                if ctx.left() < 30:
                    res.notes.append(f"run {r + 1}: {name} not measured, out of time")
                    continue
                try:
                    measure_server(bench, name, r, ctx, sz, root, hardware, want, res)
                except Exception as e:  # noqa: BLE001 (start-up failure; noted, other servers still run)
                    res.notes.append(f"run {r + 1}: {name} FAILED: {e}")
    sec.rows = rows(res, sz)
    # one line per note: logs and tool output keep their line breaks as " ⏎ "
    sec.notes += [versions(), *method_notes(sz), *round_notes(res),
                  *(" ⏎ ".join(n.strip().splitlines()) for n in res.notes)]
    return [sec]
