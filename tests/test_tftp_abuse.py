"""TFTP abuse (issue 10, item 3): hostile names, writes, extreme options, stray TIDs, abandoned sessions.

Two layers, the same attacks:

* the protocol with fake ports and a fake clock (``Server``/``Client`` of
  test_tftp_protocol), where every packet and timer can be checked exactly,
  and an audit hook proves that a hostile request opens no file at all;
* a real ``twistd smee`` (TFTP, plus HTTP for /metrics) on 127.0.0.1 and free
  high ports, driven by a small TFTP client over real sockets: the same names,
  blksize 8 and 65464 transfers compared byte for byte, windowsize 65535, a
  stray TID, and 10,000 sessions opened and abandoned against the session cap,
  with descriptors and RSS measured before and after.

Why nothing outside the iPXE directory can be read: :class:`smee.tftp.files.Binaries`
reads the binaries once at start-up and a request only ever looks a name up in
that table (:func:`smee.tftp.files.resolve` refuses everything else); the tests
check that no request opens a file, in-process and in the real server.
"""

from __future__ import annotations

import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
from fakes import FakeUDPReactor
from ipxe_bin import ipxe_bin
from prometheus_client import Counter
from test_tftp_protocol import (
    BINARIES,
    CLIENT,
    OTHER,
    Client,
    FakeBinaries,
    Server,
    encode_ack,
    fetch,
)
from twisted.logger import LogLevel, capturedLogs

from smee.metrics import Metrics
from smee.tftp import protocol as protocol_module
from smee.tftp.blocks import BLOCK_OVERHEAD, BlockCache
from smee.tftp.files import Binaries
from smee.tftp.packet import (
    DATA,
    ERR_ACCESS,
    ERR_NOT_FOUND,
    ERR_UNDEFINED,
    ERR_UNKNOWN_TID,
    RRQ,
    WRQ,
    Data,
    Error,
    OAck,
    encode_data,
    encode_error,
    encode_request,
    parse,
)
from smee.tftp.protocol import SHOWN_MAX, TFTPConfig
from smee.tftp.service import FD_MARGIN, MAX_REQUEST, TFTPService, ensure_fd_limit
from smee.tftp.session import WINDOWSIZE_CAP

REPO = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).with_name("twistd")
HOST = "127.0.0.1"
MAC = "52:54:00:12:34:56"
SECRET = b"top secret: this file must never be served\n"

#: Names that must never be served, whatever the directory holds. Relative
#: names are written for an iPXE directory with "secret.txt" beside it and in it.
HOSTILE = [
    "../../etc/passwd",
    "../secret.txt",
    "..%2f..%2fetc%2fpasswd",
    "..%2Fsecret.txt",
    "%2e%2e/%2e%2e/etc/passwd",
    "/etc/passwd",
    "//etc/passwd",
    "//undionly.kpxe",
    "///undionly.kpxe",
    "\\..\\..\\etc\\passwd",
    "..\\secret.txt",
    "C:\\Windows\\win.ini",
    "./undionly.kpxe",
    "../undionly.kpxe",
    "undionly.kpxe/..",
    "undionly.kpxe/",
    "undionly.kpxe/../../secret.txt",
    "....//....//etc/passwd",
    "..\xc0\xaf..\xc0\xafetc\xc0\xafpasswd",  # overlong UTF-8 "/" (as latin-1)
    f"{MAC}/../../etc/passwd",
    "aa:bb:cc:dd:ee:ff/../secret.txt",
    "aa:bb:cc:dd:ee:ff/../../../../etc/passwd",
    "aa:bb:cc:dd:ee:ff/..",
    "52-54-00-12-34-56/../undionly.kpxe",
    f"{MAC}/{MAC}/undionly.kpxe",
    f" {MAC}/undionly.kpxe",
    "../aa:bb:cc:dd:ee:ff/undionly.kpxe",
    "secret.txt",  # in the iPXE directory, but not a name smee serves
    "VERSION",
    "SHA256SUMS",
    "undionly.kpxe ",
    "UNDIONLY.KPXE",
    "undionly.kpxe%00.txt",
    "/proc/self/environ",
    "/proc/self/cmdline",
    "x" * 8000,
    "../" * 3000 + "etc/passwd",
    "\x01\x1b[31mred\x7f\n",
]

#: RRQs with a NUL inside the name. The name ends at its NUL (RFC 1350), so
#: what follows is the mode: each is refused for what the server sees, or
#: dropped as malformed (no answer: answering garbage would make a reflector).
#: raw RRQ body → the ERROR expected (None: no answer).
NUL_NAMES: list[tuple[bytes, Error | None]] = [
    (b"../../etc/passwd\0octet\0undionly.kpxe\0octet\0", Error(ERR_NOT_FOUND, "file [../../etc/passwd] not found")),
    (b"undionly.kpxe\0../../etc/passwd\0octet\0", None),
    (b"undionly.kpxe\0..\0/etc/passwd\0octet\0", Error(ERR_UNDEFINED, "unsupported mode '..'")),
    (b"\0undionly.kpxe\0", Error(ERR_UNDEFINED, "unsupported mode 'undionly.kpxe'")),
]


def raw_rrq(body: bytes) -> bytes:
    return RRQ.to_bytes(2, "big") + body


