"""The default installer: Smee-HEAD's Hook (OSIE) script (smee-study.md §4.2).

Every machine without a custom script or a more specific installer boots
Hook, whose tink-worker then runs the machine's workflows. The script is
Smee's ``HookScript`` line for line: the same variables, the same retry
loops around ``kernel``, ``initrd`` and ``boot``, and the kernel command line
in Smee's order::

    ${download-url}/${kernel} [vlan_id=] [extra args] facility= syslog_host=
    grpc_authority= tinkerbell_tls= tinkerbell_insecure_tls= worker_id=<mac>
    hw_addr=<mac> modules=loop,squashfs,sd-mod,usb-storage intel_iommu=on
    iommu=pt initrd=${initrd} <consoles>

Differences from Smee, on purpose:

* ``initrd=${initrd}`` instead of Smee's ``initrd=initramfs-${arch}``: Smee
  names the default initrd even when ``osie.initrd`` overrides it (a latent
  bug: the kernel then looks for an initrd that was never loaded under that
  name). With the default name both expand to the same text.
* Consoles: Smee always sends ``console=tty0 console=ttyS1,115200``. An ARM
  machine (``arch`` aarch64/arm*) gets ``console=ttyAMA0,115200`` instead, as
  Boots did; a machine with ``netboot.console`` gets that device as its
  serial console (``ttyS0`` → ``console=ttyS0,115200``: Linux would default
  to 9600 baud) after ``console=tty0`` on x86 and alone on ARM. The last
  ``console=`` is ``/dev/console``, so serial stays last, as in Smee.
* Kernel and initrd overrides are file names, not paths (the directory goes
  in ``osie.baseURL``), so ``initrd=`` always matches the loaded image's name.
* No trace ID line (smee has no tracing) and no Boots phone-home block
  (smee has no phone-home endpoint).
"""

from __future__ import annotations

import re

from installers import adopt
from installers.registry import Context, Registry, ScriptSettings, deterministic
from installers.script import Script, ScriptError, check_arg, check_name, kernel_arg

_VLAN = re.compile(r"[0-9]{1,4}")


def _retry(error: str, again: str) -> str:
    """Smee's retry suffix: on failure count up to ${retries}, sleeping between tries."""
    return (
        f"|| iseq ${{idx}} ${{retries}} && goto {error} || inc idx "
        f"&& echo retry in ${{retry_delay}} seconds ; sleep ${{retry_delay}} ; goto {again}"
    )


def consoles(ctx: Context) -> list[str]:
    """The ``console=`` arguments for this machine (see the module docstring)."""
    own = ctx.console
    if ctx.is_arm:
        return [f"console={own or 'ttyAMA0,115200'}"]
    return ["console=tty0", f"console={own or 'ttyS1,115200'}"]


