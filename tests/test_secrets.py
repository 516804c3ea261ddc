"""Secrets never reach smee's log (issue 10, item 7).

Secrets put where operators put them -- kernel arguments (``registry_password=``), URLs with
``user:password@`` (OSIE, iPXE script, chain, metadata and cloud-config URLs), installer data
(``crypted_root_password``), a kubeconfig bearer token, an HTTP inventory URL with
credentials, a client's query string, a machine's own syslog -- then every flow that logs:
DHCP, TFTP, HTTP scripts (and script render errors, which quote the bad value), syslog,
SIGHUP reloads of a broken file, failed and timed-out backend lookups, a 401 / down /
wrong-CA Kubernetes API. At ``--log-level=info`` and at ``debug`` none of the secret
strings may appear in what smee's observer writes.

What ``debug`` adds (and which is redacted the same way): one line per DHCP reply with the
boot file or script URL, per TFTP transfer, per quiet HTTP request; never a script body or
a hardware record. The redaction is in :mod:`smee.logs` (so it covers every component and
Twisted's own lines); the unit tests below pin down what it recognises and what it leaves.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from netns import REPO, TWISTD, Lab, Smee, netns_lab_fixture  # noqa: F401
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from smee.logs import REDACTED, SmeeObserver, redact_text, redact_value

# --- the redaction rules ---------------------------------------------------------------

LEAKS = [
    # (text, the secret in it, what must stay readable)
    ("kernel ${u}/vmlinuz registry_username=robot registry_password=S3cr3tA tink_worker_image=quay.io/t/w:v1",
     "S3cr3tA", "registry_username=robot registry_password=REDACTED tink_worker_image=quay.io/t/w:v1"),
    ("GET http://inv:S3cr3tB@192.0.2.9/api/hardware?mac=52:54:00:00:00:01: connection refused",
     "S3cr3tB", "GET http://inv:REDACTED@192.0.2.9/api/hardware?mac=52:54:00:00:00:01: connection refused"),
    ("chain https://ghp_S3cr3tC@boot.example/x.ipxe", "S3cr3tC", "chain https://REDACTED@boot.example/x.ipxe"),
    ("a password with an @: https://u:p@S3cr3tD@h.example/x", "S3cr3tD", "https://u:REDACTED@h.example/x"),
    ("GET /52:54:00:00:00:01/auto.ipxe?access_token=S3cr3tE&x=1 200", "S3cr3tE", "?access_token=REDACTED&x=1 200"),
    ("pwhash: '$6$salt$S3cr3tF x' contains whitespace", "S3cr3tF", "pwhash: 'REDACTED' contains whitespace"),
    ("installer_data.script: mappingproxy({'registry_password': 'S3cr3tG'}) is not text",
     "S3cr3tG", "{'registry_password': 'REDACTED'}"),
    ('body {"error": "denied", "token": "S3cr3tH"}', "S3cr3tH", '{"error": "denied", "token": "REDACTED"}'),
    ("Authorization: Bearer eyJS3cr3tI.payload.sig", "S3cr3tI", "Authorization: Bearer REDACTED"),
    ("headers {b'authorization': [b'Bearer eyJS3cr3tJ.payload']}", "S3cr3tJ", "headers {b'authorization': "),
    ("--extra-kernel-args: 'registry_password=ab\"S3cr3tK' contains a quote character",
     "S3cr3tK", "'registry_password=REDACTED' contains a quote character"),
    ("client_secret=S3cr3tL, api_key: S3cr3tM", "S3cr3tL", "client_secret=REDACTED"),
    ("client_secret=S3cr3tL, api_key: S3cr3tM", "S3cr3tM", "api_key: REDACTED"),
    ("a" * 100 + "_password=S3cr3tN tail", "S3cr3tN", "_password=REDACTED tail"),  # a long key
    ("İstanbul DB_PASSWORD=S3cr3tO", "S3cr3tO", "İstanbul DB_PASSWORD=REDACTED"),  # lower() changes length
    ("tokentoken=S3cr3tP y", "S3cr3tP", "tokentoken=REDACTED y"),
]

KEPT = [
    "eth1: OFFER 192.0.2.10 to 52:54:00:12:34:56 (xid 0x00001234)",
    "192.0.2.7 GET /52:54:00:12:34:56/auto.ipxe 200 1234 bytes 1.2 ms",
    "LIST continue token expired (410 Expired): restarting the LIST",
    "--backend-kube-config: cannot read /var/run/secrets/kubernetes.io/serviceaccount/token: Permission denied",
    "kube API https://192.0.2.5:6443: 401 Unauthorized; retrying in 0.50s",
    "an empty token=",
    "http://192.0.2.1:8080/auto.ipxe",
    "user@example.com wrote to root@host",
]


@pytest.mark.parametrize("text,secret,kept", LEAKS, ids=[s for _, s, _ in LEAKS])
def test_redact_text_hides_the_secret_and_keeps_the_rest(text: str, secret: str, kept: str) -> None:
    out = redact_text(text)
    assert secret not in out and kept in out, out


@pytest.mark.parametrize("text", KEPT)
def test_redact_text_leaves_ordinary_lines_alone(text: str) -> None:
    assert redact_text(text) == text


def test_redact_value_by_key_name_and_inside_structures() -> None:
    value = {"token": "S3cr3t1", "tokens": 5, "registry_password": "S3cr3t2", "ok": "fine",
             "nested": {"Authorization": "Basic S3cr3t3", "urls": ["http://u:S3cr3t4@h/x"]}, "empty_token": ""}
    out = redact_value(value)
    assert "S3cr3t" not in json.dumps(out)
    assert out["tokens"] == 5 and out["ok"] == "fine" and out["empty_token"] == ""
    assert out["nested"]["urls"] == ["http://u:REDACTED@h/x"] and out["token"] == REDACTED


# --- the observer --------------------------------------------------------------------


def test_observer_redacts_fields_message_and_traceback_in_json_and_text() -> None:
    for tty in (False, True):
        stream = io.StringIO()
        obs = SmeeObserver(stream, "debug", tty=tty, clock=task.Clock())
        obs({"log_format": "using {token} for {url}", "log_level": LogLevel.info, "log_namespace": "smee.x",
             "log_time": 0.0, "token": "S3cr3tT1", "url": "https://u:S3cr3tT2@h.example/x",
             "extra": {"password": "S3cr3tT3"}})
        try:
            raise ValueError("GET https://u:S3cr3tT4@h.example/: registry_password=S3cr3tT5")
        except ValueError:
            failure = Failure()
        obs({"log_format": "lookup failed", "log_level": LogLevel.error, "log_namespace": "smee.x",
             "log_time": 0.0, "log_failure": failure})
        obs({"log_format": "{log_text}", "log_text": "legacy line Bearer S3cr3tT6abcdef", "log_level": LogLevel.info,
             "log_namespace": "log_legacy", "log_time": 0.0})
        out = stream.getvalue()
        assert "S3cr3t" not in out, out
        assert "using REDACTED for https://u:REDACTED@h.example/x" in out
        assert "ValueError" in out and "Bearer REDACTED" in out


# --- in-process backends: HTTP inventory and Kubernetes ----------------------------------


@contextmanager
def captured(level: str) -> Iterator[io.StringIO]:
    """Everything smee's observer would write at ``level``, for the duration."""
    stream = io.StringIO()
    obs = SmeeObserver(stream, level, tty=False, clock=task.Clock())
    globalLogPublisher.addObserver(obs)
    try:
        yield stream
    finally:
        globalLogPublisher.removeObserver(obs)


