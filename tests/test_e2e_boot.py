"""Whole boots: QEMU machines (SeaBIOS and OVMF, TCG) network-boot from ``twistd smee``.

Topology (all inside namespaces of the test; nothing in the root namespace)::

    [srv: smee 192.0.2.1/24]──veth──[cli: bridge ── tap ── QEMU]
                                                 └─ veth ── [dhcp: dnsmasq 192.0.2.3/24]  (proxy test)

Each machine's hardware record carries a custom iPXE script (``netboot.ipxeScript``) that
echoes a marker with ``${net0/mac}`` and ``${net0/ip}`` and powers off; the test reads the
marker from the serial console. iPXE builds without ``poweroff`` (QEMU's 2019 ROMs) say so
and are stopped by pid. Every boot prints a timeline built from a capture on the VM's tap
(seconds since QEMU started: DHCP, TFTP, iPXE's DHCP, HTTP, marker); run with ``-s`` to
see them. Only one VM runs at a time (vm.LOCK_FILE): TCG boots on 2 cores time out otherwise.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netns import (
    PACKAGES,
    Capture,
    Lab,
    LabError,
    Netns,
    Process,
    Smee,
    _wait,
    netns_lab_fixture,  # noqa: F401  (provides the netns_lab fixture)
    which,
)
from summary import publish
from vm import (
    VM,
    dhcp_messages,
    format_timeline,
    http_requests,
    missing_reason,
    read_frames,
    tftp_requests,
    timeline,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SERVER_IP = "192.0.2.1"
DNSMASQ_IP = "192.0.2.3"
TINK_SERVER = "192.0.2.1:42113"
OSIE_PORT = 8081

BIOS_MAC = "52:54:00:e2:e0:01"
EDK2_MAC = "52:54:00:e2:e0:02"
EFIROM_MAC = "52:54:00:e2:e0:03"
HOOK_MAC = "52:54:00:e2:e0:04"
NOPXE_MAC = "52:54:00:e2:e0:05"
CHAIN_MAC = "52:54:00:e2:e0:06"
PROXY_MAC = "52:54:00:e2:e0:07"

#: Every VM boot is bounded by this (e2e-notes: slowest seen 31 s).
BOOT_TIMEOUT = 120.0

MARKER = r"SMEE-E2E-MARKER mac=(\S+?) ip=(\S+?) END"
NO_POWEROFF = "SMEE-E2E-NO-POWEROFF"
#: The custom script, as the record's netboot.ipxeScript (indented for the YAML block below).
#: The pause lets SeaBIOS's serial console (sercon, which flushes lazily) write the marker
#: before the machine is off; "cmd ||" lets the script go on when a command is missing.
SCRIPT = f"""\
      #!ipxe
      echo SMEE-E2E-MARKER mac=${{net0/mac}} ip=${{net0/ip}} END
      sleep 1 ||
      poweroff || echo {NO_POWEROFF}
