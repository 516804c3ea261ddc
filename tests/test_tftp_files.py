"""smee.tftp.files: which names are served, loading the binaries, their version, autoexec.ipxe.

The real-binary tests read ipxe/bin as ``make bindata`` leaves it (tests/test_bindata.py
runs it; scripts/test runs it before pytest) and skip with a hint when it is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

import smee
from smee.dhcp.policy import AUTO_PROXY, PROXY, RESERVATION, DHCPConfig
from smee.hardware import Hardware, Interface, Match
from smee.tftp import files
from smee.tftp.files import (
    ALIASES,
    BINARY_NAMES,
    IPXE_MAC,
    Binaries,
    autoexec_for,
    autoexec_script,
    default_ipxe_dir,
    ipxe_version_of,
    resolve,
    validate_script_url,
    version_bytes,
)

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "ipxe" / "bin"
MAC = "52:54:00:00:00:01"
TRACE = "-00-23b1e307bb35484f535a1f772c06910e-d887dc3912240434-01"

#: What Debian's 1.21.1+git20250501.dad20602+dfsg-1 binaries send in 175.235
#: (found in their DHCP feature table; the package version is not the wire version).
DEBIAN_WIRE_VERSION = "1.0.0"
DEBIAN_PACKAGE_VERSION = "1.21.1+git20250501.dad20602+dfsg-1"


def feature_table(major: int, minor: int, patch: int) -> bytes:
    """iPXE's DHCP feature table as the linker lays it out: 175.235 first, then one-byte features."""
    return bytes((0xEB, 3, major, minor, patch, 0x26, 1, 1, 0x17, 1, 1, 0x24, 1, 1, 0x13, 1, 1))


def fake_binary(version: tuple[int, int, int] | None = (1, 21, 1), size: int = 4096) -> bytes:
    """Code-like filler with a feature table in the middle (and a decoy 'jmp +3' before it)."""
    table = feature_table(*version) if version else b""
    return b"\x90" * size + b"\xeb\x03\x09\x09\x09\x48\x89" + b"\x00" * 64 + table + b"\x00" * size


def requires_bindata() -> None:
    if not (BIN / "ipxe.efi").is_file():
        pytest.skip("ipxe/bin is empty: run 'make bindata' (scripts/test does)")


# =========================================================================== resolve()

ACCEPTED = [
    ("ipxe.efi", ("ipxe.efi", None)),
    ("undionly.kpxe", ("undionly.kpxe", None)),
    ("snp.efi", ("snp.efi", None)),
    ("ipxe.iso", ("ipxe.iso", None)),
    ("snponly.efi", ("snponly.efi", None)),
    ("autoexec.ipxe", ("autoexec.ipxe", None)),
    ("/ipxe.efi", ("ipxe.efi", None)),
    ("/autoexec.ipxe", ("autoexec.ipxe", None)),
    (f"{MAC}/ipxe.efi", ("ipxe.efi", MAC)),
    (f"/{MAC}/undionly.kpxe", ("undionly.kpxe", MAC)),
    ("52:54:00:AB:CD:EF/snp.efi", ("snp.efi", "52:54:00:ab:cd:ef")),
    ("52-54-00-00-00-01/ipxe.efi", ("ipxe.efi", MAC)),
    ("5254.0000.0001/ipxe.efi", ("ipxe.efi", MAC)),
    ("525400000001/ipxe.efi", ("ipxe.efi", MAC)),
    (f"{MAC}/autoexec.ipxe", ("autoexec.ipxe", MAC)),
    # Smee's traceparent suffix (smee-study.md §1.2, §3.1)
    (f"undionly.kpxe{TRACE}", ("undionly.kpxe", None)),
    (f"/{MAC}/ipxe.efi{TRACE}", ("ipxe.efi", MAC)),
    (f"snp.efi{TRACE.upper()}", ("snp.efi", None)),
]

