"""The transfer-socket mux (:mod:`smee.tftp.mux`) and UDP GSO windows (:mod:`smee.tftp.gso`).

Real UDP sockets on 127.0.0.1 only, read by a mux whose reactor is a fake
that records ``addReader``/``removeReader``: the tests call ``doRead`` as the
reactor would, after waiting (bounded) for the mux to be readable. GSO is
tested with fake sockets (errors, chunking) and once for real over
loopback (the bytes must arrive as separate, correct datagrams whether or
not the kernel does GSO).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from typing import Any

import pytest
from fakes import FakeBackend, FakeUDPReactor, hardware
from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, capturedLogs

from smee.tftp import gso
from smee.tftp import mux as mux_module
from smee.tftp.gso import GSOUnavailable, send_segments
from smee.tftp.mux import TransferMux, supported
from smee.tftp.packet import (
    ACK,
    ERR_UNKNOWN_TID,
    RRQ,
    Data,
    Error,
    OAck,
    encode_error,
    encode_request,
    parse,
)
from smee.tftp.protocol import SessionProtocol, TFTPConfig, TFTPServerProtocol

HOST = "127.0.0.1"
MAC = "52:54:00:00:00:01"
#: bounded wait for a datagram over loopback (it is normally there at once)
WAIT = 2.0


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def ack(block: int) -> bytes:
    return ACK.to_bytes(2, "big") + (block & 0xFFFF).to_bytes(2, "big")


class FDSetReactor(FakeUDPReactor):
    """A FakeUDPReactor that also records readers (IReactorFDSet), as the epoll reactor would hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


class Recorder:
    """A protocol that records datagrams (and raises when told to)."""

    def __init__(self, fail: bool = False) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []
        self.fail = fail
        self.transport: Any = None
        self.stopped = 0

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append((data, addr))
        if self.fail:
            raise RuntimeError("protocol bug")

    def doStop(self) -> None:
        self.stopped += 1


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    return sock


def pump(mux: TransferMux) -> None:
    """Wait (bounded) until the mux is readable, then read as the reactor would."""
    readable, _, _ = select.select([mux.fileno()], [], [], WAIT)
    assert readable, "nothing arrived on the mux"
    mux.doRead()


