"""A strict fake kube-apiserver for tinkerbell.org/v1alpha1 Hardware, on 127.0.0.1 over TLS.

A real kube-apiserver cannot be installed here, so this follows the
list/watch protocol the way the real one does, and refuses what it does not
implement rather than guessing:

* TLS with a private CA and a server certificate whose SAN is the IP
  127.0.0.1 (clients must verify by IP); optional client certificates signed
  by the same CA (CN ``smee-client``) authenticate like a bearer token.
* ``Authorization: Bearer <token>`` or a client certificate, else 401 with a
  ``Status`` body.
* Paths: ``/apis/tinkerbell.org/v1alpha1/hardware`` (all namespaces) and
  ``/apis/tinkerbell.org/v1alpha1/namespaces/<ns>/hardware``; anything else 404.
* Query parameters: only those listed in ``_ALLOWED``; an unknown or repeated
  one is a 400 (the real server ignores unknown ones: being stricter catches
  client typos). ``watch`` must be true/1/false/0.
* LIST: a ``HardwareList`` with ``metadata.resourceVersion``, pages by
  ``limit`` with opaque ``continue`` tokens that serve a consistent snapshot
  at the first page's resourceVersion; after :meth:`compact`, an older token
  is a 410 ``Expired`` Status. A resourceVersion on a LIST is refused (400:
  not implemented).
* WATCH: ``resourceVersion`` is required; every change after it is streamed
  as ``{"type": ..., "object": ...}\\n`` in a chunked body, each line split
  across two writes; a resourceVersion older than the last :meth:`compact`
  gets a 200 with one ERROR event (Status code 410, reason Expired) and the
  end of the stream, as the real server does. BOOKMARKs go only to watches
  that asked (``allowWatchBookmarks``); ``timeoutSeconds`` ends the stream
  cleanly.

Control API for tests: :meth:`add`, :meth:`modify`, :meth:`delete` (each
bumps the global resourceVersion and records history), :meth:`bookmark`,
:meth:`drop_watches` (optionally in the middle of a line), :meth:`end_watches`,
:meth:`compact`, :attr:`requests`, :meth:`stop_listening`/:meth:`listen`,
:meth:`stop`.
"""

from __future__ import annotations

import base64
import bisect
import copy
import datetime
import ipaddress
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, ssl
from twisted.web import server
from twisted.web.resource import Resource

API = "tinkerbell.org/v1alpha1"
PREFIX = ["apis", "tinkerbell.org", "v1alpha1"]
_ALLOWED = {
    "watch",
    "resourceVersion",
    "allowWatchBookmarks",
    "timeoutSeconds",
    "limit",
    "continue",
}
CLIENT_CN = "smee-client"


