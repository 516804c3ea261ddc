"""``make bindata`` (scripts/bindata): the pinned iPXE binaries, fetched for real and checksum-enforced.

The first test runs ``make bindata`` exactly as the README flow does: it reaches
this machine's configured apt mirror (a few seconds) unless ipxe/bin is already
up to date. The corruption tests reuse the .deb kept in ipxe/.apt, so there is
no second download, and they install into temporary directories so that the
real ipxe/bin is never disturbed.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import pytest

from smee.tftp.files import Binaries

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bindata"
BIN = REPO / "ipxe" / "bin"
FIVE = ("undionly.kpxe", "ipxe.efi", "snp.efi", "snponly.efi", "ipxe.iso")


def load_script() -> ModuleType:
    """scripts/bindata as a module (it has no .py suffix), for its pin and its helpers."""
    loader = importlib.machinery.SourceFileLoader("smee_bindata_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


bindata = load_script()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_bindata() -> subprocess.CompletedProcess[str]:
    """``make bindata``; scripts/bindata itself where make is not installed (as the scripts do)."""
    command = ["make", "--no-print-directory", "bindata"] if shutil.which("make") else [str(SCRIPT)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def installed() -> subprocess.CompletedProcess[str]:
    result = make_bindata()
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def good_deb(installed: subprocess.CompletedProcess[str], tmp_path: Path) -> Path:
    """A copy of the verified .deb that ``make bindata`` keeps in ipxe/.apt."""
    cached = REPO / "ipxe" / ".apt" / "debs" / bindata.DEB_NAME
    if not cached.is_file():  # e.g. ipxe/bin was up to date but the cache was cleaned: fetch it once
        result = subprocess.run(
            [str(SCRIPT), "--force"], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, result.stderr
    copy = tmp_path / bindata.DEB_NAME
    shutil.copyfile(cached, copy)
    return copy


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of the directory and everything in it: equal snapshots = untouched."""
    entries = {".": directory.stat()}
    entries.update({p.name: p.stat() for p in directory.iterdir()})
    return {name: (st.st_ino, st.st_mtime_ns) for name, st in entries.items()}


# =========================================================================== make bindata, for real


def test_makefile_target() -> None:
    text = (REPO / "Makefile").read_text()
    assert ".PHONY: bindata" in text
    assert "\tscripts/bindata\n" in text, "the Makefile only calls the script (machines without make call it too)"


def test_make_bindata_installs_the_pinned_binaries(installed: subprocess.CompletedProcess[str]) -> None:
    for name in FIVE:
        assert (BIN / name).is_file() and (BIN / name).stat().st_size > 100_000, name
    sums = dict(reversed(line.split("  ", 1)) for line in (BIN / "SHA256SUMS").read_text().splitlines())
    assert set(FIVE) <= set(sums)
    for name, digest in sums.items():
        assert sha256(BIN / name) == digest, f"SHA256SUMS does not match {name}"
    meta = bindata.read_meta(BIN)
    assert meta["package-version"] == "1.21.1+git20250501.dad20602+dfsg-1"
    assert meta["deb-sha256"] == "eeaca79dbde0fb86c102bf1d362c6f6a67ed0ddab38b3dd12e1b332339f5dd99"
    assert meta["ipxe-version"] == "1.0.0", "what these binaries send in option 175.235"
    # the DHCP names map to the right Debian builds
    assert sha256(BIN / "ipxe.efi") == sha256(BIN / "ipxe-amd64.efi")
    assert sha256(BIN / "snp.efi") == sha256(BIN / "ipxe-arm64.efi")
    assert sha256(BIN / "snp.efi") != sha256(BIN / "snponly.efi")
    assert not list(BIN.parent.glob(".bin.*")), "no staging directory left behind"


def test_make_bindata_again_is_a_fast_noop(installed: subprocess.CompletedProcess[str]) -> None:
    before = snapshot(BIN)
    started = time.monotonic()
    result = make_bindata()
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "is up to date" in result.stderr
    assert "downloading" not in result.stderr
    assert snapshot(BIN) == before, "nothing was rewritten"
    assert elapsed < 5, f"a no-op took {elapsed:.1f}s"


def test_the_binaries_load(installed: subprocess.CompletedProcess[str]) -> None:
    b = Binaries.load(str(BIN))
    assert b.warnings == () and set(FIVE) <= b.available()
    assert b.version == bindata.read_meta(BIN)["ipxe-version"], "script and server agree on the version"


# =========================================================================== the checksum is enforced