REJECTED = [
    "", "/", "//ipxe.efi", "///ipxe.efi", "./ipxe.efi", "..", "../ipxe.efi", "/../ipxe.efi",
    "ipxe/../ipxe.efi", f"{MAC}/../ipxe.efi", f"../{MAC}/ipxe.efi", f"{MAC}/{MAC}/ipxe.efi",
    "a/ipxe.efi", "bin/ipxe.efi", "/etc/passwd", "/ipxe/bin/ipxe.efi", "ipxe.efi/",
    "ipxe.efi\0", "\0ipxe.efi", "\\ipxe.efi", f"{MAC}\\ipxe.efi", "..\\ipxe.efi",
    "IPXE.EFI", "Ipxe.efi", "ipxe.efi ", " ipxe.efi", f" {MAC}/ipxe.efi", "ipxe.efi\n",
    "ipxe-amd64.efi", "ipxe-arm64.efi", "VERSION", "SHA256SUMS", "undionly.kkpxe", "auto.ipxe",
    "52:54:00:00:00/ipxe.efi", "52:54:00:00:00:01:02/ipxe.efi", "%2e%2e/ipxe.efi", "%2fipxe.efi",
    f"ipxe.efi{TRACE[:-3]}", "ipxe.efi-00-123-456-01", f"{TRACE[1:]}", f"unknown.efi{TRACE}",
]


@pytest.mark.parametrize("requested,expected", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_resolve_accepts(requested: str, expected: tuple[str, str | None]) -> None:
    assert resolve(requested) == expected


@pytest.mark.parametrize("requested", REJECTED, ids=[repr(r) for r in REJECTED])
def test_resolve_rejects(requested: str) -> None:
    assert resolve(requested) is None


def test_every_served_name_resolves() -> None:
    for name in (*BINARY_NAMES, "autoexec.ipxe"):
        assert resolve(name) == (name, None)


# =========================================================================== Binaries.load


def test_load_our_names(tmp_path: Path) -> None:
    d = tmp_path / "bin"
    d.mkdir()
    for name in BINARY_NAMES:
        (d / name).write_bytes(name.encode() + fake_binary())
    b = Binaries.load(str(d))
    assert b.available() == frozenset(BINARY_NAMES)
    assert b.warnings == ()
    assert b.get("snp.efi").startswith(b"snp.efi")
    assert b.get("autoexec.ipxe") is None and b.get("nothing") is None
    assert b.version == "1.21.1" and b.directory == str(d)


def test_missing_files_are_absent_with_warnings(tmp_path: Path) -> None:
    d = tmp_path / "ipxe"
    d.mkdir()
    (d / "undionly.kpxe").write_bytes(b"u" * 100)
    b = Binaries.load(str(d))
    assert b.available() == {"undionly.kpxe"}
    assert b.get("ipxe.efi") is None
    assert f"no snp.efi (arm64 UEFI) in {d}: arm64 clients will get no boot file" in b.warnings
    assert f"no ipxe.efi (x86-64 UEFI) in {d}: x86 UEFI clients will get no boot file" in b.warnings
    assert any(w.startswith(f"no ipxe.iso (ISO image) in {d}") for w in b.warnings)
    assert not any("snponly.efi" in w for w in b.warnings), "snponly.efi is optional"
    assert b.version is None, "undionly.kpxe is compressed: no readable version"


def test_debian_names_are_aliases(tmp_path: Path) -> None:
    d = tmp_path / "usr-lib-ipxe"
    d.mkdir()
    (d / "ipxe-amd64.efi").write_bytes(b"amd64" + fake_binary())
    (d / "ipxe-arm64.efi").write_bytes(b"arm64" + fake_binary())
    (d / "undionly.kpxe").write_bytes(b"bios")
    b = Binaries.load(str(d))
    assert b.get("ipxe.efi").startswith(b"amd64") and b.get("snp.efi").startswith(b"arm64")
    assert dict(b.sources) == {"ipxe.efi": "ipxe-amd64.efi", "snp.efi": "ipxe-arm64.efi",
                               "undionly.kpxe": "undionly.kpxe"}


def test_our_name_wins_over_the_debian_one(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "ipxe.efi").write_bytes(b"ours")
    (d / "ipxe-amd64.efi").write_bytes(b"debian")
    assert Binaries.load(str(d)).get("ipxe.efi") == b"ours"


def test_snponly_is_never_used_as_snp(tmp_path: Path) -> None:
    """Debian 12's /usr/lib/ipxe: snponly.efi (x86-64) but no arm64 build."""
    d = tmp_path / "bookworm"
    d.mkdir()
    for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi", "ipxe.iso"):
        (d / name).write_bytes(name.encode())
    b = Binaries.load(str(d))
    assert b.get("snp.efi") is None and b.get("snponly.efi") == b"snponly.efi"
    assert b.warnings == (f"no snp.efi (arm64 UEFI) in {d}: arm64 clients will get no boot file",)
    assert "snponly.efi" not in ALIASES["snp.efi"]


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "undionly.kpxe").write_bytes(b"")
    (d / "ipxe.efi").mkdir()  # a directory where a file should be: reading fails
    (d / "ipxe-amd64.efi").write_bytes(b"fallback")
    b = Binaries.load(str(d))
    assert b.get("undionly.kpxe") is None
    assert f"{d}/undionly.kpxe is empty: ignored" in b.warnings
    assert any(w.startswith(f"cannot read {d}/ipxe.efi: ") for w in b.warnings)
    assert b.get("ipxe.efi") == b"fallback", "an unreadable file falls back to the next alias"


