"""What every listening component says when it cannot bind: one line an operator can act on."""

from __future__ import annotations

import errno


class BindError(SystemExit):
    """A component cannot listen; twistd exits with this one line instead of a traceback."""


def bind_hint(e: OSError, in_use: str, not_local: str) -> str:
    """The likely cause of a failed ``bind()``, in the words of the option to change."""
    if e.errno == errno.EADDRINUSE:
        return f" ({in_use})"
    if e.errno == errno.EACCES:
        return " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if e.errno == errno.EADDRNOTAVAIL:
        return f" ({not_local})"
    return ""