"""


def record(mac: str, ip: str, *, allow_pxe: bool = True, script: bool = True, extra: str = "") -> str:
    """One Smee file-format record (192.0.2.0/24, gateway smee)."""
    text = f"""\
{mac}:
  ipAddress: {ip}
  subnetMask: 255.255.255.0
  defaultGateway: {SERVER_IP}
  nameServers: [{SERVER_IP}]
  hostname: e2e-{mac[-2:]}
  leaseTime: 3600
  arch: x86_64
  netboot:
    allowPxe: {'true' if allow_pxe else 'false'}
    facility: e2e
{extra}"""
    if script:
        text += "    ipxeScript: |\n" + SCRIPT
    return text


HARDWARE = "".join([
    record(BIOS_MAC, "192.0.2.11"),
    record(EDK2_MAC, "192.0.2.12"),
    record(EFIROM_MAC, "192.0.2.13"),
    record(HOOK_MAC, "192.0.2.14", script=False, extra="    console: ttyS0\n"),
    record(NOPXE_MAC, "192.0.2.15", allow_pxe=False),
    record(CHAIN_MAC, "192.0.2.16"),
    # proxy mode: the address comes from dnsmasq; the record's ipAddress is not handed out
    record(PROXY_MAC, "192.0.2.17"),
])


#: Where ``make bindata`` puts the iPXE binaries smee serves (smee's default --ipxe-dir).
IPXE_BIN = Path(__file__).resolve().parent.parent / "ipxe" / "bin"


def _skip_unless(firmware: str = "bios", nic: str = "e1000", romfile: str | None = None,
                 tools: tuple[str, ...] = (), binaries: tuple[str, ...] = ()) -> None:
    reason = missing_reason(firmware, nic, romfile)  # type: ignore[arg-type]
    if reason:
        pytest.skip(reason)
    for name in binaries:
        if not (IPXE_BIN / name).is_file():
            pytest.skip(f"needs {IPXE_BIN / name} (run make bindata)")
    for tool in ("tcpdump", *tools):
        if which(tool) is None:
            pytest.skip(f"needs {tool} (apt-get install {PACKAGES.get(tool, tool)})")


# --- the bench ------------------------------------------------------------------


@dataclass
class Bench:
    """smee in ``srv``, a bridge in ``cli`` with one tap for the VM, a capture on that tap."""

    lab: Lab
    srv: Netns
    cli: Netns
    s_if: str
    bridge: str
    tap: str
    cap: Capture
    smee: Smee | None = None
    t0: float = field(default_factory=time.monotonic)

    def start_smee(self, *args: str) -> Smee:
        self.smee = self.lab.smee(
            self.srv, HARDWARE,
            f"--public-ip={SERVER_IP}", f"--dhcp-iface={self.s_if}", "--log-level=debug",
            f"--tink-server={TINK_SERVER}", f"--osie-url=http://{SERVER_IP}:{OSIE_PORT}/hook",
            "--syslog-enabled=false",
            *args,
            listen=(("udp", 67), ("udp", 69), ("tcp", 8080)),
        )
        return self.smee

    def vm(self, mac: str, firmware: str, nic: str, romfile: str | None = None) -> VM:
        return VM(self.lab, self.cli, self.tap, mac, firmware=firmware, nic=nic,  # type: ignore[arg-type]
                  romfile=romfile, name=f"vm-{firmware}-{nic}")


def bench(lab: Lab) -> Bench:
    srv, cli = lab.namespace("srv"), lab.namespace("cli")
    s_if, c_if = lab.veth(srv, cli)
    srv.addr(s_if, f"{SERVER_IP}/24")
    br = lab.bridge(cli, [c_if])
    tap = lab.tap(cli, br)
    # everything the VM sends and receives (DHCP, TFTP, HTTP), not only DHCP
    cap = lab.tcpdump(cli, tap, filter="", name="tcpdump-vm")
    return Bench(lab, srv, cli, s_if, br, tap, cap)


@dataclass
class Boot:
    """What one VM boot did: the timeline text, marker values, and how QEMU ended."""

    title: str
    vm: VM
    bench: Bench
    mac: str | None = None
    ip: str | None = None
    powered_off: bool = False
    text: str = ""

    def report(self) -> str:
        """Build, print and return the timeline (for assertion messages)."""
        time.sleep(0.3)  # let tcpdump flush the last packets (-U writes each one)
        total = time.monotonic() - self.bench.t0
        events = timeline(self.bench.cap.pcap, self.vm)
        self.text = format_timeline(f"{self.title}: VM ran {self.vm.elapsed():.1f}s", events, total)
        print("\n" + self.text)
        publish(self.title, self.text)
        return self.text

    def context(self) -> str:
        """Timeline + smee log tail, for failure messages."""
        smee = self.bench.smee.describe(60) if self.bench.smee else ""
        return f"{self.text}\n{smee}"


def run_to_marker(b: Bench, vm: VM, title: str) -> Boot:
    """Start ``vm``, wait (bounded) for the marker, then for it to power off; a VM whose iPXE
    has no ``poweroff`` is stopped by pid. Fails with the timeline when the marker never comes."""
    boot = Boot(title, vm, b)
    vm.start()
    try:
        found = vm.wait_serial(MARKER, BOOT_TIMEOUT, "marker")
    except LabError as e:
        vm.stop()
        boot.report()
        pytest.fail(f"{title}: no marker\n{boot.context()}\n{e}")
    boot.mac, boot.ip = found.group(1), found.group(2)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and vm.alive() and NO_POWEROFF not in vm.console():
        time.sleep(0.1)
    boot.powered_off = vm.wait_exit(0.5)
    if not boot.powered_off:
        if NO_POWEROFF in vm.console():
            vm.marks.append((vm.elapsed(), "iPXE has no poweroff command"))
        vm.stop()
    boot.report()
    return boot


def assert_marker(boot: Boot, mac: str, ip: str) -> None:
    assert (boot.mac, boot.ip) == (mac, ip), f"marker says mac={boot.mac} ip={boot.ip}\n{boot.context()}"


def assert_clean_smee(boot: Boot) -> None:
    assert boot.bench.smee is not None
    assert "Traceback" not in boot.bench.smee.text(), boot.context()


def frames_of(boot: Boot) -> list:
    return read_frames(boot.bench.cap.pcap)


# --- 2. boots -------------------------------------------------------------------


def test_seabios_ipxe_rom_gets_the_script_at_once(netns_lab: Lab) -> None:
    """SeaBIOS + QEMU's e1000 iPXE ROM (a foreign iPXE, user class "iPXE"): the script URL in
    the first DHCP answer, no TFTP, the script runs."""
    _skip_unless("bios", "e1000")
    b = bench(netns_lab)
    b.start_smee()
    boot = run_to_marker(b, b.vm(BIOS_MAC, "bios", "e1000"), "SeaBIOS + iPXE ROM (e1000)")
    assert_marker(boot, BIOS_MAC, "192.0.2.11")
    frames = frames_of(boot)
    replies = [m for m in dhcp_messages(frames) if m.is_reply]
    url = f"http://{SERVER_IP}:8080/{BIOS_MAC}/auto.ipxe"
    assert replies and all(m.src == (SERVER_IP, 67) for m in replies), boot.text
    assert {(m.type, m.yiaddr, m.file) for m in replies} == {("OFFER", "192.0.2.11", url),
                                                              ("ACK", "192.0.2.11", url)}, boot.text
    assert tftp_requests(frames) == [], boot.text
    paths = [r.path for r in http_requests(frames)]
    assert paths == [f"/{BIOS_MAC.replace(':', '%3A')}/auto.ipxe"], boot.text
    assert_clean_smee(boot)


def test_ovmf_edk2_pxe_tftp_ipxe_efi_then_autoexec(netns_lab: Lab) -> None:
    """OVMF's own PXE (virtio-net, no ROM) → TFTP ipxe.efi → autoexec.ipxe → iPXE DHCP as
    "Tinkerbell" → script; Debian trixie's ipxe.efi has poweroff, so the VM ends itself."""
    _skip_unless("uefi", "virtio-net-pci", "", binaries=("ipxe.efi",))
    b = bench(netns_lab)
    b.start_smee()
    boot = run_to_marker(b, b.vm(EDK2_MAC, "uefi", "virtio-net-pci", romfile=""), "OVMF EDK2 PXE (virtio)")
    assert_marker(boot, EDK2_MAC, "192.0.2.12")
    assert boot.powered_off, f"ipxe.efi did not power the VM off\n{boot.context()}"
    frames = frames_of(boot)
    msgs = dhcp_messages(frames)
    firmware = [m for m in msgs if not m.is_reply and m.user_class is None]
    ipxe = [m for m in msgs if not m.is_reply and m.user_class is not None]
    assert firmware and {m.arch for m in firmware} == {7}, boot.text
    assert ipxe and {m.user_class for m in ipxe} == {"Tinkerbell"}, boot.text
    acks = [m for m in msgs if m.type == "ACK"]
    assert [(a.yiaddr, a.file) for a in acks] == [
        ("192.0.2.12", "ipxe.efi"),
        ("192.0.2.12", f"http://{SERVER_IP}:8080/{EDK2_MAC}/auto.ipxe"),
    ], boot.text
    names = [r.filename for r in tftp_requests(frames)]
    # EDK2 asks for the size first (aborting after the OACK), then for the file
    assert names == ["ipxe.efi", "ipxe.efi", "autoexec.ipxe"], boot.text
    assert [r.path for r in http_requests(frames)] == [f"/{EDK2_MAC}/auto.ipxe"], boot.text
    assert_clean_smee(boot)


