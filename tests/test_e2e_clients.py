"""The whole boot chain with real clients: DHCP, then TFTP, then HTTP, against ONE ``twistd smee``
with every component on (DHCP, TFTP, HTTP), in network namespaces (tests/netns.py).

Topology (all inside namespaces of this test; nothing in the root namespace)::

    [srv: bridge 192.0.2.1/25]──veth──[cli  02:00:00:00:00:10, reserved 192.0.2.10, via dhclient]
                              ──veth──[strg 02:00:00:00:00:50, static 192.0.2.50, NOT in the file]
                              ──veth──[rly 192.0.2.2/25 | 192.0.2.129/25, forwarding]──veth──[far]
                                        dhcrelay -id <rly→far> -iu <rly→srv> 192.0.2.1
    far: 02:00:00:00:00:30, reserved 192.0.2.130 (router 192.0.2.129), leased through the relay

``test_dhcp_netns.py`` covers the DHCP answers in detail (dhclient, udhcpc incl. lease time,
the relay's giaddr on the wire). Here the lease is the *start* of the chain: the client
configures the address it was given, and from that address (smee's TFTP server and its
``/auto.ipxe`` look the machine up by source IP in reservation mode) it fetches the iPXE
binaries with tftp-hpa, atftp (blksize 1468, windowsize 16) and curl (blksize 1468), each
compared by sha256 with ``ipxe/bin``, then its script and a byte range of a binary over
HTTP. An address smee does not know gets a TFTP access violation and an HTTP 404.

Run with ``-s`` to see the timings of every step.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from ipxe_bin import ipxe_bin
from netns import (
    Lab,
    LabError,
    Netns,
    Smee,
    netns_lab_fixture,  # noqa: F401  (provides the netns_lab fixture)
    which,
)
from summary import publish

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SERVER_IP = "192.0.2.1"
HTTP = f"http://{SERVER_IP}:8080"
BLKSIZE = 1468  # 1500-byte MTU - IP (20) - UDP (8) - TFTP header (4)
BINARIES = ("undionly.kpxe", "ipxe.efi", "snp.efi")

CLIENT_MAC = "02:00:00:00:00:10"
CUSTOM_MAC = "02:00:00:00:00:11"  # a record with its own script URL (no live client)
RELAYED_MAC = "02:00:00:00:00:30"
STRANGER_MAC = "02:00:00:00:00:50"  # not in the hardware file
STRANGER_IP = "192.0.2.50"
CUSTOM_URL = "http://192.0.2.5:8080/custom/e2e.ipxe"
OSIE_URL = f"{HTTP}/osie"
TINK_SERVER = f"{SERVER_IP}:42113"

HARDWARE = f"""\
{CLIENT_MAC}:
  ipAddress: 192.0.2.10
  subnetMask: 255.255.255.128
  defaultGateway: 192.0.2.1
  nameServers: [192.0.2.53]
  hostname: e2e-client
  domainName: example.test
  leaseTime: 7200
  arch: x86_64
  netboot:
    allowPxe: true
    facility: lab1
{CUSTOM_MAC}:
  ipAddress: 192.0.2.11
  subnetMask: 255.255.255.128
  defaultGateway: 192.0.2.1
  hostname: e2e-custom
  netboot:
    allowPxe: true
    ipxeScriptUrl: {CUSTOM_URL}
{RELAYED_MAC}:
  ipAddress: 192.0.2.130
  subnetMask: 255.255.255.128
  defaultGateway: 192.0.2.129
  nameServers: [192.0.2.53]
  hostname: e2e-relayed
  domainName: example.test
  leaseTime: 3600
  arch: x86_64
  netboot:
    allowPxe: true
"""

#: Every client run is bounded by this (a ~1 MB transfer over a veth takes well under a second).
CLIENT_TIMEOUT = 60.0


# --- helpers -------------------------------------------------------------------


def ipxe_dir() -> Path:
    return ipxe_bin(BINARIES)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Step:
    label: str
    seconds: float
    nbytes: int | None = None

    def line(self) -> str:
        if self.nbytes is None:
            return f"  {self.label:<44} {self.seconds * 1000:8.1f} ms"
        rate = self.nbytes / self.seconds / 1e6 if self.seconds > 0 else float("inf")
        return f"  {self.label:<44} {self.seconds * 1000:8.1f} ms {self.nbytes:>9} B {rate:7.1f} MB/s"


class Timings:
    """Collects and prints the duration of every step (``pytest -s`` shows them)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.steps: list[Step] = []

    def add(self, label: str, seconds: float, nbytes: int | None = None) -> None:
        step = Step(label, seconds, nbytes)
        self.steps.append(step)
        print(f"[{self.title}]{step.line()}")

    def table(self) -> str:
        return "\n".join([f"[{self.title}] timings:", *(s.line() for s in self.steps)])


