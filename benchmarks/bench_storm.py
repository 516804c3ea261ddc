"""Boot storm: N machines netboot at once through smee, and through dnsmasq + nginx.

Issue 9's row: 500 simulated machines each do DHCP DORA as a PXE ROM, TFTP
``undionly.kpxe``, DORA again as iPXE and an HTTP GET of their script, as fast as
they can; target: no machine lost and total time at most 1.0× the peer's.

The simulator (``storm.py``, one process on CPU 1 in the client namespace) is the
DHCP relay agent of every machine: giaddr is .254 of the machine's /24 (198.51.100.0/24
and 203.0.113.0/24, routed from the server namespace through the veth), and every
machine talks TFTP and HTTP from its own reserved address. Servers (CPU 0):

* smee: one ``twistd smee`` with DHCP, TFTP and HTTP (``--tftp-block-size=1468``), file
  backend with one record per machine (reserved address, allowPxe true);
* peer: dnsmasq (DHCP with the same reservations, ``dhcp-userclass=set:ipxe,iPXE``,
  ``undionly.kpxe`` for PXE ROMs and ``http://192.0.2.1:8080/auto.ipxe`` for iPXE; its own
  TFTP server with ``--tftp-max=1024``, the same transfer limit as smee's default) and nginx
  (one worker, access log off) serving the script smee rendered, as a static file.

Every run starts the server(s) fresh, so dnsmasq's in-memory leases do not carry over.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import Bench, Row, Section, Series

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import storm

N, QUICK_N = 500, 50
#: the storm's own bound (seconds); a machine unfinished by then is lost
BOUND = 120.0
BOOT_FILE = "undionly.kpxe"
UNDIONLY = harness.REPO / "ipxe" / "bin" / BOOT_FILE
HTTP_PORT = 8080
PEER_SCRIPT_URL = f"http://{harness.SERVER_IP}:{HTTP_PORT}/auto.ipxe"
OSIE_URL = "http://192.0.2.1:8080/hook"
TINK_SERVER = "192.0.2.1:42113"
SMEE, PEER = "smee", "dnsmasq + nginx"
#: when the smee run gave no script to copy (never expected), nginx serves this
FALLBACK_SCRIPT = "#!ipxe\n\necho Loading the OSIE\nset arch x86_64\nboot\n"


# --- inputs -------------------------------------------------------------------------


def _machines(n: int) -> list[tuple[str, str]]:
    """(MAC, reserved IP) of every simulated machine, as storm.py numbers them."""
    return [(storm.machine_mac(i), storm.machine_ip(i)) for i in range(n)]


def _hardware_yaml(machines: list[tuple[str, str]]) -> str:
    """smee file-backend records (examples/hardware.yaml format)."""
    out = []
    for n, (mac, ip) in enumerate(machines, start=1):
        out.append(
            f"{mac}:\n  ipAddress: {ip}\n  subnetMask: 255.255.255.0\n  defaultGateway: {storm.relay_ip(ip)}\n"
            f"  hostname: storm-{n:04d}\n  arch: x86_64\n  netboot:\n    allowPxe: true\n    facility: bench\n"
        )
    return "".join(out)


def _dnsmasq_hosts(machines: list[tuple[str, str]]) -> str:
    return "".join(f"{mac},{ip},storm-{n:04d}\n" for n, (mac, ip) in enumerate(machines, start=1))


def _nginx_conf(tmp: Path, root: Path) -> Path:
    temp = tmp / "nginx-temp"
    temp.mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
user root root;
error_log {tmp / 'nginx-error.log'} error;
pid {tmp / 'nginx.pid'};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 75s;
    types {{ }}
    default_type "text/plain; charset=utf-8";
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen {harness.SERVER_IP}:{HTTP_PORT} backlog=4096;
        root {root};
        location / {{ }}
    }}
}}
""")
    return conf


