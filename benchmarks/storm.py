"""Boot-storm simulator: N machines netbooting at once, PXE ROM → undionly.kpxe → iPXE → script.

Run by ``bench_storm`` in the client namespace (one process, one CPU). Each
simulated machine goes through what a legacy-BIOS PXE boot puts on the wire:

1. DHCP DISCOVER/OFFER/REQUEST/ACK as a PXE ROM (option 60 ``PXEClient:Arch:00000:UNDI:002001``,
   93 = 0, 94, 97); the OFFER must carry the machine's reserved address and boot file
   ``undionly.kpxe``;
2. TFTP RRQ for that file from the machine's own address (blksize 1468, tsize 0), lockstep,
   tsize and every block checked byte for byte against the file;
3. DHCP again as iPXE (user class ``iPXE``, option 175); the ACK names the script URL
   (``file`` field or option 67);
4. HTTP GET of the script from the machine's own address: 200 and a body starting ``#!ipxe``.

The simulator is the DHCP relay agent of every machine (perfdhcp style): it binds
UDP port 67, sets ``giaddr`` to the relay address of the machine's subnet, and the
server answers unicast to ``giaddr:67``. Retries are firmware-like: DHCP 4 tries
(1, 2, 4, 8 s), TFTP 5 retransmissions 1 s apart, HTTP 2 attempts. A machine that runs
out of retries, or is unfinished at the overall bound, is *lost*; its last stage and the
reason are reported.

It is one epoll loop with per-machine state and no per-packet objects, so that it
stays cheaper than the servers it drives (its own CPU time is in the report).
Packet building and parsing are self-contained (no smee import): tests check them
against smee's codecs (tests/test_storm_sim.py).

    python storm.py CONFIG.json   # prints one JSON document with the results
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import resource
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# --- DHCP codec ---------------------------------------------------------------------

DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
MAGIC = b"\x63\x82\x53\x63"
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_FIXED = _HEADER.size + len(MAGIC)  # 240
#: PXE ROM (Intel/EDK2-like) parameter request list
PXE_PRL = bytes((1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59,
                 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135))
#: iPXE's parameter request list (captures/CLIENT-FINGERPRINTS.txt)
IPXE_PRL = bytes((1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134, 135,
                  175, 203))
PXE_VENDOR_CLASS = b"PXEClient:Arch:00000:UNDI:002001"
#: option 175 as Debian's iPXE sends it (captures/CLIENT-FINGERPRINTS.txt): bus-id PCI 8086:100e,
#: version 1.0.0, and its feature flags (iPXE's include/ipxe/features.h codes)
IPXE_ENCAP = b"".join(bytes((code, len(value))) + value for code, value in (
    (0xb1, bytes.fromhex("018086100e")),  # bus-id: type 1 (PCI), vendor 8086, device 100e
    (0xeb, b"\x01\x00\x00"),              # version 1.0.0
    (0x17, b"\x01"),                        # dns
    (0x22, b"\x01"),                        # elf
    (0x13, b"\x01"),                        # http
    (0x11, b"\x01"),                        # iscsi
    (0x27, b"\x01"),                        # menu
    (0x19, b"\x01"),                        # multiboot
    (0x29, b"\x01"),                        # nfs
    (0x10, b"\x02"),                        # pxeext
    (0x21, b"\x01"),                        # pxe
    (0x15, b"\x01"),                        # tftp
    (0x18, b"\x01"),                        # bzimage
    (0x12, b"\x01"),                        # aoe
))


def encode_options(options: list[tuple[int, bytes]]) -> bytes:
    """TLV-encode (values up to 255 bytes: all the simulator sends) and END."""
    return b"".join(bytes((code, len(value))) + value for code, value in options) + b"\xff"


def build_request(msg_type: int, xid: int, mac: bytes, giaddr: bytes, guid: bytes, ipxe: bool,
                  requested: bytes | None = None, server_id: bytes | None = None, secs: int = 0) -> bytes:
    """A relayed DISCOVER or REQUEST as a PXE ROM (``ipxe`` False) or iPXE (True) would send it."""
    opts: list[tuple[int, bytes]] = [(53, bytes((msg_type,))), (57, b"\x05\xc0")]  # max size 1472
    if requested is not None:
        opts.append((50, requested))
    if server_id is not None:
        opts.append((54, server_id))
    if ipxe:
        opts += [(93, b"\x00\x00"), (94, b"\x01\x02\x01"), (60, PXE_VENDOR_CLASS), (77, b"iPXE"),
                 (55, IPXE_PRL), (175, IPXE_ENCAP), (61, b"\x01" + mac), (97, b"\x00" + guid)]
    else:
        opts += [(55, PXE_PRL), (97, b"\x00" + guid), (94, b"\x01\x02\x01"), (93, b"\x00\x00"),
                 (60, PXE_VENDOR_CLASS)]
    header = _HEADER.pack(1, 1, 6, 1, xid, secs, 0x8000, b"\0" * 4, b"\0" * 4, b"\0" * 4, giaddr,
                          mac.ljust(16, b"\0"), b"\0" * 64, b"\0" * 128)
    message = header + MAGIC + encode_options(opts)
    return message.ljust(300, b"\0")


@dataclass(slots=True)
class Reply:
    """The parts of a server's BOOTREPLY the simulator checks."""

    xid: int
    chaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    file: bytes
    options: dict[int, bytes]

    @property
    def msg_type(self) -> int | None:
        value = self.options.get(53)
        return value[0] if value and len(value) == 1 else None

    @property
    def boot_file(self) -> str:
        """Option 67 if present (iPXE prefers it), else the ``file`` header field."""
        raw = self.options.get(67) or self.file
        return raw.split(b"\0", 1)[0].decode("latin-1")