@dataclass
class Run:
    argv: list[str]
    returncode: int
    output: str
    seconds: float

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}\n(exit {self.returncode}, {self.seconds:.3f}s)\n{self.output[-4000:]}"


def run(ns: Netns, *argv: str, timeout: float = CLIENT_TIMEOUT) -> Run:
    """Run a client in ``ns`` to completion (bounded), timed; never raises on a non-zero exit."""
    started = time.monotonic()
    try:
        done = ns.run(*argv, timeout=timeout, check=False)
    except LabError as e:
        pytest.fail(f"client did not finish: {e}")
    return Run(list(argv), done.returncode, done.stdout + done.stderr, time.monotonic() - started)


def tftp_argv(client: str, name: str, out: Path) -> list[str]:
    if client == "tftp-hpa":  # no option negotiation in tftp-hpa's client: 512-byte blocks
        return [which("tftp") or "tftp", SERVER_IP, "-m", "binary", "-c", "get", name, str(out)]
    if client == "atftp":  # atftp 0.8: one --option per option, "name value" in one argument
        return [which("atftp") or "atftp", "--get", "-r", name, "-l", str(out),
                "--option", f"blksize {BLKSIZE}", "--option", "windowsize 16", SERVER_IP, "69"]
    if client == "curl":
        return [which("curl") or "curl", "-sS", "--max-time", "30", "--tftp-blksize", str(BLKSIZE),
                f"tftp://{SERVER_IP}/{name}", "-o", str(out)]
    raise AssertionError(client)


TFTP_CLIENTS = ("tftp-hpa", "atftp", "curl")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def http_get(lab: Lab, ns: Netns, url: str, *extra: str) -> Response:
    """GET ``url`` with curl from ``ns``; status, headers (lower-case names) and body."""
    body, head = lab.path("http.body"), lab.path("http.head")
    r = run(ns, which("curl") or "curl", "-sS", "--max-time", "20", "-o", str(body), "-D", str(head),
            "-w", "%{http_code}", *extra, url)
    assert r.returncode == 0, f"curl {url} failed\n{r}"
    headers: dict[str, str] = {}
    for line in head.read_text(errors="replace").splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Response(int(r.output.strip()[-3:]), headers, body.read_bytes() if body.exists() else b"", r.seconds)


def configure_from_lease(ns: Netns, iface: str, env: dict[str, str]) -> str:
    """Give ``iface`` the address (and default route) of a dhclient lease, as dhclient-script
    would; returns the address."""
    ip = env["new_ip_address"]
    prefix = IPv4Network(f"0.0.0.0/{env['new_subnet_mask']}").prefixlen
    ns.addr(iface, f"{ip}/{prefix}")
    router = env.get("new_routers", "").split()
    if router:
        ns.route("default", via=router[0])
    return ip


@dataclass
class Topology:
    srv: Netns
    cli: Netns
    strg: Netns
    rly: Netns
    far: Netns
    br: str  # the server's bridge: holds 192.0.2.1/25, smee's --dhcp-iface
    c_if: str
    r_up: str
    r_down: str
    f_if: str


def build(lab: Lab) -> Topology:
    """The namespaces and links of the module docstring."""
    srv, cli, strg = lab.namespace("srv"), lab.namespace("cli"), lab.namespace("strg")
    rly, far = lab.namespace("rly"), lab.namespace("far")
    s_cli, c_if = lab.veth(srv, cli, b_mac=CLIENT_MAC)
    s_strg, st_if = lab.veth(srv, strg, b_mac=STRANGER_MAC)
    s_rly, r_up = lab.veth(srv, rly)
    br = lab.bridge(srv, [s_cli, s_strg, s_rly])
    srv.addr(br, f"{SERVER_IP}/25")
    srv.route("192.0.2.128/25", via="192.0.2.2")
    r_down, f_if = lab.veth(rly, far, b_mac=RELAYED_MAC)
    rly.addr(r_up, "192.0.2.2/25")
    rly.addr(r_down, "192.0.2.129/25")
    rly.sysctl("net.ipv4.ip_forward", 1)  # this namespace's own setting
    strg.addr(st_if, f"{STRANGER_IP}/25")
    return Topology(srv, cli, strg, rly, far, br, c_if, r_up, r_down, f_if)


