"""What the TFTP and HTTP servers hand out: the iPXE binaries and ``autoexec.ipxe``.

smee serves stock iPXE builds (Debian's ``ipxe`` package, fetched by ``make
bindata``; see ipxe/README.md) rather than Tinkerbell's ipxedust builds. Two
things follow from that, and both live here:

* The binaries come from a directory (``--ipxe-dir``) that may hold Debian's
  file names (``ipxe-amd64.efi``, ``ipxe-arm64.efi``) rather than Smee's, may
  lack some of them, and may be unreadable. :class:`Binaries` loads whatever is
  there once at start-up, never raises, and says in plain words what clients
  will miss; the DHCP side then offers no boot file for that arch.
* Stock binaries have no embedded script. Newer iPXE asks the TFTP server it
  was loaded from for ``autoexec.ipxe`` before its own DHCP and runs it, so
  smee generates one per client that does what Smee's embedded script does
  (smee-study.md §1.1 step 4): user class ``Tinkerbell``, VLAN from 43.116,
  DHCP on the interface that booted, then chain to the machine's script.

The DHCP side also needs the binaries' iPXE version: it is what iPXE sends in
option 175.235, and it is how smee tells its own binaries from a foreign iPXE
ROM (``--dhcp-ipxe-rom-chainload``). It is read from the binaries themselves
(their DHCP feature table), because the package version can lie: Debian's
``1.21.1+git20250501…`` binaries report 1.0.0 on the wire.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import smee
from smee.hardware import HardwareError, normalize_mac

if TYPE_CHECKING:
    from smee.dhcp.policy import DHCPConfig
    from smee.hardware import Match

__all__ = [
    "ALIASES",
    "AUTOEXEC",
    "BINARY_NAMES",
    "IPXE_MAC",
    "Binaries",
    "autoexec_for",
    "autoexec_script",
    "default_ipxe_dir",
    "ipxe_version_of",
    "product_version_of",
    "resolve",
    "validate_script_url",
    "version_bytes",
]

#: The file names smee serves, in Smee's naming. The first three are what the
#: DHCP side hands out (smee-study.md §1.2); ipxe.iso is for BMC virtual media;
#: snponly.efi (x86-64, SNP driver only) is served when present but never offered.
BINARY_NAMES = ("undionly.kpxe", "ipxe.efi", "snp.efi", "ipxe.iso", "snponly.efi")

#: The generated script (never read from disk).
AUTOEXEC = "autoexec.ipxe"

#: Files looked for, in order, for each of our names. Debian ships the EFI
#: builds as ipxe-<arch>.efi, so --ipxe-dir=/usr/lib/ipxe works as is.
#: snponly.efi is deliberately NOT a source for snp.efi: it is an x86-64 build
#: and would never start on an arm64 machine.
ALIASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "undionly.kpxe": ("undionly.kpxe",),
    "ipxe.efi": ("ipxe.efi", "ipxe-amd64.efi"),
    "snp.efi": ("snp.efi", "ipxe-arm64.efi"),
    "ipxe.iso": ("ipxe.iso",),
    "snponly.efi": ("snponly.efi",),
})

#: name → (what it is, what happens without it), for the start-up warning.
#: A name missing from here is optional and its absence is not worth a warning.
_MISSING: Mapping[str, tuple[str, str]] = MappingProxyType({
    "undionly.kpxe": ("x86 BIOS", "BIOS clients will get no boot file"),
    "ipxe.efi": ("x86-64 UEFI", "x86 UEFI clients will get no boot file"),
    "snp.efi": ("arm64 UEFI", "arm64 clients will get no boot file"),
    "ipxe.iso": ("ISO image", "requests for ipxe.iso will be refused"),
})

_KNOWN = frozenset(BINARY_NAMES + (AUTOEXEC,))

#: The metadata file ``make bindata`` writes next to the binaries (key=value lines).
VERSION_FILE = "VERSION"

#: Smee's W3C traceparent suffix on boot file names (smee-study.md §1.2, §3.1).
_TRACEPARENT = re.compile(r"^(.*)-[0-9a-fA-F]{2}-[0-9a-fA-F]{32}-[0-9a-fA-F]{16}-[0-9a-fA-F]{2}$")

#: iPXE's DHCP feature table (src/include/ipxe/features.h): FEATURE_VERSION puts
#: 0xeb (175.235), length 3, major, minor, patch among one-byte feature entries
#: (tag 0x10-0x7f, length 1, value). The entries around it tell it from code.
_FEATURE = re.compile(rb"[\x10-\x7f]\x01.", re.DOTALL)
_VERSION_ENTRY = re.compile(rb"\xeb\x03(...)", re.DOTALL)
#: The SBAT line of iPXE's EFI builds: "ipxe,1,iPXE,<file>,<version>,https://ipxe.org".
_SBAT = re.compile(rb"ipxe,1,iPXE,[^,\n\0]{1,64},([^,\n\0]{1,128}),https://ipxe\.org")


def default_ipxe_dir() -> str:
    """Where the binaries are when --ipxe-dir is not given.

    In order: the repository's ``ipxe/bin`` (what ``make bindata`` fills, for
    a checkout), ``<sys.prefix>/share/smee/ipxe`` (a packaged install),
    Debian's ``/usr/lib/ipxe``. The last one is returned even when absent, so
    that the start-up warning names a real, conventional place.
    """
    candidates = (
        Path(smee.__file__).resolve().parent.parent / "ipxe" / "bin",
        Path(sys.prefix) / "share" / "smee" / "ipxe",
    )
    for directory in candidates:
        if _has_binaries(directory):
            return str(directory)
    return "/usr/lib/ipxe"


def _has_binaries(directory: Path) -> bool:
    return any((directory / source).is_file() for sources in ALIASES.values() for source in sources)


def ipxe_version_of(data: bytes) -> str | None:
    """The version a binary sends in option 175.235 ("1.0.0"), None if not found.

    Found by its DHCP feature table, so compressed binaries (undionly.kpxe,
    ipxe.pxe) give None; the EFI builds and the ISO are not compressed. When
    several candidates turn up, the one inside the longest run of feature
    entries wins.
    """
    best: tuple[int, str] | None = None
    for m in _VERSION_ENTRY.finditer(data):
        run = _feature_run(data, m.end())
        if run < 2:
            continue
        major, minor, patch = m.group(1)
        if best is None or run > best[0]:
            best = (run, f"{major}.{minor}.{patch}")
    return None if best is None else best[1]


def _feature_run(data: bytes, pos: int) -> int:
    """How many one-byte feature entries follow ``pos``."""
    run = 0
    while (m := _FEATURE.match(data, pos)) is not None:
        run += 1
        pos = m.end()
    return run


def product_version_of(data: bytes) -> str | None:
    """The version text of an EFI build (its SBAT line), e.g. "1.21.1+git20250501.dad20602+dfsg-1"."""
    m = _SBAT.search(data)
    return None if m is None else m.group(1).decode("ascii", "replace")


def version_bytes(version: str) -> bytes:
    """ "1.0.0" → b"\\x01\\x00\\x00", the value of option 175.235 (ValueError if malformed)."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() and int(p) < 256 for p in parts):
        raise ValueError(f"{version!r} is not an iPXE version (major.minor.patch, each 0-255)")
    return bytes(int(p) for p in parts)


