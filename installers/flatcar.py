"""Flatcar (and legacy CoreOS): PXE-boot the live image, which installs itself to disk.

Boots' ``coreos`` installer, registered for distros ``flatcar`` and
``coreos`` (smee-study.md §5.2; Boots-2022 kept only flatcar)::

    set base-url <mirror>/misc/tinkerbell
    kernel ${base-url}/<distro>_production_pxe.vmlinuz console=ttyS1,115200n8 console=tty0 vga=773
           initrd=<distro>_production_pxe_image.cpio.gz bonding.max_bonds=0 <distro>.autologin
           <distro>.first_boot=1 <distro>.config.url=<smee>/<distro>/ignition.json
    initrd ${base-url}/<distro>_production_pxe_image.cpio.gz
    boot

ARM machines load ``<distro>-arm.vmlinuz`` / ``<distro>-arm.cpio.gz`` with
``console=ttyAMA0,115200``; a ``netboot.console`` replaces the serial
console. Boots' ``oem_url`` (an OEM tarball) and ``phone_home_url``
arguments are left out: smee serves neither.

The Ignition config (``/<distro>/ignition.json``) is a minimal valid
Ignition 3 document: one unit that runs ``<distro>-install -d <disk> -C
<channel>`` and reboots. ``installer_data.install_disk`` (default
``/dev/sda``) and ``installer_data.channel`` (default ``stable``) choose
them; both are checked, since they land in a systemd unit.
"""

from __future__ import annotations

import json
import re

from installers import adopt
from installers.registry import Context, Registry, deterministic
from installers.script import Script, ScriptError, kernel_arg

IGNITION_VERSION = "3.3.0"
_CHANNEL = re.compile(r"[a-z][a-z0-9-]{0,31}")
_DISK = re.compile(r"/dev/[A-Za-z0-9_-]+(/[A-Za-z0-9_.:-]+)*")


def _files(ctx: Context, distro: str) -> tuple[str, str]:
    if ctx.is_arm:
        return f"{distro}-arm.vmlinuz", f"{distro}-arm.cpio.gz"
    return f"{distro}_production_pxe.vmlinuz", f"{distro}_production_pxe_image.cpio.gz"


def _script(ctx: Context, distro: str) -> str:
    kernel, initrd = _files(ctx, distro)
    own = ctx.console
    if ctx.is_arm:
        consoles = [f"console={own or 'ttyAMA0,115200'}"]
    else:
        consoles = [f"console={own or 'ttyS1,115200n8'}", "console=tty0", "vga=773"]
    s = Script()
    s.set("base-url", f"{ctx.mirror}/misc/tinkerbell")
    s.kernel(
        f"${{base-url}}/{kernel}",
        *consoles,
        f"initrd={initrd}",
        "bonding.max_bonds=0",  # the wrong bond must not come up before the config is in place
        f"{distro}.autologin",
        f"{distro}.first_boot=1",
        kernel_arg(f"{distro}.config.url", ctx.asset_url(f"/{distro}/ignition.json")),
    )
    s.initrd(f"${{base-url}}/{initrd}")
    return s.line("boot").text()


@deterministic
def flatcar(ctx: Context) -> str:
    return _script(ctx, "flatcar")


@deterministic
def coreos(ctx: Context) -> str:
    return _script(ctx, "coreos")


def _ignition(ctx: Context, distro: str) -> tuple[str, bytes]:
    channel = ctx.data("channel", "stable")
    if not _CHANNEL.fullmatch(channel):
        raise ScriptError(f"installer_data.channel: {channel!r} is not a release channel name")
    disk = ctx.data("install_disk", "/dev/sda")
    if not _DISK.fullmatch(disk) or "/../" in disk + "/":
        raise ScriptError(f"installer_data.install_disk: {disk!r} is not a /dev path")
    unit = (
        "[Unit]\n"
        f"Description=Install {distro.capitalize()} to {disk}\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart=/usr/bin/{distro}-install -d {disk} -C {channel}\n"
        "ExecStartPost=/usr/bin/systemctl --no-block reboot\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )
    config = {
        "ignition": {"version": IGNITION_VERSION},
        "systemd": {"units": [{"name": f"{distro}-install.service", "enabled": True, "contents": unit}]},
    }
    return "application/json", json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"


def flatcar_ignition(ctx: Context) -> tuple[str, bytes]:
    return _ignition(ctx, "flatcar")


def coreos_ignition(ctx: Context) -> tuple[str, bytes]:
    return _ignition(ctx, "coreos")


def register(reg: Registry) -> None:
    reg.register_distro("flatcar", flatcar)
    reg.register_distro("coreos", coreos)
    reg.register_asset("/flatcar/ignition.json", flatcar_ignition)
    reg.register_asset("/coreos/ignition.json", coreos_ignition)


adopt(__name__, register)
