"""UDP receive buffers sized for a boot storm (smee.listen.grow_receive_buffer)."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from smee.dhcp.service import open_socket
from smee.listen import SO_RCVBUFFORCE, UDP_RECEIVE_BUFFER, grow_port_buffer, grow_receive_buffer


class FakeSocket:
    """Refuses SO_RCVBUFFORCE (no CAP_NET_ADMIN) and caps SO_RCVBUF like net.core.rmem_max."""

    def __init__(self, rmem_max: int) -> None:
        self.rmem_max = rmem_max
        self.size = 212992
        self.calls: list[int] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.calls.append(option)
        if option == SO_RCVBUFFORCE:
            raise PermissionError(1, "Operation not permitted")
        self.size = min(value, self.rmem_max) * 2

    def getsockopt(self, level: int, option: int) -> Any:
        return self.size


def test_without_privilege_falls_back_and_says_how_to_fix() -> None:
    sock = FakeSocket(rmem_max=212992)
    granted, note = grow_receive_buffer(sock)
    assert sock.calls == [SO_RCVBUFFORCE, socket.SO_RCVBUF]
    assert granted == 212992
    assert "208 KiB, not 4096 KiB" in note and "net.core.rmem_max" in note


def test_enough_rmem_max_needs_no_privilege_and_no_note() -> None:
    granted, note = grow_receive_buffer(FakeSocket(rmem_max=8 << 20))
    assert granted == UDP_RECEIVE_BUFFER and note == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE needs root (CAP_NET_ADMIN)")
def test_dhcp_socket_gets_the_full_buffer_as_root() -> None:
    sock = open_socket(("127.0.0.1", 0))
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 >= UDP_RECEIVE_BUFFER
    finally:
        sock.close()


def test_port_without_a_real_socket_is_left_alone() -> None:
    class Log:
        def warn(self, *a: Any, **kw: Any) -> None:
            raise AssertionError("no warning expected")

    assert grow_port_buffer(object(), "TFTP", Log()) is None


def test_short_buffer_on_a_port_is_logged() -> None:
    class Port:
        socket = FakeSocket(rmem_max=212992)

    warned: list[dict[str, Any]] = []

    class Log:
        def warn(self, fmt: str, **kw: Any) -> None:
            warned.append(kw)

    assert grow_port_buffer(Port(), "TFTP", Log()) == 212992
    assert warned and warned[0]["what"] == "TFTP" and "rmem_max" in warned[0]["note"]


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE needs root (CAP_NET_ADMIN)")
def test_real_twisted_udp_port_gets_the_buffer() -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        granted = grow_port_buffer(port, "TFTP", None)
        assert granted is not None and granted >= UDP_RECEIVE_BUFFER
    finally:
        port.stopListening()
