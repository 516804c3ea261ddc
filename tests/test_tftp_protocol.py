"""TFTPServerProtocol and TFTPService with fake ports, a fake clock and scripted backends (no sockets).

Every transfer is driven to its end by :class:`Client`, a minimal TFTP
client speaking to the fake ports, so each test also checks what a real
client would see: which port answered, what it sent, and that the server
kept no port and no timer afterwards.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Address
from typing import Any

import pytest
from fakes import FakeBackend, FakeUDPPort, FakeUDPReactor, formatted, hardware
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs

from smee.backends import LookupFailed
from smee.dhcp.policy import DHCPConfig
from smee.tftp import files
from smee.tftp.packet import (
    ACK,
    ERR_ACCESS,
    ERR_NOT_FOUND,
    ERR_OPTIONS,
    ERR_UNDEFINED,
    ERR_UNKNOWN_TID,
    RRQ,
    WRQ,
    Data,
    Error,
    OAck,
    encode_error,
    encode_request,
    parse,
)
from smee.tftp.protocol import AUTOEXEC, SessionProtocol, TFTPConfig, TFTPServerProtocol
from smee.tftp.service import (
    TFTPBindError,
    TFTPService,
    interface_for,
    makeService,
    max_blksize,
)

SERVER = "192.0.2.1"
CLIENT = ("192.0.2.10", 2000)
OTHER = ("192.0.2.11", 3000)
MAC = "52:54:00:00:00:01"
TRACEPARENT = "-00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
IPXE_DIR = "/srv/ipxe"

#: distinct contents, not multiples of 512, so block boundaries are exercised
BINARIES = {
    "ipxe.efi": bytes(range(256)) * 9 + b"efi",
    "undionly.kpxe": b"\x55\xaa" * 700,
    "snp.efi": b"arm64" * 300,
}


class FakeBinaries:
    """:class:`smee.tftp.files.Binaries` with contents set by the test."""

    def __init__(self, contents: dict[str, bytes] | None = None) -> None:
        self.contents = dict(BINARIES if contents is None else contents)
        self.warnings: tuple[str, ...] = ()
        self.version = "test"

    def get(self, name: str) -> bytes | None:
        return self.contents.get(name)

    def available(self) -> frozenset[str]:
        return frozenset(self.contents)


def dhcp_config(mode: str = "reservation") -> DHCPConfig:
    ip = IPv4Address(SERVER)
    return DHCPConfig(
        mode=mode, server_ip=ip, syslog_ip=ip, tftp_ip=ip, tftp_port=69,
        http_binary_url=f"http://{SERVER}:8080/ipxe/", http_binary_ip=ip,
        script_url=f"http://{SERVER}:8080/auto.ipxe", prepend_mac=True, ipxe_rom_chainload=False,
    )


class Server:
    """A TFTPServerProtocol listening on a fake port 69, with its reactor and backend."""

    def __init__(self, mode: str = "reservation", backend: Any = None, binaries: Any = None,
                 **config: Any) -> None:
        self.reactor = FakeUDPReactor()
        self.backend = FakeBackend() if backend is None else backend
        if backend is None:
            self.backend.add(hardware(MAC, CLIENT[0]))
        self.config = TFTPConfig(mode=mode, ipxe_dir=IPXE_DIR, dhcp=dhcp_config(mode), **config)
        self.protocol = TFTPServerProtocol(
            FakeBinaries() if binaries is None else binaries, self.backend, self.config, self.reactor, SERVER,
        )
        self.listener = self.reactor.listenUDP(69, self.protocol, interface=SERVER)

    def rrq(self, name: str, client: tuple[str, int] = CLIENT, mode: str = "octet", **options: Any) -> None:
        self.listener.receive(encode_request(RRQ, name, mode, {k: str(v) for k, v in options.items()}), client)

    def replies(self, port: FakeUDPPort | None = None, to: tuple[str, int] = CLIENT) -> list[Any]:
        """Parsed packets ``port`` (the listener by default) sent to ``to``, forgetting them."""
        port = self.listener if port is None else port
        out, keep = [], []
        for data, dst in port.written:
            (out if dst == to else keep).append(parse(data) if dst == to else (data, dst))
        port.written = keep
        return out

    def idle(self) -> None:
        """Nothing left behind: no transfer, no open port but the listener, no timer."""
        assert self.protocol.in_progress == 0
        assert self.reactor.open_ports == [self.listener]
        assert self.reactor.getDelayedCalls() == []


class Client:
    """A TFTP client over fake ports: RRQ, OACK → ACK 0, DATA n → ACK n, until a short block."""

    def __init__(self, server: Server, addr: tuple[str, int] = CLIENT) -> None:
        self.server = server
        self.addr = addr
        self.port: FakeUDPPort | None = None  # the server's TID, learnt from its first packet
        self.data = b""
        self.oack: dict[str, str] | None = None
        self.error: Error | None = None
        self.done = False
        self.blksize = 512
        self.expect = 1

    def request(self, name: str, mode: str = "octet", **options: Any) -> Client:
        self._before = len(self.server.reactor.ports)
        self.server.rrq(name, self.addr, mode, **options)
        self._learn()
        return self

    def _learn(self) -> None:
        """The server's TID: the port opened for us, else (for now, or single-port) the listener."""
        opened = self.server.reactor.ports[self._before:]
        assert len(opened) <= 1
        self.port = opened[0] if opened else self.server.listener

    def send(self, packet: bytes) -> None:
        assert self.port is not None
        self.port.receive(packet, self.addr)

    def step(self) -> bool:
        """Handle what the server sent; True if it sent anything."""
        if self.port is self.server.listener:
            self._learn()  # the session may have started since (a slow backend)
        assert self.port is not None
        packets = self.server.replies(self.port, self.addr)
        if not packets and self.port is not self.server.listener:
            # errors before a session are sent from the listening port
            packets = self.server.replies(self.server.listener, self.addr)
        for p in packets:
            if isinstance(p, Error):
                self.error, self.done = p, True
            elif isinstance(p, OAck) and self.expect == 1:
                self.oack = p.options
                self.blksize = int(p.options.get("blksize", 512))
                self.send(encode_ack(0))
            elif isinstance(p, Data):
                if p.block == self.expect & 0xFFFF:
                    self.data += p.payload
                    self.expect += 1
                    if len(p.payload) < self.blksize:
                        self.done = True
                self.send(encode_ack(p.block))
        return bool(packets)

    def run(self, limit: int = 10000) -> Client:
        for _ in range(limit):
            if self.done or not self.step():
                return self
        raise AssertionError("transfer did not end")


