"""Installers: scripts against Smee's and Boots' test vectors, resolution, plugins, injection.

Vectors are smee-study.md §8.6 (Smee-HEAD ``internal/ipxe/script``) and §8.9
(Boots ``installers/*/ipxe_script_test.go``), adapted: Boots' phone-home
block is gone (smee has no phone-home endpoint) and its ``${tinkerbell}``
variable is smee's base URL, ``http://127.0.0.1`` here.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest
from fakes import formatted
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, capturedLogs

import installers
from installers.custom_ipxe import hardware_script
from installers.registry import (
    Context,
    DuplicateInstaller,
    Registry,
    ScriptSettings,
    deterministic,
    is_deterministic,
    shell,
)
from installers.script import (
    Script,
    ScriptError,
    check_arg,
    check_console,
    check_name,
    check_url,
    check_value,
    kernel_arg,
)
from smee.hardware import OSIE, Hardware, Instance, Interface, OperatingSystem

MAC = "00:01:02:03:04:05"
BOOTS_MAC = "00:00:ba:dd:be:ef"


def script_settings(**changes: Any) -> ScriptSettings:
    values: dict[str, Any] = {
        "osie_url": "http://127.1.1.1",
        "tink_server": "",
        "tink_tls": False,
        "tink_insecure_tls": False,
        "syslog_host": "",
        "extra_kernel_args": (),
        "retries": 10,
        "retry_delay": 3,
        "base_url": "http://127.0.0.1",
    }
    values.update(changes)
    return ScriptSettings(**values)


def instance(installer_data: dict[str, Any] | None = None, **os_fields: str) -> Instance:
    data = MappingProxyType(dict(installer_data or {}))
    return Instance(id="i-1", operating_system=OperatingSystem(installer_data=data, **os_fields))


def machine(
    *,
    mac: str = MAC,
    facility: str = "onprem",
    plan: str = "",
    inst: Instance | None = None,
    **iface: Any,
) -> Hardware:
    return Hardware(
        id="hw-1", interfaces=(Interface(mac=mac, **iface),), facility=facility, plan=plan, instance=inst
    )


def ctx(hw: Hardware, settings: ScriptSettings | None = None) -> Context:
    return Context(hardware=hw, interface=hw.interfaces[0], settings=settings or script_settings())


@pytest.fixture(scope="module")
def reg() -> Registry:
    """A fresh registry holding the built-ins (the process-wide one stays untouched)."""
    return installers.load(Registry())


def render(reg: Registry, hw: Hardware, settings: ScriptSettings | None = None) -> str:
    return reg.render(ctx(hw, settings))


# --- Smee-HEAD custom script (§8.6 TestCustomScript) ---

CUSTOM = "#!ipxe\n\necho Loading custom Tinkerbell iPXE script...\n"


@pytest.mark.parametrize(
    ("url", "contents", "want"),
    [
        ("", "#!ipxe\nautoboot", CUSTOM + "#!ipxe\nautoboot\n"),
        ("https://boot.netboot.xyz", "", CUSTOM + "chain --autofree https://boot.netboot.xyz\n"),
        ("https://boot.netboot.xyz", "#!ipxe\nautoboot", CUSTOM + "chain --autofree https://boot.netboot.xyz\n"),
        ("", "#!ipxe\nautoboot\n", CUSTOM + "#!ipxe\nautoboot\n"),
    ],
    ids=["got script", "got url", "url wins", "script with its newline"],
)
def test_custom_script_vectors(reg: Registry, url: str, contents: str, want: str) -> None:
    hw = machine(ipxe_url=url, ipxe_script=contents, inst=instance(slug="vmware_esxi_6_5"))
    assert reg.resolve(hw)[0] == "custom ipxe"
    assert render(reg, hw) == want


@pytest.mark.parametrize(
    "url",
    ["invalid", "http://invalid.:123.com", "ftp://boot.example/x", "file:///etc/passwd", "tftp://10.0.0.1/x"],
)
def test_custom_script_bad_url_is_an_error(reg: Registry, url: str) -> None:
    with pytest.raises(ScriptError, match="ipxe_url"):
        render(reg, machine(ipxe_url=url))


def test_custom_script_needs_url_or_contents() -> None:
    with pytest.raises(ScriptError, match="neither"):
        hardware_script(ctx(machine()))


# --- Smee-HEAD Hook script (§8.6 TestDefaultScript, TestGenerateTemplate) ---

# Smee's TestDefaultScript want-text, with our one deliberate change:
# initrd=${initrd} instead of initrd=initramfs-${arch} (see installers/osie.py).
SMEE_DEFAULT_SCRIPT = r"""#!ipxe

echo Loading the Tinkerbell Hook iPXE script...

set arch x86_64
set download-url http://127.1.1.1
set kernel vmlinuz-${arch}
set initrd initramfs-${arch}
set retries:int32 10
set retry_delay:int32 3

set idx:int32 0
:retry_kernel
kernel ${download-url}/${kernel} vlan_id=1234 \
facility=onprem syslog_host= grpc_authority= tinkerbell_tls=false tinkerbell_insecure_tls=false worker_id=00:01:02:03:04:05 hw_addr=00:01:02:03:04:05 \
modules=loop,squashfs,sd-mod,usb-storage intel_iommu=on iommu=pt initrd=initramfs-${arch} console=tty0 console=ttyS1,115200 && goto download_initrd || iseq ${idx} ${retries} && goto kernel-error || inc idx && echo retry in ${retry_delay} seconds ; sleep ${retry_delay} ; goto retry_kernel

