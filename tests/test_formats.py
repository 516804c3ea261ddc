"""Hardware file formats: Smee YAML, Tinkerbell Hardware manifests, Tink JSON."""

from __future__ import annotations

import json
import pickle
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from smee.formats import HardwareFileError, ParseResult, load_file, parse_text
from smee.hardware import DEFAULT_LEASE_TIME, Hardware

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IP = IPv4Address


def one(text: str, path: str = "hw.yaml") -> Hardware:
    result = parse_text(text, path)
    assert len(result.hardware) == 1, result
    return result.hardware[0]


def error(text: str, path: str = "hw.yaml") -> HardwareFileError:
    with pytest.raises(HardwareFileError) as info:
        parse_text(text, path)
    return info.value


# ------------------------------------------------------------------ Smee YAML

# Smee's own TestTranslate record (internal/backend/file), addresses moved to TEST-NET-1.
SMEE_RECORD = """\
# comment line 1
52:54:00:aa:bb:cc:
  ipAddress: 192.0.2.150
  subnetMask: 255.255.255.0
  defaultGateway: 192.0.2.1
  nameServers: [192.0.2.53, 192.0.2.54]
  ntpServers: [192.0.2.123]
  hostname: smee-test-client
  domainName: example.com
  broadcastAddress: 192.0.2.255
  domainSearch: [example.com, lab.example.com]
  vlanID: "100"
  leaseTime: 86400
  arch: x86_64
  disabled: false
  netboot:
    allowPxe: true
    ipxeScriptUrl: http://boot.netboot.xyz
    ipxeScript: |
      #!ipxe
      echo hello
    console: ttyS0
    facility: onprem
"""


def test_smee_record_all_fields() -> None:
    hw = one(SMEE_RECORD)
    assert hw.id == "52:54:00:aa:bb:cc"
    assert hw.facility == "onprem"
    assert hw.source == "hw.yaml:2"
    assert hw.instance is None
    (iface,) = hw.interfaces
    assert iface.mac == "52:54:00:aa:bb:cc"
    assert (iface.ip, iface.netmask, iface.gateway, iface.broadcast) == (
        IP("192.0.2.150"), IP("255.255.255.0"), IP("192.0.2.1"), IP("192.0.2.255"))
    assert iface.dns_servers == (IP("192.0.2.53"), IP("192.0.2.54"))
    assert iface.ntp_servers == (IP("192.0.2.123"),)
    assert iface.hostname == "smee-test-client"
    assert iface.domain_name == "example.com"
    assert iface.domain_search == ("example.com", "lab.example.com")
    assert iface.vlan_id == "100"
    assert iface.lease_time == 86400
    assert iface.arch == "x86_64"
    assert iface.disable_dhcp is False
    assert iface.allow_pxe is True
    assert iface.ipxe_url == "http://boot.netboot.xyz"
    assert iface.ipxe_script == "#!ipxe\necho hello\n"
    assert iface.console == "ttyS0"


def test_smee_field_names_are_case_insensitive() -> None:
    hw = one("52:54:00:aa:bb:cc: {IPADDRESS: 192.0.2.1, subnetmask: 24, NetBoot: {ALLOWPXE: true, Facility: x}}\n")
    assert hw.interfaces[0].ip == IP("192.0.2.1")
    assert hw.interfaces[0].netmask == IP("255.255.255.0")
    assert hw.interfaces[0].allow_pxe is True
    assert hw.facility == "x"


def test_smee_extensions() -> None:
    hw = one("""\
52:54:00:aa:bb:cc:
  ipAddress: 192.0.2.2
  subnetMask: 255.255.255.0
  uefi: true
  netboot:
    allowWorkflow: true
    osie: {baseURL: "http://192.0.2.5/hook", kernel: vmlinuz, initrd: initramfs}
""")
    iface = hw.interfaces[0]
    assert iface.uefi is True and iface.allow_workflow is True and iface.allow_pxe is False
    assert (iface.osie.base_url, iface.osie.kernel, iface.osie.initrd) == ("http://192.0.2.5/hook", "vmlinuz", "initramfs")


def test_smee_unknown_keys_are_warnings_with_lines() -> None:
    result = parse_text("""\
52:54:00:aa:bb:cc:
  ipAddress: 192.0.2.2
  subnetMask: 255.255.255.0
  gatway: 192.0.2.1
  netboot:
    allowPXE: true
    pxe: true
""", "smee.yaml")
    assert len(result.hardware) == 1
    assert result.hardware[0].interfaces[0].allow_pxe is True  # allowPXE matches allowPxe
    assert result.warnings == (
        "smee.yaml:4: unknown key 'gatway' in record 52:54:00:aa:bb:cc (ignored)",
        "smee.yaml:7: unknown key 'pxe' in 52:54:00:aa:bb:cc netboot (ignored)",
    )