def _add_addresses(bench: Bench, n: int) -> None:
    """Machine addresses and relay addresses (.254) on the client side, both nets routed from srv."""
    added = set(bench.add_client_hosts(min(n, 500)))
    machine_ips = [storm.machine_ip(i) for i in range(n)]
    wanted = machine_ips + sorted({storm.relay_ip(ip) for ip in machine_ips})
    extra = [ip for ip in wanted if ip not in added]
    if extra:
        batch = "".join(f"addr add {ip}/32 dev {bench.cli_if}\n" for ip in extra)
        bench.lab.run(["ip", "-n", bench.cli.name, "-batch", "-"], input=batch, timeout=60)
    routed = set(harness.EXTRA_NETS[: (min(n, 500) + 253) // 254])
    for net in {ip.rsplit(".", 1)[0] for ip in wanted} - routed:
        bench.srv.route(f"{net}.0/24", via=harness.CLIENT_IP)


# --- servers ------------------------------------------------------------------------


@dataclass
class Servers:
    """The processes serving one run; CPU time is summed over them and their children."""

    procs: list[Any]

    def pids(self) -> list[int]:
        out = []
        for proc in self.procs:
            out.append(proc.pid)
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                out += [int(p) for p in (task / "children").read_text().split()]
        return out

    def cpu(self) -> float:
        return sum(harness.cpu_seconds(pid) for pid in self.pids())

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop(timeout=10)


def _wait_ready(bench: Bench, servers: Servers, url: str) -> None:
    """Bounded wait until UDP 67, UDP 69 and TCP 8080 listen and the script URL answers 200."""
    try:
        harness.wait_port(bench.srv, 67, "udp")
        harness.wait_port(bench.srv, 69, "udp")
        harness.wait_port(bench.srv, HTTP_PORT, "tcp")
    except TimeoutError as e:
        raise RuntimeError(f"{e}\n" + "\n".join(p.describe() for p in servers.procs)) from None
    deadline = time.monotonic() + 30
    code = ""
    while time.monotonic() < deadline:
        code = bench.cli.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url,
                             timeout=10, check=False).stdout.strip()
        if code == "200":
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} answers {code or 'nothing'}\n" + "\n".join(p.describe() for p in servers.procs))


def _start_smee(bench: Bench, hardware: Path, run: int, first_mac: str) -> Servers:
    from netns import only_components

    argv = harness.smee_argv(hardware, f"--public-ip={harness.SERVER_IP}", "--tftp-block-size=1468",
                             f"--http-port={HTTP_PORT}", f"--osie-url={OSIE_URL}", f"--tink-server={TINK_SERVER}",
                             *only_components("dhcp", "tftp", "http"))
    cwd = bench.tmp / f"smee-{run}.cwd"
    cwd.mkdir(exist_ok=True)
    servers = Servers([bench.server(f"smee-{run}", argv, env=harness.smee_env(), cwd=cwd)])
    _wait_ready(bench, servers, f"http://{harness.SERVER_IP}:{HTTP_PORT}/{first_mac}/auto.ipxe")
    return servers


def _start_peer(bench: Bench, files: dict[str, Path], run: int) -> Servers:
    dnsmasq = harness.which("dnsmasq") or "/usr/sbin/dnsmasq"
    argv = [dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts",
            "--pid-file=", "--leasefile-ro", "--user=root", f"--interface={bench.srv_if}", "--bind-interfaces",
            "--no-ping", "--quiet-dhcp", "--quiet-tftp", "--log-facility=-",
            f"--dhcp-hostsfile={files['hosts']}", "--dhcp-userclass=set:ipxe,iPXE",
            f"--dhcp-boot=tag:ipxe,{PEER_SCRIPT_URL}", f"--dhcp-boot=tag:!ipxe,{BOOT_FILE}",
            "--enable-tftp", f"--tftp-root={files['tftp']}", "--tftp-max=1024"]
    for tag, net in (("n1", "198.51.100"), ("n2", "203.0.113")):
        argv += [f"--dhcp-range=set:{tag},{net}.0,static,255.255.255.0",
                 f"--dhcp-option=tag:{tag},option:router,{net}.254"]
    procs = [bench.server(f"dnsmasq-{run}", argv)]
    nginx = harness.which("nginx") or "/usr/sbin/nginx"
    procs.append(bench.server(f"nginx-{run}", [nginx, "-c", str(files["nginx"]), "-p", str(bench.tmp),
                                                "-e", str(bench.tmp / "nginx-error.log")]))
    servers = Servers(procs)
    _wait_ready(bench, servers, PEER_SCRIPT_URL)
    return servers