class _Refusing:
    def get(self, url: str, headers: Any = None) -> defer.Deferred[Any]:
        return defer.fail(ConnectionRefusedError("Connection was refused by other side: 111"))


class _Hanging:
    def get(self, url: str, headers: Any = None) -> defer.Deferred[Any]:
        return defer.Deferred()


class _Echoing:
    """An inventory service that answers 500 and echoes the credentials it was given."""

    def get(self, url: str, headers: Any = None) -> defer.Deferred[Any]:
        body = json.dumps({"error": "unauthorized", "token": "S3cr3t-inv-body", "url": url}).encode()
        response = SimpleNamespace(code=500, length=len(body), headers=SimpleNamespace(getRawHeaders=lambda _n: None))
        response.content = lambda: defer.succeed(body)
        return defer.succeed(response)


@pytest.mark.parametrize("level", ["info", "debug"])
def test_http_backend_credentials_never_logged(level: str) -> None:
    from smee.backends.http import HTTPBackend

    base = "http://inventory:S3cr3t-inv-pass@192.0.2.9:8080/api"
    with captured(level) as out:
        for client in (_Refusing(), _Echoing(), _Hanging()):
            clock = task.Clock()
            backend = HTTPBackend(client, base, clock, timeout=2.0)
            d = backend.by_mac("52:54:00:00:00:01")
            clock.advance(3)
            errors: list[Failure] = []
            d.addErrback(errors.append)
            assert errors, "the lookup should have failed"
    text = out.getvalue()
    assert "hardware lookup failed" in text and "192.0.2.9" in text, text
    assert "S3cr3t" not in text, text