def test_smee_same_field_in_two_spellings_is_an_error() -> None:
    e = error("52:54:00:aa:bb:cc:\n  ipAddress: 192.0.2.2\n  IPAddress: 192.0.2.3\n  subnetMask: 24\n")
    assert e.line == 3 and "case-insensitive" in e.message


def test_duplicate_mac_is_a_warning() -> None:
    result = parse_text("52:54:00:aa:bb:cc: {ipAddress: 192.0.2.2, subnetMask: 24}\n"
                        "52-54-00-AA-BB-CC: {ipAddress: 192.0.2.3, subnetMask: 24}\n", "d.yaml")
    assert len(result.hardware) == 2
    assert result.warnings == ("d.yaml:2: MAC 52:54:00:aa:bb:cc is also used by the record at d.yaml:1; "
                               "lookups for it will be refused as ambiguous",)


def test_yaml_merge_keys_and_anchors() -> None:
    result = parse_text("""\
52:54:00:00:00:01: &base
  ipAddress: 192.0.2.2
  subnetMask: 255.255.255.0
  leaseTime: 600
52:54:00:00:00:02:
  <<: *base
  ipAddress: 192.0.2.3
""")
    first, second = result.hardware
    assert second.interfaces[0].ip == IP("192.0.2.3")
    assert second.interfaces[0].lease_time == 600
    assert second.source == "<string>:5"


# ----------------------------------------------------- Tinkerbell manifests

CRD_MULTI = """\
apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: sm01
  namespace: tink-system
spec:
  bmcRef: {apiGroup: bmc.tinkerbell.org, kind: Machine, name: bmc-sm01}
  disks: [{device: /dev/nvme0n1}]
  resources: {cpu: "32"}
  userData: "#cloud-config"
  metadata:
    state: provisioning
    manufacturer: {id: m1, slug: supermicro}
    facility: {facility_code: lab1, plan_slug: c3.small.x86, plan_version_slug: v1}
    instance:
      id: inst-1
      state: active
      hostname: sm01
      allow_pxe: true
      rescue: false
      always_pxe: true
      ipxe_script_url: http://192.0.2.5/custom.ipxe
      userdata: "#cloud-config\\nhostname: sm01\\n"
      crypted_root_password: "$6$x"
      tags: [a]
      operating_system:
        slug: ubuntu_22_04
        distro: ubuntu
        version: 22.04
        image_tag: latest
        installer: custom_ipxe
        installer_data: {chain: "http://192.0.2.5/x.ipxe", script: "", nested: {list: [1, 2]}}
  interfaces:
    - dhcp:
        mac: 52:54:00:00:01:01
        hostname: sm01
        lease_time: 7200
        name_servers: [192.0.2.53]
        time_servers: [192.0.2.123]
        arch: x86_64
        uefi: true
        iface_name: eth0
        vlan_id: "42"
        ip: {address: 192.0.2.21, netmask: 255.255.255.0, gateway: 192.0.2.1, family: 4}
      netboot:
        allowPXE: true
        allowWorkflow: true
        ipxe: {url: "https://boot.example.com/sm01.ipxe", contents: "#!ipxe\\nexit\\n"}
        osie: {baseURL: "http://192.0.2.5/hook", kernel: vmlinuz, initrd: initramfs}
    - dhcp:
        mac: 52:54:00:00:01:11
      disableDhcp: true
status:
  state: ""
---
apiVersion: tinkerbell.org/v1alpha1
kind: Hardware
metadata:
  name: rpi02
spec:
  interfaces:
    - dhcp: {mac: 52:54:00:00:01:02, arch: aarch64}
      netboot: {allowPXE: true}
"""