# --- PKI ---------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
    ips: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    usage: Any = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    sans = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class PKI:
    """A CA, a server certificate for IP 127.0.0.1, and a client certificate, all PEM."""

    ca_pem: bytes
    server_pem: bytes
    server_key_pem: bytes
    client_pem: bytes
    client_key_pem: bytes

    @classmethod
    def generate(cls, ips: tuple[str, ...] = ("127.0.0.1",), client_cn: str = CLIENT_CN) -> PKI:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("fake-kube-ca", ca_key, None, ca=True)
        issuer = (ca.subject, ca_key)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = _cert(
            "kube-apiserver", server_key, issuer, ips=ips, dns=("kubernetes",),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        )
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = _cert(client_cn, client_key, issuer, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        pem = serialization.Encoding.PEM
        return cls(
            ca.public_bytes(pem),
            server_cert.public_bytes(pem),
            _pem_key(server_key),
            client_cert.public_bytes(pem),
            _pem_key(client_key),
        )


# --- objects -----------------------------------------------------------


def hardware(name: str, mac: str, ip: str = "", namespace: str = "default", **dhcp: Any) -> dict[str, Any]:
    """A minimal valid Hardware object (what ``kubectl apply`` would store)."""
    d: dict[str, Any] = {"mac": mac, "hostname": name, **dhcp}
    if ip:
        d["ip"] = {"address": ip, "netmask": "255.255.255.0", "gateway": ip.rsplit(".", 1)[0] + ".1"}
    return {
        "apiVersion": API,
        "kind": "Hardware",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"interfaces": [{"dhcp": d, "netboot": {"allowPXE": True, "allowWorkflow": True}}]},
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class _Watch:
    request: server.Request
    namespace: str
    bookmarks: bool
    timer: Any = None
    done: bool = False


@dataclass
class Logged:
    path: str
    params: dict[str, str]
    authorized: bool
    code: int = 200


@dataclass
class _Store:
    rv: int = 1
    compacted: int = 0
    keys: list[tuple[str, str]] = field(default_factory=list)  # sorted (ns, name) ever seen
    versions: dict[tuple[str, str], list[tuple[int, dict[str, Any] | None]]] = field(default_factory=dict)
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    def current(self, key: tuple[str, str]) -> dict[str, Any] | None:
        v = self.versions.get(key)
        return v[-1][1] if v else None

    def at(self, key: tuple[str, str], rv: int) -> dict[str, Any] | None:
        found = None
        for version, obj in self.versions.get(key, ()):
            if version > rv:
                break
            found = obj
        return found


class _Handler(Resource):
    isLeaf = True

    def __init__(self, fake: FakeAPIServer) -> None:
        super().__init__()
        self.fake = fake

    def render(self, request: server.Request) -> Any:
        return self.fake._handle(request)


class FakeAPIServer:
    """See the module docstring. ``start()`` listens on 127.0.0.1:0 and returns the URL."""

    def __init__(self, reactor: Any, token: str = "s3cret", pki: PKI | None = None, tls: bool = True) -> None:
        self.reactor = reactor
        self.token = token
        self.pki = pki or PKI.generate()
        self.tls = tls
        self.store = _Store()
        self.watches: list[_Watch] = []
        self.requests: list[Logged] = []
        self.port: Any = None
        self.port_number = 0
        self._site = server.Site(_Handler(self))
        self._site.displayTracebacks = False
        self._channels: set[Any] = set()
        self.on_request: Any = None  # called with each Logged request before it is served
        self.list_delay: float = 0.0  # seconds each LIST page is held back (sync-wait tests)

    # --- lifecycle ----------------------------------------------------

    def _context(self) -> Any:
        cert = ssl.PrivateCertificate.loadPEM(self.pki.server_key_pem + self.pki.server_pem)
        ca = ssl.Certificate.loadPEM(self.pki.ca_pem)
        return ssl.CertificateOptions(
            privateKey=cert.privateKey.original,
            certificate=cert.original,
            verify=True,  # ask for a client certificate, verified against the CA...
            caCerts=[ca.original],
            requireCertificate=False,  # ...but a bearer token alone is fine too
        )

    def listen(self) -> str:
        if self.tls:
            self.port = self.reactor.listenSSL(
                self.port_number, self._site, self._context(), interface="127.0.0.1"
            )
        else:
            self.port = self.reactor.listenTCP(self.port_number, self._site, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        return self.url

    start = listen

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port_number}"

    def stop_listening(self) -> defer.Deferred[Any]:
        """Refuse new connections (the port stays reserved in port_number for listen())."""
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)

    def stop(self) -> defer.Deferred[Any]:
        """Stop listening and cut every open connection."""
        for w in list(self.watches):
            self._abort(w)
        return self.stop_listening()

    # --- control API ----------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def add(self, obj: dict[str, Any]) -> int:
        key = self._key(obj)
        if self.store.current(key) is not None:
            raise ValueError(f"{key} already exists")
        if key not in self.store.versions:
            bisect.insort(self.store.keys, key)
        return self._record("ADDED", key, obj)

    def modify(self, obj: dict[str, Any]) -> int:
        key = self._key(obj)
        if self.store.current(key) is None:
            raise KeyError(f"{key} does not exist")
        return self._record("MODIFIED", key, obj)

    def delete(self, namespace: str, name: str) -> int:
        key = (namespace, name)
        obj = self.store.current(key)
        if obj is None:
            raise KeyError(f"{key} does not exist")
        self.store.rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self.store.rv)
        self.store.versions[key].append((self.store.rv, None))
        self.store.history.append((self.store.rv, "DELETED", gone))
        self._broadcast("DELETED", gone)
        return self.store.rv

    def bump(self, namespace: str = "elsewhere") -> int:
        """A change nobody in ``namespace``'s watches sees (moves the global resourceVersion)."""
        name = f"bump-{self.store.rv}"
        return self.add(hardware(name, "02:00:00:00:00:00", namespace=namespace))

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion to every watch that allowed them."""
        event = {
            "type": "BOOKMARK",
            "object": {"kind": "Hardware", "apiVersion": API, "metadata": {"resourceVersion": str(self.store.rv)}},
        }
        for w in list(self.watches):
            if w.bookmarks:
                self._send(w, event)

    def compact(self) -> None:
        """Forget history up to now: older watch resourceVersions and continue tokens get 410."""
        self.store.compacted = self.store.rv

    def drop_watches(self, mid_line: bool = False) -> int:
        """Cut every watch's connection (no end-of-body chunk); ``mid_line`` first sends half an event.

        The half line is an ADDED of a valid object named ``ghost`` that is
        never stored: a client that parsed it would show it.
        """
        n = 0
        for w in list(self.watches):
            if mid_line:
                ghost = hardware("ghost", "02:99:99:99:99:99", "10.9.9.9", namespace=w.namespace or "default")
                ghost["metadata"]["resourceVersion"] = str(self.store.rv + 1000)
                line = json.dumps({"type": "ADDED", "object": ghost}).encode()
                w.request.write(line[: len(line) // 2])
            self._cut(w)
            n += 1
        return n

    def expire_watches(self) -> None:
        """Send every watch an ERROR event with a 410 Status and end it (the watch cache fell behind)."""
        for w in list(self.watches):
            self._send(w, {"type": "ERROR", "object": _status(410, "Expired", "too old resource version: watch cache expired")})
            self._finish(w)

    def end_watches(self) -> None:
        """End every watch cleanly, as timeoutSeconds does."""
        for w in list(self.watches):
            self._finish(w)

    # --- internals --------------------------------------------------------

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj["metadata"]
        return (meta.get("namespace") or "default", meta["name"])

    def _record(self, kind: str, key: tuple[str, str], obj: dict[str, Any]) -> int:
        self.store.rv += 1
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta["namespace"] = key[0]
        meta["resourceVersion"] = str(self.store.rv)
        prev = self.store.current(key)
        meta["uid"] = prev["metadata"]["uid"] if prev else str(uuid.uuid4())
        stored.setdefault("apiVersion", API)
        stored.setdefault("kind", "Hardware")
        self.store.versions.setdefault(key, []).append((self.store.rv, stored))
        self.store.history.append((self.store.rv, kind, stored))
        self._broadcast(kind, stored)
        return self.store.rv

    def _broadcast(self, kind: str, obj: dict[str, Any]) -> None:
        for w in list(self.watches):
            if not w.namespace or w.namespace == obj["metadata"]["namespace"]:
                self._send(w, {"type": kind, "object": obj})

    def _send(self, w: _Watch, event: dict[str, Any]) -> None:
        if w.done:
            return
        line = json.dumps(event).encode() + b"\n"
        half = len(line) // 2
        w.request.write(line[:half])  # one event in two chunks: the client must buffer lines
        w.request.write(line[half:])

    def _forget(self, w: _Watch) -> None:
        w.done = True
        if w.timer is not None and w.timer.active():
            w.timer.cancel()
        if w in self.watches:
            self.watches.remove(w)

    def _finish(self, w: _Watch) -> None:
        if not w.done:
            self._forget(w)
            w.request.finish()

    def _cut(self, w: _Watch) -> None:
        """Close the TCP connection after flushing what was written (no terminating chunk)."""
        if not w.done:
            self._forget(w)
            transport = w.request.channel.transport
            # HTTPChannel is registered as the transport's producer, which would
            # postpone loseConnection forever: unregister, then flush and close.
            transport.unregisterProducer()
            transport.loseConnection()

    def _abort(self, w: _Watch) -> None:
        if not w.done:
            self._forget(w)
            w.request.channel.transport.abortConnection()

    def _authorized(self, request: server.Request) -> bool:
        auth = request.getHeader("authorization") or ""
        if self.token and auth == f"Bearer {self.token}":
            return True
        get_peer = getattr(request.channel.transport, "getPeerCertificate", None)
        peer = get_peer() if get_peer else None
        if peer is not None:
            cn = dict(peer.get_subject().get_components()).get(b"CN")
            return cn == CLIENT_CN.encode()
        return False

    def _reply(self, request: server.Request, code: int, body: dict[str, Any], log: Logged) -> bytes:
        log.code = code
        request.setResponseCode(code)
        request.setHeader("content-type", "application/json")
        return json.dumps(body).encode()

    def _handle(self, request: server.Request) -> Any:
        path = request.path.decode()
        params: dict[str, str] = {}
        repeated = []
        for k, vs in request.args.items():
            name = k.decode()
            if len(vs) != 1:
                repeated.append(name)
            params[name] = vs[-1].decode()
        log = Logged(path, params, self._authorized(request))
        self.requests.append(log)
        if self.on_request is not None:
            self.on_request(log)
        if not log.authorized:
            return self._reply(request, 401, _status(401, "Unauthorized", "Unauthorized"), log)
        if request.method != b"GET":
            return self._reply(request, 405, _status(405, "MethodNotAllowed", "only GET is faked"), log)
        parts = [p for p in path.split("/") if p]
        namespace = ""
        if parts == PREFIX + ["hardware"]:
            pass
        elif len(parts) == 6 and parts[:3] == PREFIX and parts[3] == "namespaces" and parts[5] == "hardware":
            namespace = parts[4]
        else:
            return self._reply(request, 404, _status(404, "NotFound", f"the server could not find {path}"), log)
        unknown = sorted(set(params) - _ALLOWED)
        if unknown or repeated:
            return self._reply(request, 400, _status(400, "BadRequest", f"unknown or repeated parameters {unknown + repeated}"), log)
        watch = params.get("watch", "false")
        if watch not in ("true", "1", "false", "0"):
            return self._reply(request, 400, _status(400, "BadRequest", f"invalid watch={watch!r}"), log)
        if watch in ("true", "1"):
            return self._watch(request, namespace, params, log)
        return self._list(request, namespace, params, log)

    def _list(self, request: server.Request, namespace: str, params: dict[str, str], log: Logged) -> Any:
        if "resourceVersion" in params or "allowWatchBookmarks" in params or "timeoutSeconds" in params:
            return self._reply(request, 400, _status(400, "BadRequest", "fake: resourceVersion/allowWatchBookmarks/timeoutSeconds on LIST not implemented"), log)
        limit = 0
        if "limit" in params:
            try:
                limit = int(params["limit"])
                if limit < 0:
                    raise ValueError
            except ValueError:
                return self._reply(request, 400, _status(400, "BadRequest", f"invalid limit {params['limit']!r}"), log)
        store = self.store
        rv, start = store.rv, None
        if params.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(params["continue"]))
                rv, start = int(token["rv"]), tuple(token["start"])
                if token["ns"] != namespace:
                    raise ValueError("continue token for another path")
            except Exception:
                return self._reply(request, 400, _status(400, "BadRequest", "invalid continue token"), log)
            if rv < store.compacted:
                return self._reply(request, 410, _status(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."), log)
        keys = store.keys
        i = bisect.bisect_right(keys, start) if start else 0
        items: list[dict[str, Any]] = []
        cont = ""
        while i < len(keys):
            key = keys[i]
            i += 1
            if namespace and key[0] != namespace:
                continue
            obj = store.at(key, rv)
            if obj is None:
                continue
            items.append(obj)
            if limit and len(items) == limit:
                # Is there anything after this page? (the real server knows; so must we)
                rest = any(
                    (not namespace or k[0] == namespace) and store.at(k, rv) is not None for k in keys[i:]
                )
                if rest:
                    cont = base64.urlsafe_b64encode(
                        json.dumps({"rv": rv, "start": list(key), "ns": namespace}).encode()
                    ).decode()
                break
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
        body = self._reply(request, 200, {"apiVersion": API, "kind": "HardwareList", "metadata": meta, "items": items}, log)
        if self.list_delay > 0:
            def later() -> None:
                if not request._disconnected:
                    request.write(body)
                    request.finish()

            request.setHeader("content-length", str(len(body)))
            self.reactor.callLater(self.list_delay, later)
            return server.NOT_DONE_YET
        return body

    def _watch(self, request: server.Request, namespace: str, params: dict[str, str], log: Logged) -> Any:
        if "limit" in params or "continue" in params:
            return self._reply(request, 400, _status(400, "BadRequest", "limit/continue are not allowed on a watch"), log)
        try:
            since = int(params["resourceVersion"])
            if since <= 0:
                raise ValueError
        except (KeyError, ValueError):
            return self._reply(request, 400, _status(400, "BadRequest", "fake: watch requires a positive resourceVersion"), log)
        bookmarks = params.get("allowWatchBookmarks", "false")
        if bookmarks not in ("true", "false", "1", "0"):
            return self._reply(request, 400, _status(400, "BadRequest", f"invalid allowWatchBookmarks={bookmarks!r}"), log)
        timeout = None
        if "timeoutSeconds" in params:
            try:
                timeout = int(params["timeoutSeconds"])
                if timeout < 0:
                    raise ValueError
            except ValueError:
                return self._reply(request, 400, _status(400, "BadRequest", "invalid timeoutSeconds"), log)
        request.setResponseCode(200)
        request.setHeader("content-type", "application/json")
        w = _Watch(request, namespace, bookmarks in ("true", "1"))
        request.write(b"")  # send the headers now, as the real server does before any event
        if since < self.store.compacted:
            self._send(w, {"type": "ERROR", "object": _status(410, "Expired", f"too old resource version: {since} ({self.store.compacted})")})
            request.finish()
            return server.NOT_DONE_YET
        self.watches.append(w)
        request.notifyFinish().addBoth(lambda _: self._forget(w))
        for rv, kind, obj in self.store.history:
            if rv > since and (not namespace or obj["metadata"]["namespace"] == namespace):
                self._send(w, {"type": kind, "object": obj})
        if timeout:
            w.timer = self.reactor.callLater(timeout, self._finish, w)
        return server.NOT_DONE_YET
