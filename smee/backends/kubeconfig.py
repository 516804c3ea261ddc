"""How to reach the Kubernetes API server: in-cluster service account or a kubeconfig.

Supported (what smee needs and can verify without running anyone's code):

* in-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT``, and the service account
  ``token`` (re-read whenever its mtime/size/inode change: kubelet rotates
  projected tokens), ``ca.crt`` and ``namespace``;
* kubeconfig, ``current-context`` only: ``cluster.server``,
  ``certificate-authority`` / ``certificate-authority-data``,
  ``tls-server-name``, ``user.token`` / ``user.tokenFile`` (re-read like the
  service-account token), ``client-certificate(-data)`` +
  ``client-key(-data)`` (mutual TLS).

Not supported, each refused with an error naming the field rather than
silently connecting without credentials: ``exec`` credential plugins (EKS,
GKE, ``kubelogin``), ``auth-provider`` (OIDC, the old GCP/Azure plugins),
``username``/``password``, and ``insecure-skip-tls-verify: true`` (smee
never talks to an API server it has not verified). Relative paths are
resolved against the kubeconfig's directory, as kubectl does. Only one
kubeconfig file is read (no ``KUBECONFIG=a:b`` merging).

TLS is always verified: against the given CA if there is one (including a
server addressed by IP, which needs an IP SAN), else against the system trust
store.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import ssl
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = [
    "SERVICE_ACCOUNT",
    "ConfigError",
    "KubeConnection",
    "TLSPolicy",
    "TokenFile",
    "load_in_cluster",
    "load_kubeconfig",
]

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
OPTION = "--backend-kube-config"


class ConfigError(ValueError):
    """The Kubernetes connection cannot be configured; ``str()`` names the option and the problem."""


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """Verify the server against ``trust_root`` (a CA, or None for the system store), optionally
    presenting a client certificate; ``server_name`` overrides the name checked (``tls-server-name``)."""

    def __init__(
        self,
        trust_root: ssl.Certificate | None = None,
        client_cert: ssl.PrivateCertificate | None = None,
        server_name: str = "",
    ) -> None:
        self.trust_root = trust_root
        self.client_cert = client_cert
        self.server_name = server_name

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        name = self.server_name or hostname.decode("ascii")
        kwargs: dict[str, Any] = {}
        if self.trust_root is not None:
            kwargs["trustRoot"] = self.trust_root
        if self.client_cert is not None:
            kwargs["clientCertificate"] = self.client_cert
        return ssl.optionsForClientTLS(name, **kwargs)


class TokenFile:
    """A bearer token read from a file, re-read when the file changes (kubelet rotates them)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self._token = ""

    def __call__(self) -> str:
        st = os.stat(self.path)  # OSError propagates: the request fails and is retried
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig != self._sig:
            with open(self.path, encoding="utf-8") as f:
                self._token = f.read().strip()
            self._sig = sig
        return self._token


@dataclass
class KubeConnection:
    """Everything a request to the API server needs."""

    server: str  # "https://10.0.0.1:443", no trailing slash
    headers_fn: Callable[[], dict[str, str]] = field(default=dict)
    tls_policy: IPolicyForHTTPS | None = None
    namespace: str = ""  # the config's default namespace (informational: smee watches all unless told)
    source: str = ""  # "in-cluster" or the kubeconfig path, for messages

    def headers(self) -> dict[str, str]:
        return self.headers_fn()


def _bearer(token: Callable[[], str] | str | None) -> Callable[[], dict[str, str]]:
    if token is None:
        return dict
    if isinstance(token, str):
        fixed = {"Authorization": f"Bearer {token}"}
        return lambda: dict(fixed)
    return lambda: {"Authorization": f"Bearer {token()}"}


def _check_server(server: str, where: str) -> str:
    parts = urlsplit(server)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{where}: server {server!r} is not an http(s) URL")
    return server.rstrip("/")


def _load_ca(pem: bytes, where: str) -> ssl.Certificate:
    try:
        return ssl.Certificate.loadPEM(pem)
    except Exception as e:
        raise ConfigError(f"{where}: not a PEM certificate ({e})") from None


def load_in_cluster(
    root: str = SERVICE_ACCOUNT,
    env: Mapping[str, str] = os.environ,
    api_override: str = "",
) -> KubeConnection:
    """The in-cluster service account, as client-go's ``rest.InClusterConfig`` reads it."""
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not api_override and (not host or not port):
        raise ConfigError(
            f"{OPTION} not given and not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset)"
        )
    if api_override:
        server = _check_server(api_override, "--backend-kube-api")
    else:
        bracketed = f"[{host}]" if ":" in host else host
        server = f"https://{bracketed}:{port}"
    token_path = os.path.join(root, "token")
    ca_path = os.path.join(root, "ca.crt")
    where = f"in-cluster service account ({root})"
    token = TokenFile(token_path)
    try:
        token()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {token_path}: {e.strerror or e}") from None
    try:
        with open(ca_path, "rb") as f:
            ca = _load_ca(f.read(), ca_path)
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {ca_path}: {e.strerror or e}") from None
    namespace = ""
    try:
        with open(os.path.join(root, "namespace"), encoding="utf-8") as f:
            namespace = f.read().strip()
    except OSError:
        pass
    return KubeConnection(
        server=server,
        headers_fn=_bearer(token),
        tls_policy=TLSPolicy(trust_root=ca),
        namespace=namespace,
        source="in-cluster",
    )


