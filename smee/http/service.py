# -*- test-case-name: tests.test_http_service -*-
"""The HTTP service: one TCP port, a twisted.web Site around :class:`~smee.http.app.IPXEApp`.

Binding happens in :meth:`HTTPService.privilegedStartService`, so that
``twistd -u/-g`` can bind port 80 as root and then drop privileges, like
the DHCP and TFTP services. A port that cannot be bound is a
:class:`HTTPBindError`: one line naming ``--http-addr``/``--http-port``
and the likely cause, then exit.

Everything the routes need that does not depend on the request (the
script settings, the binaries' bodies and validators, proxy-mode
``autoexec.ipxe``) is built here or in the app's constructor, once.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import http, server

from smee.http.app import HTTPConfig, IPXEApp
from smee.listen import TCP_LISTEN_BACKLOG, BindError, ListeningService, bind_hint

__all__ = ["HTTPBindError", "HTTPService", "Site", "makeService"]

log = Logger(namespace="smee.http")


class HTTPBindError(BindError):
    """The HTTP port could not be opened; the text names the options and the OS error."""


class Site(server.Site):
    """A twisted.web Site without Twisted's own access log.

    :class:`smee.http.app.AccessLog` writes one structured line per request
    (with the client behind proxies and the reason for a refusal);
    Twisted's combined-format line would be a second, poorer copy. Not
    "noisy" either: no "Starting factory" lines.
    """

    noisy = False
    #: HTTP/1.1 only: plain TCP never negotiates HTTP/2, so Twisted's protocol-switching
    #: wrapper (one more object and call per connection and per read) buys nothing.
    protocol = http.HTTPChannel

    def log(self, request: Any) -> None:
        """The access log is written by the resource (see the class docstring)."""


def _bind_error(address: tuple[str, int], e: OSError) -> HTTPBindError:
    hint = bind_hint(
        e, "another HTTP server is listening; stop it or choose another --http-port",
        "not an address of this host; set --http-addr to one",
    )
    return HTTPBindError(
        f"smee: --http-addr={address[0]} --http-port={address[1]}: cannot listen for HTTP on "
        f"{address[0]}:{address[1]}{hint}: {e.strerror or e}"
    )


class HTTPService(ListeningService):
    """Serve ``app`` on ``address`` (TCP); ``port`` is set while running.

    :param app: the routes (:class:`~smee.http.app.IPXEApp`)
    :param reactor: IReactorTCP (and IReactorTime for the Site's timeouts)
    :param address: (host, port); port 0 picks a free port (tests)
    """

    def __init__(self, app: IPXEApp, reactor: Any, address: tuple[Any, int] = ("0.0.0.0", 8080)) -> None:
        self.app = app
        self.reactor = reactor
        self.address = (str(address[0]), int(address[1]))
        self.site = Site(app.resource(), reactor=reactor)
        self.port: Any = None

    def stopService(self) -> defer.Deferred[Any]:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def _listen(self) -> None:
        host, number = self.address
        try:
            self.port = self.reactor.listenTCP(number, self.site, backlog=TCP_LISTEN_BACKLOG, interface=host)
        except CannotListenError as e:
            error = e.socketError if isinstance(e.socketError, OSError) else OSError(str(e.socketError))
            raise _bind_error(self.address, error) from None
        bound = self.port.getHost()
        c = self.app.config
        serving = [what for what, on in (("scripts", c.scripts_enabled), ("binaries", c.binaries_enabled)) if on]
        log.info(
            "HTTP listening on {host}:{port}: {serving}, /healthcheck, /metrics; {count} binaries, "
            "trusted proxies: {proxies}",
            host=bound.host, port=bound.port, serving=", ".join(serving),
            count=len(self.app.binaries.available()),
            proxies=", ".join(map(str, c.trusted_proxies)) or "none",
        )


def makeService(settings: Any, runtime: Any, reactor: Any) -> HTTPService:
    """The ``http`` child of ``twistd smee``: --http-addr:--http-port.

    The installers' :class:`~installers.registry.ScriptSettings` are built
    (and checked) here, once; a bad ``--tink-server`` or ``--osie-url`` is
    reported at start-up, naming the option, rather than on every request.
    """
    from installers.osie import static_script
    from installers.registry import ScriptSettings
    from installers.script import ScriptError

    try:
        script = ScriptSettings.from_settings(settings)
        # Auto-proxy answers machines it has no record of, as Smee: with the static script.
        static = static_script(script) if settings.dhcp_mode == "auto-proxy" else None
    except ScriptError as e:
        raise SystemExit(f"smee: {e}") from None
    config = HTTPConfig.from_settings(settings, runtime.dhcp, script)
    app = IPXEApp(
        config, runtime.backend, runtime.binaries, runtime.installers, reactor,
        metrics=runtime.metrics, timeline=runtime.timeline, static_script=static,
    )
    return HTTPService(app, reactor, (str(settings.http_addr), settings.http_port))