:download_initrd
set idx:int32 0
:retry_initrd
initrd ${download-url}/${initrd} && goto boot || iseq ${idx} ${retries} && goto initrd-error || inc idx && echo retry in ${retry_delay} seconds ; sleep ${retry_delay} ; goto retry_initrd

:boot
set idx:int32 0
:retry_boot
boot || iseq ${idx} ${retries} && goto boot-error || inc idx && echo retry in ${retry_delay} seconds ; sleep ${retry_delay} ; goto retry_boot

:kernel-error
echo Failed to load kernel
imgfree
exit

:initrd-error
echo Failed to load initrd
imgfree
exit

:boot-error
echo Failed to boot
imgfree
exit
"""
OUR_DEFAULT_SCRIPT = SMEE_DEFAULT_SCRIPT.replace("initrd=initramfs-${arch}", "initrd=${initrd}")


def kernel_lines(script: str) -> list[str]:
    """The three physical lines of the Hook kernel command."""
    lines = script.splitlines()
    start = lines.index(":retry_kernel") + 1
    return lines[start : start + 3]


def test_hook_default_script_vector(reg: Registry) -> None:
    hw = machine(vlan_id="1234", arch="x86_64")
    how, _ = reg.resolve(hw)
    assert how == "default"
    assert render(reg, hw) == OUR_DEFAULT_SCRIPT
    # With the default initrd name, ${initrd} expands to exactly Smee's text.
    assert "set initrd initramfs-${arch}" in OUR_DEFAULT_SCRIPT


def test_hook_no_vlan_with_extra_args_vector(reg: Registry) -> None:
    """TestGenerateTemplate "no vlan": extra args right after the kernel path."""
    settings = script_settings(
        osie_url="http://location:8080/to/kernel/and/initrd",
        tink_server="1.2.3.4:42113",
        syslog_host="1.2.3.4",
        extra_kernel_args=("tink_worker_image=quay.io/tinkerbell/tink-worker:v0.8.0", "tinkerbell=packet"),
    )
    hw = machine(mac="3c:ec:ef:4c:4f:54")
    assert kernel_lines(render(reg, hw, settings)) == [
        "kernel ${download-url}/${kernel} tink_worker_image=quay.io/tinkerbell/tink-worker:v0.8.0 tinkerbell=packet \\",
        (
            "facility=onprem syslog_host=1.2.3.4 grpc_authority=1.2.3.4:42113 tinkerbell_tls=false"
            " tinkerbell_insecure_tls=false worker_id=3c:ec:ef:4c:4f:54 hw_addr=3c:ec:ef:4c:4f:54 \\"
        ),
        (
            "modules=loop,squashfs,sd-mod,usb-storage intel_iommu=on iommu=pt initrd=${initrd} console=tty0"
            " console=ttyS1,115200 && goto download_initrd || iseq ${idx} ${retries} && goto kernel-error"
            " || inc idx && echo retry in ${retry_delay} seconds ; sleep ${retry_delay} ; goto retry_kernel"
        ),
    ]


def test_hook_without_vlan_or_extra_args_has_no_stray_space(reg: Registry) -> None:
    assert kernel_lines(render(reg, machine()))[0] == "kernel ${download-url}/${kernel} \\"


def test_hook_tls_flags_and_retries(reg: Registry) -> None:
    text = render(reg, machine(), script_settings(tink_tls=True, tink_insecure_tls=True, retries=0, retry_delay=2))
    assert "tinkerbell_tls=true tinkerbell_insecure_tls=true" in text
    assert "set retries:int32 0\nset retry_delay:int32 2\n" in text


def test_hook_per_hardware_overrides(reg: Registry) -> None:
    hw = machine(
        arch="aarch64",
        osie=OSIE(base_url="http://hook.example/v0.9", kernel="vmlinuz-custom", initrd="initramfs-custom"),
    )
    text = render(reg, hw)
    assert "set arch aarch64\nset download-url http://hook.example/v0.9\n" in text
    assert "set kernel vmlinuz-custom\nset initrd initramfs-custom\n" in text
    assert "initrd=${initrd} console=ttyAMA0,115200 &&" in text
    assert "initramfs-${arch}" not in text


@pytest.mark.parametrize(
    ("arch", "console", "want"),
    [
        ("", "", "console=tty0 console=ttyS1,115200"),
        ("x86_64", "ttyS0", "console=tty0 console=ttyS0,115200"),
        ("x86_64", "ttyS1,57600n8", "console=tty0 console=ttyS1,57600n8"),
        ("aarch64", "", "console=ttyAMA0,115200"),
        ("arm64", "ttyAMA1", "console=ttyAMA1,115200"),
    ],
)
def test_hook_consoles(reg: Registry, arch: str, console: str, want: str) -> None:
    text = render(reg, machine(arch=arch, console=console))
    assert f"initrd=${{initrd}} {want} && goto download_initrd" in text
    if not arch:
        assert "set arch x86_64\n" in text


def test_hook_without_osie_url_sets_empty_download_url(reg: Registry) -> None:
    """As Smee: the script still renders; iPXE then fails to load the kernel and says so."""
    text = render(reg, machine(), script_settings(osie_url=""))
    assert "\nset download-url\n" in text


# --- Boots custom_ipxe installer (§8.9) ---


@pytest.mark.parametrize(
    ("inst", "tail"),
    [
        (
            Instance(ipxe_script_url="http://127.0.0.1/fake_ipxe_url", operating_system=OperatingSystem(slug="custom_ipxe")),
            "chain --autofree http://127.0.0.1/fake_ipxe_url\n",
        ),
        (instance({"chain": "http://boot.example/x.ipxe"}, installer="custom_ipxe"), "chain --autofree http://boot.example/x.ipxe\n"),
        (instance({"script": "#!ipxe\ndhcp\nautoboot\n"}, installer="custom_ipxe"), "dhcp\nautoboot\n"),
        (
            Instance(userdata="#!ipxe\nchain http://u.example/\n", operating_system=OperatingSystem(distro="custom_ipxe")),
            "chain http://u.example/\n",
        ),
        (
            instance(distro="custom_ipxe"),
            "echo custom_ipxe: no chain URL or script in installer_data, ipxe_script_url or userdata\nshell\n",
        ),
    ],
    ids=["ipxe_script_url", "installer_data.chain", "installer_data.script", "userdata", "nothing"],
)
def test_custom_ipxe_installer_vectors(reg: Registry, inst: Instance, tail: str) -> None:
    hw = machine(mac=BOOTS_MAC, facility="ewr1", plan="baremetal_0", inst=inst)
    assert render(reg, hw) == CUSTOM + "set packet_facility ewr1\nset packet_plan baremetal_0\n" + tail


# --- Boots vmware (§8.9) ---

VMWARE = """#!ipxe