def encode_ack(block: int) -> bytes:
    return ACK.to_bytes(2, "big") + block.to_bytes(2, "big")


def fetch(server: Server, name: str, addr: tuple[str, int] = CLIENT, mode: str = "octet", **options: Any) -> Client:
    return Client(server, addr).request(name, mode, **options).run()


def outcomes(events: list[Any]) -> list[str]:
    """The outcome field of each captured event that has one (refusals, transfer ends)."""
    return [e["outcome"] for e in events if "outcome" in e]


def messages(events: list[Any]) -> str:
    return "\n".join(formatted(events))


# --- gating ----------------------------------------------------------------


def test_known_allowed_client_gets_the_file_from_a_new_port() -> None:
    server = Server()
    with capturedLogs() as events:
        client = Client(server).request("ipxe.efi")
        assert client.port is not server.listener and client.port is not None
        assert client.port.getHost().host == SERVER  # bound to the listening address
        assert client.port.written and server.listener.written == []
        client.run()
    assert client.error is None and client.data == BINARIES["ipxe.efi"]
    assert server.backend.calls == [("ip", IPv4Address(CLIENT[0]))]
    server.idle()
    done = [e for e in events if e.get("outcome") == "complete"]
    assert len(done) == 1 and done[0]["log_level"] == LogLevel.info
    assert done[0]["file"] == "ipxe.efi" and done[0]["size"] == len(BINARIES["ipxe.efi"])
    assert f"ipxe.efi to {CLIENT[0]}:{CLIENT[1]}: complete after" in messages(done)


