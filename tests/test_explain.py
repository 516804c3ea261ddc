"""``smee explain``: the offline per-stage explanation of what one machine gets (smee.explain)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from smee.dhcp import options as opt
from smee.dhcp.classify import classify
from smee.explain import decode_option, discover, dns_names, main, render_text

REPO = Path(__file__).resolve().parent.parent
PUBLIC = IPv4Address("192.0.2.1")
BIOS, UEFI, DENIED, ESXI, UNKNOWN = (
    "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03", "52:54:00:00:00:04", "52:54:00:00:00:99",
)
CUSTOM_URL = "http://192.0.2.5:8080/custom/uefi-node-02.ipxe"

HARDWARE = f"""\
{BIOS}:
  ipAddress: 192.0.2.11
  subnetMask: 255.255.255.0
  defaultGateway: 192.0.2.1
  nameServers: [192.0.2.53, 192.0.2.54]
  hostname: bios-node-01
  domainName: lab.example.com
  domainSearch: [lab.example.com, example.com]
  arch: x86_64
  netboot:
    allowPxe: true
{UEFI}:
  ipAddress: 192.0.2.12
  subnetMask: 255.255.255.0
  vlanID: "100"
  leaseTime: 43200
  arch: x86_64
  uefi: true
  netboot:
    allowPxe: true
    ipxeScriptUrl: {CUSTOM_URL}
{DENIED}:
  ipAddress: 192.0.2.13
  subnetMask: 255.255.255.0
  arch: aarch64
  netboot:
    allowPxe: false
"""

# A Tinkerbell Hardware object: the only input format here with an OS to dispatch on.
ESXI_HARDWARE = f"""\
apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: esxi01
spec:
  metadata:
    instance:
      id: esxi01
      allow_pxe: true
      operating_system:
        slug: vmware_esxi_7_0
        distro: vmware
  interfaces:
    - dhcp:
        mac: {ESXI}
        arch: x86_64
        uefi: true
        ip:
          address: 192.0.2.14
          netmask: 255.255.255.0
      netboot:
        allowPXE: true