def recv(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    sock.settimeout(WAIT)
    return sock.recvfrom(65536)


# --- the mux on its own -------------------------------------------------------------------


def test_mux_registers_once_and_dispatches_to_the_right_port() -> None:
    reactor = FDSetReactor()
    mux = TransferMux(reactor)
    assert reactor.readers == [mux] and mux.fileno() >= 0
    a, b = Recorder(), Recorder()
    port_a, port_b = mux.listen(a, HOST), mux.listen(b, HOST)
    assert a.transport is port_a and port_a.getHost().host == HOST and port_a.getHost().port > 0
    with client_socket() as c1, client_socket() as c2:
        c1.sendto(b"to a", (HOST, port_a.getHost().port))
        c2.sendto(b"to b", (HOST, port_b.getHost().port))
        for _ in range(2):
            if len(a.got) + len(b.got) < 2:
                pump(mux)
        assert a.got == [(b"to a", c1.getsockname())]
        assert b.got == [(b"to b", c2.getsockname())]
    mux.close()
    assert reactor.readers == [] and a.stopped == b.stopped == 1


def test_one_datagram_per_lone_socket_per_event_the_rest_next_event() -> None:
    """Level-triggered: a lone ready socket is read once (no read that must fail), and reported again."""
    reactor = FDSetReactor()
    mux = TransferMux(reactor)
    proto = Recorder()
    port = mux.listen(proto, HOST)
    with client_socket() as c:
        c.sendto(b"one", (HOST, port.getHost().port))
        c.sendto(b"two", (HOST, port.getHost().port))
        pump(mux)
        assert [d for d, _ in proto.got] == [b"one"]
        pump(mux)
        assert [d for d, _ in proto.got] == [b"one", b"two"]
    mux.close()


def test_a_failing_port_does_not_affect_the_others() -> None:
    reactor = FDSetReactor()
    mux = TransferMux(reactor)
    bad, good = Recorder(fail=True), Recorder()
    bad_port, good_port = mux.listen(bad, HOST), mux.listen(good, HOST)
    with client_socket() as c, capturedLogs() as events:
        c.sendto(b"x", (HOST, bad_port.getHost().port))
        c.sendto(b"y", (HOST, good_port.getHost().port))
        for _ in range(2):
            if not (bad.got and good.got):
                pump(mux)
        assert bad.got and good.got == [(b"y", c.getsockname())]
    assert any(e["log_level"] == LogLevel.critical or "log_failure" in e for e in events)
    assert reactor.readers == [mux]  # still registered: doRead never raised
    mux.close()


def test_closing_a_port_twice_closes_its_socket_once() -> None:
    reactor = FDSetReactor()
    mux = TransferMux(reactor)
    before = fd_count()
    proto = Recorder()
    port = mux.listen(proto, HOST)
    assert fd_count() == before + 1 and mux.ports == 1
    port.stopListening()
    port.stopListening()
    assert fd_count() == before and mux.ports == 0 and proto.stopped == 1
    assert port.fileno() == -1 and not port.listening
    port.write(b"late", (HOST, 9))  # a closed port sends nothing, raises nothing
    mux.close()
    mux.close()


def test_no_fd_leak_over_many_ports_and_close() -> None:
    before = fd_count()
    reactor = FDSetReactor()
    mux = TransferMux(reactor)
    ports = [mux.listen(Recorder(), HOST) for _ in range(300)]
    for port in ports[::2]:
        port.stopListening()
    mux.close()  # closes the other half
    assert all(not p.listening for p in ports)
    assert fd_count() == before
    with pytest.raises(CannotListenError):
        mux.listen(Recorder(), HOST)
    assert mux.fileno() == -1


def test_a_socket_that_cannot_bind_is_cannot_listen_and_not_leaked(monkeypatch: pytest.MonkeyPatch) -> None:
    reactor = FDSetReactor()
    mux = TransferMux(reactor)
    before = fd_count()

    class Unbindable(socket.socket):
        def bind(self, address: Any) -> None:
            raise OSError(errno.EADDRINUSE, "in use")

    monkeypatch.setattr(mux_module.socket, "socket", Unbindable)
    with pytest.raises(CannotListenError):
        mux.listen(Recorder(), HOST)
    assert fd_count() == before and mux.ports == 0
    monkeypatch.undo()
    mux.close()


def test_stale_event_and_icmp_errors_are_swallowed() -> None:
    """A ready event whose datagram is gone (read elsewhere) is not an error."""
    reactor = FDSetReactor()
    mux = TransferMux(reactor)
    proto = Recorder()
    port = mux.listen(proto, HOST)
    with client_socket() as c:
        c.sendto(b"x", (HOST, port.getHost().port))
        select.select([mux.fileno()], [], [], WAIT)
        assert port.socket is not None
        port.socket.recvfrom(100)  # someone else took it
        mux.doRead()
        assert proto.got == []
    mux.close()


def test_supported_only_for_the_epoll_reactor() -> None:
    from twisted.internet.epollreactor import EPollReactor

    assert not supported(FakeUDPReactor())
    assert not supported(object())
    assert supported(EPollReactor.__new__(EPollReactor))


# --- the TFTP server over the mux -----------------------------------------------------------


class MuxServer:
    """TFTPServerProtocol with a fake listener (port 69) and real transfer sockets on the mux."""

    def __init__(self, **config: Any) -> None:
        self.reactor = FDSetReactor()
        backend = FakeBackend()
        backend.add(hardware(MAC, HOST, netmask="255.0.0.0"))
        self.mux = TransferMux(self.reactor)
        self.protocol = TFTPServerProtocol(
            Binaries(), backend,
            TFTPConfig(mode="reservation", max_blksize=1468, **config), self.reactor, HOST, mux=self.mux,
        )
        self.listener = self.reactor.listenUDP(69, self.protocol, interface=HOST)


#: not a multiple of any block size used, so the short last block is exercised
BLOB = bytes(range(256)) * 200 + b"tail"


class Binaries:
    version = "test"
    warnings: tuple[str, ...] = ()

    def get(self, name: str) -> bytes | None:
        return BLOB if name == "snp.efi" else None

    def available(self) -> frozenset[str]:
        return frozenset({"snp.efi"})


def fetch(server: MuxServer, sock: socket.socket, **options: Any) -> bytes:
    """Read snp.efi through the mux: RRQ to the fake listener, the rest over real sockets."""
    server.listener.receive(encode_request(RRQ, "snp.efi", "octet", {k: str(v) for k, v in options.items()}),
                            sock.getsockname())
    blksize, windowsize = int(options.get("blksize", 512)), int(options.get("windowsize", 1))
    data, expect, in_window = b"", 1, 0
    for _ in range(10000):
        packet, tid = recv(sock)
        p = parse(packet)
        if isinstance(p, OAck):
            sock.sendto(ack(0), tid)
            pump(server.mux)
        elif isinstance(p, Error):
            raise AssertionError(f"server error {p}")
        elif isinstance(p, Data):
            assert p.block == expect & 0xFFFF
            data += p.payload
            expect += 1
            in_window += 1
            last = len(p.payload) < blksize
            if last or in_window == windowsize:
                in_window = 0
                sock.sendto(ack(p.block), tid)
                pump(server.mux)
            if last:
                return data
        else:
            raise AssertionError(f"unexpected {p}")
    raise AssertionError("transfer did not end")


@pytest.mark.parametrize("options", [{}, {"blksize": 1468, "tsize": 0}, {"blksize": 1468, "windowsize": 16},
                                     {"blksize": 512, "windowsize": 64}])
def test_transfers_over_the_mux_leave_nothing_behind(options: dict[str, Any]) -> None:
    before = fd_count()
    server = MuxServer()
    with client_socket() as sock:
        assert fetch(server, sock, **options) == BLOB
    assert server.protocol.in_progress == 0 and server.mux.ports == 0
    assert server.reactor.getDelayedCalls() == []
    assert len(server.reactor.ports) == 1  # no Twisted port: the transfer socket was the mux's
    server.listener.stopListening()  # stopProtocol: the mux is closed too
    assert server.reactor.readers == []
    assert fd_count() == before


def test_stranger_gets_error_5_and_the_transfer_goes_on() -> None:
    server = MuxServer()
    with client_socket() as sock, client_socket() as stranger:
        server.listener.receive(encode_request(RRQ, "snp.efi", "octet", {}), sock.getsockname())
        first, tid = recv(sock)
        assert parse(first) == Data(1, BLOB[:512])
        stranger.sendto(ack(1), tid)
        pump(server.mux)
        assert parse(recv(stranger)[0]) == Error(ERR_UNKNOWN_TID, "unknown transfer ID")
        sock.sendto(ack(1), tid)
        pump(server.mux)
        assert parse(recv(sock)[0]) == Data(2, BLOB[512:1024])
        sock.sendto(encode_error(0, "enough"), tid)
        pump(server.mux)
    assert server.protocol.in_progress == 0 and server.mux.ports == 0
    server.listener.stopListening()


def test_abandoned_transfers_close_their_sockets() -> None:
    """Clients that vanish: every transfer times out, and every socket is closed."""
    before = fd_count()
    server = MuxServer(timeout=1.0, retries=1)
    socks = [client_socket() for _ in range(50)]
    try:
        for sock in socks:
            server.listener.receive(encode_request(RRQ, "snp.efi", "octet", {}), sock.getsockname())
        assert server.mux.ports == 50
        for _ in range(3):
            server.reactor.advance(1.0)
        assert server.protocol.in_progress == 0 and server.mux.ports == 0
    finally:
        for sock in socks:
            sock.close()
    server.listener.stopListening()
    assert fd_count() == before


def test_stopping_the_server_stops_transfers_and_closes_the_mux() -> None:
    before = fd_count()
    server = MuxServer()
    with client_socket() as sock:
        server.listener.receive(encode_request(RRQ, "snp.efi", "octet", {}), sock.getsockname())
        recv(sock)  # DATA 1
        server.listener.stopListening()
        assert parse(recv(sock)[0]) == Error(0, "server shutting down")
    assert server.reactor.readers == [] and server.mux.fileno() == -1
    assert server.reactor.getDelayedCalls() == []
    assert fd_count() == before


def test_without_a_mux_transfers_use_listen_udp() -> None:
    reactor = FakeUDPReactor()
    protocol = TFTPServerProtocol(Binaries(), FakeBackend(), TFTPConfig(mode="proxy"), reactor, HOST)
    listener = reactor.listenUDP(69, protocol, interface=HOST)
    listener.receive(encode_request(RRQ, "snp.efi", "octet", {}), ("192.0.2.10", 2000))
    assert len(reactor.ports) == 2  # a fake Twisted port for the transfer
    listener.stopListening()


# --- UDP GSO ---------------------------------------------------------------------------------


class FakeSocket:
    """``sendmsg``/``sendto`` recorders; ``fail`` (an OSError) is raised by the next ``sendmsg``."""

    def __init__(self, fail: OSError | None = None, fail_after: int = 0) -> None:
        self.msgs: list[tuple[list[bytes], int]] = []
        self.sent: list[bytes] = []
        self.fail = fail
        self.fail_after = fail_after

    def sendmsg(self, buffers: list[bytes], ancdata: Any, flags: int, addr: Any) -> int:
        if self.fail is not None and len(self.msgs) >= self.fail_after:
            raise self.fail
        ((level, option, value),) = ancdata
        assert (level, option) == (gso.SOL_UDP, gso.UDP_SEGMENT)
        self.msgs.append((list(buffers), struct.unpack("=H", value)[0]))
        return sum(map(len, buffers))

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append(bytes(data))
        return len(data)


def window(count: int, size: int = 1472, last: int | None = None) -> list[bytes]:
    packets = [bytes([i % 256]) * size for i in range(count)]
    if last is not None:
        packets[-1] = packets[-1][:last]
    return packets


def test_gso_sends_a_window_in_chunks_of_what_one_send_may_carry() -> None:
    sock = FakeSocket()
    packets = window(64, last=100)
    assert send_segments(sock.sendmsg, packets, (HOST, 9)) == 64
    per = gso.MAX_BYTES // 1472  # 44 full segments of 1472 bytes fit one UDP send
    assert [len(b) for b, _ in sock.msgs] == [per, 64 - per]
    assert all(size == 1472 for _, size in sock.msgs)
    assert [p for b, _ in sock.msgs for p in b] == packets
    assert sum(map(len, sock.msgs[0][0])) <= gso.MAX_BYTES


def test_gso_leaves_a_last_lone_packet_to_the_caller() -> None:
    sock = FakeSocket()
    packets = window(45, last=10)
    # 44 in one send; the 45th would be a GSO send of one: the caller's sendto does it.
    assert send_segments(sock.sendmsg, packets, (HOST, 9)) == 44


@pytest.mark.parametrize("packets", [
    window(1),
    [b"a" * 100, b"b" * 200, b"c" * 100],  # a larger packet after the first
    [b"a" * 100, b"b" * 50, b"c" * 50],    # a short one that is not the last
    [b"", b""],
])
def test_gso_is_not_used_for_sizes_the_kernel_would_cut_wrongly(packets: list[bytes]) -> None:
    sock = FakeSocket()
    assert send_segments(sock.sendmsg, packets, (HOST, 9)) == 0 and sock.msgs == []


@pytest.mark.parametrize("code", sorted(gso.UNSUPPORTED))
def test_gso_refused_by_the_kernel_says_so(code: int) -> None:
    sock = FakeSocket(OSError(code, os.strerror(code)), fail_after=1)
    with pytest.raises(GSOUnavailable) as caught:
        send_segments(sock.sendmsg, window(64), (HOST, 9))
    assert caught.value.sent == 44 and caught.value.error.errno == code


def test_gso_ordinary_send_error_returns_what_went_out() -> None:
    sock = FakeSocket(OSError(errno.ENOBUFS, "no buffer space"))
    assert send_segments(sock.sendmsg, window(8), (HOST, 9)) == 0


class FakePort:
    def __init__(self, sock: FakeSocket) -> None:
        self.socket = sock
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))