def _kubeconfig(path: Path, server: str, ca_pem: bytes, token: str) -> Path:
    import base64

    import yaml

    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server,
                                                "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    return path


async def _eventually(predicate: Any, timeout: float = 10.0) -> None:
    from twisted.internet import reactor

    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await task.deferLater(reactor, 0.02)
    raise AssertionError(f"timed out waiting for {predicate}")


@pytest_twisted.ensureDeferred
async def test_kube_token_never_logged(tmp_path: Path) -> None:
    """A 401 (the token is wrong), the API going down, a wrong CA: the bearer token stays out of the log."""
    from kube_fake import PKI, FakeAPIServer, hardware
    from twisted.internet import reactor

    from smee.backends import LookupFailed
    from smee.backends.kube import KubeBackend
    from smee.backends.kubeconfig import ConfigError, load_kubeconfig

    token = "S3cr3t-kube-token-0123456789abcdef"
    fake = FakeAPIServer(reactor, token="the-right-one")
    fake.add(hardware("a", "02:00:00:00:00:01", "192.0.2.21"))
    fake.start()
    backends: list[KubeBackend] = []
    try:
        with captured("debug") as out:
            good = _kubeconfig(tmp_path / "kubeconfig", fake.url, fake.pki.ca_pem, token)
            settings = SimpleNamespace(backend_kube_api="", backend_kube_config=str(good),
                                       backend_kube_namespace="", backend_kube_sync_timeout=0.3)
            KubeBackend.from_settings(settings, reactor)  # logs where it connects, not how
            b = KubeBackend.from_connection(load_kubeconfig(str(good)), reactor, backoff_initial=0.05,
                                            backoff_cap=0.1, sync_timeout=0.3)
            backends.append(b)
            b.startService()
            await _eventually(lambda: b.state()["reconnects"] >= 2)
            with pytest.raises(LookupFailed):
                await b.by_mac("02:00:00:00:00:01")
            await fake.stop()  # down
            reconnects = b.state()["reconnects"]
            await _eventually(lambda: b.state()["reconnects"] >= reconnects + 2)
            fake.listen()
            wrong_ca = _kubeconfig(tmp_path / "wrong-ca", fake.url, PKI.generate().ca_pem, token)
            w = KubeBackend.from_connection(load_kubeconfig(str(wrong_ca)), reactor, backoff_initial=0.05,
                                            backoff_cap=0.1, sync_timeout=0.3)
            backends.append(w)
            w.startService()
            await _eventually(lambda: w.state()["reconnects"] >= 1)
            broken = tmp_path / "broken"
            broken.write_text(f"users:\n- name: u\n  user:\n    token: {token}: oops\n")
            with pytest.raises(ConfigError) as e:
                load_kubeconfig(str(broken))
            KubeBackend.log.error("{error}", error=str(e.value))  # as a caller would log it (no snippet of the line)
        text = out.getvalue()
        assert "401" in text and "retrying" in text and "not valid YAML" in text, text
        assert token not in text and "S3cr3t" not in text, text
    finally:
        for backend in backends:
            if backend.running:
                await backend.stopService()
        await fake.stop()


# --- a real twistd smee with secret-laden hardware, every component, in a namespace --------

SERVER, CLIENT, RELAY = "192.0.2.1", "192.0.2.31", "192.0.2.2"
EXTRA_KARGS = "registry_username=robot registry_password=S3cr3t-kargs-4e1f tink_worker_image=quay.io/t/tink-worker:v1"


def _macs(n: int) -> str:
    return f"52:54:00:aa:00:{n:02x}"


