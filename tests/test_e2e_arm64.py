"""An emulated arm64 UEFI machine network-boots from ``twistd smee``.

``qemu-system-aarch64 -machine virt`` (TCG, Cortex-A57) with AAVMF, Debian's arm64 EDK2
(package qemu-efi-aarch64), and a virtio NIC without option ROM, so EDK2's own PXE client
boots: it sends option 93 = 11 (arm64 UEFI); smee answers with ``snp.efi`` (Debian trixie's
``ipxe-arm64.efi``, put in ipxe/bin by ``make bindata``); EDK2 fetches it by TFTP and runs it;
iPXE asks the TFTP server for ``autoexec.ipxe``, which makes it DHCP as "Tinkerbell" and chain
the record's script; the script echoes the marker and powers off.

Same bench as tests/test_e2e_boot.py (smee in namespace ``srv``, the VM's tap on a bridge in
``cli``, a capture on the tap) and the same one-VM-at-a-time lock (vm.LOCK_FILE). Its
timeline goes to the terminal summary (tests/summary.py).

Under TCG on a 2-core machine the whole boot took ~20 s (AAVMF reaches its PXE client after
~6.5 s, snp.efi runs at ~10.5 s, the marker at ~19 s), as fast as the x86 boots, so it is part
of the normal run (scripts/install-test-packages installs qemu-system-arm and
qemu-efi-aarch64); each boot is still bounded by BOOT_TIMEOUT.
"""

from __future__ import annotations

import re
import time

import pytest
from netns import Lab, netns_lab_fixture  # noqa: F401  (provides the netns_lab fixture)
from test_e2e_boot import (
    MARKER,
    NO_POWEROFF,
    SERVER_IP,
    TINK_SERVER,
    Bench,
    Boot,
    _skip_unless,
    bench,
    record,
)
from vm import VM, dhcp_messages, flat, http_requests, read_frames, tftp_requests

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ARM64_MAC = "52:54:00:e2:e0:a1"
ARM64_IP = "192.0.2.41"

#: Bound of one arm64 boot (QEMU start to marker) under TCG; seen: ~19 s.
BOOT_TIMEOUT = 300.0
#: What AAVMF prints on its console when its PXE client starts (a timeline milestone only).
PXE_START = r">>Start PXE over IPv4"

HARDWARE = record(ARM64_MAC, ARM64_IP).replace("  arch: x86_64\n", "  arch: aarch64\n")


def start_smee(b: Bench) -> None:
    b.smee = b.lab.smee(
        b.srv, HARDWARE,
        f"--public-ip={SERVER_IP}", f"--dhcp-iface={b.s_if}", "--log-level=debug",
        f"--tink-server={TINK_SERVER}", "--syslog-enabled=false",
        listen=(("udp", 67), ("udp", 69), ("tcp", 8080)),
    )


def run_arm64_to_marker(b: Bench, vm: VM, title: str) -> Boot:
    """Like test_e2e_boot.run_to_marker, with the arm64 bound, and the firmware milestones seen
    on the serial console marked on the timeline."""
    boot = Boot(title, vm, b)
    vm.start()
    marker, pxe = re.compile(MARKER), re.compile(PXE_START)
    pxe_seen = False
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        alive = vm.alive()
        text = flat(vm.console())
        if not pxe_seen and pxe.search(text):
            pxe_seen = True
            vm.marks.append((vm.elapsed(), "AAVMF console: Start PXE over IPv4 (seen)"))
        found = marker.search(text)
        if found:
            vm.marks.append((vm.elapsed(), "marker"))
            break
        if not alive or time.monotonic() >= deadline:
            why = (f"QEMU exited ({vm.proc.returncode if vm.proc else None})" if not alive
                   else f"no marker within {BOOT_TIMEOUT:g} s")
            vm.stop()
            boot.report()
            pytest.fail(f"{title}: {why}\n{boot.context()}\n{vm.describe()}")
        time.sleep(0.1)
    boot.mac, boot.ip = found.group(1), found.group(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and vm.alive() and NO_POWEROFF not in vm.console():
        time.sleep(0.1)
    boot.powered_off = vm.wait_exit(0.5)
    if not boot.powered_off:
        if NO_POWEROFF in vm.console():
            vm.marks.append((vm.elapsed(), "iPXE has no poweroff command"))
        vm.stop()
    boot.report()
    return boot


def test_aavmf_edk2_pxe_tftp_snp_efi_then_autoexec(netns_lab: Lab) -> None:
    """AAVMF's own PXE (virtio-net, arch 11) → OFFER snp.efi → TFTP snp.efi (arm64 iPXE) →
    autoexec.ipxe → iPXE DHCP as "Tinkerbell" → script → marker → poweroff."""
    _skip_unless("aarch64-uefi", "virtio-net-pci", "", binaries=("snp.efi",))
    b = bench(netns_lab)
    start_smee(b)
    vm = VM(b.lab, b.cli, b.tap, ARM64_MAC, firmware="aarch64-uefi", nic="virtio-net-pci",
            romfile="", name="vm-aarch64-uefi-virtio")
    boot = run_arm64_to_marker(b, vm, "AAVMF EDK2 PXE (arm64, virtio) → snp.efi")
    assert (boot.mac, boot.ip) == (ARM64_MAC, ARM64_IP), f"marker says mac={boot.mac} ip={boot.ip}\n{boot.context()}"
    assert boot.powered_off, f"snp.efi did not power the VM off\n{boot.context()}"

    frames = read_frames(b.cap.pcap)
    msgs = dhcp_messages(frames)
    firmware = [m for m in msgs if not m.is_reply and m.user_class is None]
    ipxe = [m for m in msgs if not m.is_reply and m.user_class is not None]
    assert firmware and {m.arch for m in firmware} == {11}, boot.text
    assert ipxe and {m.user_class for m in ipxe} == {"Tinkerbell"}, boot.text
    # iPXE arm64 still says arch 11 in its own DHCP
    assert {m.arch for m in ipxe} == {11}, boot.text
    offers = [m for m in msgs if m.type == "OFFER"]
    assert offers and offers[0].file == "snp.efi" and offers[0].yiaddr == ARM64_IP, boot.text
    acks = [m for m in msgs if m.type == "ACK"]
    assert [(a.yiaddr, a.file) for a in acks] == [
        (ARM64_IP, "snp.efi"),
        (ARM64_IP, f"http://{SERVER_IP}:8080/{ARM64_MAC}/auto.ipxe"),
    ], boot.text
    names = [r.filename for r in tftp_requests(frames)]
    # EDK2 asks for the size first (aborting after the OACK), then for the file
    assert names == ["snp.efi", "snp.efi", "autoexec.ipxe"], boot.text
    assert [r.path for r in http_requests(frames)] == [f"/{ARM64_MAC}/auto.ipxe"], boot.text
    assert b.smee is not None and "Traceback" not in b.smee.text(), boot.context()