def test_options_are_negotiated_and_capped_by_max_blksize() -> None:
    server = Server(max_blksize=1024)
    client = fetch(server, "undionly.kpxe", blksize=1468, tsize=0, windowsize=4)
    size = len(BINARIES["undionly.kpxe"])
    assert client.oack == {"blksize": "1024", "tsize": str(size), "windowsize": "4"}
    assert client.data == BINARIES["undionly.kpxe"]
    server.idle()


def test_unknown_ip_is_refused_with_access_violation() -> None:
    server = Server(backend=FakeBackend())
    with capturedLogs() as events:
        client = fetch(server, "ipxe.efi")
    assert client.error == Error(ERR_ACCESS, f"access violation: unknown client {CLIENT[0]}")
    assert client.port is server.listener  # no transfer port was opened
    server.idle()
    assert outcomes(events) == ["unknown-client"]
    assert f"refused ipxe.efi to {CLIENT[0]}:{CLIENT[1]}: no hardware record has IP {CLIENT[0]}" in messages(events)


def test_netboot_not_allowed_is_refused_with_access_violation() -> None:
    backend = FakeBackend()
    backend.add(hardware(MAC, CLIENT[0], allow_pxe=False))
    server = Server(backend=backend)
    with capturedLogs() as events:
        client = fetch(server, "ipxe.efi")
    assert client.error == Error(ERR_ACCESS, f"access violation: netboot not allowed for {MAC}")
    server.idle()
    assert f"netboot not allowed for {MAC}" in messages(events)
    assert outcomes(events) == ["netboot-not-allowed"]


@pytest.mark.parametrize(
    "failure, level, outcome",
    [
        (LookupFailed("two records claim 192.0.2.10"), LogLevel.warn, "lookup-failed"),
        (RuntimeError("backend bug"), LogLevel.error, "lookup-error"),
    ],
)
def test_backend_failure_is_error_0_and_logged(failure: Exception, level: LogLevel, outcome: str) -> None:
    server = Server(backend=FakeBackend({CLIENT[0]: failure}))
    with capturedLogs() as events:
        client = fetch(server, "ipxe.efi")
    assert client.error == Error(ERR_UNDEFINED, "server error: hardware lookup failed")
    server.idle()
    (event,) = [e for e in events if e.get("outcome") == outcome]
    assert event["log_level"] == level and str(failure) in messages([event])


def test_backend_raising_synchronously_is_treated_as_a_failure() -> None:
    class Raising(FakeBackend):
        def by_ip(self, ip: Any) -> defer.Deferred[Any]:
            raise RuntimeError("no connection")

    server = Server(backend=Raising())
    with capturedLogs():
        client = fetch(server, "ipxe.efi")
    assert client.error is not None and client.error.code == ERR_UNDEFINED
    server.idle()


def test_slow_backend_times_out_with_error_0() -> None:
    server = Server(backend=FakeBackend({CLIENT[0]: defer.Deferred()}))
    with capturedLogs() as events:
        client = Client(server).request("ipxe.efi")
        assert not client.step() and server.protocol.in_progress == 1
        server.reactor.advance(2.9)
        assert not client.step()
        server.reactor.advance(0.2)
        client.run()
    assert client.error == Error(ERR_UNDEFINED, "server error: hardware lookup timed out")
    server.idle()
    assert "backend lookup by IP timed out after 3.0s" in messages(events)


def test_backend_answering_within_the_timeout_is_served() -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    server = Server(backend=FakeBackend({CLIENT[0]: pending}))
    client = Client(server).request("undionly.kpxe")
    server.reactor.advance(1)
    pending.callback(hardware(MAC, CLIENT[0]))
    client.run()
    assert client.data == BINARIES["undionly.kpxe"]
    server.idle()


@pytest.mark.parametrize("mode", ["proxy", "auto-proxy"])
def test_proxy_modes_serve_without_a_lookup(mode: str) -> None:
    server = Server(mode=mode, backend=FakeBackend())
    client = fetch(server, "snp.efi")
    assert client.data == BINARIES["snp.efi"]
    assert server.backend.calls == []
    server.idle()


