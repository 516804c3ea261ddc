"""NixOS: boot a prebuilt NixOS system's kernel and initrd from the mirror (Boots' ``nixos``).

Script (smee-study.md §5.2)::

    set base-url <mirror>/misc/tinkerbell/nixos/<slug>/<plan or store name>
    kernel ${base-url}/kernel init=/nix/store/<store name>/init initrd=initrd console=ttyS1,115200 loglevel=7 [pwhash=]
    initrd ${base-url}/initrd
    boot

Simplified from Boots, which read the system per (slug, plan) from
``NIXOS_<slug>__<plan>`` environment variables of Packet's deployment: here
``installer_data.system`` names the Nix store entry (``<hash>-nixos-system-...``)
and the directory is ``<slug>/<plan>`` (``<slug>/<system>`` when the machine
has no plan); without it, ``operating_system.image_tag`` is the store entry
and the directory ``<slug>/<image_tag>``, as in Boots. Neither → the shell.
ARM adds ``cma=0M biosdevname=0 net.ifnames=0`` and uses ``ttyAMA0``.
``pwhash=`` is ``installer_data.crypted_root_password`` when set. No
phone-home block: smee has no phone-home endpoint.
"""

from __future__ import annotations

from installers import adopt
from installers.registry import Context, Registry, deterministic
from installers.script import Script, check_name, kernel_arg


@deterministic
def nixos(ctx: Context) -> str:
    os_ = ctx.os
    slug = check_name("operating_system.slug", os_.slug or "nixos")
    system = ctx.data("system")
    if system:
        system = check_name("installer_data.system", system)
        plan = ctx.hardware.plan
        key = f"{slug}/{check_name('plan', plan) if plan else system}"
    elif os_.image_tag:
        system = check_name("operating_system.image_tag", os_.image_tag)
        key = f"{slug}/{system}"
    else:
        s = Script().echo("nixos: no installer_data.system and no image_tag for this machine")
        return s.line("shell").text()

    args = [kernel_arg("init", f"/nix/store/{system}/init"), "initrd=initrd"]
    own = ctx.console
    if ctx.is_arm:
        args += ["cma=0M", "biosdevname=0", "net.ifnames=0", f"console={own or 'ttyAMA0,115200'}"]
    else:
        args.append(f"console={own or 'ttyS1,115200'}")
    args.append("loglevel=7")
    pwhash = ctx.data("crypted_root_password")
    if pwhash:
        args.append(kernel_arg("pwhash", pwhash))

    s = Script()
    s.set("base-url", f"{ctx.mirror}/misc/tinkerbell/nixos/{key}")
    s.kernel("${base-url}/kernel", *args)
    s.initrd("${base-url}/initrd")
    return s.line("boot").text()


def register(reg: Registry) -> None:
    reg.register_distro("nixos", nixos)


adopt(__name__, register)