dhcp
set base-url http://install.ewr1.packet.net/vmware/{path}
kernel ${{base-url}}/{loader} -c ${{base-url}}/boot.cfg ks=http://127.0.0.1/vmware/ks-esxi.cfg netdevice=00:00:ba:dd:be:ef ksdevice=00:00:ba:dd:be:ef
boot
"""
ESXI = {
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


@pytest.mark.parametrize(("uefi", "loader"), [(False, "mboot.c32"), (True, "efi/boot/bootx64.efi")], ids=["bios", "uefi"])
@pytest.mark.parametrize("slug", sorted(ESXI))
def test_vmware_vectors(reg: Registry, slug: str, uefi: bool, loader: str) -> None:
    inst = instance({"base_url": "http://install.ewr1.packet.net"}, slug=slug, distro="vmware")
    hw = machine(mac=BOOTS_MAC, uefi=uefi, inst=inst)
    assert reg.resolve(hw)[0] == f"slug {slug}"
    assert render(reg, hw) == VMWARE.format(path=ESXI[slug], loader=loader)


def test_vmware_mirror_defaults_to_osie_origin(reg: Registry) -> None:
    hw = machine(mac=BOOTS_MAC, inst=instance(slug="vmware_esxi_6_5"))
    text = render(reg, hw, script_settings(osie_url="http://install.ewr1.packet.net/misc/osie/current"))
    assert text == VMWARE.format(path="esxi-6.5.0", loader="mboot.c32")


def test_vmware_distro_uses_version_or_shell(reg: Registry) -> None:
    hw = machine(mac=BOOTS_MAC, inst=instance({"base_url": "http://install.ewr1.packet.net"}, slug="vmware_esxi_8_0", distro="vmware", version="8.0.2"))
    assert reg.resolve(hw)[0] == "distro vmware"
    assert render(reg, hw) == VMWARE.format(path="esxi-8.0.2", loader="mboot.c32")
    bare = machine(inst=instance(distro="vmware"))
    assert render(reg, bare).endswith("\nshell\n")


def test_vmware_without_any_mirror_is_an_error(reg: Registry) -> None:
    with pytest.raises(ScriptError, match="installer_data.base_url"):
        render(reg, machine(inst=instance(slug="vmware_esxi_7_0")), script_settings(osie_url=""))


def test_vmware_kickstart_asset(reg: Registry) -> None:
    asset = reg.asset("/vmware/ks-esxi.cfg")
    assert asset is not None
    crypted = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"
    inst = Instance(hostname="esx-1", operating_system=OperatingSystem(
        slug="vmware_esxi_7_0", installer_data=MappingProxyType({"crypted_root_password": crypted})))
    ctype, body = asset(ctx(machine(mac=BOOTS_MAC, inst=inst)))
    assert ctype.startswith("text/plain")
    assert body.decode() == (
        "# ESXi kickstart written by smee\n"
        "accepteula\n"
        "install --firstdisk --overwritevmfs\n"
        f"rootpw --iscrypted {crypted}\n"
        "network --bootproto=dhcp --device=00:00:ba:dd:be:ef --hostname=esx-1\n"
        "reboot\n"
    )


def test_vmware_kickstart_without_password_gets_an_unknown_one(reg: Registry) -> None:
    asset = reg.asset("/vmware/ks-esxi.cfg")
    assert asset is not None
    c = ctx(machine(inst=instance({"install_disk": "mpx.vmhba32:C0:T0:L0"}, slug="vmware_esxi_7_0")))
    first, second = asset(c)[1].decode(), asset(c)[1].decode()
    assert "install --disk=mpx.vmhba32:C0:T0:L0 --overwritevmfs\n" in first
    pw = [line for line in first.splitlines() if line.startswith("rootpw ")]
    assert len(pw) == 1 and "--iscrypted" not in pw[0] and len(pw[0]) > 30
    assert pw[0] not in second


# --- Boots flatcar/coreos (installers/coreos, Boots-2022 test) ---

FLATCAR_X86 = """#!ipxe

set base-url http://install.ewr1.packet.net/misc/tinkerbell
kernel ${base-url}/flatcar_production_pxe.vmlinuz console=ttyS1,115200n8 console=tty0 vga=773 initrd=flatcar_production_pxe_image.cpio.gz bonding.max_bonds=0 flatcar.autologin flatcar.first_boot=1 flatcar.config.url=http://127.0.0.1/flatcar/ignition.json
initrd ${base-url}/flatcar_production_pxe_image.cpio.gz
boot
"""
FLATCAR_ARM = """#!ipxe