def _crd(name: str, n: int, instance: dict[str, Any] | None = None, osie: str = "") -> dict[str, Any]:
    netboot: dict[str, Any] = {"allowPXE": True, "allowWorkflow": True}
    if osie:
        netboot["osie"] = {"baseURL": osie}
    spec: dict[str, Any] = {
        "metadata": {"facility": {"facility_code": "lab1"}},
        "interfaces": [{"dhcp": {"mac": _macs(n), "hostname": name, "arch": "x86_64",
                                 "ip": {"address": f"192.0.2.{30 + n}", "netmask": "255.255.255.0"}},
                        "netboot": netboot}],
    }
    if instance:
        spec["metadata"]["instance"] = {"id": f"id-{name}", "allow_pxe": True, **instance}
    return {"apiVersion": "tinkerbell.org/v1alpha1", "kind": "Hardware", "metadata": {"name": name}, "spec": spec}


def _hardware(reload_secret: str = "") -> str:
    import yaml

    docs = [
        _crd("m1", 1, {"userdata": "#cloud-config\npassword: S3cr3t-userdata-1d9a\n"},
             osie="http://hook:S3cr3t-hwosie-07e2@192.0.2.5/hook"),
        _crd("m2", 2, {"operating_system": {"slug": "custom_ipxe"},
                       "ipxe_script_url": "https://boot:S3cr3t-meta-b3c9@boot.example/m2.ipxe"}),
        _crd("m3", 3, {"operating_system": {"distro": "nixos", "installer_data": {
            "system": "abc-nixos-system-x86_64", "crypted_root_password": "$6$salt$S3cr3t-pwhash-5d10 x"}}}),
        _crd("m4", 4, {"operating_system": {"distro": "rancher", "installer_data": {
            "cloud_config_url": "https://cfg:S3cr3t-cfg-6a4b@cfg.example/a b"}}}),
        _crd("m5", 5, {"operating_system": {"slug": "custom_ipxe", "installer_data": {
            "script": {"registry_password": "S3cr3t-dict-8f2e"}}}}),
    ]
    if reload_secret:  # not an http(s) URL: the whole file is refused and the error names the value
        docs.append(_crd("m6", 6, {"ipxe_script_url": f"ftp://u:{reload_secret}@x.example/y"}))
    return yaml.safe_dump_all(docs)


def _dhcp_datagrams() -> list[bytes]:
    """Relayed DISCOVERs: a PXE ROM and iPXE for every machine, and an unknown MAC."""
    from smee.dhcp.packet import BOOTREQUEST, Packet, build

    def discover(mac: str, ipxe: bool) -> bytes:
        opts = {53: b"\x01", 60: b"PXEClient:Arch:00007:UNDI:003016", 93: b"\x00\x07", 94: b"\x01\x03\x10",
                97: bytes(17)}
        if ipxe:
            opts[77] = b"iPXE"
        chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
        return build(Packet(BOOTREQUEST, 1, 6, hops=1, xid=0x5EC0 + len(mac), giaddr=bytes(map(int, RELAY.split("."))),
                            chaddr=chaddr, options=opts))

    return [discover(_macs(n), ipxe) for n in range(1, 6) for ipxe in (False, True)] + [
        discover("52:54:00:ff:ff:01", True)]


_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
for hexdata in sys.argv[4:]:
    s.sendto(bytes.fromhex(hexdata), (sys.argv[3].split(':')[0], int(sys.argv[3].split(':')[1])))