def start_smee(lab: Lab, srv: Netns, br: str) -> Smee:
    """One smee, every component on (defaults), waiting until DHCP, TFTP and HTTP are bound.
    (syslog is on by default too, but smee has no syslog receiver yet: nothing binds 514.)"""
    return lab.smee(
        srv, HARDWARE,
        f"--public-ip={SERVER_IP}", f"--dhcp-iface={br}", f"--tftp-block-size={BLKSIZE}",
        f"--osie-url={OSIE_URL}", f"--tink-server={TINK_SERVER}", "--log-level=debug",
        listen=(("udp", 67), ("udp", 69), ("tcp", 8080)),
    )


def wait_matches(smee: Smee, pattern: str, count: int, timeout: float = 5.0) -> list[re.Match[str]]:
    """The matches of ``pattern`` in smee's log once there are ``count`` of them (bounded wait:
    smee logs a transfer's end on the client's last ACK, which may come after the client
    exited); fails if there are fewer, or more."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while len(found := list(rx.finditer(smee.text()))) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(found) == count, (f"expected {count} log lines like {pattern!r}, found {len(found)}:\n"
                                 + "\n".join(m[0] for m in found) + f"\n{smee.describe(60)}")
    return found


def completed(smee: Smee, ip: str, count: int) -> list[tuple[str, int, int]]:
    """(file, blksize, windowsize) of the ``count`` transfers to ``ip`` smee logged as complete."""
    pattern = rf"\] (\S+) to {re.escape(ip)}:\d+: complete after .*blksize (\d+), windowsize (\d+)"
    return [(m[1], int(m[2]), int(m[3])) for m in wait_matches(smee, pattern, count)]


def check_downloads(lab: Lab, ns: Netns, smee: Smee, ipxe: Path, timings: Timings, who: str,
                    names: tuple[str, ...] = BINARIES, clients: tuple[str, ...] = TFTP_CLIENTS) -> None:
    """Each client fetches each binary over TFTP; byte-exact by sha256."""
    for client in clients:
        for name in names:
            out = lab.path(f"{who}-{client}-{name}")
            r = run(ns, *tftp_argv(client, name, out))
            want = (ipxe / name).read_bytes()
            got = out.read_bytes() if out.exists() else b""
            timings.add(f"tftp {client} {name}", r.seconds, len(got))
            assert r.returncode == 0, f"{client} {name}\n{r}\n{smee.describe(40)}"
            # tftp-hpa exits 0 even after an ERROR from the server: the bytes are what count
            assert sha256(got) == sha256(want), (
                f"{client} {name}: {len(got)} bytes, expected {len(want)} (sha256 differs)\n{r}\n{smee.describe(40)}")


# --- the tests ---------------------------------------------------------------------


def test_full_chain_with_real_clients(netns_lab: Lab) -> None:
    """dhclient lease → TFTP (tftp-hpa, atftp, curl) from the leased address → HTTP script and
    Range; a stranger's address is refused by TFTP and HTTP."""
    lab = netns_lab
    lab.require("dhclient", "tftp", "atftp", "curl")
    ipxe = ipxe_dir()
    t = build(lab)
    cli, strg = t.cli, t.strg
    timings = Timings("e2e")

    smee = start_smee(lab, t.srv, t.br)
    assert smee.elapsed_until_listening is not None
    timings.add("smee start → DHCP/TFTP/HTTP bound", smee.elapsed_until_listening)
    startup = smee.text()
    assert re.search(rf"TFTP listening on {re.escape(SERVER_IP)}:69\b.*blksize up to {BLKSIZE}\b", startup), startup

    # 1. DHCP: the reservation, with everything else in smee running
    lease = lab.dhclient(cli, t.c_if)
    assert lease.ok, f"{lease.timeline()}\n{lease.output}"
    assert lease.elapsed is not None
    timings.add("dhclient DISCOVER → bound", lease.elapsed)
    expected = {
        "new_ip_address": "192.0.2.10",
        "new_subnet_mask": "255.255.255.128",
        "new_routers": SERVER_IP,
        "new_domain_name_servers": "192.0.2.53",
        "new_host_name": "e2e-client",
        "new_domain_name": "example.test",
        "new_dhcp_lease_time": "7200",
        "new_dhcp_server_identifier": SERVER_IP,
    }
    assert {k: lease.env.get(k) for k in expected} == expected, lease.env
    ip = configure_from_lease(cli, t.c_if, lease.env)

    # 2. TFTP from the leased address: every binary, every client, byte-exact
    check_downloads(lab, cli, smee, ipxe, timings, "cli")
    # smee granted what each client asked for: tftp-hpa asks nothing (512), curl blksize 1468,
    # atftp blksize 1468 and windowsize 16
    granted = sorted(completed(smee, ip, len(TFTP_CLIENTS) * len(BINARIES)))
    assert granted == sorted([(n, 512, 1) for n in BINARIES] + [(n, BLKSIZE, 16) for n in BINARIES]
                             + [(n, BLKSIZE, 1) for n in BINARIES]), granted

    # 3. HTTP: the script, by MAC and by address (the default installer: Hook, with --osie-url)
    by_mac = http_get(lab, cli, f"{HTTP}/{CLIENT_MAC}/auto.ipxe")
    timings.add("http GET /<mac>/auto.ipxe", by_mac.seconds, len(by_mac.body))
    assert by_mac.status == 200, by_mac
    script = by_mac.body.decode()
    assert script.startswith("#!ipxe\n"), script
    for line in (
        "echo Loading the Tinkerbell Hook iPXE script...",
        "set arch x86_64",
        f"set download-url {OSIE_URL}",
        "set kernel vmlinuz-${arch}",
        "set initrd initramfs-${arch}",
        "initrd ${download-url}/${initrd} && goto boot",
    ):
        assert line in script.splitlines() or any(ln.startswith(line) for ln in script.splitlines()), (
            f"{line!r} missing:\n{script}")
    kernel_args = next((ln for ln in script.splitlines() if f"worker_id={CLIENT_MAC}" in ln), "")
    for arg in ("facility=lab1", f"syslog_host={SERVER_IP}", f"grpc_authority={TINK_SERVER}",
                f"worker_id={CLIENT_MAC}", f"hw_addr={CLIENT_MAC}"):
        assert arg in kernel_args.split(), f"{arg} not among the kernel arguments:\n{script}"

    by_ip = http_get(lab, cli, f"{HTTP}/auto.ipxe")
    timings.add("http GET /auto.ipxe (by source IP)", by_ip.seconds, len(by_ip.body))
    assert by_ip.status == 200, by_ip
    assert by_ip.body == by_mac.body, "the script by address differs from the script by MAC"

    other = http_get(lab, cli, f"{HTTP}/{CLIENT_MAC.replace(':', '-').upper()}/auto.ipxe")
    assert (other.status, other.body) == (200, by_mac.body), other

    custom = http_get(lab, cli, f"{HTTP}/{CUSTOM_MAC}/auto.ipxe")
    timings.add("http GET /<custom mac>/auto.ipxe", custom.seconds, len(custom.body))
    assert custom.status == 200, custom
    custom_lines = custom.body.decode().splitlines()
    assert custom_lines[0] == "#!ipxe", custom.body
    assert f"chain --autofree {CUSTOM_URL}" in custom_lines, custom.body
    assert not any("download-url" in ln or ln.startswith("kernel") for ln in custom_lines), custom.body

    # 4. HTTP: the binary whole, and byte ranges of it
    efi = (ipxe / "ipxe.efi").read_bytes()
    size = len(efi)
    whole = http_get(lab, cli, f"{HTTP}/ipxe/ipxe.efi")
    timings.add("http GET /ipxe/ipxe.efi", whole.seconds, len(whole.body))
    assert whole.status == 200 and sha256(whole.body) == sha256(efi), (whole.status, len(whole.body), size)
    assert whole.headers.get("accept-ranges") == "bytes", whole.headers
    for rng, first, last in (("0-1023", 0, 1023), ("1000-", 1000, size - 1), ("-100", size - 100, size - 1),
                             (f"{size - 10}-{size + 1000}", size - 10, size - 1)):
        part = http_get(lab, cli, f"{HTTP}/ipxe/ipxe.efi", "-r", rng)
        timings.add(f"http GET /ipxe/ipxe.efi Range {rng}", part.seconds, len(part.body))
        assert part.status == 206, (rng, part.status, part.headers)
        assert part.headers.get("content-range") == f"bytes {first}-{last}/{size}", (rng, part.headers)
        assert part.body == efi[first:last + 1], f"Range {rng}: wrong bytes ({len(part.body)})"
    beyond = http_get(lab, cli, f"{HTTP}/ipxe/ipxe.efi", "-r", f"{size}-")
    assert beyond.status == 416, (beyond.status, beyond.headers)
    assert beyond.headers.get("content-range") == f"bytes */{size}", beyond.headers

    # 5. a stranger: an address no hardware record has
    out = lab.path("strg-ipxe.efi")
    r = run(strg, *tftp_argv("curl", "ipxe.efi", out))
    timings.add("stranger: curl tftp ipxe.efi (refused)", r.seconds)
    assert r.returncode == 69, f"curl should report 'TFTP: Access Violation' (69)\n{r}"  # CURLE_TFTP_PERM
    assert not out.exists() or out.stat().st_size == 0
    r = run(strg, *tftp_argv("atftp", "undionly.kpxe", lab.path("strg-undionly.kpxe")))
    assert r.returncode != 0 and "access violation" in r.output.lower(), str(r)
    r = run(strg, *tftp_argv("tftp-hpa", "snp.efi", lab.path("strg-snp.efi")))
    assert "error code 2" in r.output.lower(), str(r)  # tftp-hpa exits 0 anyway
    refusals = wait_matches(smee, rf"refused (\S+) to {re.escape(STRANGER_IP)}:\d+: (.*)", 3)
    assert sorted(m[1] for m in refusals) == sorted(("ipxe.efi", "undionly.kpxe", "snp.efi")), refusals
    assert {m[2] for m in refusals} == {f"no hardware record has IP {STRANGER_IP}"}, [m[0] for m in refusals]

    refused = http_get(lab, strg, f"{HTTP}/auto.ipxe")
    timings.add("stranger: http GET /auto.ipxe (404)", refused.seconds, len(refused.body))
    assert refused.status == 404, refused
    assert refused.body == f"#!ipxe\necho smee: no hardware with IP {STRANGER_IP}\nexit 1\n".encode(), refused.body
    # and a MAC smee does not know is 404 too (plain MAC lookup, whoever asks)
    unknown = http_get(lab, strg, f"{HTTP}/{STRANGER_MAC}/auto.ipxe")
    assert unknown.status == 404, unknown

    print(timings.table())
    publish("real clients: " + timings.title, timings.table())
    text = smee.text()
    assert "Traceback" not in text, text[-6000:]
    assert smee.alive(), smee.describe()


