"""Options parsing, precedence and the service tree (smee.tap, smee.config)."""

from __future__ import annotations

import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from smee import config
from smee.tap import Options, makeService

REPO = Path(__file__).resolve().parent.parent
PUBLIC = IPv4Address("192.0.2.1")
HW = """\
52:54:00:00:00:01:
  ipAddress: 192.0.2.10
  subnetMask: 255.255.255.0
  netboot: {allowPxe: true}
"""


@pytest.fixture
def hwfile(tmp_path: Path) -> str:
    path = tmp_path / "hardware.yaml"
    path.write_text(HW)
    return str(path)


def parse(args: list[str], environ: dict[str, str] | None = None, detect=lambda iface: PUBLIC) -> Options:
    options = Options(environ=environ or {}, detect_ip=detect)
    options.parseOptions(args)
    return options


def file_args(path: str) -> list[str]:
    return ["--backend-file-enabled=true", f"--backend-file-path={path}"]


def test_defaults_follow_smee(hwfile: str) -> None:
    s = parse(file_args(hwfile)).settings
    assert s.dhcp_mode == "reservation"
    assert s.dhcp_addr == (IPv4Address("0.0.0.0"), 67)
    assert s.dhcp_ip_for_packet == PUBLIC and s.tftp_addr == PUBLIC and s.http_addr == PUBLIC
    assert s.dhcp_http_ipxe_script_host == "192.0.2.1"
    assert (s.tftp_port, s.http_port, s.syslog_port) == (69, 8080, 514)
    assert s.tftp_timeout == 5.0 and s.tftp_block_size == 512
    assert s.dhcp_http_ipxe_script_path == "/auto.ipxe" and s.dhcp_http_ipxe_script_prepend_mac is True
    assert s.ipxe_script_retries == 0 and s.ipxe_script_retry_delay == 2
    assert s.dhcp_iface == () and s.trusted_proxies == ()
    assert s.log_level == "info"


def test_every_setting_is_an_option_with_env_name() -> None:
    options = Options(environ={})
    names = {p[0] for p in options.optParameters}
    for s in config.SETTINGS:
        assert s.name in names
        assert s.env == "SMEE_" + s.name.upper().replace("-", "_")


def test_value_types(hwfile: str) -> None:
    s = parse(
        file_args(hwfile)
        + [
            "--dhcp-iface=eth1,eth2",
            "--trusted-proxies=192.0.2.0/28, 192.0.2.77",
            "--tftp-timeout=1m30s",
            "--dhcp-addr=192.0.2.1:1067",
            "--dhcp-http-ipxe-script-host=boot.example.org",
            "--dhcp-http-ipxe-script-prepend-mac=false",
        ]
    ).settings
    assert s.dhcp_iface == ("eth1", "eth2")
    assert s.trusted_proxies == (IPv4Network("192.0.2.0/28"), IPv4Network("192.0.2.77/32"))
    assert s.tftp_timeout == 90.0
    assert s.dhcp_addr == (IPv4Address("192.0.2.1"), 1067)
    assert s.dhcp_http_ipxe_script_host == "boot.example.org"
    assert s.dhcp_http_ipxe_script_prepend_mac is False