def test_crd_multi_document() -> None:
    result = parse_text(CRD_MULTI, "k8s.yaml")
    assert result.warnings == ()
    sm01, rpi = result.hardware
    assert (sm01.id, sm01.source) == ("tink-system/sm01", "k8s.yaml:1")
    assert (rpi.id, rpi.source) == ("rpi02", "k8s.yaml:56")
    assert (sm01.state, sm01.manufacturer, sm01.facility, sm01.plan) == (
        "provisioning", "supermicro", "lab1", "c3.small.x86")
    first, second = sm01.interfaces
    assert first.mac == "52:54:00:00:01:01"
    assert (first.ip, first.netmask, first.gateway) == (IP("192.0.2.21"), IP("255.255.255.0"), IP("192.0.2.1"))
    assert first.hostname == "sm01" and first.lease_time == 7200
    assert first.dns_servers == (IP("192.0.2.53"),) and first.ntp_servers == (IP("192.0.2.123"),)
    assert (first.arch, first.uefi, first.iface_name, first.vlan_id) == ("x86_64", True, "eth0", "42")
    assert first.allow_pxe and first.allow_workflow and not first.disable_dhcp
    assert first.ipxe_url == "https://boot.example.com/sm01.ipxe"
    assert first.ipxe_script == "#!ipxe\nexit\n"
    assert first.osie.base_url == "http://192.0.2.5/hook"
    assert second.mac == "52:54:00:00:01:11" and second.disable_dhcp and second.ip is None
    assert second.lease_time == DEFAULT_LEASE_TIME and not second.allow_pxe
    inst = sm01.instance
    assert inst is not None
    assert (inst.id, inst.state, inst.hostname) == ("inst-1", "active", "sm01")
    assert inst.allow_pxe and inst.always_pxe and not inst.rescue
    assert inst.ipxe_script_url == "http://192.0.2.5/custom.ipxe"
    assert inst.userdata == "#cloud-config\nhostname: sm01\n"
    os_ = inst.operating_system
    assert (os_.slug, os_.distro, os_.version, os_.image_tag, os_.installer) == (
        "ubuntu_22_04", "ubuntu", "22.04", "latest", "custom_ipxe")
    assert os_.installer_data["chain"] == "http://192.0.2.5/x.ipxe"
    # proxy-only machine: no reservation, no metadata
    (iface,) = rpi.interfaces
    assert iface.ip is None and iface.netmask is None and iface.allow_pxe
    assert rpi.instance is None and rpi.facility == ""


def test_unquoted_numbers_keep_their_text() -> None:
    hw = one(CRD_MULTI.split("---")[0])
    assert hw.instance is not None
    assert hw.instance.operating_system.version == "22.04"
    text = CRD_MULTI.split("---")[0].replace("version: 22.04", "version: 20.10")
    assert one(text).instance.operating_system.version == "20.10"  # type: ignore[union-attr]


KUBECTL_LIST = """\
apiVersion: v1
items:
- apiVersion: tinkerbell.org/v1alpha1
  kind: Hardware
  metadata: {name: a, namespace: ns}
  spec:
    interfaces:
    - dhcp: {mac: "52:54:00:00:00:0a", ip: {address: 192.0.2.10, netmask: 255.255.255.0}}
- metadata: {name: b}
  spec:
    interfaces:
    - dhcp: {mac: "52:54:00:00:00:0b"}
kind: List
metadata:
  resourceVersion: ""
"""


def test_crd_list_as_kubectl_prints_it() -> None:
    a, b = parse_text(KUBECTL_LIST, "list.yaml").hardware
    assert (a.id, a.source, a.interfaces[0].ip) == ("ns/a", "list.yaml:3", IP("192.0.2.10"))
    assert (b.id, b.source) == ("b", "list.yaml:9")


def test_crd_list_as_json() -> None:
    doc = {"apiVersion": "tinkerbell.org/v1alpha1", "kind": "HardwareList", "items": [
        {"metadata": {"name": "a"}, "spec": {"interfaces": [{"dhcp": {"mac": "52:54:00:00:00:0a"}}]}},
        {"metadata": {"name": "b"}, "spec": {"interfaces": [{"dhcp": {"mac": "52:54:00:00:00:0b"}}]}},
    ]}
    result = parse_text(json.dumps(doc, indent=2), "list.json")
    assert [(h.id, h.source) for h in result.hardware] == [("a", "list.json:5"), ("b", "list.json:19")]


def test_crd_list_item_of_another_kind_is_an_error() -> None:
    e = error(KUBECTL_LIST.replace("- metadata: {name: b}", "- kind: Pod\n  metadata: {name: b}"))
    assert e.line == 9 and "Pod" in e.message


# ------------------------------------------------------------------- Tink JSON