set base-url http://install.ewr1.packet.net/misc/tinkerbell
kernel ${base-url}/flatcar-arm.vmlinuz console=ttyAMA0,115200 initrd=flatcar-arm.cpio.gz bonding.max_bonds=0 flatcar.autologin flatcar.first_boot=1 flatcar.config.url=http://127.0.0.1/flatcar/ignition.json
initrd ${base-url}/flatcar-arm.cpio.gz
boot
"""


@pytest.mark.parametrize(
    ("distro", "arch", "want"),
    [
        ("flatcar", "x86_64", FLATCAR_X86),
        ("flatcar", "aarch64", FLATCAR_ARM),
        ("coreos", "x86_64", FLATCAR_X86.replace("flatcar", "coreos")),
    ],
)
def test_flatcar_vectors(reg: Registry, distro: str, arch: str, want: str) -> None:
    hw = machine(arch=arch, inst=instance({"base_url": "http://install.ewr1.packet.net"}, slug=f"{distro}_stable", distro=distro))
    assert reg.resolve(hw)[0] == f"distro {distro}"
    assert render(reg, hw) == want


@pytest.mark.parametrize("distro", ["flatcar", "coreos"])
def test_ignition_asset_is_minimal_ignition_3(reg: Registry, distro: str) -> None:
    asset = reg.asset(f"/{distro}/ignition.json")
    assert asset is not None
    ctype, body = asset(ctx(machine(inst=instance(distro=distro))))
    assert ctype == "application/json"
    config = json.loads(body)
    assert config["ignition"] == {"version": "3.3.0"}
    (unit,) = config["systemd"]["units"]
    assert unit["name"] == f"{distro}-install.service" and unit["enabled"] is True
    assert f"\nExecStart=/usr/bin/{distro}-install -d /dev/sda -C stable\n" in unit["contents"]
    assert "\n[Install]\nWantedBy=multi-user.target\n" in unit["contents"]


def test_ignition_channel_and_disk_from_installer_data(reg: Registry) -> None:
    asset = reg.asset("/flatcar/ignition.json")
    assert asset is not None
    c = ctx(machine(inst=instance({"channel": "beta", "install_disk": "/dev/disk/by-id/nvme-X_1"}, distro="flatcar")))
    unit = json.loads(asset(c)[1])["systemd"]["units"][0]["contents"]
    assert "ExecStart=/usr/bin/flatcar-install -d /dev/disk/by-id/nvme-X_1 -C beta\n" in unit


# --- Boots nixos and rancher ---

NIXOS_STORE = "a8nhjab9brxw80lnvrpxj37wkgmxa0bl-nixos-system-ipxe-17.03.945.5acb454e2a"


def test_nixos_vector(reg: Registry) -> None:
    inst = instance({"base_url": "http://install.ewr1.packet.net", "system": NIXOS_STORE}, slug="nixos_17_03", distro="nixos")
    hw = machine(plan="t1.small.x86", inst=inst)
    assert render(reg, hw) == (
        "#!ipxe\n\n"
        "set base-url http://install.ewr1.packet.net/misc/tinkerbell/nixos/nixos_17_03/t1.small.x86\n"
        f"kernel ${{base-url}}/kernel init=/nix/store/{NIXOS_STORE}/init initrd=initrd console=ttyS1,115200 loglevel=7\n"
        "initrd ${base-url}/initrd\n"
        "boot\n"
    )


def test_nixos_image_tag_arm_and_pwhash(reg: Registry) -> None:
    inst = instance({"base_url": "http://m.example", "crypted_root_password": "$6$s$h"}, slug="nixos_21_11", distro="nixos", image_tag="abc-nixos-system")
    text = render(reg, machine(arch="aarch64", inst=inst))
    assert "set base-url http://m.example/misc/tinkerbell/nixos/nixos_21_11/abc-nixos-system\n" in text
    assert (
        "kernel ${base-url}/kernel init=/nix/store/abc-nixos-system/init initrd=initrd cma=0M biosdevname=0"
        " net.ifnames=0 console=ttyAMA0,115200 loglevel=7 pwhash=$6$s$h\n"
    ) in text


def test_nixos_without_system_drops_to_shell(reg: Registry) -> None:
    assert render(reg, machine(inst=instance(slug="nixos_17_03", distro="nixos"))).endswith("\nshell\n")


def test_rancher_vector(reg: Registry) -> None:
    hw = machine(plan="c3.small.x86", inst=instance(slug="rancher", distro="rancher"))
    assert render(reg, hw) == (
        "#!ipxe\n\n"
        "set base-url http://releases.rancher.com/os/packet\n"
        "kernel ${base-url}/vmlinuz console=ttyS1,115200n8 rancher.cloud_init.datasources=[url:${base-url}/packet.sh]"
        " tinkerbell=http://127.0.0.1\n"
        "initrd ${base-url}/initrd\n"
        "boot\n"
    )


def test_rancher_plan_args_and_overrides(reg: Registry) -> None:
    inst = instance({"base_url": "http://r.example/os/v1.5.8/", "cloud_config_url": "http://c.example/cc.yml"}, distro="rancher")
    text = render(reg, machine(plan="baremetal_0", inst=inst))
    assert "set base-url http://r.example/os/v1.5.8\n" in text
    assert (
        "rancher.cloud_init.datasources=[url:http://c.example/cc.yml] rancher.network.interfaces.eth0.dhcp=true"
        " rancher.network.interfaces.eth2.dhcp=true tinkerbell=http://127.0.0.1\n"
    ) in text


# --- resolution: custom > installer > slug > distro > default > shell ---


def _named(name: str) -> Any:
    def installer(c: Context) -> str:
        return f"#!ipxe\n\necho {name}\n"

    installer.__qualname__ = f"fake_{name}"
    return installer


def fake_registry(default: bool = True) -> Registry:
    r = Registry()
    r.register_installer("inst", _named("installer"))
    r.register_slug("ubuntu_20_04", _named("slug"))
    r.register_distro("ubuntu", _named("distro"))
    if default:
        r.register_default(_named("default"))
    return r


@pytest.mark.parametrize(
    ("hw", "default", "how"),
    [
        (machine(ipxe_url="http://x.example/", inst=instance(installer="inst", slug="ubuntu_20_04")), True, "custom ipxe"),
        (machine(ipxe_script="#!ipxe\nexit", inst=None), False, "custom ipxe"),
        (machine(inst=instance(installer="inst", slug="ubuntu_20_04", distro="ubuntu")), True, "installer inst"),
        (machine(inst=instance(installer="nope", slug="ubuntu_20_04", distro="ubuntu")), True, "slug ubuntu_20_04"),
        (machine(inst=instance(slug="ubuntu_22_04", distro="ubuntu")), True, "distro ubuntu"),
        (machine(inst=instance(slug="ubuntu_22_04", distro="debian")), True, "default (unmatched slug 'ubuntu_22_04', distro 'debian')"),
        (machine(inst=instance()), True, "default"),
        (machine(inst=None), True, "default"),
        (machine(inst=None), False, "shell (no instance, no default)"),
        (machine(inst=instance()), False, "shell (no default)"),
        (machine(inst=instance(distro="debian")), False, "shell (unmatched distro 'debian'; no default)"),
    ],
)
def test_precedence(hw: Hardware, default: bool, how: str) -> None:
    r = fake_registry(default)
    got, fn = r.resolve(hw)
    assert got == how
    text = r.render(ctx(hw))
    if how.startswith(("installer", "slug", "distro", "default")):
        assert text == f"#!ipxe\n\necho {how.split()[0]}\n"
    elif how.startswith("shell"):
        assert fn is shell and text == "#!ipxe\n\necho smee: no installer applies to this machine\nshell\n"


def test_custom_ipxe_counts_for_the_asking_interface_only() -> None:
    hw = Hardware(id="hw", interfaces=(Interface(mac=MAC), Interface(mac="00:01:02:03:04:06", ipxe_url="http://x.example/")))
    r = fake_registry()
    assert r.resolve(hw)[0] == "custom ipxe"
    assert r.resolve(hw, hw.interfaces[0])[0] == "default"
    assert r.resolve(hw, hw.interfaces[1])[0] == "custom ipxe"


def test_render_rejects_a_script_without_shebang() -> None:
    r = Registry()
    r.register_default(lambda c: "echo hi\n")
    with pytest.raises(ScriptError, match="#!ipxe"):
        r.render(ctx(machine()))


# --- registration ---


def first(c: Context) -> str:
    return "#!ipxe\n"


def second(c: Context) -> str:
    return "#!ipxe\n"


@pytest.mark.parametrize(
    ("register", "label"),
    [
        (lambda r, fn: r.register_slug("ubuntu", fn), "slug 'ubuntu'"),
        (lambda r, fn: r.register_distro("ubuntu", fn), "distro 'ubuntu'"),
        (lambda r, fn: r.register_installer("ubuntu", fn), "installer 'ubuntu'"),
        (lambda r, fn: r.register_default(fn), "the default installer"),
        (lambda r, fn: r.register_asset("/ubuntu/x", fn), "asset '/ubuntu/x'"),
    ],
)
def test_duplicate_registration_names_both(register: Any, label: str) -> None:
    r = Registry()
    register(r, first)
    with pytest.raises(DuplicateInstaller) as err:
        register(r, second)
    message = str(err.value)
    assert message.startswith(f"{label} is registered twice")
    assert f"{__name__}.first" in message and f"{__name__}.second" in message


def test_same_name_in_different_kinds_is_fine() -> None:
    r = Registry()
    r.register_slug("x", first)
    r.register_distro("x", second)
    r.register_installer("x", first)


def test_update_is_all_or_nothing() -> None:
    r = Registry()
    r.register_distro("taken", first)
    staging = Registry()
    staging.register_distro("fresh", second)
    staging.register_distro("taken", second)
    with pytest.raises(DuplicateInstaller):
        r.update(staging)
    assert r.names("distro") == ["taken"]


def test_load_is_idempotent_for_fresh_and_global_registries() -> None:
    fresh = Registry()
    assert installers.load(fresh) is fresh
    installers.load(fresh)
    assert installers.load() is installers.registry
    installers.load()
    for kind in ("installer", "slug", "distro"):
        assert fresh.names(kind) == installers.registry.names(kind)
    assert fresh.default is installers.registry.default
    assert set(installers.BUILTIN) <= fresh.loaded
    assert "flatcar" in fresh.names("distro") and "vmware_esxi_7_0U2a" in fresh.names("slug")


def test_builtin_modules_register_into_the_global_registry_at_import() -> None:
    from installers import osie

    assert isinstance(installers.registry, Registry)
    assert installers.registry.default is osie.hook
    assert installers.register_distro == installers.registry.register_distro


# --- entry points (group smee.installers) from a distribution built at test time ---


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake installed distribution with four entry points, on sys.path."""
    (tmp_path / "smee_test_plugins-1.0.dist-info").mkdir()
    (tmp_path / "smee_test_plugins-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: smee-test-plugins\nVersion: 1.0\n"
    )
    (tmp_path / "smee_test_plugins-1.0.dist-info" / "entry_points.txt").write_text(
        "[smee.installers]\n"
        "testos = smee_test_os\n"
        "otheros = smee_test_other:setup\n"
        "broken = smee_test_broken\n"
        "clash = smee_test_clash:register\n"
    )
    (tmp_path / "smee_test_os.py").write_text(textwrap.dedent('''
        """A plugin module: register(registry), as smee's own installers."""

        def testos(ctx):
            return "#!ipxe\\n\\necho testos for " + ctx.mac + "\\nshell\\n"

        def register(registry):
            registry.register_distro("testos", testos)
    '''))
    (tmp_path / "smee_test_other.py").write_text(
        "def setup(registry):\n    registry.register_slug('otheros_1', lambda ctx: '#!ipxe\\n')\n"
    )
    (tmp_path / "smee_test_broken.py").write_text("raise RuntimeError('plugin import exploded')\n")
    (tmp_path / "smee_test_clash.py").write_text(
        "def register(registry):\n"
        "    registry.register_distro('clashos', lambda ctx: '#!ipxe\\n')\n"
        "    registry.register_distro('flatcar', lambda ctx: '#!ipxe\\n')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("smee_test_"):
            del sys.modules[name]


def test_entry_point_installers_are_discovered(plugin_path: Path) -> None:
    r = Registry()
    with capturedLogs() as events:
        installers.load(r)
    assert "testos" in r.names("distro") and "otheros_1" in r.names("slug")
    hw = machine(inst=instance(slug="testos_1", distro="testos"))
    assert r.resolve(hw)[0] == "distro testos"
    assert r.render(ctx(hw)) == f"#!ipxe\n\necho testos for {MAC}\nshell\n"

    # The failing ones are logged, skipped, and leave nothing half-registered.
    errors = [e for e in events if e.get("log_level") == LogLevel.error]
    text = "\n".join(formatted(errors))
    assert "broken = smee_test_broken" in text and "clash = smee_test_clash:register" in text
    assert any("plugin import exploded" in str(e.get("log_failure").value) for e in errors)
    assert any("distro 'flatcar' is registered twice" in str(e.get("log_failure").value) for e in errors)
    assert "clashos" not in r.names("distro")
    assert r.resolve(machine(inst=instance(distro="flatcar")))[1].__module__ == "installers.flatcar"

    # Loading again registers nothing twice (and retries only the failures).
    installers.load(r)
    assert r.names("distro").count("testos") == 1


# --- injection: values from records are data, never script ---


@pytest.mark.parametrize(
    ("hw", "field"),
    [
        (machine(facility="x\nshell"), "facility"),
        (machine(facility="x ${net0/ip}"), "facility"),
        (machine(facility="x || shell"), "facility"),
        (machine(facility="a b"), "facility"),
        (machine(facility="x;"), None),  # not a token: harmless, accepted below
        (machine(facility='on"prem'), "facility"),
        (machine(facility="onprem\\"), "facility"),
        (machine(facility="#onprem"), "facility"),
        (machine(facility="--"), "facility"),
        (machine(facility="onprem\u2028shell"), "facility"),
        (machine(osie=OSIE(kernel="../vmlinuz")), "osie.kernel"),
        (machine(osie=OSIE(kernel="vm linuz")), "osie.kernel"),
        (machine(osie=OSIE(initrd="/etc/passwd")), "osie.initrd"),
        (machine(osie=OSIE(base_url="http://h.example/\nshell")), "osie.base_url"),
        (machine(osie=OSIE(base_url="http://h.example/${x}")), "osie.base_url"),
        (machine(arch="x86_64\nshell"), "arch"),
        (machine(vlan_id="12 shell"), "vlan_id"),
        (machine(console="ttyS0 init=/bin/sh"), "console"),
        (machine(mac="00:01:02:03:04:05\nshell"), "mac"),
        (machine(ipxe_url="http://boot.example/\nshell"), "ipxe_url"),
        (machine(ipxe_url="http://boot.example/ --replace"), "ipxe_url"),
        (machine(facility="x\nshell", plan="p", inst=instance(installer="custom_ipxe")), "packet_facility"),
        (machine(plan="p ${root-path}", inst=instance(installer="custom_ipxe")), "packet_plan"),
        (machine(inst=instance({"chain": "http://c.example/ && shell"}, installer="custom_ipxe")), "installer_data.chain"),
        (machine(inst=instance({"base_url": "http://m.example\nshell"}, slug="vmware_esxi_7_0")), "installer_data.base_url"),
        (machine(inst=instance({"base_url": "http://m.example"}, distro="vmware", version="7.0/../../x")), "operating_system.version"),
        (machine(inst=instance({"base_url": "http://m.example", "system": "x/../y"}, slug="nixos_1", distro="nixos")), "installer_data.system"),
        (machine(inst=instance({"base_url": "http://m.example"}, slug="nixos 1", distro="nixos", image_tag="t")), "operating_system.slug"),
        (machine(inst=instance({"base_url": "http://m.example", "crypted_root_password": "x y"}, distro="nixos", image_tag="t")), "pwhash"),
        (machine(inst=instance({"cloud_config_url": "http://c.example/]x y"}, distro="rancher")), "installer_data.cloud_config_url"),
        (machine(inst=instance({"base_url": ["not", "text"]}, distro="flatcar")), "installer_data.base_url"),
        (machine(inst=instance({"script": {"not": "text"}}, installer="custom_ipxe")), "installer_data.script"),
    ],
)
def test_record_values_cannot_inject_commands(reg: Registry, hw: Hardware, field: str | None) -> None:
    if field is None:
        assert "facility=x; " in render(reg, hw)
        return
    with pytest.raises(ScriptError) as err:
        render(reg, hw)
    assert str(err.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("path", "inst", "field"),
    [
        ("/vmware/ks-esxi.cfg", Instance(hostname="esx\n%firstboot", operating_system=OperatingSystem(slug="vmware_esxi_7_0")), "hostname"),
        ("/vmware/ks-esxi.cfg", instance({"crypted_root_password": "$6$x$y\nreboot"}), "installer_data.crypted_root_password"),
        ("/vmware/ks-esxi.cfg", instance({"crypted_root_password": "plain"}), "crypted_root_password"),
        ("/vmware/ks-esxi.cfg", instance({"install_disk": "x --overwritevmfs\n%pre"}), "installer_data.install_disk"),
        ("/flatcar/ignition.json", instance({"channel": "stable\nExecStartPre=/bin/sh"}), "installer_data.channel"),
        ("/flatcar/ignition.json", instance({"channel": "stable -i /tmp/x"}), "installer_data.channel"),
        ("/coreos/ignition.json", instance({"install_disk": "/dev/../etc/x"}), "installer_data.install_disk"),
        ("/coreos/ignition.json", instance({"install_disk": "/dev/sda; rm"}), "installer_data.install_disk"),
    ],
)
def test_asset_values_cannot_inject(reg: Registry, path: str, inst: Instance, field: str) -> None:
    asset = reg.asset(path)
    assert asset is not None
    with pytest.raises(ScriptError) as err:
        asset(ctx(machine(inst=inst)))
    assert str(err.value).startswith(f"{field}: ")


# --- the Script builder and the shared rule ---


def test_script_builder() -> None:
    s = Script().set("name", "two words").set("n", 3).set("flag", False).set("empty", "").echo("hello there")
    s.kernel("${base-url}/vmlinuz", kernel_arg("facility", "onprem"), kernel_arg("tls", True)).initrd("${base-url}/initrd")
    s.chain("https://boot.example/x.ipxe").line("boot")
    assert s.text() == (
        "#!ipxe\n\nset name two words\nset n 3\nset flag false\nset empty\necho hello there\n"
        "kernel ${base-url}/vmlinuz facility=onprem tls=true\ninitrd ${base-url}/initrd\n"
        "chain --autofree https://boot.example/x.ipxe\nboot\n"
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Script().set("x", "a\nshell"), "U\\+000A"),
        (lambda: Script().set("x", "${net0/ip}"), r"'\$\{'"),
        (lambda: Script().set("x", "a || shell"), "'\\|\\|'"),
        (lambda: Script().set("x", "a && shell"), "'&&'"),
        (lambda: Script().set("x", "a ; shell"), "';'"),
        (lambda: Script().set("x", "a #b"), "comment"),
        (lambda: Script().set("x", "a\\"), "backslash"),
        (lambda: Script().set("x", "caf\u00e9"), "U\\+00E9"),
        (lambda: Script().set("bad name", "v"), "setting name"),
        (lambda: Script().echo("hi\r\nshell"), "U\\+000D"),
        (lambda: Script().kernel("a b"), "single script token"),
        (lambda: Script().kernel("k", "x\ny"), "single script token"),
        (lambda: Script().chain("http://x/ y"), "whitespace"),
        (lambda: check_value("f", 3), "not text"),  # type: ignore[arg-type]
        (lambda: check_arg("f", "a\tb"), "U\\+0009"),
        (lambda: check_arg("f", "a'b"), "quote"),
        (lambda: check_url("u", "http:///nohost"), "with a host"),
        (lambda: check_name("n", ".."), "file name"),
        (lambda: check_name("n", ""), "file name"),
        (lambda: check_console("c", "ttyS0,115200 x"), "console device"),
    ],
)
def test_script_rejects(call: Any, match: str) -> None:
    with pytest.raises(ScriptError, match=match):
        call()


