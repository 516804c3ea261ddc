"""The DHCP service on real sockets: loopback only, plus one test in a private network namespace."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from fakes import FakeBackend, hardware
from twisted.internet import defer, protocol
from twisted.internet.task import Clock, deferLater

from smee.backends.file import FileBackend
from smee.dhcp.packet import BOOTREQUEST, DISCOVER, OFFER, Packet, build, parse
from smee.dhcp.policy import DHCPConfig
from smee.dhcp.service import SO_BINDTODEVICE, DHCPBindError, DHCPService, open_socket
from smee.hardware import mac_bytes
from smee.tap import Options, makeService

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = IPv4Address("127.0.0.1")
MAC = "52:54:00:00:00:01"
HW = """\
52:54:00:00:00:01:
  ipAddress: 192.0.2.10
  subnetMask: 255.255.255.0
  netboot: {allowPxe: true}
"""
PXE = {
    60: b"PXEClient:Arch:00007:UNDI:003016",
    93: b"\x00\x07",
    94: b"\x01\x03\x10",
    97: b"\x00" + bytes(range(16)),
}


def relayed_discover(giaddr: str = "127.0.0.1", xid: int = 0xC0FFEE) -> bytes:
    return build(
        Packet(
            BOOTREQUEST, hops=1, xid=xid, giaddr=IPv4Address(giaddr).packed, chaddr=mac_bytes(MAC),
            options={53: bytes((DISCOVER,)), **PXE},
        )
    )


def options(args: list[str]) -> Options:
    o = Options(environ={}, detect_ip=lambda iface: LOOPBACK)
    o.parseOptions(args)
    return o


@pytest.fixture
def hwfile(tmp_path: Path) -> str:
    path = tmp_path / "hardware.yaml"
    path.write_text(HW)
    return str(path)


def file_args(path: str) -> list[str]:
    return ["--backend-file-enabled=true", f"--backend-file-path={path}"]


class Relay(protocol.DatagramProtocol):
    """A fake relay agent: fires ``received`` with the first datagram."""

    def __init__(self) -> None:
        self.received: defer.Deferred[tuple[bytes, Any]] = defer.Deferred()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.received.called:
            self.received.callback((data, addr))


def sockopt(port: Any, name: int, size: int = 0) -> Any:
    if size:
        return port.socket.getsockopt(socket.SOL_SOCKET, name, size)
    return port.socket.getsockopt(socket.SOL_SOCKET, name)


# --- a real round trip on loopback ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_relayed_discover_gets_offer_over_loopback(hwfile: str) -> None:
    from twisted.internet import reactor

    settings = options(file_args(hwfile) + ["--dhcp-addr=127.0.0.1:67"]).settings
    assert settings.dhcp_addr == (LOOPBACK, 67) and settings.dhcp_iface == ()
    backend = FileBackend(settings.backend_file_path, reactor, poll_interval=0, use_inotify=False)
    backend.load()
    relay = Relay()
    relay_port = reactor.listenUDP(0, relay, interface="127.0.0.1")
    # Port 0 (the parser wants 1-65535, so the service is built by hand with
    # the parsed config); replies to relays go to <giaddr>:<relay port>.
    service = DHCPService(
        backend, DHCPConfig.from_settings(settings), reactor, ("127.0.0.1", 0), settings.dhcp_iface,
        server_port=relay_port.getHost().port,
    )
    service.privilegedStartService()
    service.startService()
    try:
        [port] = service.ports
        assert len(service.protocols) == 1 and service.protocols[0].iface == "*"
        assert sockopt(port, socket.SO_BROADCAST) and sockopt(port, socket.SO_REUSEADDR)
        host = port.getHost()
        assert host.host == "127.0.0.1" and host.port > 0
        relay_port.write(relayed_discover(), ("127.0.0.1", host.port))
        data, addr = await relay.received.addTimeout(5, reactor)
        reply = parse(data)
        assert reply.msg_type == OFFER and reply.xid == 0xC0FFEE
        assert reply.yiaddr == IPv4Address("192.0.2.10").packed
        assert reply.giaddr == LOOPBACK.packed
        assert addr == ("127.0.0.1", host.port)
    finally:
        await service.stopService()
        await relay_port.stopListening()
    assert service.ports == []


@pytest_twisted.ensureDeferred
async def test_bind_to_device_lo() -> None:
    from twisted.internet import reactor

    backend = FakeBackend()
    backend.add(hardware(MAC, "192.0.2.10"))
    relay = Relay()
    relay_port = reactor.listenUDP(0, relay, interface="127.0.0.1")
    service = DHCPService(
        backend, _config(), reactor, ("127.0.0.1", 0), ("lo",), server_port=relay_port.getHost().port,
    )
    service.privilegedStartService()
    try:
        [port] = service.ports
        assert sockopt(port, SO_BINDTODEVICE, 16).rstrip(b"\0") == b"lo"
        assert service.protocols[0].iface == "lo"
        relay_port.write(relayed_discover(), ("127.0.0.1", port.getHost().port))
        data, _ = await relay.received.addTimeout(5, reactor)
        assert parse(data).yiaddr == IPv4Address("192.0.2.10").packed
    finally:
        await service.stopService()
        await relay_port.stopListening()


def _config() -> DHCPConfig:
    """Reservation mode with every address on loopback (noop backend: no file needed)."""
    s = options(["--backend-noop-enabled=true", "--dhcp-mode=auto-proxy"]).settings
    return DHCPConfig.from_settings(replace(s, dhcp_mode="reservation"))


# --- bind failures ---------------------------------------------------------------------


def test_port_in_use_names_dhcp_addr() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEADDR: exclusive
    holder.bind(("127.0.0.1", 0))
    try:
        busy = holder.getsockname()[1]
        service = DHCPService(FakeBackend(), _config(), Clock(), ("127.0.0.1", busy))
        with pytest.raises(DHCPBindError) as e:
            service.privilegedStartService()
        text = str(e.value)
        assert text.startswith(f"smee: --dhcp-addr=127.0.0.1:{busy}: ")
        assert "Address already in use" in text
        assert service.ports == []
    finally:
        holder.close()


def test_unknown_interface_names_dhcp_iface() -> None:
    with pytest.raises(DHCPBindError) as e:
        open_socket(("127.0.0.1", 0), "nosuchif0")
    text = str(e.value)
    assert text.startswith("smee: --dhcp-iface=nosuchif0: ") and "No such device" in text


def test_non_local_address_names_dhcp_addr() -> None:
    with pytest.raises(DHCPBindError) as e:
        open_socket(("198.51.100.1", 0))
    assert str(e.value).startswith("smee: --dhcp-addr=198.51.100.1:0: ") and "0.0.0.0" in str(e.value)


@pytest_twisted.ensureDeferred
async def test_failure_on_second_interface_closes_the_first() -> None:
    from twisted.internet import reactor

    service = DHCPService(FakeBackend(), _config(), reactor, ("127.0.0.1", 0), ("lo", "nosuchif0"))
    adopted: list[Any] = []
    real_adopt = reactor.adoptDatagramPort

    def adopt(*args: Any, **kw: Any) -> Any:
        port = real_adopt(*args, **kw)
        adopted.append(port)
        return port

    reactor.adoptDatagramPort = adopt
    try:
        with pytest.raises(DHCPBindError, match="--dhcp-iface=nosuchif0"):
            service.privilegedStartService()
    finally:
        del reactor.adoptDatagramPort
    assert service.ports == [] and service.protocols == []
    [lo_port] = adopted
    number = lo_port.getHost().port
    await deferLater(reactor, 0.01, lambda: None)
    assert not lo_port.connected
    # The port is free again: an exclusive bind succeeds.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", number))
    finally:
        probe.close()


def test_twistd_reports_bind_failure_without_traceback(hwfile: str) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        busy = holder.getsockname()[1]
        exe = str(Path(sys.executable).with_name("twistd"))
        result = subprocess.run(
            [
                exe, "-n", "--pidfile=", "smee", *file_args(hwfile), "--public-ip=127.0.0.1",
                f"--dhcp-addr=127.0.0.1:{busy}", "--tftp-enabled=false", "--syslog-enabled=false",
                "--http-ipxe-binary-enabled=false", "--http-ipxe-script-enabled=false",
            ],
            check=False, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60,
        )
    finally:
        holder.close()
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out
    # twistd -n sends stderr to its log on stdout
    assert f"smee: --dhcp-addr=127.0.0.1:{busy}: " in out and "Address already in use" in out


# --- the tap -----------------------------------------------------------------------------


def test_tap_has_a_dhcp_child(hwfile: str) -> None:
    top = makeService(options(file_args(hwfile)), reactor=Clock())
    dhcp = top.getServiceNamed("dhcp")
    assert isinstance(dhcp, DHCPService)
    assert dhcp.address == ("0.0.0.0", 67) and dhcp.ifaces == ()
    assert dhcp.backend.wrapped is top.getServiceNamed("backend")
    assert dhcp.config.mode == "reservation" and dhcp.ports == []  # nothing bound before start


def test_tap_passes_addr_and_ifaces(hwfile: str) -> None:
    top = makeService(
        options(file_args(hwfile) + ["--dhcp-addr=127.0.0.1:1067", "--dhcp-iface=lo,eth9", "--dhcp-mode=proxy"]),
        reactor=Clock(),
    )
    dhcp = top.getServiceNamed("dhcp")
    assert dhcp.address == ("127.0.0.1", 1067) and dhcp.ifaces == ("lo", "eth9") and dhcp.config.mode == "proxy"


@pytest.mark.parametrize(("flag", "size"), [([], 4096), (["--dhcp-reply-cache=0"], 0), (["--dhcp-reply-cache=10"], 10)])
def test_tap_passes_reply_cache_to_each_protocol(hwfile: str, flag: list[str], size: int) -> None:
    top = makeService(options(file_args(hwfile) + ["--dhcp-addr=127.0.0.1:1067"] + flag), reactor=Clock())
    dhcp = top.getServiceNamed("dhcp")
    assert dhcp.reply_cache == size
    from twisted.internet import reactor

    dhcp.reactor, dhcp.address = reactor, ("127.0.0.1", 0)
    dhcp.startService()
    try:
        [protocol] = dhcp.protocols
        assert protocol._memo_size == size and (protocol._memo is None) == (size == 0)
    finally:
        dhcp.stopService()


def test_tap_without_dhcp(hwfile: str) -> None:
    top = makeService(options(file_args(hwfile) + ["--dhcp-enabled=false"]), reactor=Clock())
    assert "dhcp" not in [svc.name for svc in top]


# --- several interfaces on one port, in a private network namespace ---------------------

NETNS_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    from ipaddress import IPv4Address
    from twisted.internet import defer, task
    sys.path.insert(0, sys.argv[1])
    from fakes import FakeBackend, hardware
    from test_dhcp_socket import Relay, _config, relayed_discover, sockopt
    from smee.dhcp.packet import parse
    from smee.dhcp.service import SO_BINDTODEVICE, DHCPService

    async def main(reactor):
        backend = FakeBackend()
        backend.add(hardware("52:54:00:00:00:01", "192.0.2.10"))
        relay = Relay()
        relay_port = reactor.listenUDP(0, relay, interface="127.0.0.1")
        common = dict(server_port=relay_port.getHost().port)
        # The production address, 0.0.0.0:67: this namespace has nothing else.
        on_lo = DHCPService(backend, _config(), reactor, ("0.0.0.0", 67), ("lo",), **common)
        on_veth = DHCPService(backend, _config(), reactor, ("0.0.0.0", 67), ("smt0",), **common)
        both = DHCPService(backend, _config(), reactor, ("0.0.0.0", 1067), ("lo", "smt0"), **common)
        for svc in (on_lo, on_veth, both):
            svc.privilegedStartService()
        devices = [sockopt(p, SO_BINDTODEVICE, 16).rstrip(b"\\0").decode() for s in (on_lo, on_veth, both) for p in s.ports]
        assert devices == ["lo", "smt0", "lo", "smt0"], devices
        assert [p.getHost().port for s in (on_lo, on_veth) for p in s.ports] == [67, 67]
        relay_port.write(relayed_discover(), ("127.0.0.1", 67))
        data, addr = await relay.received.addTimeout(5, reactor)
        assert parse(data).yiaddr == IPv4Address("192.0.2.10").packed
        # Only the lo socket saw the request (the veth is down and unaddressed).
        assert addr == ("127.0.0.1", 67), addr
        for svc in (on_lo, on_veth, both):
            await svc.stopService()
        await relay_port.stopListening()
        print("NETNS-OK")

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    """
)


@pytest.mark.netns
def test_two_interfaces_share_port_67_in_a_network_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace (unshare -n)")
    if not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    # Nothing here touches the host's interfaces: a new namespace whose only
    # devices are its own lo and a veth pair that is never brought up.
    setup = "ip link set lo up && ip link add smt0 type veth peer name smt1 || exit 77"
    tests = str(Path(__file__).resolve().parent)
    result = subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", f'{setup}; exec "$0" -c "$1" "$2"', sys.executable, NETNS_SCRIPT, tests],
        check=False, cwd=str(REPO), env=dict(os.environ, PYTHONPATH=f"{REPO}:{tests}"), capture_output=True, text=True, timeout=60,
    )
    if result.returncode == 77 or "Operation not permitted" in result.stderr and "unshare" in result.stderr:
        pytest.skip(f"cannot create a network namespace with a veth pair here: {result.stderr.strip()}")
    assert result.returncode == 0 and "NETNS-OK" in result.stdout, result.stdout + result.stderr