def test_ovmf_ipxe_efi_rom_gets_the_script_at_once(netns_lab: Lab) -> None:
    """OVMF + QEMU's iPXE EFI ROM on e1000: a foreign iPXE (arch 7, user class "iPXE") gets the
    script URL straight away."""
    _skip_unless("uefi", "e1000")
    b = bench(netns_lab)
    b.start_smee()
    boot = run_to_marker(b, b.vm(EFIROM_MAC, "uefi", "e1000"), "OVMF + iPXE EFI ROM (e1000)")
    assert_marker(boot, EFIROM_MAC, "192.0.2.13")
    frames = frames_of(boot)
    msgs = dhcp_messages(frames)
    requests = [m for m in msgs if not m.is_reply]
    assert requests and {(m.arch, m.user_class) for m in requests} == {(7, "iPXE")}, boot.text
    url = f"http://{SERVER_IP}:8080/{EFIROM_MAC}/auto.ipxe"
    assert {(m.type, m.yiaddr, m.file) for m in msgs if m.is_reply} == {
        ("OFFER", "192.0.2.13", url), ("ACK", "192.0.2.13", url)}, boot.text
    assert tftp_requests(frames) == [], boot.text
    assert len(http_requests(frames)) == 1, boot.text
    assert_clean_smee(boot)


