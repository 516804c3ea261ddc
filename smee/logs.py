# -*- test-case-name: tests.test_logs -*-
"""smee's log observer: ``twistd --logger=smee.logs.observer``.

smee logs through :mod:`twisted.logger`, one namespace per component
(``smee.dhcp``, ``smee.tftp``, ``smee.http``, ``smee.backends.*``), with
structured fields (``mac``, ``outcome``, ``reason``...). :func:`observer` is the
factory twistd calls for ``--logger``; it returns an :class:`SmeeObserver` that

* writes one JSON object per line to stdout, or readable text when stdout is a TTY;
* drops events below ``--log-level`` (flag > ``SMEE_LOG_LEVEL`` > ``--config`` file > info);
* demotes Twisted's per-port chatter ("... starting on N", "(UDP Port N Closed)",
  "Starting protocol ...") to debug;
* rate-limits repeated refusals (info/warn events from ``smee.*`` carrying an
  ``outcome`` field) with a :class:`RateLimiter`, so a flood cannot fill a disk.
  Errors are never suppressed;
* redacts secrets at every level (:func:`redact_text`, :func:`redact_value`):
  values of fields whose name says secret (``password``, ``token``,
  ``secret``, ``authorization``...), ``key=value`` / ``key: value`` pairs with
  such a key in any text (kernel arguments like ``registry_password=...``,
  query strings, dict and JSON reprs), ``Bearer``/``Basic`` credentials and the
  userinfo of URLs (``https://user:pass@host`` -> ``https://user:REDACTED@host``).
  Log files are read by more people than hardware records and kubeconfigs
  are, and a secret that reached a log cannot be taken back.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, formatEvent
from twisted.python.reflect import safe_repr
from zope.interface import implementer

from smee import config

#: twisted.logger levels by smee's ``--log-level`` names.
LEVELS: Mapping[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
_PRIORITY = {
    LogLevel.debug: 0,
    LogLevel.info: 1,
    LogLevel.warn: 2,
    LogLevel.error: 3,
    LogLevel.critical: 4,
}

#: Twisted's per-port/per-protocol lines, logged at info by Twisted, shown at debug by smee.
_NOISY = re.compile(
    r".* starting on \d+"
    r"|\((?:UDP |TCP |UNIX )?Port \S+ Closed\)"
    r"|(?:Starting|Stopping) (?:protocol|factory) .*",
    re.DOTALL,
)

#: Keys of legacy (twisted.python.log) events that duplicate what the record already says.
_LEGACY_KEYS = frozenset({"message", "time", "isError", "format", "why", "failure"})

#: The record's own keys; an event field of the same name is left out rather than overwrite them.
_RECORD_KEYS = frozenset({"time", "level", "namespace", "message", "traceback"})


# --- redaction of secrets ---

#: What replaces a secret.
REDACTED = "REDACTED"

#: Words that make a key name secret (matched anywhere in the name, any case):
#: ``registry_password``, ``crypted_root_password``, ``pwhash``, ``bearer_token``,
#: ``client_secret``, ``Authorization``, ``api_key``, ``aws_access_key_id``...
_SECRET_WORD = (
    r"pass(?:word|wd|phrase)|pwhash|secret|token|authori[sz]ation|api[_-]?key"
    r"|access[_-]?key|private[_-]?key|credentials?|cookie"
)
_SECRET_KEY = re.compile(rf"(?i)(?:{_SECRET_WORD})")
#: The same on lower-cased text: without IGNORECASE the regex engine is ~100x faster on long text.
_SECRET_LOWER = re.compile(_SECRET_WORD)
#: After a secret key: the separator and the value of ``key=value``, ``key: value``,
#: ``"key": "value"``, ``'key': 'value'``. An unquoted value runs to whitespace, ``&`` (query
#: strings), ``<>`` or a quote that ends it (one followed by a space, punctuation or the end:
#: a password may hold quotes); a quoted one to its closing quote; an HTTP scheme word
#: (``Authorization: Bearer x``) is kept.
_SEP_VALUE = re.compile(
    r"""(?ix)
    (?P<sep>["']?[ \t]*[=:][ \t]*(?:(?:bearer|basic|digest|token)[ \t]+)?)
    (?P<value>"[^"]*"?|'[^']*'?|(?:[^\s"'&<>]|["'](?![\s,;:)\]}]|$))+)
    """
)
_KEY_CHARS = re.compile(r"[\w.-]*")
#: A key is found from its secret word backwards over at most this many characters.
_MAX_KEY_PREFIX = 64
#: ``Bearer <token>`` anywhere (a header dump); real tokens are long, prose words are not.
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer)(?P<sp>\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")
#: The userinfo of a URL: ``scheme://user:password@`` or ``scheme://token@``. Greedy up to the
#: last ``@`` before the path, so a password with an unencoded ``@`` is covered too.
_USERINFO = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#\"'<>]+)@")


def is_secret_key(name: object) -> bool:
    """True if a field or mapping key with this name holds a secret (``registry_password``...)."""
    return isinstance(name, str) and _SECRET_KEY.search(name) is not None


def _is_key_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_.-"


def _redact_pairs(text: str) -> str:
    """Redact the value after every secret key (``registry_password=...``).

    Found from each secret word (a linear scan, whatever the text: log lines can
    carry 8 KiB of a client's bytes); a key that is the last part of a path
    (``.../serviceaccount/token: permission denied``) is not a key.
    """
    out: list[str] = []
    emitted = 0  # text[:emitted] is in out
    skip = 0  # secret words before this are inside a key or value already handled
    lower = text.lower()
    # lower() keeps positions unless a non-ASCII character changes length (then: the slow way)
    words = _SECRET_LOWER.finditer(lower) if len(lower) == len(text) else _SECRET_KEY.finditer(text)
    for word in words:
        if word.start() < skip:
            continue
        key_end = _KEY_CHARS.match(text, word.end()).end()  # type: ignore[union-attr]
        start, floor = word.start(), max(skip, word.start() - _MAX_KEY_PREFIX)
        while start > floor and _is_key_char(text[start - 1]):
            start -= 1
        found = None if start > 0 and text[start - 1] == "/" else _SEP_VALUE.match(text, key_end)
        value = found.group("value") if found is not None else ""
        quote = value[:1] if value[:1] in ("'", '"') else ""
        if found is None or not value.strip(quote):  # an empty value hides nothing ("token=")
            skip = key_end  # the same key for every later word in it
            continue
        closing = quote if len(value) > 1 and value.endswith(quote) else ""
        out.append(text[emitted:found.start("value")])
        out.append(f"{quote}{REDACTED}{closing}")
        emitted = skip = found.end()
    if not out:
        return text
    out.append(text[emitted:])
    return "".join(out)


def _redact_userinfo(m: re.Match[str]) -> str:
    user, colon, _password = m.group("userinfo").partition(":")
    # user:password keeps the user (who, not how); a lone userinfo is often a token.
    return f"{m.group('scheme')}{user}:{REDACTED}@" if colon else f"{m.group('scheme')}{REDACTED}@"


def redact_text(text: str) -> str:
    """``text`` with URL userinfo, secret ``key=value`` pairs and Bearer tokens redacted."""
    if "://" in text and "@" in text:
        text = _USERINFO.sub(_redact_userinfo, text)
    lower = text.lower()
    if "bearer" in lower:
        text = _BEARER.sub(lambda m: f"{m.group('scheme')}{m.group('sp')}{REDACTED}", text)
    if _SECRET_LOWER.search(lower) is not None:
        text = _redact_pairs(text)
    return text


def redact_value(value: Any, key: object = None) -> Any:
    """A JSON-like value with secrets redacted: whole values under a secret key, patterns in text.

    Numbers, booleans and None under a secret key are kept (a count of tokens is not a secret).
    """
    if isinstance(value, str):
        if value and is_secret_key(key):
            return REDACTED
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v, key) for v in value]
    return value


# --- the level: smee's own option resolution, re-read from argv / environ / config file ---


def _flag(args: Sequence[str], name: str) -> str | None:
    """The last value of ``--name X`` or ``--name=X`` in args (usage.Options keeps the last)."""
    value = None
    it = iter(args)
    for arg in it:
        if arg == "--":
            break
        if arg == f"--{name}":
            value = next(it, None)
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def _level_from(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, str | None]:
    """``(level name, warning or None)`` as smee's options would resolve ``--log-level``.

    The flag counts only after the ``smee`` subcommand (``twistd [twistd options] smee
    [smee options]``); then ``SMEE_LOG_LEVEL``; then the ``log-level`` key of the
    ``--config``/``SMEE_CONFIG`` file; then ``info``. A bad value gives ``info`` and a
    warning text (smee's own Options normally rejects it before logging starts).
    """
    setting = config.BY_NAME["log-level"]
    args = list(argv[1:])
    smee_args = args[args.index("smee") + 1:] if "smee" in args else []
    text, where = _flag(smee_args, setting.name), "flag"
    if text is None and setting.env in environ:
        text, where = environ[setting.env], setting.env
    if text is None:
        path = _flag(smee_args, "config") or environ.get("SMEE_CONFIG", "")
        if path:
            try:
                text = config.read_config_file(path).get(setting.name)
            except config.ConfigError as e:
                return setting.default, f"log level {setting.default}: {e}"
            where = "config file"
    if text is None:
        return setting.default, None
    try:
        return setting.parse(text), None
    except ValueError as e:
        err = config.ConfigError(setting.name, str(e), where)
        return setting.default, f"log level {setting.default}: {err}"


# --- rate limiting of repeated refusals ---


def _in_io_thread() -> bool:
    from twisted.python import threadable

    return bool(threadable.isInIOThread())


class RateLimiter:
    """Passes the first ``per_key`` events of a kind per ``window`` seconds, drops the rest.

    A kind is ``(namespace, log_format, outcome, level)``. When a window in which
    events were dropped ends, ``emit`` receives one summary event: "suppressed N
    similar messages in the last 60 s: <format>", at the dropped events' level and
    namespace. The window ends on a ``clock.callLater`` (scheduled only from the
    reactor thread) or at the next event of that kind, whichever comes first.
    """

    def __init__(
        self,
        clock: Any,
        per_key: int = 10,
        window: float = 60.0,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.clock = clock
        self.per_key = per_key
        self.window = window
        self.emit = emit
        self._lock = threading.RLock()
        # key -> [window start, events passed, events suppressed, a sample event]
        self._state: dict[tuple[Any, ...], list[Any]] = {}

    @staticmethod
    def applies(event: Mapping[str, Any], level: LogLevel) -> bool:
        """Refusals only: info/warn events from smee.* carrying an ``outcome`` field."""
        namespace = event.get("log_namespace") or ""
        return (
            level in (LogLevel.info, LogLevel.warn)
            and (namespace == "smee" or namespace.startswith("smee."))
            and "outcome" in event
        )

    def allow(self, event: Mapping[str, Any], level: LogLevel | None = None) -> bool:
        """True if the event should be written (always, for events this does not apply to)."""
        level = event.get("log_level", LogLevel.info) if level is None else level
        if not self.applies(event, level):
            return True
        key = (event.get("log_namespace"), event.get("log_format"), _text(event.get("outcome")), level)
        with self._lock:
            now = self.clock.seconds()
            state = self._state.get(key)
            if state is not None and now - state[0] >= self.window:
                self._roll_over(key)
                state = None
            if state is None:
                if len(self._state) >= 1024:
                    self._prune(now)
                self._state[key] = [now, 1, 0, event]
                return True
            if state[1] < self.per_key:
                state[1] += 1
                return True
            state[2] += 1
            if state[2] == 1 and _in_io_thread():
                delay = max(0.0, state[0] + self.window - now)
                self.clock.callLater(delay, self._expire, key, state[0])
            return False

    def flush(self) -> None:
        """Write every pending "suppressed N similar messages" summary now (at shutdown:
        a window still open when smee stops would otherwise never be reported)."""
        with self._lock:
            for key in list(self._state):
                self._roll_over(key)

    def _expire(self, key: tuple[Any, ...], start: float) -> None:
        with self._lock:
            state = self._state.get(key)
            if state is not None and state[0] == start:
                self._roll_over(key)

    def _prune(self, now: float) -> None:
        for key, state in list(self._state.items()):
            if now - state[0] >= self.window:
                self._roll_over(key)

    def _roll_over(self, key: tuple[Any, ...]) -> None:
        _, _, suppressed, sample = self._state.pop(key)
        if suppressed and self.emit is not None:
            self.emit(
                {
                    "log_format": "suppressed {suppressed} similar messages in the last {window:g} s: {format}",
                    "log_level": key[3],
                    "log_namespace": key[0],
                    "log_time": self.clock.seconds(),
                    "suppressed": suppressed,
                    "window": self.window,
                    "format": sample.get("log_format"),
                    "outcome": sample.get("outcome"),
                }
            )


# --- the observer ---


def _text(value: Any) -> str:
    """str(value); if str() fails, a repr (which says what failed, if that fails too)."""
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - any __str__ may raise; a log line must still be written
        return safe_repr(value)


def _json_value(value: Any) -> Any:
    """The value if JSON can carry it, else its str() (a failing str() gives a repr-like text)."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError, OverflowError, RecursionError):
        return _text(value)


def _iso(when: float, ms: bool) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    if ms:
        stamp += f".{int(when * 1000) % 1000:03d}"
    return stamp + "Z"


@implementer(ILogObserver)
class SmeeObserver:
    """Filters, demotes and rate-limits events, then writes them as JSON lines or text."""

    def __init__(
        self,
        stream: IO[str],
        level: str | LogLevel = "info",
        tty: bool | None = None,
        clock: Any = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.stream = stream
        self.level = LEVELS[level] if isinstance(level, str) else level
        if tty is None:
            isatty = getattr(stream, "isatty", None)
            try:
                tty = bool(isatty and isatty())
            except (OSError, ValueError):
                tty = False
        self.tty = tty
        if limiter is None:
            if clock is None:
                from twisted.internet import reactor as clock
            limiter = RateLimiter(clock)
        if limiter.emit is None:
            limiter.emit = self.write
        self.limiter = limiter
        self._lock = threading.RLock()

    def __call__(self, event: Mapping[str, Any]) -> None:
        threshold = _PRIORITY[self.level]
        if _PRIORITY.get(event.get("log_level", LogLevel.info), 1) < threshold:
            # Below the threshold already; demotion only lowers a level, so there is
            # no need to format the text (Twisted's per-port lines) to decide.
            return
        level = self.level_of(event)
        if _PRIORITY.get(level, 1) < threshold:
            return
        if not self.limiter.allow(event, level):
            return
        if level is not event.get("log_level"):
            event = dict(event, log_level=level)
        self.write(event)

    @staticmethod
    def level_of(event: Mapping[str, Any]) -> LogLevel:
        """The event's level, with Twisted's per-port lines demoted to debug."""
        level = event.get("log_level", LogLevel.info)
        if level is LogLevel.info and not str(event.get("log_namespace") or "").startswith("smee"):
            text = event.get("log_text")
            if text is None and event.get("log_format") is not None:
                text = formatEvent(dict(event))
            if isinstance(text, str) and _NOISY.fullmatch(text):
                return LogLevel.debug
        return level

    def write(self, event: Mapping[str, Any]) -> None:
        """Write one event unconditionally (no filtering)."""
        line = self.format_text(event) if self.tty else self.format_json(event)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    @staticmethod
    def record(event: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON record of an event: time, level, namespace, message, fields, traceback."""
        when = event.get("log_time")
        level = event.get("log_level", LogLevel.info)
        # A field named like a secret is hidden before the message is formatted from it;
        # the formatted text then gets the pattern redaction (a secret inside an error text).
        shown = {k: (REDACTED if is_secret_key(k) and isinstance(v, (str, bytes)) and v else v)
                 for k, v in event.items()}
        out: dict[str, Any] = {
            "time": _iso(when if isinstance(when, (int, float)) else time.time(), ms=True),
            "level": getattr(level, "name", _text(level)),
            "namespace": _text(event.get("log_namespace", "-")),
            "message": redact_text(formatEvent(shown)),
        }
        legacy = event.get("log_namespace") == "log_legacy"
        for key, value in event.items():
            if not isinstance(key, str) or key.startswith("log_") or key in _RECORD_KEYS:
                continue
            if legacy and key in _LEGACY_KEYS:
                continue
            out[key] = redact_value(_json_value(value), key)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                out["traceback"] = redact_text(failure.getTraceback())
            except Exception:  # noqa: BLE001 - a broken Failure must not lose the log line
                out["traceback"] = redact_text(_text(failure))
        return out

    def format_json(self, event: Mapping[str, Any]) -> str:
        return json.dumps(self.record(event), default=_text, allow_nan=False)

    def format_text(self, event: Mapping[str, Any]) -> str:
        record = self.record(event)
        when = event.get("log_time")
        stamp = _iso(when if isinstance(when, (int, float)) else time.time(), ms=False)
        line = f"{stamp} {record['level']:<5} {record['namespace']}  {record['message']}"
        if "traceback" in record:
            line += "\n" + record["traceback"].rstrip("\n")
        return line


def observer(
    stream: IO[str] | None = None,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Any = None,
    tty: bool | None = None,
) -> ILogObserver:
    """The ``twistd --logger`` factory: smee's observer on stdout at smee's ``--log-level``.

    twistd calls it without arguments; the keywords are for tests.
    """
    stream = sys.stdout if stream is None else stream
    level, warning = _level_from(sys.argv if argv is None else argv, os.environ if environ is None else environ)
    obs = SmeeObserver(stream, level, tty=tty, clock=clock)
    trigger = getattr(obs.limiter.clock, "addSystemEventTrigger", None)
    if trigger is not None:
        # after the services have stopped (their last refusals counted), before twistd exits
        trigger("after", "shutdown", obs.limiter.flush)
    if warning is not None:
        obs.write(
            {
                "log_format": "{warning}",
                "warning": warning,
                "log_level": LogLevel.warn,
                "log_namespace": "smee.logs",
                "log_time": time.time(),
            }
        )
    return obs