def flip_one_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [None, 0, -1], ids=["middle", "first-byte", "last-byte"])
def test_corrupted_download_is_rejected(good_deb: Path, tmp_path: Path, offset: int | None) -> None:
    bad = tmp_path / "bad.deb"
    shutil.copyfile(good_deb, bad)
    flip_one_byte(bad, offset)
    out = tmp_path / "out"
    real_before = snapshot(BIN)
    result = run_script("--deb", str(bad), "--out", str(out))
    assert result.returncode != 0
    assert bindata.SHA256 in result.stderr, "the message names the expected sha256"
    assert sha256(bad) in result.stderr, "and the actual one"
    assert "nothing was installed" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists(), "no binaries, not even an empty directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bad.deb", good_deb.name]), "no staging left behind"
    assert snapshot(BIN) == real_before, "the real ipxe/bin is untouched"


def test_truncated_download_is_rejected(good_deb: Path, tmp_path: Path) -> None:
    bad = tmp_path / "short.deb"
    bad.write_bytes(good_deb.read_bytes()[:-100])
    out = tmp_path / "out"
    result = run_script("--deb", str(bad), "--out", str(out))
    assert result.returncode != 0 and bindata.SHA256 in result.stderr and not out.exists()


def test_corrupted_deb_is_rejected_even_when_up_to_date(good_deb: Path, tmp_path: Path) -> None:
    """A --deb file is always checked: an up-to-date output does not excuse a bad input."""
    out = tmp_path / "out"
    assert run_script("--deb", str(good_deb), "--out", str(out)).returncode == 0
    flip_one_byte(good_deb)
    before = snapshot(out)
    result = run_script("--deb", str(good_deb), "--out", str(out))
    assert result.returncode != 0 and "checksum mismatch" in result.stderr
    assert snapshot(out) == before


def test_missing_deb_is_a_clear_error(tmp_path: Path) -> None:
    result = run_script("--deb", str(tmp_path / "nope.deb"), "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and "cannot read" in result.stderr and "Traceback" not in result.stderr


# =========================================================================== install into --out


def test_install_replaces_the_whole_directory(good_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.efi").write_bytes(b"old")
    result = run_script("--deb", str(good_deb), "--out", str(out))
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert "stale.efi" not in names and set(FIVE) | {"SHA256SUMS", "VERSION"} <= names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good_deb.name, "out"])
    assert oct(out.stat().st_mode & 0o777) == oct(0o755), "readable by a server that dropped root"
    assert Binaries.load(str(out)).available() >= set(FIVE)


def test_a_tampered_install_is_repaired(good_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_script("--deb", str(good_deb), "--out", str(out)).returncode == 0
    (out / "snp.efi").write_bytes(b"tampered")
    result = run_script("--deb", str(good_deb), "--out", str(out))
    assert result.returncode == 0 and "installed" in result.stderr
    assert sha256(out / "snp.efi") == sha256(out / "ipxe-arm64.efi") != hashlib.sha256(b"tampered").hexdigest()


def test_leftovers_of_a_killed_run_are_removed(good_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / ".out.new-abc").mkdir()
    (tmp_path / ".out.old-123").mkdir()
    assert run_script("--deb", str(good_deb), "--out", str(out)).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good_deb.name, "out"])


