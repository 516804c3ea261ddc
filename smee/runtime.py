"""What the components of one smee process share, built once by makeService.

Each component factory receives ``(settings, runtime, reactor)``: one hardware
backend, one copy of the iPXE binaries in memory, one DHCP configuration that
already knows which binaries exist, one chainload record that TFTP writes
and DHCP reads, the installers registry that writes iPXE scripts, the metrics every component
updates (:class:`smee.metrics.Metrics`, on a registry of our own, not
prometheus_client's global one, so tests and a second server in one process
start from zero) and the boot timeline (:class:`smee.timeline.BootTimeline`)
every component feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smee.chainload import Chainloads
from smee.dhcp.policy import DHCPConfig
from smee.metrics import Metrics
from smee.tftp.files import Binaries


@dataclass(frozen=True)
class Runtime:
    backend: Any
    binaries: Binaries
    #: DHCPConfig.from_settings with available_binaries filled in
    dhcp: DHCPConfig
    chainloads: Chainloads
    #: installers.registry.Registry: render(ctx), asset(path)
    installers: Any = None
    #: what /metrics exposes (``metrics.registry``)
    metrics: Metrics = field(default_factory=Metrics)
    #: smee.timeline.BootTimeline, or None (no timeline kept)
    timeline: Any = None