@deterministic
def hook(ctx: Context) -> str:
    """Smee-HEAD's Hook script for ``ctx``'s machine."""
    settings, iface = ctx.settings, ctx.interface
    vlan = iface.vlan_id
    if vlan and not _VLAN.fullmatch(vlan):
        raise ScriptError(f"vlan_id: {vlan!r} is not a VLAN id")
    mac = ctx.mac

    s = Script()
    s.echo("Loading the Tinkerbell Hook iPXE script...")
    s.line("")
    s.set("arch", ctx.arch)
    s.set("download-url", ctx.osie_url)
    if iface.osie.kernel:
        s.set("kernel", check_name("osie.kernel", iface.osie.kernel))
    else:
        s.line("set kernel vmlinuz-${arch}")
    if iface.osie.initrd:
        s.set("initrd", check_name("osie.initrd", iface.osie.initrd))
    else:
        s.line("set initrd initramfs-${arch}")
    s.line(f"set retries:int32 {settings.retries:d}")
    s.line(f"set retry_delay:int32 {settings.retry_delay:d}")
    s.line("")

    head = ["kernel", "${download-url}/${kernel}"]
    if vlan:
        head.append(kernel_arg("vlan_id", vlan))
    head.extend(check_arg("--extra-kernel-args", a) for a in settings.extra_kernel_args)
    middle = [
        kernel_arg("facility", ctx.hardware.facility),
        kernel_arg("syslog_host", settings.syslog_host),
        kernel_arg("grpc_authority", settings.tink_server),
        kernel_arg("tinkerbell_tls", settings.tink_tls),
        kernel_arg("tinkerbell_insecure_tls", settings.tink_insecure_tls),
        kernel_arg("worker_id", mac),
        kernel_arg("hw_addr", mac),
    ]
    tail = [
        "modules=loop,squashfs,sd-mod,usb-storage",
        "intel_iommu=on",
        "iommu=pt",
        "initrd=${initrd}",
        *consoles(ctx),
        "&& goto download_initrd",
        _retry("kernel-error", "retry_kernel"),
    ]
    s.line("set idx:int32 0")
    s.line(":retry_kernel")
    s.line(" ".join(head) + " \\")
    s.line(" ".join(middle) + " \\")
    s.line(" ".join(tail))
    s.line("")
    s.line(":download_initrd")
    s.line("set idx:int32 0")
    s.line(":retry_initrd")
    s.line("initrd ${download-url}/${initrd} && goto boot " + _retry("initrd-error", "retry_initrd"))
    s.line("")
    s.line(":boot")
    s.line("set idx:int32 0")
    s.line(":retry_boot")
    s.line("boot " + _retry("boot-error", "retry_boot"))
    for label, what in (("kernel-error", "load kernel"), ("initrd-error", "load initrd"), ("boot-error", "boot")):
        s.line("")
        s.line(f":{label}")
        s.line(f"echo Failed to {what}")
        s.line("imgfree")
        s.line("exit")
    return s.text()


#: Every console a machine might have, as Smee's static script lists them: with no
#: record, smee cannot know which one the machine uses.
STATIC_CONSOLES = (
    "console=tty1 console=tty2 console=ttyAMA0,115200 console=ttyAMA1,115200 "
    "console=ttyS0,115200 console=ttyS1,115200"
)


def static_script(settings: ScriptSettings) -> str:
    """Smee-HEAD's static Hook script for auto-proxy mode: machines with no record (§4.2 step 6).

    It uses iPXE's own variables instead of hardware data: the architecture
    from ``${buildarch}`` and the worker id from ``${mac}``. Unlike Smee, the
    extra kernel arguments appear once (Smee emits them twice).
    """
    s = Script()
    s.echo("Loading the static Tinkerbell Hook iPXE script...")
    s.line("")
    s.line("set arch ${buildarch}")
    s.line("iseq ${arch} i386 && set arch x86_64 ||")
    s.line("iseq ${arch} arm32 && set arch aarch64 ||")
    s.line("iseq ${arch} arm64 && set arch aarch64 ||")
    s.set("download-url", settings.osie_url)
    s.line("set retries:int32 0")
    s.line("set retry_delay:int32 0")
    s.set("grpc_authority", settings.tink_server)
    s.set("syslog_host", settings.syslog_host)
    s.set("tinkerbell_tls", settings.tink_tls)
    s.set("tinkerbell_insecure_tls", settings.tink_insecure_tls)
    s.line("set worker_id ${mac}")
    s.line("")
    head = ["kernel", "${download-url}/vmlinuz-${arch}"]
    head.extend(check_arg("--extra-kernel-args", a) for a in settings.extra_kernel_args)
    s.line(" ".join(head) + " \\")
    s.line(
        "syslog_host=${syslog_host} grpc_authority=${grpc_authority} tinkerbell_tls=${tinkerbell_tls} "
        "tinkerbell_insecure_tls=${tinkerbell_insecure_tls} worker_id=${worker_id} hw_addr=${mac} \\"
    )
    s.line(f"initrd=initramfs-${{arch}} {STATIC_CONSOLES} || goto error")
    s.line("initrd ${download-url}/initramfs-${arch} || goto error")
    s.line("boot || goto error")
    s.line("")
    s.line(":error")
    s.line("echo Failed to boot the static Hook script")
    s.line("imgfree")
    s.line("exit")
    return s.text()


def register(reg: Registry) -> None:
    reg.register_default(hook)


adopt(__name__, register)
