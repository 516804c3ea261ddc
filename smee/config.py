"""smee's settings: one table drives the flags, the environment, the YAML file and the README.

Every setting has Smee-HEAD's flag name and default where Smee has one
(smee-study.md §7.1). A value is taken from, in order: the command-line flag,
``SMEE_<NAME>`` in the environment, the ``--config`` YAML file, the default.
All values are parsed by the same function whatever their source, and every
error names the option and where the bad value came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, make_dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import yaml

#: Default marker: "the detected public IP" (see :func:`smee.netif.detect_public_ip`).
PUBLIC_IP = "<public-ip>"

DHCP_MODES = ("reservation", "proxy", "auto-proxy")
LOG_LEVELS = ("debug", "info", "warn", "error")


class ConfigError(ValueError):
    """A setting has an invalid value; ``str()`` names the option and the source."""

    def __init__(self, option: str, message: str, source: str = "") -> None:
        where = f" (from {source})" if source and source != "flag" else ""
        super().__init__(f"--{option}: {message}{where}")
        self.option = option


# --- value parsers: text in, typed value out, ValueError with a short reason ---


def p_str(text: str) -> str:
    return text


def p_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true or false)")


def p_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value

    return parse


p_port = p_int(1, 65535)


def p_number(low: float, high: float) -> Callable[[str], float]:
    """A decimal number in [low, high] (rates: ``5``, ``0.5``); NaN and infinities are out of range."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise ValueError(f"{text.strip()} is out of range {low:g}-{high:g}")
        return value

    return parse


