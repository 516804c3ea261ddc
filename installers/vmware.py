"""VMware ESXi: boot the ESXi installer with a kickstart smee serves (Boots' ``vmware``).

Script (smee-study.md §5.2, vectors §8.9)::

    dhcp
    set base-url <mirror>/vmware/esxi-<version>
    kernel ${base-url}/mboot.c32 -c ${base-url}/boot.cfg ks=<smee>/vmware/ks-esxi.cfg netdevice=<mac> ksdevice=<mac>
    boot

UEFI machines (``uefi: true``) load ``${base-url}/efi/boot/bootx64.efi``
instead of ``mboot.c32`` (Boots chose by plan; smee has the interface flag).
The mirror is ``installer_data.base_url`` or the OSIE URL's origin (see
:attr:`Context.mirror`). Distro ``vmware`` with an unknown slug uses
``operating_system.version`` as the directory (``esxi-<version>``); without
one it drops to the shell (Boots' distro script also marked the device
active through Packet's API, which smee does not have). No phone-home block:
smee has no phone-home endpoint.

The kickstart (``/vmware/ks-esxi.cfg``) is deliberately minimal: accept the
EULA, install over the first disk (``installer_data.install_disk`` names
another), DHCP on the booting NIC, reboot. The root password is
``installer_data.crypted_root_password`` (a crypt(3) hash); without one the
host gets a random password nobody knows -- ESXi requires ``rootpw``, and
an unknown password is the closest to a locked account (reset it from the
DCUI). Boots' firstboot metadata scripts are Packet-specific and left out.
"""

from __future__ import annotations

import re
import secrets

from installers import adopt
from installers.registry import Context, Registry, deterministic
from installers.script import Script, ScriptError, check_arg, check_name, kernel_arg

KICKSTART_PATH = "/vmware/ks-esxi.cfg"

#: Slug → directory under <mirror>/vmware (Boots' table; the _vcf slugs share theirs).
VERSIONS: dict[str, str] = {
    "vmware_esxi_5_5": "esxi-5.5.0.update03",
    "vmware_esxi_6_0": "esxi-6.0.0.update03",
    "vmware_esxi_6_5": "esxi-6.5.0",
    "vmware_esxi_6_7": "esxi-6.7.0",
    "vmware_esxi_7_0": "esxi-7.0.0",
    "vmware_esxi_7_0U2a": "esxi-7.0U2a",
    "vmware_esxi_6_5_vcf": "esxi-6.5.0",
    "vmware_esxi_6_7_vcf": "esxi-6.7.0",
    "vmware_esxi_7_0_vcf": "esxi-7.0.0",
}

_CRYPT = re.compile(r"\$[0-9a-z]{1,4}\$[./A-Za-z0-9=,$]{1,200}")
_DISK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:,/-]{0,200}")


def _script(ctx: Context, directory: str) -> str:
    loader = "${base-url}/efi/boot/bootx64.efi" if ctx.interface.uefi else "${base-url}/mboot.c32"
    s = Script().line("dhcp")
    s.set("base-url", f"{ctx.mirror}/vmware/{directory}")
    s.kernel(
        loader,
        "-c",
        "${base-url}/boot.cfg",
        kernel_arg("ks", ctx.asset_url(KICKSTART_PATH)),
        kernel_arg("netdevice", ctx.mac),
        kernel_arg("ksdevice", ctx.mac),
    )
    return s.line("boot").text()


@deterministic
def esxi(ctx: Context) -> str:
    """The ESXi installer for the slug's version (falls back like :func:`distro`)."""
    directory = VERSIONS.get(ctx.os.slug)
    if directory is None:
        return distro(ctx)
    return _script(ctx, directory)


@deterministic
def distro(ctx: Context) -> str:
    """Distro ``vmware``: ``esxi-<operating_system.version>``, or the shell."""
    version = ctx.os.version
    if not version:
        s = Script().echo("vmware: no ESXi version for this slug and no operating_system.version")
        return s.line("shell").text()
    return _script(ctx, "esxi-" + check_name("operating_system.version", version))


def _root_password(ctx: Context) -> str:
    instance = ctx.hardware.instance
    crypted = getattr(instance, "crypted_root_password", "") or ctx.data("crypted_root_password")
    if crypted:
        if not _CRYPT.fullmatch(crypted):
            raise ScriptError(f"crypted_root_password: {crypted!r} is not a crypt(3) hash")
        return f"rootpw --iscrypted {crypted}"
    # Four character classes, so ESXi's password policy accepts it.
    return f"rootpw Aa1-{secrets.token_urlsafe(24)}"


def kickstart(ctx: Context) -> tuple[str, bytes]:
    """The ESXi kickstart for the machine asking (see the module docstring)."""
    disk = ctx.data("install_disk")
    if disk and not _DISK.fullmatch(disk):
        raise ScriptError(f"installer_data.install_disk: {disk!r} is not a disk name")
    install = f"install --disk={disk} --overwritevmfs" if disk else "install --firstdisk --overwritevmfs"
    network = f"network --bootproto=dhcp --device={ctx.mac}"
    instance = ctx.hardware.instance
    hostname = (instance.hostname if instance is not None else "") or ctx.interface.hostname
    if hostname:
        network += f" --hostname={check_arg('hostname', hostname)}"
    lines = [
        "# ESXi kickstart written by smee",
        "accepteula",
        install,
        _root_password(ctx),
        network,
        "reboot",
    ]
    return "text/plain; charset=utf-8", ("\n".join(lines) + "\n").encode("ascii")


def register(reg: Registry) -> None:
    for slug in VERSIONS:
        reg.register_slug(slug, esxi)
    reg.register_distro("vmware", distro)
    reg.register_asset(KICKSTART_PATH, kickstart)


adopt(__name__, register)