@pytest.fixture
def hook_server(netns_lab: Lab, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """The files of a stand-in Hook/OSIE download site (served by start_hook_server) and the
    --osie-url pointing at it."""
    root = tmp_path / "hook-site"
    (root / "hook").mkdir(parents=True)
    # not a kernel: iPXE fetches it, cannot execute it, and the script gives up
    (root / "hook" / "vmlinuz-x86_64").write_bytes(b"not a kernel\n" * 64)
    (root / "hook" / "initramfs-x86_64").write_bytes(b"not an initrd\n" * 64)
    yield root, f"http://{SERVER_IP}:{OSIE_PORT}/hook"


def start_hook_server(b: Bench, root: Path) -> Process:
    proc = b.srv.spawn([sys.executable, "-u", "-m", "http.server", str(OSIE_PORT), "--bind", SERVER_IP,
                        "--directory", str(root)], name="hook-http")

    def bound() -> bool:
        if not proc.alive():
            raise LabError(f"http.server exited\n{proc.describe()}")
        return f"pid={proc.pid}," in b.srv.run("ss", "-Htlnp", f"sport = :{OSIE_PORT}", check=False).stdout

    _wait(bound, 15, "the Hook HTTP server to listen", proc.describe, interval=0.05)
    return proc


def test_default_installer_names_the_hook_kernel_and_initrd(netns_lab: Lab,
                                                             hook_server: tuple[Path, str]) -> None:
    """A record without a custom script gets the default (Hook/OSIE) script: the VM fetches the
    kernel from --osie-url, and the script carries the expected kernel arguments."""
    _skip_unless("bios", "e1000", tools=("curl",))
    root, osie_url = hook_server
    b = bench(netns_lab)
    b.start_smee()
    web = start_hook_server(b, root)
    vm = b.vm(HOOK_MAC, "bios", "e1000")
    boot = Boot("SeaBIOS + iPXE ROM, default installer (Hook)", vm, b)
    vm.start()
    try:
        web.wait_for(r'"GET /hook/vmlinuz-x86_64 HTTP/1\.[01]"', BOOT_TIMEOUT)
        vm.marks.append((vm.elapsed(), "Hook site logged GET /hook/vmlinuz-x86_64"))
        # the initrd follows at once (the fake kernel cannot boot: nothing more to see)
        try:
            web.wait_for(r'"GET /hook/initramfs-x86_64 HTTP/1\.[01]"', 5)
        except LabError:
            pass
    except LabError as e:
        vm.stop()
        boot.report()
        pytest.fail(f"the VM never asked for the Hook kernel\n{boot.context()}\n{web.describe()}\n{e}")
    vm.stop()
    boot.report()

    url = f"http://{SERVER_IP}:8080/{HOOK_MAC}/auto.ipxe"
    frames = frames_of(boot)
    assert {m.file for m in dhcp_messages(frames) if m.is_reply} == {url}, boot.text
    got = b.srv.run("curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\\n%{http_code}", url).stdout
    script, _, status = got.rpartition("\n")
    assert status == "200", got
    assert f"set download-url {osie_url}\n" in script, script
    assert "set arch x86_64\n" in script and "set kernel vmlinuz-${arch}\n" in script, script
    assert "set initrd initramfs-${arch}\n" in script, script
    # the kernel line is continued over lines ending in " \"
    kernel = re.search(r"^kernel \$\{download-url\}/\$\{kernel\} (.*?) && goto download_initrd",
                       script, re.MULTILINE | re.DOTALL)
    assert kernel, script
    args = [a for a in kernel.group(1).split() if a != "\\"]
    for expected in ["facility=e2e", f"syslog_host={SERVER_IP}", f"grpc_authority={TINK_SERVER}",
                     f"worker_id={HOOK_MAC}", f"hw_addr={HOOK_MAC}", "initrd=${initrd}",
                     "tinkerbell_tls=false"]:
        assert expected in args, f"{expected} not in {args}"
    consoles = [a for a in args if a.startswith("console=")]
    assert consoles == ["console=tty0", "console=ttyS0,115200"], args
    hits = re.findall(r'"GET (/hook/\S+) HTTP', web.text())
    assert hits[:1] == ["/hook/vmlinuz-x86_64"], web.text()
    assert set(hits) <= {"/hook/vmlinuz-x86_64", "/hook/initramfs-x86_64"}, web.text()
    print(f"kernel arguments: {' '.join(args)}")
    assert_clean_smee(boot)


def test_allow_pxe_false_gets_a_lease_but_no_boot_program(netns_lab: Lab) -> None:
    """allowPxe: false: OFFER and ACK with the reserved address and an empty boot file, no TFTP,
    and smee's log says why."""
    _skip_unless("bios", "e1000")
    b = bench(netns_lab)
    b.start_smee()
    vm = b.vm(NOPXE_MAC, "bios", "e1000")
    boot = Boot("SeaBIOS + iPXE ROM, allowPxe false", vm, b)
    vm.start()

    def acked() -> bool:
        if not vm.alive():
            raise LabError(f"QEMU exited\n{vm.describe()}")
        return any(m.type == "ACK" for m in dhcp_messages(read_frames(b.cap.pcap)))

    try:
        _wait(acked, BOOT_TIMEOUT, "an ACK on the VM's tap", vm.describe, interval=0.5)
        vm.marks.append((vm.elapsed(), "ACK seen"))
        # iPXE has nothing to boot: it says so after its ~13 s IPv6 wait; at most 30 s
        try:
            vm.wait_serial(r"No more network devices|No bootable device|no filename", 30,
                           "iPXE gives up")
        except LabError:
            pass
    except LabError as e:
        vm.stop()
        boot.report()
        pytest.fail(f"no ACK\n{boot.context()}\n{e}")
    time.sleep(2)  # anything the VM would still send after giving up
    vm.stop()
    boot.report()

    frames = frames_of(boot)
    replies = [m for m in dhcp_messages(frames) if m.is_reply]
    assert {m.type for m in replies} == {"OFFER", "ACK"}, boot.text
    assert {(m.yiaddr, m.file, m.siaddr) for m in replies} == {("192.0.2.15", "", "0.0.0.0")}, boot.text
    assert all(60 not in m.options and 43 not in m.options for m in replies), boot.text
    assert tftp_requests(frames) == [], boot.text
    assert http_requests(frames) == [], boot.text
    assert b.smee is not None
    why = [ln for ln in b.smee.text().splitlines() if "netboot not allowed" in ln and NOPXE_MAC in ln]
    assert why, f"smee did not log why\n{boot.context()}"
    print(f"smee says: {why[0]}")
    assert_clean_smee(boot)


def test_seabios_ipxe_rom_chainloaded_to_our_undionly_once(netns_lab: Lab) -> None:
    """--dhcp-ipxe-rom-chainload=true: the ROM gets tftp://…/<mac>/undionly.kpxe, smee's binary
    asks again (also as "iPXE") and, since smee just served it, gets the script: one transfer."""
    _skip_unless("bios", "e1000", binaries=("undionly.kpxe",))
    b = bench(netns_lab)
    b.start_smee("--dhcp-ipxe-rom-chainload=true")
    boot = run_to_marker(b, b.vm(CHAIN_MAC, "bios", "e1000"), "SeaBIOS + iPXE ROM, chainload to undionly.kpxe")
    assert_marker(boot, CHAIN_MAC, "192.0.2.16")
    frames = frames_of(boot)
    tftp = tftp_requests(frames)
    assert [r.filename for r in tftp] == [f"{CHAIN_MAC}/undionly.kpxe"], boot.text
    acks = [m for m in dhcp_messages(frames) if m.type == "ACK"]
    assert [a.file for a in acks] == [
        f"tftp://{SERVER_IP}:69/{CHAIN_MAC}/undionly.kpxe",
        f"http://{SERVER_IP}:8080/{CHAIN_MAC}/auto.ipxe",
    ], boot.text
    assert len(http_requests(frames)) == 1, boot.text
    assert_clean_smee(boot)


# --- 3. proxy mode --------------------------------------------------------------


def test_proxy_mode_beside_dnsmasq(netns_lab: Lab) -> None:
    """dnsmasq hands out addresses (192.0.2.100-150, nothing about PXE); smee in proxy mode
    gives the boot program. OVMF's PXE → ipxe.efi → autoexec.ipxe → iPXE DHCP (both answer)
    → script; the marker shows the dnsmasq address."""
    _skip_unless("uefi", "virtio-net-pci", "", tools=("dnsmasq",), binaries=("ipxe.efi",))
    lab = netns_lab
    b = bench(lab)
    dns = lab.namespace("dhcp")
    d_if, c2_if = lab.veth(dns, b.cli)
    b.cli.ip("link", "set", c2_if, "master", b.bridge)
    dns.addr(d_if, f"{DNSMASQ_IP}/24")
    dnsmasq = lab.dnsmasq(dns, d_if, [
        "--dhcp-range=192.0.2.100,192.0.2.150,255.255.255.0,1h", "--dhcp-authoritative",
        "--log-dhcp", "--no-ping", f"--dhcp-option=option:router,{SERVER_IP}",
    ])
    b.start_smee("--dhcp-mode=proxy")
    boot = run_to_marker(b, b.vm(PROXY_MAC, "uefi", "virtio-net-pci", romfile=""),
                         "proxy mode: OVMF EDK2 PXE, addresses from dnsmasq")
    ctx = f"{boot.context()}\n{dnsmasq.describe(60)}"
    assert boot.mac == PROXY_MAC, ctx
    assert boot.ip is not None and re.fullmatch(r"192\.0\.2\.(\d+)", boot.ip), ctx
    assert 100 <= int(boot.ip.rsplit(".", 1)[1]) <= 150, f"not a dnsmasq address: {boot.ip}\n{ctx}"
    frames = frames_of(boot)
    msgs = dhcp_messages(frames)
    from_dnsmasq = [m for m in msgs if m.is_reply and m.src[0] == DNSMASQ_IP]
    from_smee = [m for m in msgs if m.is_reply and m.src[0] == SERVER_IP]
    assert {m.type for m in from_dnsmasq} >= {"OFFER", "ACK"}, ctx
    assert {m.yiaddr for m in from_dnsmasq} == {boot.ip}, ctx
    assert all(not m.file for m in from_dnsmasq), ctx
    # smee never leases: every answer has yiaddr 0.0.0.0 and a boot file
    assert from_smee and all(m.yiaddr == "0.0.0.0" for m in from_smee), ctx
    assert {m.file for m in from_smee} == {"ipxe.efi", f"http://{SERVER_IP}:8080/{PROXY_MAC}/auto.ipxe"}, ctx
    assert [r.filename for r in tftp_requests(frames)] == ["ipxe.efi", "ipxe.efi", "autoexec.ipxe"], ctx
    assert [r.path for r in http_requests(frames)] == [f"/{PROXY_MAC}/auto.ipxe"], ctx
    assert_clean_smee(boot)
