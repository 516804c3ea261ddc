# -*- test-case-name: tests.test_http_xff -*-
"""Which machine sent an HTTP request, when proxies may stand in between.

``auto.ipxe`` without a MAC in the path (and ``autoexec.ipxe``, and the
installer assets) finds the machine by the address that asked. Behind a
reverse proxy or a load balancer that address is the proxy's, so with
``--trusted-proxies`` the client is read from ``X-Forwarded-For`` instead,
as Smee does (smee-study.md §4.1).

Every proxy *appends* the address it received the request from, so the
header reads left to right from the original client to the last proxy
before the peer. Anything to the left of an untrusted hop may have been
written by that hop and proves nothing, so the list is walked from the
right: each trusted address vouches for the entry to its left, and the
first address that is not a trusted proxy is the client. A client cannot
impersonate another machine by sending its own X-Forwarded-For: the
trusted proxy appends the client's real address after it, and that is
where the walk stops.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network

__all__ = ["client_ip", "forwarded_entries"]


def _ipv4(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


def _trusted(address: IPv4Address, trusted: Iterable[IPv4Network]) -> bool:
    return any(address in net for net in trusted)


def forwarded_entries(headers: Sequence[str] | None) -> list[str]:
    """Every hop of every ``X-Forwarded-For`` header, in order, left to right.

    Several headers count as one comma-separated list (RFC 9110 §5.3).
    Empty list elements (``a,,b``, a trailing comma) are dropped: the list
    syntax allows them and they name no hop.
    """
    entries: list[str] = []
    for header in headers or ():
        entries.extend(item.strip() for item in header.split(","))
    return [entry for entry in entries if entry]


def client_ip(peer: str, forwarded_for: Sequence[str] | None, trusted: Sequence[IPv4Network]) -> str:
    """The address of the machine that made the request.

    * ``peer`` (the TCP peer) is not a trusted proxy, or no proxy is
      trusted → ``peer``: its X-Forwarded-For is whatever the client wrote.
    * Otherwise the X-Forwarded-For hops are walked from the right; trusted
      proxies are skipped and the first other address is the client.
    * Every hop is a trusted proxy → the leftmost one: the furthest the
      chain of trust reaches.
    * A hop that is not an IPv4 address (garbage, an IPv6 address, a
      ``host:port``) stops the walk, and the last trusted hop before it
      (the peer itself if it is the rightmost) is the answer. It is the
      nearest address still vouched for; it names a proxy, so a lookup by
      it finds no machine and the request is refused rather than pinned on
      a machine the header merely names.
    * A trusted peer that sent no X-Forwarded-For → ``peer``.

    Addresses are returned in canonical form (``IPv4Address`` text).
    """
    if not trusted:  # the usual case: nothing to parse
        return peer
    address = _ipv4(peer)
    if address is None or not _trusted(address, trusted):
        return peer
    last = address
    for entry in reversed(forwarded_entries(forwarded_for)):
        hop = _ipv4(entry)
        if hop is None:
            return str(last)
        if not _trusted(hop, trusted):
            return str(hop)
        last = hop
    return str(last)