# --- requests and names ------------------------------------------------------


def test_write_request_is_refused() -> None:
    server = Server()
    with capturedLogs() as events:
        server.listener.receive(encode_request(WRQ, "ipxe.efi"), CLIENT)
    assert server.replies() == [Error(ERR_ACCESS, "access violation: smee is read-only")]
    assert server.backend.calls == []
    server.idle()
    assert outcomes(events) == ["write-refused"]


@pytest.mark.parametrize(
    "name",
    ["foo.bin", "../ipxe.efi", "../../etc/passwd", "/etc/passwd", "52:54:00:00:00:01/../../etc/shadow", ""],
)
def test_unknown_or_unsafe_names_are_not_found(name: str) -> None:
    server = Server()
    with capturedLogs() as events:
        server.rrq(name)
    assert server.replies() == [Error(ERR_NOT_FOUND, f"file [{name}] not found")]
    assert server.backend.calls == []  # refused before troubling the backend
    server.idle()
    assert outcomes(events) == ["not-found"]


@pytest.mark.parametrize("name", [f"{MAC}/ipxe.efi", "ipxe.efi" + TRACEPARENT, f"{MAC}/ipxe.efi" + TRACEPARENT])
def test_mac_directory_and_traceparent_suffix_are_served(name: str) -> None:
    # The MAC in the log comes from the path, or else from the hardware found by IP.
    mac = MAC
    server = Server()
    with capturedLogs() as events:
        client = fetch(server, name)
    assert client.error is None and client.data == BINARIES["ipxe.efi"]
    (done,) = [e for e in events if e.get("outcome") == "complete"]
    assert done["file"] == "ipxe.efi" and done["mac"] == mac
    server.idle()


def test_autoexec_ipxe_is_generated_for_the_client() -> None:
    match = hardware(MAC, CLIENT[0])
    server = Server(backend=FakeBackend())
    server.backend.add(match)
    client = fetch(server, AUTOEXEC)
    assert client.error is None
    assert client.data == files.autoexec_for(server.config.dhcp, match)
    server.idle()


def test_autoexec_ipxe_in_proxy_mode_has_no_match() -> None:
    server = Server(mode="proxy", backend=FakeBackend())
    client = fetch(server, AUTOEXEC)
    assert client.data == files.autoexec_for(server.config.dhcp, None)
    assert server.backend.calls == []


def test_autoexec_with_an_unsafe_script_url_is_not_found() -> None:
    backend = FakeBackend()
    backend.add(hardware(MAC, CLIENT[0], ipxe_url="http://192.0.2.1/a script.ipxe"))
    server = Server(backend=backend)
    with capturedLogs() as events:
        client = fetch(server, AUTOEXEC)
    assert client.error == Error(ERR_NOT_FOUND, "file [autoexec.ipxe] not found: no usable script URL")
    server.idle()
    (event,) = [e for e in events if e.get("outcome") == "bad-script-url"]
    assert event["log_level"] == LogLevel.warn and event["mac"] == MAC


def test_missing_binary_is_a_clean_not_found() -> None:
    server = Server(binaries=FakeBinaries({"ipxe.efi": b"x"}))
    with capturedLogs() as events:
        client = fetch(server, "snp.efi")
    assert client.error == Error(ERR_NOT_FOUND, f"file [snp.efi] not found: no snp.efi in {IPXE_DIR}")
    server.idle()
    assert outcomes(events) == ["binary-missing"]


def test_netascii_is_converted_and_unknown_modes_refused() -> None:
    server = Server(binaries=FakeBinaries({"ipxe.efi": b"a\nb\rc"}))
    assert fetch(server, "ipxe.efi", mode="netascii").data == b"a\r\nb\r\0c"
    assert fetch(server, "ipxe.efi", mode="NetASCII").data == b"a\r\nb\r\0c"
    client = fetch(server, "ipxe.efi", mode="mail")
    assert client.error == Error(ERR_UNDEFINED, "unsupported mode 'mail'")
    server.idle()


# --- transfer ports ------------------------------------------------------------


