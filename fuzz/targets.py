"""Fuzz targets: one function per parser, each with its properties and its seeds.

Every target is built by a factory (``make()``) that returns the
one-input function ``fn(data: bytes) -> None``. The function calls the code
under test the way smee's protocols and backends do, catches only the error
type that code documents (``DHCPParseError``, ``TFTPParseError``,
``SyslogParseError``, ``HardwareFileError``, ``HardwareError``...) and
asserts the properties listed in its docstring. Anything else it lets
escape: for atheris (``fuzz/harness.py``) that is a finding, for
``tests/test_fuzz.py`` a failed test.

Nothing here imports atheris, so the same targets run in CI without it
(seeds plus :func:`mutate`). State (configs, the fake app, the shared file
contents) is made by ``make()``, never at module level.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import random
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

OneInput = Callable[[bytes], None]


@dataclass(frozen=True)
class Target:
    """A fuzz target: how to build its one-input function, its seeds, and libFuzzer's -max_len."""

    name: str
    #: one line for fuzz/README.md: what is called and what is checked
    summary: str
    make: Callable[[], OneInput]
    seeds: Callable[[], list[bytes]]
    max_len: int
    #: a libFuzzer dictionary: tokens the mutator inserts (tags, option names, keywords)
    tokens: tuple[bytes, ...] = ()

    def dictionary(self) -> str:
        """``tokens`` in libFuzzer's -dict= format (one quoted, escaped token per line)."""
        return "".join(f'"{_escape(token)}"\n' for token in self.tokens)


def _escape(token: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in token)