TINK = [
    {
        "id": "0eba0bf8-3772-4b4a-ab9f-6ebe93b90a94",
        "metadata": {
            "state": "provisioning",
            "manufacturer": {"slug": "dell"},
            "facility": {"facility_code": "lab1", "plan_slug": "c3.medium.x86"},
            "instance": {
                "id": "i-1", "hostname": "worker-01", "allow_pxe": True,
                "operating_system": {"slug": "ubuntu_20_04", "distro": "ubuntu", "version": "20.04",
                                     "installer_data": {"chain": "", "script": "", "list": [1, {"a": 2}]}},
            },
        },
        "network": {"interfaces": [{
            "dhcp": {"mac": "52:54:00:00:02:01", "arch": "x86_64", "uefi": False, "lease_time": 3600,
                     "name_servers": ["192.0.2.53"], "time_servers": [], "iface_name": "eth0",
                     "ip": {"address": "192.0.2.31", "netmask": "255.255.255.0", "gateway": "192.0.2.1"}},
            "netboot": {"allow_pxe": True, "allow_workflow": True,
                        "ipxe": {"url": "http://192.0.2.5/x.ipxe", "contents": ""},
                        "osie": {"base_url": "http://192.0.2.5/osie", "kernel": "vmlinuz", "initrd": "initrd"}},
        }]},
    },
    {
        "id": "c6a2a5c3",
        "network": {"interfaces": [{
            "dhcp": {"mac": "52:54:00:00:02:02", "hostname": "own-name",
                     "ip": {"address": "192.0.2.32", "netmask": "255.255.255.0"}},
            "netboot": {"allowPXE": True, "osie": {"baseURL": "http://ignored.example"}},
        }]},
        "metadata": {"instance": {"hostname": "instance-name"}},
    },
]


def test_tink_json_array() -> None:
    result = parse_text(json.dumps(TINK, indent=2), "tink.json")
    first, second = result.hardware
    assert (first.id, first.source) == ("0eba0bf8-3772-4b4a-ab9f-6ebe93b90a94", "tink.json:2")
    assert (first.state, first.manufacturer, first.facility, first.plan) == (
        "provisioning", "dell", "lab1", "c3.medium.x86")
    iface = first.interfaces[0]
    assert iface.hostname == "worker-01"  # from metadata.instance.hostname, as Boots did
    assert (iface.mac, iface.ip, iface.lease_time, iface.iface_name) == (
        "52:54:00:00:02:01", IP("192.0.2.31"), 3600, "eth0")
    assert iface.allow_pxe and iface.allow_workflow
    assert iface.ipxe_url == "http://192.0.2.5/x.ipxe"
    assert iface.osie.base_url == "http://192.0.2.5/osie"
    assert first.instance is not None and first.instance.allow_pxe
    assert (first.instance.operating_system.slug, first.instance.operating_system.distro) == ("ubuntu_20_04", "ubuntu")
    # dhcp.hostname wins; CRD spellings are not Tink spellings
    iface2 = second.interfaces[0]
    assert iface2.hostname == "own-name"
    assert not iface2.allow_pxe and iface2.osie.base_url == ""
    assert second.source.startswith("tink.json:")


def test_tink_single_object_and_as_yaml() -> None:
    hw = one(json.dumps(TINK[0]), "one.json")
    assert hw.source == "one.json:1"
    hw_yaml = one(json.dumps(TINK[0], indent=1), "one.yaml")
    assert hw_yaml.interfaces == hw.interfaces and hw_yaml.instance == hw.instance


def test_installer_data_is_immutable() -> None:
    hw = parse_text(json.dumps(TINK), "t.json").hardware[0]
    data = hw.instance.operating_system.installer_data  # type: ignore[union-attr]
    with pytest.raises(TypeError):
        data["chain"] = "http://evil.example/"  # type: ignore[index]
    assert data["list"][1]["a"] == 2
    assert isinstance(data["list"], tuple)
    with pytest.raises(TypeError):
        data["list"][1]["a"] = 3  # type: ignore[index]


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("name, count", [
    ("hardware.yaml", 3),
    ("hardware-k8s.yaml", 3),
    ("hardware-k8s-list.yaml", 2),
    ("hardware-tink.json", 2),
])
def test_examples_load(name: str, count: int) -> None:
    result = load_file(str(EXAMPLES / name))
    assert len(result.hardware) == count
    assert result.warnings == ()
    for hw in result.hardware:
        assert hw.source.startswith(str(EXAMPLES / name) + ":")
        for iface in hw.interfaces:
            assert iface.ip is None or iface.ip in __import__("ipaddress").ip_network("192.0.2.0/24")


