"""The Kubernetes backend: an informer (LIST + WATCH) over ``tinkerbell.org/v1alpha1`` Hardware.

What Smee gets from controller-runtime's cache, done with treq on the reactor
(no threads, no second event loop):

* **LIST** in pages (``limit``/``continue``); a ``410`` on a continue token
  (compacted away) restarts the LIST. The new index is built aside and swapped
  in when the last page arrives, so a relist never shows a half-empty cache.
* **WATCH** from the LIST's ``resourceVersion`` with
  ``allowWatchBookmarks=true`` and ``timeoutSeconds``; the chunked body is
  split into lines, and only complete lines are parsed: a line cut by a
  dropped connection is discarded. ADDED/MODIFIED replace everything the
  object claimed (a MAC moving from object A to B follows it), DELETED
  removes it, BOOKMARK only advances the resourceVersion, and ERROR with a
  ``410`` Status ("too old resource version") forces a relist; other ERRORs
  reconnect. A 410 on the watch that directly follows a fresh LIST, twice in
  a row, means the server (or a proxy) compacts faster than we can list:
  relisting at once would spin, one full LIST per round trip, so from the
  second such 410 relists go through the backoff too.
* A watch that ends normally (``timeoutSeconds``) is resumed at once from the
  last resourceVersion seen; failures (refused, reset, 401/403/5xx, malformed
  lines, a silent connection) retry with capped exponential backoff with full
  jitter (``uniform(0, min(cap, initial * 2**n))``), reset by a successful
  LIST or a watch that delivered events.
* Lookups use :class:`~smee.backends.live.LiveIndex`: 0 claimants -> ``None``,
  1 -> the Match, 2+ -> :class:`AmbiguousHardware` naming them, as Smee's
  field indexes. Until the first LIST completes, lookups wait, up to
  ``sync_timeout`` after the service started, then fail with
  :class:`LookupFailed` (never "unknown machine"). After that, a failed
  relist keeps serving the last synced data, as client-go's cache does.
* :meth:`KubeBackend.state` (shown by ``/healthcheck``) says ``ready`` once
  the first LIST completed, and ``degraded`` (with ``last_error`` and
  ``failing_since``) while the API cannot be reached and the last synced
  data is being served.
* An object that does not convert (``hardware_from_object`` raises) is
  logged once per resourceVersion with its name and is **not served**: if an
  earlier version was valid it is removed, because serving a version the
  operator has since changed could hand out a stale address or script. It is
  counted in ``state()["invalid"]``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any
from urllib.parse import quote

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from smee.backends import LookupFailed
from smee.backends.kubeconfig import (
    ConfigError,
    KubeConnection,
    default_kubeconfig,
    load_in_cluster,
    load_kubeconfig,
)
from smee.backends.live import LiveIndex
from smee.formats import HardwareFileError, hardware_from_object
from smee.hardware import Hardware, HardwareError, Match, normalize_mac

__all__ = ["KubeAPIError", "KubeBackend"]

GROUP_VERSION = "tinkerbell.org/v1alpha1"
RESOURCE = "hardware"
#: A watch line longer than this is not a Hardware object; refuse rather than buffer forever.
MAX_LINE = 16 * 1024 * 1024


class KubeAPIError(Exception):
    """The API server answered with an error (HTTP status or a watch ERROR event)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code


class _Gone(KubeAPIError):
    """410: the resourceVersion or continue token is too old; relist."""


def _status_message(body: bytes) -> str:
    try:
        status = json.loads(body)
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