class Reader:
    """Structured values out of fuzz bytes (like atheris' FuzzedDataProvider, without atheris).

    Reading past the end gives zeros, so every input is a valid program.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def __bool__(self) -> bool:
        return self.pos < len(self.data)

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return (self.u8() << 8) | self.u8()

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


# ----------------------------------------------------------------- seed helpers


def _load_test_module(name: str) -> ModuleType:
    """A helper module from tests/ (pcap.py), loaded by path: tests/ is not a package."""
    spec = importlib.util.spec_from_file_location(f"_smee_fuzz_{name}", TESTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    return module


def _captures() -> list[Any]:
    """Every UDP datagram of the real captures (shared/captures); none if they are not there."""
    pcap = _load_test_module("pcap")
    try:
        files = pcap.capture_files()
    except FileNotFoundError:
        return []
    out = []
    for path in files:
        out.extend(pcap.read_udp(path))
    return out


def _constants(path: Path, kind: type) -> list[Any]:
    """Every str or bytes literal in a source file (the test fixtures), in order."""
    if not path.exists():
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and type(n.value) is kind]


def _unique(items: Iterable[bytes]) -> list[bytes]:
    seen: dict[bytes, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


# ------------------------------------------------------------- (a) DHCP


def _dhcp_seeds() -> list[bytes]:
    from smee.dhcp import options as opt
    from smee.dhcp.packet import DISCOVER, INFORM, RELEASE, REQUEST, Packet, build

    seeds = [d.payload for d in _captures() if {d.src[1], d.dst[1]} & {67, 68}]
    chaddr = bytes.fromhex("525400aa882a") + bytes(10)
    pxe = {
        opt.MESSAGE_TYPE: bytes((DISCOVER,)),
        opt.MAX_SIZE: (1464).to_bytes(2, "big"),
        opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
        opt.CLIENT_ARCH: b"\x00\x07",
        opt.CLIENT_NDI: b"\x01\x03\x10",
        opt.CLIENT_GUID: bytes(17),
        opt.USER_CLASS: b"iPXE",
        opt.IPXE_ENCAP: b"\xeb\x03\x01\x15\x01\x13\x01\x01",
        opt.RELAY_AGENT: b"\x01\x04eth0",
    }
    seeds.append(build(Packet(1, xid=1, chaddr=chaddr, options=pxe)))
    seeds.append(build(Packet(1, xid=2, chaddr=chaddr, options={**pxe, opt.USER_CLASS: b"Tinkerbell",
                                                                opt.VENDOR_CLASS: b"HTTPClient"})))
    seeds.append(build(Packet(1, xid=3, chaddr=chaddr, giaddr=b"\xc6\x33\x64\x01", hops=3,
                              options={opt.MESSAGE_TYPE: bytes((REQUEST,)), opt.REQUESTED_IP: b"\xc0\x00\x02\x0a",
                                       opt.SERVER_ID: b"\xc0\x00\x02\x01"})))
    seeds.append(build(Packet(1, xid=4, chaddr=chaddr, ciaddr=b"\xc0\x00\x02\x0a",
                              options={opt.MESSAGE_TYPE: bytes((INFORM,))})))
    seeds.append(build(Packet(1, xid=5, chaddr=chaddr, ciaddr=b"\xc0\x00\x02\x0a",
                              options={opt.MESSAGE_TYPE: bytes((RELEASE,))})))
    # Option overload (52) into file and sname, and a long (RFC 3396) option.
    long_opts = {opt.MESSAGE_TYPE: bytes((DISCOVER,)), opt.VENDOR: bytes(range(256)) * 2, **pxe}
    seeds.append(build(Packet(1, xid=6, chaddr=chaddr, options=long_opts)))
    spill = {opt.MESSAGE_TYPE: bytes((DISCOVER,)), opt.HOSTNAME: b"h" * 120, opt.DOMAIN_NAME: b"d" * 50,
             opt.VENDOR_CLASS: b"PXEClient", opt.CLIENT_ARCH: b"\x00\x00", opt.PARAM_REQUEST: bytes(range(1, 200))}
    seeds.append(build(Packet(1, xid=7, chaddr=chaddr, options=spill), max_size=576))
    return _unique(seeds)


def _dhcp_matches(mac: str) -> list[Any]:
    """Hardware for the requesting MAC: none, plain, everything set, no IP / DHCP off / netboot off."""
    from smee.hardware import Hardware, Interface, Match

    def match(**fields: Any) -> Match:
        iface = Interface(mac=mac, **fields)
        return Match(Hardware(id=f"hw-{mac}", interfaces=(iface,), source="fuzz.yaml:1"), iface)

    label = "a" * 63
    return [
        None,
        match(ip=IPv4Address("192.0.2.10"), netmask=IPv4Address("255.255.255.0"), allow_pxe=True),
        match(
            ip=IPv4Address("192.0.2.11"), netmask=IPv4Address("255.255.255.0"),
            gateway=IPv4Address("192.0.2.1"), broadcast=IPv4Address("192.0.2.255"),
            dns_servers=tuple(IPv4Address(f"198.51.100.{i}") for i in range(1, 70)),
            ntp_servers=(IPv4Address("203.0.113.123"),),
            hostname=".".join([label] * 3) + ".b", domain_name="example.com",
            domain_search=tuple(f"{label}.{label}.example{i}.com" for i in range(8)),
            lease_time=0xFFFFFFFF, vlan_id="4096", allow_pxe=True,
            ipxe_url="http://boot.example.com/" + "p/" * 80 + "auto.ipxe",
        ),
        match(ip=None, allow_pxe=True),
        match(ip=IPv4Address("192.0.2.12"), disable_dhcp=True, allow_pxe=True),
        match(ip=IPv4Address("192.0.2.13"), allow_pxe=False, lease_time=0),
    ]


def make_dhcp() -> OneInput:
    """parse → classify → decide (every mode, a hardware match) → destination → build(max_size) → parse.

    Properties: only DHCPParseError escapes parse; classify and decide never
    raise; a reply answers the request (op, xid, chaddr); a reply builds
    within the client's max size (or PacketTooLarge, which the protocol
    handles) and re-parses to the same packet; any parsed request builds
    and re-parses to itself; option sub-TLVs decode without raising.
    """
    from smee.dhcp import options as opt
    from smee.dhcp.classify import classify
    from smee.dhcp.packet import (
        BOOTREPLY,
        MIN_SIZE,
        DHCPParseError,
        PacketTooLarge,
        build,
        parse,
    )
    from smee.dhcp.policy import (
        AUTO_PROXY,
        PROXY,
        RESERVATION,
        DHCPConfig,
        decide,
        destination,
    )

    server = IPv4Address("192.0.2.1")

    def config(mode: str, **kw: Any) -> DHCPConfig:
        base: dict[str, Any] = {
            "mode": mode, "server_ip": server, "syslog_ip": server, "tftp_ip": server, "tftp_port": 69,
            "http_binary_url": "http://192.0.2.1:8080/ipxe/", "http_binary_ip": server,
            "script_url": "http://192.0.2.1:8080/auto.ipxe", "prepend_mac": True, "ipxe_rom_chainload": False,
        }
        base.update(kw)
        return DHCPConfig(**base)

    configs = (
        config(RESERVATION),
        config(RESERVATION, syslog_ip=None, ipxe_rom_chainload=True, available_binaries=frozenset({"ipxe.efi"})),
        config(PROXY, ipxe_rom_chainload=True, http_binary_ip=None,
               script_url="https://boot.example.com/x/auto.ipxe?a=b#f"),
        config(AUTO_PROXY, prepend_mac=False, script_url="http://boot.example.com"),
    )
    outcomes = {"offer", "ack", "nak", "ignored", "unknown", "disabled", "no-address", "release",
                "decline", "not-netboot", "no-binary", "not-allowed"}

    def check_reply(request: Any, reply: Any, outcome: str) -> None:
        assert outcome in ("offer", "ack", "nak"), outcome
        assert reply.op == BOOTREPLY and reply.xid == request.xid and reply.chaddr == request.chaddr
        host, port = destination(request, reply)
        IPv4Address(host)
        assert port in (67, 68)
        max_size = request.max_size()
        try:
            wire = build(reply, max_size=max_size)
        except PacketTooLarge:
            return  # the protocol logs it and sends nothing: documented
        assert len(wire) <= max(max_size, MIN_SIZE), (len(wire), max_size)
        again = parse(wire)
        assert again == reply, (again, reply)

    def fn(data: bytes) -> None:
        try:
            request = parse(data)
        except DHCPParseError:
            return
        assert request.max_size() >= 548
        # The codec round trip: whatever parse accepted, build writes back (no size limit here).
        assert parse(build(request, max_size=1 << 20)) == request
        for code in (opt.VENDOR, opt.RELAY_AGENT, opt.IPXE_ENCAP):
            value = request.options.get(code)
            if value is not None:
                opt.decode_tlv(value)
        client = classify(request)
        assert 0 <= client.arch <= 255 and isinstance(client.user_class, str)
        matches = _dhcp_matches(client.mac) if len(client.mac) == 17 else [None]
        variant = matches[request.xid % len(matches)]
        served = bool(request.xid & 0x100)
        for i, cfg in enumerate(configs):
            for match in ((variant, matches[1] if len(matches) > 1 else None) if i == 0 else (variant,)):
                decision = decide(request, client, match, cfg, served)
                assert decision.outcome in outcomes and decision.reason, decision
                if decision.reply is not None:
                    check_reply(request, decision.reply, decision.outcome)
                else:
                    assert decision.outcome not in ("offer", "ack", "nak"), decision

    return fn


# ------------------------------------------------------------- (b) TFTP


def _tftp_packet_seeds() -> list[bytes]:
    from smee.tftp.packet import (
        RRQ,
        WRQ,
        encode_ack,
        encode_data,
        encode_error,
        encode_oack,
        encode_request,
    )

    seeds = [d.payload for d in _captures() if 69 in (d.src[1], d.dst[1]) or (d.src[1] > 1023 and d.dst[1] > 1023)]
    seeds += [
        encode_request(RRQ, "undionly.kpxe", "octet", {"blksize": "1468", "tsize": "0", "windowsize": "16"}),
        encode_request(RRQ, "52:54:00:aa:88:2a/ipxe.efi", "octet", {"timeout": "1", "BLKSIZE": "8"}),
        encode_request(RRQ, "../../etc/passwd", "netascii"),
        encode_request(WRQ, "/abs/path", "octet", {"blksize": "65464"}),
        encode_ack(0), encode_ack(65535), encode_data(1, b"x" * 512), encode_data(7, b""),
        encode_error(8, "option refused"), encode_oack({"tsize": "1024", "blksize": "1468"}),
        b"\x00\x05\x00\x00no terminator",
    ]
    return _unique(seeds)


def make_tftp_packet() -> OneInput:
    """parse, ack_block, the encoders, negotiate.

    Properties: only TFTPParseError escapes parse; ack_block(d) is the block
    of parse(d) exactly when that is an Ack, else None; every packet parse
    returns encodes back to an equal packet (ACK and DATA to the same bytes);
    negotiate never raises on a request's options and stays in RFC ranges.
    """
    from smee.tftp.packet import (
        Ack,
        Data,
        Error,
        OAck,
        Request,
        TFTPParseError,
        ack_block,
        encode_ack,
        encode_data,
        encode_error,
        encode_oack,
        encode_request,
        parse,
    )
    from smee.tftp.session import MAX_BLKSIZE, MIN_BLKSIZE, WINDOWSIZE_CAP, negotiate

    def fn(data: bytes) -> None:
        block = ack_block(data)
        try:
            packet = parse(data)
        except TFTPParseError:
            assert block is None, "ack_block accepted what parse refuses"
            return
        if type(packet) is Ack:
            assert block == packet.block
            assert encode_ack(packet.block) == data
            return
        assert block is None, "ack_block accepted a packet that is not an ACK"
        if type(packet) is Data:
            assert encode_data(packet.block, packet.payload) == data
        elif type(packet) is Error:
            assert parse(encode_error(packet.code, packet.message)) == packet
        elif type(packet) is OAck:
            assert parse(encode_oack(packet.options)) == packet
        else:
            assert type(packet) is Request
            again = parse(encode_request(packet.opcode, packet.filename, packet.mode, packet.options))
            assert again == packet, (again, packet)
            for cap in (MIN_BLKSIZE, 512, 1468, MAX_BLKSIZE):
                n = negotiate(packet.options, len(data) * 1000, cap, 5.0)
                assert MIN_BLKSIZE <= n.blksize <= max(cap, 512) and 1 <= n.windowsize <= WINDOWSIZE_CAP
                assert 1 <= n.timeout <= 255
                if n.oack is not None:
                    assert set(n.oack) <= set(packet.options)
                    assert all(v.isdigit() for v in n.oack.values())

    return fn


#: How a session event byte is read (op % len): see make_tftp_session.
_SESSION_OPS = ("ack-next", "ack-any", "ack-old", "error", "garbage", "advance", "fail-send", "control")


def _tftp_session_seeds() -> list[bytes]:
    ops = {name: i for i, name in enumerate(_SESSION_OPS)}

    def seed(header: bytes, events: Sequence[tuple[str, bytes]]) -> bytes:
        return header + b"".join(bytes((ops[name],)) + arg for name, arg in events)

    # header: size (2), size multiplier, option flags, blksize (2), windowsize, timeout, cap, retries, flags
    plain = b"\x04\x00\x00\x00\x02\x00\x01\x05\x02\x03\x00"
    windowed = b"\x10\x00\x01\x0f\x00\x40\x08\x01\x02\x02\x03"
    tiny = b"\x00\x10\x00\x01\x00\x08\x01\x00\x00\x00\x00"
    acks = [("ack-next", b"\x00")] * 12
    return [
        seed(plain, acks),
        seed(windowed, [("control", b"\x03")] + acks),
        seed(tiny, acks + [("ack-next", b"\x01")]),
        seed(plain, [("advance", b"\x64")] * 8),
        seed(windowed, [("control", b"\x03"), ("ack-any", b"\x00\x05"), ("ack-old", b"\x01"),
                        ("garbage", b"\x04\x00\x04\x00\x02"), ("fail-send", b""), ("advance", b"\xff")] + acks),
        seed(plain, [("ack-next", b"\x00"), ("error", b"\x00\x08"), ("ack-next", b"\x00")]),
        seed(plain, [("control", b"\x00"), ("control", b"\x01"), ("control", b"\x02")]),
    ]


def make_tftp_session() -> OneInput:
    """A ReadSession on a twisted Clock driven by fuzzed ACK/ERROR/garbage packets and clock advances.

    Properties: nothing raises but the OSError a failing ``send`` was told to
    raise; every DATA sent is a block of the file with its exact contents,
    never beyond the last block; an OACK is the negotiated one; on_done is
    called at most once and nothing is sent after it; a finished session
    holds no timer and an unfinished one holds exactly one (so it can always
    time out); ``complete`` only after the last block was acknowledged; and
    with the clock run on, every session ends.
    """
    from twisted.internet.task import Clock

    from smee.tftp.blocks import build_blocks
    from smee.tftp.packet import Ack, Data, Error, OAck, TFTPParseError, parse
    from smee.tftp.session import ReadSession, negotiate

    contents = random.Random(10).randbytes(70_000)
    caps = (8, 512, 1468, 65464)

    def fn(data: bytes) -> None:
        r = Reader(data)
        size = (r.u16() % 8192) * (1 + r.u8() % 4) // 4
        flags = r.u8()
        options: dict[str, str] = {}
        blk, window, timeout = r.u16(), r.u8(), r.u8()
        if flags & 1:
            options["blksize"] = str(blk) if not flags & 0x80 else " 8"
        if flags & 2:
            options["windowsize"] = str(window)
        if flags & 4:
            options["timeout"] = str(timeout % 8)
        if flags & 8:
            options["tsize"] = "0"
        cap = caps[r.u8() % len(caps)]
        retries = r.u8() % 4
        mode = r.u8()
        negotiated = negotiate(options, size, cap, 1.0 + mode % 3)
        blksize = negotiated.blksize
        body = contents[:size]
        last = size // blksize + 1
        if last > 65535:  # the wire number would wrap: the check below reads absolute numbers
            return
        clock = Clock()
        done: list[tuple[str, str]] = []
        sent: list[bytes] = []
        state = {"fail": bool(mode & 8), "highest": 0, "after_done": 0}

        def check_datagram(datagram: bytes) -> None:
            if done:
                state["after_done"] += 1
            packet = parse(datagram)
            if type(packet) is Data:
                n = packet.block
                assert 1 <= n <= last, (n, last)
                assert packet.payload == body[(n - 1) * blksize : n * blksize], n
                state["highest"] = max(state["highest"], n)
            elif type(packet) is OAck:
                assert packet.options == negotiated.oack
            else:
                assert type(packet) is Error, packet

        # A failed send is checked like any other: to the session it is a datagram lost on the way.
        def send(datagram: bytes) -> None:
            check_datagram(datagram)
            if state["fail"]:
                state["fail"] = False
                raise OSError("fuzz: send failed")
            sent.append(datagram)

        def send_many(datagrams: list[bytes]) -> None:
            for datagram in datagrams:
                check_datagram(datagram)
            if state["fail"]:
                state["fail"] = False
                raise OSError("fuzz: send_many failed")
            sent.extend(datagrams)

        session = ReadSession(
            body, negotiated, send, clock, retries=retries, on_done=lambda o, d: done.append((o, d)),
            send_many=send_many if mode & 16 else None,
            blocks=build_blocks(body, blksize) if mode & 32 else None,
        )

        def check() -> None:
            assert len(done) <= 1, done
            assert state["after_done"] == 0, "sent after the session ended"
            assert session.done == bool(done)
            timers = clock.getDelayedCalls()
            if session.done:
                assert timers == [], "a finished session left a timer"
            else:
                assert len(timers) == 1, f"an unfinished session holds {len(timers)} timers"
            if done and done[0][0] == "complete":
                assert state["highest"] == last

        def step(call: Callable[[], None]) -> None:
            try:
                call()
            except OSError as e:
                assert str(e).startswith("fuzz:"), e
            check()

        step(session.start)
        while r:
            op = _SESSION_OPS[r.u8() % len(_SESSION_OPS)]
            if op == "ack-next":
                block = state["highest"] & 0xFFFF
                step((lambda b=block: session.ack(b)) if r.u8() & 1 else (lambda b=block: session.received(Ack(b))))
            elif op == "ack-any":
                block = r.u16()
                step(lambda b=block: session.ack(b))
            elif op == "ack-old":
                block = (state["highest"] - r.u8() % 4) & 0xFFFF
                step(lambda b=block: session.received(Ack(b)))
            elif op == "error":
                code = r.u16()
                step(lambda c=code: session.received(Error(c, "fuzz")))
            elif op == "garbage":
                chunk = r.take(r.u8() % 24)
                try:
                    packet = parse(chunk)
                except TFTPParseError:
                    continue
                step(lambda p=packet: session.received(p))
            elif op == "advance":
                seconds = r.u8() / 16
                step(lambda s=seconds: clock.advance(s))
            elif op == "fail-send":
                state["fail"] = True
            else:
                sub = r.u8() % 4
                if sub == 0:
                    step(lambda: session.abort(2, "fuzz abort"))
                elif sub == 1:
                    step(session.stop)
                elif sub == 2:
                    step(session.start)
                else:
                    step(lambda: session.ack(0))
        state["fail"] = False
        # Run the clock on: every session must end by itself (timeout), leaving no timer.
        for _ in range(retries + 3):
            if session.done:
                break
            step(lambda: clock.advance(negotiated.timeout))
        assert session.done, "the session never timed out"
        check()

    return fn


# ------------------------------------------------------------- (c) syslog


def _syslog_seeds() -> list[bytes]:
    seeds = [b for b in _constants(TESTS / "test_syslog_parse.py", bytes) if b.startswith(b"<")]
    seeds += [b for b in _constants(TESTS / "test_syslog.py", bytes) if b.startswith(b"<")]
    seeds += [d.payload for d in _captures() if d.dst[1] == 514]
    seeds += [
        b"<14>1 2024-05-06T07:08:09.123456+02:00 host app 123 ID - {\"a\": [1, 2, {\"b\": null}]}",
        b"<30>Feb 29 12:00:00 ipxe[12]: INFO: 2024-01-01 00:00:00 \rtext",
        b"<6>" + b"x" * 9000,
    ]
    return _unique(seeds)


def make_syslog() -> OneInput:
    """smee.syslog.parse.parse, in a leap and a common year.

    Properties: only SyslogParseError escapes; facility 0-23 and severity
    0-7 (so their names exist); ``truncated`` exactly when the datagram is
    over MAX_DATAGRAM; ``fields`` is a mapping or None.
    """
    from smee.syslog.parse import MAX_DATAGRAM, SyslogParseError, parse

    def fn(data: bytes) -> None:
        for year in (2023, 2024):
            try:
                m = parse(data, year=year)
            except SyslogParseError:
                return
            assert 0 <= m.facility <= 23 and 0 <= m.severity <= 7
            assert m.facility_name and m.severity_name and m.priority <= 191
            assert m.truncated == (len(data) > MAX_DATAGRAM)
            assert m.rfc in (3164, 5424) and isinstance(m.text, str)
            assert m.fields is None or isinstance(m.fields, dict)

    return fn


# ------------------------------------------------------------- (d) hardware files


def _formats_seeds() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted((ROOT / "examples").glob("hardware*"))]
    for name in ("test_formats.py", "test_backend_file.py", "test_backend_kube.py", "test_index.py"):
        for text in _constants(TESTS / name, str):
            if len(text) >= 16 and (":" in text) and ("\n" in text or text.lstrip()[:1] in ("{", "[")):
                seeds.append(text.encode("utf-8"))
    seeds += [
        b'{"kind": "List", "apiVersion": "v1", "items": [{"metadata": {"name": "a"}, "spec": {}}]}',
        b"a: &x [*x]\n",
        b"52:54:00:aa:bb:cc: &r {ipAddress: 192.0.2.1, subnetMask: 24}\n52:54:00:aa:bb:cd: {<<: *r}\n",
    ]
    return _unique(seeds)


def make_formats() -> OneInput:
    """parse_text as YAML and as JSON, and hardware_from_object on every JSON value.

    Properties: only HardwareFileError escapes (a HardwareError must have
    been turned into one); a parse result holds Hardware with normalised
    MACs and warnings as ``path:line: text``.
    """
    from smee.formats import HardwareFileError, hardware_from_object, parse_text
    from smee.hardware import Hardware, normalize_mac

    def check(result: Any, path: str) -> None:
        for hw in result.hardware:
            assert isinstance(hw, Hardware) and hw.source.startswith(path + ":")
            for iface in hw.interfaces:
                assert normalize_mac(iface.mac) == iface.mac
        for warning in result.warnings:
            assert warning.startswith(path + ":"), warning

    def fn(data: bytes) -> None:
        try:
            text = data.decode("utf-8-sig")  # as load_file: anything else is its HardwareFileError
        except UnicodeDecodeError:
            return
        for path in ("hw.yaml", "hw.json"):
            try:
                check(parse_text(text, path), path)
            except HardwareFileError:
                pass
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return
        items = value.get("items") if isinstance(value, dict) else None
        for obj in [value] + (items if isinstance(items, list) else []):
            try:
                hw = hardware_from_object(obj, "kube:fuzz")
            except HardwareFileError:
                continue
            assert hw.source == "kube:fuzz"

    return fn


# ------------------------------------------------------------- (e) HTTP


#: Fields of an HTTP target input, one per line: see make_http.
_HTTP_FIELDS = ("method", "path", "host", "peer", "range", "x-forwarded-for...")


def _http_seeds() -> list[bytes]:
    mac = "52:54:00:aa:88:2a"
    rows = [
        ["GET", f"/{mac}/auto.ipxe", "192.0.2.1:8080", "10.0.0.1", "bytes=0-99", "192.0.2.10, 10.0.0.2"],
        ["GET", f"/{mac.upper()}/auto.ipxe", "smee.test", "192.0.2.10", "bytes=-5", ""],
        ["GET", "/5254.00aa.882a/auto.ipxe", "", "198.51.100.7", "bytes=5-", "192.0.2.99", "192.0.2.10"],
        ["GET", "/52-54-00-aa-88-2b/auto.ipxe", "a..b", "10.0.0.1", "bytes=0-1,5-6", " , 192.0.2.10 ,,"],
        ["HEAD", f"/{mac}/auto.ipxe", "smee.test", "10.0.0.1", "items=1-2", "garbage, ::1, 10.0.0.2:80"],
        ["GET", "/525400aa882c/auto.ipxe", "smee.test", "::1", "bytes=9-3", "192.0.2.10"],
        ["GET", "/52%3A54%3A00%3Aaa%3A88%3A2a/auto.ipxe", "xn--nxasmq6b", "10.0.0.3", "", ""],
        ["GET", "/ipxe/ipxe.efi", "smee.test", "10.0.0.1", "bytes=0-0", ""],
        ["GET", "/machines/" + mac, "smee.test", "127.0.0.1", "", ""],
    ]
    from smee.tftp.packet import encode_data

    seeds = ["\n".join(row).encode("latin-1") for row in rows]
    seeds.append(b"GET\n/" + bytes(range(0x80, 0x100)) + b"/auto.ipxe\n\xff\xfe\n1.2.3.4\n")
    seeds.append(encode_data(1, b"not http at all"))
    return _unique(seeds)


class _Headers:
    def __init__(self, values: dict[bytes, list[bytes]]) -> None:
        self._values = values

    def getRawHeaders(self, name: bytes, default: Any = None) -> Any:
        return self._values.get(name.lower(), default)


class FakeRequest:
    """What IPXEApp.answer_now reads from and writes to a twisted.web Request."""

    def __init__(self, method: bytes, path: bytes, host: bytes | None) -> None:
        self.method = method
        self.path = path
        self.uri = path
        self._host = host
        self.code = 200
        self.headers: dict[bytes, bytes] = {}
        self.requestHeaders = _Headers({b"host": [host]} if host is not None else {})

    def getHeader(self, name: bytes) -> bytes | None:
        return self._host if name.lower() == b"host" else None

    def getRequestHostname(self) -> bytes:
        host = self._host
        if host is None:
            return b"192.0.2.1"
        if host.startswith(b"[") and b"]" in host:
            return host[1 : host.index(b"]")]
        return host.split(b":", 1)[0]

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value


def _http_app() -> Any:
    """An IPXEApp on a synchronous in-memory backend: one known MAC, one that fails, the rest unknown."""
    from prometheus_client import CollectorRegistry
    from twisted.internet.task import Clock

    from smee.backends import LookupFailed
    from smee.hardware import Hardware, Interface, Match
    from smee.http.app import HTTPConfig, IPXEApp
    from smee.tftp.files import Binaries

    known = Interface(mac="52:54:00:aa:88:2a", ip=IPv4Address("192.0.2.10"), allow_pxe=True)
    off = Interface(mac="52:54:00:aa:88:2c", ip=IPv4Address("192.0.2.12"), allow_pxe=False)
    answers = {i.mac: Match(Hardware(id=f"hw-{i.mac}", interfaces=(i,)), i) for i in (known, off)}

    class Backend:
        kind = "fuzz"

        def by_mac_now(self, mac: str) -> Match | None:
            if mac == "52:54:00:aa:88:2b":
                raise LookupFailed("two records claim it")
            return answers.get(mac)

        def state(self) -> dict[str, Any]:
            return {"backend": "fuzz", "ready": True}

    class Installers:
        def render(self, ctx: Any) -> str:
            return f"#!ipxe\necho {ctx.interface.mac}\n"

        def asset(self, path: str) -> Any:
            return None

    binaries = Binaries(directory="/srv/ipxe", files=MappingProxyType({"ipxe.efi": b"efi"}))
    clock = Clock()
    return IPXEApp(HTTPConfig(), Backend(), binaries, Installers(), clock, metrics=CollectorRegistry())


def make_http() -> OneInput:
    """MAC normalisation, X-Forwarded-For, Range, route_of and IPXEApp.answer_now's path splitting.

    Input: ``method\\npath\\nhost\\npeer\\nrange\\nxff...`` (latin-1 lines).
    Properties: only HardwareError escapes normalize_mac, and what it returns
    is canonical and a fixed point; forwarded_entries gives stripped,
    non-empty, comma-free hops; client_ip returns the peer, or a canonical
    IPv4 hop of the header, and the peer when nothing is trusted;
    byte_range stays inside the body; route_of returns a known label;
    answer_now never raises and answers only ``GET /<mac>/auto.ipxe``.
    """
    from smee.hardware import HardwareError, mac_bytes, normalize_mac
    from smee.http.app import UNSATISFIABLE, byte_range, route_of
    from smee.http.xff import client_ip, forwarded_entries
    from smee.metrics import HTTP_ROUTES

    app = _http_app()
    canonical = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
    trusted_sets = (
        (),
        (IPv4Network("10.0.0.0/24"), IPv4Network("198.51.100.7/32")),
        (IPv4Network("0.0.0.0/0"),),
    )

    def check_mac(value: object) -> str | None:
        try:
            mac = normalize_mac(value)
        except HardwareError:
            return None
        assert canonical.fullmatch(mac), mac
        assert normalize_mac(mac) == mac and normalize_mac(mac_bytes(mac)) == mac
        return mac

    def fn(data: bytes) -> None:
        lines = data.split(b"\n")
        fields = lines + [b""] * (len(_HTTP_FIELDS) - 1 - len(lines))
        method, path, host = fields[:3]
        xff_raw = fields[5:]
        text = [f.decode("latin-1") for f in fields]
        for item in text[:5]:
            check_mac(item)
        for part in path.split(b"/"):
            check_mac(part.decode("latin-1"))
        check_mac(path[:6])

        xff = [h.decode("latin-1") for h in xff_raw]
        hops = forwarded_entries(xff)
        assert all(h and h == h.strip() and "," not in h for h in hops), hops
        peer_text = text[3]
        for trusted in trusted_sets:
            got = client_ip(peer_text, xff, trusted)
            if not trusted:
                assert got == peer_text
            elif got != peer_text:
                assert got == str(IPv4Address(got)), got
                assert got in {str(IPv4Address(h)) for h in hops if _is_ipv4(h)} | {_canonical(peer_text)}, got

        for size in (0, 1, 1000):
            answer = byte_range(text[4], size)
            if answer is not None and answer is not UNSATISFIABLE:
                first, last = answer
                assert 0 <= first <= last < size, (answer, size)

        request = FakeRequest(method, path, host or None)
        assert route_of(request) in HTTP_ROUTES
        body = app.answer_now(request)
        if body is not None:
            assert isinstance(body, bytes)
            assert method == b"GET" and path.endswith(b"/auto.ipxe") and path.count(b"/") == 2, path
            assert check_mac(path.split(b"/")[1].decode("ascii")) is not None
            assert request.code in (200, 404, 500, 503), request.code

    return fn


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


def _canonical(text: str) -> str | None:
    return str(IPv4Address(text)) if _is_ipv4(text) else None


# ----------------------------------------------------------------- registry and mutation


TARGETS: MappingProxyType[str, Target] = MappingProxyType({
    t.name: t
    for t in (
        Target("dhcp", "parse → classify → decide (4 configs, 6 hardware shapes) → build(max_size) → parse",
               make_dhcp, _dhcp_seeds, 1500,
               (b"\x63\x82\x53\x63", b"PXEClient", b"HTTPClient", b"iPXE", b"Tinkerbell", b"\x34\x01\x03",
                b"\x35\x01\x01", b"\x35\x01\x03", b"\x5d\x02\x00\x07", b"\xff")),
        Target("tftp_packet", "parse, ack_block agreement, encoders round trip, negotiate",
               make_tftp_packet, _tftp_packet_seeds, 1024,
               (b"octet\x00", b"netascii\x00", b"blksize\x00", b"tsize\x00", b"timeout\x00",
                b"windowsize\x00", b"65464\x00", b"\x00\x01", b"\x00\x04", b"\x00\x06")),
        Target("tftp_session", "ReadSession on a Clock: ACK/ERROR/garbage/advance/send failures",
               make_tftp_session, _tftp_session_seeds, 512),
        Target("syslog", "syslog.parse.parse (RFC 3164/5424, JSON fields, truncation)",
               make_syslog, _syslog_seeds, 9000,
               (b"<14>", b"<191>", b"1 ", b" - ", b"Feb 29 ", b"Jan  2 12:34:56 ", b"2024-02-29T23:59:60Z",
                b"+23:59", b"[12]: ", b"INFO: ", b"2024-01-01 00:00:00 ", b"{\"a\": ", b"[[[[", b"{{{{")),
        Target("formats", "parse_text (YAML and JSON), hardware_from_object",
               make_formats, _formats_seeds, 8192,
               (b"!!int ", b"!!float ", b"!!bool ", b"!!binary ", b"!!null ", b"!!str ", b"!!set ", b"!foo ",
                b"&a ", b"*a", b"<<: ", b"---\n", b"apiVersion: tinkerbell.org/v1alpha1\n", b"kind: Hardware\n",
                b"kind: List\n", b"items:\n", b'"network": ', b"leaseTime: ", b"vlanID: ", b"ipAddress: ",
                b"subnetMask: ", b"99999999999999999999", b"0x", b"0o", b"1:20:30", b".inf", b"[[[[", b"{{{{")),
        Target("http", "normalize_mac, X-Forwarded-For, Range, route_of, IPXEApp.answer_now",
               make_http, _http_seeds, 512,
               (b"/auto.ipxe", b"52:54:00:aa:88:2a", b"bytes=", b", ", b"0.0.0.0", b"10.0.0.1", b"::1",
                b"GET", b"HEAD", b"xn--")),
    )
})


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes], max_len: int) -> bytes:
    """One random mutation (flip, set, insert, delete, duplicate, splice): the fallback without atheris."""
    buf = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        choice = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if choice == 0 and buf:
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif choice == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif choice == 3 and buf:
            del buf[pos : pos + rng.randrange(1, 17)]
        elif choice == 4 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start : start + rng.randrange(1, 33)]
            buf[pos:pos] = chunk * rng.randrange(1, 4)
        elif choice == 5 and corpus:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif choice == 6:
            del buf[pos:]
    return bytes(buf[:max_len])