def test_example_details() -> None:
    bios, uefi, off = load_file(str(EXAMPLES / "hardware.yaml")).hardware
    assert bios.interfaces[0].allow_pxe and not bios.interfaces[0].uefi
    assert uefi.interfaces[0].uefi and uefi.interfaces[0].ipxe_url.startswith("http://")
    assert not off.interfaces[0].allow_pxe
    k8s = load_file(str(EXAMPLES / "hardware-k8s.yaml")).hardware
    assert k8s[0].instance is not None and k8s[0].instance.operating_system.slug == "ubuntu_22_04"
    tink = load_file(str(EXAMPLES / "hardware-tink.json")).hardware
    assert [(h.instance.operating_system.slug, h.instance.operating_system.distro)  # type: ignore[union-attr]
            for h in tink] == [("ubuntu_20_04", "ubuntu"), ("flatcar", "flatcar")]


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("written", [
    "52:54:00:ab:cd:ef", "52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "52-54-00-AB-CD-EF",
    "5254.00ab.cdef", "5254.00AB.CDEF", "525400abcdef", "525400ABCDEF", '"52:54:00:ab:cd:ef"',
])
def test_mac_forms_normalise(written: str) -> None:
    smee = one(f"{written}: {{ipAddress: 192.0.2.2, subnetMask: 24}}\n")
    assert smee.id == smee.interfaces[0].mac == "52:54:00:ab:cd:ef"
    crd = one(f"apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata: {{name: x}}\n"
              f"spec: {{interfaces: [{{dhcp: {{mac: {written}}}}}]}}\n")
    assert crd.interfaces[0].mac == "52:54:00:ab:cd:ef"
    tink = one(json.dumps({"id": "x", "network": {"interfaces": [{"dhcp": {"mac": written.strip('"')}}]}}), "t.json")
    assert tink.interfaces[0].mac == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("written, mac", [
    ("52:54:00:12:34:56", "52:54:00:12:34:56"),  # a base-60 integer to YAML 1.1
    ("525400123456", "52:54:00:12:34:56"),  # a decimal integer
    ("001122334455", "00:11:22:33:44:55"),  # an octal integer
])
def test_unquoted_macs_that_yaml_reads_as_numbers(written: str, mac: str) -> None:
    assert one(f"{written}: {{ipAddress: 192.0.2.2, subnetMask: 24}}\n").id == mac
    crd = one(f"kind: Hardware\napiVersion: tinkerbell.org/v1alpha1\nmetadata: {{name: x}}\n"
              f"spec:\n  interfaces:\n  - dhcp:\n      mac: {written}\n")
    assert crd.interfaces[0].mac == mac


@pytest.mark.parametrize("lease, expected", [
    ("", DEFAULT_LEASE_TIME),
    (", leaseTime: null", DEFAULT_LEASE_TIME),
    (", leaseTime: 0", 0),
    (", leaseTime: 60", 60),
    (", leaseTime: 4294967295", 2**32 - 1),
])
def test_smee_lease_time(lease: str, expected: int) -> None:
    hw = one(f"52:54:00:aa:bb:cc: {{ipAddress: 192.0.2.2, subnetMask: 24{lease}}}\n")
    assert hw.interfaces[0].lease_time == expected


@pytest.mark.parametrize("dhcp, expected", [
    ({}, DEFAULT_LEASE_TIME),
    ({"lease_time": None}, DEFAULT_LEASE_TIME),
    ({"lease_time": 0}, 0),
    ({"lease_time": 86400}, 86400),
])
def test_tink_and_crd_lease_time(dhcp: dict[str, object], expected: int) -> None:
    dhcp = {"mac": "52:54:00:aa:bb:cc", **dhcp}
    tink = {"id": "x", "network": {"interfaces": [{"dhcp": dhcp}]}}
    crd = {"apiVersion": "tinkerbell.org/v1alpha1", "kind": "Hardware", "metadata": {"name": "x"},
           "spec": {"interfaces": [{"dhcp": dhcp}]}}
    assert one(json.dumps(tink), "t.json").interfaces[0].lease_time == expected
    assert one(json.dumps(crd), "c.json").interfaces[0].lease_time == expected


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("false", False), ('"true"', True), ('"False"', False), ("null", False),
])
def test_booleans(value: str, expected: bool) -> None:
    hw = one(f"52:54:00:aa:bb:cc: {{ipAddress: 192.0.2.2, subnetMask: 24, netboot: {{allowPxe: {value}}}}}\n")
    assert hw.interfaces[0].allow_pxe is expected


