"""The chainload record (smee.chainload) and both sides of it: TFTP writes, DHCP reads.

With --dhcp-ipxe-rom-chainload a foreign iPXE ROM is sent to our binary; the
chain must end after one round even though stock binaries look like the ROM.
"""

from __future__ import annotations

from dataclasses import replace

from test_dhcp_protocol import MAC1, config, make, replies, request
from test_tftp_protocol import MAC, Server, fetch
from twisted.internet.task import Clock

from smee.chainload import Chainloads
from smee.tftp.protocol import AUTOEXEC


def test_recent_within_ttl_then_forgotten() -> None:
    clock = Clock()
    record = Chainloads(clock, ttl=300)
    assert not record.recent(MAC1)
    record.served(MAC1)
    clock.advance(299)
    assert record.recent(MAC1) and record.recent(MAC1)  # DISCOVER and REQUEST both see it
    clock.advance(2)
    assert not record.recent(MAC1) and len(record) == 0


def test_bounded_oldest_first() -> None:
    record = Chainloads(Clock(), limit=2)
    for mac in ("52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"):
        record.served(mac)
    assert len(record) == 2 and not record.recent("52:54:00:00:00:01") and record.recent("52:54:00:00:00:03")


def test_dhcp_chainloads_a_rom_then_gives_our_binary_the_script() -> None:
    proto, transport, clock = make()
    proto.config = replace(config(), ipxe_rom_chainload=True)
    proto.chainloads = Chainloads(clock)
    ipxe_rom = {77: b"iPXE", 175: b"\xeb\x03\x01\x00\x00"}  # QEMU's ROM and Debian's build both say 1.0.0
    proto.datagramReceived(request(MAC1, options=ipxe_rom), ("0.0.0.0", 68))
    [(offer, _)] = replies(transport)
    assert offer.file == f"tftp://192.0.2.1:69/{MAC1}/ipxe.efi".encode()
    proto.chainloads.served(MAC1)  # what TFTP does when the transfer completes
    proto.datagramReceived(request(MAC1, options=ipxe_rom), ("0.0.0.0", 68))
    [(offer, _)] = replies(transport)
    assert offer.file == f"http://192.0.2.1:8080/{MAC1}/auto.ipxe".encode()


def test_tftp_records_a_completed_binary_transfer() -> None:
    server = Server()
    server.protocol.chainloads = record = Chainloads(server.reactor)
    client = fetch(server, "ipxe.efi")
    assert client.error is None and record.recent(MAC)  # MAC from the hardware found by IP
    server.idle()


def test_tftp_records_the_mac_from_the_path_in_proxy_mode() -> None:
    server = Server(mode="proxy")
    server.protocol.chainloads = record = Chainloads(server.reactor)
    other = "52:54:00:00:00:77"
    assert fetch(server, f"{other}/undionly.kpxe").error is None
    assert record.recent(other)


def test_tftp_does_not_record_autoexec() -> None:
    server = Server()
    server.protocol.chainloads = record = Chainloads(server.reactor)
    assert fetch(server, AUTOEXEC).error is None
    assert not record.recent(MAC)
    server.idle()