#: phases of one machine's boot, as (first stage, stage after it) in storm.py's stamps
SPANS = {"PXE DORA": ("pxe-discover", "tftp"), "TFTP": ("tftp", "ipxe-discover"),
         "iPXE DORA": ("ipxe-discover", "http"), "HTTP": ("http", "done")}


# --- one storm ------------------------------------------------------------------------


@dataclass
class Outcome:
    """One storm against one server: the simulator's report plus the server's CPU time."""

    server: str
    report: dict[str, Any]
    server_cpu: float
    log_tail: str = ""
    #: kernel drop counters that grew during the storm (see _counters)
    drops: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return int(self.report["lost"])

    @property
    def total(self) -> float:
        """Seconds until every machine was done or had given up."""
        return float(self.report["elapsed"])

    def done_times(self) -> list[float]:
        return sorted(m["done"] for m in self.report["machines"] if m["done"] is not None)

    def percentile(self, q: float) -> float | None:
        times = self.done_times()
        if not times:
            return None
        return times[min(len(times) - 1, round(q * (len(times) - 1)))]

    def stage_medians(self) -> dict[str, float]:
        """Median seconds each machine spent per phase (PXE DHCP, TFTP, iPXE DHCP, HTTP)."""
        out = {}
        for name, (a, b) in SPANS.items():
            vals = [m["stamps"][b] - m["stamps"][a] for m in self.report["machines"]
                    if a in m["stamps"] and b in m["stamps"]]
            if vals:
                out[name] = statistics.median(vals)
        return out

    def slowest(self) -> str:
        """Where the last machine to finish spent its time."""
        done = [m for m in self.report["machines"] if m["done"] is not None]
        if not done:
            return "no machine finished"
        m = max(done, key=lambda m: m["done"])
        st = m["stamps"]
        spans = ", ".join(f"{name} {st[b] - st[a]:.2f} s" for name, (a, b) in SPANS.items() if a in st and b in st)
        return (f"slowest machine ({m['ip']}, done at {m['done']:.2f} s): {spans}; "
                f"{m['dhcp_retx']} DHCP / {m['tftp_retx']} TFTP retransmits")

    def losses(self) -> str:
        """Lost machines grouped by last stage and reason."""
        groups = Counter((m["stage"], m["why"]) for m in self.report["machines"] if m["done"] is None)
        return "; ".join(f"{count}× in {stage}: {why}" for (stage, why), count in groups.most_common(6))

    def retransmits(self) -> str:
        ms = self.report["machines"]
        return (f"DHCP retransmits {sum(m['dhcp_retx'] for m in ms)}, TFTP retransmits "
                f"{sum(m['tftp_retx'] for m in ms)}, HTTP retries {sum(max(0, m['http_tries'] - 1) for m in ms)}")


#: kernel drop counters read from /proc/net/{snmp,netstat} in a namespace: (table, field)
COUNTERS = (("Udp", "RcvbufErrors"), ("Udp", "InErrors"), ("TcpExt", "ListenOverflows"), ("TcpExt", "ListenDrops"))


def _counters(ns: harness.Netns) -> dict[str, int]:
    """The namespace's UDP receive-buffer and TCP listen-queue drop counters."""
    text = ns.run("cat", "/proc/net/snmp", "/proc/net/netstat", timeout=10).stdout.splitlines()
    table: dict[str, int] = {}
    for names, values in zip(text[::2], text[1::2]):
        prefix = names.split(":", 1)[0]
        for k, v in zip(names.split()[1:], values.split()[1:]):
            table[f"{prefix}.{k}"] = int(v)
    return {f"{t}.{f}": table.get(f"{t}.{f}", 0) for t, f in COUNTERS}


def _drops(bench: Bench, before: dict[str, dict[str, int]]) -> dict[str, int]:
    """Counters that grew during the storm, as "srv Udp.RcvbufErrors" -> count."""
    out = {}
    for side, ns in (("srv", bench.srv), ("cli", bench.cli)):
        now = _counters(ns)
        for key, value in now.items():
            if value - before[side][key]:
                out[f"{side} {key}"] = value - before[side][key]
    return out