# ------------------------------------------------------------------ errors

GOOD = "52:54:00:aa:bb:cc:\n  ipAddress: 192.0.2.2\n  subnetMask: 255.255.255.0\n"
CRD_HEAD = "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata:\n  name: x\nspec:\n"


def crd_iface(dhcp: str = "mac: 52:54:00:aa:bb:cc", netboot: str = "") -> str:
    text = CRD_HEAD + "  interfaces:\n    - dhcp:\n" + "".join(f"        {ln}\n" for ln in dhcp.split("\n"))
    if netboot:
        text += "      netboot:\n" + "".join(f"        {ln}\n" for ln in netboot.split("\n"))
    return text


TINK_ERR = """\
[
  {
    "id": "x",
    "network": {"interfaces": [{
      "dhcp": {"mac": "52:54:00:aa:bb:cc",
               "ip": {"address": "192.0.2.2"}},
      "netboot": {"allow_pxe": true}}]},
    "metadata": {"facility": {"facility_code": "lab1"},
                 "instance": {"hostname": "ok"}}
  }
]
"""


@pytest.mark.parametrize("name, path, text, line, fragment", [
    ("bad IP", "a.yaml", GOOD.replace("192.0.2.2", "192.0.2.256"), 2, "'192.0.2.256' is not an IPv4 address"),
    ("IPv6 IP", "a.yaml", GOOD.replace("192.0.2.2", "2001:db8::1"), 2, "is not an IPv4 address"),
    ("bad mask", "a.yaml", GOOD.replace("255.255.255.0", "255.0.255.0"), 3, "is not a netmask"),
    ("mask 33", "a.yaml", GOOD.replace("255.255.255.0", "33"), 3, "is not a netmask"),
    ("bad gateway", "a.yaml", GOOD + "  defaultGateway: gw\n", 4, "defaultGateway"),
    ("bad DNS entry", "a.yaml", GOOD + "  nameServers:\n    - 192.0.2.53\n    - dns.example\n", 6,
     "nameServers[1]: 'dns.example' is not an IPv4"),
    ("missing ip", "a.yaml", "\n52:54:00:aa:bb:cc: {subnetMask: 24}\n", 2, "ipAddress is required"),
    ("missing mask", "a.yaml", "52:54:00:aa:bb:cc: {ipAddress: 192.0.2.2}\n", 1, "subnetMask is required"),
    ("record not a map", "a.yaml", GOOD + "52:54:00:aa:bb:cd: 192.0.2.3\n", 4, "expected the machine's fields"),
    ("bad MAC key", "a.yaml", GOOD + "52:54:00:aa:bb:zz:\n  ipAddress: 192.0.2.3\n", 4, "is not a MAC address"),
    ("bad MAC value", "a.yaml", crd_iface("mac: 52:54:00:aa:bb"), 8, "is not a MAC address"),
    ("missing MAC", "a.yaml", crd_iface("hostname: x"), 7, "mac (a MAC address) is required"),
    ("bad VLAN", "a.yaml", GOOD + '  vlanID: "4097"\n', 4, "is not a VLAN id"),
    ("VLAN list", "a.yaml", crd_iface('mac: 52:54:00:aa:bb:cc\nvlan_id: "1,2"'), 9, "is not a VLAN id"),
    ("bad bool", "a.yaml", GOOD + "  netboot:\n    allowPxe: 1\n", 5, "expected true or false"),
    ("bad bool string", "a.yaml", crd_iface(netboot="allowPXE: sure"), 10, "expected true or false"),
    ("bad URL", "a.yaml", GOOD + "  netboot:\n    ipxeScriptUrl: ':not a url'\n", 5,
     "is not an absolute http:// or https:// URL"),
    ("relative URL", "a.yaml", crd_iface(netboot="ipxe: {url: /boot.ipxe}"), 10, "not an absolute http"),
    ("tftp URL", "a.yaml", crd_iface(netboot="ipxe:\n  url: tftp://192.0.2.5/x"), 11, "not an absolute http"),
    ("newline in hostname", "a.yaml", GOOD + '  hostname: "a\\nb"\n', 4, "control character"),
    ("space in hostname", "a.yaml", GOOD + '  hostname: "a b"\n', 4, "not a valid host or domain name"),
    ("newline in facility", "a.yaml", GOOD + '  netboot: {facility: "lab\\n1"}\n', 4, "control character"),
    ("newline in CRD facility", "a.yaml",
     CRD_HEAD + '  metadata:\n    facility:\n      facility_code: "x\\ny"\n', 8, "facility_code"),
    ("tab in OS slug", "a.yaml",
     CRD_HEAD + '  metadata:\n    instance:\n      operating_system:\n        slug: "a\\tb"\n', 9, "control character"),
    ("list as hostname", "a.yaml", GOOD + "  hostname: [a]\n", 4, "expected a string, got a list"),
    ("lease too big", "a.yaml", GOOD + "  leaseTime: 4294967296\n", 4, "lease time"),
    ("lease negative", "a.yaml", GOOD + "  leaseTime: -1\n", 4, "lease time"),
    ("lease string", "a.yaml", GOOD + '  leaseTime: "60"\n', 4, "lease time"),
    ("lease float", "a.yaml", crd_iface("mac: 52:54:00:aa:bb:cc\nlease_time: 1.5"), 9, "lease time"),
    ("interfaces not a list", "a.yaml", CRD_HEAD + "  interfaces: {dhcp: {}}\n", 6, "expected a list"),
    ("CRD without name", "a.yaml", "apiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata: {}\n", 3,
     "metadata.name is required"),
    ("unknown kind", "a.yaml", GOOD + "---\napiVersion: v1\nkind: ConfigMap\n", 6, "kind 'ConfigMap'"),
    ("other API group", "a.yaml", "apiVersion: metal3.io/v1alpha1\nkind: Hardware\n", 2, "not a tinkerbell.org"),
    ("scalar document", "a.yaml", GOOD + "---\njust text\n", 5, "unrecognised document"),
    ("empty string document", "a.yaml", '---\n""\n', 2, "unrecognised document"),
    ("map of junk", "a.yaml", "name: x\nvalue: 1\n", 1, "unrecognised document"),
    ("list of junk", "a.yaml", "- network: {}\n  id: a\n- {id: b}\n", 3, "expected a Tink hardware object"),
    ("YAML syntax", "a.yaml", GOOD + "  netboot: {allowPxe: true\n", 5, "invalid YAML"),
    ("YAML tab indent", "a.yaml", GOOD + "\thostname: x\n", 4, "invalid YAML"),
    ("YAML duplicate key", "a.yaml", GOOD + "  ipAddress: 192.0.2.3\n", 4, "duplicate key 'ipAddress'"),
    ("YAML duplicate MAC key", "a.yaml", GOOD + GOOD, 4, "duplicate key"),
    ("YAML unknown tag", "a.yaml", GOOD + "  hostname: !secret x\n", 4, "unsupported tag"),
    ("YAML undefined alias", "a.yaml", GOOD + "  hostname: *nope\n", 4, "undefined alias"),
    ("JSON syntax", "a.json", '[\n  {"id": "x",\n   "network": {}\n  }\n  {"id": "y"}\n]\n', 5,
     "Expecting ',' delimiter"),
    ("JSON trailing comma", "a.json", '{"id": "x",\n "network": {},\n}\n', 3, "invalid JSON"),
    ("JSON bad value", "a.json", '[\n  {"id": x}\n]', 2, "Expecting value"),
    ("JSON extra data", "a.json", '[]\n[]\n', 2, "Extra data"),
    ("JSON duplicate MAC key", "a.json",
     '{"52:54:00:aa:bb:cc": {"ipAddress": "192.0.2.2", "subnetMask": "24"},\n'
     ' "52:54:00:aa:bb:cc": {"ipAddress": "192.0.2.3", "subnetMask": "24"}}', 2, "Duplicate key"),
    ("Tink bad IP", "a.json", TINK_ERR.replace('"192.0.2.2"', '"192.0.2"'), 6, "dhcp.ip.address"),
    ("Tink newline facility", "a.json", TINK_ERR.replace('"lab1"', '"lab\\n1"'), 8, "facility_code"),
    ("Tink newline hostname", "a.json", TINK_ERR.replace('"ok"', '"ok\\n"'), 9, "instance.hostname"),
    ("Tink bad bool", "a.json", TINK_ERR.replace("true", '"yes"'), 7, "allow_pxe"),
    ("Tink missing id", "a.json", TINK_ERR.replace('"id": "x",', '"id": "",'), 3, "id is required"),
])
def test_errors_carry_the_line(name: str, path: str, text: str, line: int, fragment: str) -> None:
    e = error(text, path)
    assert e.path == path
    assert e.line == line, (name, str(e))
    assert fragment in e.message, (name, str(e))
    assert str(e) == f"{path}:{line}: {e.message}"


