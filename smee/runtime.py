"""What the components of one smee process share, built once by makeService.

Each component factory receives ``(settings, runtime, reactor)``: one hardware
backend, one copy of the iPXE binaries in memory, one DHCP configuration that
already knows which binaries exist, and one chainload record that TFTP writes
and DHCP reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smee.chainload import Chainloads
from smee.dhcp.policy import DHCPConfig
from smee.tftp.files import Binaries


@dataclass(frozen=True)
class Runtime:
    backend: Any
    binaries: Binaries
    #: DHCPConfig.from_settings with available_binaries filled in
    dhcp: DHCPConfig
    chainloads: Chainloads