@pytest.mark.parametrize("make,why", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.write_bytes(b"x"), p)[1], "is not a directory"),
])
def test_unusable_directory_gives_an_empty_set(tmp_path: Path, make, why: str) -> None:
    path = make(tmp_path / "ipxe")
    b = Binaries.load(str(path))
    assert b.available() == frozenset() and b.version is None
    assert len(b.warnings) == 1 and b.warnings[0].startswith(f"iPXE directory {path} {why}: ")
    assert "netboot clients will get no boot file" in b.warnings[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_directory(tmp_path: Path) -> None:
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0)
    try:
        b = Binaries.load(str(d))
    finally:
        d.chmod(0o755)
    assert b.available() == frozenset() and "cannot be read" in b.warnings[0]


def test_binaries_is_immutable() -> None:
    b = Binaries(files={"ipxe.efi": b"x"})  # fakes for other tests are built like this
    assert b.get("ipxe.efi") == b"x" and b.available() == {"ipxe.efi"}
    with pytest.raises(AttributeError):
        b.version = "1.0.0"  # type: ignore[misc]


# =========================================================================== version


def test_version_from_the_feature_table() -> None:
    assert ipxe_version_of(fake_binary((1, 21, 1))) == "1.21.1"
    assert ipxe_version_of(fake_binary((1, 0, 0))) == "1.0.0"
    assert ipxe_version_of(fake_binary(None)) is None, "a lone 'jmp +3' is not a version"
    assert ipxe_version_of(b"") is None


def test_longest_feature_run_wins() -> None:
    weak = b"\xeb\x03\x07\x07\x07" + b"\x20\x01\x01\x21\x01\x01" + b"\x00" * 8
    assert ipxe_version_of(weak + feature_table(1, 2, 3)) == "1.2.3"


def test_version_falls_back_to_metadata(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "undionly.kpxe").write_bytes(b"compressed")
    (d / "VERSION").write_text("# comment\npackage-version=9.9\nipxe-version=1.0.0\n")
    b = Binaries.load(str(d))
    assert b.version == "1.0.0" and b.product_version == "9.9"


def test_binaries_beat_metadata(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "ipxe.efi").write_bytes(fake_binary((1, 21, 1)))
    (d / "VERSION").write_text("ipxe-version=1.0.0\n")
    assert Binaries.load(str(d)).version == "1.21.1"


