"""The noop backend: knows no hardware (auto-proxy deployments without a source of truth)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet import defer

from smee.hardware import Match


class NoopBackend(Service):
    """Every lookup answers "not found"; only valid with ``--dhcp-mode=auto-proxy``."""

    kind = "noop"

    def by_mac(self, mac: str) -> defer.Deferred[Match | None]:
        return defer.succeed(None)

    def by_ip(self, ip: IPv4Address | str) -> defer.Deferred[Match | None]:
        return defer.succeed(None)

    def state(self) -> Mapping[str, Any]:
        return {"backend": "noop", "ready": True, "records": 0}