"""

SECRETS = [
    "S3cr3t-kargs-4e1f", "S3cr3t-osieurl-91ab", "S3cr3t-scripturl-2c7d", "S3cr3t-hwosie-07e2", "S3cr3t-meta-b3c9",
    "S3cr3t-pwhash-5d10", "S3cr3t-cfg-6a4b", "S3cr3t-dict-8f2e", "S3cr3t-userdata-1d9a", "S3cr3t-query-3b8c",
    "S3cr3t-header-9e0f", "S3cr3t-syslog-c4d5", "S3cr3t-reload-e6f7",
]


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("level", ["info", "debug"])
def test_no_secret_in_the_log_of_a_whole_flow(netns_lab: Lab, level: str) -> None:
    lab = netns_lab
    lab.require("curl")
    srv, cli = lab.namespace("srv"), lab.namespace("cli")
    s_if, c_if = lab.veth(srv, cli, b_mac=_macs(1))
    srv.addr(s_if, f"{SERVER}/24")
    cli.addr(c_if, f"{RELAY}/24")
    cli.addr(c_if, f"{CLIENT}/24")  # m1's address: TFTP and HTTP by IP
    ipxe = lab.path("ipxe")
    ipxe.mkdir()
    (ipxe / "ipxe.efi").write_bytes(b"\0" * 2048)
    hw = lab.path("hardware.yaml")
    hw.write_text(_hardware())
    argv = [str(TWISTD), "-n", "--pidfile=", "--logger=smee.logs.observer", "smee", f"--log-level={level}",
            "--backend-file-enabled=true", f"--backend-file-path={hw}", f"--public-ip={SERVER}",
            f"--dhcp-iface={s_if}", "--http-port=80", f"--ipxe-dir={ipxe}", f"--extra-kernel-args={EXTRA_KARGS}",
            "--osie-url=http://osie:S3cr3t-osieurl-91ab@192.0.2.5/osie",
            "--dhcp-http-ipxe-script-url=http://ipxe:S3cr3t-scripturl-2c7d@192.0.2.1/auto.ipxe"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEE_")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    workdir = lab.path("smee.cwd")
    workdir.mkdir()
    smee = Smee("smee", srv, argv, lab.path("smee.log"), env=env, cwd=workdir)
    lab.processes.append(smee)
    lab.defer(f"stop smee (pid {smee.pid})", lambda: smee.stop(timeout=10))
    for proto, port in (("udp", 67), ("udp", 69), ("tcp", 80), ("udp", 514)):
        smee.wait_listening(port, proto)

    # DHCP: relayed DISCOVERs (replies go unicast to the relay address in the client namespace)
    cli.run(sys.executable, "-c", _SEND, RELAY, "67", f"{SERVER}:67", *(d.hex() for d in _dhcp_datagrams()))
    # TFTP: a binary and the generated autoexec.ipxe (which holds the script URL)
    for name in ("ipxe.efi", "autoexec.ipxe", "no-such-file"):
        cli.run("curl", "-sS", "--max-time", "10", "--interface", CLIENT, "-o", "/dev/null", f"tftp://{SERVER}/{name}",
                check=False, timeout=20)
    # HTTP: scripts (fine, and with render errors), a secret in the query, an Authorization header
    for n in range(1, 6):
        cli.run("curl", "-sS", "--max-time", "10", "--interface", CLIENT, "-o", "/dev/null",
                "-H", "Authorization: Bearer S3cr3t-header-9e0f",
                f"http://{SERVER}/{_macs(n)}/auto.ipxe?token=S3cr3t-query-3b8c", check=False, timeout=20)
    cli.run("curl", "-sS", "--max-time", "10", "-o", "/dev/null", f"http://{SERVER}/52:54:00:ff:ff:01/auto.ipxe",
            check=False, timeout=20)
    # syslog: the machine's installer logs a credential
    cli.run(sys.executable, "-c", _SEND, CLIENT, "0", f"{SERVER}:514",
            b"<14>1 - hook - - - - docker login ok registry_password=S3cr3t-syslog-c4d5".hex())
    smee.wait_for(r"docker login ok", 10)
    # SIGHUP with a file that is refused (its error quotes the bad URL), then with a good one
    hw.write_text(_hardware(reload_secret="S3cr3t-reload-e6f7"))
    os.kill(smee.pid, signal.SIGHUP)
    smee.wait_for(r"keeping (?:all|\d+) records", 10)
    hw.write_text(_hardware())
    os.kill(smee.pid, signal.SIGHUP)
    smee.wait_for(r"readable again|reloaded hardware", 10)
    assert smee.stop(timeout=20) == 0, smee.describe()

    text = smee.text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    messages = "\n".join(r["message"] for r in lines)
    # the flows happened (else "no secret" would prove nothing)
    assert f"cannot write the script for {_macs(3)}" in messages, messages
    assert f"cannot write the script for {_macs(4)}" in messages, messages
    assert f"cannot write the script for {_macs(5)}" in messages, messages
    assert "auto.ipxe?token=REDACTED" in messages and "docker login ok" in messages, messages
    assert any(r["level"] == "debug" for r in lines) == (level == "debug")
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secrets in the {level} log: {leaked}\n" + "\n".join(
        line for line in text.splitlines() if any(s in line for s in leaked))
