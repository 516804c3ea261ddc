"""Installers: iPXE script generators chosen per machine (custom → installer → slug → distro → default).

Each built-in installer lives in its own module here and registers itself
when imported; other packages add installers through the ``smee.installers``
entry-point group, without touching smee::

    # their pyproject.toml
    [project.entry-points."smee.installers"]
    myos = "myos_smee"              # a module with register(registry)
    # or: myos = "myos_smee:register"  (any callable taking the registry)

``registry`` is the one deliberate module-level object: "registers itself at
import" needs somewhere to register. Code that wants isolation (tests, a
second server in one process) builds its own :class:`Registry` and calls
``load(Registry())``, which registers every built-in and plugin into it.

Note: ``installers.registry`` is that :class:`Registry` instance, which
shadows the submodule of the same name as an attribute; import the module's
names with ``from installers.registry import Registry, Context, ...``.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from twisted.logger import Logger, LogLevel

from installers.registry import Registry

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "adopt",
    "load",
    "register_asset",
    "register_default",
    "register_distro",
    "register_installer",
    "register_slug",
    "registry",
]

registry: Registry = Registry()
register_slug = registry.register_slug
register_distro = registry.register_distro
register_default = registry.register_default
register_installer = registry.register_installer
register_asset = registry.register_asset

#: The built-in installer modules, each with a ``register(registry)`` function.
BUILTIN: tuple[str, ...] = (
    "installers.osie",
    "installers.custom_ipxe",
    "installers.vmware",
    "installers.flatcar",
    "installers.nixos",
    "installers.rancher",
)
ENTRY_POINT_GROUP = "smee.installers"

_log = Logger()

Register = Callable[[Registry], None]


def _apply(reg: Registry, key: str, register: Register) -> None:
    """Run ``register`` against ``reg`` once per ``key``, all-or-nothing."""
    if key in reg.loaded:
        return
    staging = Registry()
    register(staging)
    reg.update(staging)
    reg.loaded.add(key)


def adopt(module_name: str, register: Register) -> None:
    """Register a module into the process-wide registry; modules call this at import.

    Keyed by module name, so a later :func:`load` does not register it again.
    """
    _apply(registry, module_name, register)


def _register_of(obj: Any) -> tuple[str, Register | None]:
    """What an entry point names: a module with ``register`` or a callable."""
    if isinstance(obj, types.ModuleType):
        fn = getattr(obj, "register", None)
        return obj.__name__, fn if callable(fn) else None
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}", obj
    raise TypeError(f"{obj!r} is neither a module nor a callable")


def load(reg: Registry | None = None) -> Registry:
    """Register every built-in installer and every ``smee.installers`` entry point.

    Idempotent: what already registered into ``reg`` is skipped. A failing
    entry point (import error, exception, a name another installer owns) is
    logged and skipped, never fatal: one broken plugin must not stop every
    machine from booting.
    """
    reg = registry if reg is None else reg
    for name in BUILTIN:
        module = importlib.import_module(name)  # the first import adopts it into `registry`
        _apply(reg, name, module.register)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            key, register = _register_of(ep.load())
            if register is None:
                if reg is not registry:
                    _log.warn(
                        "installer entry point {name} = {value} has no register(registry) "
                        "function; it can only register into installers.registry at import",
                        name=ep.name,
                        value=ep.value,
                    )
                continue
            _apply(reg, key, register)
        except Exception:  # noqa: BLE001 - a plugin may fail in any way; it must not stop smee
            _log.failure(
                "skipping installer entry point {name} = {value}",
                level=LogLevel.error,
                name=ep.name,
                value=ep.value,
            )
    return reg
