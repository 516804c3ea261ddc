"""Custom iPXE: the operator says exactly what to boot.

Two entry points, because the two projects put the setting in two places:

* :func:`hardware_script` -- Smee-HEAD (smee-study.md §4.2, vectors §8.6):
  the interface's ``ipxe.url`` (wins) or ``ipxe.contents``. The registry
  chooses it before any other installer. The URL must be http(s) (else
  :class:`ScriptError`, a 500 as in Smee); the contents are pasted verbatim
  after the echo line, their own ``#!ipxe`` included -- they *are* a script,
  written by whoever controls the hardware record, so they are the one
  record value that is not treated as data.
* :func:`os_script` -- Boots' ``custom_ipxe`` installer, registered as
  installer, slug and distro ``custom_ipxe`` (Boots-2022). Sources, first
  found: ``installer_data.chain`` (URL), ``installer_data.script``,
  ``instance.ipxe_script_url``, ``instance.userdata`` starting with
  ``#!ipxe``; a pasted script loses its own ``#!ipxe`` line, as in Boots.
  None of them → a message and the iPXE shell. Boots' ``set packet_facility``
  and ``set packet_plan`` lines are kept (as checked values, only when set);
  its phone-home block is not: smee has no phone-home endpoint.
"""

from __future__ import annotations

from installers import adopt
from installers.registry import Context, Registry, deterministic
from installers.script import Script, ScriptError, check_url

ECHO = "Loading custom Tinkerbell iPXE script..."


@deterministic
def hardware_script(ctx: Context) -> str:
    """Smee-HEAD's custom script from the interface's ``ipxe.url`` / ``ipxe.contents``."""
    iface = ctx.interface
    s = Script().echo(ECHO)
    if iface.ipxe_url:
        return s.chain(iface.ipxe_url, "ipxe_url").text()
    if iface.ipxe_script:
        body = iface.ipxe_script
        return s.text() + body + ("" if body.endswith("\n") else "\n")
    raise ScriptError("ipxe_url, ipxe_script: neither is set")


def _without_shebang(script: str) -> str:
    first, _, rest = script.partition("\n")
    return rest if first.strip() == "#!ipxe" else script


@deterministic
def os_script(ctx: Context) -> str:
    """Boots' ``custom_ipxe`` installer (see the module docstring for the sources)."""
    hw, instance = ctx.hardware, ctx.hardware.instance
    s = Script().echo(ECHO)
    if hw.facility:
        s.set("packet_facility", hw.facility)
    if hw.plan:
        s.set("packet_plan", hw.plan)
    chain = ctx.data("chain")
    pasted = ctx.installer_data.get("script", "")
    if not isinstance(pasted, str):
        raise ScriptError(f"installer_data.script: {pasted!r} is not text")
    if chain:
        s.chain(chain, "installer_data.chain")
    elif pasted:
        s.line(_without_shebang(pasted).rstrip("\n"))
    elif instance is not None and instance.ipxe_script_url:
        s.chain(check_url("instance.ipxe_script_url", instance.ipxe_script_url), "instance.ipxe_script_url")
    elif instance is not None and instance.userdata.startswith("#!ipxe"):
        s.line(_without_shebang(instance.userdata).rstrip("\n"))
    else:
        s.echo("custom_ipxe: no chain URL or script in installer_data, ipxe_script_url or userdata")
        s.line("shell")
    return s.text()


def register(reg: Registry) -> None:
    reg.register_installer("custom_ipxe", os_script)
    reg.register_slug("custom_ipxe", os_script)
    reg.register_distro("custom_ipxe", os_script)


adopt(__name__, register)
