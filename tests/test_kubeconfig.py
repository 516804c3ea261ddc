"""Kubernetes connection config: in-cluster service account and kubeconfig parsing."""

from __future__ import annotations

import base64
import os
import time
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
import yaml
from kube_fake import PKI, FakeAPIServer, hardware
from twisted.internet import task

from smee.backends.kube import KubeBackend
from smee.backends.kubeconfig import (
    ConfigError,
    TLSPolicy,
    TokenFile,
    load_in_cluster,
    load_kubeconfig,
)


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI.generate()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write(path: Any, data: str | bytes) -> str:
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)
    return str(path)


def _kubeconfig(tmp_path: Any, cluster: dict[str, Any], user: dict[str, Any], namespace: str = "") -> str:
    ctx: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        ctx["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "ctx",
        "contexts": [{"name": "other", "context": {"cluster": "nope", "user": "nope"}}, {"name": "ctx", "context": ctx}],
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
    }
    return _write(tmp_path / "config", yaml.safe_dump(config))


def _rotate(path: str, token: str) -> None:
    before = os.stat(path).st_mtime_ns
    _write(path, token)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a different mtime even on coarse clocks


# --- in-cluster ----------------------------------------------------------------


def _service_account(tmp_path: Any, pki: PKI, token: str = "tok-1") -> str:
    root = tmp_path / "sa"
    root.mkdir()
    _write(root / "token", token + "\n")
    _write(root / "ca.crt", pki.ca_pem)
    _write(root / "namespace", "tink-system")
    return str(root)


def test_in_cluster_reads_env_token_ca_namespace_and_rereads_a_rotated_token(tmp_path: Any, pki: PKI) -> None:
    root = _service_account(tmp_path, pki)
    conn = load_in_cluster(root, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert conn.server == "https://10.96.0.1:443"
    assert conn.namespace == "tink-system" and conn.source == "in-cluster"
    assert conn.headers() == {"Authorization": "Bearer tok-1"}
    assert isinstance(conn.tls_policy, TLSPolicy) and conn.tls_policy.trust_root is not None
    _rotate(os.path.join(root, "token"), "tok-2")
    assert conn.headers() == {"Authorization": "Bearer tok-2"}


def test_in_cluster_ipv6_host_and_api_override(tmp_path: Any, pki: PKI) -> None:
    root = _service_account(tmp_path, pki)
    conn = load_in_cluster(root, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert conn.server == "https://[fd00::1]:6443"
    conn = load_in_cluster(root, {}, api_override="https://127.0.0.1:1234/")
    assert conn.server == "https://127.0.0.1:1234"


def test_in_cluster_errors_name_the_problem(tmp_path: Any, pki: PKI) -> None:
    with pytest.raises(ConfigError, match="--backend-kube-config not given and not running in a cluster"):
        load_in_cluster(str(tmp_path), {})
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="cannot read .*token"):
        load_in_cluster(str(tmp_path), env)
    _write(tmp_path / "token", "t")
    _write(tmp_path / "ca.crt", "not a cert")
    with pytest.raises(ConfigError, match="ca.crt: not a PEM certificate"):
        load_in_cluster(str(tmp_path), env)


@pytest_twisted.ensureDeferred
async def test_in_cluster_token_rotation_reaches_the_api_server(tmp_path: Any) -> None:
    from twisted.internet import reactor

    fake = FakeAPIServer(reactor, token="tok-1")
    fake.add(hardware("a", "02:00:00:00:00:01"))
    fake.start()
    root = _service_account(tmp_path, fake.pki, "tok-1")
    conn = load_in_cluster(root, {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(fake.port_number)})
    b = KubeBackend.from_connection(conn, reactor, backoff_initial=0.05, backoff_cap=0.1)
    try:
        b.startService()
        assert (await b.by_mac("02:00:00:00:00:01")) is not None
        fake.token = "tok-2"  # the old token is revoked...
        _rotate(os.path.join(root, "token"), "tok-2")  # ...and kubelet has written the new one
        fake.drop_watches()
        fake.add(hardware("b", "02:00:00:00:00:02"))
        deadline = time.monotonic() + 5
        while b.state()["records"] != 2:
            assert time.monotonic() < deadline, b.state()
            await task.deferLater(reactor, 0.01)
        assert all(r.authorized for r in fake.requests)
    finally:
        await b.stopService()
        await fake.stop()


# --- kubeconfig -------------------------------------------------------------


def test_kubeconfig_ca_data_and_token(tmp_path: Any, pki: PKI) -> None:
    path = _kubeconfig(
        tmp_path,
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": _b64(pki.ca_pem)},
        {"token": "abc"},
        namespace="tink",
    )
    conn = load_kubeconfig(path)
    assert conn.server == "https://127.0.0.1:6443" and conn.namespace == "tink" and conn.source == path
    assert conn.headers() == {"Authorization": "Bearer abc"}
    assert isinstance(conn.tls_policy, TLSPolicy) and conn.tls_policy.client_cert is None
    assert load_kubeconfig(path, api_override="https://10.0.0.1:443").server == "https://10.0.0.1:443"


def test_kubeconfig_relative_files_client_cert_and_token_file(tmp_path: Any, pki: PKI) -> None:
    _write(tmp_path / "ca.pem", pki.ca_pem)
    _write(tmp_path / "client.pem", pki.client_pem)
    _write(tmp_path / "client.key", pki.client_key_pem)
    _write(tmp_path / "token", "from-file\n")
    path = _kubeconfig(
        tmp_path,
        {"server": "https://127.0.0.1:6443", "certificate-authority": "ca.pem"},
        {"client-certificate": "client.pem", "client-key": "client.key", "tokenFile": "token"},
    )
    conn = load_kubeconfig(path)
    assert conn.headers() == {"Authorization": "Bearer from-file"}
    assert conn.tls_policy.client_cert is not None  # type: ignore[union-attr]
    _rotate(str(tmp_path / "token"), "rotated")
    assert conn.headers() == {"Authorization": "Bearer rotated"}


def test_kubeconfig_client_cert_data_only(tmp_path: Any, pki: PKI) -> None:
    path = _kubeconfig(
        tmp_path,
        {"server": "https://127.0.0.1:6443", "certificate-authority-data": _b64(pki.ca_pem)},
        {"client-certificate-data": _b64(pki.client_pem), "client-key-data": _b64(pki.client_key_pem)},
    )
    conn = load_kubeconfig(path)
    assert conn.headers() == {} and conn.tls_policy.client_cert is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "user, message",
    [
        ({"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1beta1"}}, "exec credential plugins, which smee does not support"),
        ({"auth-provider": {"name": "oidc"}}, "auth-provider plugins"),
        ({"username": "admin", "password": "x"}, "basic authentication"),
        ({}, "has no token, tokenFile or client certificate"),
        ({"client-certificate-data": "Zm9v"}, "needs both a client certificate and its key"),
    ],
)
def test_kubeconfig_unsupported_auth_is_a_clear_error(tmp_path: Any, pki: PKI, user: dict[str, Any], message: str) -> None:
    path = _kubeconfig(tmp_path, {"server": "https://127.0.0.1:6443", "certificate-authority-data": _b64(pki.ca_pem)}, user)
    with pytest.raises(ConfigError, match=message) as e:
        load_kubeconfig(path)
    assert str(e.value).startswith(f"--backend-kube-config {path}: ")