def _is_version(text: str) -> bool:
    try:
        version_bytes(text)
    except ValueError:
        return False
    return True


def _read_metadata(directory: str) -> dict[str, str]:
    """``VERSION`` as written by ``make bindata``; {} when absent or unreadable."""
    try:
        text = Path(directory, VERSION_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Binaries:
    """iPXE binaries loaded into memory once at start-up (each ~1 MB; served from memory).

    Loading once means a request never touches the disk, a binary replaced
    under a running server cannot be served half-old and half-new, and the
    set the DHCP side offers is exactly the set the TFTP side can serve.
    """

    #: the directory they came from ("" when built by hand)
    directory: str = ""
    #: our name → content
    files: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    #: one line per problem, for the start-up log, e.g.
    #: "no snp.efi (arm64 UEFI) in /usr/lib/ipxe: arm64 clients will get no boot file"
    warnings: tuple[str, ...] = ()
    #: the iPXE version these binaries send in option 175.235, e.g. "1.0.0"; None if unknown
    version: str | None = None
    #: the version text they print (EFI SBAT / VERSION metadata), e.g. "1.21.1+git20250501.dad20602+dfsg-1"
    product_version: str | None = None
    #: our name → the file it was read from (differs for Debian names, e.g. "ipxe-amd64.efi")
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def load(cls, directory: str) -> Binaries:
        """Read every known binary in ``directory``; never raises.

        A missing or unreadable file is simply absent (with a warning when
        clients depend on it); an unreadable directory gives an empty set
        with one warning. An empty file counts as missing: serving zero bytes
        would make the client fail later and less clearly.
        """
        try:
            entries = set(os.listdir(directory))
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                why = "does not exist"
            elif isinstance(e, NotADirectoryError):
                why = "is not a directory"
            else:
                why = f"cannot be read ({e.strerror or e})"
            return cls(
                directory=directory,
                warnings=(
                    (
                        f"iPXE directory {directory} {why}: no iPXE binaries, netboot clients will get no "
                        "boot file (run 'make bindata' or set --ipxe-dir)"
                    ),
                ),
            )
        files: dict[str, bytes] = {}
        sources: dict[str, str] = {}
        warnings: list[str] = []
        for name in BINARY_NAMES:
            for source in ALIASES[name]:
                if source not in entries:
                    continue
                path = os.path.join(directory, source)
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as e:
                    warnings.append(f"cannot read {path}: {e.strerror or e}")
                    continue
                if not data:
                    warnings.append(f"{path} is empty: ignored")
                    continue
                files[name], sources[name] = data, source
                break
            else:
                if name in _MISSING:
                    what, consequence = _MISSING[name]
                    warnings.append(f"no {name} ({what}) in {directory}: {consequence}")

        found = Counter(v for v in map(ipxe_version_of, files.values()) if v is not None)
        metadata = _read_metadata(directory)
        if found:
            version: str | None = found.most_common(1)[0][0]
            if len(found) > 1:
                listed = ", ".join(sorted(found))
                warnings.append(
                    f"the binaries in {directory} report different iPXE versions ({listed}); "
                    f"recognising only {version} as smee's own"
                )
        else:
            version = metadata.get("ipxe-version") or None
            if version is not None and not _is_version(version):
                warnings.append(f"{directory}/{VERSION_FILE}: ignored ipxe-version {version!r} (not major.minor.patch)")
                version = None
        product = next(filter(None, map(product_version_of, files.values())), None)
        product = product or metadata.get("product-version") or metadata.get("package-version") or None
        return cls(
            directory=directory,
            files=MappingProxyType(files),
            warnings=tuple(warnings),
            version=version,
            product_version=product,
            sources=MappingProxyType(sources),
        )

    def get(self, name: str) -> bytes | None:
        """The content of ``name`` (one of :data:`BINARY_NAMES`), None when absent."""
        return self.files.get(name)

    def available(self) -> frozenset[str]:
        """The names that can be served (what DHCPConfig.available_binaries wants)."""
        return frozenset(self.files)


def resolve(filename: str) -> tuple[str, str | None] | None:
    """Map a requested name to (file name, MAC or None); None for anything not served.

    Accepted, as Smee's TFTP and HTTP binary servers do: ``ipxe.efi``,
    ``/ipxe.efi``, ``<mac>/ipxe.efi`` (any MAC notation, normalised),
    ``/<mac>/ipxe.efi``, and any of those with Smee's traceparent suffix
    (``ipxe.efi-00-<32 hex>-<16 hex>-01``). Names are :data:`BINARY_NAMES` and
    ``autoexec.ipxe``, matched exactly (case matters, as on Smee).

    Everything else is refused rather than cleaned up: "..", other
    directories, more than one leading "/", backslashes, NULs, empty names.
    Nothing here ever becomes a path on disk, but a strict grammar keeps
    logs and metrics honest about what was asked.
    """
    if not filename or "\\" in filename or "\0" in filename:
        return None
    name = filename.removeprefix("/")
    parts = name.split("/")
    if len(parts) > 2:
        return None
    mac = None
    if len(parts) == 2:
        if parts[0] != parts[0].strip():
            return None
        try:
            mac = normalize_mac(parts[0])
        except HardwareError:
            return None
    base = parts[-1]
    m = _TRACEPARENT.match(base)
    if m is not None:
        base = m.group(1)
    if base not in _KNOWN:
        return None
    return base, mac


# --- autoexec.ipxe ---

#: What the script puts where the MAC goes in the script URL when smee does not
#: know the client (proxy modes): iPXE expands it to the MAC of the interface
#: the script chose (``idx``), lower-case and colon-separated like Smee's URLs.
IPXE_MAC = "${net${idx}/mac}"

#: Characters allowed in a script URL outside ${...}: RFC 3986 characters minus
#: everything iPXE's command line treats specially (whitespace, quotes,
#: backslash, "#" comments, ";" and "|" separators) and the braces.
_URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?@!&()*+,=%[]")
#: Characters allowed in an iPXE setting name inside ${...} (e.g. "net0/mac", "43.116:string").
_VAR_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._:/")
_MAX_URL = 1024


def validate_script_url(url: str) -> str:
    """Return ``url`` if it is safe to put verbatim into an iPXE script, else raise ValueError
    (TypeError if it is not text at all).

    Safe means: an http:// or https:// URL of printable ASCII, no whitespace,
    none of iPXE's special characters, and "$" only as well-formed
    (possibly nested) ``${setting}`` expansions. A URL that passes is one
    argument to ``chain`` and can expand settings but never run a command.
    """
    if not isinstance(url, str):
        raise TypeError(f"script URL must be text, got {type(url).__name__}")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"script URL {url!r} is not an http:// or https:// URL")
    if len(url) > _MAX_URL:
        raise ValueError(f"script URL is longer than {_MAX_URL} characters")
    host = url.split("://", 1)[1]
    if not host or host[0] in "/?":
        raise ValueError(f"script URL {url!r} has no host")
    depth = 0
    i, n = 0, len(url)
    while i < n:
        c = url[i]
        if c == "$":
            if url[i + 1 : i + 2] != "{":
                raise ValueError(f"script URL {url!r}: '$' must start a ${{setting}} expansion")
            depth += 1
            i += 2
            continue
        if c == "}":
            if depth == 0:
                raise ValueError(f"script URL {url!r}: unbalanced '}}'")
            depth -= 1
        elif c not in (_VAR_CHARS if depth else _URL_CHARS):
            raise ValueError(f"script URL {url!r}: character {c!r} is not allowed in an iPXE script")
        i += 1
    if depth:
        raise ValueError(f"script URL {url!r}: unclosed '${{'")
    return url


