"""RancherOS: boot its kernel and initrd with a cloud-init datasource (Boots' ``rancher``).

Script (smee-study.md §5.2)::

    set base-url http://releases.rancher.com/os/packet
    kernel ${base-url}/vmlinuz console=ttyS1,115200n8 rancher.cloud_init.datasources=[url:${base-url}/packet.sh]
           [rancher.network.interfaces.eth0.dhcp=true rancher.network.interfaces.eth2.dhcp=true] tinkerbell=<smee>
    initrd ${base-url}/initrd
    boot

Boots' ``${tinkerbell}`` iPXE variable becomes smee's own base URL.
``installer_data.base_url`` replaces the release directory (Boots' was
fixed, and Packet's ``/os/packet`` builds may not be there any more);
``installer_data.cloud_config_url`` replaces the ``packet.sh`` datasource.
The eth0/eth2 DHCP arguments are Boots' for the Packet plans that needed
them. No phone-home block: smee has no phone-home endpoint.
"""

from __future__ import annotations

from installers import adopt
from installers.registry import Context, Registry, deterministic
from installers.script import Script, check_url, kernel_arg

RELEASES = "http://releases.rancher.com/os/packet"
#: Packet plans whose second NIC needed DHCP too (Boots' list).
DHCP_PLANS = frozenset({"baremetal_0", "baremetal_1", "t1.small.x86", "c1.small.x86"})


@deterministic
def rancher(ctx: Context) -> str:
    own = ctx.data("base_url")
    base = check_url("installer_data.base_url", own).rstrip("/") if own else RELEASES
    config = ctx.data("cloud_config_url")
    source = check_url("installer_data.cloud_config_url", config) if config else "${base-url}/packet.sh"
    args = [
        f"console={ctx.console or 'ttyS1,115200n8'}",
        f"rancher.cloud_init.datasources=[url:{source}]",
    ]
    if ctx.hardware.plan in DHCP_PLANS:
        args += ["rancher.network.interfaces.eth0.dhcp=true", "rancher.network.interfaces.eth2.dhcp=true"]
    args.append(kernel_arg("tinkerbell", ctx.settings.base_url))

    s = Script()
    s.set("base-url", base)
    s.kernel("${base-url}/vmlinuz", *args)
    s.initrd("${base-url}/initrd")
    return s.line("boot").text()


def register(reg: Registry) -> None:
    reg.register_distro("rancher", rancher)


adopt(__name__, register)