def ipxe_commands(line: str) -> list[list[str]]:
    """How iPXE splits one line into commands (core/exec.c: tokens, ||, &&, ;, #)."""
    commands: list[list[str]] = [[]]
    for token in line.split():
        if token.startswith("#"):
            break
        if token in ("||", "&&", ";"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


@given(st.text(max_size=40))
def test_any_accepted_set_value_stays_one_command(value: str) -> None:
    try:
        text = Script().set("v", value).text()
    except ScriptError:
        return
    lines = text.split("\n")
    assert lines[:2] == ["#!ipxe", ""] and lines[-1] == "" and len(lines) == 4
    assert "${" not in lines[2] and not lines[2].endswith("\\")
    assert ipxe_commands(lines[2]) == [["set", "v", *value.split()]]


@given(st.text(max_size=40))
def test_any_accepted_kernel_arg_is_one_token(value: str) -> None:
    try:
        arg = kernel_arg("k", value)
    except ScriptError:
        return
    assert arg.split() == [arg] and ipxe_commands("kernel x " + arg) == [["kernel", "x", arg]]
    assert '"' not in arg and "${" not in arg


# --- settings ---


def _settings_ns(**changes: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "osie_url": "http://osie.example/hook",
        "tink_server": "192.0.2.1:42113",
        "tink_server_tls": True,
        "tink_server_insecure_tls": False,
        "dhcp_syslog_ip": "192.0.2.1",
        "extra_kernel_args": "  a=1   b=2 ",
        "ipxe_script_retries": 3,
        "ipxe_script_retry_delay": 2,
        "dhcp_http_ipxe_script_scheme": "http",
        "dhcp_http_ipxe_script_host": "192.0.2.1",
        "dhcp_http_ipxe_script_port": 8080,
        "dhcp_http_ipxe_script_url": "",
        "http_port": 8080,
    }
    values.update(changes)
    return SimpleNamespace(**values)


@pytest.mark.parametrize(
    ("changes", "base_url"),
    [
        ({}, "http://192.0.2.1:8080"),
        ({"dhcp_http_ipxe_script_port": 80}, "http://192.0.2.1"),
        ({"dhcp_http_ipxe_script_scheme": "https", "dhcp_http_ipxe_script_port": 443}, "https://192.0.2.1"),
        ({"dhcp_http_ipxe_script_scheme": "https", "dhcp_http_ipxe_script_port": 80}, "https://192.0.2.1:80"),
        ({"dhcp_http_ipxe_script_url": "https://boot.example:8443/x/auto.ipxe"}, "https://boot.example:8443"),
    ],
)
def test_script_settings_from_settings(changes: dict[str, Any], base_url: str) -> None:
    s = ScriptSettings.from_settings(_settings_ns(**changes))
    assert s.base_url == base_url
    assert s.extra_kernel_args == ("a=1", "b=2")
    assert (s.tink_tls, s.tink_insecure_tls, s.retries, s.retry_delay, s.syslog_host) == (True, False, 3, 2, "192.0.2.1")


def test_script_settings_from_real_settings(tmp_path: Path) -> None:
    from ipaddress import IPv4Address

    from smee.config import Sources, resolve

    hw = tmp_path / "hw.yaml"
    hw.write_text("")
    flags = {"backend-file-enabled": "true", "backend-file-path": str(hw), "osie-url": "http://192.0.2.9/hook"}
    settings, _ = resolve(Sources(flags=flags, env={}, file={}), lambda _iface: IPv4Address("192.0.2.7"))
    s = ScriptSettings.from_settings(settings)
    assert s == script_settings(
        osie_url="http://192.0.2.9/hook", syslog_host="192.0.2.7", retries=0, retry_delay=2, base_url="http://192.0.2.7:8080"
    )


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tink_server": "1.2.3.4:42113 init=/bin/sh"}, "--tink-server"),
        ({"extra_kernel_args": "a=${x}"}, "--extra-kernel-args"),
        ({"osie_url": "http://o.example/${x}"}, "--osie-url"),
        ({"ipxe_script_retries": -1}, "retries"),
    ],
)
def test_script_settings_are_checked(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ScriptError, match=match):
        ScriptSettings.from_settings(_settings_ns(**changes))