#: The script; {url} is the only substitution and is validated first.
#: Labels and settings ("idx", "iface", "tries", "vlan-id") follow ipxedust's
#: embed.ipxe so that the two read alike on a console.
_AUTOEXEC = """\
#!ipxe
# autoexec.ipxe from smee: what Tinkerbell's embedded script does, for stock iPXE
set user-class Tinkerbell
set vlan-id ${{43.116:string}}
# the interface that booted has an address from the PXE ROM's DHCP; else net0
set idx:int32 0
:find
isset ${{net${{idx}}/mac}} || goto first
isset ${{net${{idx}}/ip}} && goto found ||
inc idx
goto find
:first
set idx:int32 0
:found
set iface net${{idx}}
isset ${{vlan-id}} || goto lease
isset ${{net${{idx}}-${{vlan-id}}/mac}} || vcreate --tag ${{vlan-id}} net${{idx}} || goto novlan
set iface net${{idx}}-${{vlan-id}}
goto lease
:novlan
echo smee: cannot create VLAN ${{vlan-id}} on net${{idx}}, trying untagged
:lease
set tries:int32 0
:retry
dhcp ${{iface}} && goto chain ||
inc tries
iseq ${{tries}} 10 && goto nolease ||
sleep 1
goto retry
:chain
chain --autofree {url} ||
echo smee: could not run the boot script {url}
exit 1
:nolease
echo smee: no DHCP lease on ${{iface}} after 10 tries
exit 1
"""