"""

#: Stand-ins for the iPXE builds: explain only reports their size and digest.
BINARIES = {"undionly.kpxe": b"bios-ipxe" * 10, "ipxe.efi": b"efi-ipxe" * 20, "snp.efi": b"arm-ipxe" * 30}


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, str]:
    hardware = tmp_path / "hardware"
    hardware.mkdir()
    (hardware / "machines.yaml").write_text(HARDWARE)
    (hardware / "esxi.yaml").write_text(ESXI_HARDWARE)
    ipxe = tmp_path / "ipxe"
    ipxe.mkdir()
    for name, data in BINARIES.items():
        (ipxe / name).write_bytes(data)
    return {"hardware": str(hardware), "ipxe": str(ipxe), "tmp": str(tmp_path)}


def smee_args(setup: dict[str, str]) -> list[str]:
    return [
        "--public-ip=192.0.2.1",
        "--backend-file-enabled=true",
        f"--backend-file-path={setup['hardware']}",
        f"--ipxe-dir={setup['ipxe']}",
    ]


def run(setup: dict[str, str], *args: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main([*smee_args(setup), *args], environ=environ or {}, detect_ip=lambda iface: PUBLIC, out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def report(setup: dict[str, str], *args: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    status, out, err = run(setup, "--json", *args, environ=environ)
    data = json.loads(out)
    assert data["exit_status"] == status and not err
    return data


def stage(data: dict[str, Any], number: int) -> dict[str, Any]:
    found = data["stages"][number - 1]
    assert found["stage"] == number
    return found


def options(st: dict[str, Any]) -> dict[int, str]:
    return {o["code"]: o["value"] for o in st.get("options", ())}


# --- the machines ------------------------------------------------------------


def test_bios_machine_every_stage(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", BIOS)
    assert data["exit_status"] == 0 and data["mode"] == "reservation"
    assert data["client"]["arch"] == 0 and "uefi false" in data["client"]["arch_from"]

    dhcp = stage(data, 1)
    assert dhcp["status"] == "offer"
    assert dhcp["facts"]["yiaddr"] == "192.0.2.11" and dhcp["facts"]["siaddr"] == "192.0.2.1"
    assert dhcp["facts"]["file"] == "undionly.kpxe"
    o = options(dhcp)
    assert o[1] == "255.255.255.0" and o[3] == "192.0.2.1" and o[6] == "192.0.2.53, 192.0.2.54"
    assert o[12] == "'bios-node-01'" and o[15] == "'lab.example.com'"
    assert o[51] == "86400 s (1 day)" and o[53] == "OFFER" and o[54] == "192.0.2.1"
    assert o[119] == "lab.example.com, example.com"
    assert o[43].startswith("6 discovery control=08")

    tftp = stage(data, 2)
    assert tftp["status"] == "served" and tftp["facts"]["gate"].startswith("allowed: IP 192.0.2.11")
    data_ = BINARIES["undionly.kpxe"]
    assert f"{len(data_)} bytes, sha256 {hashlib.sha256(data_).hexdigest()[:16]}" in tftp["facts"]["content"]
    assert tftp["facts"]["autoexec.ipxe"].startswith("not asked for")  # BIOS undionly does not fetch it

    ipxe = stage(data, 3)
    assert "user class 'iPXE'" in ipxe["facts"]["request"]
    assert ipxe["facts"]["file"] == f"http://192.0.2.1:8080/{BIOS}/auto.ipxe"

    script = stage(data, 4)
    assert script["status"] == "200" and script["facts"]["installer"] == "default"
    assert script["scripts"]["auto.ipxe"].startswith("#!ipxe")
    assert f"worker_id={BIOS}" in script["scripts"]["auto.ipxe"]


def test_uefi_machine_with_custom_script_url(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", UEFI)
    assert data["client"]["arch"] == 7
    dhcp = stage(data, 1)
    assert dhcp["facts"]["file"] == "ipxe.efi"
    assert "116 VLAN id='100'" in options(dhcp)[43] and options(dhcp)[51] == "43200 s (12 hours)"

    tftp = stage(data, 2)
    assert tftp["status"] == "served" and tftp["facts"]["autoexec.ipxe"].startswith("served")
    assert f"chain --autofree {CUSTOM_URL} ||" in tftp["scripts"]["autoexec.ipxe"]

    ipxe = stage(data, 3)
    assert "user class 'Tinkerbell'" in ipxe["facts"]["request"]
    assert ipxe["facts"]["file"] == CUSTOM_URL  # reservation mode gives the record's own URL

    script = stage(data, 4)
    assert script["status"] == "external" and "ipxe_url" in script["summary"]


def test_custom_script_url_in_proxy_mode_is_smees_custom_ipxe_script(setup: dict[str, str]) -> None:
    """Proxy DHCP hands out smee's global URL; smee's script then chains to the record's URL."""
    data = report(setup, "--mac", UEFI, "--dhcp-mode=proxy")
    assert stage(data, 3)["facts"]["file"] == f"http://192.0.2.1:8080/{UEFI}/auto.ipxe"
    script = stage(data, 4)
    assert script["status"] == "200" and script["facts"]["installer"] == "custom ipxe"
    assert f"chain --autofree {CUSTOM_URL}" in script["scripts"]["auto.ipxe"]