@pytest.mark.parametrize(
    "args, option",
    [
        (["--dhcp-ip-for-packet=192.0.2"], "--dhcp-ip-for-packet"),
        (["--public-ip=not-an-ip"], "--public-ip"),
        (["--dhcp-addr=192.0.2.1"], "--dhcp-addr"),
        (["--dhcp-addr=192.0.2.1:70000"], "--dhcp-addr"),
        (["--dhcp-mode=bogus"], "--dhcp-mode"),
        (["--dhcp-enabled=maybe"], "--dhcp-enabled"),
        (["--tftp-port=0"], "--tftp-port"),
        (["--tftp-timeout=soon"], "--tftp-timeout"),
        (["--tftp-timeout=0s"], "--tftp-timeout"),
        (["--tftp-block-size=100"], "--tftp-block-size"),
        (["--tftp-block-size=70000"], "--tftp-block-size"),
        (["--osie-url=ftp://x/"], "--osie-url"),
        (["--dhcp-http-ipxe-script-url=not a url"], "--dhcp-http-ipxe-script-url"),
        (["--dhcp-http-ipxe-script-path=auto.ipxe"], "--dhcp-http-ipxe-script-path"),
        (["--dhcp-http-ipxe-script-host=bad host!"], "--dhcp-http-ipxe-script-host"),
        (["--trusted-proxies=192.0.2.0/33"], "--trusted-proxies"),
        (["--trusted-proxies=2001:db8::/32"], "--trusted-proxies"),
        (["--dhcp-iface=averyveryverylongname0"], "--dhcp-iface"),
        (["--log-level=loud"], "--log-level"),
        (["--ipxe-script-retries=-1"], "--ipxe-script-retries"),
        (["--backend-noop-enabled=true"], "--backend-noop-enabled"),
        (["--backend-noop-enabled=true", "--dhcp-mode=auto-proxy", "--backend-kube-enabled=true"], "--backend-kube-enabled"),
    ],
)
def test_invalid_values_name_the_option(hwfile: str, args: list[str], option: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        parse(file_args(hwfile) + args)
    assert str(e.value).startswith(option + ":"), str(e.value)


def test_two_backends_at_once(hwfile: str) -> None:
    with pytest.raises(usage.UsageError, match="only one backend"):
        parse(file_args(hwfile) + ["--backend-noop-enabled=true", "--dhcp-mode=auto-proxy"])
    with pytest.raises(usage.UsageError, match="only one backend"):
        parse(file_args(hwfile) + ["--backend-kube-enabled=true"])


def test_file_backend_turns_kube_off(hwfile: str) -> None:
    assert config.backend_name(parse(file_args(hwfile)).settings) == "file"


def test_missing_hardware_file(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match=r"^--backend-file-path: .*does not exist"):
        parse(file_args(str(tmp_path / "nope.yaml")))
    with pytest.raises(usage.UsageError, match=r"^--backend-file-path: required"):
        parse(["--backend-file-enabled=true"])


def test_kube_is_the_default_backend() -> None:
    assert config.backend_name(parse([]).settings) == "kube"


def test_http_backend_needs_a_url() -> None:
    with pytest.raises(usage.UsageError, match=r"^--backend-http-url: required"):
        parse(["--backend-http-enabled=true"])
    assert config.backend_name(parse(["--backend-http-enabled=true", "--backend-http-url=http://192.0.2.5/inv"]).settings) == "http"


def test_undetectable_public_ip(hwfile: str) -> None:
    with pytest.raises(usage.UsageError, match=r"^--public-ip: could not detect"):
        parse(file_args(hwfile), detect=lambda iface: None)


def test_public_ip_interface_is_passed_to_detection(hwfile: str) -> None:
    seen = []
    parse(file_args(hwfile) + ["--public-ip-interface=eth9"], detect=lambda iface: seen.append(iface) or PUBLIC)
    assert seen == ["eth9"]


def test_no_detection_when_every_address_is_set(hwfile: str) -> None:
    def detect(iface: str) -> IPv4Address:
        raise AssertionError("detection must not run")

    s = parse(file_args(hwfile) + ["--public-ip=192.0.2.5"], detect=detect).settings
    assert s.tftp_addr == IPv4Address("192.0.2.5")
    assert s.dhcp_http_ipxe_binary_host == "192.0.2.5"


def test_public_ip_override_feeds_defaults_but_not_explicit_values(hwfile: str) -> None:
    s = parse(file_args(hwfile) + ["--public-ip=192.0.2.5", "--tftp-addr=192.0.2.6"]).settings
    assert s.dhcp_ip_for_packet == IPv4Address("192.0.2.5")
    assert s.tftp_addr == IPv4Address("192.0.2.6")


def test_precedence_flag_env_file_default(hwfile: str, tmp_path: Path) -> None:
    cfg = tmp_path / "smee.yaml"
    cfg.write_text("dhcp-mode: proxy\ntftp_port: 6969\nhttp-port: 8081\nsyslog-port: 5514\ndhcp-iface: [eth1, eth2]\n")
    env = {"SMEE_DHCP_MODE": "auto-proxy", "SMEE_TFTP_PORT": "7070", "SMEE_CONFIG": str(cfg)}
    o = parse(file_args(hwfile) + ["--dhcp-mode=reservation"], environ=env)
    s = o.settings
    assert s.dhcp_mode == "reservation" and o.origin["dhcp-mode"] == "flag"  # flag > env > file
    assert s.tftp_port == 7070 and o.origin["tftp-port"] == "SMEE_TFTP_PORT"  # env > file
    assert s.http_port == 8081 and o.origin["http-port"] == "config file"  # file > default
    assert s.dhcp_iface == ("eth1", "eth2")  # YAML lists become comma lists
    assert s.dhcp_tftp_port == 69 and o.origin["dhcp-tftp-port"] == "default"


def test_config_flag_beats_env_config(hwfile: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("http-port: 1001\n")
    b.write_text("http-port: 1002\n")
    s = parse(file_args(hwfile) + [f"--config={a}"], environ={"SMEE_CONFIG": str(b)}).settings
    assert s.http_port == 1001


def test_bad_env_value_names_option_and_source(hwfile: str) -> None:
    with pytest.raises(usage.UsageError, match=r"^--dhcp-mode: .*\(from SMEE_DHCP_MODE\)"):
        parse(file_args(hwfile), environ={"SMEE_DHCP_MODE": "wrong"})


@pytest.mark.parametrize(
    "content, message",
    [
        ("dhcp-mode: [", "not valid YAML"),
        ("- a\n- b\n", "must be a YAML map"),
        ("dhcp-moed: proxy\n", "unknown setting 'dhcp-moed'"),
        ("tftp-port: nope\n", r"^--tftp-port: .*\(from config file\)"),
    ],
)
def test_bad_config_file(hwfile: str, tmp_path: Path, content: str, message: str) -> None:
    cfg = tmp_path / "smee.yaml"
    cfg.write_text(content)
    with pytest.raises(usage.UsageError, match=message):
        parse(file_args(hwfile) + [f"--config={cfg}"])


def test_missing_config_file(hwfile: str, tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match=r"^--config: cannot read"):
        parse(file_args(hwfile) + [f"--config={tmp_path / 'missing.yaml'}"])


def test_unknown_smee_env_is_reported(hwfile: str) -> None:
    o = parse(file_args(hwfile), environ={"SMEE_DHCP_MOED": "x", "OTHER": "y"})
    assert o.warnings == ["ignoring unknown environment variable SMEE_DHCP_MOED"]


def test_make_service_tree(hwfile: str) -> None:
    top = makeService(parse(file_args(hwfile)), reactor=Clock())
    backend = top.getServiceNamed("backend")
    assert backend.name == "backend" and backend.kind == "file" and backend.state()["records"] == 1
    names = [svc.name for svc in top]
    assert names[0] == "backend"
    assert len(names) == len(set(names))


def test_make_service_with_broken_file_exits_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "hw.yaml"
    bad.write_text("52:54:00:00:00:01:\n  ipAddress: 192.0.2.300\n  subnetMask: 255.255.255.0\n")
    options = parse(file_args(str(bad)))
    with pytest.raises(SystemExit) as e:
        makeService(options, reactor=Clock())
    assert str(e.value).startswith("smee: --backend-file-path: ") and "hw.yaml:" in str(e.value)


def twistd(*args: str, cwd: str = "/") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    exe = str(Path(sys.executable).with_name("twistd"))
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, option",
    [
        (["--dhcp-mode=bogus"], "--dhcp-mode"),
        (["--backend-file-enabled=true", "--backend-file-path=/nonexistent/hw.yaml", "--public-ip=192.0.2.1"], "--backend-file-path"),
    ],
)
def test_twistd_usage_error_exits_nonzero_without_traceback(args: list[str], option: str) -> None:
    result = twistd("-n", "--pidfile=", "smee", *args)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert f": {option}: " in last, last


def test_twistd_broken_hardware_file_exits_nonzero_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "hw.yaml"
    bad.write_text("52:54:00:00:00:01: {ipAddress: x, subnetMask: 255.255.255.0}\n")
    result = twistd("-n", "--pidfile=", "smee", *file_args(str(bad)), "--public-ip=192.0.2.1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "smee: --backend-file-path: " in result.stderr
