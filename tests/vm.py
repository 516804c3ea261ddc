"""QEMU machines for end-to-end boot tests, and a timeline of what they did on the wire.

A :class:`VM` is one ``qemu-system-x86_64`` (TCG: KVM does not work on the CI
machines) started with ``ip netns exec NS`` on a tap of a :class:`netns.Lab`,
with the command lines of ../shared/reference/e2e-notes.md:

* ``firmware="bios"``: SeaBIOS (q35, ``graphics=off`` so that SeaBIOS mirrors
  the option ROM's text console to the serial port), booting the NIC's option
  ROM. For ``nic="e1000"`` QEMU's default ROM is ``pxe-e1000.rom``, an iPXE
  (Debian package ipxe-qemu).
* ``firmware="uefi"``: OVMF (read-only CODE, a private writable copy of VARS).
  ``nic="virtio-net-pci", romfile=""`` gives EDK2's own PXE client;
  ``nic="e1000"`` gives the iPXE EFI option ROM (``efi-e1000.rom``).
* ``firmware="aarch64-uefi"``: an emulated arm64 machine, ``qemu-system-aarch64 -machine virt``
  (``-cpu cortex-a57``, 1 GiB) with AAVMF (Debian's qemu-efi-aarch64: read-only CODE, a private
  writable copy of VARS). Use ``nic="virtio-net-pci", romfile=""``: EDK2's own PXE client,
  which sends DHCP option 93 = 11 (arm64 UEFI). Much slower than x86 under TCG.

The serial console goes to a file; :meth:`VM.wait_serial` waits, with a
deadline, for a regex in it (escape sequences, CR and LF removed first, since
the console wraps at 80 columns). A VM ends itself with ``-no-reboot`` when
the guest powers off; otherwise the lab stops it by pid at teardown (or the
test calls :meth:`VM.stop`). Only one VM should run at a time on CI machines
(2 cores, TCG): boots slow down and time out otherwise.

:func:`timeline` turns a tcpdump capture (classic pcap, any filter) plus the
VM's start time and marker times into lines like::

    t+  3.21s DHCP DISCOVER 52:54:00:00:00:01 arch 0 (user class iPXE)
    t+  3.22s DHCP OFFER    from 192.0.2.1 yiaddr 192.0.2.11 file 'http://…/auto.ipxe'
    t+  5.10s TFTP RRQ ipxe.efi (tsize 0, blksize 1468, windowsize 4) from 192.0.2.11:1234
    t+ 12.30s HTTP GET /52:54:00:00:00:01/auto.ipxe -> 192.0.2.1:8080
    t+ 14.00s marker SMEE-E2E-MARKER …

(seconds since the VM was started).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from netns import Lab, LabError, Netns, Process, _tail, which

QEMU = "qemu-system-x86_64"
QEMU_AARCH64 = "qemu-system-aarch64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: QEMU's NIC option ROMs (iPXE 2019), package ipxe-qemu.
ROM_DIR = Path("/usr/lib/ipxe/qemu")
#: arm64 UEFI firmware (EDK2 ArmVirtQemu), package qemu-efi-aarch64; both are 64 MiB pflash images.
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")

#: Debian package for each file the machines need (scripts/install-test-packages installs them).
FILE_PACKAGES = {
    OVMF_CODE: "ovmf",
    OVMF_VARS: "ovmf",
    ROM_DIR / "pxe-e1000.rom": "ipxe-qemu",
    ROM_DIR / "efi-e1000.rom": "ipxe-qemu",
    AAVMF_CODE: "qemu-efi-aarch64",
    AAVMF_VARS: "qemu-efi-aarch64",
}

Firmware = Literal["bios", "uefi", "aarch64-uefi"]

#: Held (flock) by every running VM: TCG boots on 2 cores time out when two machines run at
#: once, also from two pytest processes.
LOCK_FILE = Path("/tmp/smee-e2e-qemu.lock")

# ANSI/VT100 sequences (CSI ... final byte, charset selection, single-character escapes).
_ESCAPES = re.compile(rb"\x1b\[[0-9;?=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def missing_reason(firmware: Firmware = "bios", nic: str = "e1000", romfile: str | None = None) -> str | None:
    """Why such a machine cannot run here (not root, QEMU or a firmware file missing), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    qemu = qemu_binary(firmware)
    if which(qemu) is None:
        package = "qemu-system-arm" if firmware == "aarch64-uefi" else "qemu-system-x86"
        return f"needs {qemu} (apt-get install {package})"
    needed: list[Path] = []
    if firmware == "uefi":
        needed += [OVMF_CODE, OVMF_VARS]
    elif firmware == "aarch64-uefi":
        needed += [AAVMF_CODE, AAVMF_VARS]
    if romfile is None and firmware == "aarch64-uefi":
        pass  # QEMU's default ROMs are x86 code: an arm64 machine wants romfile="" (EDK2's PXE)
    elif romfile is None:
        prefix = "efi-" if firmware == "uefi" else "pxe-"
        if nic == "e1000":
            needed.append(ROM_DIR / f"{prefix}e1000.rom")
    elif romfile:
        needed.append(Path(romfile))
    for path in needed:
        if not path.exists():
            return f"needs {path} (apt-get install {FILE_PACKAGES.get(path, 'the package that ships it')})"
    return None


