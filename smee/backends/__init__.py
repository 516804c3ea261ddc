"""Hardware backends: where smee looks machines up.

Every backend has the same two lookups, like twisted.names resolvers share
``_lookup``: ``by_mac(mac)`` and ``by_ip(ip)`` return a Deferred that fires
with a :class:`~smee.hardware.Match` or ``None`` (not found), or fails with
:class:`LookupFailed` when no trustworthy answer can be given (duplicates,
backend down). Callers treat a failure as "no answer", never as "unknown".
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, Mapping, Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from smee.hardware import Match


class LookupFailed(Exception):
    """The backend cannot answer this lookup reliably; the message says why."""


class AmbiguousHardware(LookupFailed):
    """Two or more records claim the same MAC or IP: no answer beats a wrong one."""


@runtime_checkable
class HardwareBackend(Protocol):
    """The one interface all backends implement."""

    #: backend type, used in logs and metrics ("file", "kube", "http")
    kind: str

    def by_mac(self, mac: str) -> Deferred[Match | None]:
        """Look a machine up by a normalised MAC (``aa:bb:cc:dd:ee:ff``)."""
        ...

    def by_ip(self, ip: IPv4Address) -> Deferred[Match | None]:
        """Look a machine up by the IPv4 address reserved for one of its interfaces."""
        ...

    def state(self) -> Mapping[str, Any]:
        """A JSON-able summary for /healthcheck (ready, counts, last error)."""
        ...
