# -*- test-case-name: tests.test_http_app -*-
"""The HTTP side of netbooting: iPXE scripts, iPXE binaries, health and metrics.

One Klein app, in Klein's non-global style (``class IPXEApp: app = Klein()``,
all state on the instance), so that tests build as many as they like and
serve them in memory with :class:`treq.testing.StubTreq`. The routes are
Smee-HEAD's (smee-study.md §4.1):

``GET /auto.ipxe``, ``GET /<mac>/auto.ipxe`` (``--http-ipxe-script-enabled``)
    The machine's iPXE script, written by the installers registry. The
    machine is found by the MAC in the path (the last-but-one element, any
    MAC notation) or, when that element is absent or not a MAC, by the
    address that asked (through :mod:`smee.http.xff` with
    ``--trusted-proxies``). Any path whose last element is ``auto.ipxe`` is
    served, as Smee does; any other unknown path is 404.

``GET /vmware/ks-esxi.cfg``, ``/flatcar/ignition.json``, ``/coreos/ignition.json``
    Installer assets (whatever paths the registry holds), for the machine
    at the asking address.

``GET``/``HEAD /ipxe/<name>``, ``/ipxe/<mac>/<name>`` (``--http-ipxe-binary-enabled``)
    The iPXE binaries for UEFI HTTP Boot, from memory, with single byte
    ranges; and ``autoexec.ipxe``, generated as the TFTP server does.

``GET /healthcheck``, ``GET /metrics``
    Always, whatever the two flags say, to anyone: /metrics holds counters
    by route, file name and outcome, nothing about any one machine; the
    health answer's backend details (file paths and errors, which can quote
    a record, URLs, the last error) go only to ``--http-admin-networks``,
    everyone else gets ``backend: {backend, ready}``.

``GET /machines``, ``GET /machines/<mac>`` (any MAC notation)
    The boot timeline (:mod:`smee.timeline`) as JSON: every machine seen,
    most recent first, or one machine's current boot (404 if unknown).
    Per-machine detail for operators: only clients in
    ``--http-admin-networks`` (default loopback), others get 403.

Who sees what: the script for a MAC (``/<mac>/auto.ipxe``) is served to
anyone who names the MAC, as Smee does: iPXE has no credentials to show,
so the MAC is the only key, and a script holds what that machine's boot
needs (kernel arguments, the Tink server, the OSIE URL) and nothing about
other machines. ``/auto.ipxe``, ``autoexec.ipxe`` and the installer assets
are for the asking address only. Refusals name only what the client sent
(its MAC or address), never a record's contents: those go to the log.

Every answer is deliberate: an unknown machine gets a short iPXE-readable
404, a backend that cannot answer a 503, a script that cannot be written
a 500, and an unexpected exception a plain 500 whose details go to the log,
never to the client. The whole request is logged as one line when it ends
(:class:`AccessLog`), with the reason for any refusal in it.

The request a boot storm is made of, ``GET /<mac>/auto.ipxe``, is answered
before Klein when the backend can look a MAC up synchronously (the file
backend's ``by_mac_now``): same code after the lookup, same answer, same
access line, about a third less CPU per request (:meth:`IPXEApp.answer_now`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Final

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as LookupTimeout
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from installers.registry import Context
from smee.logs import redact_value
from smee import __version__
from smee.backends import LookupFailed
from smee.hardware import HardwareError, Match, normalize_mac
from smee.http.xff import client_ip
from smee.metrics import Metrics
from smee.tftp import files

__all__ = [
    "DEFAULT_LOOKUP_TIMEOUT",
    "UNSATISFIABLE",
    "AccessLog",
    "HTTPConfig",
    "IPXEApp",
    "byte_range",
]

log = Logger(namespace="smee.http")

#: Seconds a backend lookup may take before the request gets a 503: the
#: same bound as the DHCP and TFTP lookups, well inside iPXE's own timeout.
DEFAULT_LOOKUP_TIMEOUT = 3.0

#: The script file name, as Smee matches it (the path's last element).
SCRIPT_NAME = "auto.ipxe"
#: Rendered scripts kept for reuse (one per machine interface that asked, oldest dropped first).
SCRIPTS_KEPT = 4096
_SCRIPT_SUFFIX = b"/" + SCRIPT_NAME.encode("ascii")
#: a MAC already as :func:`smee.hardware.normalize_mac` writes it (aa:bb:cc:dd:ee:ff)
_NORMAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
#: Host headers remembered by the fast path (forgotten all at once when full)
_HOSTS_KEPT = 256

_TEXT = b"text/plain; charset=utf-8"
_BINARY = b"application/octet-stream"
_ALLOW = b"GET, HEAD"
#: Routes whose successful answers are logged at debug: scraped every few seconds.
_QUIET = frozenset({b"/metrics", b"/healthcheck"})
#: The request attribute a handler sets to name its route for http_requests_total.
_ROUTE = "_smee_route"
_FIXED_ROUTES = {b"/metrics": "metrics", b"/healthcheck": "healthcheck", b"/machines": "machines"}


def route_of(request: Any) -> str:
    """The ``route`` label of a request: one of :data:`smee.metrics.HTTP_ROUTES`, never the raw path."""
    named = getattr(request, _ROUTE, None)
    if named is not None:
        return named
    path = request.path
    fixed = _FIXED_ROUTES.get(path)
    if fixed is not None:
        return fixed
    if path.startswith(b"/ipxe/"):
        return "ipxe"
    if path.endswith(b"/auto.ipxe"):
        return "auto.ipxe"
    if path.startswith(b"/machines/"):
        return "machines"
    return "other"
#: Response headers a failed handler may have set for a body it never sent.
_BODY_HEADERS = (b"content-length", b"content-range", b"content-type", b"etag", b"accept-ranges", b"allow")
#: The Server header of every answer (Twisted's would name its exact version).
_SERVER: Final = b"smee"
#: How much of a request URI goes into the access log.
_MAX_LOGGED_URI = 512


@dataclass(frozen=True)
class HTTPConfig:
    """The settings the HTTP routes read, resolved once at start-up."""

    #: serve /ipxe/... (--http-ipxe-binary-enabled)
    binaries_enabled: bool = True
    #: serve .../auto.ipxe and the installer assets (--http-ipxe-script-enabled)
    scripts_enabled: bool = True
    #: --dhcp-mode: reservation looks autoexec.ipxe clients up; auto-proxy may serve a static script
    mode: str = "reservation"
    #: --trusted-proxies: peers whose X-Forwarded-For names the client
    trusted_proxies: tuple[IPv4Network, ...] = ()
    lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT
    #: the DHCP settings autoexec.ipxe is generated from (script URL, mode)
    dhcp: Any = None
    #: installers.registry.ScriptSettings, checked once at start-up
    script: Any = None
    #: --log-level: access lines below it are not even built (smee's observer would drop them)
    log_level: str = "debug"
    #: --http-admin-networks: clients allowed /machines and /healthcheck's details
    admin_networks: tuple[IPv4Network, ...] = (IPv4Network("127.0.0.0/8"),)
    #: --http-header-timeout: seconds one whole request may take to arrive (see smee.http.service)
    header_timeout: float = 10.0
    #: --http-idle-timeout: seconds a connection may sit without a request
    idle_timeout: float = 60.0
    #: --http-max-connections, --http-max-connections-per-ip (0: no limit)
    max_connections: int = 1000
    max_connections_per_ip: int = 128

    @classmethod
    def from_settings(cls, settings: Any, dhcp: Any, script: Any) -> HTTPConfig:
        return cls(
            binaries_enabled=bool(settings.http_ipxe_binary_enabled),
            scripts_enabled=bool(settings.http_ipxe_script_enabled),
            mode=settings.dhcp_mode,
            trusted_proxies=tuple(settings.trusted_proxies),
            dhcp=dhcp,
            script=script,
            log_level=str(getattr(settings, "log_level", "debug") or "debug"),
            admin_networks=tuple(settings.http_admin_networks),
            header_timeout=float(settings.http_header_timeout),
            idle_timeout=float(settings.http_idle_timeout),
            max_connections=int(settings.http_max_connections),
            max_connections_per_ip=int(settings.http_max_connections_per_ip),
        )


# --- byte ranges (RFC 9110 §14) -----------------------------------------------


class _Unsatisfiable:
    def __repr__(self) -> str:
        return "UNSATISFIABLE"


#: :func:`byte_range`'s answer for a range that starts past the end (→ 416).
UNSATISFIABLE: Final = _Unsatisfiable()


#: Any Range number with more digits is past every body (and int() refuses > 4300 digits).
_HUGE = 10**18


def _digits(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= 18 else _HUGE


def byte_range(header: str | None, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """The part of a ``size``-byte body a ``Range`` header asks for.

    Returns ``(first, last)`` (inclusive, → 206), None to send the whole
    body (→ 200), or :data:`UNSATISFIABLE` (→ 416). Only one range is
    served: several (``bytes=0-1,5-6``) get the whole body, which RFC 9110
    allows and which every client handles, whereas multipart/byteranges is
    code nobody netbooting needs. A header that is not a valid
    ``bytes=`` range is ignored, as the RFC requires.
    """
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges = [part.strip() for part in spec.split(",") if part.strip()]
    if len(ranges) != 1:
        return None
    first_text, dash, last_text = ranges[0].partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:  # bytes=-N: the last N bytes
        suffix = _digits(last_text)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - suffix), size - 1
    first = _digits(first_text)
    if first is None:
        return None
    if not last_text:  # bytes=N-: from N to the end
        return UNSATISFIABLE if first >= size else (first, size - 1)
    last = _digits(last_text)
    if last is None or last < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    return first, min(last, size - 1)


@dataclass(frozen=True)
class _Blob:
    """A body served with ranges, its validator computed once."""

    data: bytes
    content_type: bytes = _BINARY
    etag: bytes | None = None

    @classmethod
    def of(cls, data: bytes, content_type: bytes = _BINARY) -> _Blob:
        return cls(data, content_type, b'"' + hashlib.sha256(data).hexdigest()[:32].encode() + b'"')


# --- the access log -------------------------------------------------------------

#: The request attribute the app leaves its notes on for the access log line.
_NOTE = "_smee_access"
#: Log levels in order, for the access log's --log-level gate.
_PRIORITY: Final = {level: i for i, level in enumerate(
    (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical))}


def _note(request: Any, reason: str, level: LogLevel | None = None, **fields: Any) -> None:
    """Say why a request got the answer it got; the access line carries it."""
    setattr(request, _NOTE, {"reason": reason, "level": level, **fields})


class AccessLog(Resource):
    """Wrap a resource and log every request through it as one line, when it ends.

    The line names the client (after X-Forwarded-For), the method, the
    path, the status, the body bytes sent and the time taken by the
    injected clock, and the app's reason for a refusal. Successful
    ``/metrics`` and ``/healthcheck`` requests are logged at debug, 5xx
    answers at warn, everything else at info. Twisted's own combined log
    is turned off by :class:`smee.http.service.Site`, so there is one
    line per request, not two.
    """

    isLeaf = True

    def __init__(self, wrapped: Resource, clock: Any, client_of: Callable[[Any], str],
                 metrics: Metrics | None = None, min_level: str = "debug",
                 answer_now: Callable[[Any], bytes | None] | None = None) -> None:
        super().__init__()
        self._metrics = metrics
        self._wrapped = wrapped
        self._clock = clock
        self._client_of = client_of
        #: lines below this priority (--log-level) are never built: nothing would write them
        self._min_priority = _PRIORITY[LogLevel.levelWithName(min_level)]
        #: the app's synchronous answer for the hot route, tried before ``wrapped`` (None: not now)
        self._answer_now = answer_now
        #: (route, status) → the http_requests_total child: one dict probe per request
        self._counted: dict[tuple[str, int], Any] = {}

    def render(self, request: Any) -> Any:
        started = self._clock.seconds()
        request.setHeader(b"server", _SERVER)  # not Twisted's name and exact version
        answer_now = self._answer_now
        if answer_now is not None:
            body = answer_now(request)
            if body is not None:
                return self._finish_now(request, body, started)
        request.notifyFinish().addBoth(self._done, request, started)
        return self._wrapped.render(request)

    def _finish_now(self, request: Any, body: bytes, started: float) -> Any:
        """Send an answer that was ready at once, then log it: no finish Deferred to wait on.

        Exactly what notifyFinish would have produced: Twisted's
        ``Request.render`` would write the same bytes and finish; a request
        finished inside this call cannot have lost its connection first
        (nothing else runs in between), and a pipelined request that
        ``finish`` goes on to serve is logged before this one either way.
        """
        try:
            request.write(body)
            request.finish()
        except BaseException:
            request.notifyFinish().addBoth(self._done, request, started)  # Twisted answers the error
            raise
        self._done(None, request, started)
        return NOT_DONE_YET

    def _done(self, result: Any, request: Any, started: float) -> None:
        try:
            self._log(request, started, aborted=isinstance(result, Failure))
        except Exception:
            log.failure("cannot write the access log line")

    def _log(self, request: Any, started: float, *, aborted: bool) -> None:
        note: Mapping[str, Any] = getattr(request, _NOTE, None) or {}
        code = int(request.code)
        metrics = self._metrics
        if metrics is not None:
            key = (route_of(request), code)
            counter = self._counted.get(key)
            if counter is None:
                counter = self._counted[key] = metrics.child(metrics.http_requests, key[0], str(code))
            counter.inc()
        path = request.path
        if note.get("level") is not None:
            level = note["level"]
        elif code >= 500:
            level = LogLevel.warn
        elif code < 400 and path in _QUIET:
            level = LogLevel.debug
        else:
            level = LogLevel.info
        if _PRIORITY.get(level, 0) < self._min_priority:
            return
        peer = _peer(request)
        client = self._client_of(request)
        uri = request.uri[:_MAX_LOGGED_URI].decode("ascii", "backslashreplace")
        fields: dict[str, Any] = {
            "client": client,
            "via": "" if client == peer else f" (via {peer})",
            "peer": peer,
            "method": request.method.decode("ascii", "backslashreplace"),
            "uri": uri,
            # the client went away: before any answer, or part-way through one
            "status": (f"{code} aborted" if request.startedWriting else "aborted") if aborted else str(code),
            "code": code,
            "aborted": aborted,
            "size": request.sentLength,
            "duration_ms": round((self._clock.seconds() - started) * 1000, 1),
            "why": f": {note['reason']}" if note.get("reason") else "",
            "reason": note.get("reason", ""),
            "user_agent": (request.getHeader(b"user-agent") or b"").decode("ascii", "backslashreplace")[:200],
        }
        for key, value in note.items():  # mac, hardware, outcome, ...
            if key not in ("reason", "level"):
                fields.setdefault(key, value)
        log.emit(level, "{client}{via} {method} {uri} {status} {size} bytes {duration_ms} ms{why}", **fields)


def _peer(request: Any) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


# --- the app --------------------------------------------------------------------


def _ipxe_message(message: str) -> bytes:
    """A body iPXE can read, for a refusal: the status makes iPXE fail the
    chain; the ``echo`` is for whoever reads it on the console or with curl.
    ``message`` is built from checked values only (normalised MACs, parsed
    addresses), never from the raw request.
    """
    return f"#!ipxe\necho smee: {message}\nexit 1\n".encode("ascii", "replace")


#: The keys of the backend's state anyone may see at /healthcheck (the rest: admin networks only).
_PUBLIC_STATE = ("backend", "ready")


class _Guard(Resource):
    """The routes (Klein's resource), with requests Klein cannot route answered first.

    See :meth:`IPXEApp.malformed`. Anything else ``render`` raises
    synchronously becomes the app's plain 500 rather than Twisted's HTML
    error page.
    """

    isLeaf = True

    def __init__(self, app: IPXEApp, wrapped: Resource) -> None:
        super().__init__()
        self._app = app
        self._wrapped = wrapped

    def render(self, request: Any) -> Any:
        app = self._app
        refused = app.malformed(request)
        if refused is not None:
            return app._refuse(request, refused)
        try:
            return self._wrapped.render(request)
        except HTTPException as e:  # werkzeug's, raised while binding the map
            _note(request, f"cannot route: {e.name}", outcome="bad-request")
            code = e.code if e.code and 400 <= e.code < 500 else 400
            return app._respond(request, code, b"bad request\n")
        except Exception:
            return app._internal_error(request, Failure())


class _Refused(Exception):
    """Internal: end a request with ``code`` and ``body`` (reason for the log)."""

    def __init__(self, code: int, body: bytes, reason: str, level: LogLevel | None = None, **fields: Any) -> None:
        super().__init__(reason)
        self.code, self.body, self.reason, self.level, self.fields = code, body, reason, level, fields


class IPXEApp:
    """The routes, bound to one backend, one set of binaries and one installers registry.

    :param config: what the settings say (:class:`HTTPConfig`)
    :param backend: the hardware backend (``by_mac``/``by_ip``/``state``)
    :param binaries: :class:`smee.tftp.files.Binaries`, loaded once
    :param installers: the installers ``Registry`` (``render(ctx)``, ``asset(path)``)
    :param clock: IReactorTime: lookup timeouts, uptime, request durations
    :param metrics: the :class:`smee.metrics.Metrics` /metrics exposes (a bare
        CollectorRegistry is wrapped in one); default: a fresh one
    :param timeline: the :class:`smee.timeline.BootTimeline` /machines shows and
        served scripts are recorded in; default: the backend's ``timeline``, else none
    :param static_script: auto-proxy mode's script for machines the backend
        does not know, rendered once at start-up; None → such machines get 404
    """

    app = Klein()
    # werkzeug would answer "//auto.ipxe" with a redirect; smee answers 404 instead.
    app.url_map.merge_slashes = False

    def __init__(
        self,
        config: HTTPConfig,
        backend: Any,
        binaries: Any,
        installers: Any,
        clock: Any,
        *,
        metrics: Metrics | CollectorRegistry | None = None,
        timeline: Any = None,
        static_script: str | None = None,
        version: str = __version__,
    ) -> None:
        self.config = config
        self.backend = backend
        self.binaries = binaries
        self.installers = installers
        self.clock = clock
        self.metrics = metrics if isinstance(metrics, Metrics) else Metrics(metrics)
        self.timeline = timeline
        self.version = version
        self.started = clock.seconds()
        # Only auto-proxy serves machines it does not know (as its DHCP does).
        self._static = static_script.encode("utf-8") if static_script and config.mode == "auto-proxy" else None
        # Everything that does not depend on the request, built once.
        self._blobs: dict[str, _Blob] = {name: _Blob.of(binaries.get(name)) for name in sorted(binaries.available())}
        self._available = sorted(binaries.available())
        self._autoexec: _Blob | None = None
        self._autoexec_error = ""
        #: (id(hardware), id(interface)) → (hardware, interface, registry generation, script); see _render
        self._scripts: dict[tuple[int, int], tuple[Any, Any, Any, bytes]] = {}
        #: the backend's synchronous lookup by MAC, if it has one (see answer_now)
        self._by_mac_now: Callable[[str], Match | None] | None = getattr(backend, "by_mac_now", None)
        #: Host headers → whether werkzeug accepts their names (see _host_routable)
        self._hosts: dict[bytes, bool] = {}
        if config.mode != "reservation" and config.dhcp is not None:
            # Proxy modes do not look the client up, so the script is the same for everyone.
            try:
                self._autoexec = _Blob.of(files.autoexec_for(config.dhcp, None), _TEXT)
            except ValueError as e:
                self._autoexec_error = str(e)
                log.warn("autoexec.ipxe will not be served over HTTP: {error}", error=str(e))

    def resource(self) -> Resource:
        """The root resource for a twisted.web Site: the routes behind the guard and the access log."""
        return AccessLog(_Guard(self, self.app.resource()), self.clock, self.client, self.metrics,
                         self.config.log_level, answer_now=self.answer_now if self._by_mac_now is not None else None)

    def malformed(self, request: Any) -> _Refused | None:
        """Why Klein could not route ``request`` at all (a client's mistake), or None.

        Klein hands werkzeug the Host name and the (percent-decoded) path as
        UTF-8 text: a Host werkzeug cannot IDNA-encode raises BadHost out of
        ``render`` (Twisted's HTML "Processing Failed" 500 page), and a path
        or Host that is not UTF-8 gets Klein's 400 after a traceback logged
        at error level. Both are answered here instead: a plain 400 and one
        rate-limited info line (``outcome=bad-request``).
        """
        if not self._host_routable(request):
            return _Refused(400, b"bad request\n", "bad Host header", outcome="bad-request")
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return _Refused(400, b"bad request\n", "path is not UTF-8", outcome="bad-request")
        return None

    def is_admin(self, request: Any) -> bool:
        """Whether the client (after trusted proxies) is in --http-admin-networks."""
        networks = self.config.admin_networks
        if not networks:
            return False
        try:
            address = IPv4Address(self.client(request))
        except ValueError:
            return False
        return any(address in network for network in networks)

    def _forbidden(self, request: Any, what: str) -> bytes:
        networks = ", ".join(map(str, self.config.admin_networks)) or "none"
        _note(request, f"{what} is only for --http-admin-networks ({networks})", outcome="forbidden")
        return self._respond(request, 403, b"forbidden\n")

    def client(self, request: Any) -> str:
        """The address of the machine that made ``request`` (X-Forwarded-For through trusted proxies)."""
        trusted = self.config.trusted_proxies
        if not trusted:  # nobody's X-Forwarded-For counts: no header decoding, no address parsing
            return _peer(request)
        return client_ip(
            _peer(request),
            [h.decode("latin-1") for h in request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])],
            trusted,
        )

    # --- the hot route, without Klein ---

    def answer_now(self, request: Any) -> bytes | None:
        """``GET /<mac>/auto.ipxe`` answered synchronously, or None to let Klein route the request.

        iPXE asks for its script once per boot, so this is the request a boot
        storm is made of. With a backend that answers from memory
        (``by_mac_now``, the file backend) there is nothing to wait for, and
        Klein's routing (werkzeug map binding and matching, two Deferreds,
        a coroutine, three finish notifications) is most of the time spent.
        The answer is exactly the routed one: only a path Klein would send to
        :meth:`script` with a MAC in it qualifies (no percent escapes, three
        elements, a valid MAC, a Host werkzeug accepts), and it goes through
        the same code after the lookup (:meth:`_script_answer`); anything
        else, HEAD included, returns None and takes the routed way.
        """
        if request.method != b"GET" or not self.config.scripts_enabled:
            return None
        path = request.path
        if not path.endswith(_SCRIPT_SUFFIX) or b"%" in path:
            return None
        parts = path.split(b"/")
        if len(parts) != 3:
            return None
        try:
            mac = parts[1].decode("ascii")
            if _NORMAL_MAC.fullmatch(mac) is None:  # iPXE's ${net0/mac} is already in the normal form
                mac = normalize_mac(mac)
        except (UnicodeDecodeError, HardwareError):
            return None
        if not self._host_routable(request):
            return None
        try:
            try:
                match = self._find_now(mac)
                return self._script_answer(request, match, f"MAC {mac}")
            except _Refused as refused:
                return self._refuse(request, refused)
        except Exception:
            return self._internal_error(request, Failure())

    def _host_routable(self, request: Any) -> bool:
        """Whether Klein would route this request's Host (else werkzeug's BadHost → Twisted's 500).

        Klein hands werkzeug the Host name decoded as UTF-8, which lower-cases
        it, drops any port and IDNA-encodes it; the few names clients send are
        remembered.
        """
        header = request.getHeader(b"host")
        known = self._hosts.get(header) if header is not None else None
        if known is None:
            try:
                request.getRequestHostname().decode("utf-8").lower().partition(":")[0].encode("idna")
                known = True
            except UnicodeError:
                known = False
            if header is not None:  # without one, the name is the local address's
                if len(self._hosts) >= _HOSTS_KEPT:
                    self._hosts.clear()
                self._hosts[header] = known
        return known

    def _find_now(self, mac: str) -> Match | None:
        """:meth:`_find` by MAC through the backend's synchronous ``by_mac_now``; same refusals."""
        try:
            return self._by_mac_now(mac)
        except LookupFailed as e:
            raise _Refused(503, _ipxe_message("hardware lookup failed, try again"),
                           f"backend lookup by mac {mac} failed: {e}", outcome="lookup-failed") from None
        except Exception:
            raise self._lookup_error("mac", mac) from None

    # --- responses ---

    @staticmethod
    def _respond(request: Any, code: int, body: bytes, content_type: bytes = _TEXT) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body

    def _refuse(self, request: Any, refused: _Refused) -> bytes:
        _note(request, refused.reason, refused.level, **refused.fields)
        return self._respond(request, refused.code, refused.body)

    def _not_found(self, request: Any, reason: str = "") -> bytes:
        if reason:
            _note(request, reason)
        return self._respond(request, 404, b"not found\n")

    def _method_not_allowed(self, request: Any) -> bytes:
        request.setHeader(b"allow", _ALLOW)
        return self._respond(request, 405, b"method not allowed\n")

    # --- errors ---

    @app.handle_errors(HTTPException)
    def _http_error(self, request: Any, failure: Failure) -> bytes:
        """Routing errors (no route, wrong method) as short plain-text answers, not werkzeug's HTML."""
        error = failure.value
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"allow", ", ".join(sorted(error.valid_methods)).encode("ascii"))
        code = error.code or 500
        if code >= 500:
            log.failure("routing error", failure, LogLevel.error)
        return self._respond(request, code, f"{error.name}\n".lower().encode("ascii", "replace"))

    @app.handle_errors(Exception)
    def _unexpected(self, request: Any, failure: Failure) -> bytes:
        """A bug: the traceback goes to the log, the client gets a plain 500."""
        return self._internal_error(request, failure)

    def _internal_error(self, request: Any, failure: Failure) -> bytes:
        log.failure(
            "error answering {method} {uri}", failure, LogLevel.error,
            method=request.method.decode("ascii", "replace"),
            uri=request.uri[:_MAX_LOGGED_URI].decode("ascii", "backslashreplace"),
        )
        for name in _BODY_HEADERS:
            request.responseHeaders.removeHeader(name)
        _note(request, "internal error (see the traceback above)")
        return self._respond(request, 500, b"internal server error\n")

    # --- health and metrics ---

    @app.route("/healthcheck", methods=["GET"])
    def healthcheck(self, request: Any) -> bytes:
        """Liveness and readiness; the backend's details only to --http-admin-networks.

        Probes and load balancers anywhere need ``ready``; the rest of the
        backend's state (file paths and their parse errors, which can quote a
        record; the inventory or API URL; the last error) is for operators.
        """
        state = dict(self.backend.state())
        ready, degraded = state.get("ready") is not False, bool(state.get("degraded"))
        if not self.is_admin(request):
            state = {key: state[key] for key in _PUBLIC_STATE if key in state}
            _note(request, "backend details only for --http-admin-networks", LogLevel.debug)
        else:
            # an error text can carry a URL's credentials; the log observer hides them the same way
            state = redact_value(state)
        body = {
            # 200 either way: a liveness probe must not restart smee while its backend is away;
            # use "ready" for readiness (false until the backend has data, or while it fails)
            "ready": ready,
            "degraded": degraded,
            "version": self.version,
            "uptime": round(self.clock.seconds() - self.started, 3),
            "backend": state,
            "binaries": self._available,
        }
        text = json.dumps(body, default=str, sort_keys=True) + "\n"
        return self._respond(request, 200, text.encode("utf-8"), b"application/json")

    @app.route("/metrics", methods=["GET"])
    def metrics_route(self, request: Any) -> bytes:
        return self._respond(
            request, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode("ascii"))

    # --- boot timeline ---

    @staticmethod
    def _json(request: Any, body: Any, code: int = 200) -> bytes:
        text = json.dumps(body, default=str, sort_keys=True) + "\n"
        return IPXEApp._respond(request, code, text.encode("utf-8"), b"application/json")

    @app.route("/machines", methods=["GET"])
    def machines(self, request: Any) -> bytes:
        """Every machine in the boot timeline, most recently seen first: operators only (--http-admin-networks)."""
        setattr(request, _ROUTE, "machines")
        if not self.is_admin(request):
            return self._forbidden(request, "/machines")
        return self._json(request, {"machines": self.timeline.machines() if self.timeline is not None else []})

    @app.route("/machines/<mac>", methods=["GET"])
    async def machine(self, request: Any, mac: str) -> bytes:
        """One machine's current boot, by MAC in any notation; 404 if unknown."""
        if mac == SCRIPT_NAME:  # /machines/auto.ipxe is a script path, as before this route
            return await self.script(request, f"machines/{mac}")
        setattr(request, _ROUTE, "machines")
        if not self.is_admin(request):
            return self._forbidden(request, "/machines")
        try:
            normalized = normalize_mac(mac)
        except HardwareError:
            return self._not_found(request, "not a MAC address")
        found = self.timeline.machine(normalized) if self.timeline is not None else None
        if found is None:
            return self._not_found(request, f"{normalized} not seen")
        return self._json(request, found)

    # --- binaries ---

    @app.route("/ipxe/<path:name>")
    async def binary(self, request: Any, name: str) -> bytes:
        """An iPXE binary or autoexec.ipxe, to anyone who asks.

        Served to any client in every mode, as Smee-HEAD does: the binaries
        are public software and carry no machine data, and gating them
        would only add a backend lookup to every UEFI HTTP Boot. The
        per-machine part is the script, which is gated. ``autoexec.ipxe``
        is gated exactly as over TFTP (reservation mode: a known client
        allowed to netboot, looked up by its address).
        """
        if not self.config.binaries_enabled:
            return self._not_found(request, "--http-ipxe-binary-enabled is false")
        if request.method not in (b"GET", b"HEAD"):
            return self._method_not_allowed(request)
        resolved = files.resolve(name)
        if resolved is None:
            return self._not_found(request, "no such file")
        filename, _mac = resolved
        if filename == files.AUTOEXEC:
            try:
                blob = await self._autoexec_for(request)
            except _Refused as refused:
                return self._refuse(request, refused)
            return self._send(request, blob)
        found = self._blobs.get(filename)
        if found is None:
            where = self.binaries.directory or "the iPXE directory"
            _note(request, f"no {filename} in {where} (see --ipxe-dir)", LogLevel.warn)
            return self._respond(request, 404, b"not found\n")
        return self._send(request, found)

    async def _autoexec_for(self, request: Any) -> _Blob:
        if self.config.mode != "reservation":
            if self._autoexec is None:
                raise _Refused(404, b"not found\n", f"cannot generate {files.AUTOEXEC}: {self._autoexec_error}",
                               LogLevel.warn)
            return self._autoexec
        ip = self.client(request)
        match = await self._find("ip", ip)
        self._gate(match, f"IP {ip}", plain=True)
        try:
            return _Blob.of(files.autoexec_for(self.config.dhcp, match), _TEXT)
        except ValueError as e:
            # As over TFTP: "not found" makes iPXE go on with its own DHCP and boot file.
            raise _Refused(404, b"not found\n", f"cannot generate {files.AUTOEXEC}: {e}", LogLevel.warn,
                           mac=match.interface.mac, hardware=match.hardware.id) from None

    def _send(self, request: Any, blob: _Blob) -> bytes:
        """``blob`` whole (200), one range of it (206) or 416; HEAD gets the headers only."""
        data, size = blob.data, len(blob.data)
        request.setHeader(b"accept-ranges", b"bytes")
        if blob.etag is not None:
            request.setHeader(b"etag", blob.etag)
        wanted = None
        # Range is defined for GET only (RFC 9110 §14.2); If-Range with anything
        # but our current ETag means "the whole thing".
        if request.method == b"GET":
            header = request.getHeader(b"range")
            if_range = request.getHeader(b"if-range")
            if header is not None and (if_range is None or (blob.etag is not None and if_range == blob.etag)):
                wanted = byte_range(header.decode("latin-1"), size)
        if isinstance(wanted, _Unsatisfiable):
            request.setHeader(b"content-range", b"bytes */%d" % size)
            return self._respond(request, 416, b"range not satisfiable\n")
        if wanted is None:
            return self._respond(request, 200, data, blob.content_type)
        first, last = wanted
        request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, size))
        return self._respond(request, 206, data[first : last + 1], blob.content_type)

    # --- scripts ---

    @app.route("/", methods=["GET"])
    def root(self, request: Any) -> bytes:
        return self._not_found(request)

    @app.route("/<path:path>", methods=["GET"])
    async def script(self, request: Any, path: str) -> bytes:
        """``.../auto.ipxe`` and the installer assets; every other path is 404, every other method 405."""
        if not self.config.scripts_enabled:
            return self._not_found(request, "--http-ipxe-script-enabled is false")
        parts = path.split("/")
        if parts[-1] == SCRIPT_NAME:
            return await self._script(request, parts)
        asset = self.installers.asset("/" + path)
        if asset is not None:
            return await self._asset(request, "/" + path, asset)
        return self._not_found(request)

    async def _script(self, request: Any, parts: list[str]) -> bytes:
        mac = None
        if len(parts) >= 2:
            try:
                mac = normalize_mac(parts[-2])
            except HardwareError:
                mac = None  # /<not a MAC>/auto.ipxe: by address, as Smee
        try:
            if mac is not None:
                match = await self._find("mac", mac)
                what = f"MAC {mac}"
            else:
                ip = self.client(request)
                match = await self._find("ip", ip)
                what = f"IP {ip}"
            return self._script_answer(request, match, what)
        except _Refused as refused:
            return self._refuse(request, refused)

    def _script_answer(self, request: Any, match: Match | None, what: str) -> bytes:
        """The script route after the lookup (routed or :meth:`answer_now`); raises _Refused."""
        if match is None and self._static is not None:
            _note(request, f"no hardware with {what}: static script (auto-proxy)")
            return self._respond(request, 200, self._static)
        self._gate(match, what)
        assert match is not None
        hw, iface = match.hardware, match.interface
        try:
            body = self._render(hw, iface)
        except ValueError as e:  # installers.script.ScriptError: bad data in the record
            where = f"hardware {hw.id}" + (f" ({hw.source})" if hw.source else "")
            return self._refuse(request, _Refused(
                500, _ipxe_message(f"cannot write the boot script for {iface.mac}, see the smee log"),
                f"cannot write the script for {iface.mac}, {where}: {e}", LogLevel.error,
                mac=iface.mac, hardware=hw.id, source=hw.source,
            ))
        _note(request, f"script for {iface.mac} ({what})", mac=iface.mac, hardware=hw.id)
        if self.timeline is not None:
            self.timeline.seen(iface.mac, "script", hardware=hw.id)
        return self._respond(request, 200, body)

    def _render(self, hw: Any, iface: Any) -> bytes:
        """The script for this machine and interface, reused while nothing it depends on changed.

        Reuse is exact, not a guess: the text is a function of the Hardware
        and Interface objects (frozen, all the way down), the script settings
        (fixed for this app) and the installer, and only installers marked
        :func:`installers.registry.deterministic` are reused, while the
        registry's ``generation`` is unchanged. Entries are found by the
        objects' identity and hold the objects themselves, so an id is never
        reused while its entry exists; a reloaded record is a new object and
        is rendered afresh. Registries without ``render_reusable`` (test
        doubles, other implementations) are asked every time.
        """
        key = (id(hw), id(iface))
        generation = getattr(self.installers, "generation", None)
        hit = self._scripts.get(key)
        if hit is not None and hit[0] is hw and hit[1] is iface and hit[2] == generation:
            return hit[3]
        ctx = Context(hw, iface, self.config.script)
        render_reusable = getattr(self.installers, "render_reusable", None)
        if render_reusable is None or generation is None:
            return self.installers.render(ctx).encode("utf-8")
        text, reusable = render_reusable(ctx)
        body = text.encode("utf-8")
        if reusable:
            if len(self._scripts) >= SCRIPTS_KEPT:
                del self._scripts[next(iter(self._scripts))]  # the oldest entry
            self._scripts[key] = (hw, iface, generation, body)
        return body

    async def _asset(self, request: Any, path: str, asset: Any) -> bytes:
        setattr(request, _ROUTE, "asset")
        ip = self.client(request)
        try:
            match = await self._find("ip", ip)
            if match is None:
                raise _Refused(404, b"not found\n", f"no hardware with IP {ip}")
        except _Refused as refused:
            return self._refuse(request, refused)
        hw, iface = match.hardware, match.interface
        try:
            content_type, body = asset(Context(hw, iface, self.config.script))
        except ValueError as e:
            where = f"hardware {hw.id}" + (f" ({hw.source})" if hw.source else "")
            return self._refuse(request, _Refused(
                500, b"internal server error\n", f"cannot write {path} for {iface.mac}, {where}: {e}",
                LogLevel.error, mac=iface.mac, hardware=hw.id, source=hw.source,
            ))
        if isinstance(body, str):
            body = body.encode("utf-8")
        _note(request, f"{path} for {iface.mac}", mac=iface.mac, hardware=hw.id)
        return self._respond(request, 200, body, content_type.encode("ascii"))

    # --- lookups ---

    async def _find(self, by: str, key: str) -> Match | None:
        """Look the machine up, bounded by the lookup timeout; _Refused(503) when there is no answer."""
        if by == "ip":
            try:
                address = IPv4Address(key)
            except ValueError:  # a peer that is not IPv4: nothing to look up
                raise _Refused(404, _ipxe_message("no hardware for this client address"),
                               f"cannot look up {key!r}: not an IPv4 address") from None
        try:
            if by == "mac":
                d: Deferred[Match | None] = self.backend.by_mac(key)
            else:
                d = self.backend.by_ip(address)
            if not d.called:
                d.addTimeout(self.config.lookup_timeout, self.clock)
            return await d
        except CancelledError:
            raise  # the client went away; nobody to answer
        except LookupTimeout:
            raise _Refused(503, _ipxe_message("hardware lookup timed out, try again"),
                           f"backend lookup by {by} {key} timed out after {self.config.lookup_timeout}s",
                           outcome="lookup-timeout") from None
        except LookupFailed as e:
            raise _Refused(503, _ipxe_message("hardware lookup failed, try again"),
                           f"backend lookup by {by} {key} failed: {e}", outcome="lookup-failed") from None
        except Exception:
            raise self._lookup_error(by, key) from None

    def _lookup_error(self, by: str, key: str) -> _Refused:
        log.failure("backend lookup by {by} {key} raised", by=by, key=key, level=LogLevel.error)
        return _Refused(503, _ipxe_message("hardware lookup failed, try again"),
                        f"backend lookup by {by} {key} raised an error (see the traceback above)",
                        outcome="lookup-error")

    @staticmethod
    def _gate(match: Match | None, what: str, plain: bool = False) -> None:
        """Only known machines allowed to netboot get a script (Smee: 404 otherwise)."""
        if match is None:
            body = b"not found\n" if plain else _ipxe_message(f"no hardware with {what}")
            raise _Refused(404, body, f"no hardware with {what}", outcome="unknown")
        if not match.interface.allow_pxe:
            mac = match.interface.mac
            body = b"not found\n" if plain else _ipxe_message(f"netboot not allowed for {mac}")
            raise _Refused(404, body, f"netboot not allowed for {mac} ({what})", outcome="not-allowed",
                           mac=mac, hardware=match.hardware.id)
