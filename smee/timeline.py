# -*- test-case-name: tests.test_timeline -*-
"""Boot timelines: per machine (MAC), when each boot stage was first seen.

Beyond Smee: the DHCP, TFTP, HTTP and syslog servers each call
:meth:`BootTimeline.seen` when a machine reaches a stage, and an operator
reads ``GET /machines`` to see at a glance which machines are stuck where.
Kept in memory, bounded by ``limit`` machines (the least recently seen go
first). The time between consecutive stages goes to the
``boot_stage_seconds`` histogram.

The stages, in boot order (:data:`STAGES`):

``dhcp-discover``, ``dhcp-offer``, ``dhcp-ack``
    the firmware's (PXE ROM's) DHCP exchange
``tftp-start``, ``tftp-end``
    the iPXE binary's TFTP transfer started, completed
``ipxe-dhcp``, ``ipxe-ack``
    iPXE's own DHCP (user class iPXE or Tinkerbell): its first
    DISCOVER/REQUEST, our ACK
``script``
    the iPXE script served over HTTP
``syslog``
    the first syslog line from the machine (the OS installer running)

Only the first time of each stage in one boot is kept. A ``dhcp-discover``
from a machine that reached ``script`` or later starts a new boot.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["STAGES", "BootTimeline"]

STAGES = (
    "dhcp-discover", "dhcp-offer", "dhcp-ack", "tftp-start", "tftp-end",
    "ipxe-dhcp", "ipxe-ack", "script", "syslog",
)
_RANK = {stage: i for i, stage in enumerate(STAGES)}
#: Reaching any of these ends a boot: the next DISCOVER is a new one.
_DONE = frozenset({"script", "syslog"})
#: The longest string kept as a stage detail (syslog lines, …).
MAX_DETAIL = 256


class _Boot:
    __slots__ = ("details", "last_seen", "last_stage", "mac", "number", "stages", "started")

    def __init__(self, mac: str, number: int, now: float) -> None:
        self.mac = mac
        self.number = number
        self.started = now
        self.last_seen = now
        self.last_stage = ""
        #: stage → clock time first seen, in the order seen
        self.stages: dict[str, float] = {}
        self.details: dict[str, dict[str, Any]] = {}


def _clip(value: Any) -> Any:
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    text = str(value)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "…"


class BootTimeline:
    """The boot stages of the ``limit`` most recently seen machines.

    :param clock: IReactorTime (``seconds()``): the reactor, or a Clock in tests
    :param limit: most machines kept
    :param metrics: a :class:`smee.metrics.Metrics` (``boot_stage_seconds``), or None
    """

    def __init__(self, clock: Any, limit: int = 10000, metrics: Any = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.clock = clock
        self.limit = limit
        self.metrics = metrics
        self._boots: OrderedDict[str, _Boot] = OrderedDict()
        self._stage_hist: dict[tuple[str, str], Any] = {}

    def __len__(self) -> int:
        return len(self._boots)

    def seen(self, mac: str, stage: str, **detail: Any) -> None:
        """``mac`` reached ``stage`` now; ``detail`` (short JSON-able values) is kept with the first sighting."""
        now = self.clock.seconds()
        boots = self._boots
        boot = boots.get(mac)
        if boot is None or (stage == "dhcp-discover" and not _DONE.isdisjoint(boot.stages)):
            boot = boots[mac] = _Boot(mac, 1 if boot is None else boot.number + 1, now)
            if len(boots) > self.limit:
                boots.popitem(last=False)
        boots.move_to_end(mac)
        boot.last_seen = now
        if stage in boot.stages:
            return
        previous = boot.last_stage
        boot.stages[stage] = now
        boot.last_stage = stage
        if detail:
            boot.details[stage] = {k: _clip(v) for k, v in detail.items()}
        if previous and self.metrics is not None:
            self._observe(previous, stage, now - boot.stages[previous])

    def _observe(self, previous: str, stage: str, seconds: float) -> None:
        key = (previous, stage)
        child = self._stage_hist.get(key)
        if child is None:
            child = self._stage_hist[key] = self.metrics.boot_stage_seconds.labels(previous, stage)
        child.observe(max(0.0, seconds))

    def machines(self) -> list[dict[str, Any]]:
        """A summary of every machine, most recently seen first."""
        return [self._summary(boot) for boot in reversed(self._boots.values())]

    def machine(self, mac: str) -> dict[str, Any] | None:
        """Everything about ``mac``'s current boot (normalised MAC), or None if unknown."""
        boot = self._boots.get(mac)
        if boot is None:
            return None
        out = self._summary(boot)
        out["boot"] = boot.number
        out["started"] = boot.started
        out["timeline"] = [
            {"stage": stage, "at": at, "seconds": round(at - boot.started, 6), **boot.details.get(stage, {})}
            for stage, at in boot.stages.items()
        ]
        out["missing"] = [
            s for s in STAGES[: _RANK.get(boot.last_stage, -1) + 1] if s not in boot.stages
        ]
        return out

    @staticmethod
    def _summary(boot: _Boot) -> dict[str, Any]:
        return {
            "mac": boot.mac,
            "first_seen": boot.started,
            "last_seen": boot.last_seen,
            "last_stage": boot.last_stage,
            "stages": {stage: round(at - boot.started, 6) for stage, at in boot.stages.items()},
        }
