"""Safe iPXE script text: every value from a hardware record passes one rule.

Hardware records are data written by operators, tools and sometimes tenants;
an iPXE script is code. A facility of ``"x\\nshell"`` or ``"x ${net0/ip}"``
must not become a command, so installers never paste record values into
script text themselves: they go through :meth:`Script.set`,
:meth:`Script.echo`, :func:`kernel_arg` or one of the ``check_*`` functions
here, and a value that would change the script's meaning raises
:class:`ScriptError` (the HTTP route answers 500 and logs the message,
which names the field). Nothing is escaped: iPXE has no quoting, so
rejecting is the only safe answer.

The rule (:func:`check_value`), derived from iPXE's parser
(``core/exec.c``, ``image/script.c``, ``core/settings.c``):

1. printable ASCII only (0x20-0x7e): a newline or carriage return ends the
   command and starts another; other control or non-ASCII characters have
   no business in a boot script and hide what a log line shows;
2. no ``${``: iPXE expands settings in the whole line before running it,
   so a value could read (or, through ``${x:...}`` forms, probe) anything;
3. no backslash: a line ending in ``\\`` swallows the next line of the script
   (continuation), and ``\\`` is an escape in newer iPXE parsers;
4. no whitespace-separated token that iPXE treats as syntax: ``||``, ``&&``,
   ``;`` (they end the command and run the rest as another) or a token
   starting with ``#`` (a comment: the rest of the line would be dropped).

Kernel arguments (:func:`check_arg`) add: no whitespace (it would split into
two arguments), no quote characters (the Linux command-line parser treats
``"`` as quoting) and not ``--`` (ends the kernel's own parameters).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = [
    "Script",
    "ScriptError",
    "check_arg",
    "check_console",
    "check_name",
    "check_url",
    "check_value",
    "kernel_arg",
]

_SYNTAX_TOKENS = frozenset({"||", "&&", ";"})
_SETTING_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:-]*")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}")
# ttyS1, ttyAMA0, hvc0, tty0 ... with optional "<baud>[parity][bits][flow]".
_CONSOLE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}(,[0-9]{1,7}([noe][5-8]?r?)?)?")


class ScriptError(ValueError):
    """A value would change the script's meaning; the message names the field."""


def _reject(what: str, value: object, reason: str) -> ScriptError:
    return ScriptError(f"{what}: {value!r} {reason}")


def check_value(what: str, value: str) -> str:
    """Return ``value`` unchanged if it is safe in an iPXE line (rules 1-4 above).

    ``what`` names the field in the error, e.g. ``"facility"`` or
    ``"installer_data.channel"``. Spaces between words are allowed: ``set``
    and ``echo`` take the rest of the line as one value.
    """
    if not isinstance(value, str):
        raise _reject(what, value, f"is a {type(value).__name__}, not text")
    # For ASCII text, isprintable() is exactly " " <= ch <= "~" for every character.
    if not (value.isascii() and value.isprintable()):
        ch = next(ch for ch in value if not " " <= ch <= "~")
        raise _reject(
            what, value, f"contains U+{ord(ch):04X} (only printable ASCII may appear in a boot script)"
        )
    if "${" in value:
        raise _reject(what, value, "contains '${' (iPXE would expand it as a setting)")
    if "\\" in value:
        raise _reject(what, value, "contains a backslash (iPXE line continuation/escape)")
    for token in value.split():
        if token in _SYNTAX_TOKENS:
            raise _reject(what, value, f"contains the iPXE command separator {token!r}")
        if token.startswith("#"):
            raise _reject(what, value, "contains a word starting with '#' (an iPXE comment)")
    return value


def check_arg(what: str, value: str) -> str:
    """Return ``value`` if it is safe as (the value part of) one kernel argument.

    The empty string is allowed (``syslog_host=`` is what Smee sends when
    there is no syslog server).
    """
    check_value(what, value)
    # check_value allowed only printable ASCII, whose one whitespace character is " ".
    if " " in value:
        raise _reject(what, value, "contains whitespace (it must be one kernel argument)")
    if '"' in value or "'" in value:
        raise _reject(what, value, "contains a quote character (kernel command-line quoting)")
    if value == "--":
        raise _reject(what, value, "would end the kernel's parameters")
    return value


def kernel_arg(name: str, value: str | int | bool) -> str:
    """``name=value`` with ``value`` checked as a kernel argument under the field name ``name``."""
    return f"{name}={check_arg(name, _text(value))}"


def check_url(what: str, value: str) -> str:
    """An absolute http(s) URL with a host and a valid port, safe as one token.

    Smee answers 500 for a custom iPXE URL that is not http or https
    (smee-study.md §4.2); every URL from a record gets the same treatment.
    """
    check_arg(what, value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise _reject(what, value, f"is not a URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _reject(what, value, "is not an http:// or https:// URL with a host")
    return value


def check_name(what: str, value: str) -> str:
    """One file or directory name (no ``/``, not ``.`` or ``..``, no spaces).

    Used for kernel/initrd names, slugs and versions that become part of a
    URL path: a name can never climb out of the directory it is joined to.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _reject(what, value, "is not a file name (letters, digits, '.', '_', '+', '-'; no '/')")
    return value


def check_console(what: str, value: str) -> str:
    """A Linux console device with optional options, e.g. ``ttyS0`` or ``ttyS1,115200n8``."""
    if not isinstance(value, str) or not _CONSOLE.fullmatch(value):
        raise _reject(what, value, "is not a console device such as ttyS0 or ttyS1,115200")
    return value


def _text(value: str | int | bool) -> str:
    """Settings and kernel arguments write booleans the way Smee does: true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return value


def _token(what: str, value: str) -> str:
    """A structural guard for tokens the installer code assembled itself."""
    # split() and isspace() agree on what whitespace is: one piece means none.
    if not value or value.split() != [value] or not value.isprintable():
        raise ScriptError(f"{what}: {value!r} is not a single script token")
    return value


class Script:
    """An iPXE script under construction; values go through the checks above.

    :meth:`line` is for text written in installer code (it may use
    ``${var}``); everything else checks what it is given.
    """

    def __init__(self) -> None:
        self._lines: list[str] = ["#!ipxe", ""]

    def line(self, trusted: str) -> Script:
        """Append literal text from installer code only, never from a record."""
        self._lines.append(trusted)
        return self

    def set(self, name: str, value: str | int | bool) -> Script:
        """``set name value``; an empty value sets the empty string (``set name``)."""
        if not _SETTING_NAME.fullmatch(name):
            raise ScriptError(f"setting name {name!r} is not an iPXE setting name")
        text = check_value(name, _text(value))
        self._lines.append(f"set {name} {text}" if text else f"set {name}")
        return self

    def echo(self, text: str) -> Script:
        self._lines.append(f"echo {check_value('echo', text)}" if text else "echo")
        return self

    def kernel(self, image: str, *args: str) -> Script:
        """``kernel image args...``: each piece is a literal or a :func:`kernel_arg` result."""
        tokens = [_token("kernel image", image), *(_token("kernel argument", a) for a in args)]
        self._lines.append("kernel " + " ".join(tokens))
        return self

    def initrd(self, image: str) -> Script:
        self._lines.append("initrd " + _token("initrd image", image))
        return self

    def chain(self, url: str, what: str = "chain URL") -> Script:
        """``chain --autofree <url>`` for a URL from a record (checked as one)."""
        self._lines.append("chain --autofree " + check_url(what, url))
        return self

    def text(self) -> str:
        """The script, ending with a newline."""
        return "\n".join(self._lines) + "\n"