def test_one_bad_record_rejects_the_whole_file() -> None:
    text = "".join(f"52:54:00:00:00:{i:02x}: {{ipAddress: 192.0.2.{i}, subnetMask: 24}}\n" for i in range(1, 50))
    assert len(parse_text(text).hardware) == 49
    e = error(text.replace("192.0.2.30,", "192.0.2.300,"))
    assert e.line == 30


def test_error_is_picklable_and_formats_without_line() -> None:
    e = HardwareFileError("x.yaml", None, "No such file or directory")
    assert str(e) == "x.yaml: No such file or directory"
    again = pickle.loads(pickle.dumps(HardwareFileError("x.yaml", 3, "bad")))
    assert (again.path, again.line, again.message, str(again)) == ("x.yaml", 3, "bad", "x.yaml:3: bad")


def test_load_file_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(HardwareFileError) as info:
        load_file(missing)
    assert (info.value.path, info.value.line) == (missing, None)
    assert "No such file" in info.value.message
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"# ok\n52:54:00:aa:bb:cc:\n  hostname: caf\xe9\n")
    with pytest.raises(HardwareFileError) as info:
        load_file(str(bad))
    assert info.value.line == 3 and "UTF-8" in info.value.message


@pytest.mark.parametrize("path, text", [
    ("e.yaml", ""), ("e.yaml", "# nothing yet\n"), ("e.yaml", "---\n"), ("e.yaml", "---\n---\n"),
    ("e.yaml", "null\n"), ("e.yaml", "{}\n"), ("e.yaml", "[]\n"), ("e.json", ""), ("e.json", "  \n"),
    ("e.json", "[]"), ("e.json", "{}"), ("e.yaml", "apiVersion: v1\nkind: List\nitems: []\n"),
])
def test_empty_inputs_give_zero_records(path: str, text: str) -> None:
    assert parse_text(text, path) == ParseResult((), ())