def test_session_protocol_falls_back_per_packet_and_remembers_it() -> None:
    client = ("192.0.2.10", 2000)
    sock = FakeSocket(OSError(errno.EIO, "no checksum offload"))
    protocol = SessionProtocol(client, "snp.efi")
    protocol.makeConnection(FakePort(sock))
    first, second = window(4, last=7), window(3)
    protocol.send_many(first)
    assert sock.sent == first and sock.msgs == []
    sock.fail = None  # would work now, but the socket is known not to do GSO
    protocol.send_many(second)
    assert sock.sent == first + second and sock.msgs == []


def test_session_protocol_uses_gso_while_it_works() -> None:
    client = ("192.0.2.10", 2000)
    sock = FakeSocket()
    protocol = SessionProtocol(client, "snp.efi")
    protocol.makeConnection(FakePort(sock))
    packets = window(16, last=3)
    protocol.send_many(packets)
    assert len(sock.msgs) == 1 and sock.msgs[0][0] == packets and sock.sent == []
    protocol.send_many([b"x" * 10, b"y" * 20])  # not GSO-shaped: one by one, GSO stays on
    assert sock.sent == [b"x" * 10, b"y" * 20]
    protocol.send_many(packets)
    assert len(sock.msgs) == 2


def test_real_gso_window_arrives_as_separate_datagrams() -> None:
    """Over loopback, with whatever the kernel does (GSO, or the fallback)."""
    with client_socket() as receiver, client_socket() as sender:
        sender.setblocking(False)
        protocol = SessionProtocol(receiver.getsockname(), "snp.efi")

        class Port:
            socket = sender

            def write(self, data: bytes, addr: Any) -> None:
                sender.sendto(data, addr)

        protocol.makeConnection(Port())
        packets = window(20, size=516, last=33)
        protocol.send_many(packets)
        got = [recv(receiver)[0] for _ in packets]
        assert got == packets