def _options_into(data: bytes, start: int, end: int, into: dict[int, bytes]) -> None:
    i = start
    while i < end:
        code = data[i]
        if code == 0:
            i += 1
            continue
        if code == 255 or i + 1 >= end:
            return
        stop = i + 2 + data[i + 1]
        if stop > end:
            raise ValueError(f"option {code} runs past the end")
        into[code] = into.get(code, b"") + data[i + 2:stop]
        i = stop


def parse_reply(data: bytes) -> Reply | None:
    """A BOOTREPLY with the DHCP magic, else None (option 52 overload honoured)."""
    if len(data) < _FIXED or data[0] != 2 or data[236:240] != MAGIC:
        return None
    (_, _, hlen, _, xid, _, _, _, yiaddr, siaddr, _, chaddr, sname, file) = _HEADER.unpack_from(data)
    options: dict[int, bytes] = {}
    try:
        _options_into(data, _FIXED, len(data), options)
        overload = options.pop(52, b"")
        if overload and overload[0] & 1:
            _options_into(file, 0, len(file), options)
            file = b""
        if overload and overload[0] & 2:
            _options_into(sname, 0, len(sname), options)
    except ValueError:
        return None
    return Reply(xid, chaddr[:hlen], yiaddr, siaddr, file.split(b"\0", 1)[0], options)


# --- TFTP codec ---------------------------------------------------------------------

T_RRQ, T_DATA, T_ACK, T_ERROR, T_OACK = 1, 3, 4, 5, 6
_H = struct.Struct("!HH")


def tftp_rrq(filename: str, options: dict[str, str]) -> bytes:
    """RRQ in octet mode with RFC 2347 options in the given order."""
    body = f"{filename}\0octet\0" + "".join(f"{k}\0{v}\0" for k, v in options.items())
    return struct.pack("!H", T_RRQ) + body.encode("latin-1")


def tftp_ack(block: int) -> bytes:
    return _H.pack(T_ACK, block & 0xFFFF)


def tftp_oack_options(data: bytes) -> dict[str, str]:
    """Options of an OACK (names lower-cased)."""
    fields = data[2:].split(b"\0")
    return {fields[i].decode("latin-1").lower(): fields[i + 1].decode("latin-1")
            for i in range(0, len(fields) - 1, 2) if fields[i]}


