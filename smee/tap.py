# -*- test-case-name: tests.test_tap -*-
"""``twistd smee``: command-line options and the service tree.

Only wiring lives here, as in twisted.names.tap: Options turns flags,
``SMEE_*`` variables and the ``--config`` file into one frozen Settings
(:mod:`smee.config`), and makeService builds a MultiService with a
``backend`` child and one named child per enabled component.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from smee import __version__, config

log = Logger(namespace="smee.tap")


class Options(usage.Options):
    """Options for ``twistd smee``; every one is also ``SMEE_<NAME>`` and a ``--config`` key."""

    synopsis = "[options]"
    longdesc = (
        "Network-boot server: DHCP, TFTP and HTTP/iPXE for bare-metal provisioning. "
        "Each option can also be set as SMEE_<OPTION> (e.g. SMEE_DHCP_MODE) or in the "
        "YAML file given with --config; precedence: flag > environment > file > default."
    )
    optParameters = [
        ["config", None, None, "YAML file of settings (keys are option names). [env SMEE_CONFIG]"],
    ] + [
        [s.name, None, None, f"{s.help} [default: {s.default or 'empty'}]"]
        for s in config.SETTINGS
    ]

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        detect_ip: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self._detect_ip = detect_ip
        self.settings: Any = None
        self.origin: dict[str, str] = {}
        self.warnings: list[str] = []

    def opt_version(self) -> None:
        """Print smee's version and exit."""
        print(f"smee {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        flags = {s.name: self[s.name] for s in config.SETTINGS if self[s.name] is not None}
        env, unknown = config.env_sources(self._environ)
        self.warnings = [f"ignoring unknown environment variable {name}" for name in unknown]
        path = self["config"] or self._environ.get("SMEE_CONFIG", "")
        detect = self._detect_ip
        if detect is None:
            from smee.netif import detect_public_ip as detect
        try:
            file = config.read_config_file(path) if path else {}
            self.settings, self.origin = config.resolve(config.Sources(flags, env, file), detect)
        except config.ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """Build the service tree: ``backend`` first, then each enabled component."""
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    for warning in options.warnings:
        log.warn("{warning}", warning=warning)
    top = MultiService()
    backend = _makeBackend(settings, reactor)
    backend.setName("backend")
    backend.setServiceParent(top)
    runtime = makeRuntime(settings, backend, reactor)
    for name, svc in _makeComponents(settings, runtime, reactor):
        svc.setName(name)
        svc.setServiceParent(top)
    _addSignalHandling(top, backend, reactor)
    log.info(
        "smee {version}: {mode} mode, backend {backend}, public IP {ip}",
        version=__version__,
        mode=settings.dhcp_mode,
        backend=backend.kind,
        ip=str(settings.public_ip),
    )
    return top


def _addSignalHandling(top: MultiService, backend: Any, reactor: Any) -> None:
    """SIGHUP re-reads the hardware (``backend.reload()``); a SIGTERM shutdown exits 0
    (:mod:`smee.shutdown`)."""
    from smee.shutdown import SignalService

    SignalService(backend, reactor).setServiceParent(top)


def _makeBackend(settings: Any, reactor: Any) -> Any:
    """The one hardware backend the settings select (validated in Options)."""
    kind = config.backend_name(settings)
    if kind == "file":
        from smee.backends.file import FileBackend
        from smee.formats import HardwareFileError

        backend = FileBackend(settings.backend_file_path, reactor)
        try:
            backend.load()
        except HardwareFileError as e:
            # twistd does not catch errors from makeService; exit with one
            # clear line rather than a traceback.
            raise SystemExit(f"smee: --backend-file-path: {e}") from None
        return backend
    if kind == "http":
        from smee.backends.http import HTTPBackend

        return HTTPBackend.from_settings(settings, reactor)
    if kind == "kube":
        from smee.backends.kube import KubeBackend

        return KubeBackend.from_settings(settings, reactor)
    from smee.backends.noop import NoopBackend

    return NoopBackend()


def makeRuntime(settings: Any, backend: Any, reactor: Any) -> Any:
    """What the components share: the iPXE binaries are read (and their warnings logged) once,
    the installers (built-ins and ``smee.installers`` entry points) registered once."""
    from dataclasses import replace

    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    from installers import load
    from smee.chainload import Chainloads
    from smee.dhcp.policy import DHCPConfig
    from smee.metrics import InstrumentedBackend, Metrics
    from smee.runtime import Runtime
    from smee.tftp.files import Binaries, default_ipxe_dir
    from smee.timeline import BootTimeline

    binaries = Binaries.load(settings.ipxe_dir or default_ipxe_dir())
    for warning in binaries.warnings:
        log.warn("iPXE binaries: {warning}", warning=warning, ipxe_dir=binaries.directory)
    dhcp = replace(DHCPConfig.from_settings(settings), available_binaries=binaries.available())
    # This server's own metrics registry (never prometheus_client's global one),
    # with the process collectors Smee's Go runtime also exposes.
    registry = CollectorRegistry(auto_describe=True)
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    metrics = Metrics(registry)
    timeline = BootTimeline(reactor, metrics=metrics)
    return Runtime(
        # Every lookup counted and timed in one place; the wrapper also carries
        # the metrics and the timeline to the protocols built from it.
        backend=InstrumentedBackend(backend, metrics, reactor, timeline) if backend is not None else None,
        binaries=binaries, dhcp=dhcp, chainloads=Chainloads(reactor),
        # The process-wide registry: plugins that register at import land there too.
        installers=load(),
        metrics=metrics,
        timeline=timeline,
    )


#: (child name, Settings attribute(s) that enable it, factory module:function).
#: A component with several attributes runs when any of them is true.
#: A factory takes (settings, runtime: smee.runtime.Runtime, reactor) and returns an IService.
COMPONENTS: tuple[tuple[str, str | tuple[str, ...], str], ...] = (
    ("dhcp", "dhcp_enabled", "smee.dhcp.service:makeService"),
    ("tftp", "tftp_enabled", "smee.tftp.service:makeService"),
    # /healthcheck and /metrics come with either: no HTTP server when both are off.
    ("http", ("http_ipxe_binary_enabled", "http_ipxe_script_enabled"), "smee.http.service:makeService"),
    ("syslog", "syslog_enabled", "smee.syslog.service:makeService"),
)


def _makeComponents(settings: Any, runtime: Any, reactor: Any) -> Iterator[tuple[str, IService]]:
    """One service per enabled component, in start order, each built by its own factory."""
    from importlib import import_module

    for name, enabled, factory in COMPONENTS:
        attrs = (enabled,) if isinstance(enabled, str) else enabled
        if not any(getattr(settings, attr) for attr in attrs):
            log.info("{component} disabled by configuration", component=name)
            continue
        module, _, func = factory.partition(":")
        yield name, getattr(import_module(module), func)(settings, runtime, reactor)