def test_service_drain_closes_the_mux_when_it_ends() -> None:
    """After SIGTERM's drain the listening port has long stopped: the mux is closed by the drain."""
    from functools import partial

    from smee.tftp.service import TFTPService

    before = fd_count()
    reactor = FDSetReactor()
    backend = FakeBackend()
    backend.add(hardware(MAC, HOST, netmask="255.0.0.0"))
    svc = TFTPService(Binaries(), backend, TFTPConfig(mode="reservation"), reactor, (HOST, 69),
                      protocol_factory=partial(TFTPServerProtocol, mux=True), drain_timeout=1.0)
    svc.startService()
    with client_socket() as sock:
        reactor.ports[0].receive(encode_request(RRQ, "snp.efi", "octet", {}), sock.getsockname())
        recv(sock)  # DATA 1 from a socket of the mux
        assert len(reactor.readers) == 1
        d = svc.stopService()
        assert not d.called and len(reactor.readers) == 1  # draining: the transfer goes on
        reactor.advance(1.1)
        assert d.called
    assert reactor.readers == [] and reactor.getDelayedCalls() == []
    assert fd_count() == before


def test_a_lone_transfer_sends_its_window_datagram_by_datagram() -> None:
    sock = FakeSocket()
    protocol = SessionProtocol(("192.0.2.10", 2000), "snp.efi", shared=lambda: False)
    protocol.makeConnection(FakePort(sock))
    packets = window(16, last=3)
    protocol.send_many(packets)
    assert sock.msgs == [] and sock.sent == packets