# =========================================================================== auto-proxy's static script


def test_static_script_vector() -> None:
    """§8.6 TestStaticScript, adapted: Smee's values, the extra kernel args once (Smee repeats them)."""
    from installers.osie import static_script

    text = static_script(script_settings(
        osie_url="http://127.0.0.1", tink_server="127.0.0.1:42113", syslog_host="127.1.1.1",
        extra_kernel_args=("k=v", "k2=v2"),
    ))
    lines = text.splitlines()
    assert lines[0] == "#!ipxe"
    for expected in (
        "set download-url http://127.0.0.1", "set retries:int32 0", "set retry_delay:int32 0",
        "set grpc_authority 127.0.0.1:42113", "set syslog_host 127.1.1.1", "set tinkerbell_tls false",
        "set arch ${buildarch}", "set worker_id ${mac}",
    ):
        assert expected in lines, expected
    assert text.count("k=v k2=v2") == 1
    assert "hw_addr=${mac}" in text and "console=ttyS1,115200" in text and "facility=" not in text
    assert text.endswith("exit\n")


def test_static_script_rejects_unsafe_settings() -> None:
    from installers.osie import static_script

    with pytest.raises(ScriptError):
        static_script(script_settings(extra_kernel_args=("a ${x}",)))


# --- reuse of rendered scripts ---