def test_stray_tid_gets_error_5_and_the_transfer_continues() -> None:
    server = Server()
    client = Client(server).request("ipxe.efi")
    client.step()  # DATA 1 → ACK 1
    assert client.port is not None
    for stranger in (OTHER, (CLIENT[0], CLIENT[1] + 1)):
        client.port.receive(encode_ack(1), stranger)
        assert server.replies(client.port, stranger) == [Error(ERR_UNKNOWN_TID, "unknown transfer ID")]
    client.run()
    assert client.data == BINARIES["ipxe.efi"]
    server.idle()


def test_session_cap_refuses_the_excess_client() -> None:
    slow: defer.Deferred[Any] = defer.Deferred()
    backend = FakeBackend({"192.0.2.12": slow})
    for i, ip in enumerate((CLIENT[0], OTHER[0])):
        backend.add(hardware(f"52:54:00:00:01:0{i}", ip))
    server = Server(backend=backend, max_sessions=2)
    first = Client(server).request("ipxe.efi")
    Client(server, ("192.0.2.12", 4000)).request("ipxe.efi")  # waiting for the backend: counts
    assert server.protocol.in_progress == 2
    with capturedLogs() as events:
        excess = fetch(server, "ipxe.efi", OTHER)
    assert excess.error == Error(ERR_UNDEFINED, "server busy, try again later")
    assert [(e["outcome"], e["log_level"]) for e in events if "outcome" in e] == [("busy", LogLevel.warn)]
    first.run()
    assert first.data == BINARIES["ipxe.efi"]
    assert fetch(server, "ipxe.efi", OTHER).data == BINARIES["ipxe.efi"]  # a place is free again
    slow.callback(None)


def test_timed_out_session_releases_its_port_and_timers() -> None:
    server = Server(timeout=2.0, retries=3)
    with capturedLogs() as events:
        client = Client(server).request("ipxe.efi")
        port = client.port
        assert port is not None and port.listening
        for _ in range(3):
            server.reactor.advance(2.0)
        assert port.listening  # still retransmitting
        server.reactor.advance(2.0)
    assert not port.listening
    server.idle()
    (end,) = [e for e in events if e.get("outcome") == "timeout"]
    assert end["log_level"] == LogLevel.info and end["retransmissions"] == 3
    # 4 sends of DATA 1 (first + 3 retransmissions), nothing after
    assert server.replies(port) == [Data(1, BINARIES["ipxe.efi"][:512])] * 4


def test_client_error_ends_the_session_and_a_new_request_works() -> None:
    """The UEFI pattern: RRQ with tsize → OACK → ERROR 8 → RRQ again from the same port."""
    server = Server(max_blksize=1468)
    probe = Client(server).request("ipxe.efi", tsize=0, blksize=1468)
    (oack,) = server.replies(probe.port)
    assert oack == OAck({"tsize": str(len(BINARIES["ipxe.efi"])), "blksize": "1468"})
    with capturedLogs() as events:
        probe.send(encode_error(ERR_OPTIONS, "tsize only"))
    assert probe.port is not None and not probe.port.listening
    server.idle()
    assert outcomes(events) == ["client-error"]
    again = fetch(server, "ipxe.efi", tsize=0, blksize=1468)
    assert again.data == BINARIES["ipxe.efi"] and again.port is not probe.port
    server.idle()


def test_retransmitted_rrq_gets_its_own_port_and_the_client_picks_one() -> None:
    """Per-transfer mode keeps RFC 1350's behaviour: a repeated RRQ is a second transfer; the
    client carries on with the first TID it heard from and ERROR 5s the other, which ends it."""
    server = Server()
    first = Client(server).request("ipxe.efi")
    second_port = Client(server).request("ipxe.efi").port
    assert second_port is not None and second_port is not first.port
    with capturedLogs() as events:
        second_port.receive(encode_error(ERR_UNKNOWN_TID, "unknown transfer ID"), CLIENT)
    assert outcomes(events) == ["client-error"] and not second_port.listening
    first.run()
    assert first.data == BINARIES["ipxe.efi"]
    server.idle()