def test_windows_while_another_transfer_runs_go_out_with_gso_and_arrive_intact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two transfers at once (so windows take the GSO path), real sockets, byte-exact result."""
    from smee.tftp import protocol as protocol_module

    calls: list[int] = []

    def spy(sendmsg: Any, packets: list[bytes], addr: Any) -> int:
        calls.append(len(packets))
        return send_segments(sendmsg, packets, addr)

    monkeypatch.setattr(protocol_module, "send_segments", spy)
    before = fd_count()
    server = MuxServer()
    with client_socket() as other, client_socket() as sock:
        server.listener.receive(encode_request(RRQ, "snp.efi", "octet", {}), other.getsockname())
        assert parse(recv(other)[0]) == Data(1, BLOB[:512])  # waiting for its ACK meanwhile
        assert fetch(server, sock, blksize=1468, windowsize=16) == BLOB
        assert calls and calls[0] == 16  # the windows were offered to GSO
        other.sendto(encode_error(0, "never mind"), recv_tid(server))
        pump(server.mux)
    assert server.protocol.in_progress == 0 and server.mux.ports == 0
    server.listener.stopListening()
    assert fd_count() == before


def recv_tid(server: MuxServer) -> tuple[str, int]:
    """The address of the one transfer socket still open."""
    (port,) = server.mux._ports.values()
    host = port.getHost()
    return (host.host, host.port)