class _Body(Protocol):
    """Collect a response body, whole (``on_line=None``) or as complete ``\\n``-terminated lines.

    ``done`` fires with the body (or ``b""`` in line mode) when the response
    ends cleanly, and fails with the transport's reason when it is cut: a
    partial last line is then dropped, never parsed. Cancelling ``done``
    closes the connection.
    """

    def __init__(self, on_line: Callable[[bytes], None] | None = None, on_data: Callable[[], None] | None = None) -> None:
        self.on_line = on_line
        self.on_data = on_data
        self.buffer = bytearray()
        self.finished = False
        self.discarded = 0  # bytes of an unterminated line dropped when the connection was cut
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def _cancel(self, _d: object) -> None:
        self.finished = True
        self._close()

    def _close(self) -> None:
        transport = self.transport
        if transport is not None:
            try:
                transport.stopProducing()
            except Exception:
                pass

    def _fail(self, failure: Failure) -> None:
        if not self.finished:
            self.finished = True
            self._close()
            self.done.errback(failure)

    def dataReceived(self, data: bytes) -> None:
        if self.finished:
            return
        if self.on_data is not None:
            self.on_data()
        buf = self.buffer
        buf += data
        if self.on_line is None:
            return
        start = 0
        try:
            while True:
                end = buf.find(b"\n", start)
                if end < 0:
                    break
                line = bytes(buf[start:end])
                start = end + 1
                if line.strip():
                    self.on_line(line)
                if self.finished:
                    return
        except Exception:
            self._fail(Failure())
            return
        del buf[:start]
        if len(buf) > MAX_LINE:
            self._fail(Failure(KubeAPIError(0, f"watch line longer than {MAX_LINE} bytes")))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished:
            return
        self.finished = True
        if reason.check(ResponseDone, PotentialDataLoss):
            # PotentialDataLoss: a body delimited by the connection closing (no
            # length, not chunked). Fine for a whole body; in line mode any
            # unterminated rest is dropped all the same.
            body = b"" if self.on_line is not None else bytes(self.buffer)
            self.done.callback(body)
        else:
            self.discarded = len(self.buffer) if self.on_line is not None else 0
            self.done.errback(reason)


@dataclass
class _Waiter:
    deferred: defer.Deferred[None]
    timer: IDelayedCall