def test_every_builtin_script_installer_is_deterministic(reg: Registry) -> None:
    """The HTTP server reuses their scripts for unchanged records (smee.http.app IPXEApp._render)."""
    fns = [reg.default, shell, hardware_script]
    fns += [reg._by[kind][name] for kind in ("installer", "slug", "distro") for name in reg.names(kind)]
    assert fns and all(is_deterministic(fn) for fn in fns), [fn for fn in fns if not is_deterministic(fn)]


def test_render_reusable_says_whether_the_installer_is_deterministic() -> None:
    r = Registry()
    r.register_default(lambda c: "#!ipxe\n")
    assert r.render_reusable(ctx(machine())) == ("#!ipxe\n", False)
    r.register_distro("d", deterministic(lambda c: "#!ipxe\necho d\n"))
    hw = machine(inst=instance(distro="d"))
    assert r.render_reusable(ctx(hw)) == ("#!ipxe\necho d\n", True)
    assert r.render(ctx(hw)) == "#!ipxe\necho d\n"


def test_generation_changes_with_every_registration() -> None:
    r = Registry()
    seen = {r.generation}
    r.register_default(shell)
    seen.add(r.generation)
    r.register_slug("s", shell)
    seen.add(r.generation)
    r.register_asset("/a", lambda c: ("text/plain", b""))
    seen.add(r.generation)
    other = Registry()
    other.register_distro("d", shell)
    r.update(other)
    seen.add(r.generation)
    assert len(seen) == 5


def test_check_value_rejects_the_first_non_printable_character() -> None:
    for bad, code in (("a\tb", "U+0009"), ("caf\u00e9", "U+00E9"), ("x\x7f", "U+007F"), ("\u2028", "U+2028")):
        with pytest.raises(ScriptError, match=re.escape(code)):
            check_value("f", bad)
    assert check_value("f", " ~printable ascii~ ") == " ~printable ascii~ "
