"""Which installer writes a machine's iPXE script, and what it gets to work with.

Resolution, first match wins (smee-study.md §4.2, §5.1):

1. **custom iPXE** (Smee-HEAD): the interface has ``ipxe.url`` or
   ``ipxe.contents``; the operator said exactly what to boot.
2. ``metadata.instance.operating_system.installer`` (Boots-2022's level);
3. ``...operating_system.slug``;
4. ``...operating_system.distro``;
5. the default installer (``osie``: the Hook script Smee-HEAD serves to every
   machine, with or without an instance);
6. an iPXE ``shell`` when nothing applies.

A name registered twice is an error naming both registrations, so two
packages can never silently fight over an OS.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from installers.script import (
    Script,
    ScriptError,
    check_arg,
    check_console,
    check_url,
    check_value,
)
from smee.hardware import Hardware, Interface, OperatingSystem

__all__ = [
    "Asset",
    "Context",
    "DuplicateInstaller",
    "Installer",
    "Registry",
    "ScriptSettings",
    "deterministic",
    "is_deterministic",
    "shell",
]

_ARCH = re.compile(r"[A-Za-z0-9_]{1,32}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Serial speed added to a netboot console given without one: Linux would
#: default to 9600 baud, which garbles the 115200 most BMCs' serial-over-LAN use.
DEFAULT_BAUD = "115200"


@dataclass(frozen=True)
class ScriptSettings:
    """The global settings installers use, checked once so scripts can trust them.

    These come from the operator (flags, environment, config file), not from
    hardware records; they are still checked here, so a bad ``--tink-server``
    is reported once, naming the option, instead of breaking every script.
    """

    osie_url: str
    tink_server: str
    tink_tls: bool
    tink_insecure_tls: bool
    syslog_host: str
    extra_kernel_args: tuple[str, ...]
    retries: int
    retry_delay: int
    base_url: str  # "http://<host>[:<port>]" of smee's HTTP server, for installer assets

    def __post_init__(self) -> None:
        if self.osie_url:
            check_url("--osie-url", self.osie_url)
        check_arg("--tink-server", self.tink_server)
        check_arg("--dhcp-syslog-ip", self.syslog_host)
        for arg in self.extra_kernel_args:
            check_arg("--extra-kernel-args", arg)
        for name in ("retries", "retry_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ScriptError(f"{name}: {value!r} is not a non-negative integer")
        check_url("base_url", self.base_url)

    @classmethod
    def from_settings(cls, settings: Any) -> ScriptSettings:
        """Build from :class:`smee.config.Settings`.

        ``base_url`` is where *clients* reach smee's HTTP server: the iPXE
        script URL's scheme, host and port (``--dhcp-http-ipxe-script-*``,
        the port left out when it is the scheme's default), or the origin of
        ``--dhcp-http-ipxe-script-url`` when that overrides them. The
        advertised port is used rather than ``--http-port`` because a client
        behind a proxy or NAT reaches smee the same way it fetched the
        script; the two are equal (8080) by default.
        """
        full = getattr(settings, "dhcp_http_ipxe_script_url", "")
        if full:
            parts = urlsplit(full)
            base_url = f"{parts.scheme}://{parts.netloc}"
        else:
            scheme = settings.dhcp_http_ipxe_script_scheme
            host = str(settings.dhcp_http_ipxe_script_host)
            port = int(settings.dhcp_http_ipxe_script_port)
            base_url = f"{scheme}://{host}" if _DEFAULT_PORTS.get(scheme) == port else f"{scheme}://{host}:{port}"
        syslog = settings.dhcp_syslog_ip
        return cls(
            osie_url=settings.osie_url,
            tink_server=settings.tink_server,
            tink_tls=bool(settings.tink_server_tls),
            tink_insecure_tls=bool(settings.tink_server_insecure_tls),
            syslog_host="" if syslog is None else str(syslog),
            extra_kernel_args=tuple(str(settings.extra_kernel_args or "").split()),
            retries=int(settings.ipxe_script_retries),
            retry_delay=int(settings.ipxe_script_retry_delay),
            base_url=base_url,
        )


_NO_OS = OperatingSystem()
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Context:
    """One script request: the machine, the interface that asked, the settings.

    The properties read the record for installers and check what they read,
    so each installer does not have to remember to.
    """

    hardware: Hardware
    interface: Interface
    settings: ScriptSettings

    @property
    def os(self) -> OperatingSystem:
        """``metadata.instance.operating_system``, empty when there is no instance."""
        instance = self.hardware.instance
        return instance.operating_system if instance is not None else _NO_OS

    @property
    def installer_data(self) -> Mapping[str, Any]:
        return self.os.installer_data or _EMPTY

    def data(self, key: str, default: str = "") -> str:
        """``installer_data[key]`` as checked text (numbers are written in decimal)."""
        value = self.installer_data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ScriptError(f"installer_data.{key}: {value!r} is not text")
        return check_value(f"installer_data.{key}", str(value))

    @property
    def mac(self) -> str:
        """The asking interface's MAC, lower-case colon form (Smee's ``worker_id``)."""
        mac = self.interface.mac
        if not _MAC.fullmatch(mac):
            raise ScriptError(f"mac: {mac!r} is not a normalised MAC address")
        return mac

    @property
    def arch(self) -> str:
        """The interface's ``arch``, ``x86_64`` when unset (as Smee)."""
        arch = self.interface.arch or "x86_64"
        if not _ARCH.fullmatch(arch):
            raise ScriptError(f"arch: {arch!r} is not an architecture name")
        return arch

    @property
    def is_arm(self) -> bool:
        return self.arch.lower().startswith(("aarch64", "arm"))

    @property
    def console(self) -> str:
        """The netboot console device (``netboot.console``), with a baud rate; "" if unset."""
        value = self.interface.console
        if not value:
            return ""
        check_console("console", value)
        return value if "," in value else f"{value},{DEFAULT_BAUD}"

    @property
    def osie_url(self) -> str:
        """The machine's ``osie.baseURL`` if set, else ``--osie-url`` (Smee's download-url)."""
        own = self.interface.osie.base_url
        return check_url("osie.base_url", own) if own else self.settings.osie_url

    @property
    def mirror(self) -> str:
        """Root URL of the OS mirror for the Boots-era installers (no trailing slash).

        ``installer_data.base_url`` if set, else the origin (scheme://host[:port])
        of the OSIE URL, as Boots' mirror hosted both (``install.<facility>.packet.net``).
        """
        own = self.data("base_url")
        if own:
            return check_url("installer_data.base_url", own).rstrip("/")
        osie = self.osie_url
        if not osie:
            raise ScriptError("installer_data.base_url: no OS mirror: set it, or --osie-url")
        parts = urlsplit(osie)
        return f"{parts.scheme}://{parts.netloc}"

    def asset_url(self, path: str) -> str:
        """Absolute URL of one of smee's installer assets, e.g. ``/vmware/ks-esxi.cfg``."""
        return self.settings.base_url.rstrip("/") + path