def _storm(bench: Bench, servers: Servers, name: str, cfg: dict[str, Any], path: Path) -> Outcome:
    cfg_path, out_path = path.with_suffix(".json"), path.with_suffix(".out.json")
    cfg_path.write_text(json.dumps(cfg))
    before = {"srv": _counters(bench.srv), "cli": _counters(bench.cli)}
    cpu0 = servers.cpu()
    bench.client([sys.executable, HERE / "storm.py", cfg_path, out_path], timeout=cfg["bound"] + 60)
    cpu1 = servers.cpu()
    drops = _drops(bench, before)
    report = json.loads(out_path.read_text())
    tail = ""
    if report["lost"] or not servers.alive():
        tail = "\n".join(p.describe(40) for p in servers.procs)
    return Outcome(name, report, cpu1 - cpu0, tail, drops)


# --- results ----------------------------------------------------------------------------


@dataclass
class Results:
    by_server: dict[str, list[Outcome]] = field(default_factory=lambda: {SMEE: [], PEER: []})

    def series(self, server: str, metric: str) -> Series:
        vals = []
        for o in self.by_server[server]:
            v = {"total": o.total, "lost": float(o.lost), "p50": o.percentile(0.5), "p99": o.percentile(0.99),
                 "cpu": o.server_cpu, "sim": float(o.report["cpu"])}[metric]
            if v is not None:
                vals.append(v)
        return Series(tuple(vals))


def _rows(res: Results, n: int) -> list[Row]:
    def row(what: str, unit: str, metric: str, target: str = "", digits: int = 2, note: str = "") -> Row:
        return Row(what, "storm.py", unit, res.series(SMEE, metric), PEER, res.series(PEER, metric),
                   higher_is_better=False, target=target, digits=digits, note=note)

    lost_ours = [o.lost for o in res.by_server[SMEE]]
    lost_theirs = [o.lost for o in res.by_server[PEER]]
    return [
        row(f"boot storm: total time, {n} machines", "s", "total", "<= 1.0",
            note="time until every machine had its script or had given up"),
        row(f"boot storm: machines lost (of {n})", "machines", "lost", digits=0,
            note=f"target 0 lost; smee lost {lost_ours} per run, {PEER} lost {lost_theirs}"),
        row("boot storm: p50 machine completion", "s", "p50"),
        row("boot storm: p99 machine completion", "s", "p99"),
        row("boot storm: server CPU time", "CPU s", "cpu",
            note="user+system from /proc, smee's process vs dnsmasq + nginx master and worker"),
    ]


def _notes(res: Results, n: int, runs_done: int, runs_wanted: int) -> list[str]:
    notes = [
        (f"{n} machines start at once: DISCOVER/REQUEST as a PXE ROM (relayed, giaddr .254 of the machine's "
         f"/24), TFTP {BOOT_FILE} ({UNDIONLY.stat().st_size:,} bytes, blksize 1468 + tsize, lockstep, every "
         "block compared with the file) from the machine's own address, DISCOVER/REQUEST as iPXE (user class "
         "iPXE, option 175), HTTP GET of the script URL from the ACK (200 and `#!ipxe` required). Retries: "
         "DHCP 4 tries (1/2/4/8 s ±25%, RFC 2131 jitter), TFTP 5 (1 s), HTTP 2; a machine out of retries is "
         "lost."),
        (f"peer: dnsmasq {harness.deb_version('dnsmasq-base')} (DHCP + TFTP, --tftp-max=1024; default is 50) "
         f"and nginx {harness.deb_version('nginx-light')} (one worker) serving smee's rendered script as a "
         f"static {PEER_SCRIPT_URL} (dnsmasq hands every machine the same URL; smee's has the MAC in the "
         "path). All servers pinned to CPU 0, started fresh for every run. Logging: smee at error level, "
         "nginx access log off, dnsmasq --quiet-dhcp --quiet-tftp (2.90 still logs one 'sent' line per TFTP "
         "transfer)."),
    ]
    if runs_done < runs_wanted:
        notes.append(f"only {runs_done} of {runs_wanted} runs per server fitted in the time budget")
    for server, outs in res.by_server.items():
        sim = ", ".join(f"{o.report['cpu']:.2f} s CPU during {o.total:.2f} s, busiest 100 ms "
                        f"{o.report['busy_peak']:.0%} busy" for o in outs)
        if outs:
            notes.append(f"simulator itself (CPU 1) during the {server} runs: {sim}")
            if any(o.report["busy_peak"] >= 0.9 for o in outs):
                notes.append(f"the simulator was (nearly) saturated in some 100 ms window of a {server} run: "
                             "there its time may be bounded by the simulator, not the server")
            stages = outs[0].stage_medians()
            notes.append(f"{server}, run 1: median per machine " +
                         ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()) + f"; {outs[0].retransmits()}; kernel drops "
                         + (", ".join(f"{k} {v}" for k, v in outs[0].drops.items()) or "none")
                         + f"; {outs[0].slowest()}")
        for k, o in enumerate(outs, start=1):
            if o.lost:
                notes.append(f"{server} run {k}: {o.lost} of {n} machines lost: {o.losses()}")
            if o.report["unexpected"]:
                notes.append(f"{server} run {k}: unexpected datagrams {o.report['unexpected']}")
    return notes