class KubeBackend(Service):
    """Serve Hardware from the Kubernetes API through a list+watch informer.

    ``client`` is treq-like: ``client.get(url, params=, headers=, unbuffered=True)``
    returns a Deferred response with ``code`` and ``deliverBody``.
    ``namespace=""`` watches every namespace. ``rng`` is a
    :class:`random.Random` for the backoff jitter (inject one in tests).
    """

    kind = "kube"
    log = Logger(namespace="smee.backends.kube")

    def __init__(
        self,
        client: Any,
        server: str,
        reactor: IReactorTime,
        headers_fn: Callable[[], Mapping[str, str]] = dict,
        namespace: str = "",
        sync_timeout: float = 10.0,
        page_size: int = 500,
        watch_timeout: int = 300,
        request_timeout: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_cap: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self.server = server.rstrip("/")
        self._reactor = reactor
        self._headers_fn = headers_fn
        self.namespace = namespace
        self._sync_timeout = sync_timeout
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_cap = backoff_cap
        self._rng = rng if rng is not None else random.Random()

        base = f"{self.server}/apis/{GROUP_VERSION}"
        if namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        self.url = f"{base}/{RESOURCE}"

        self._index = LiveIndex()
        self._synced = False
        self._rv: str | None = None  # None: a LIST is needed
        self._invalid: dict[str, str] = {}  # key -> resourceVersion last reported invalid
        self._waiters: list[_Waiter] = []
        self._started_at: float | None = None
        self._current: defer.Deferred[Any] | None = None
        self._loop: defer.Deferred[None] | None = None
        self._stopping = False
        self._failures = 0
        self._events_this_watch = 0
        #: consecutive 410s on watches started right after a LIST, with no event
        self._gone_streak = 0
        # counters for state()
        self.relists = 0
        self.reconnects = 0
        self.lists = 0
        self.events = 0
        self.last_error = ""
        #: reactor time of the first failure since the API last answered; None while healthy
        self.failing_since: float | None = None
        self.last_delay = 0.0
        self.partial_bytes_dropped = 0
        self.last_sync: float | None = None

    # --- construction --------------------------------------------------

    @classmethod
    def from_connection(cls, conn: KubeConnection, reactor: Any, **kwargs: Any) -> KubeBackend:
        """A backend talking to ``conn`` with a treq HTTPClient over a verifying Agent."""
        from treq.client import HTTPClient
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        policy = conn.tls_policy if conn.tls_policy is not None else BrowserLikePolicyForHTTPS()
        agent = Agent(reactor, contextFactory=policy, connectTimeout=10)
        return cls(HTTPClient(agent), conn.server, reactor, headers_fn=conn.headers, **kwargs)

    @classmethod
    def from_settings(cls, settings: Any, reactor: Any) -> KubeBackend:
        """--backend-kube-config, else the in-cluster service account, else $KUBECONFIG/~/.kube/config."""
        api = getattr(settings, "backend_kube_api", "") or ""
        path = getattr(settings, "backend_kube_config", "") or ""
        try:
            if path:
                conn = load_kubeconfig(path, api_override=api)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                conn = load_in_cluster(api_override=api)
            else:
                fallback = default_kubeconfig()
                if not os.path.exists(fallback):
                    raise ConfigError(
                        "--backend-kube-config not given, not running in a cluster"
                        f" (KUBERNETES_SERVICE_HOST unset) and no {fallback}"
                    )
                conn = load_kubeconfig(fallback, api_override=api)
        except ConfigError as e:
            raise SystemExit(f"smee: {e}") from None
        backend = cls.from_connection(
            conn,
            reactor,
            namespace=getattr(settings, "backend_kube_namespace", "") or "",
            sync_timeout=float(getattr(settings, "backend_kube_sync_timeout", 10.0)),
        )
        cls.log.info(
            "kube backend: {server} ({source}), namespace {namespace}",
            server=conn.server,
            source=conn.source,
            namespace=backend.namespace or "(all)",
        )
        return backend

    # --- lookups -------------------------------------------------------

    def by_mac(self, mac: str) -> defer.Deferred[Match | None]:
        if not self._synced:
            return self._after_sync().addCallback(lambda _: self._by_mac(mac))
        try:
            return defer.succeed(self._by_mac(mac))
        except LookupFailed as e:
            return defer.fail(e)

    def by_ip(self, ip: IPv4Address | str) -> defer.Deferred[Match | None]:
        if not self._synced:
            return self._after_sync().addCallback(lambda _: self._by_ip(ip))
        try:
            return defer.succeed(self._by_ip(ip))
        except LookupFailed as e:
            return defer.fail(e)

    def _by_mac(self, mac: str) -> Match | None:
        index = self._index
        found = index.by_mac(mac) if isinstance(mac, str) else None  # raises AmbiguousHardware
        if found is None:
            try:
                key = normalize_mac(mac)
            except HardwareError as e:
                raise LookupFailed(str(e)) from None
            if key != mac:
                found = index.by_mac(key)
        return found

    def _by_ip(self, ip: IPv4Address | str) -> Match | None:
        if not isinstance(ip, IPv4Address):
            try:
                ip = IPv4Address(str(ip).strip())
            except ValueError:
                raise LookupFailed(f"{ip!r} is not an IPv4 address") from None
        return self._index.by_ip(ip)

    def _after_sync(self) -> defer.Deferred[None]:
        """Fires when the first LIST completes; fails after sync_timeout from the start."""
        now = self._reactor.seconds()
        start = self._started_at if self._started_at is not None else now
        remaining = start + self._sync_timeout - now
        if not self.running or remaining <= 0:
            return defer.fail(self._not_synced())
        d: defer.Deferred[None] = defer.Deferred()
        waiter = _Waiter(d, None)  # type: ignore[arg-type]

        def expire() -> None:
            self._waiters.remove(waiter)
            d.errback(self._not_synced())

        waiter.timer = self._reactor.callLater(remaining, expire)
        self._waiters.append(waiter)
        return d

    def _not_synced(self) -> LookupFailed:
        why = f" (last error: {self.last_error})" if self.last_error else ""
        state = "not running" if not self.running else f"not synced after {self._sync_timeout:g}s"
        return LookupFailed(f"Kubernetes cache {state}{why}")

    def _release_waiters(self, error: LookupFailed | None = None) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if w.timer.active():
                w.timer.cancel()
            if error is None:
                w.deferred.callback(None)
            else:
                w.deferred.errback(error)

    def state(self) -> dict[str, Any]:
        return {
            "backend": "kube",
            "ready": self._synced,
            "degraded": bool(self.last_error),
            "failing_since": self.failing_since,
            "records": len(self._index),
            "resource_version": self._rv or "",
            "relists": self.relists,
            "reconnects": self.reconnects,
            "events": self.events,
            "invalid": len(self._invalid),
            "last_error": self.last_error,
            "last_sync": self.last_sync,
            "namespace": self.namespace or "(all)",
            "server": self.server,
        }

    def duplicates(self) -> list[str]:
        return self._index.duplicates()

    # --- service -------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._stopping = False
        self._started_at = self._reactor.seconds()
        self._loop = defer.ensureDeferred(self._run())
        self._loop.addErrback(lambda f: self.log.failure("kube informer stopped", f))

    def stopService(self) -> Any:
        Service.stopService(self)
        self._stopping = True
        if self._current is not None:
            self._current.cancel()
        self._release_waiters(self._not_synced() if not self._synced else None)
        loop, self._loop = self._loop, None
        return loop if loop is not None else defer.succeed(None)

    async def _wait(self, d: defer.Deferred[Any], timeout: float | None = None) -> Any:
        """Await ``d`` as the cancellable in-flight step (optionally with a timeout)."""
        if self._stopping:
            # stopService ran while this step was being set up (e.g. from a
            # waiter's callback fired by the LIST that just completed).
            d.cancel()
        elif timeout is not None:
            d.addTimeout(timeout, self._reactor)
        self._current = d
        try:
            return await d
        finally:
            self._current = None

    # --- informer ------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            fresh = False  # this round's watch starts from a LIST done in this round
            self._events_this_watch = 0
            try:
                if self._rv is None:
                    await self._list()
                    fresh = True
                await self._watch()
            except _Gone as e:
                if self._stopping:
                    return
                self.relists += 1
                expired, self._rv = self._rv, None
                if fresh and self._events_this_watch == 0:
                    self._gone_streak += 1
                else:
                    self._gone_streak = 0
                if self._gone_streak < 2:
                    self.log.info("resourceVersion {rv} expired ({error}): relisting", rv=expired, error=str(e))
                    continue
                # Back to back: the backoff grows with the streak even though
                # every LIST in it succeeded (which resets _failures).
                self._failures = max(self._failures, self._gone_streak - 2)
                self._note_error(
                    f"410 on a watch from a fresh LIST's resourceVersion {expired}"
                    f" ({self._gone_streak} times in a row): {e}"
                )
            except Exception as e:  # noqa: BLE001 - every failure means "retry later"
                if self._stopping:
                    return
                if _cancelled(e):  # only our request timeout cancels while not stopping
                    self._note_error(f"request timed out after {self._request_timeout:g}s")
                else:
                    self._note_error(_describe(e))
            else:
                self._gone_streak = 0
                continue  # watch ended normally (timeoutSeconds): resume at once
            if self._stopping:
                return
            delay = self._next_delay()
            self.reconnects += 1
            self.log.warn(
                "kube API {server}: {error}; retrying in {delay:.2f}s",
                server=self.server,
                error=self.last_error,
                delay=delay,
            )
            try:
                await self._wait(_sleep(self._reactor, delay))
            except defer.CancelledError:
                return

    def _note_error(self, message: str) -> None:
        self.last_error = message
        if self.failing_since is None:
            self.failing_since = self._reactor.seconds()

    def _answered(self) -> None:
        """The API answered a request properly: not degraded any more."""
        self.last_error = ""
        self.failing_since = None

    def _next_delay(self) -> float:
        ceiling = min(self._backoff_cap, self._backoff_initial * (2 ** min(self._failures, 32)))
        self._failures += 1
        self.last_delay = self._rng.uniform(0, ceiling)
        return self.last_delay

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        headers.update(self._headers_fn())
        return headers

    async def _get(self, params: dict[str, str], timeout: float | None) -> Any:
        d = self._client.get(self.url, params=params, headers=self._headers(), unbuffered=True)
        return await self._wait(d, timeout)

    async def _error_for(self, response: Any) -> KubeAPIError:
        body = _Body()
        response.deliverBody(body)
        try:
            data = await self._wait(body.done, self._request_timeout)
        except Exception:
            data = b""
        cls = _Gone if response.code == 410 else KubeAPIError
        return cls(response.code, _status_message(data))

    async def _list(self) -> None:
        index = LiveIndex()
        cont = ""
        pages = 0
        while True:
            params = {"limit": str(self._page_size)}
            if cont:
                params["continue"] = cont
            response = await self._get(params, self._request_timeout)
            if response.code == 410 and cont:
                # The continue token outlived compaction: start the LIST again.
                error = await self._error_for(response)
                self.log.info("LIST continue token expired ({error}); restarting the LIST", error=str(error))
                index, cont, pages = LiveIndex(), "", 0
                continue
            if response.code != 200:
                error = await self._error_for(response)
                # A 410 on a fresh LIST is not "relist now" (that would spin): back off.
                raise KubeAPIError(error.code, str(error).split(": ", 1)[-1])
            body = _Body()
            response.deliverBody(body)
            data = await self._wait(body.done, self._request_timeout)
            try:
                page = json.loads(data)
                meta = page["metadata"]
                items = page["items"] or []
                rv = str(meta["resourceVersion"])
            except (ValueError, KeyError, TypeError) as e:
                raise KubeAPIError(0, f"malformed LIST response ({e!r})") from None
            pages += 1
            for obj in items:
                key, hw = self._convert(obj)
                if hw is not None:
                    index.put(key, hw)
            cont = meta.get("continue") or ""
            if not cont:
                break
        previous = len(self._index)
        self._index = index
        self._invalid = {k: v for k, v in self._invalid.items() if k not in index}
        self._rv = rv
        self._failures = 0
        self.lists += 1
        self._answered()
        self.last_sync = self._reactor.seconds()
        self.log.info(
            "listed {records} Hardware in {pages} pages at resourceVersion {rv} (was {previous})",
            records=len(index),
            pages=pages,
            rv=rv,
            previous=previous,
        )
        for report in index.duplicates():
            self.log.warn("duplicate hardware, lookups for it fail: {report}", report=report)
        if not self._synced:
            self._synced = True
            self._release_waiters()

    def _convert(self, obj: Any) -> tuple[str, Hardware | None]:
        """``(namespace/name, Hardware)``, or ``(key, None)`` for an object that does not convert."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        key = f"{ns}/{name}"
        rv = str(meta.get("resourceVersion") or "")
        try:
            hw = hardware_from_object(obj, f"kube:{key}")
        except HardwareFileError as e:
            if self._invalid.get(key) != rv:
                self.log.error(
                    "Hardware {key} (resourceVersion {rv}) is invalid and not served: {error}",
                    key=key,
                    rv=rv,
                    error=str(e),
                )
            self._invalid[key] = rv
            return key, None
        self._invalid.pop(key, None)
        return key, hw

    async def _watch(self) -> None:
        params = {
            "watch": "true",
            "resourceVersion": self._rv or "",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._watch_timeout),
        }
        response = await self._get(params, self._request_timeout)
        if response.code != 200:
            raise await self._error_for(response)
        self._answered()  # connected and authorised again
        self._events_this_watch = 0
        idle = self._watch_timeout + 30.0
        body = _Body(self._on_line)
        watchdog = self._reactor.callLater(idle, body.done.cancel)

        def on_data() -> None:
            if watchdog.active():
                watchdog.reset(idle)

        body.on_data = on_data
        response.deliverBody(body)
        try:
            await self._wait(body.done)
        except defer.CancelledError:
            if self._stopping:
                raise
            raise KubeAPIError(0, f"watch silent for {idle:g}s") from None
        finally:
            self.partial_bytes_dropped += body.discarded
            if watchdog.active():
                watchdog.cancel()

    def _on_line(self, line: bytes) -> None:
        """Apply one complete watch event (raises to end the watch)."""
        try:
            event = json.loads(line)
            kind = event["type"]
            obj = event["object"]
            if not isinstance(obj, dict):
                raise TypeError("object is not a mapping")
        except (ValueError, KeyError, TypeError) as e:
            raise KubeAPIError(0, f"malformed watch event ({e!r}): {line[:120]!r}") from None
        if kind == "ERROR":
            try:
                code = int(obj.get("code") or 0)
            except (TypeError, ValueError):
                code = 0  # a malformed status: still an ERROR event, without a code
            message = str(obj.get("message") or obj.get("reason") or "watch error")
            if code == 410:
                raise _Gone(code, message)
            raise KubeAPIError(code, f"watch ERROR event: {message}")
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            pass
        elif kind in ("ADDED", "MODIFIED"):
            key, hw = self._convert(obj)
            if hw is None:
                self._index.remove(key)
            else:
                for report in self._index.put(key, hw):
                    self.log.warn("duplicate hardware, lookups for it fail: {report}", report=report)
        elif kind == "DELETED":
            key = _key(obj)
            self._index.remove(key)
            self._invalid.pop(key, None)
        else:
            raise KubeAPIError(0, f"unknown watch event type {kind!r}")
        if rv:
            self._rv = rv
        self.events += 1
        self._events_this_watch += 1
        self._failures = 0  # the watch works: the next failure starts the backoff afresh
        self._gone_streak = 0


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _sleep(reactor: IReactorTime, delay: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred(lambda _: call.cancel() if call.active() else None)
    call = reactor.callLater(delay, d.callback, None)
    return d


def _cancelled(e: BaseException) -> bool:
    """Whether ``e`` is a cancellation, bare, turned into TimeoutError by
    ``addTimeout``, or wrapped by twisted.web (``ResponseNeverReceived([CancelledError])``)."""
    if isinstance(e, (defer.CancelledError, defer.TimeoutError)):
        return True
    reasons = getattr(e, "reasons", None) or ()
    return any(isinstance(r, Failure) and _cancelled(r.value) for r in reasons)


def _describe(e: BaseException) -> str:
    """A one-line reason for a failed request, unwrapping twisted.web's ResponseFailed lists."""
    if isinstance(e, KubeAPIError):
        return str(e)
    reasons = getattr(e, "reasons", None)
    if reasons:
        inner = "; ".join(str(r.value) or type(r.value).__name__ for r in reasons)
        return f"{type(e).__name__}: {inner}"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__