class OpenRecorder:
    """Files opened (and directories listed) by this process while ``active``.

    An audit hook sees every ``open()``, ``os.open()`` and listing whatever
    module does it. Hooks cannot be removed: this one records nothing once
    the test has switched it off.
    """

    EVENTS = frozenset({"open", "os.listdir", "os.scandir"})

    def __init__(self) -> None:
        self.active = False
        self.seen: list[tuple[str, Any]] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event in self.EVENTS:
            self.seen.append((event, args[0] if args else None))

    def __enter__(self) -> Self:
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False


@pytest.fixture
def ipxe_tree(tmp_path: Path) -> Path:
    """An iPXE directory with two binaries and a secret inside, and a secret beside it."""
    directory = tmp_path / "ipxe"
    directory.mkdir()
    (directory / "undionly.kpxe").write_bytes(bytes(range(256)) * 200)
    (directory / "ipxe.efi").write_bytes(b"EFI" * 20000)
    (directory / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    return directory


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


# --- hostile names ---------------------------------------------------------------


def test_hostile_names_are_refused_without_opening_a_file(tmp_path: Path, ipxe_tree: Path) -> None:
    binaries = Binaries.load(str(ipxe_tree))
    server = Server(binaries=binaries)
    names = HOSTILE + [
        str(tmp_path / "secret.txt"),  # an absolute path to a file that exists
        str(ipxe_tree / "undionly.kpxe"),  # ... even to a binary smee serves
        "../" * 12 + str(tmp_path / "secret.txt").lstrip("/"),
    ]
    before = listing(tmp_path)
    with capturedLogs() as events, OpenRecorder() as opened:
        for name in names:
            server.rrq(name)
            (reply,) = server.replies()
            assert isinstance(reply, Error) and reply.code in (ERR_NOT_FOUND, ERR_ACCESS), (name, reply)
            # Quoted printable and bounded: never the raw name (see _shown).
            assert reply.message.isascii() and reply.message.isprintable(), (name, reply)
            assert len(reply.message) <= 4 * SHOWN_MAX + 64, (name, len(reply.message))
            assert server.reactor.ports == [server.listener]  # no transfer port was opened
    assert opened.seen == []
    assert listing(tmp_path) == before
    assert server.backend.calls == []  # refused before troubling the backend
    server.idle()
    refusals = [e for e in events if e.get("outcome") == "not-found"]
    assert len(refusals) == len(names)
    assert all(len(e["file"]) <= 4 * SHOWN_MAX + 64 for e in refusals)
    # A control: the binary is served, from memory.
    content = (ipxe_tree / "undionly.kpxe").read_bytes()
    with OpenRecorder() as opened:
        assert fetch(server, "undionly.kpxe").data == content
    assert opened.seen == []
    server.idle()


@pytest.mark.parametrize(("body", "expected"), NUL_NAMES)
def test_a_nul_inside_a_name_ends_it(body: bytes, expected: Error | None) -> None:
    server = Server()
    with capturedLogs() as events:
        server.listener.receive(raw_rrq(body), CLIENT)
    assert server.replies() == ([] if expected is None else [expected])
    if expected is None:
        assert [e["outcome"] for e in events if "outcome" in e] == ["malformed"]
    server.idle()


def test_a_long_name_is_refused_with_a_short_error() -> None:
    """A 60,000-byte name: the ERROR quotes 128 characters of it, not all (no reflection, always sendable)."""
    server = Server()
    with capturedLogs() as events:
        server.rrq("x" * 60000)
    assert server.replies() == [Error(ERR_NOT_FOUND, f"file [{'x' * SHOWN_MAX}... (60000 characters)] not found")]
    (event,) = [e for e in events if e.get("outcome") == "not-found"]
    assert event["file"] == f"{'x' * SHOWN_MAX}... (60000 characters)"
    server.idle()


def test_control_characters_are_escaped_in_errors_and_logs() -> None:
    server = Server()
    with capturedLogs() as events:
        server.rrq("\x1b[2Jé\n")
        server.listener.receive(encode_request(RRQ, "ipxe.efi", "\x1b[2Jmode"), CLIENT)
    assert server.replies() == [
        Error(ERR_NOT_FOUND, "file [\\x1b[2J\\xe9\\n] not found"),
        Error(ERR_UNDEFINED, "unsupported mode '\\x1b[2jmode'"),
    ]
    assert [e["file"] for e in events if "outcome" in e] == ["\\x1b[2J\\xe9\\n", "ipxe.efi"]
    server.idle()


def test_short_printable_names_are_quoted_as_they_were() -> None:
    server = Server()
    server.rrq("../../etc/passwd")
    assert server.replies() == [Error(ERR_NOT_FOUND, "file [../../etc/passwd] not found")]


# --- writes ------------------------------------------------------------------------


def junk_metrics() -> Metrics:
    """:class:`Metrics` with ``tftp_datagrams_total{outcome}`` (what the protocol counts listening-port
    junk in, once smee.metrics has it: see TFTP_JUNK_METRIC in test_e2e_junk)."""
    metrics = Metrics()
    if not hasattr(metrics, "tftp_datagrams"):
        metrics.tftp_datagrams = Counter(  # type: ignore[attr-defined]
            "tftp_datagrams", "TFTP datagrams on the listening port that are not read requests, by outcome",
            ["outcome"], registry=metrics.registry)
    return metrics


def test_write_requests_are_refused_counted_and_write_nothing(tmp_path: Path, ipxe_tree: Path) -> None:
    binaries = Binaries.load(str(ipxe_tree))
    server = Server(binaries=binaries)
    metrics = server.protocol.metrics = junk_metrics()
    before = listing(tmp_path)
    names = ["undionly.kpxe", "evil.bin", "../evil.bin", str(tmp_path / "evil.bin"), "x" * 9000]
    with capturedLogs() as events, OpenRecorder() as opened:
        for name in names:
            server.listener.receive(encode_request(WRQ, name, "octet", {"tsize": "4"}), CLIENT)
            assert server.replies() == [Error(ERR_ACCESS, "access violation: smee is read-only")]
            # The client goes on as if it had been accepted: DATA 1 belongs to no transfer.
            server.listener.receive(encode_data(1, b"evil"), CLIENT)
            assert server.replies() == [Error(ERR_UNKNOWN_TID, "unknown transfer ID")]
    assert opened.seen == []
    assert listing(tmp_path) == before
    assert server.reactor.ports == [server.listener]
    server.idle()
    assert [e["outcome"] for e in events if e.get("outcome") == "write-refused"] == ["write-refused"] * len(names)
    assert all(len(e["file"]) <= 4 * SHOWN_MAX + 64 for e in events if e.get("outcome") == "write-refused")
    count = metrics.registry.get_sample_value
    assert count("tftp_datagrams_total", {"outcome": "write-refused"}) == len(names)
    assert count("tftp_datagrams_total", {"outcome": "unknown-tid"}) == len(names)
    assert count("tftp_transfers_total", {"file": "other", "outcome": "write-refused"}) is None  # no read request


# --- options -------------------------------------------------------------------------


class WindowClient(Client):
    """:class:`Client` that acknowledges once per window (RFC 7440) and counts the largest burst."""

    def __init__(self, server: Server, addr: tuple[str, int] = CLIENT) -> None:
        super().__init__(server, addr)
        self.window = 1
        self.since_ack = 0
        self.largest_burst = 0

    def step(self) -> bool:
        if self.port is self.server.listener:
            self._learn()
        assert self.port is not None
        packets = self.server.replies(self.port, self.addr)
        self.largest_burst = max(self.largest_burst, sum(isinstance(p, Data) for p in packets))
        for p in packets:
            if isinstance(p, Error):
                self.error, self.done = p, True
            elif isinstance(p, OAck):
                self.oack = p.options
                self.blksize = int(p.options.get("blksize", 512))
                self.window = int(p.options.get("windowsize", 1))
                self.send(encode_ack(0))
            elif isinstance(p, Data) and p.block == self.expect & 0xFFFF:
                self.data += p.payload
                self.expect += 1
                self.since_ack += 1
                last = len(p.payload) < self.blksize
                if last or self.since_ack == self.window:
                    self.send(encode_ack(p.block))
                    self.since_ack = 0
                if last:
                    self.done = True
        return bool(packets)


def test_blksize_8_is_granted_and_byte_exact_and_not_cached() -> None:
    """RFC 2348's minimum: 5,001 DATA of 8 bytes; no datagram per 8 bytes is kept after the transfer."""
    content = bytes(range(251)) * 160  # 40,160 bytes: large enough to be worth caching at 512
    server = Server(binaries=FakeBinaries({"ipxe.efi": content}), max_blksize=1468)
    client = Client(server).request("ipxe.efi", blksize=8, tsize=0)
    client.run(limit=10_000)
    assert client.oack == {"blksize": "8", "tsize": str(len(content))}
    assert client.data == content and client.expect == len(content) // 8 + 2
    assert len(server.protocol.blocks) == 0 and server.protocol.blocks.size == 0
    server.idle()
    # At 512 the same content is cached (one entry, its objects counted).
    assert fetch(server, "ipxe.efi").data == content
    assert len(server.protocol.blocks) == 1


@pytest.mark.parametrize(("cap", "granted"), [(65464, 65464), (1468, 1468), (512, 512)])
def test_blksize_65464_is_capped_by_the_server_and_byte_exact(cap: int, granted: int) -> None:
    content = bytes(range(256)) * 700  # 179,200 bytes: 3 blocks of 65464
    server = Server(binaries=FakeBinaries({"ipxe.efi": content}), max_blksize=cap)
    client = fetch(server, "ipxe.efi", blksize=65464)
    assert client.oack == {"blksize": str(granted)}
    assert client.data == content
    server.idle()


def test_blksize_beyond_the_rfc_range_is_refused_and_the_transfer_goes_on() -> None:
    server = Server(max_blksize=65464)
    for value in ("65465", "7", "0", "99999999999"):
        client = fetch(server, "ipxe.efi", blksize=value)
        assert client.oack is None and client.data == BINARIES["ipxe.efi"]
    server.idle()


def test_windowsize_65535_is_capped_and_the_oack_says_so() -> None:
    content = bytes(range(256)) * 400  # 200 blocks of 512
    server = Server(binaries=FakeBinaries({"ipxe.efi": content}))
    client = WindowClient(server).request("ipxe.efi", windowsize=65535)
    client.run()
    assert client.oack == {"windowsize": str(WINDOWSIZE_CAP)}
    assert client.data == content
    assert client.largest_burst == WINDOWSIZE_CAP  # never more blocks in flight than granted
    server.idle()


def test_a_client_timeout_beyond_the_servers_is_refused() -> None:
    """RFC 2349 lets the server only accept the client's timeout or refuse it: above --tftp-timeout,
    refused, so an abandoned session is reclaimed as fast as any other (not after 255 × 6 s)."""
    server = Server(timeout=2.0, retries=1)
    client = Client(server).request("ipxe.efi", timeout=255, tsize=0)
    assert server.replies(client.port) == [OAck({"tsize": str(len(BINARIES["ipxe.efi"]))})]
    # The client goes silent: the session ends after timeout × (retries + 1), the server's.
    server.reactor.advance(2.0)
    server.reactor.advance(2.0)
    server.idle()
    for asked, granted in (("2", "2"), ("1", "1")):
        client = fetch(server, "ipxe.efi", timeout=asked)
        assert client.oack == {"timeout": granted} and client.data == BINARIES["ipxe.efi"]
    sub_second = Server(timeout=0.5, retries=1)
    assert fetch(sub_second, "ipxe.efi", timeout=1).oack == {"timeout": "1"}  # RFC 2349's minimum
    assert fetch(sub_second, "ipxe.efi", timeout=2).oack is None


def test_a_request_full_of_junk_options_keeps_only_the_known_ones() -> None:
    """Thousands of options in one RRQ: the transfer keeps what negotiate() reads, not the rest."""
    server = Server()
    junk = {f"junk{i}": "y" * 8 for i in range(3000)}
    client = WindowClient(server).request("ipxe.efi", **junk, blksize=1024, windowsize=2)
    (transfer,) = server.protocol._transfers
    assert transfer.options == {"blksize": "1024", "windowsize": "2"}
    client.run()
    assert client.oack == {"blksize": "512", "windowsize": "2"}  # max_blksize 512 (TFTPConfig's default)
    assert client.data == BINARIES["ipxe.efi"]
    server.idle()


def test_netascii_of_a_binary_is_converted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each session converting the binary itself would hold a copy of it each (9 MiB for ipxe.iso)."""
    calls: list[int] = []
    convert = protocol_module.to_netascii

    def counting(data: bytes) -> bytes:
        calls.append(len(data))
        return convert(data)

    monkeypatch.setattr(protocol_module, "to_netascii", counting)
    content = b"line\n" * 1000
    server = Server(binaries=FakeBinaries({"ipxe.efi": content}))
    first = Client(server).request("ipxe.efi", mode="netascii")
    second = Client(server, (CLIENT[0], CLIENT[1] + 1)).request("ipxe.efi", mode="netascii")
    first.run(), second.run()
    assert first.data == second.data == content.replace(b"\n", b"\r\n")
    assert calls == [len(content)]
    server.idle()


def test_block_cache_counts_the_objects_it_keeps() -> None:
    cache = BlockCache(max_bytes=1 << 30, min_size=1)
    data = bytes(40000)
    assert cache.blocks(data, 512) is not None
    assert cache.size == 40000 + (4 + BLOCK_OVERHEAD) * (40000 // 512 + 1)
    assert cache.blocks(data, 8) is None and len(cache) == 1  # blksize 8: built per block, never kept


# --- stray TIDs ---------------------------------------------------------------------------


def test_stray_packets_to_a_transfer_port_get_error_5_and_the_transfer_goes_on() -> None:
    server = Server()
    client = Client(server).request("ipxe.efi")
    client.step()
    port = client.port
    assert port is not None and port is not server.listener
    strangers = [OTHER, (CLIENT[0], CLIENT[1] + 1), ("198.51.100.7", CLIENT[1])]
    for stranger in strangers:
        for datagram in (encode_ack(1), encode_ack(0), encode_data(1, b"x"), encode_request(RRQ, "ipxe.efi"),
                         b"\xff" * 3, b""):
            port.receive(datagram, stranger)
            assert server.replies(port, stranger) == [Error(ERR_UNKNOWN_TID, "unknown transfer ID")]
        # An ERROR is never answered, and does not end someone else's transfer.
        port.receive(encode_error(0, "stop"), stranger)
        assert server.replies(port, stranger) == []
    client.run()
    assert client.error is None and client.data == BINARIES["ipxe.efi"]
    server.idle()


def test_two_transfer_ports_do_not_ping_pong_errors() -> None:
    """One datagram with a forged source (transfer port A) sent to transfer port B: B answers A
    with ERROR 5; A must not answer that ERROR, else the two go on until both transfers end."""
    server = Server()
    a = Client(server).request("ipxe.efi")
    b = Client(server, (CLIENT[0], CLIENT[1] + 1)).request("ipxe.efi")
    port_a, port_b = a.port, b.port
    assert port_a is not None and port_b is not None and port_a is not port_b
    addr_a = (port_a.getHost().host, port_a.getHost().port)
    addr_b = (port_b.getHost().host, port_b.getHost().port)
    port_b.receive(encode_ack(1), addr_a)  # the forged datagram
    exchanged = 0
    for _ in range(100):  # carry what each port sends to the other, like a network would
        moved = False
        for src, dst, dst_addr, src_addr in ((port_b, port_a, addr_a, addr_b), (port_a, port_b, addr_b, addr_a)):
            to_other = [d for d, to in src.written if to == dst_addr]
            src.written = [(d, to) for d, to in src.written if to != dst_addr]
            for datagram in to_other:
                dst.receive(datagram, src_addr)
                exchanged += 1
                moved = True
        if not moved:
            break
    assert exchanged == 1  # B's ERROR 5 to A, and nothing after it
    a.run(), b.run()
    assert a.data == b.data == BINARIES["ipxe.efi"]
    server.idle()


# --- abandoned sessions and the cap -------------------------------------------------------------


def test_abandoned_sessions_beyond_the_cap_get_error_and_all_are_reclaimed() -> None:
    """3,000 RRQs that never ACK against the default cap of 1,024: 1,976 busy ERRORs, then nothing left."""
    server = Server(timeout=2.0, retries=1)
    metrics = server.protocol.metrics = Metrics()
    cap = server.config.max_sessions
    assert cap == 1024
    for round_ in range(2):  # and again: the places are free
        first = len(server.reactor.ports)
        with capturedLogs() as events:
            for i in range(3000):
                server.rrq("undionly.kpxe", (CLIENT[0], 10000 + i))
        opened = server.reactor.ports[first:]
        assert len(opened) == cap and server.protocol.in_progress == cap
        busy = [d for d, _ in server.listener.written if parse(d) == Error(ERR_UNDEFINED, "server busy, try again later")]
        assert len(busy) == 3000 - cap
        server.listener.written.clear()
        assert sum(e.get("outcome") == "busy" and e["log_level"] == LogLevel.warn for e in events) == 3000 - cap
        assert metrics.registry.get_sample_value("tftp_sessions_in_progress") == cap
        server.reactor.advance(2.0)
        server.reactor.advance(2.0)
        server.idle()
        assert not any(port.listening for port in opened)
        assert metrics.registry.get_sample_value("tftp_sessions_in_progress") == 0
        timeouts = metrics.registry.get_sample_value(
            "tftp_transfers_total", {"file": "undionly.kpxe", "outcome": "timeout"})
        assert timeouts == cap * (round_ + 1)


# --- service -------------------------------------------------------------------------------------


class Limits:
    """getrlimit/setrlimit over a (soft, hard) pair; ``refuse`` makes setrlimit fail."""

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.value = (soft, hard)
        self.refuse = refuse
        self.set: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.value

    def setrlimit(self, which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.set.append(value)
        self.value = value


@pytest.mark.parametrize(
    ("soft", "hard", "refuse", "needed", "limit", "calls", "warned"),
    [
        (1024, 4096, False, 1280, 1280, [(1280, 4096)], False),  # raised, only as far as needed
        (1024, resource.RLIM_INFINITY, False, 1280, 1280, [(1280, resource.RLIM_INFINITY)], False),
        (4096, 4096, False, 1280, 4096, [], False),  # already enough: untouched
        (1024, 1100, False, 1280, 1100, [(1100, 1100)], True),  # the hard limit is too low
        (1024, 4096, True, 1280, 1024, [], True),
    ],
)
def test_open_file_limit_is_raised_for_the_session_cap(
    soft: int, hard: int, refuse: bool, needed: int, limit: int, calls: list[tuple[int, int]], warned: bool,
) -> None:
    limits = Limits(soft, hard, refuse)
    got, warning = ensure_fd_limit(needed, getrlimit=limits.getrlimit, setrlimit=limits.setrlimit)
    assert got == limit and limits.set == calls
    assert (warning is not None) == warned
    if warning is not None:
        assert f"open-file limit {limit}" in warning and "--tftp-max-sessions" in warning


@pytest.mark.parametrize("single_port", [False, True])
def test_service_raises_the_fd_limit_and_reads_whole_requests(single_port: bool) -> None:
    reactor = FakeUDPReactor()
    asked: list[int] = []
    listened: list[dict[str, Any]] = []
    listen = reactor.listenUDP

    def recording(port: int, protocol: Any, **kwargs: Any) -> Any:
        listened.append(kwargs)
        return listen(port, protocol, **kwargs)

    reactor.listenUDP = recording  # type: ignore[method-assign]

    def fd_limit(needed: int) -> tuple[int, str | None]:
        asked.append(needed)
        return 1000, "open-file limit 1000 is too low"

    config = TFTPConfig(mode="reservation", max_sessions=700, single_port=single_port)
    svc = TFTPService(FakeBinaries(), None, config, reactor, ("192.0.2.1", 69), fd_limit=fd_limit)
    with capturedLogs() as events:
        svc.startService()
    assert listened == [{"interface": "192.0.2.1", "maxPacketSize": MAX_REQUEST}]
    if single_port:  # every transfer on the listening socket: no descriptor per transfer
        assert asked == []
    else:
        assert asked == [700 + FD_MARGIN]
        assert any(e["log_level"] == LogLevel.warn and "open-file limit 1000" in e.get("warning", "")
                   for e in events)
    svc.stopService()


# --- against a real twistd smee ------------------------------------------------------------------

#: --tftp-timeout and --tftp-retries of the real server: an abandoned session
#: is reclaimed TIMEOUT × (RETRIES + 1) seconds after its RRQ.
TIMEOUT, RETRIES = 4, 1
LIFETIME = TIMEOUT * (RETRIES + 1)
#: Seconds a real-socket client waits for any one packet.
RECV_TIMEOUT = 10.0

#: An audit hook for the real server (PYTHONPATH=<dir of this file>): every
#: file opened or directory listed, one line each, to $SMEE_TEST_OPEN_LOG.
SITECUSTOMIZE = '''\
import os
import sys

_path = os.environ.get("SMEE_TEST_OPEN_LOG")
if _path:
    _fd = os.open(_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _hook(event, args, _fd=_fd, _write=os.write):
        if event in ("open", "os.listdir", "os.scandir"):
            _write(_fd, (event + " " + repr(args[0] if args else None) + "\\n").encode("utf-8", "backslashreplace"))

    sys.addaudithook(_hook)
'''


#: The soft open-file limit the real server starts with: the usual default,
#: below --tftp-max-sessions' 1,024 transfer sockets plus the rest (smee must raise it).
SOFT_NOFILE = 1024


#: ``python -c`` this ``argv...``: exec argv with that soft limit (the same process, so the same pid).
WITH_COMMON_FD_LIMIT = f"""\
import os, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
soft = {SOFT_NOFILE} if hard == resource.RLIM_INFINITY else min({SOFT_NOFILE}, hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
os.execv(sys.argv[1], sys.argv[1:])
"""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:g}s: {what()}")
        time.sleep(0.1)


@dataclass
class Smee:
    """One ``twistd -n smee``: TFTP on 127.0.0.1:port, HTTP (/metrics) on 127.0.0.1:http_port."""

    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    log: Path
    opens: Path
    root: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def sample(self, name: str, labels: str = "") -> float:
        m = re.search(rf"^{re.escape(name + labels)} (\S+)$", self.metrics(), re.MULTILINE)
        return 0.0 if m is None else float(m.group(1))

    def sessions(self) -> float:
        return self.sample("tftp_sessions_in_progress")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        assert m is not None, status
        return int(m.group(1))

    def opened_since(self, offset: int) -> list[str]:
        return self.opens.read_bytes()[offset:].decode(errors="replace").splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def smee(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smee]:
    """``twistd smee``: file backend with 127.0.0.1 allowed to netboot, TFTP with blksize up to 65464
    and short retransmissions, HTTP for /metrics; DHCP and syslog off. Checked for a clean exit."""
    source = ipxe_bin(("undionly.kpxe", "ipxe.efi"))
    root = tmp_path_factory.mktemp("tftp-abuse")
    ipxe = root / "ipxe"
    ipxe.mkdir()
    for name in ("undionly.kpxe", "ipxe.efi"):
        shutil.copyfile(source / name, ipxe / name)
    (ipxe / "secret.txt").write_bytes(SECRET)
    (root / "secret.txt").write_bytes(SECRET)
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    hw = root / "hardware.yaml"
    hw.write_text(f"{MAC}:\n  ipAddress: {HOST}\n  subnetMask: 255.0.0.0\n  netboot:\n    allowPxe: true\n")
    cwd = root / "cwd"
    cwd.mkdir()
    port, http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    argv = [
        str(TWISTD), "-n", "--pidfile=", "--logger=smee.logs.observer", "smee",
        "--backend-file-enabled=true", f"--backend-file-path={hw}", f"--public-ip={HOST}",
        "--dhcp-enabled=false", "--syslog-enabled=false",
        f"--tftp-addr={HOST}", f"--tftp-port={port}", f"--ipxe-dir={ipxe}",
        f"--tftp-timeout={TIMEOUT}s", f"--tftp-retries={RETRIES}", "--tftp-block-size=65464",
        f"--http-addr={HOST}", f"--http-port={http_port}",
    ]
    log, opens = root / "smee.log", root / "opened.log"
    env = dict(os.environ, PYTHONPATH=f"{hooks}{os.pathsep}{REPO}", PYTHONUNBUFFERED="1",
               SMEE_TEST_OPEN_LOG=str(opens))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", WITH_COMMON_FD_LIMIT, *argv], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    server = Smee(proc, port, http_port, log, opens, root)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"smee exited with status {proc.returncode}:\n{server.text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{http_port}/healthcheck", timeout=2) as r:
                    return r.status == 200 and tftp_get(port, "ready?", recv_timeout=1).error is not None
            except (OSError, AssertionError):
                return False

        wait_until(ready, 30, lambda: f"smee did not start:\n{server.text()[-3000:]}")
        assert opens.stat().st_size > 0  # the hook works: start-up opened files
        yield server
    finally:
        server.stop()
    text = server.text()
    assert "Traceback" not in text, text[-5000:]
    assert "Server Shut Down." in text, text[-3000:]
    assert sorted(p.name for p in cwd.iterdir()) == []  # nothing written where it runs


@dataclass
class Fetched:
    oack: dict[str, str] | None
    data: bytes
    error: Error | None
    tid: tuple[str, int] | None


def ack(block: int) -> bytes:
    return encode_ack(block & 0xFFFF)


def tftp_get(port: int, name: str, options: dict[str, str] | None = None, *, raw: bytes | None = None,
             recv_timeout: float = RECV_TIMEOUT, on_first: Callable[[tuple[str, int]], None] | None = None,
             deadline: float = 120.0) -> Fetched:
    """Read ``name`` over a real socket: OACK → ACK 0, one ACK per window (RFC 7440), until a short block.

    Returns at the first ERROR. ``on_first(tid)`` runs once DATA 1 is in. Every wait is bounded.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:  # windows of 64 KiB blocks: past net.core.rmem_max if we may
            s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((HOST, 0))
        s.sendto(raw if raw is not None else encode_request(RRQ, name, "octet", options), (HOST, port))
        tid: tuple[str, int] | None = None
        oack: dict[str, str] | None = None
        data = bytearray()
        blksize, window, expect, since_ack = 512, 1, 1, 0
        end = time.monotonic() + deadline
        while True:
            left = end - time.monotonic()
            assert left > 0, f"{name[:80]!r}: transfer not over after {deadline:g}s ({len(data)} bytes)"
            s.settimeout(min(left, recv_timeout))
            try:
                datagram, addr = s.recvfrom(65536)
            except TimeoutError:
                raise AssertionError(f"{name[:80]!r}: nothing from the server for {recv_timeout:g}s "
                                     f"after {len(data)} bytes") from None
            if tid is None:
                tid = addr
            elif addr != tid:
                continue
            packet = parse(datagram)
            if isinstance(packet, Error):
                return Fetched(oack, bytes(data), packet, tid)
            if isinstance(packet, OAck):
                if oack is None:
                    oack = packet.options
                    blksize = int(oack.get("blksize", 512))
                    window = int(oack.get("windowsize", 1))
                s.sendto(ack(0), tid)
                continue
            assert isinstance(packet, Data), packet
            if packet.block != expect & 0xFFFF:
                s.sendto(ack(expect - 1), tid)  # a gap or a repeat: say where we are
                since_ack = 0
                continue
            data += packet.payload
            expect += 1
            since_ack += 1
            if expect == 2 and on_first is not None:
                on_first(tid)
            last = len(packet.payload) < blksize
            if last or since_ack >= window:
                s.sendto(ack(packet.block), tid)
                since_ack = 0
            if last:
                return Fetched(oack, bytes(data), None, tid)


def test_real_server_refuses_hostile_names_and_opens_nothing(smee: Smee) -> None:
    names = HOSTILE + [
        str(smee.root / "secret.txt"), str(smee.root / "ipxe" / "undionly.kpxe"),
        "../" * 12 + str(smee.root / "secret.txt").lstrip("/"),
        "y" * 60000,  # longer than the 8192 bytes Twisted reads by default: refused, not cut and dropped
    ]
    mark = smee.opens.stat().st_size
    for name in names:
        got = tftp_get(smee.port, name)
        assert got.error is not None and got.error.code in (ERR_NOT_FOUND, ERR_ACCESS), (name[:100], got.error)
        assert got.tid == (HOST, smee.port) and got.data == b"" and SECRET not in got.error.message.encode()
        assert len(got.error.message) <= 4 * SHOWN_MAX + 64
    for body, expected in NUL_NAMES:
        if expected is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((HOST, 0))
                s.sendto(raw_rrq(body), (HOST, smee.port))
                s.settimeout(1.0)
                with pytest.raises(TimeoutError):
                    s.recvfrom(65536)  # dropped as malformed: no answer
        else:
            assert tftp_get(smee.port, "", raw=raw_rrq(body)).error == expected
    # Serving never touches the disk: nothing opened at all (the hardware file may be re-read).
    hardware = str(smee.root / "hardware.yaml")
    assert [line for line in smee.opened_since(mark) if hardware not in line] == []


def test_real_server_refuses_writes_and_writes_nothing(smee: Smee) -> None:
    before = listing(smee.root)
    mark = smee.opens.stat().st_size
    for name in ("undionly.kpxe", "evil.bin", "../evil.bin", "../../evil.bin", str(smee.root / "evil.bin")):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            s.settimeout(RECV_TIMEOUT)
            s.sendto(encode_request(WRQ, name, "octet"), (HOST, smee.port))
            reply, addr = s.recvfrom(65536)
            assert addr == (HOST, smee.port) and parse(reply) == Error(ERR_ACCESS, "access violation: smee is read-only")
            for block in (0, 1):  # a client that goes on anyway
                s.sendto(DATA.to_bytes(2, "big") + block.to_bytes(2, "big") + b"evil data", (HOST, smee.port))
                reply, _ = s.recvfrom(65536)
                assert parse(reply) == Error(ERR_UNKNOWN_TID, "unknown transfer ID")
    after = listing(smee.root)
    # smee's own log and the hook's grow; nothing else appears or changes.
    for grown in ("smee.log", "opened.log"):
        before.pop(grown), after.pop(grown)
    assert after == before
    hardware = str(smee.root / "hardware.yaml")
    assert [line for line in smee.opened_since(mark) if hardware not in line] == []


@pytest.mark.parametrize(
    ("name", "options", "granted"),
    [
        ("autoexec.ipxe", {"blksize": "8"}, {"blksize": "8"}),
        ("undionly.kpxe", {"blksize": "8", "tsize": "0"}, {"blksize": "8", "tsize": None}),
        ("undionly.kpxe", {"blksize": "65464"}, {"blksize": "65464"}),  # loopback's MTU allows it
        ("ipxe.efi", {"blksize": "65464", "windowsize": "4"}, {"blksize": "65464", "windowsize": "4"}),
        ("ipxe.efi", {"windowsize": "65535"}, {"windowsize": str(WINDOWSIZE_CAP)}),
        ("ipxe.efi", {"blksize": "65465", "windowsize": "0"}, None),  # out of range: refused, default used
    ],
)
def test_real_server_extreme_options_are_byte_exact(smee: Smee, name: str, options: dict[str, str],
                                                    granted: dict[str, str | None] | None) -> None:
    got = tftp_get(smee.port, name, options)
    assert got.error is None, got.error
    if name == "autoexec.ipxe":
        expected = tftp_get(smee.port, name).data  # the same script at the default block size
        assert expected.startswith(b"#!ipxe")
    else:
        expected = (smee.root / "ipxe" / name).read_bytes()
    assert got.data == expected
    if granted is None:
        assert got.oack is None
    else:
        assert got.oack == {k: (str(len(expected)) if v is None else v) for k, v in granted.items()}


def test_real_server_answers_stray_tids_and_the_transfer_goes_on(smee: Smee) -> None:
    strays: list[Any] = []

    def stranger(tid: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            s.settimeout(RECV_TIMEOUT)
            for datagram in (ack(1), encode_data(1, b"x"), b"\xff\xff"):
                s.sendto(datagram, tid)
                reply, addr = s.recvfrom(65536)
                assert addr == tid
                strays.append(parse(reply))
            s.sendto(encode_error(0, "go away"), tid)  # an ERROR is not answered, nor obeyed
            s.settimeout(0.5)
            with pytest.raises(TimeoutError):
                s.recvfrom(65536)

    got = tftp_get(smee.port, "undionly.kpxe", on_first=stranger)
    assert strays == [Error(ERR_UNKNOWN_TID, "unknown transfer ID")] * 3
    assert got.error is None and got.data == (smee.root / "ipxe" / "undionly.kpxe").read_bytes()


def abandon(port: int, total: int, sockets: int = 100, wait: float = 20.0) -> tuple[int, int]:
    """Send ``total`` RRQs for undionly.kpxe and never acknowledge anything; (transfers started, busy ERRORs).

    From ``sockets`` source ports, one RRQ per socket per round, each round
    waiting (at most ``wait`` s) until every RRQ sent so far has had its first
    answer: DATA 1 from a new port (a transfer started) or the busy ERROR from
    the listening port. Pacing keeps every socket buffer far from full, so
    nothing is lost and every RRQ is accounted for. A transfer is counted once
    by (our port, its port): its retransmission of DATA 1 repeats the pair.
    """
    server = (HOST, port)
    rrq = encode_request(RRQ, "undionly.kpxe")
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    started: set[tuple[int, tuple[str, int]]] = set()
    busy = 0
    try:
        for _ in range(sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((HOST, 0))
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ, s.getsockname()[1])
        sent = 0
        while sent < total:
            batch = socks[: min(sockets, total - sent)]
            for s in batch:
                s.sendto(rrq, server)
            sent += len(batch)
            deadline = time.monotonic() + wait
            while len(started) + busy < sent:
                left = deadline - time.monotonic()
                assert left > 0, f"{sent - len(started) - busy} of {sent} RRQs unanswered after {wait:g}s"
                for key, _ in selector.select(left):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    while True:
                        try:
                            datagram, addr = sock.recvfrom(2048)
                        except BlockingIOError:
                            break
                        packet = parse(datagram)
                        if addr == server:
                            assert packet == Error(ERR_UNDEFINED, "server busy, try again later"), packet
                            busy += 1
                        else:
                            assert isinstance(packet, Data) and packet.block == 1, packet
                            started.add((key.data, addr))
        return len(started), busy
    finally:
        selector.close()
        for s in socks:
            s.close()


TOTAL = 10_000


def test_real_server_reclaims_ten_thousand_abandoned_sessions(smee: Smee) -> None:
    """10,000 RRQs never acknowledged, against --tftp-max-sessions' default of 1,024.

    Exactly 10,000 − 1,024 get the busy ERROR as long as the first transfers
    are still alive when the last RRQ arrives (the RRQs take a few seconds,
    a transfer lives TIMEOUT × (RETRIES + 1) s). Then every transfer ends by
    timeout: the gauge goes back to 0, and so do descriptors and memory.

    Memory method: the baseline is taken after a warm-up round that already
    filled the cap (2,000 RRQs) and was reclaimed, because CPython keeps
    freed memory in its arenas and the allocator keeps its heap: the first
    round's peak stays in RSS for good. A leak grows RSS with every round;
    the measured round (five times the warm-up) must end within 10 % of the
    baseline. Descriptors must come back exactly.
    """
    cap = 1024
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < cap + FD_MARGIN:
        pytest.skip(f"the hard open-file limit {hard} is below the {cap + FD_MARGIN} descriptors "
                    "1,024 transfers need (raise it with 'ulimit -Hn')")
    limit = int(re.findall(r"^Max open files\s+(\d+)", Path(f"/proc/{smee.proc.pid}/limits").read_text(),
                           re.MULTILINE)[0])
    assert limit >= cap + FD_MARGIN  # smee raised it from SOFT_NOFILE

    def reclaimed() -> None:
        wait_until(lambda: smee.sessions() == 0, LIFETIME + 30,
                   lambda: f"{smee.sessions():g} TFTP sessions still in progress")

    started, busy = abandon(smee.port, 2000)
    assert started + busy == 2000 and started >= cap
    reclaimed()
    fds = smee.fds()
    rss = smee.rss_kib()
    labels = '{file="undionly.kpxe",outcome="%s"}'
    timeouts, refusals = (smee.sample("tftp_transfers_total", labels % o) for o in ("timeout", "busy"))

    began = time.monotonic()
    started, busy = abandon(smee.port, TOTAL)
    seconds = time.monotonic() - began
    print(f"\n{TOTAL} RRQs in {seconds:.2f}s: {started} transfers, {busy} busy ERRORs")
    assert started + busy == TOTAL  # every RRQ answered, exactly once
    if seconds < LIFETIME:
        assert (started, busy) == (cap, TOTAL - cap)
    else:  # a slow machine: the first transfers timed out (and freed their places) before the last RRQ
        assert started >= cap
    reclaimed()
    assert smee.sample("tftp_transfers_total", labels % "timeout") - timeouts == started
    assert smee.sample("tftp_transfers_total", labels % "busy") - refusals == busy
    # Descriptors: the count settles once closed HTTP connections (the /metrics polls) are gone.
    wait_until(lambda: smee.fds() <= fds, 10, lambda: f"{smee.fds()} descriptors open, {fds} before")
    assert smee.fds() == fds
    after = smee.rss_kib()
    print(f"RSS {rss} KiB after the warm-up, {after} KiB after {TOTAL} abandoned sessions")
    assert after <= rss * 1.10, f"RSS grew from {rss} to {after} KiB"
    # And a good client is served as before.
    assert tftp_get(smee.port, "undionly.kpxe").data == (smee.root / "ipxe" / "undionly.kpxe").read_bytes()
