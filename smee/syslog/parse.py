# -*- test-case-name: tests.test_syslog_parse -*-
"""Syslog datagrams (RFC 3164 and RFC 5424) parsed the way Smee parses them.

A pure function, :func:`parse`, from the bytes of one datagram to a
:class:`Message`, or :class:`SyslogParseError`. The rules are Smee's
(``internal/syslog/message.go``, unchanged since Boots):

* ``<PRI>``: 1 to 3 digits; facility = PRI / 8, severity = PRI % 8.
* ``1 `` after it selects RFC 5424: ``TIMESTAMP HOSTNAME APP-NAME PROCID
  MSGID SD MSG``, ``-`` being nil. Structured data must be ``-``: a message
  with ``[...]`` fails the parse, as it does in Smee.
* Anything else is RFC 3164 as network boot clients send it (no HOSTNAME):
  an optional ``Jan _2 15:04:05`` timestamp, a TAG of ``[A-Za-z0-9_./-]``
  with an optional ``[pid]``, then ``": "``, a ``"<SEVERITY>: "`` prefix
  (the message's own severity name, e.g. ``INFO: ``), a
  ``"YYYY-MM-DD HH:MM:SS "`` prefix and one leading ``\\r`` are trimmed.
  Like Smee, a message with no ``TAG:`` loses its first word to the tag
  (``<6>hello world`` → app ``hello``, text ``" world"``), and iPXE with a
  hostname set (``<6>node1 ipxe: ...``) gives app ``node1``.

Where this differs from Smee (all stricter, none reachable by a conforming
sender): PRI must have 1 to 3 digits and be at most 191 (Smee accepts
``<>`` as 0 and wraps ``<999>`` modulo 256), and an RFC 5424 message whose
structured data ``-`` ends the datagram is accepted with an empty text
(Smee requires ``"- "``). The ``YYYY-MM-DD HH:MM:SS `` prefix is trimmed
whatever time it names (Smee trims it only when it equals the message's own
time, which for most senders is the receive time: a pure parser has none).

Bounds: datagrams over :data:`MAX_DATAGRAM` bytes are cut there
(``Message.truncated``); bytes that are not UTF-8 are decoded with U+FFFD.
A text starting with ``{`` that decodes to a JSON object also gives
``Message.fields``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

__all__ = [
    "FACILITIES",
    "MAX_DATAGRAM",
    "MAX_PRI",
    "SEVERITIES",
    "Message",
    "SyslogParseError",
    "parse",
]

#: Longest datagram parsed; the rest is cut off and ``truncated`` set.
MAX_DATAGRAM = 8192

#: Largest PRI RFC 5424 allows (facility local7, severity debug).
MAX_PRI = 191

#: Facility names, as Smee prints them (its Go stringer of the facility codes).
FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news",
    "uucp", "clock", "authpriv", "ftp", "ntp", "audit", "alert", "cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)

#: Severity names, as Smee prints them; also the ``<SEVERITY>: `` prefix trimmed from RFC 3164 text.
SEVERITIES = ("EMERG", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG")


class SyslogParseError(ValueError):
    """The datagram is not syslog as Smee reads it; the text says which part failed."""


@dataclass(frozen=True)
class Message:
    """One parsed syslog message. Absent and nil (``-``) header fields are None."""

    facility: int
    severity: int
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    #: RFC 5424: aware datetime (None for ``-``); RFC 3164: naive, in the year given to parse()
    timestamp: datetime | None
    text: str
    #: the text decoded as a JSON object when it starts with ``{``, else None
    fields: Mapping[str, Any] | None = None
    rfc: int = 3164
    #: the datagram was longer than MAX_DATAGRAM and was cut
    truncated: bool = False

    @property
    def priority(self) -> int:
        return self.facility * 8 + self.severity

    @property
    def facility_name(self) -> str:
        return FACILITIES[self.facility]

    @property
    def severity_name(self) -> str:
        return SEVERITIES[self.severity]


def parse(data: bytes, *, year: int | None = None) -> Message:
    """Parse one datagram; ``year`` completes an RFC 3164 timestamp (default: this year, UTC)."""
    truncated = len(data) > MAX_DATAGRAM
    if truncated:
        data = data[:MAX_DATAGRAM]
    text = data.decode("utf-8", errors="replace")
    pri, rest = _priority(text)
    facility, severity = divmod(pri, 8)
    if rest[:2] == "1 ":
        return _rfc5424(facility, severity, rest[2:], truncated)
    return _rfc3164(facility, severity, rest, truncated, year)


def _priority(text: str) -> tuple[int, str]:
    if not text:
        raise SyslogParseError("empty datagram")
    if text[0] != "<":
        raise SyslogParseError("no <PRI> at the start")
    end = text.find(">", 1, 5)
    if end == -1:
        raise SyslogParseError("<PRI> not closed within 3 digits")
    digits = text[1:end]
    if not digits or not all("0" <= c <= "9" for c in digits):
        raise SyslogParseError(f"<PRI> is not 1 to 3 digits: {digits!r}")
    pri = int(digits)
    if pri > MAX_PRI:
        raise SyslogParseError(f"<PRI> {pri} out of range (0-{MAX_PRI})")
    return pri, text[end + 1 :]


# --- RFC 5424 -----------------------------------------------------------------

#: Go's "2006-01-02T15:04:05.999999Z07:00" as time.Parse reads it (any number of fraction digits).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.,]([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})"
)
#: len("2006-01-02T15:04:05.999999Z07:00"): Smee refuses longer timestamps.
_RFC3339_MAX = 32


def _rfc5424(facility: int, severity: int, rest: str, truncated: bool) -> Message:
    parts = rest.split(" ", 5)
    if len(parts) != 6:
        raise SyslogParseError("RFC 5424 header is not TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD")
    stamp, hostname, app, procid, msgid, tail = parts
    timestamp = None if stamp == "-" else _rfc3339(stamp)
    if tail == "-":
        text = ""  # SD nil and no MSG (Smee wants "- "; RFC 5424 allows this)
    elif tail[:2] == "- ":
        text = tail[2:]
    else:
        raise SyslogParseError("RFC 5424 structured data other than '-' is not supported (as in Smee)")
    return Message(
        facility, severity, _nil(hostname), _nil(app), _nil(procid), _nil(msgid),
        timestamp, text, _json(text), 5424, truncated,
    )


def _rfc3339(stamp: str) -> datetime:
    m = _RFC3339.fullmatch(stamp) if len(stamp) <= _RFC3339_MAX else None
    if m is None:
        raise SyslogParseError(f"RFC 5424 timestamp {stamp!r} is not RFC 3339")
    y, mo, d, h, mi, s, frac, zone = m.groups()
    if zone == "Z":
        tz = UTC
    else:
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise SyslogParseError(f"RFC 5424 timestamp {stamp!r} has a bad offset")
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(
            int(y), int(mo), int(d), int(h), int(mi), int(s),
            int((frac or "0")[:6].ljust(6, "0")), tzinfo=tz,
        )
    except ValueError as e:
        raise SyslogParseError(f"RFC 5424 timestamp {stamp!r}: {e}") from None


def _nil(value: str) -> str | None:
    return None if value == "-" else value


# --- RFC 3164 -----------------------------------------------------------------

_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
#: Go's time.Stamp, "Jan _2 15:04:05", followed by the space Smee requires.
_STAMP = re.compile(r"([A-Za-z]{3}) ( [0-9]|[0-9]{1,2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/.")
_TIME_PREFIX = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} ")


def _rfc3164(facility: int, severity: int, rest: str, truncated: bool, year: int | None) -> Message:
    timestamp, rest = _legacy_stamp(rest, year)
    app, procid, rest = _legacy_tag(rest)
    prefix = SEVERITIES[severity] + ": "
    rest = rest.removeprefix(prefix)
    m = _TIME_PREFIX.match(rest)
    if m is not None:
        rest = rest[m.end() :]
    if rest[:1] == "\r":
        rest = rest[1:]
    return Message(facility, severity, None, app, procid, None, timestamp, rest, _json(rest), 3164, truncated)


def _legacy_stamp(rest: str, year: int | None) -> tuple[datetime | None, str]:
    # Exactly 15 characters then a space, as Smee checks: "Jan  2 ..." or "Jan 12 ...".
    m = _STAMP.match(rest)
    if m is None or m.end() != 16:
        return None, rest
    mon, day, h, mi, s = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None, rest
    if year is None:
        year = datetime.now(UTC).year
    try:
        # Feb 29 outside a leap year: Go accepts it (it parses in year 0, a leap year).
        stamp = datetime(year, month, int(day), int(h), int(mi), int(s))
    except ValueError:
        if (month, int(day)) != (2, 29) or not (int(h) < 24 and int(mi) < 60 and int(s) < 60):
            return None, rest
        stamp = datetime(year, 3, 1, int(h), int(mi), int(s))
    return stamp, rest[16:]


def _legacy_tag(rest: str) -> tuple[str | None, str | None, str]:
    """TAG[pid]: as Smee's parseLegacyTag: the tag ends at the first character not allowed in one."""
    for i, c in enumerate(rest):
        if c in _TAG_CHARS:
            continue
        app = rest[:i] or None
        tail = rest[i:]
        procid = None
        if c == "[":
            close = tail.find("]", 1)
            if close != -1:
                procid, tail = tail[1:close], tail[close + 1 :]
        tail = tail.removeprefix(": ")
        return app, procid, tail
    # Only tag characters (or nothing): no tag, the whole text is the message.
    return None, None, rest


def _json(text: str) -> Mapping[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the C decoder goes
        return None
    return value if isinstance(value, dict) else None