def test_allow_pxe_false_machine(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", DENIED)
    assert data["exit_status"] == 0  # explained: the machine is known, it just may not netboot
    assert data["client"]["arch"] == 11  # aarch64
    dhcp = stage(data, 1)
    assert dhcp["status"] == "offer" and dhcp["facts"]["file"] == "(none)" and dhcp["facts"]["siaddr"] == "0.0.0.0"
    assert "netboot not allowed" in dhcp["summary"] and 43 not in options(dhcp)
    tftp = stage(data, 2)
    assert tftp["status"] == "not-reached"
    assert tftp["facts"]["gate"].startswith("access violation: netboot not allowed for " + DENIED)
    assert [stage(data, n)["status"] for n in (3, 4)] == ["not-reached", "not-reached"]


def test_allow_pxe_false_gets_no_reply_in_proxy_mode(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", DENIED, "--dhcp-mode=proxy")
    dhcp = stage(data, 1)
    assert dhcp["status"] == "no-reply" and dhcp["facts"]["outcome"] == "not-allowed"


def test_unknown_mac(setup: dict[str, str]) -> None:
    status, out, err = run(setup, "--mac", UNKNOWN)
    assert status == 1 and not err
    assert f"error: no hardware record has MAC {UNKNOWN}" in out
    assert "no reply to DISCOVER from 52:54:00:00:00:99: unknown MAC" in out
    assert "Traceback" not in out


def test_duplicate_records_are_a_backend_error(setup: dict[str, str]) -> None:
    """Two records claiming one MAC: the servers give no answer, and explain says why (exit 1)."""
    Path(setup["hardware"], "copy.yaml").write_text(HARDWARE.split(f"{UEFI}:")[0])
    data = report(setup, "--mac", BIOS)
    assert data["exit_status"] == 1 and "claimed by 2 interfaces" in data["error"]
    assert stage(data, 1)["status"] == "no-reply" and "backend lookup failed" in stage(data, 1)["summary"]


def test_unknown_mac_in_auto_proxy_is_served_and_not_an_error(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", UNKNOWN, "--dhcp-mode=auto-proxy", "--arch=7")
    assert data["exit_status"] == 0 and "auto-proxy mode answers it anyway" in data["error"]
    assert stage(data, 1)["status"] == "offer" and stage(data, 1)["facts"]["file"] == "ipxe.efi"
    assert stage(data, 2)["status"] == "served"
    # autoexec.ipxe leaves the MAC to iPXE in proxy modes; explain fills it in.
    assert "${net${idx}/mac}" in stage(data, 2)["scripts"]["autoexec.ipxe"]
    script = stage(data, 4)
    assert script["facts"]["request"] == f"GET http://192.0.2.1:8080/{UNKNOWN}/auto.ipxe"
    # ... and the HTTP server answers with Smee's static Hook script
    assert script["status"] == "200" and "set worker_id ${mac}" in script["scripts"]["auto.ipxe"]


def test_proxy_mode(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", BIOS, "--dhcp-mode=proxy")
    dhcp = stage(data, 1)
    assert dhcp["status"] == "offer" and "(proxy)" in dhcp["summary"]
    assert dhcp["facts"]["yiaddr"] == "0.0.0.0" and dhcp["facts"]["sname"] == "192.0.2.1"
    o = options(dhcp)
    assert o[60] == "'PXEClient'" and o[97].startswith("type 0,") and 1 not in o and 51 not in o
    assert stage(data, 2)["facts"]["gate"] == "allowed: proxy mode serves without a hardware lookup"
    assert stage(data, 4)["status"] == "200"


def test_uefi_http_boot(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", BIOS, "--client", "http")
    assert data["client"]["arch"] == 16
    dhcp = stage(data, 1)
    assert dhcp["facts"]["file"] == f"http://192.0.2.1:8080/ipxe/{BIOS}/ipxe.efi" and options(dhcp)[60] == "'HTTPClient'"
    fetch = stage(data, 2)
    assert fetch["title"] == "HTTP (iPXE binary)" and fetch["status"] == "200"
    assert fetch["scripts"]["autoexec.ipxe"].startswith("#!ipxe")
    assert stage(data, 4)["status"] == "200"


def test_ipxe_rom_gets_the_script_url_directly(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", BIOS, "--client", "ipxe")
    assert stage(data, 1)["facts"]["file"] == f"http://192.0.2.1:8080/{BIOS}/auto.ipxe"
    assert stage(data, 2)["status"] == "skipped" and stage(data, 3)["status"] == "skipped"
    assert stage(data, 4)["status"] == "200"


def test_ipxe_rom_chainload_ends_after_one_round(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", BIOS, "--client", "ipxe", "--dhcp-ipxe-rom-chainload=true")
    assert stage(data, 1)["facts"]["file"] == f"tftp://192.0.2.1:69/{BIOS}/undionly.kpxe"
    assert stage(data, 2)["status"] == "served"
    # TFTP recorded the chainload, so our binary's "iPXE" DHCP gets the script.
    assert stage(data, 3)["facts"]["file"] == f"http://192.0.2.1:8080/{BIOS}/auto.ipxe"


def test_linux_client_gets_a_lease_and_no_boot_file(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", BIOS, "--client", "linux")
    dhcp = stage(data, 1)
    assert dhcp["status"] == "offer" and dhcp["facts"]["file"] == "(none)" and "not a netboot client" in dhcp["summary"]
    assert all(stage(data, n)["status"] == "not-reached" for n in (2, 3, 4))


def test_missing_binary_is_reported(setup: dict[str, str]) -> None:
    os.remove(os.path.join(setup["ipxe"], "ipxe.efi"))
    data = report(setup, "--mac", UEFI)
    assert any("no ipxe.efi" in w for w in data["warnings"])
    assert stage(data, 1)["facts"]["file"] == "(none)" and "no iPXE binary for arch 7" in stage(data, 1)["summary"]


def test_installer_chosen_by_slug_and_its_500(setup: dict[str, str]) -> None:
    failing = report(setup, "--mac", ESXI, "--dhcp-mode=proxy")
    script = stage(failing, 4)
    assert script["status"] == "500" and script["facts"]["installer"] == "slug vmware_esxi_7_0"
    assert "base_url" in script["summary"]  # no mirror: the ScriptError names the field
    working = report(setup, "--mac", ESXI, "--dhcp-mode=proxy", "--osie-url=http://192.0.2.5/osie")
    script = stage(working, 4)
    assert script["status"] == "200" and "vmware" in script["scripts"]["auto.ipxe"]


def test_script_server_disabled(setup: dict[str, str]) -> None:
    data = report(setup, "--mac", BIOS, "--http-ipxe-script-enabled=false")
    assert stage(data, 4)["status"] == "404" and "--http-ipxe-script-enabled is false" in stage(data, 4)["summary"]


def test_settings_follow_env_and_config_precedence(setup: dict[str, str]) -> None:
    config = Path(setup["tmp"], "smee.yaml")
    config.write_text("dhcp-mode: auto-proxy\n")
    assert report(setup, "--mac", BIOS, f"--config={config}")["mode"] == "auto-proxy"
    env = {"SMEE_DHCP_MODE": "proxy", "SMEE_CONFIG": str(config)}
    assert report(setup, "--mac", BIOS, environ=env)["mode"] == "proxy"
    assert report(setup, "--mac", BIOS, "--dhcp-mode=reservation", environ=env)["mode"] == "reservation"


def test_text_output_has_a_heading_per_stage(setup: dict[str, str]) -> None:
    status, out, _ = run(setup, "--mac", BIOS.upper().replace(":", "-"))  # any MAC notation
    assert status == 0
    headings = [line for line in out.splitlines() if line.startswith("== ")]
    assert headings == [
        "== 1. DHCP (firmware PXE ROM) ==",
        "== 2. TFTP ==",
        "== 3. DHCP (iPXE, user class iPXE) ==",
        "== 4. HTTP (iPXE script) ==",
    ]
    assert "    119 domain search      lab.example.com, example.com" in out
    assert "  | #!ipxe" in out


# --- usage errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mac", "52:54:00:zz:00:01"], "--mac: '52:54:00:zz:00:01' is not a MAC address"),
        ([], "--mac is required"),
        (["--mac", BIOS, "--client", "bios"], "--client: 'bios' is not one of"),
        (["--mac", BIOS, "--arch", "x86"], "--arch: 'x86' is not an option 93 value"),
        (["--mac", BIOS, "--dhcp-mode", "nope"], "--dhcp-mode: 'nope' is not one of"),
    ],
)
def test_usage_errors(setup: dict[str, str], args: list[str], message: str) -> None:
    status, out, err = run(setup, *args)
    assert status == 2 and not out
    assert err.startswith("smee explain: ") and message in err


# --- the pieces --------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, arch, user_class, expected",
    [
        ("pxe", 7, "", ("PXEClient", True, False, "ipxe.efi")),
        ("pxe", 0, "", ("PXEClient", True, False, "undionly.kpxe")),
        ("ipxe", 0, "iPXE", ("PXEClient", True, True, "undionly.kpxe")),
        ("ipxe", 11, "Tinkerbell", ("PXEClient", True, True, "snp.efi")),
        ("http", 16, "", ("HTTPClient", True, False, "ipxe.efi")),
        ("linux", 0, "", ("", False, False, None)),
    ],
)
def test_synthetic_requests_classify_like_real_clients(kind: str, arch: int, user_class: str, expected: tuple) -> None:
    client = classify(discover(BIOS, arch, kind, user_class))
    assert (client.client_type, client.is_netboot, client.is_ipxe, client.binary if client.is_netboot else None) == expected
    if user_class:
        assert client.user_class == user_class and client.ipxe_version == b"\x01\x00\x00"


def test_dns_names_with_compression() -> None:
    raw = b"\x03lab\x07example\x03com\x00\x04test\xc0\x04"
    assert dns_names(raw) == ["lab.example.com", "test.example.com"]
    assert decode_option(opt.DOMAIN_SEARCH, b"\x03lab\xc0") == "03:6c:61:62:c0"  # malformed: hex


def test_decode_option() -> None:
    assert decode_option(opt.DNS, bytes([192, 0, 2, 53, 192, 0, 2, 54])) == "192.0.2.53, 192.0.2.54"
    assert decode_option(opt.LEASE_TIME, (90).to_bytes(4, "big")) == "90 s"
    assert decode_option(opt.CLIENT_GUID, b"") == "(empty)"
    assert decode_option(200, b"\x01\x02") == "01:02"


def test_render_text_of_a_bare_report() -> None:
    text = render_text({"mac": BIOS, "mode": "proxy", "backend": {"backend": "noop", "records": 0}, "stages": []})
    assert text == f"smee explain {BIOS}: proxy mode, noop (0 records)\n"


# --- the command -------------------------------------------------------------


def test_python_dash_m_smee_explain(setup: dict[str, str]) -> None:
    """The real command line: exit statuses, and never a traceback for expected errors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEE_")}

    def smee(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smee", *args], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )

    ok = smee("explain", "--mac", BIOS, *smee_args(setup))
    assert ok.returncode == 0, ok.stderr
    assert "== 4. HTTP (iPXE script) ==" in ok.stdout and "result: 200" in ok.stdout

    unknown = smee("explain", "--mac", UNKNOWN, *smee_args(setup))
    assert unknown.returncode == 1 and "no hardware record has MAC" in unknown.stdout

    bad = smee("explain", "--mac", "not-a-mac", *smee_args(setup))
    assert bad.returncode == 2 and "is not a MAC address" in bad.stderr

    broken = Path(setup["tmp"], "broken.yaml")
    broken.write_text(f"{BIOS}:\n  ipAddress: 999.0.2.1\n")
    unreadable = smee("explain", "--mac", BIOS, "--public-ip=192.0.2.1", "--backend-file-enabled=true",
                      f"--backend-file-path={broken}")
    assert unreadable.returncode == 1 and "broken.yaml" in unreadable.stderr

    nothing = smee()
    assert nothing.returncode == 2 and "usage: smee COMMAND" in nothing.stderr

    for result in (ok, unknown, bad, unreadable, nothing):
        assert "Traceback" not in result.stdout + result.stderr