def test_kubeconfig_refuses_insecure_skip_tls_verify_and_bad_input(tmp_path: Any) -> None:
    path = _kubeconfig(tmp_path, {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}, {"token": "t"})
    with pytest.raises(ConfigError, match="insecure-skip-tls-verify, which smee refuses"):
        load_kubeconfig(path)
    with pytest.raises(ConfigError, match="No such file"):
        load_kubeconfig(str(tmp_path / "missing"))
    path = _kubeconfig(tmp_path, {"server": "ftp://x"}, {"token": "t"})
    with pytest.raises(ConfigError, match="not an http"):
        load_kubeconfig(path)
    path = _kubeconfig(tmp_path, {"server": "https://x", "certificate-authority-data": "!!"}, {"token": "t"})
    with pytest.raises(ConfigError, match="certificate-authority-data is not valid base64"):
        load_kubeconfig(path)
    _write(tmp_path / "config", "current-context: nope\ncontexts: []\n")
    with pytest.raises(ConfigError, match="no context named 'nope'"):
        load_kubeconfig(str(tmp_path / "config"))


def test_from_settings_turns_config_errors_into_one_line_exits(tmp_path: Any, monkeypatch: Any) -> None:
    from twisted.internet import reactor

    path = _kubeconfig(tmp_path, {"server": "https://127.0.0.1:6443"}, {"exec": {"command": "x"}})
    settings = SimpleNamespace(backend_kube_config=path, backend_kube_api="", backend_kube_namespace="", backend_kube_sync_timeout=10.0)
    with pytest.raises(SystemExit, match=r"^smee: --backend-kube-config .*exec credential plugins"):
        KubeBackend.from_settings(settings, reactor)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    settings.backend_kube_config = ""
    with pytest.raises(SystemExit, match="not running in a cluster"):
        KubeBackend.from_settings(settings, reactor)


def test_from_settings_builds_a_backend(tmp_path: Any, pki: PKI) -> None:
    from twisted.internet import reactor

    path = _kubeconfig(tmp_path, {"server": "https://127.0.0.1:6443", "certificate-authority-data": _b64(pki.ca_pem)}, {"token": "t"})
    settings = SimpleNamespace(backend_kube_config=path, backend_kube_api="", backend_kube_namespace="tink", backend_kube_sync_timeout=3.0)
    b = KubeBackend.from_settings(settings, reactor)
    assert b.kind == "kube" and b.namespace == "tink" and b._sync_timeout == 3.0
    assert b.url == "https://127.0.0.1:6443/apis/tinkerbell.org/v1alpha1/namespaces/tink/hardware"
    assert not b.running


def test_token_file_missing_raises_oserror(tmp_path: Any) -> None:
    with pytest.raises(OSError):
        TokenFile(str(tmp_path / "none"))()