def p_ip(text: str) -> IPv4Address:
    try:
        return IPv4Address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def p_ip_port(text: str) -> tuple[IPv4Address, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not IP:port")
    return p_ip(host), p_port(port)


def p_host(text: str) -> str:
    """A host for a URL: an IPv4 address or a DNS name."""
    value = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
        raise ValueError(f"{text!r} is not a host name or IPv4 address")
    return value


def p_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return value

    return parse


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def p_duration(text: str) -> float:
    """Seconds, from a number of seconds or a Go-style duration (``5s``, ``1m30s``, ``500ms``)."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION_RE.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"{text!r} is not a duration (e.g. 5s, 500ms, 1m)") from None
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be positive")
    return seconds


def p_url(text: str) -> str:
    """An absolute http(s) URL, or empty."""
    value = text.strip()
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{text!r} is not an http:// or https:// URL")
    return value


def p_url_path(text: str) -> str:
    value = text.strip()
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"{text!r} is not a URL path starting with /")
    return value


def p_cidrs(text: str) -> tuple[IPv4Network, ...]:
    """Comma-separated CIDRs or single IPs (an IP means /32), as Smee's ``-trusted-proxies``."""
    nets = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            net = ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 CIDR or address") from None
        if not isinstance(net, IPv4Network):
            raise ValueError(f"{item!r} is not IPv4 (smee serves IPv4 only)")
        nets.append(net)
    return tuple(nets)


def p_names(text: str) -> tuple[str, ...]:
    """Comma-separated interface names."""
    names = tuple(filter(None, (part.strip() for part in text.split(","))))
    for name in names:
        if len(name) > 15 or "/" in name or any(c.isspace() for c in name):
            raise ValueError(f"{name!r} is not a network interface name")
    return names


# --- the table ---


@dataclass(frozen=True)
class Setting:
    """One setting: its flag name, default (as text, like a user would write it), parser and help."""

    name: str
    default: str
    parse: Callable[[str], Any]
    help: str
    group: str

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "SMEE_" + self.name.upper().replace("-", "_")


def _table() -> tuple[Setting, ...]:
    S = Setting
    return (
        S("log-level", "info", p_choice(*LOG_LEVELS), "Lowest level logged: debug, info, warn or error.", "general"),
        S("public-ip", PUBLIC_IP, p_ip, "The address smee advertises; every <public-ip> default below. Detected from the interface with the default route.", "general"),
        S("public-ip-interface", "", p_str, "Detect the public IP from this interface instead of the default-route one.", "general"),
        # DHCP
        S("dhcp-enabled", "true", p_bool, "Run the DHCP server.", "dhcp"),
        S("dhcp-mode", "reservation", p_choice(*DHCP_MODES), "reservation (leases from hardware records), proxy (netboot info for known machines only) or auto-proxy (netboot info for every netboot client).", "dhcp"),
        S("dhcp-addr", "0.0.0.0:67", p_ip_port, "DHCP listen address (IP:port). Keep 0.0.0.0 to receive broadcasts; use --dhcp-iface to limit interfaces.", "dhcp"),
        S("dhcp-iface", "", p_names, "Interface(s) to serve DHCP on (SO_BINDTODEVICE), comma-separated; empty = all.", "dhcp"),
        S("dhcp-ip-for-packet", PUBLIC_IP, p_ip, "Server identifier (option 54) and siaddr for non-netboot clients.", "dhcp"),
        S("dhcp-syslog-ip", PUBLIC_IP, p_ip, "Syslog server given to clients (option 7) and syslog_host= in scripts.", "dhcp"),
        S("dhcp-tftp-ip", PUBLIC_IP, p_ip, "TFTP server given to PXE clients (siaddr / next-server).", "dhcp"),
        S("dhcp-tftp-port", "69", p_port, "TFTP port used in tftp:// boot file URLs.", "dhcp"),
        S("dhcp-http-ipxe-binary-scheme", "http", p_choice("http", "https"), "Scheme of the iPXE binary URL for UEFI HTTP Boot clients.", "dhcp"),
        S("dhcp-http-ipxe-binary-host", PUBLIC_IP, p_host, "Host of the iPXE binary URL.", "dhcp"),
        S("dhcp-http-ipxe-binary-port", "8080", p_port, "Port of the iPXE binary URL.", "dhcp"),
        S("dhcp-http-ipxe-binary-path", "/ipxe/", p_url_path, "Path of the iPXE binary URL.", "dhcp"),
        S("dhcp-http-ipxe-script-scheme", "http", p_choice("http", "https"), "Scheme of the iPXE script URL.", "dhcp"),
        S("dhcp-http-ipxe-script-host", PUBLIC_IP, p_host, "Host of the iPXE script URL.", "dhcp"),
        S("dhcp-http-ipxe-script-port", "8080", p_port, "Port of the iPXE script URL (left out of the URL when it is the scheme's default).", "dhcp"),
        S("dhcp-http-ipxe-script-path", "/auto.ipxe", p_url_path, "Path of the iPXE script URL.", "dhcp"),
        S("dhcp-http-ipxe-script-url", "", p_url, "Full iPXE script URL; overrides the four settings above.", "dhcp"),
        S("dhcp-http-ipxe-script-prepend-mac", "true", p_bool, "Insert the client MAC into the script URL path (/auto.ipxe -> /<mac>/auto.ipxe).", "dhcp"),
        S("dhcp-ipxe-rom-chainload", "false", p_bool, "Answer a foreign iPXE ROM (user class iPXE) with our binary, tftp://<tftp-ip>:<port>/<mac>/<binary>, as Smee does, instead of the script URL; once smee has served that binary, the machine's next iPXE request gets the script.", "dhcp"),
        S("dhcp-rate-limit", "5", p_number(0, 1_000_000), "DHCP requests per second answered per client MAC once its burst is spent (per socket); more get no reply and count as outcome rate-limited; 0 = no limit.", "dhcp"),
        S("dhcp-rate-burst", "10", p_int(1, 1_000_000), "DHCP requests a client MAC may send at once before --dhcp-rate-limit applies (a PXE ROM, iPXE and a chainload send 2 to 6).", "dhcp"),
        S("dhcp-reply-cache", "4096", p_int(0, 1_000_000), "Replies remembered per socket for requests repeated byte for byte but for the xid (retransmissions, a flooding client): answered without the policy; 0 = off.", "dhcp"),
        # TFTP
        S("tftp-enabled", "true", p_bool, "Run the TFTP server.", "tftp"),
        S("tftp-addr", PUBLIC_IP, p_ip, "TFTP listen address.", "tftp"),
        S("tftp-port", "69", p_port, "TFTP listen port.", "tftp"),
        S("tftp-timeout", "5s", p_duration, "TFTP retransmission timeout per packet.", "tftp"),
        S("tftp-block-size", "512", p_int(512, 65464), "Largest TFTP block size negotiated (also capped by the interface MTU).", "tftp"),
        S("tftp-single-port", "false", p_bool, "Serve every transfer from the listening port (Smee's mode, for NAT); default is one port per transfer (RFC 1350).", "tftp"),
        S("tftp-max-sessions", "1024", p_int(1, 100000), "Most TFTP transfers in progress at once; more get an ERROR.", "tftp"),
        S("tftp-retries", "5", p_int(1, 20), "Retransmissions of a TFTP packet before the transfer is abandoned.", "tftp"),
        S("ipxe-dir", "", p_str, "Directory of the iPXE binaries (undionly.kpxe, ipxe.efi, snp.efi). Default: where 'make bindata' put them, else /usr/lib/ipxe.", "tftp"),
        # HTTP
        S("http-ipxe-binary-enabled", "true", p_bool, "Serve iPXE binaries over HTTP under /ipxe/.", "http"),
        S("http-ipxe-script-enabled", "true", p_bool, "Serve iPXE scripts (auto.ipxe).", "http"),
        S("http-addr", PUBLIC_IP, p_ip, "HTTP listen address.", "http"),
        S("http-port", "8080", p_port, "HTTP listen port.", "http"),
        S("extra-kernel-args", "", p_str, "Extra kernel arguments appended to the OSIE/Hook kernel command line.", "http"),
        S("trusted-proxies", "", p_cidrs, "Comma-separated CIDRs of proxies whose X-Forwarded-For is trusted.", "http"),
        S("http-admin-networks", "127.0.0.0/8", p_cidrs, "Comma-separated CIDRs of clients allowed /machines (every machine's boot timeline) and /healthcheck's details (backend paths, URLs, errors); others get 403 and a short health answer.", "http"),
        S("http-header-timeout", "10s", p_duration, "Longest time a client may take to send one whole request (head and any body), however slowly it trickles bytes; then 408 and the connection is closed.", "http"),
        S("http-idle-timeout", "60s", p_duration, "An HTTP connection with no request for this long is closed (also bounds clients that stop reading an answer).", "http"),
        S("http-max-connections", "1000", p_int(0, 1_000_000), "Most HTTP connections open at once; more get 503 and are closed. 0 = no limit.", "http"),
        S("http-max-connections-per-ip", "128", p_int(0, 1_000_000), "Most HTTP connections open at once from one address (trusted proxies exempt); more get 503 and are closed. 0 = no limit.", "http"),
        S("osie-url", "", p_url, "Base URL of the OSIE/Hook kernel and initrd.", "http"),
        S("tink-server", "", p_str, "Tink server address (IP:port) given to workers as grpc_authority=.", "http"),
        S("tink-server-tls", "false", p_bool, "Workers use TLS to the Tink server (tinkerbell_tls=).", "http"),
        S("tink-server-insecure-tls", "false", p_bool, "Workers skip TLS verification (tinkerbell_insecure_tls=).", "http"),
        S("ipxe-script-retries", "0", p_int(0, 1000), "Retries of kernel/initrd downloads in generated scripts.", "http"),
        S("ipxe-script-retry-delay", "2", p_int(0, 3600), "Seconds between those retries.", "http"),
        # syslog
        S("syslog-enabled", "true", p_bool, "Run the syslog receiver.", "syslog"),
        S("syslog-addr", PUBLIC_IP, p_ip, "Syslog listen address.", "syslog"),
        S("syslog-port", "514", p_port, "Syslog listen port (UDP).", "syslog"),
        # backends
        S("backend-kube-enabled", "true", p_bool, "Read Hardware from Kubernetes (the default unless another backend is enabled).", "backend"),
        S("backend-kube-config", "", p_str, "Kubeconfig file (default: in-cluster service account).", "backend"),
        S("backend-kube-api", "", p_url, "Kubernetes API URL, overriding the kubeconfig.", "backend"),
        S("backend-kube-namespace", "", p_str, "Only read Hardware in this namespace (default: all).", "backend"),
        S("backend-file-enabled", "false", p_bool, "Read hardware from a file or directory (--backend-file-path).", "backend"),
        S("backend-file-path", "", p_str, "Hardware file or directory: Smee file YAML, Tinkerbell Hardware manifests or Tink JSON.", "backend"),
        S("backend-kube-sync-timeout", "10s", p_duration, "How long lookups wait for the first Kubernetes LIST before failing.", "backend"),
        S("backend-http-enabled", "false", p_bool, "Read hardware from an inventory service over HTTP (--backend-http-url).", "backend"),
        S("backend-http-url", "", p_url, "Base URL of the inventory service: GET {url}/hardware?mac=... and ?ip=...", "backend"),
        S("backend-http-timeout", "2s", p_duration, "Timeout of one inventory lookup.", "backend"),
        S("backend-http-cache-ttl", "5s", p_duration, "How long inventory answers (found or not) are reused.", "backend"),
        S("backend-noop-enabled", "false", p_bool, "No hardware at all (auto-proxy mode only).", "backend"),
    )


SETTINGS: tuple[Setting, ...] = _table()
BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}