def test_out_must_not_be_a_file(good_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    result = run_script("--deb", str(good_deb), "--out", str(out))
    assert result.returncode != 0 and "is not a directory" in result.stderr and out.read_text() == "a file"


# =========================================================================== the machine's mirror


def apt_etc(tmp_path: Path, sources_list: str = "", **parts: str) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(sources_list)
    for name, text in parts.items():
        (etc / "sources.list.d" / name.replace("_", ".")).write_text(text)
    return etc


DEB822 = """\
Types: deb
# a comment
URIs: http://192.0.2.7/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://192.0.2.8/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    etc = apt_etc(tmp_path, debian_sources=DEB822)
    assert bindata.derive_mirror("bookworm", etc) == "http://192.0.2.7/debian"


def test_mirror_skips_disabled_source_only_and_other_suites(tmp_path: Path) -> None:
    text = (
        "Types: deb-src\nURIs: http://192.0.2.1/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://192.0.2.2/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb\nURIs: http://192.0.2.3/debian\nSuites: bookworm\nComponents: contrib\n\n"
        "Types: deb\nURIs: http://192.0.2.4/debian\nSuites: bookworm-backports\nComponents: main\n\n"
        "Types: deb deb-src\nURIs:\n http://192.0.2.5/debian\nSuites: bookworm\nComponents: main contrib\n"
    )
    assert bindata.derive_mirror("bookworm", apt_etc(tmp_path, a_sources=text)) == "http://192.0.2.5/debian"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    text = (
        "# deb http://192.0.2.1/debian bookworm main\n"
        "deb cdrom:[Debian 12]/ bookworm main\n"
        "deb-src http://192.0.2.2/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://192.0.2.3/debian bookworm contrib main\n"
    )
    assert bindata.derive_mirror("bookworm", apt_etc(tmp_path, text)) == "http://192.0.2.3/debian"


def test_sources_list_comes_before_the_parts(tmp_path: Path) -> None:
    etc = apt_etc(tmp_path, "deb http://192.0.2.9/debian bookworm main\n", debian_sources=DEB822)
    assert bindata.derive_mirror("bookworm", etc) == "http://192.0.2.9/debian"


def test_no_mirror_is_a_clear_error(tmp_path: Path) -> None:
    etc = apt_etc(tmp_path, debian_sources=DEB822)
    with pytest.raises(bindata.BindataError, match="pass --mirror URI"):
        bindata.derive_mirror("trixie", etc)


def test_this_machines_mirror_is_found() -> None:
    """The machine the tests run on is Debian with a configured mirror (that is where make bindata fetches)."""
    if not Path("/etc/os-release").is_file() or bindata.os_release().get("ID") != "debian":
        pytest.skip("not a Debian machine")
    mirror = bindata.machine_mirror()
    assert mirror.split(":", 1)[0] in ("http", "https", "file", "ftp", "mirror+http", "mirror+https", "mirror+file")


def test_private_apt_configuration(tmp_path: Path) -> None:
    """apt reads only the private sources, and /etc is never written."""
    if not Path(bindata.KEYRING).is_file():
        pytest.skip("no Debian archive keyring")
    bindata.prepare_apt_dir(tmp_path, "http://192.0.2.7/debian")
    sources = (tmp_path / "etc" / "sources.list.d" / "trixie.sources").read_text()
    assert "URIs: http://192.0.2.7/debian\nSuites: trixie\nComponents: main\n" in sources
    options = " ".join(bindata.apt_options(tmp_path))
    assert "Dir::Etc::sourcelist=/dev/null" in options
    assert f"Dir::Etc::sourceparts={tmp_path}/etc/sources.list.d" in options
    assert "/etc/apt" not in options.replace(str(tmp_path), "")


def test_repository_names_no_mirror() -> None:
    """The mirror is derived at run time: it appears in no file of ours (only in gitignored ipxe/.apt)."""
    if not Path("/etc/os-release").is_file() or bindata.os_release().get("ID") != "debian":
        pytest.skip("not a Debian machine")
    mirror = bindata.machine_mirror()
    host = mirror.split("://", 1)[-1].split("/", 1)[0]
    for path in (SCRIPT, REPO / "Makefile", REPO / "ipxe" / "README.md", REPO / ".gitignore", Path(__file__)):
        assert host not in path.read_text(), path


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or not Path("/usr/bin/python3").is_file(),
    reason="needs root to switch user, and the system python3",
)
def test_runs_as_an_ordinary_user(good_deb: Path) -> None:
    """No root needed: dpkg-deb and a private apt directory (here: install from the verified .deb)."""
    work = Path(tempfile.mkdtemp(prefix="smee-bindata-"))  # pytest's tmp_path is root-only
    try:
        deb = work / good_deb.name
        shutil.copyfile(good_deb, deb)
        work.chmod(0o755)
        os.chown(work, 65534, -1)
        out, apt_dir = work / "out", work / "apt"
        result = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/python3", str(SCRIPT), "--deb", str(deb),
             "--out", str(out), "--apt-dir", str(apt_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert out.stat().st_uid == 65534 and set(FIVE) <= {p.name for p in out.iterdir()}
    finally:
        shutil.rmtree(work)


@pytest.mark.slow
def test_fresh_download_then_cached_reinstall(tmp_path: Path) -> None:
    """The whole path from an empty state, in private directories: apt download, verify, install;
    then, with the output gone, a reinstall from the kept .deb without touching the network."""
    if not Path("/etc/os-release").is_file() or bindata.os_release().get("ID") != "debian":
        pytest.skip("not a Debian machine: make bindata needs --mirror or --deb there")
    out, apt_dir = tmp_path / "bin", tmp_path / "apt"
    result = run_script("--out", str(out), "--apt-dir", str(apt_dir))
    assert result.returncode == 0, result.stderr
    assert "downloading" in result.stderr and "installed" in result.stderr
    assert set(FIVE) <= {p.name for p in out.iterdir()}
    assert sha256(apt_dir / "debs" / bindata.DEB_NAME) == bindata.SHA256
    assert not (apt_dir / "lists").exists(), "the 20 MB package list is not kept"
    shutil.rmtree(out)
    result = run_script("--out", str(out), "--apt-dir", str(apt_dir), "--mirror", "http://192.0.2.1/unreachable")
    assert result.returncode == 0, result.stderr
    assert "downloading" not in result.stderr and set(FIVE) <= {p.name for p in out.iterdir()}
    # a cached package that went bad is never installed: it is dropped and fetched again
    flip_one_byte(apt_dir / "debs" / bindata.DEB_NAME)
    shutil.rmtree(out)
    result = run_script("--out", str(out), "--apt-dir", str(apt_dir))
    assert result.returncode == 0, result.stderr
    assert "discarding the cached package" in result.stderr and bindata.SHA256 in result.stderr
    assert "downloading" in result.stderr
    assert sha256(apt_dir / "debs" / bindata.DEB_NAME) == bindata.SHA256