def test_transfer_port_failure_is_error_0() -> None:
    server = Server()
    server.reactor.fail_listen = OSError(errno.EMFILE, "Too many open files")
    with capturedLogs() as events:
        client = fetch(server, "ipxe.efi")
    assert client.error == Error(ERR_UNDEFINED, "server error: no transfer port")
    server.idle()
    assert [(e["outcome"], e["log_level"]) for e in events if "outcome" in e] == [("no-port", LogLevel.error)]


def test_stop_ends_transfers_and_pending_lookups() -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    backend = FakeBackend({OTHER[0]: pending})
    backend.add(hardware(MAC, CLIENT[0]))
    server = Server(backend=backend)
    running = Client(server).request("ipxe.efi")
    Client(server, OTHER).request("ipxe.efi")
    server.listener.stopListening()
    assert pending.called  # cancelled: its timeout is gone
    assert server.protocol.in_progress == 0
    assert server.reactor.getDelayedCalls() == []
    assert all(not p.listening for p in server.reactor.ports)
    assert running.port is not None
    assert server.replies(running.port)[-1] == Error(ERR_UNDEFINED, "server shutting down")


def test_stray_packets_on_the_listening_port() -> None:
    server = Server()
    server.listener.receive(encode_ack(1), CLIENT)
    assert server.replies() == [Error(ERR_UNKNOWN_TID, "unknown transfer ID")]
    server.listener.receive(encode_error(0, "bye"), CLIENT)  # an ERROR is never answered
    assert server.replies() == []
    server.idle()


# --- single-port mode ------------------------------------------------------------


def test_single_port_mode_demultiplexes_two_clients() -> None:
    backend = FakeBackend()
    backend.add(hardware(MAC, CLIENT[0]))
    backend.add(hardware("52:54:00:00:00:02", OTHER[0]))
    server = Server(backend=backend, single_port=True)
    a = Client(server, CLIENT).request("ipxe.efi", blksize=600)
    b = Client(server, OTHER).request("undionly.kpxe")
    assert a.port is server.listener and b.port is server.listener
    assert server.protocol.in_progress == 2
    while not (a.done and b.done):  # interleaved, one packet each at a time
        assert a.step() or a.done
        assert b.step() or b.done
    assert a.data == BINARIES["ipxe.efi"] and b.data == BINARIES["undionly.kpxe"]
    assert len(server.reactor.ports) == 1  # no transfer port was ever opened
    server.idle()


def test_single_port_new_request_replaces_the_session() -> None:
    server = Server(single_port=True)
    first = Client(server).request("ipxe.efi")
    first.step()  # DATA 1 received, ACK 1 sent
    with capturedLogs() as events:
        again = Client(server).request("undionly.kpxe").run()
    assert again.data == BINARIES["undionly.kpxe"]
    assert outcomes(events)[:1] == ["replaced"]
    server.idle()


def test_single_port_stray_ack_from_unknown_client() -> None:
    server = Server(single_port=True)
    client = Client(server).request("ipxe.efi")
    server.listener.receive(encode_ack(1), OTHER)
    assert server.replies(to=OTHER) == [Error(ERR_UNKNOWN_TID, "unknown transfer ID")]
    client.run()
    assert client.data == BINARIES["ipxe.efi"]


# --- robustness -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    for single_port in (False, True):
        server = Server(single_port=single_port)
        client = Client(server).request("ipxe.efi", blksize=1024)
        with capturedLogs() as events:
            server.listener.receive(data, OTHER)
            assert client.port is not None
            client.port.receive(data, CLIENT)
            client.port.receive(data, OTHER)
        assert not [e for e in events if e["log_level"] >= LogLevel.error], messages(events)
        server.reactor.advance(60)
        server.listener.stopListening()
        assert server.reactor.getDelayedCalls() == []