#: The resolved, typed settings: one frozen attribute per table row (dashes → underscores).
Settings = make_dataclass(
    "Settings", [(s.attr, Any) for s in SETTINGS], frozen=True, slots=True
)
Settings.__doc__ = "Resolved settings; attribute names are the flag names with underscores."

#: Settings whose <public-ip> default must be resolved (address-typed).
_IP_TYPED = {s.name for s in SETTINGS if s.parse is p_ip}


def _as_text(value: Any) -> str:
    """YAML gives ints, bools and lists; settings are parsed from text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_as_text(v) for v in value)
    if value is None:
        return ""
    return str(value)


def read_config_file(path: str) -> dict[str, str]:
    """Load a ``--config`` YAML map of setting names to values."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError("config", f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must be a YAML map of setting names to values")
    out = {}
    for key, value in data.items():
        name = str(key).replace("_", "-")
        if name not in BY_NAME:
            raise ConfigError("config", f"{path}: unknown setting {key!r}")
        out[name] = _as_text(value)
    return out


@dataclass(frozen=True)
class Sources:
    """Raw text values by setting name, from each source; the winner is picked per setting."""

    flags: Mapping[str, str]
    env: Mapping[str, str]
    file: Mapping[str, str]


def resolve(
    sources: Sources,
    detect_ip: Callable[[str], IPv4Address | None],
) -> tuple[Any, dict[str, str]]:
    """Pick and parse every setting; return (Settings, where each value came from).

    ``detect_ip(interface)`` is only called when some setting still holds the
    <public-ip> default, so an operator who sets every address never depends
    on the detection.
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for s in SETTINGS:
        for where, table in (("flag", sources.flags), (s.env, sources.env), ("config file", sources.file)):
            if s.name in table:
                text, origin[s.name] = table[s.name], where
                break
        else:
            text, origin[s.name] = s.default, "default"
        if text == PUBLIC_IP:
            values[s.name] = PUBLIC_IP
            continue
        try:
            values[s.name] = s.parse(text)
        except ValueError as e:
            raise ConfigError(s.name, str(e), origin[s.name]) from None

    if PUBLIC_IP in values.values():
        if values["public-ip"] == PUBLIC_IP:
            iface = values["public-ip-interface"]
            found = detect_ip(iface)
            if found is None:
                where = f"interface {iface!r}" if iface else "the default-route interface"
                raise ConfigError("public-ip", f"could not detect an IPv4 address on {where}; set --public-ip")
            values["public-ip"] = found
        for name, value in values.items():
            if value == PUBLIC_IP:
                values[name] = values["public-ip"] if name in _IP_TYPED else str(values["public-ip"])
    settings = Settings(**{name.replace("-", "_"): v for name, v in values.items()})
    validate(settings, origin)
    return settings, origin


def validate(settings: Any, origin: Mapping[str, str]) -> None:
    """Checks that involve more than one setting."""
    chosen = [
        name
        for name in ("backend-file-enabled", "backend-http-enabled", "backend-noop-enabled")
        if getattr(settings, name.replace("-", "_"))
    ]
    kube_explicit = origin["backend-kube-enabled"] != "default" and settings.backend_kube_enabled
    if chosen and kube_explicit:
        chosen.append("backend-kube-enabled")
    if len(chosen) > 1:
        raise ConfigError(chosen[-1], "only one backend can be enabled; also enabled: " + ", ".join("--" + c for c in chosen[:-1]))
    backend = backend_name(settings)
    if backend == "noop" and settings.dhcp_mode != "auto-proxy":
        raise ConfigError("backend-noop-enabled", "the noop backend needs --dhcp-mode=auto-proxy (it knows no hardware)")
    if backend == "file":
        path = settings.backend_file_path
        if not path:
            raise ConfigError("backend-file-path", "required with --backend-file-enabled")
        if not os.path.exists(path):
            raise ConfigError("backend-file-path", f"{path} does not exist", origin["backend-file-path"])
        if not os.access(path, os.R_OK):
            raise ConfigError("backend-file-path", f"{path} is not readable", origin["backend-file-path"])
    if backend == "http" and not settings.backend_http_url:
        raise ConfigError("backend-http-url", "required with --backend-http-enabled")


def backend_name(settings: Any) -> str:
    """Which backend the settings select: file, http, noop or kube (Smee's default)."""
    if settings.backend_file_enabled:
        return "file"
    if settings.backend_http_enabled:
        return "http"
    if settings.backend_noop_enabled:
        return "noop"
    return "kube"


def env_sources(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Settings given as ``SMEE_*`` variables, and the names of unknown ``SMEE_*`` variables."""
    known = {s.env: s.name for s in SETTINGS}
    found, unknown = {}, []
    for key, value in environ.items():
        if key in known:
            found[known[key]] = value
        elif key.startswith("SMEE_") and key != "SMEE_CONFIG":
            unknown.append(key)
    return found, sorted(unknown)


def reference_markdown() -> str:
    """The configuration reference in the README, generated from the table so it cannot drift."""
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else '""'
        lines.append(f"| `--{s.name}` | `{s.env}` | {default} | {s.help} |")
    return "\n".join(lines) + "\n"


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]