def autoexec_script(script_url: str) -> bytes:
    """The iPXE script served as autoexec.ipxe: DHCP as "Tinkerbell", then chain to ``script_url``.

    ``script_url`` goes in verbatim, so it is validated first
    (:func:`validate_script_url`; ValueError when unsafe). On any failure the
    script ends with ``exit 1``: iPXE then returns to the firmware, and UEFI
    goes on to its next boot entry instead of hanging at an iPXE prompt.
    """
    return _AUTOEXEC.format(url=validate_script_url(script_url)).encode("ascii")


def autoexec_for(config: DHCPConfig, match: Match | None) -> bytes:
    """autoexec.ipxe for one client: the same script URL the DHCP side gives it as "Tinkerbell".

    * A known machine in reservation mode: its hardware ``ipxe_url`` if set,
      else the global script URL with its MAC (``config.script_url_for``).
    * A known machine in a proxy mode: the global script URL with its MAC;
      like Smee's proxy DHCP, the hardware URL is left to the HTTP script
      server.
    * No machine (proxy modes do not look the client up): the global URL
      with :data:`IPXE_MAC` in the MAC's place when prepend_mac is on, so
      that iPXE fills in the MAC of the interface the script chose.

    Raises ValueError when the URL is not safe for a script (see
    :func:`validate_script_url`), e.g. a hardware record's ``ipxe_url``
    with a space in it: the server should refuse the file and log why.
    """
    if match is not None:
        iface = match.interface
        if config.mode == "reservation" and iface.ipxe_url:
            url = iface.ipxe_url
        else:
            url = config.script_url_for(iface.mac)
    else:
        url = config.script_url_for(IPXE_MAC)
    return autoexec_script(url)
