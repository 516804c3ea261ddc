"""X-Forwarded-For walked from the right through --trusted-proxies (smee.http.xff)."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from smee.http.xff import client_ip, forwarded_entries

PROXIES = (IPv4Network("10.0.0.0/24"), IPv4Network("198.51.100.7/32"))


@pytest.mark.parametrize(
    "peer, headers, trusted, expected",
    [
        # no trusted proxies: the header is ignored
        ("192.0.2.10", ["203.0.113.9"], (), "192.0.2.10"),
        # an untrusted peer's header is whatever its client wrote
        ("192.0.2.10", ["203.0.113.9"], PROXIES, "192.0.2.10"),
        # a trusted peer without the header
        ("10.0.0.1", None, PROXIES, "10.0.0.1"),
        ("10.0.0.1", [], PROXIES, "10.0.0.1"),
        ("10.0.0.1", [""], PROXIES, "10.0.0.1"),
        # one proxy
        ("10.0.0.1", ["192.0.2.10"], PROXIES, "192.0.2.10"),
        # a chain of trusted proxies, the client on the far left
        ("10.0.0.1", ["192.0.2.10, 198.51.100.7, 10.0.0.2"], PROXIES, "192.0.2.10"),
        # a spoofed entry left of the real client is ignored
        ("10.0.0.1", ["192.0.2.99, 192.0.2.10"], PROXIES, "192.0.2.10"),
        ("10.0.0.1", ["192.0.2.99", "192.0.2.10"], PROXIES, "192.0.2.10"),
        # several headers are one list, in order
        ("10.0.0.1", ["192.0.2.10", "10.0.0.2"], PROXIES, "192.0.2.10"),
        # every hop trusted: the leftmost
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], PROXIES, "10.0.0.3"),
        # empty elements name no hop
        ("10.0.0.1", [" , 192.0.2.10 ,,"], PROXIES, "192.0.2.10"),
        # malformed: stop at the last trusted hop
        ("10.0.0.1", ["garbage"], PROXIES, "10.0.0.1"),
        ("10.0.0.1", ["192.0.2.10, garbage, 10.0.0.2"], PROXIES, "10.0.0.2"),
        ("10.0.0.1", ["192.0.2.10:4711"], PROXIES, "10.0.0.1"),
        ("10.0.0.1", ["2001:db8::1"], PROXIES, "10.0.0.1"),
        ("10.0.0.1", ["010.0.0.9"], PROXIES, "10.0.0.1"),
        # a malformed entry left of the client does not matter
        ("10.0.0.1", ["garbage, 192.0.2.10"], PROXIES, "192.0.2.10"),
        # a peer that is not IPv4 is returned as is
        ("unix-socket", ["192.0.2.10"], PROXIES, "unix-socket"),
    ],
)
def test_client_ip(peer: str, headers: list[str] | None, trusted: tuple[IPv4Network, ...], expected: str) -> None:
    assert client_ip(peer, headers, trusted) == expected


def test_forwarded_entries() -> None:
    assert forwarded_entries(None) == []
    assert forwarded_entries(["a, b", " c ,", ""]) == ["a", "b", "c"]