def tftp_error_text(data: bytes) -> str:
    code = _H.unpack_from(data)[1] if len(data) >= 4 else -1
    text = data[4:].split(b"\0", 1)[0].decode("latin-1", "replace")
    return f"ERROR {code}: {text}"


def split_blocks(data: bytes, blksize: int) -> list[bytes]:
    """The payloads of DATA 1, 2, … for ``data``; a size that is a multiple of ``blksize`` ends
    with an empty block (RFC 1350: the transfer ends with a short block)."""
    return [data[i:i + blksize] for i in range(0, len(data) + 1, blksize)]


# --- machines -------------------------------------------------------------------------

DHCP_TIMEOUTS = (1.0, 2.0, 4.0, 8.0)
#: each DHCP timeout is randomized by ±25% (RFC 2131 §4.1: ±1 s on its 4 s base), so that
#: machines that lost a datagram in the same burst do not all retransmit in the same instant
DHCP_JITTER = 0.25
TFTP_TIMEOUT, TFTP_TRIES = 1.0, 5
HTTP_TIMEOUT, HTTP_TRIES = 10.0, 2
BLKSIZE = 1468


def machine_mac(index: int) -> str:
    """Unique locally administered MAC of machine ``index`` (0-based)."""
    n = index + 1
    return f"02:00:5e:{n >> 16 & 0xff:02x}:{n >> 8 & 0xff:02x}:{n & 0xff:02x}"


def machine_ip(index: int) -> str:
    """Reserved address of machine ``index``: 198.51.100.1–253, then 203.0.113.1–253 (.254 is the relay)."""
    if index < 253:
        return f"198.51.100.{index + 1}"
    if index < 506:
        return f"203.0.113.{index - 252}"
    raise ValueError("at most 506 simulated machines")


def relay_ip(ip: str) -> str:
    """The relay agent address (giaddr) for a machine's /24: .254 of it."""
    return ip.rsplit(".", 1)[0] + ".254"


@dataclass(slots=True)
class Machine:
    """One simulated machine: identity, where it is in its boot, its timer and its counters."""

    index: int
    mac: bytes
    ip: str
    ip_packed: bytes
    giaddr: bytes
    guid: bytes
    stage: str = "start"
    done_at: float | None = None
    why: str = ""
    xid: int = 0
    ipxe: bool = False
    tries: int = 0
    deadline: float = float("inf")
    on_timeout: Callable[[Machine], None] | None = None
    last_packet: bytes = b""
    server_id: bytes = b""
    next_server: str = ""
    script_url: str = ""
    # TFTP
    sock: socket.socket | None = None
    peer: tuple[str, int] | None = None
    block: int = 1
    blksize: int = 512
    received: int = 0
    # HTTP
    http_buf: bytearray = field(default_factory=bytearray)
    # accounting
    stamps: dict[str, float] = field(default_factory=dict)
    dhcp_retx: int = 0
    tftp_retx: int = 0
    http_tries: int = 0