def test_bad_metadata_version_is_ignored(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "undionly.kpxe").write_bytes(b"compressed")
    (d / "VERSION").write_text("ipxe-version=1.21\n")
    b = Binaries.load(str(d))
    assert b.version is None and any("ignored ipxe-version '1.21'" in w for w in b.warnings)


def test_mixed_versions_warn(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "ipxe.efi").write_bytes(fake_binary((1, 0, 0)))
    (d / "snponly.efi").write_bytes(fake_binary((1, 0, 0)))
    (d / "snp.efi").write_bytes(fake_binary((1, 21, 1)))
    b = Binaries.load(str(d))
    assert b.version == "1.0.0"
    assert any("report different iPXE versions (1.0.0, 1.21.1)" in w for w in b.warnings)


@pytest.mark.parametrize("text,expected", [("1.0.0", b"\x01\x00\x00"), ("1.21.1", b"\x01\x15\x01"),
                                           ("1.0.255", b"\x01\x00\xff")])
def test_version_bytes(text: str, expected: bytes) -> None:
    assert version_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "1.0", "1.0.0.0", "1.0.256", "a.b.c", "1.-1.0", "1.0.0+git", "１.0.0"])
def test_version_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        version_bytes(text)


# =========================================================================== the real binaries


def pe_machine(data: bytes) -> int:
    """The COFF machine field of a PE image (0x8664 x86-64, 0xaa64 arm64)."""
    offset = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[offset : offset + 4] == b"PE\0\0"
    return struct.unpack_from("<H", data, offset + 4)[0]


def test_real_binaries() -> None:
    requires_bindata()
    b = Binaries.load(str(BIN))
    assert b.available() == frozenset(BINARY_NAMES) and b.warnings == ()
    assert b.version == DEBIAN_WIRE_VERSION
    assert b.product_version == DEBIAN_PACKAGE_VERSION
    assert pe_machine(b.get("ipxe.efi") or b"") == 0x8664
    assert pe_machine(b.get("snp.efi") or b"") == 0xAA64, "snp.efi must be the arm64 build"
    assert pe_machine(b.get("snponly.efi") or b"") == 0x8664, "snponly.efi is x86-64: never snp.efi"
    assert (b.get("ipxe.iso") or b"")[0x8001:0x8006] == b"CD001"
    metadata = dict(line.split("=", 1) for line in (BIN / "VERSION").read_text().splitlines() if "=" in line)
    assert metadata["ipxe-version"] == b.version, "scripts/bindata and smee agree on the version"


def test_real_binaries_under_debian_names(tmp_path: Path) -> None:
    """--ipxe-dir=/usr/lib/ipxe as Debian trixie lays it out."""
    requires_bindata()
    d = tmp_path / "usr-lib-ipxe"
    d.mkdir()
    for name in ("ipxe-amd64.efi", "ipxe-arm64.efi", "snponly.efi", "undionly.kpxe", "ipxe.iso"):
        shutil.copyfile(BIN / name, d / name)
    b = Binaries.load(str(d))
    assert b.available() == frozenset(BINARY_NAMES) and b.warnings == ()
    assert b.get("snp.efi") == (BIN / "snp.efi").read_bytes()
    assert b.get("ipxe.efi") == (BIN / "ipxe.efi").read_bytes()
    assert b.version == DEBIAN_WIRE_VERSION


def test_undionly_version_is_not_readable() -> None:
    """undionly.kpxe is compressed: the version comes from the set, not from it."""
    requires_bindata()
    assert ipxe_version_of((BIN / "undionly.kpxe").read_bytes()) is None


# =========================================================================== default_ipxe_dir


def test_default_ipxe_dir_is_the_repository_bin() -> None:
    requires_bindata()
    assert default_ipxe_dir() == str(BIN)


