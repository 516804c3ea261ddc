# -*- test-case-name: tests.test_backend_http -*-
"""The HTTP backend: ask an inventory service, pixiecore-API style.

``GET {base}/hardware?mac=aa:bb:cc:dd:ee:ff`` (or ``?ip=192.0.2.10``) with
``Accept: application/json, application/yaml`` answers with a hardware
document in any of the three formats :mod:`smee.formats` reads (Smee file
YAML, Tinkerbell ``Hardware`` manifests, Tink JSON). What the answer means:

* **200**: the records are indexed (:class:`~smee.backends.index.HardwareIndex`,
  as every backend does) and the interface with that MAC/IP is the answer;
  none claims it -> ``None``; two or more -> :class:`AmbiguousHardware`.
* **404**: ``None`` (not found).
* anything else -- another status, a body that is not a valid hardware
  document, a timeout, a refused connection -- fails the lookup with
  :class:`LookupFailed`, whose message names the URL and the cause, and is
  logged at warn. The caller then does not answer, which is right: the
  machine may well exist.

A boot storm (a rack powering on; every PXE ROM retransmitting DISCOVERs)
must not turn into a storm on the inventory service, so:

* **Cache.** Answers the service actually gave (found, not found,
  ambiguous) are reused for ``ttl`` seconds (``--backend-http-cache-ttl``;
  ``0`` disables), on the injected clock. At most ``max_entries`` keys are
  kept; the oldest is evicted first. Failures are *not* cached: the next
  retransmission asks again, so a recovered service is used at once.
* **Coalescing.** Concurrent identical lookups share one HTTP request. Each
  caller still gets its own fresh Deferred, because the DHCP server cancels
  its Deferred on timeout and one caller's cancellation must not fail the
  others. A cancelled caller just stops waiting; the shared request is never
  cancelled on its behalf: it is bounded by ``timeout`` anyway, and its
  answer fills the cache for the client's next retransmission. Only
  :meth:`stopService` cancels requests in flight.

A misbehaving service must cost a bounded amount: the timeout covers the
response *and* its body, and the body is read by :class:`_BoundedBody`,
which closes the connection when the timeout cancels it (treq's
``content()`` cannot be cancelled: a service trickling an endless body
would keep its connection, and our buffer, forever) and as soon as the body
passes ``MAX_BODY`` (a chunked body has no length to refuse up front).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError as _TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from smee.backends import AmbiguousHardware, LookupFailed
from smee.backends.index import HardwareIndex
from smee.formats import HardwareFileError, parse_text
from smee.hardware import HardwareError, Match, normalize_mac

__all__ = ["HTTPBackend"]

#: ``Accept`` sent with every lookup: we read JSON and YAML.
ACCEPT = "application/json, application/yaml"

#: A hardware document bigger than this is refused (a misrouted URL serving
#: an ISO must not be read into memory).
MAX_BODY = 16 * 1024 * 1024

#: Default cache bound: one entry per machine of a large site.
MAX_ENTRIES = 100_000

_Key = tuple[str, str]  # ("mac", "aa:bb:...") or ("ip", "192.0.2.10")


class _Answer:
    """What the service said for one key: a Match, None, or an AmbiguousHardware."""

    __slots__ = ("error", "match")

    def __init__(self, match: Match | None, error: AmbiguousHardware | None = None) -> None:
        self.match = match
        self.error = error

    def deferred(self) -> Deferred[Match | None]:
        """A fresh Deferred with this answer (every caller gets its own)."""
        if self.error is not None:
            return defer.fail(AmbiguousHardware(str(self.error)))
        return defer.succeed(self.match)


class _TooBig(Exception):
    """The body passed MAX_BODY while it was being read."""


class _BoundedBody(Protocol):
    """Collect a response body of at most ``limit`` bytes; cancelling ``done`` closes the connection.

    ``done`` fires with the body when it ends cleanly (or, with no length
    and no chunking, when the server closes: ``PotentialDataLoss``), and
    fails with the transport's reason when the body is cut short, or with
    :class:`_TooBig`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished = False
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        # Cancelled (timeout, stopService) or too big: drop the connection.
        self.finished = True
        if self.transport is not None:
            with contextlib.suppress(Exception):  # already gone: nothing to close
                self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._stop()
            self.done.errback(_TooBig(f"body passed {self.limit} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished:
            return
        self.finished = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read_body(response: Any, limit: int) -> Deferred[bytes]:
    """The body of ``response``, bounded by ``limit``; cancellable (closes the connection)."""
    body = _BoundedBody(limit)
    response.deliverBody(body)
    return body.done


class _Flight:
    """One HTTP request in progress and the callers waiting for it."""

    __slots__ = ("outcome", "request", "waiters")

    def __init__(self) -> None:
        self.request: Deferred[_Answer] | None = None
        self.waiters: list[Deferred[Match | None]] = []
        #: set when the request finished: the answer or the LookupFailed
        self.outcome: _Answer | LookupFailed | None = None


def _fresh(outcome: _Answer | LookupFailed) -> Deferred[Match | None]:
    if isinstance(outcome, LookupFailed):
        return defer.fail(outcome)
    return outcome.deferred()


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _snippet(body: bytes, limit: int = 120) -> str:
    """The start of an error body, printable, for a log line."""
    text = body[:limit].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text + ("..." if len(body) > limit else "")


def _cancelled(failure: Failure) -> bool:
    # defer.TimeoutError: what addTimeout turns its cancellation into when the
    # coroutine does not catch it (a body cut off while it was being read).
    if failure.check(CancelledError, _TimeoutError, defer.TimeoutError):
        return True
    reasons = getattr(failure.value, "reasons", None) or ()
    return any(isinstance(r, Failure) and _cancelled(r) for r in reasons)


def _cause(failure: Failure) -> str:
    """A one-line cause; treq's ResponseFailed & co. wrap a list of Failures."""
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(_cause(r) if isinstance(r, Failure) else str(r) for r in reasons)
    message = failure.getErrorMessage()
    name = failure.type.__name__ if failure.type else "error"
    return f"{name}: {message}" if message and message != name else name


class HTTPBackend(Service):
    """Look machines up in an inventory service over HTTP.

    :param client: a treq-like client (``treq.client.HTTPClient``, or
        ``treq.testing.StubTreq`` in tests) with ``get(url, headers=...)``
    :param base_url: the service's base URL; lookups GET ``{base}/hardware``
    :param clock: the IReactorTime for timeouts and cache expiry
    :param timeout: seconds one HTTP lookup (response and body) may take
    :param ttl: seconds an answer is reused; ``<= 0`` disables the cache
    :param max_entries: most cached keys (oldest evicted first)
    :param close: called by :meth:`stopService` (e.g. to close the
        connection pool); may return a Deferred
    """

    kind = "http"
    log = Logger(namespace="smee.backends.http")

    def __init__(
        self,
        client: Any,
        base_url: str,
        clock: IReactorTime,
        timeout: float = 2.0,
        ttl: float = 5.0,
        max_entries: int = MAX_ENTRIES,
        close: Callable[[], Any] | None = None,
    ) -> None:
        self._client = client
        # user:password@ in the URL becomes an Authorization header: Twisted's Agent would take it
        # as part of the host name, and the credentials must never appear in URLs that get logged
        self.base_url, self._auth = _split_userinfo(base_url.rstrip("/"))
        self._clock = clock
        self.timeout = timeout
        self.ttl = ttl
        self.max_entries = max_entries
        self._close = close
        #: key -> (expires, answer); insertion order is age order
        self._cache: dict[_Key, tuple[float, _Answer]] = {}
        self._flights: dict[_Key, _Flight] = {}
        self._ready = True
        self._stopping = False
        self.requests = 0
        self.hits = 0
        self.coalesced = 0
        self.failures = 0
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, reactor: Any) -> HTTPBackend:
        """The backend ``twistd smee --backend-http-enabled`` runs.

        One persistent connection pool; ``https`` URLs are verified against
        the system trust store (Agent's default ``BrowserLikePolicyForHTTPS``).
        """
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 16  # a boot storm asks for many MACs at once
        client = HTTPClient(Agent(reactor, pool=pool))
        return cls(
            client,
            settings.backend_http_url,
            reactor,
            timeout=settings.backend_http_timeout,
            ttl=settings.backend_http_cache_ttl,
            close=pool.closeCachedConnections,
        )

    # --- lookups -------------------------------------------------------

    def by_mac(self, mac: str) -> Deferred[Match | None]:
        """Look up by MAC in any notation; garbage fails with LookupFailed."""
        try:
            key = normalize_mac(mac)
        except HardwareError as e:
            return defer.fail(LookupFailed(str(e)))
        return self._lookup(("mac", key))

    def by_ip(self, ip: IPv4Address | str) -> Deferred[Match | None]:
        """Look up by the IPv4 address reserved for an interface."""
        if not isinstance(ip, IPv4Address):
            try:
                ip = IPv4Address(str(ip).strip())
            except ValueError:
                return defer.fail(LookupFailed(f"{ip!r} is not an IPv4 address"))
        return self._lookup(("ip", str(ip)))

    def url(self, kind: str, value: str) -> str:
        """The URL asked for one lookup (``:`` and ``.`` are left readable)."""
        return f"{self.base_url}/hardware?{kind}={quote(value, safe=':.')}"

    def _lookup(self, key: _Key) -> Deferred[Match | None]:
        cached = self._cache.get(key)
        if cached is not None:
            expires, answer = cached
            if expires > self._clock.seconds():
                self.hits += 1
                return answer.deferred()
            del self._cache[key]
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            self.requests += 1
            request = Deferred.fromCoroutine(self._fetch(key))
            request.addTimeout(self.timeout, self._clock)
            # Set before callbacks run: a request that finishes at once
            # (StubTreq, a cached connection) still finds its flight.
            flight.request = request
            request.addBoth(self._landed, key, flight)
        else:
            self.coalesced += 1
        if flight.outcome is not None:
            # Finished synchronously (StubTreq, a broken URL), before anyone
            # waited: hand this caller the outcome directly.
            return _fresh(flight.outcome)
        waiter: Deferred[Match | None] = Deferred(lambda d: self._leave(flight, d))
        flight.waiters.append(waiter)
        return waiter

    @staticmethod
    def _leave(flight: _Flight, waiter: Deferred[Any]) -> None:
        """A caller gave up (DHCP timeout): it stops waiting, the request goes on."""
        try:
            flight.waiters.remove(waiter)
        except ValueError:
            pass

    def _landed(self, result: Any, key: _Key, flight: _Flight) -> Any:
        """The shared request finished: cache an answer, hand it to every waiter."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        waiters, flight.waiters = flight.waiters, []
        if isinstance(result, Failure):
            error = self._failed(key, result)
            flight.outcome = error
            for waiter in waiters:
                waiter.errback(Failure(error))
            return None
        self._ready = True
        self._store(key, result)
        flight.outcome = result
        for waiter in waiters:
            if result.error is not None:
                waiter.errback(AmbiguousHardware(str(result.error)))
            else:
                waiter.callback(result.match)
        return None

    def _failed(self, key: _Key, failure: Failure) -> LookupFailed:
        url = self.url(*key)
        if failure.check(LookupFailed):
            error: LookupFailed = failure.value
        elif _cancelled(failure):
            # Only our timeout and stopService cancel a request; treq may
            # wrap the CancelledError (ResponseNeverReceived), and addTimeout
            # converts only a bare one.
            if self._stopping:
                error = LookupFailed(f"GET {url}: cancelled (backend stopping)")
            else:
                error = LookupFailed(f"GET {url}: no answer within {self.timeout:g}s")
        else:
            error = LookupFailed(f"GET {url}: {_cause(failure)}")
        self.failures += 1
        self._ready = False
        self.last_error = str(error)
        if self._stopping:
            self.log.info("hardware lookup abandoned: {error}", error=str(error), url=url)
        else:
            self.log.warn("hardware lookup failed: {error}", error=str(error), url=url)
        return error

    def _store(self, key: _Key, answer: _Answer) -> None:
        if self.ttl <= 0:
            return
        cache = self._cache
        cache.pop(key, None)  # re-insert at the young end
        cache[key] = (self._clock.seconds() + self.ttl, answer)
        while len(cache) > self.max_entries:
            del cache[next(iter(cache))]

    async def _fetch(self, key: _Key) -> _Answer:
        """One GET; every failure comes out as LookupFailed (or the timeout's cancel)."""
        kind, value = key
        url = self.url(kind, value)
        # unbuffered: treq would otherwise start reading the body into an
        # unbounded, uncancellable buffer before we can look at it.
        headers = {"Accept": ACCEPT}
        if self._auth is not None:
            headers["Authorization"] = self._auth
        response = await self._client.get(url, headers=headers, unbuffered=True)
        length = response.length
        if isinstance(length, int) and length > MAX_BODY:
            unread = _read_body(response, 0)
            unread.addErrback(lambda _: None)
            unread.cancel()  # not reading it: close the connection
            raise LookupFailed(f"GET {url}: HTTP {response.code}, body of {length} bytes is too big")
        try:
            body: bytes = await _read_body(response, MAX_BODY)
        except _TooBig:
            raise LookupFailed(f"GET {url}: HTTP {response.code}, body of more than {MAX_BODY} bytes is too big") from None
        if response.code == 404:
            return _Answer(None)
        if response.code != 200:
            detail = f": {_snippet(body)}" if body else ""
            raise LookupFailed(f"GET {url}: HTTP {response.code}{detail}")
        content_type = (response.headers.getRawHeaders("content-type") or [""])[0]
        content_type = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
        # parse_text picks JSON by a ".json" suffix; the fragment is never sent.
        source = f"{url}#.json" if _is_json(content_type) else url
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise LookupFailed(f"GET {url}: body is not valid UTF-8: {e.reason}") from None
        try:
            parsed = parse_text(text, source)
        except HardwareFileError as e:
            raise LookupFailed(f"GET {url}: invalid hardware document: {e}") from None
        for warning in parsed.warnings:
            self.log.warn("{warning}", warning=warning, url=url)
        index = HardwareIndex(parsed.hardware)
        try:
            match = index.by_mac(value) if kind == "mac" else index.by_ip(IPv4Address(value))
        except AmbiguousHardware as e:
            return _Answer(None, e)
        return _Answer(match)

    # --- service ---------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """A JSON-able summary for /healthcheck."""
        return {
            "backend": "http",
            "url": self.base_url,
            "ready": self._ready,
            "cache": len(self._cache),
            "in_flight": len(self._flights),
            "requests": self.requests,
            "hits": self.hits,
            "coalesced": self.coalesced,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def startService(self) -> None:
        self._stopping = False
        Service.startService(self)

    def stopService(self) -> Any:
        Service.stopService(self)
        self._stopping = True
        for flight in list(self._flights.values()):
            if flight.request is not None:
                flight.request.cancel()  # waiters get LookupFailed
        self._cache.clear()
        if self._close is None:
            return None
        return defer.maybeDeferred(self._close)


def _split_userinfo(url: str) -> tuple[str, str | None]:
    """``(url without user:password@, its Basic Authorization header value or None)``."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"