@pytest.mark.parametrize(
    "data",
    [
        b"", b"\x00", b"\x00\x01", b"\x00\x01ipxe.efi", b"\x00\x01ipxe.efi\x00",
        b"\x00\x01ipxe.efi\x00octet\x00blksize\x00", b"\x00\x07abc\x00", b"\xff" * 700,
        encode_request(RRQ, "ipxe.efi", "octet", {"blksize": "huge", "tsize": "-1"}),
    ],
)
def test_malformed_requests_are_dropped_or_answered(data: bytes) -> None:
    server = Server()
    with capturedLogs() as events:
        server.listener.receive(data, CLIENT)
    assert not [e for e in events if e["log_level"] >= LogLevel.error]
    server.reactor.advance(60)
    server.listener.stopListening()
    assert server.reactor.getDelayedCalls() == []


def test_a_session_that_raises_is_contained() -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    server = Server()
    server.protocol._session_factory = broken
    with capturedLogs() as events:
        client = fetch(server, "ipxe.efi")
    assert client.error == Error(ERR_UNDEFINED, "internal server error")
    server.idle()
    assert any(e["log_level"] == LogLevel.error for e in events)


# --- service -------------------------------------------------------------------------


def test_max_blksize_follows_the_interface_mtu() -> None:
    def names() -> list[tuple[int, str]]:
        return [(1, "lo"), (2, "eth0"), (3, "eth1")]

    addrs = {"lo": IPv4Address("127.0.0.1"), "eth0": IPv4Address("192.0.2.2"), "eth1": None}
    mtus = {"lo": 65536, "eth0": 1500, "eth1": 9000}
    kw: dict[str, Any] = {"names": names, "ipv4": addrs.get, "mtu": mtus.get}
    assert interface_for(IPv4Address("192.0.2.2"), names, addrs.get) == "eth0"
    assert max_blksize(65464, IPv4Address("192.0.2.2"), **kw) == (1468, "MTU 1500 of eth0")
    assert max_blksize(512, IPv4Address("192.0.2.2"), **kw)[0] == 512
    assert max_blksize(65464, IPv4Address("127.0.0.1"), **kw)[0] == 65464
    assert max_blksize(1468, IPv4Address("127.0.0.1"), **kw)[0] == 1468
    cap, note = max_blksize(65464, IPv4Address("0.0.0.0"), **kw)
    assert cap == 1468 and "assumed" in note


def service(reactor: FakeUDPReactor, **config: Any) -> TFTPService:
    cfg = TFTPConfig(mode="reservation", ipxe_dir=IPXE_DIR, dhcp=dhcp_config(), **config)
    backend = FakeBackend()
    backend.add(hardware(MAC, CLIENT[0]))
    return TFTPService(FakeBinaries(), backend, cfg, reactor, (SERVER, 69))


@pytest.mark.parametrize(
    "code, hint",
    [
        (errno.EADDRINUSE, "another TFTP server is listening"),
        (errno.EACCES, "need root or CAP_NET_BIND_SERVICE"),
        (errno.EADDRNOTAVAIL, "not an address of this host"),
    ],
)
def test_bind_errors_are_one_clear_line(code: int, hint: str) -> None:
    reactor = FakeUDPReactor()
    reactor.fail_listen = OSError(code, "boom")
    svc = service(reactor)
    with pytest.raises(TFTPBindError) as info:
        svc.privilegedStartService()
    text = str(info.value)
    assert text.startswith(f"smee: --tftp-addr={SERVER} --tftp-port=69: ") and hint in text
    assert "\n" not in text and svc.port is None


def test_service_start_and_stop() -> None:
    reactor = FakeUDPReactor()
    svc = service(reactor)
    with capturedLogs() as events:
        svc.privilegedStartService()
        svc.startService()
    assert len(reactor.ports) == 1 and reactor.ports[0].getHost().port == 69
    assert "TFTP listening on 192.0.2.1:69, one port per transfer" in messages(events)
    reactor.ports[0].receive(encode_request(RRQ, "ipxe.efi"), CLIENT)
    assert len(reactor.open_ports) == 2
    d = svc.stopService()
    assert d.called and reactor.open_ports == [] and reactor.getDelayedCalls() == []