#: An installer turns a request into the whole script text.
Installer = Callable[[Context], str]
#: An asset answers an installer's follow-up request: (content type, body).
Asset = Callable[[Context], tuple[str, bytes]]


class DuplicateInstaller(ValueError):
    """A name was registered twice; the message names both registrations."""


def _who(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return f"{module}.{name}"


#: The attribute :func:`deterministic` sets on an installer.
_DETERMINISTIC = "smee_deterministic"


def deterministic(fn: Installer) -> Installer:
    """Mark an installer whose script depends on nothing but its :class:`Context`.

    No clock, no randomness, no I/O, no state: the same (unchanged) hardware
    record, interface and settings always give the same text, so a server may
    reuse the text it wrote for them (:meth:`Registry.render_reusable`).
    Every built-in installer is marked; a plugin's is only if it says so.
    """
    setattr(fn, _DETERMINISTIC, True)
    return fn


def is_deterministic(fn: Callable[..., Any]) -> bool:
    return getattr(fn, _DETERMINISTIC, False) is True


@deterministic
def shell(ctx: Context) -> str:
    """Nothing applies: drop to the iPXE shell so someone at the console can look."""
    return Script().echo("smee: no installer applies to this machine").line("shell").text()


_KINDS = ("installer", "slug", "distro")


class Registry:
    """Installers by installer name, slug and distro, the default, and assets.

    ``loaded`` records which modules and entry points have registered here,
    so :func:`installers.load` can run any number of times.
    """

    def __init__(self) -> None:
        self._by: dict[str, dict[str, Installer]] = {kind: {} for kind in _KINDS}
        self._default: Installer | None = None
        self._assets: dict[str, Asset] = {}
        self.loaded: set[str] = set()
        #: bumped by every registration: which installer a record resolves to may have changed
        self.generation = 0

    def _add(self, kind: str, name: str, fn: Installer) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
        table = self._by[kind]
        if name in table:
            raise DuplicateInstaller(
                f"{kind} {name!r} is registered twice: by {_who(table[name])} and by {_who(fn)}"
            )
        table[name] = fn
        self.generation += 1

    def register_slug(self, name: str, fn: Installer) -> None:
        self._add("slug", name, fn)

    def register_distro(self, name: str, fn: Installer) -> None:
        self._add("distro", name, fn)

    def register_installer(self, name: str, fn: Installer) -> None:
        """``operating_system.installer`` (Boots-2022): checked before slug and distro."""
        self._add("installer", name, fn)

    def register_default(self, fn: Installer) -> None:
        if self._default is not None:
            raise DuplicateInstaller(
                f"the default installer is registered twice: by {_who(self._default)} and by {_who(fn)}"
            )
        self._default = fn
        self.generation += 1

    def register_asset(self, path: str, fn: Asset) -> None:
        """An extra URL an installer's script fetches, e.g. ``/vmware/ks-esxi.cfg``."""
        if not path.startswith("/") or any(ch.isspace() for ch in path):
            raise ValueError(f"asset path must start with '/' and have no spaces, got {path!r}")
        if path in self._assets:
            raise DuplicateInstaller(
                f"asset {path!r} is registered twice: by {_who(self._assets[path])} and by {_who(fn)}"
            )
        self._assets[path] = fn
        self.generation += 1

    def update(self, other: Registry) -> None:
        """Add everything ``other`` holds, or nothing if any name is already taken.

        All-or-nothing, so a plugin that fails half-way through leaves no
        half of itself behind.
        """
        for kind in _KINDS:
            for name, fn in other._by[kind].items():
                if name in self._by[kind]:
                    self._add(kind, name, fn)  # raises, naming both
        if other._default is not None and self._default is not None:
            self.register_default(other._default)  # raises
        for path, asset in other._assets.items():
            if path in self._assets:
                self.register_asset(path, asset)  # raises
        for kind in _KINDS:
            self._by[kind].update(other._by[kind])
        if other._default is not None:
            self._default = other._default
        self._assets.update(other._assets)
        self.loaded |= other.loaded
        self.generation += 1

    def names(self, kind: str) -> list[str]:
        """Registered names of one kind (``installer``, ``slug``, ``distro``), sorted."""
        return sorted(self._by[kind])

    @property
    def default(self) -> Installer | None:
        return self._default

    def resolve(self, hardware: Hardware, interface: Interface | None = None) -> tuple[str, Installer]:
        """How the installer was chosen (for logs) and the installer.

        ``interface`` is the one that asked; without it, a custom iPXE
        setting on any interface counts.
        """
        asking = (interface,) if interface is not None else hardware.interfaces
        if any(i.ipxe_url or i.ipxe_script for i in asking):
            from installers.custom_ipxe import hardware_script

            return "custom ipxe", hardware_script

        unmatched = []
        instance = hardware.instance
        if instance is not None:
            os_ = instance.operating_system
            for kind, name in zip(_KINDS, (os_.installer, os_.slug, os_.distro)):
                if not name:
                    continue
                fn = self._by[kind].get(name)
                if fn is not None:
                    return f"{kind} {name}", fn
                unmatched.append(f"{kind} {name!r}")
        why = f"unmatched {', '.join(unmatched)}" if unmatched else ""
        if self._default is not None:
            return (f"default ({why})" if why else "default"), self._default
        if instance is None:
            return "shell (no instance, no default)", shell
        return (f"shell ({why}; no default)" if why else "shell (no default)"), shell

    def render(self, ctx: Context) -> str:
        """The script for ``ctx``; :class:`ScriptError` propagates (the route answers 500)."""
        return self.render_reusable(ctx)[0]

    def render_reusable(self, ctx: Context) -> tuple[str, bool]:
        """The script for ``ctx``, and whether the installer that wrote it is
        :func:`deterministic` (the text may be reused for the same, unchanged
        ``ctx`` objects while :attr:`generation` stays the same)."""
        _how, fn = self.resolve(ctx.hardware, ctx.interface)
        text = fn(ctx)
        if not text.startswith("#!ipxe") or not text.endswith("\n"):
            raise ScriptError(f"installer {_who(fn)} returned a script without '#!ipxe' or the final newline")
        return text, is_deterministic(fn)

    def asset(self, path: str) -> Asset | None:
        return self._assets.get(path)
