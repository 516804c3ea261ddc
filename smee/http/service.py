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

What one client can hold is bounded here, before any route runs
(:class:`Channel`, :class:`Site`):

* a whole request (head and body) must arrive within ``--http-header-timeout``
  of its first byte (of the connection, for the first request), however
  slowly it trickles: Twisted's idle timeout restarts on every byte, so a
  slowloris client sending a header byte every few seconds would otherwise
  hold its connection for ever (→ 408, closed);
* a connection without a request for ``--http-idle-timeout`` is closed,
  and one that does not read its answer is aborted 15 s after that;
* request line ≤ 8 KiB (→ 414), one header line ≤ 8 KiB, the whole head
  ≤ 16 KiB and ≤ 100 header lines (→ 431), a body ≤ 64 KiB and not chunked
  (→ 413: no route reads a body, and Twisted would spool a larger or
  chunked one to a temporary file); malformed requests → 400. Each of these
  answers is plain text with ``Connection: close``, the connection is closed,
  and the refusal is logged (one rate-limited info line, ``outcome``) and
  counted in ``http_requests_total{route="other"}``;
* at most ``--http-max-connections`` connections, and
  ``--http-max-connections-per-ip`` from one peer address (trusted proxies,
  which carry many clients, exempt): the excess gets 503 and is closed.
  Per address because on a provisioning network every machine has its own:
  one misbehaving host cannot take the slots of the others; the total
  keeps file descriptors for DHCP and TFTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import http, server

from smee.http.app import HTTPConfig, IPXEApp
from smee.listen import TCP_LISTEN_BACKLOG, BindError, ListeningService, bind_hint

__all__ = ["Channel", "HTTPBindError", "HTTPService", "Limits", "Site", "makeService"]

log = Logger(namespace="smee.http")

#: Longest request line (method, target, version) and longest header line, bytes.
MAX_LINE: Final = 8192
#: Longest request head (request line and all header lines), bytes: Twisted's default.
MAX_HEAD: Final = 16384
#: Most header lines in one request (iPXE sends about five; Twisted allows 500).
MAX_HEADERS: Final = 100
#: Largest request body accepted (and discarded: no route reads one).
MAX_BODY: Final = 65536

_REASONS: Final[Mapping[int, bytes]] = {
    400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    431: b"Request Header Fields Too Large", 503: b"Service Unavailable",
}


def _refusal(code: int, body: bytes) -> bytes:
    """A complete HTTP/1.1 answer that ends the connection: plain text, no internals."""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (code, _REASONS[code], len(body), body))


class Limits:
    """What one HTTP client may hold: the timeouts and connection caps (see the module docstring).

    Also the live connection counts the caps are checked against; one per
    :class:`Site`, never shared.
    """

    def __init__(self, header_timeout: float = 10.0, idle_timeout: float = 60.0, max_connections: int = 1000,
                 max_connections_per_ip: int = 128, exempt: tuple[IPv4Network, ...] = ()) -> None:
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        #: peers not counted per address (trusted proxies)
        self.exempt = exempt
        self.open = 0
        self.by_peer: dict[str, int] = {}

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(config.header_timeout, config.idle_timeout, config.max_connections,
                   config.max_connections_per_ip, tuple(config.trusted_proxies))

    def _exempt(self, host: str) -> bool:
        if not self.exempt:
            return False
        try:
            address = IPv4Address(host)
        except ValueError:
            return False
        return any(address in network for network in self.exempt)

    def admit(self, host: str) -> str | None:
        """Count a new connection from ``host``; or say why it is refused (not counted)."""
        if self.max_connections and self.open >= self.max_connections:
            return f"{self.open} HTTP connections open (--http-max-connections)"
        per_ip = self.max_connections_per_ip
        if per_ip and not self._exempt(host):
            held = self.by_peer.get(host, 0)
            if held >= per_ip:
                return f"{held} HTTP connections open from {host} (--http-max-connections-per-ip)"
            self.by_peer[host] = held + 1
        self.open += 1
        return None

    def release(self, host: str) -> None:
        """A connection :meth:`admit` counted has closed."""
        self.open -= 1
        held = self.by_peer.get(host)
        if held is not None:
            if held <= 1:
                del self.by_peer[host]
            else:
                self.by_peer[host] = held - 1


def _host_of(address: Any) -> str:
    return str(getattr(address, "host", address))


class _Refuser(Protocol):
    """Answers a connection over the caps with 503 and closes it."""

    def __init__(self, site: Site, host: str, why: str) -> None:
        self.site, self.host, self.why = site, host, why

    def connectionMade(self) -> None:
        self.site.refused(self.host, 503, self.why, "too-many-connections")
        self.transport.write(_refusal(503, b"too many connections, try again later\n"))
        self.transport.loseConnection()


