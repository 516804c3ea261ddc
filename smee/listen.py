"""What every listening component says when it cannot bind: one line an operator can act on."""

from __future__ import annotations

import errno
from typing import Any

from twisted.application.service import Service


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


class ListeningService(Service):
    """A service with one listening port, bound before twistd drops privileges.

    twistd calls ``privilegedStartService`` as root (ports 67/69/80), then
    switches to ``-u/-g`` and calls ``startService``; ``twist`` and tests call
    only ``startService``. Either way the port is bound exactly once, by
    ``_listen`` in the subclass, which sets ``self.port``.
    """

    port: Any = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        if self.port is None:
            self._listen()

    def startService(self) -> None:
        Service.startService(self)
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        raise NotImplementedError