def test_service_stop_tells_single_port_clients() -> None:
    reactor = FakeUDPReactor()
    svc = service(reactor, single_port=True)
    with capturedLogs() as events:
        svc.startService()
        listener = reactor.ports[0]
        listener.receive(encode_request(RRQ, "ipxe.efi"), CLIENT)
        svc.stopService()
    sent = [parse(data) for data, dst in listener.written if dst == CLIENT]
    assert sent[0] == Data(1, BINARIES["ipxe.efi"][:512])
    assert sent[-1] == Error(ERR_UNDEFINED, "server shutting down")
    assert reactor.open_ports == [] and reactor.getDelayedCalls() == []
    assert outcomes(events) == ["stopped"]


def test_make_service_from_settings(tmp_path: Any) -> None:
    from smee.tap import Options

    (tmp_path / "ipxe.efi").write_bytes(b"efi")
    opts = Options(environ={})
    opts.parseOptions([
        "--backend-noop-enabled=true", "--dhcp-mode=auto-proxy", "--public-ip=127.0.0.1",
        "--tftp-port=6969", "--tftp-block-size=1468", "--tftp-single-port=true",
        "--tftp-timeout=2s", "--tftp-retries=3", "--tftp-max-sessions=7", f"--ipxe-dir={tmp_path}",
    ])
    from smee.tap import makeRuntime

    reactor = FakeUDPReactor()
    with capturedLogs():
        svc = makeService(opts.settings, makeRuntime(opts.settings, FakeBackend(), reactor), reactor)
    c = svc.config
    assert svc.address == ("127.0.0.1", 6969)
    assert (c.mode, c.max_blksize, c.single_port, c.timeout, c.retries, c.max_sessions) == (
        "auto-proxy", 1468, True, 2.0, 3, 7)
    assert c.ipxe_dir == str(tmp_path) and c.dhcp.tftp_port == 69
    assert svc.binaries.get("ipxe.efi") == b"efi"


# --- the send fast path ---


class _Socket:
    """A socket whose sendto records, or raises ``error``."""

    def __init__(self, error: OSError | None = None) -> None:
        self.error = error
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        if self.error is not None:
            raise self.error
        self.sent.append((data, addr))
        return len(data)


class _Port:
    """A UDP transport with a real-looking ``socket``; ``write`` is Twisted's slow path."""

    def __init__(self, sock: _Socket) -> None:
        self.socket = sock
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


def test_session_port_sends_straight_to_the_socket() -> None:
    client = ("192.0.2.10", 2000)
    protocol = SessionProtocol(client, "snp.efi")
    port = _Port(_Socket())
    protocol.makeConnection(port)
    protocol.send(b"\x00\x03\x00\x01x")
    assert port.socket.sent == [(b"\x00\x03\x00\x01x", client)] and port.written == []
    protocol.doStop()  # the port closed: nothing more goes out
    protocol.send(b"late")
    assert len(port.socket.sent) == 1 and port.written == []


def test_session_port_leaves_send_errors_to_the_port() -> None:
    """An OSError from the socket goes through Port.write, which handles it as it always has."""
    client = ("192.0.2.10", 2000)
    protocol = SessionProtocol(client, "snp.efi")
    port = _Port(_Socket(OSError(errno.EAGAIN, "busy")))
    protocol.makeConnection(port)
    protocol.send(b"data")
    assert port.written == [(b"data", client)]


def test_session_port_acks_reach_the_session_without_parsing() -> None:
    client = ("192.0.2.10", 2000)
    protocol = SessionProtocol(client, "snp.efi")
    protocol.makeConnection(_Port(_Socket()))

    class Session:
        def __init__(self) -> None:
            self.acks: list[int] = []
            self.packets: list[Any] = []

        def ack(self, block: int) -> None:
            self.acks.append(block)

        def received(self, packet: Any) -> None:
            self.packets.append(packet)

    session = protocol.session = Session()
    protocol.datagramReceived(encode_ack(7), client)
    protocol.datagramReceived(encode_error(0, "bye"), client)
    protocol.datagramReceived(encode_ack(8), ("192.0.2.99", 2000))  # a stranger: ERROR 5, not an ACK
    assert session.acks == [7]
    assert [type(p).__name__ for p in session.packets] == ["Error"]