class Channel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel with the limits of :class:`Limits` (see the module docstring).

    Only the request head (and body) is bounded in time here; while the app
    answers, Twisted's idle timeout is off and the routes bound themselves
    (the backend lookup timeout).
    """

    MAX_LENGTH = MAX_LINE
    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEAD

    site: Site
    peer_host = ""
    #: counted by Limits.admit: released when the connection closes
    _counted = False
    #: the pending head deadline (IDelayedCall), while a request is arriving
    _deadline: Any = None
    _refused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()  # a client that connects and says nothing is also bounded

    def _arm(self) -> None:
        self._deadline = self.callLater(self.site.limits.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is None and not self._handlingRequest and data:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:  # a refused request's body is never decoded (it has nowhere to go)
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        length = self.length
        if length is None or length > MAX_BODY:
            why = "chunked request body" if length is None else f"request body of {length} bytes"
            self._refuse(413, f"{why} (smee takes no bodies over {MAX_BODY} bytes)", "request-too-large")
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(431, f"request head over {self.totalHeadersSize} bytes", "request-too-large")
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(431, f"more than {self.maxHeaders} header lines", "request-too-large")
            return False
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._receivedHeaderSize == 0:  # nothing of this request counted yet: its first line
            self._refuse(414, f"request line over {self.MAX_LENGTH} bytes", "request-too-large")
        else:
            self._refuse(431, f"header line over {self.MAX_LENGTH} bytes", "request-too-large")

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's answer to a malformed request (bad request line, header, chunk), logged and counted."""
        self._refuse(400, "malformed request", "bad-request")

    def _head_timed_out(self) -> None:
        self._deadline = None
        timeout = self.site.limits.header_timeout
        self._refuse(408, f"request not received within {timeout:g} s (--http-header-timeout)", "slow-client")
        if self.abortTimeout is not None and self._abortingCall is None:
            # as Twisted's idle timeout: a client that does not read is dropped outright
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)

    def timeoutConnection(self) -> None:
        """The idle timeout: one smee line (rate-limited) instead of Twisted's own."""
        log.info("{peer}: HTTP connection idle for {timeout:g} s, closed (--http-idle-timeout)",
                 peer=self.peer_host, timeout=self.site.limits.idle_timeout, outcome="idle-timeout")
        self._log = _quiet
        super().timeoutConnection()

    def _refuse(self, code: int, why: str, outcome: str) -> None:
        """Answer ``code`` (plain text), close the connection and ignore the rest of what it sends."""
        if self._refused:
            return
        self._refused = True
        self._disarm()
        self.site.refused(self.peer_host, code, why, outcome)
        if not self._handlingRequest:  # never in the middle of an answer
            self.transport.write(_refusal(code, _REASONS[code].lower() + b"\n"))
        self.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            self.site.limits.release(self.peer_host)
        super().connectionLost(reason)


class _Quiet:
    """A Logger stand-in for Twisted's "Timing out client" lines, which smee writes itself."""

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass


_quiet: Final = _Quiet()


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
    protocol = Channel
    #: never: an error page says "Processing Failed" and nothing else (Twisted's default, pinned)
    displayTracebacks = False

    def __init__(self, resource: Any, *, reactor: Any = None, limits: Limits | None = None,
                 metrics: Any = None) -> None:
        self.limits = limits if limits is not None else Limits()
        super().__init__(resource, reactor=reactor, timeout=self.limits.idle_timeout)
        #: smee.metrics.Metrics: refusals before any route are counted as route "other"
        self.metrics = metrics

    def buildProtocol(self, addr: Any) -> Any:
        host = _host_of(addr)
        why = self.limits.admit(host)
        if why is not None:
            refuser = _Refuser(self, host, why)
            refuser.factory = self
            return refuser
        channel = super().buildProtocol(addr)
        channel.site = self
        channel.peer_host = host
        channel._counted = True
        return channel

    def refused(self, host: str, code: int, why: str, outcome: str) -> None:
        """A request refused before any route: one line (rate-limited by ``outcome``) and the counter."""
        log.info("{peer} HTTP request refused, {code}: {why}", peer=host, code=code, why=why, outcome=outcome)
        if self.metrics is not None:
            self.metrics.child(self.metrics.http_requests, "other", str(code)).inc()

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
        self.site = Site(app.resource(), reactor=reactor, limits=Limits.from_config(app.config),
                         metrics=app.metrics)
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