def test_formats_may_mix_across_documents() -> None:
    text = GOOD + "---\n" + crd_iface("mac: 52:54:00:aa:bb:cd") + "---\n" + json.dumps(TINK)
    result = parse_text(text, "mixed.yaml")
    assert [h.id for h in result.hardware] == [
        "52:54:00:aa:bb:cc", "x", "0eba0bf8-3772-4b4a-ab9f-6ebe93b90a94", "c6a2a5c3"]
    assert [h.source for h in result.hardware] == ["mixed.yaml:1", "mixed.yaml:5", "mixed.yaml:14", "mixed.yaml:14"]


def test_many_records_parse() -> None:
    count = 20_000
    text = "".join(
        f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}: {{ipAddress: 10.0.{i >> 8}.{i & 255}, subnetMask: 255.255.0.0, "
        f"defaultGateway: 10.0.0.1, nameServers: [192.0.2.53], hostname: node-{i}, netboot: {{allowPxe: true}}}}\n"
        for i in range(count)
    )
    result = parse_text(text, "big.yaml")
    assert len(result.hardware) == count and result.warnings == ()
    last = result.hardware[-1]
    assert last.source == f"big.yaml:{count}"
    assert last.interfaces[0].ip == IP(f"10.0.{(count - 1) >> 8}.{(count - 1) & 255}")


def test_smee_format_as_json_with_record_lines_and_warnings() -> None:
    text = ('{\n  "52:54:00:aa:bb:01": {"ipAddress": "192.0.2.2", "subnetMask": "255.255.255.0"},\n'
            '  "52:54:00:aa:bb:02": {\n    "ipAddress": "192.0.2.3",\n    "subnetMask": 24,\n    "colour": "red"\n  }\n}\n')
    result = parse_text(text, "smee.json")
    assert [h.source for h in result.hardware] == ["smee.json:2", "smee.json:3"]
    assert result.hardware[1].interfaces[0].netmask == IP("255.255.255.0")
    assert result.warnings == ("smee.json:6: unknown key 'colour' in record 52:54:00:aa:bb:02 (ignored)",)


def test_pure_python_yaml_loader_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    import smee.formats

    fast = [load_file(str(p)) for p in sorted(EXAMPLES.glob("*.yaml"))]
    monkeypatch.setattr(smee.formats.documents, "_YAML_BASE", yaml.SafeLoader)
    assert [load_file(str(p)) for p in sorted(EXAMPLES.glob("*.yaml"))] == fast
    assert error(GOOD + "  leaseTime: -1\n").line == 4