def test_default_ipxe_dir_fallbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pkg = tmp_path / "site" / "smee"
    fake_pkg.mkdir(parents=True)
    monkeypatch.setattr(smee, "__file__", str(fake_pkg / "__init__.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert default_ipxe_dir() == "/usr/lib/ipxe"
    share = tmp_path / "prefix" / "share" / "smee" / "ipxe"
    share.mkdir(parents=True)
    assert default_ipxe_dir() == "/usr/lib/ipxe", "an empty directory is not a source"
    (share / "ipxe-amd64.efi").write_bytes(b"x")
    assert default_ipxe_dir() == str(share)
    repo_bin = tmp_path / "site" / "ipxe" / "bin"
    repo_bin.mkdir(parents=True)
    (repo_bin / "undionly.kpxe").write_bytes(b"x")
    assert default_ipxe_dir() == str(repo_bin)


# =========================================================================== autoexec.ipxe

URL = "http://192.0.2.3:8080/52:54:00:00:00:01/auto.ipxe"


def test_autoexec_script_content() -> None:
    script = autoexec_script(URL).decode("ascii")
    lines = script.splitlines()
    assert lines[0] == "#!ipxe"
    assert "set user-class Tinkerbell" in lines
    assert "set vlan-id ${43.116:string}" in lines
    assert "isset ${net${idx}/ip} && goto found ||" in lines
    assert "vcreate --tag ${vlan-id} net${idx}" in script
    assert "set iface net${idx}-${vlan-id}" in lines
    assert "dhcp ${iface} && goto chain ||" in lines
    assert "iseq ${tries} 10 && goto nolease ||" in lines and "sleep 1" in lines, "bounded retry"
    assert f"chain --autofree {URL} ||" in lines
    assert lines.count("exit 1") == 2, "both failure paths end the script with an error"
    assert script.index("set user-class Tinkerbell") < script.index("dhcp ${iface}") < script.index("chain")


def test_autoexec_labels_are_all_defined() -> None:
    script = autoexec_script(URL).decode("ascii")
    labels = set(re.findall(r"^:(\S+)$", script, re.MULTILINE))
    targets = set(re.findall(r"goto (\S+)", script))
    assert targets and targets <= labels


def test_autoexec_url_appears_only_as_an_argument() -> None:
    script = autoexec_script(URL).decode("ascii")
    assert [line for line in script.splitlines() if URL in line] == [
        f"chain --autofree {URL} ||", f"echo smee: could not run the boot script {URL}",
    ]


GOOD_URLS = [
    "http://192.0.2.1:8080/auto.ipxe",
    "https://192.0.2.1/a/b/auto.ipxe?x=1&y=2",
    "http://192.0.2.1:8080/${net${idx}/mac}/auto.ipxe",
    "http://192.0.2.1/${mac:hexhyp}/auto.ipxe",
    "http://[2001:db8::1]/auto.ipxe",
    "http://192.0.2.1/a%20b/auto.ipxe",
    "http://192.0.2.1",
]

BAD_URLS = [
    "http://192.0.2.1/a b", "http://192.0.2.1/a\nshell", "http://192.0.2.1/a\r\nshell",
    "http://192.0.2.1/a\tb", "http://192.0.2.1/auto.ipxe\n", " http://192.0.2.1/x",
    "http://192.0.2.1/a;reboot", "http://192.0.2.1/x||shell", "http://192.0.2.1/x|y",
    'http://192.0.2.1/"x', "http://192.0.2.1/'x", "http://192.0.2.1/a\\b", "http://192.0.2.1/#x",
    "http://192.0.2.1/`x`", "http://192.0.2.1/$x", "http://192.0.2.1/${x", "http://192.0.2.1/}x",
    "http://192.0.2.1/{x}", "http://192.0.2.1/${a b}", "http://192.0.2.1/${x;y}", "http://192.0.2.1/a\0b",
    "http://192.0.2.1/é", "http://192.0.2.1/<x>", "ftp://192.0.2.1/x", "tftp://192.0.2.1/x",
    "192.0.2.1/auto.ipxe", "", "http://", "http:///x", "http://?x", "HTTP://192.0.2.1/x",
    "http://192.0.2.1/" + "a" * 2000,
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_safe_urls_pass(url: str) -> None:
    assert validate_script_url(url) == url
    assert f"chain --autofree {url} ||".encode() in autoexec_script(url)


@pytest.mark.parametrize("url", BAD_URLS, ids=[repr(u)[:40] for u in BAD_URLS])
def test_unsafe_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValueError):
        autoexec_script(url)


def config(**kw) -> DHCPConfig:
    fields = dict(
        mode=RESERVATION, server_ip=IPv4Address("192.0.2.1"), syslog_ip=None, tftp_ip=IPv4Address("192.0.2.2"),
        tftp_port=69, http_binary_url="http://192.0.2.3:8080/ipxe/", http_binary_ip=IPv4Address("192.0.2.3"),
        script_url="http://192.0.2.3:8080/auto.ipxe", prepend_mac=True, ipxe_rom_chainload=False,
    )
    fields.update(kw)
    return DHCPConfig(**fields)


def match(ipxe_url: str = "") -> Match:
    iface = Interface(mac=MAC, ip=IPv4Address("192.0.2.10"), allow_pxe=True, ipxe_url=ipxe_url)
    return Match(Hardware(id="hw-1", interfaces=(iface,)), iface)


def chained(script: bytes) -> str:
    m = re.search(rb"^chain --autofree (\S+) \|\|$", script, re.MULTILINE)
    assert m is not None
    return m.group(1).decode()


HW_URL = "http://192.0.2.99/custom.ipxe"

AUTOEXEC_FOR = [
    # name, config overrides, match, chained URL
    ("reservation", {}, match(), f"http://192.0.2.3:8080/{MAC}/auto.ipxe"),
    ("reservation-hardware-url", {}, match(HW_URL), HW_URL),
    ("reservation-no-prepend", dict(prepend_mac=False), match(), "http://192.0.2.3:8080/auto.ipxe"),
    ("proxy-known", dict(mode=PROXY), match(HW_URL), f"http://192.0.2.3:8080/{MAC}/auto.ipxe"),
    ("proxy-unknown", dict(mode=PROXY), None, f"http://192.0.2.3:8080/{IPXE_MAC}/auto.ipxe"),
    ("auto-proxy-unknown", dict(mode=AUTO_PROXY), None, f"http://192.0.2.3:8080/{IPXE_MAC}/auto.ipxe"),
    ("unknown-no-prepend", dict(mode=PROXY, prepend_mac=False), None, "http://192.0.2.3:8080/auto.ipxe"),
    ("unknown-no-path", dict(mode=PROXY, script_url="https://192.0.2.3"), None, f"https://192.0.2.3/{IPXE_MAC}/"),
]


@pytest.mark.parametrize("name,overrides,m,url", AUTOEXEC_FOR, ids=[a[0] for a in AUTOEXEC_FOR])
def test_autoexec_for(name: str, overrides: dict, m: Match | None, url: str) -> None:
    assert chained(autoexec_for(config(**overrides), m)) == url


def test_autoexec_for_uses_the_chosen_interfaces_mac() -> None:
    """The MAC iPXE fills in is the one of the interface the script ran DHCP on (net${idx})."""
    script = autoexec_for(config(mode=PROXY), None).decode()
    assert "${net${idx}/mac}" in chained(script.encode())
    assert script.index("set idx:int32 0") < script.index("chain")


def test_autoexec_for_refuses_an_unsafe_hardware_url() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        autoexec_for(config(), match("http://192.0.2.99/x ;shell"))


def test_module_has_no_mutable_globals() -> None:
    for name in ("ALIASES", "_MISSING"):
        with pytest.raises(TypeError):
            getattr(files, name)["x"] = ()