def _named(config: Mapping[str, Any], section: str, name: str, key: str, where: str) -> dict[str, Any]:
    entries = config.get(section) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: {section} must be a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key) or {}
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {section}[{name}].{key} must be a mapping")
            return value
    raise ConfigError(f"{where}: no {section[:-1]} named {name!r}")


def _data_or_file(
    section: Mapping[str, Any], data_key: str, file_key: str, base: str, where: str
) -> bytes | None:
    data = section.get(data_key)
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except Exception:
            raise ConfigError(f"{where}: {data_key} is not valid base64") from None
    path = section.get(file_key)
    if path:
        path = os.path.join(base, os.path.expanduser(str(path)))
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(f"{where}: {file_key} {path}: {e.strerror or e}") from None
    return None


def load_kubeconfig(path: str, api_override: str = "", context: str = "") -> KubeConnection:
    """The current context of one kubeconfig file (see the module docstring for what is supported)."""
    import yaml

    where = f"{OPTION} {path}"
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{where}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: not a kubeconfig (expected a mapping)")
    base = os.path.dirname(os.path.abspath(path))
    name = context or config.get("current-context") or ""
    if not name:
        raise ConfigError(f"{where}: no current-context")
    ctx = _named(config, "contexts", name, "context", where)
    cluster_name, user_name = ctx.get("cluster", ""), ctx.get("user", "")
    cluster = _named(config, "clusters", cluster_name, "cluster", where)
    user = _named(config, "users", user_name, "user", where) if user_name else {}

    server = api_override or cluster.get("server") or ""
    if not server:
        raise ConfigError(f"{where}: cluster {cluster_name!r} has no server")
    server = _check_server(server, "--backend-kube-api" if api_override else where)
    if cluster.get("insecure-skip-tls-verify"):
        raise ConfigError(
            f"{where}: cluster {cluster_name!r} sets insecure-skip-tls-verify, which smee refuses:"
            " give its CA (certificate-authority or certificate-authority-data)"
        )
    for unsupported, what in (
        ("exec", "exec credential plugins"),
        ("auth-provider", "auth-provider plugins (OIDC, gcp, azure)"),
        ("username", "basic authentication (username/password)"),
    ):
        if user.get(unsupported):
            raise ConfigError(
                f"{where}: user {user_name!r} uses {what}, which smee does not support;"
                " use a kubeconfig with a bearer token (token/tokenFile) or a client"
                " certificate, e.g. a ServiceAccount token"
            )

    ca_pem = _data_or_file(cluster, "certificate-authority-data", "certificate-authority", base, where)
    ca = _load_ca(ca_pem, f"{where}: cluster {cluster_name!r} CA") if ca_pem else None

    client_cert = None
    cert_pem = _data_or_file(user, "client-certificate-data", "client-certificate", base, where)
    key_pem = _data_or_file(user, "client-key-data", "client-key", base, where)
    if (cert_pem is None) != (key_pem is None):
        raise ConfigError(f"{where}: user {user_name!r} needs both a client certificate and its key")
    if cert_pem is not None and key_pem is not None:
        try:
            client_cert = ssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem)
        except Exception as e:
            raise ConfigError(f"{where}: user {user_name!r} client certificate/key: {e}") from None

    token: Callable[[], str] | str | None = None
    if user.get("token"):
        token = str(user["token"]).strip()
    elif user.get("tokenFile"):
        token_path = os.path.join(base, os.path.expanduser(str(user["tokenFile"])))
        token = TokenFile(token_path)
        try:
            token()
        except OSError as e:
            raise ConfigError(f"{where}: tokenFile {token_path}: {e.strerror or e}") from None
    if token is None and client_cert is None:
        raise ConfigError(f"{where}: user {user_name!r} has no token, tokenFile or client certificate")

    policy: IPolicyForHTTPS | None = None
    if server.startswith("https:"):
        if ca is None and client_cert is None and not cluster.get("tls-server-name"):
            policy = BrowserLikePolicyForHTTPS()  # system trust store
        else:
            policy = TLSPolicy(ca, client_cert, str(cluster.get("tls-server-name") or ""))
    return KubeConnection(
        server=server,
        headers_fn=_bearer(token),
        tls_policy=policy,
        namespace=str(ctx.get("namespace") or ""),
        source=path,
    )


def default_kubeconfig(env: Mapping[str, str] = os.environ) -> str:
    """The file client-go's default loading rules would read first: $KUBECONFIG's first entry, else ~/.kube/config."""
    paths = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if paths:
        return paths[0]
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".kube", "config")