# --- entry point ---------------------------------------------------------------------------


def _inputs(tmp: Path, machines: list[tuple[str, str]]) -> dict[str, Path]:
    files = {"hardware": tmp / "hardware.yaml", "hosts": tmp / "dnsmasq.hosts", "tftp": tmp / "tftp-root",
             "www": tmp / "www"}
    files["hardware"].write_text(_hardware_yaml(machines))
    files["hosts"].write_text(_dnsmasq_hosts(machines))
    files["tftp"].mkdir(exist_ok=True)
    (files["tftp"] / BOOT_FILE).write_bytes(UNDIONLY.read_bytes())
    files["www"].mkdir(exist_ok=True)
    files["nginx"] = _nginx_conf(tmp, files["www"])
    return files


def _one(bench: Bench, name: str, r: int, files: dict[str, Path], first_mac: str, cfg: dict[str, Any]) -> Outcome:
    """Start the server(s) fresh, run one storm, stop them."""
    servers = _start_smee(bench, files["hardware"], r, first_mac) if name == SMEE else _start_peer(bench, files, r)
    try:
        return _storm(bench, servers, name, cfg, bench.tmp / f"storm-{name.split()[0]}-{r}")
    finally:
        servers.stop()


def run(ctx: harness.Context) -> list[Section]:
    n = QUICK_N if ctx.quick else N
    runs = 1 if ctx.quick else ctx.runs
    title = f"Boot storm ({n} machines: PXE DHCP → TFTP undionly.kpxe → iPXE DHCP → HTTP script)"
    data = UNDIONLY.read_bytes()
    res = Results()
    losses: list[str] = []
    failures: list[str] = []
    done_rounds = 0
    with harness.bench_lab(ctx.tmp / "lab") as bench:
        _add_addresses(bench, n)
        machines = _machines(n)
        files = _inputs(bench.tmp, machines)
        (files["www"] / "auto.ipxe").write_text(FALLBACK_SCRIPT)
        for r in range(runs):
            left_runs = 2 * (runs - r)
            bound = min(BOUND, (ctx.left() - 15 * left_runs) / left_runs)
            if bound < 20 and r > 0:
                break
            cfg = {"n": n, "dhcp_server": harness.SERVER_IP, "file": str(UNDIONLY),
                   "file_sha256": hashlib.sha256(data).hexdigest(), "boot_file": BOOT_FILE,
                   "bound": max(bound, 20.0)}
            for name in (SMEE, PEER):
                try:
                    out = _one(bench, name, r, files, machines[0][0], cfg)
                except Exception as e:  # noqa: BLE001 (reported in the section; the other runs go on)
                    failures.append(f"{name} run {r + 1}: {type(e).__name__}: {e}")
                    continue
                res.by_server[name].append(out)
                if out.log_tail:
                    losses.append(f"{name} run {r + 1} lost {out.lost}; server log tail:\n{out.log_tail[-3000:]}")
                body = out.report.get("sample_body") or ""
                if name == SMEE and body and (files["www"] / "auto.ipxe").read_text() == FALLBACK_SCRIPT:
                    (files["www"] / "auto.ipxe").write_text(body)
            done_rounds += 1
        fallback = (files["www"] / "auto.ipxe").read_text() == FALLBACK_SCRIPT
    sec = Section(title=title, rows=_rows(res, n), notes=_notes(res, n, done_rounds, runs),
                  error="\n\n".join(failures))
    if fallback:
        sec.notes.append("nginx served a fallback script: the smee run returned no script to copy")
    if losses:
        print("\n\n".join(losses), file=sys.stderr)
    return [sec]