class Storm:
    """All machines in one epoll loop; timers are per-machine deadlines scanned every 20 ms."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.server = cfg["dhcp_server"]
        with open(cfg["file"], "rb") as f:
            #: the boot file as the server should send it: every block is compared byte for byte
            self.file = f.read()
        self.file_size = len(self.file)
        if hashlib.sha256(self.file).hexdigest() != cfg["file_sha256"]:
            raise SystemExit(f"{cfg['file']} is not the file the benchmark expects")
        self.blocks: dict[int, list[bytes]] = {}
        self.boot_file = cfg.get("boot_file", "undionly.kpxe")
        self.bound = float(cfg.get("bound", 120.0))
        self.epoll = select.epoll()
        self.handlers: dict[int, tuple[Callable[[Machine, int], None], Machine | None]] = {}
        self.by_xid: dict[int, Machine] = {}
        self.machines = [self._machine(i) for i in range(int(cfg["n"]))]
        self.pending = len(self.machines)
        self.dhcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.dhcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._big_buffers(self.dhcp)
        self.dhcp.bind(("0.0.0.0", 67))
        self.dhcp.setblocking(False)
        self._register(self.dhcp, self._on_dhcp, None)
        self.t0 = 0.0
        self.cpu0 = 0.0
        self.now = 0.0
        self.sample_body = ""
        self.unexpected: dict[str, int] = {}
        #: seeded: a rerun against the same losses makes the same retransmission schedule
        self.rng = random.Random(int(cfg.get("seed", 9)))
        #: seconds spent handling events, per 100 ms window since the start (is the simulator saturated?)
        self.busy: dict[int, float] = {}

    @staticmethod
    def _machine(i: int) -> Machine:
        ip = machine_ip(i)
        mac = bytes.fromhex(machine_mac(i).replace(":", ""))
        return Machine(i, mac, ip, socket.inet_aton(ip), socket.inet_aton(relay_ip(ip)),
                       guid=bytes.fromhex(f"11111111222233334444{i + 1:012x}"))

    @staticmethod
    def _big_buffers(sock: socket.socket) -> None:
        for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)

    def _register(self, sock: socket.socket, handler: Callable[[Machine, int], None], m: Machine | None,
                  events: int = select.EPOLLIN) -> None:
        self.handlers[sock.fileno()] = (handler, m)  # type: ignore[assignment]
        self.epoll.register(sock.fileno(), events)

    def _close(self, m: Machine) -> None:
        if m.sock is not None:
            fd = m.sock.fileno()
            self.epoll.unregister(fd)
            del self.handlers[fd]
            m.sock.close()
            m.sock = None

    def _count(self, what: str) -> None:
        self.unexpected[what] = self.unexpected.get(what, 0) + 1

    # -- outcome --------------------------------------------------------------------

    def _stage(self, m: Machine, stage: str) -> None:
        m.stage = stage
        m.stamps[stage] = self.now - self.t0

    def _lose(self, m: Machine, why: str) -> None:
        if m.done_at is not None or m.why:
            return
        self._close(m)
        m.why = why
        m.deadline = float("inf")
        m.done_at = None
        self.pending -= 1

    def _finish(self, m: Machine) -> None:
        self._close(m)
        m.done_at = self.now - self.t0
        self._stage(m, "done")
        m.deadline = float("inf")
        self.pending -= 1

    # -- DHCP -------------------------------------------------------------------------

    def _dhcp_send(self, m: Machine) -> None:
        try:
            self.dhcp.sendto(m.last_packet, (self.server, 67))
        except BlockingIOError:
            self._count("dhcp send would block")

    def _dhcp_start(self, m: Machine, ipxe: bool) -> None:
        m.ipxe = ipxe
        m.xid = (0x5E000000 | (ipxe << 20) | m.index)
        self.by_xid[m.xid] = m
        self._stage(m, "ipxe-discover" if ipxe else "pxe-discover")
        m.last_packet = build_request(DISCOVER, m.xid, m.mac, m.giaddr, m.guid, ipxe)
        self._dhcp_arm(m, first=True)

    def _dhcp_arm(self, m: Machine, first: bool) -> None:
        m.tries = 1 if first else m.tries + 1
        m.deadline = self.now + DHCP_TIMEOUTS[m.tries - 1] * self.rng.uniform(1 - DHCP_JITTER, 1 + DHCP_JITTER)
        m.on_timeout = self._dhcp_timeout
        self._dhcp_send(m)

    def _dhcp_timeout(self, m: Machine) -> None:
        if m.tries >= len(DHCP_TIMEOUTS):
            self._lose(m, f"no {'OFFER' if m.stage.endswith('discover') else 'ACK'} after {m.tries} tries")
            return
        m.dhcp_retx += 1
        self._dhcp_arm(m, first=False)

    def _on_dhcp(self, _m: Machine | None, _ev: int) -> None:
        while True:
            try:
                data = self.dhcp.recv(4096)
            except BlockingIOError:
                return
            reply = parse_reply(data)
            m = self.by_xid.get(reply.xid) if reply is not None else None
            if reply is None or m is None or reply.chaddr != m.mac:
                self._count("dhcp: stray datagram")
                continue
            self._dhcp_reply(m, reply)

    def _dhcp_reply(self, m: Machine, reply: Reply) -> None:
        mt = reply.msg_type
        if m.stage.endswith("discover") and mt == OFFER:
            if not self._check_lease(m, reply, "OFFER"):
                return
            m.server_id = reply.options.get(54, b"")
            self._stage(m, "ipxe-request" if m.ipxe else "pxe-request")
            m.last_packet = build_request(REQUEST, m.xid, m.mac, m.giaddr, m.guid, m.ipxe,
                                          requested=m.ip_packed, server_id=m.server_id or None)
            self._dhcp_arm(m, first=True)
        elif m.stage.endswith("request") and mt == ACK:
            if not self._check_lease(m, reply, "ACK"):
                return
            if m.ipxe:
                m.script_url = reply.boot_file
                self._http_start(m)
            else:
                m.next_server = socket.inet_ntoa(reply.siaddr) if reply.siaddr != b"\0" * 4 else self.server
                self._tftp_start(m)
        elif m.stage.endswith("request") and mt == NAK:
            self._lose(m, f"NAK: {reply.options.get(56, b'').decode('latin-1', 'replace')}")
        else:
            self._count(f"dhcp: type {mt} in stage {m.stage}")

    def _check_lease(self, m: Machine, reply: Reply, what: str) -> bool:
        """The reply carries the reserved address and the boot file this stage needs; else lost."""
        if reply.yiaddr != m.ip_packed:
            self._lose(m, f"{what} for {socket.inet_ntoa(reply.yiaddr)}, reserved {m.ip}")
            return False
        boot = reply.boot_file
        ok = boot.startswith("http://") if m.ipxe else boot == self.boot_file
        if not ok:
            self._lose(m, f"{what} boot file {boot!r}")
        return ok

    # -- TFTP -----------------------------------------------------------------------------

    def _tftp_start(self, m: Machine) -> None:
        self._stage(m, "tftp")
        self._close(m)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((m.ip, 0))
        sock.setblocking(False)
        m.sock = sock
        self._register(sock, self._on_tftp, m)
        m.peer, m.block, m.blksize, m.received = None, 1, 512, 0
        m.last_packet = tftp_rrq(self.boot_file, {"tsize": "0", "blksize": str(BLKSIZE)})
        m.tries = 1
        m.on_timeout = self._tftp_timeout
        self._tftp_send(m)

    def _tftp_send(self, m: Machine) -> None:
        """(Re)send the last packet: to port 69 until the server's TID is known, then on the
        socket connected to it."""
        m.deadline = self.now + TFTP_TIMEOUT
        sock = m.sock
        assert sock is not None
        try:
            if m.peer is None:
                sock.sendto(m.last_packet, (m.next_server, 69))
            else:
                sock.send(m.last_packet)
        except BlockingIOError:
            self._count("tftp send would block")
        except ConnectionRefusedError:
            self._count("tftp: ICMP port unreachable")

    def _tftp_timeout(self, m: Machine) -> None:
        if m.tries >= TFTP_TRIES:
            self._lose(m, f"TFTP: no reply for {m.tries} s (block {m.block}, {m.received} bytes)")
            return
        m.tries += 1
        m.tftp_retx += 1
        self._tftp_send(m)

    def _on_tftp(self, m: Machine, _ev: int) -> None:
        """The hot path: a lockstep transfer's next DATA is handled inline, anything else by
        _tftp_packet. The socket is connected to the server's TID after its first reply, so
        the kernel drops datagrams from any other port."""
        sock = m.sock
        assert sock is not None
        if m.peer is None:
            try:
                data, addr = sock.recvfrom(4096)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if addr[0] != m.next_server:
                self._count("tftp: reply from another address")
                return
            m.peer = addr
            sock.connect(addr)
            self._tftp_packet(m, data)
        recv, send = sock.recv, sock.send
        while m.sock is sock:
            try:
                data = recv(4096)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                continue
            if len(data) > 3 and data[1] == T_DATA and data[0] == 0 and (data[2] << 8 | data[3]) == m.block & 0xFFFF:
                size = len(data) - 4
                if data[4:] != self._expected(m):
                    self._lose(m, f"TFTP: block {m.block} differs from the file")
                    return
                m.received += size
                m.last_packet = ack = b"\0\4" + data[2:4]
                m.tries = 1
                m.deadline = self.now + TFTP_TIMEOUT
                send(ack)
                m.block += 1
                if size < m.blksize:
                    self._tftp_done(m)
            else:
                self._tftp_packet(m, data)

    def _tftp_packet(self, m: Machine, data: bytes) -> None:
        if len(data) < 4:
            self._count("tftp: runt")
            return
        op, block = _H.unpack_from(data)
        if op == T_DATA:
            if block == m.block & 0xFFFF:
                payload = data[4:]
                if payload != self._expected(m):
                    self._lose(m, f"TFTP: block {m.block} differs from the file")
                    return
                m.received += len(payload)
                m.last_packet = _H.pack(T_ACK, block)
                m.tries = 1
                self._tftp_send(m)
                m.block += 1
                if len(payload) < m.blksize:
                    self._tftp_done(m)
            elif block == (m.block - 1) & 0xFFFF:
                self._tftp_send(m)  # duplicate: ACK again
            else:
                self._count("tftp: out-of-order DATA")
        elif op == T_OACK and m.block == 1:
            opts = tftp_oack_options(data)
            m.blksize = int(opts.get("blksize", "512"))
            tsize = opts.get("tsize")
            if tsize is not None and int(tsize) != self.file_size:
                self._lose(m, f"TFTP: OACK tsize {tsize}, file has {self.file_size} bytes")
                return
            m.last_packet = tftp_ack(0)
            m.tries = 1
            self._tftp_send(m)
        elif op == T_ERROR:
            self._lose(m, f"TFTP {tftp_error_text(data)}")
        else:
            self._count(f"tftp: opcode {op} at block {m.block}")

    def _expected(self, m: Machine) -> bytes:
        """The bytes block ``m.block`` must carry at the negotiated block size (blocks cached per size)."""
        blocks = self.blocks.get(m.blksize)
        if blocks is None:
            blocks = self.blocks[m.blksize] = split_blocks(self.file, m.blksize)
        return blocks[m.block - 1] if m.block <= len(blocks) else b"<past the end of the file>"

    def _tftp_done(self, m: Machine) -> None:
        if m.received != self.file_size:
            self._lose(m, f"TFTP: got {m.received} bytes, want {self.file_size}")
            return
        self._close(m)
        self._dhcp_start(m, ipxe=True)

    # -- HTTP -----------------------------------------------------------------------------

    def _http_start(self, m: Machine) -> None:
        self._stage(m, "http")
        self._close(m)
        m.http_tries += 1
        url = urlsplit(m.script_url)
        host, port = url.hostname or "", url.port or 80
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        m.last_packet = (f"GET {path} HTTP/1.1\r\nConnection: close\r\nUser-Agent: iPXE/1.21.1\r\n"
                         f"Host: {url.netloc}\r\n\r\n").encode("latin-1")
        m.http_buf = bytearray()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((m.ip, 0))
        m.sock = sock
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            self._http_failed(m, f"connect: {errno.errorcode.get(err, err)}")
            return
        self._register(sock, self._on_http, m, select.EPOLLOUT)
        m.deadline = self.now + HTTP_TIMEOUT
        m.on_timeout = lambda mm: self._http_failed(mm, f"no complete answer in {HTTP_TIMEOUT:g} s")

    def _on_http(self, m: Machine, ev: int) -> None:
        sock = m.sock
        assert sock is not None
        if ev & select.EPOLLOUT and not m.http_buf and m.last_packet:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._http_failed(m, f"connect: {errno.errorcode.get(err, err)}")
                return
            sock.send(m.last_packet)  # ~150 bytes: fits any send buffer
            m.last_packet = b""
            self.epoll.modify(sock.fileno(), select.EPOLLIN)
            return
        while True:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                self._http_failed(m, f"recv: {e}")
                return
            if not chunk:
                self._http_response(m)
                return
            m.http_buf += chunk

    def _http_response(self, m: Machine) -> None:
        head, _, body = bytes(m.http_buf).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split(b" ")
        code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
        if code == 200 and body.startswith(b"#!ipxe"):
            if not self.sample_body:
                self.sample_body = body.decode("utf-8", "replace")
            self._finish(m)
        else:
            self._http_failed(m, f"HTTP {code}, body {body[:40]!r}")

    def _http_failed(self, m: Machine, why: str) -> None:
        self._close(m)
        if m.http_tries >= HTTP_TRIES:
            self._lose(m, f"HTTP: {why} ({m.http_tries} tries)")
            return
        m.deadline = self.now + 1.0
        m.on_timeout = self._http_start

    # -- loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.cpu0 = _cpu()
        self.t0 = self.now = time.monotonic()
        for m in self.machines:
            self._dhcp_start(m, ipxe=False)
        end = self.t0 + self.bound
        next_scan = self.now + 0.02
        poll, handlers = self.epoll.poll, self.handlers
        clock = time.monotonic
        while self.pending and self.now < end:
            events = poll(max(0.0, next_scan - self.now), 1024)
            start = self.now = clock()
            for fd, ev in events:
                entry = handlers.get(fd)
                if entry is not None:
                    self.now = clock()
                    entry[0](entry[1], ev)  # type: ignore[arg-type]
            self.now = clock()
            if self.now >= next_scan:
                next_scan = self.now + 0.02
                for m in self.machines:
                    if m.deadline <= self.now and m.on_timeout is not None:
                        m.on_timeout(m)
                self.now = clock()
            self._account_busy(start, self.now)
        for m in self.machines:
            if m.done_at is None and not m.why:
                self._lose(m, f"unfinished at the {self.bound:g} s bound")
        return self.report()

    def _account_busy(self, start: float, end: float) -> None:
        """Add the handling time [start, end) to the 100 ms windows it overlaps."""
        busy = self.busy
        a, b = start - self.t0, end - self.t0
        while a < b:
            window = int(a * 10)
            edge = min(b, (window + 1) / 10)
            busy[window] = busy.get(window, 0.0) + edge - a
            a = edge

    def report(self) -> dict[str, Any]:
        done = [m.done_at for m in self.machines if m.done_at is not None]
        return {
            "n": len(self.machines),
            "done": len(done),
            "lost": len(self.machines) - len(done),
            "total": max(done) if done and len(done) == len(self.machines) else None,
            "last_done": max(done) if done else None,
            "elapsed": self.now - self.t0,
            "cpu": _cpu() - self.cpu0,
            "busy": sum(self.busy.values()),
            "busy_peak": max(self.busy.values(), default=0.0) / 0.1,
            "unexpected": self.unexpected,
            "sample_body": self.sample_body,
            "machines": [
                {"i": m.index, "ip": m.ip, "done": m.done_at, "stage": m.stage, "why": m.why,
                 "dhcp_retx": m.dhcp_retx, "tftp_retx": m.tftp_retx, "http_tries": m.http_tries,
                 "stamps": m.stamps}
                for m in self.machines
            ],
        }


def _cpu() -> float:
    """This process's user + system CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        cfg = json.load(f)
    result = Storm(cfg).run()
    out = json.dumps(result)
    if len(argv) > 2:
        with open(argv[2], "w") as f:
            f.write(out)
    else:
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