def test_relayed_client_boots_across_a_router(netns_lab: Lab) -> None:
    """A client on another subnet: dhcrelay forwards its DHCP, smee answers via giaddr, then the
    client fetches a binary over TFTP (per-transfer port, routed back through the relay) and
    its script over HTTP, both looked up by its routed source address."""
    lab = netns_lab
    lab.require("dhclient", "dhcrelay", "atftp", "curl")
    ipxe = ipxe_dir()
    t = build(lab)
    far = t.far
    timings = Timings("e2e relayed")

    smee = start_smee(lab, t.srv, t.br)
    relay = lab.dhcrelay(t.rly, t.r_down, t.r_up, SERVER_IP)
    lease = lab.dhclient(far, t.f_if)
    assert lease.ok, f"{lease.timeline()}\n{lease.output}\n{relay.text()}"
    assert lease.elapsed is not None
    timings.add("dhclient via dhcrelay → bound", lease.elapsed)
    expected = {
        "new_ip_address": "192.0.2.130",
        "new_subnet_mask": "255.255.255.128",
        "new_routers": "192.0.2.129",
        "new_domain_name_servers": "192.0.2.53",
        "new_host_name": "e2e-relayed",
        "new_dhcp_lease_time": "3600",
        "new_dhcp_server_identifier": SERVER_IP,
    }
    assert {k: lease.env.get(k) for k in expected} == expected, lease.env
    # far's only way to smee is through the relay; the relay saw smee's reply come back
    assert f"Forwarded BOOTREPLY for {RELAYED_MAC} to 192.0.2.130" in relay.text(), relay.text()
    ip = configure_from_lease(far, t.f_if, lease.env)

    check_downloads(lab, far, smee, ipxe, timings, "far", names=("ipxe.efi",), clients=("atftp", "curl"))
    assert sorted(completed(smee, ip, 2)) == [("ipxe.efi", BLKSIZE, 1), ("ipxe.efi", BLKSIZE, 16)]

    script = http_get(lab, far, f"{HTTP}/auto.ipxe")
    timings.add("http GET /auto.ipxe (routed, by source IP)", script.seconds, len(script.body))
    assert script.status == 200, script
    assert f"worker_id={RELAYED_MAC}" in script.body.decode(), script.body
    print(timings.table())
    publish("real clients: " + timings.title, timings.table())
    assert "Traceback" not in smee.text(), smee.text()[-6000:]