def qemu_binary(firmware: Firmware) -> str:
    """The QEMU system emulator a firmware variant runs on."""
    return QEMU_AARCH64 if firmware == "aarch64-uefi" else QEMU


def console_text(raw: bytes) -> str:
    """A serial log as plain text lines: escape sequences and stray control characters removed,
    CR LF and lone CR turned into LF."""
    raw = _ESCAPES.sub(b"", raw)
    raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    raw = _CONTROL.sub(b"", raw)
    return raw.decode("utf-8", errors="replace")


def flat(text: str) -> str:
    """Console text with the line breaks removed, so that a line wrapped at 80 columns matches."""
    return text.replace("\n", "")


class QemuProcess(Process):
    """The QEMU process; its failure report includes the tail of the serial console."""

    serial: Path

    def describe(self, lines: int = 80) -> str:
        try:
            console = console_text(self.serial.read_bytes())
        except FileNotFoundError:
            console = "(no serial log)"
        return super().describe(20) + f"\n    serial console {self.serial}:\n{_tail(console, lines)}"


@dataclass
class VM:
    """One QEMU machine on ``tap`` in namespace ``ns``. ``start()`` launches it (the lab stops it
    by pid at teardown); ``romfile``: None = QEMU's default ROM for the NIC, "" = none, else a path;
    ``memory`` (MiB): None = 512 (x86) or 1024 (aarch64-uefi)."""

    lab: Lab
    ns: Netns
    tap: str
    mac: str
    firmware: Firmware = "bios"
    nic: str = "e1000"
    romfile: str | None = None
    memory: int | None = None
    name: str = "vm"
    uuid: str | None = None
    extra: Sequence[str] = ()

    proc: QemuProcess | None = field(default=None, init=False)
    serial: Path = field(init=False)
    #: wall-clock time (time.time()) just before QEMU was launched: the origin of the timeline
    started_wall: float = field(default=0.0, init=False)
    started: float = field(default=0.0, init=False)  # time.monotonic() at launch
    #: (seconds since start, what) for each serial match and the exit, for the timeline
    marks: list[tuple[float, str]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.serial = self.lab.path(f"{self.name}.serial.log")
        self._lock: int | None = None

    def _acquire(self, timeout: float) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock = fd
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LabError(f"another VM held {LOCK_FILE} for {timeout:g} s") from None
                time.sleep(0.2)

    def _release(self) -> None:
        if self._lock is not None:
            fd, self._lock = self._lock, None
            os.close(fd)  # closing drops the flock

    def argv(self) -> list[str]:
        if self.firmware == "aarch64-uefi":
            return self._argv_aarch64()
        qemu = which(QEMU) or QEMU
        argv = [qemu, "-name", self.name, "-machine", "q35,accel=tcg" + (",graphics=off" if self.firmware == "bios" else ""),
                "-m", str(self.memory or 512), "-nodefaults", "-display", "none", "-vga", "none",
                "-serial", f"file:{self.serial}", "-no-reboot"]
        if self.uuid:
            argv += ["-uuid", self.uuid]
        if self.firmware == "uefi":
            vars_copy = self.lab.path(f"{self.name}.OVMF_VARS.fd")
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        device = f"{self.nic},netdev=n0,mac={self.mac},bootindex=1"
        if self.romfile is not None:
            device += f",romfile={self.romfile}"
        argv += ["-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no", "-device", device]
        if self.firmware == "bios":
            argv += ["-boot", "order=n,strict=on"]
        return argv + list(self.extra)

    def _argv_aarch64(self) -> list[str]:
        """``virt`` machine, Cortex-A57 (cheaper to emulate than ``max``), AAVMF in pflash (CODE
        read-only, a private copy of VARS), the NIC first in the boot order, the PL011 serial
        port (AAVMF's console) to the log file."""
        qemu = which(QEMU_AARCH64) or QEMU_AARCH64
        vars_copy = self.lab.path(f"{self.name}.AAVMF_VARS.fd")
        shutil.copyfile(AAVMF_VARS, vars_copy)
        argv = [qemu, "-name", self.name, "-machine", "virt,accel=tcg", "-cpu", "cortex-a57",
                "-m", str(self.memory or 1024), "-nodefaults", "-display", "none",
                "-serial", f"file:{self.serial}", "-no-reboot",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        if self.uuid:
            argv += ["-uuid", self.uuid]
        device = f"{self.nic},netdev=n0,mac={self.mac},bootindex=1"
        if self.romfile is not None:
            device += f",romfile={self.romfile}"
        argv += ["-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no", "-device", device]
        return argv + list(self.extra)

    def start(self, lock_timeout: float = 600.0) -> VM:
        """Launch QEMU (after any other VM of this machine has ended: see LOCK_FILE)."""
        reason = missing_reason(self.firmware, self.nic, self.romfile)
        if reason:
            raise LabError(reason)
        argv = self.argv()
        self._acquire(lock_timeout)
        self.lab.defer(f"release {LOCK_FILE} ({self.name})", self._release)
        self.serial.touch()
        self.started_wall = time.time()
        proc = QemuProcess(self.name, self.ns, argv, self.lab.path(f"{self.name}.log"))
        proc.serial = self.serial
        self.started = proc.started
        self.proc = proc
        self.lab.processes.append(proc)
        self.lab.defer(f"stop {self.name} (pid {proc.pid})", proc.stop)
        return self

    # -- reading the console -------------------------------------------------

    def console(self) -> str:
        """The serial console so far, as text lines (see :func:`console_text`)."""
        try:
            return console_text(self.serial.read_bytes())
        except FileNotFoundError:
            return ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def wait_serial(self, pattern: str, timeout: float, label: str | None = None,
                    until_exit_ok: bool = False) -> re.Match[str]:
        """The first match of ``pattern`` in the flattened console (:func:`flat`); LabError after
        ``timeout`` s or when QEMU exits without printing it. The time is recorded in ``marks``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive()
            found = rx.search(flat(self.console()))
            if found:
                self.marks.append((self.elapsed(), label or f"serial: {found.group(0)}"))
                return found
            if not alive:
                raise LabError(f"{self.name} exited ({self.proc.returncode if self.proc else None}) "
                               f"after {self.elapsed():.1f} s without printing {pattern!r}\n"
                               f"{self.describe()}")
            if time.monotonic() >= deadline:
                raise LabError(f"{self.name}: no {pattern!r} on the serial console within "
                               f"{timeout:g} s\n{self.describe()}")
            time.sleep(0.1)

    def wait_exit(self, timeout: float) -> bool:
        """Wait (bounded) for the guest to end QEMU itself; True if it did. Recorded in ``marks``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                self.marks.append((self.elapsed(), f"QEMU exited ({self.proc.returncode})"))
                self._release()
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop QEMU by pid (SIGTERM, then SIGKILL); idempotent."""
        if self.proc is not None and self.proc.alive():
            self.proc.stop(timeout=5)
            self.marks.append((self.elapsed(), "QEMU stopped by the test"))
        if self.proc is not None and not self.proc.alive():
            self._release()

    def describe(self, lines: int = 60) -> str:
        if self.proc is None:
            return f"{self.name}: not started"
        return self.proc.describe(lines)


# --- capture → timeline -----------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One IPv4 UDP or TCP segment from a pcap, with its capture time (wall clock)."""

    ts: float
    proto: Literal["udp", "tcp"]
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes
    tcp_flags: int = 0
    tcp_seq: int = 0


def read_frames(path: Path) -> list[Frame]:
    """Every IPv4 UDP/TCP frame of a classic pcap (Ethernet or Linux cooked), in order."""
    if not path.exists() or path.stat().st_size < 24:
        return []
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    offset, out = 24, []
    while offset + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16: offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < caplen:
            break  # a record still being written
        ts = sec + frac / (1e9 if nano else 1e6)
        if linktype == 1:
            if len(frame) < 14:
                continue
            ethertype, l3 = struct.unpack_from("!H", frame, 12)[0], 14
        elif linktype == 113:
            if len(frame) < 16:
                continue
            ethertype, l3 = struct.unpack_from("!H", frame, 14)[0], 16
        else:
            raise ValueError(f"{path}: unsupported link type {linktype}")
        if ethertype != 0x0800 or len(frame) < l3 + 20:
            continue
        ihl = (frame[l3] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, l3 + 2)[0]
        proto = frame[l3 + 9]
        src = str(IPv4Address(frame[l3 + 12: l3 + 16]))
        dst = str(IPv4Address(frame[l3 + 16: l3 + 20]))
        l4 = l3 + ihl
        end = min(len(frame), l3 + total)
        if proto == 17 and end >= l4 + 8:
            sport, dport, length = struct.unpack_from("!HHH", frame, l4)
            out.append(Frame(ts, "udp", (src, sport), (dst, dport), frame[l4 + 8: min(end, l4 + length)]))
        elif proto == 6 and end >= l4 + 20:
            sport, dport, seq = struct.unpack_from("!HHI", frame, l4)
            doff = (frame[l4 + 12] >> 4) * 4
            out.append(Frame(ts, "tcp", (src, sport), (dst, dport), frame[l4 + doff: end],
                             tcp_flags=frame[l4 + 13], tcp_seq=seq))
    return out


_DHCP_NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
               7: "RELEASE", 8: "INFORM"}


@dataclass(frozen=True)
class DhcpMessage:
    """A decoded DHCP message of a capture (what the boot tests assert on)."""

    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    type: str
    xid: int
    mac: str
    yiaddr: str
    siaddr: str
    file: str
    user_class: str | None
    arch: int | None
    vendor_class: str | None
    server_id: str | None
    options: dict[int, bytes]

    @property
    def is_reply(self) -> bool:
        return self.type in ("OFFER", "ACK", "NAK")


def dhcp_messages(frames: Iterable[Frame]) -> list[DhcpMessage]:
    from smee.dhcp.packet import DHCPParseError, parse

    out = []
    for f in frames:
        if f.proto != "udp" or not ({f.src[1], f.dst[1]} & {67, 68, 4011}):
            continue
        try:
            p = parse(f.payload)
        except DHCPParseError:
            continue
        opts = p.options
        uc = opts.get(77)
        if uc is not None:
            # RFC 3004 user class is length-prefixed; iPXE sends the bare string
            uc_text = uc.decode("latin-1")
            if uc and uc[0] == len(uc) - 1 and uc[1:].isascii():
                uc_text = uc[1:].decode("latin-1")
        arch = int.from_bytes(opts[93][:2], "big") if len(opts.get(93, b"")) >= 2 else None
        vc = opts.get(60)
        sid = opts.get(54)
        out.append(DhcpMessage(
            ts=f.ts, src=f.src, dst=f.dst, type=_DHCP_NAMES.get(p.msg_type or 0, f"type {p.msg_type}"),
            xid=p.xid, mac=p.mac, yiaddr=str(IPv4Address(p.yiaddr)), siaddr=str(IPv4Address(p.siaddr)),
            file=p.file.split(b"\0", 1)[0].decode("latin-1"),
            user_class=uc_text if uc is not None else None, arch=arch,
            vendor_class=vc.decode("latin-1") if vc is not None else None,
            server_id=str(IPv4Address(sid)) if sid is not None and len(sid) == 4 else None,
            options=dict(opts),
        ))
    return out


@dataclass(frozen=True)
class TftpRequest:
    ts: float
    client: tuple[str, int]
    server: tuple[str, int]
    filename: str
    options: dict[str, str]


def tftp_requests(frames: Iterable[Frame]) -> list[TftpRequest]:
    """Every TFTP read request (to port 69) of a capture."""
    out = []
    for f in frames:
        if f.proto == "udp" and f.dst[1] == 69 and f.payload[:2] == b"\x00\x01":
            parts = f.payload[2:].split(b"\0")
            name = parts[0].decode("latin-1") if parts else ""
            words = [p.decode("latin-1") for p in parts[2:]]
            opts = {words[i].lower(): words[i + 1] for i in range(0, len(words) - 1, 2)}
            out.append(TftpRequest(f.ts, f.src, f.dst, name, opts))
    return out


@dataclass(frozen=True)
class HttpRequest:
    ts: float
    client: tuple[str, int]
    server: tuple[str, int]
    method: str
    path: str


def _tcp_segments(frames: Iterable[Frame]) -> Iterator[Frame]:
    """TCP segments with data, each once (retransmissions left out)."""
    seen: set[tuple[tuple[str, int], tuple[str, int], int]] = set()
    for f in frames:
        if f.proto == "tcp" and f.payload:
            key = (f.src, f.dst, f.tcp_seq)
            if key not in seen:
                seen.add(key)
                yield f


def http_requests(frames: Iterable[Frame]) -> list[HttpRequest]:
    """Every HTTP request line seen in a TCP segment of a capture (retransmissions once)."""
    out = []
    rx = re.compile(rb"^(GET|HEAD|POST|PUT) (\S+) HTTP/1\.[01]\r\n")
    for f in _tcp_segments(frames):
        m = rx.match(f.payload)
        if m:
            out.append(HttpRequest(f.ts, f.src, f.dst, m.group(1).decode(), m.group(2).decode("latin-1")))
    return out


def _dhcp_line(m: DhcpMessage, ipxe_like: bool) -> str:
    who = "DHCP (iPXE)" if ipxe_like else "DHCP"
    if m.is_reply:
        name = {"67": "", "4011": " proxy:4011"}.get(str(m.src[1]), "")
        text = f"{who} {m.type:<8} from {m.src[0]}{name}"
        if m.yiaddr != "0.0.0.0":
            text += f" yiaddr {m.yiaddr}"
        else:
            text += " (no address: proxy)"
        text += f" file {m.file!r}" if m.file else " file ''"
        if m.siaddr != "0.0.0.0":
            text += f" next-server {m.siaddr}"
        if m.vendor_class:
            text += f" opt60 {m.vendor_class!r}"
        return text
    text = f"{who} {m.type:<8} {m.mac}"
    if m.arch is not None:
        text += f" arch {m.arch}"
    text += f" (user class {m.user_class})" if m.user_class is not None else " (no user class)"
    if m.src[0] != "0.0.0.0":
        text += f" from {m.src[0]}"
    if m.dst[1] == 4011:
        text += " to :4011"
    return text


def timeline(pcap: Path, vm: VM, extra: Iterable[tuple[float, str]] = ()) -> list[tuple[float, str]]:
    """(seconds since ``vm`` started, event) for every DHCP message, TFTP read request, error
    and end of transfer, HTTP request and response status in ``pcap``, plus ``vm.marks`` and
    ``extra`` (same time base), sorted by time."""
    frames = read_frames(pcap)
    origin = vm.started_wall
    events: list[tuple[float, str]] = []
    # an exchange (xid) is "(iPXE)" when its requests carry a user class (iPXE sends one)
    messages = dhcp_messages(frames)
    ipxe_xids = {m.xid for m in messages if not m.is_reply and m.user_class is not None}
    for m in messages:
        events.append((m.ts - origin, _dhcp_line(m, m.xid in ipxe_xids)))
    # TFTP: RRQs, then per transfer endpoint: OACK, ERRORs, and the last DATA block
    requests = tftp_requests(frames)
    endpoints = {r.client: r for r in requests}
    for r in requests:
        opts = ", ".join(f"{k} {v}" for k, v in r.options.items())
        events.append((r.ts - origin, f"TFTP RRQ {r.filename}" + (f" ({opts})" if opts else "")
                       + f" from {r.client[0]}:{r.client[1]}"))
    transfers: dict[tuple[tuple[str, int], str], dict[str, float | int]] = {}
    current: dict[tuple[str, int], TftpRequest] = {}
    req_iter = iter(sorted(requests, key=lambda r: r.ts))
    pending = next(req_iter, None)
    for f in frames:
        while pending is not None and pending.ts <= f.ts:
            current[pending.client] = pending
            pending = next(req_iter, None)
        if f.proto != "udp" or len(f.payload) < 4:
            continue
        op = struct.unpack_from("!H", f.payload)[0]
        if f.dst in endpoints and f.src[1] != 67 and op in (3, 5, 6) and f.dst[1] not in (67, 68):
            req = current.get(f.dst)
            if req is None:
                continue
            key = (f.dst, f"{req.filename}@{req.ts}")
            t = transfers.setdefault(key, {"blocks": 0, "bytes": 0, "last": f.ts, "start": req.ts})
            if op == 3:
                block = struct.unpack_from("!H", f.payload, 2)[0]
                if block == (int(t["blocks"]) + 1) & 0xFFFF:  # a new block, not a retransmission
                    t["blocks"] = int(t["blocks"]) + 1
                    t["bytes"] = int(t["bytes"]) + len(f.payload) - 4
                t["last"] = f.ts
            elif op == 5:
                code = struct.unpack_from("!H", f.payload, 2)[0]
                msg = f.payload[4:].split(b"\0")[0].decode("latin-1")
                events.append((f.ts - origin, f"TFTP ERROR {code} {msg!r} from server to {f.dst[0]}:{f.dst[1]}"))
        elif f.src in endpoints and op == 5 and f.src[1] not in (67, 68):
            code = struct.unpack_from("!H", f.payload, 2)[0]
            msg = f.payload[4:].split(b"\0")[0].decode("latin-1")
            events.append((f.ts - origin, f"TFTP ERROR {code} {msg!r} from client {f.src[0]}:{f.src[1]}"
                           + (f" ({current[f.src].filename})" if f.src in current else "")))
    for (client, label), t in transfers.items():
        if int(t["bytes"]):
            name = label.rsplit("@", 1)[0]
            secs = float(t["last"]) - float(t["start"])
            events.append((float(t["last"]) - origin,
                           f"TFTP sent {name}: {int(t['bytes'])} bytes in {secs:.2f}s to {client[0]}:{client[1]}"))
    # HTTP: request lines and status lines
    for f in _tcp_segments(frames):
        m = re.match(rb"^(GET|HEAD|POST|PUT) (\S+) HTTP/1\.[01]\r\n", f.payload)
        if m:
            line = f"HTTP {m.group(1).decode()} {m.group(2).decode('latin-1')} -> {f.dst[0]}:{f.dst[1]}"
            events.append((f.ts - origin, line))
            continue
        m = re.match(rb"^HTTP/1\.[01] (\d{3}[^\r\n]*)\r\n", f.payload)
        if m:
            length = re.search(rb"\r\ncontent-length: *(\d+)", f.payload, re.IGNORECASE)
            size = f", {int(length.group(1))} bytes" if length else ""
            events.append((f.ts - origin, f"HTTP {m.group(1).decode('latin-1')}{size} from {f.src[0]}:{f.src[1]}"))
    events += list(vm.marks) + list(extra)
    return sorted(events, key=lambda e: e[0])


def format_timeline(title: str, events: Sequence[tuple[float, str]], total: float | None = None) -> str:
    lines = [f"== {title}" + (f" (total {total:.1f}s)" if total is not None else "")]
    lines += [f"t+{t:6.2f}s {what}" for t, what in events]
    return "\n".join(lines)
