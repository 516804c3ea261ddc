"""Checks for every value a hardware record holds; errors name the field path."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from ipaddress import IPv4Address
from typing import Any, Callable
from urllib.parse import urlsplit

from smee.formats.documents import Path, _Float, _Int
from smee.hardware import (
    DEFAULT_LEASE_TIME,
    HardwareError,
    check_hostname,
    freeze,
    normalize_mac,
    parse_ipv4,
    parse_netmask,
    parse_vlan,
)

# ----------------------------------------------------------------- value checks


class _Invalid(Exception):
    """A validation failure at a key path inside the current document."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _label(path: Path) -> str:
    """``spec.interfaces[0].dhcp.mac``; keys that are not identifiers are quoted."""
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif _IDENT.match(step):
            out += f".{step}" if out else step
        else:
            out += f"[{json.dumps(step)}]"
    return out or "document"


def _raw(value: Any) -> Any:
    """A scalar as written: YAML numbers keep their text, JSON numbers become text."""
    if type(value) is str:
        return value
    if isinstance(value, (_Int, _Float)):
        return value.text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _kind(value: Any) -> str:
    """What was found instead, short enough for a log line."""
    for kind, name in ((bool, "a boolean"), (dict, "a mapping"), (list, "a list")):
        if isinstance(value, kind):
            return name
    text = repr(_raw(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _text(path: Path, value: Any, free: bool = False) -> str:
    """A string field; unless ``free`` (scripts, userdata) it must be one line of printable text."""
    if type(value) is not str:
        if value is None:
            return ""
        value = _raw(value)
    if not isinstance(value, str):
        raise _Invalid(path, f"{_label(path)}: expected a string, got {_kind(value)}")
    if not free and _CONTROL.search(value):
        raise _Invalid(path, f"{_label(path)}: {value!r} contains a control character")
    return value


def _checked(path: Path, parse: Callable[[Any, str], Any], value: Any) -> Any:
    """Run a :mod:`smee.hardware` parser; the field label is only rendered on failure."""
    try:
        return parse(value, "")
    except HardwareError:
        pass
    try:
        return parse(value, _label(path))
    except HardwareError as e:
        raise _Invalid(path, str(e)) from None


@lru_cache(maxsize=65536)
def _ipv4(text: str) -> IPv4Address | None:
    try:
        return parse_ipv4(text, "")
    except HardwareError:
        return None


@lru_cache(maxsize=1024)
def _mask(text: str) -> IPv4Address | None:
    try:
        return parse_netmask(text, "")
    except HardwareError:
        return None


def _ip(path: Path, value: Any, required: bool = False) -> IPv4Address | None:
    if value is None or value == "":
        if required:
            raise _Invalid(path, f"{_label(path)} is required")
        return None
    text = _raw(value)
    found = _ipv4(text) if isinstance(text, str) else None
    return found or _checked(path, parse_ipv4, text)


def _netmask(path: Path, value: Any, required: bool = False) -> IPv4Address | None:
    if value is None or value == "":
        if required:
            raise _Invalid(path, f"{_label(path)} is required")
        return None
    text = _raw(value)
    found = _mask(text) if isinstance(text, str) else None
    return found or _checked(path, parse_netmask, text)


def _ips(path: Path, value: Any) -> tuple[IPv4Address, ...]:
    """A DNS/NTP server list: every entry must parse (Smee stops at the first bad one)."""
    out = []
    for i, item in enumerate(_list(path, value)):
        text = _raw(item)
        found = _ipv4(text) if isinstance(text, str) else None
        out.append(found or _checked(path + (i,), parse_ipv4, text))
    return tuple(out)


_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _mac(path: Path, value: Any) -> str:
    if type(value) is str and _CANONICAL_MAC.fullmatch(value):
        return value  # already in the normal form: the common case, made cheap
    if value is None or value == "":
        raise _Invalid(path, f"{_label(path)} (a MAC address) is required")
    try:
        return normalize_mac(_raw(value))
    except HardwareError as e:
        raise _Invalid(path, f"{_label(path)}: {e}") from None


def _vlan(path: Path, value: Any) -> str:
    if isinstance(value, bool):
        raise _Invalid(path, f"{_label(path)}: expected a VLAN id, got a boolean")
    return _checked(path, parse_vlan, _raw(value))  # type: ignore[no-any-return]


def _host(path: Path, value: Any) -> str:
    return _checked(path, check_hostname, _text(path, value))  # type: ignore[no-any-return]


def _hosts(path: Path, value: Any) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(_list(path, value)):
        name = _host(path + (i,), item)
        if not name:
            raise _Invalid(path + (i,), f"{_label(path + (i,))}: empty domain name")
        out.append(name)
    return tuple(out)


def _bool(path: Path, value: Any) -> bool:
    """A real boolean, or the strings "true"/"false"; ``yes``-ish numbers are mistakes."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _Invalid(path, f"{_label(path)}: expected true or false, got {_kind(value)}")


def _lease(path: Path, value: Any) -> int:
    """Seconds, 0..2**32-1 (DHCP option 51 is 32 bits); missing means one day."""
    if value is None:
        return DEFAULT_LEASE_TIME
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= 0xFFFFFFFF
    ):
        raise _Invalid(
            path,
            f"{_label(path)}: expected a lease time in seconds (0-4294967295), got {_kind(value)}",
        )
    return int(value)


def _url(path: Path, value: Any) -> str:
    """An absolute http(s) URL: it is chained to from iPXE."""
    text = _text(path, value)
    if not text:
        return ""
    try:
        parts = urlsplit(text)
        ok = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and " " not in text
        )
    except ValueError:
        ok = False
    if not ok:
        raise _Invalid(
            path, f"{_label(path)}: {text!r} is not an absolute http:// or https:// URL"
        )
    return text


def _map(path: Path, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(path, f"{_label(path)}: expected a mapping, got {_kind(value)}")
    return value


def _list(path: Path, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid(path, f"{_label(path)}: expected a list, got {_kind(value)}")
    return value


def _frozen(path: Path, value: Any) -> Any:
    try:
        return freeze(_map(path, value))
    except RecursionError:
        raise _Invalid(
            path, f"{_label(path)}: nested too deeply (or refers to itself)"
        ) from None
