# -*- test-case-name: tests.test_deploy -*-
"""Signals under a service manager: SIGHUP reloads the hardware, SIGTERM exits 0.

``twistd`` already stops the reactor on SIGTERM, which runs every
``stopService`` (DHCP/HTTP/TFTP stop listening; TFTP lets transfers in
progress finish up to a bound, see :mod:`smee.tftp.service`). What it also
does is re-raise SIGTERM after the reactor stopped, so the process dies
with status -15. :func:`clear_exit_signal` turns a clean SIGTERM shutdown
into exit status 0.

:class:`SignalService` is a child of the ``twistd smee`` service tree
(:func:`smee.tap.makeService`).
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

__all__ = ["SignalService", "clear_exit_signal"]

log = Logger(namespace="smee.shutdown")


def clear_exit_signal(reactor: Any, signum: int = signal.SIGTERM) -> bool:
    """Forget that the reactor was stopped by ``signum``, so twistd exits 0; True if it did.

    Twisted 26.10: the reactor's ``sigTerm`` handler records the signal in the
    private ``reactor._exitSignal`` (twisted/internet/base.py); after
    ``reactor.run()`` returns, twistd's runner copies it
    (``ApplicationRunner.startReactor``, twisted/application/app.py) and
    ``twisted.scripts.twistd.runApp`` calls ``app._exitWithSignal`` with it,
    which re-raises the signal. Run as a shutdown trigger, this resets it to
    None. Only ``signum`` is cleared (SIGINT keeps Twisted's behaviour). A
    reactor without the attribute (another Twisted version, a fake) is left
    alone: the process then exits as Twisted decides.
    """
    if getattr(reactor, "_exitSignal", None) != signum:
        return False
    try:
        reactor._exitSignal = None
    except AttributeError:  # pragma: no cover - a reactor with a read-only attribute
        return False
    return True


class SignalService(Service):
    """SIGHUP → ``backend.reload()``; on SIGTERM shutdown, exit status 0.

    Both are installed in :meth:`startService` (after twistd dropped
    privileges and installed its own handlers) and the previous SIGHUP
    handler is restored in :meth:`stopService`. The SIGHUP handler only
    schedules the reload with ``reactor.callFromThread``: the reload runs in
    the reactor, never inside the signal handler.

    The exit-status trigger (``during shutdown``) stays registered after
    stopService: stopService itself runs in the ``before`` phase of the same
    shutdown, and the trigger must still fire after it.
    """

    name = "signals"

    def __init__(self, backend: Any, reactor: Any) -> None:
        self.backend = backend
        self.reactor = reactor
        self._previous: Any = None
        self._installed = False
        self._trigger: Any = None

    def startService(self) -> None:
        Service.startService(self)
        # Always installed: SIGHUP's default action is to terminate, and
        # `systemctl reload` sends it whatever the backend is.
        try:
            self._previous = signal.signal(signal.SIGHUP, self._onSIGHUP)
            self._installed = True
        except ValueError:  # not the main thread (some test runners)
            log.warn("SIGHUP reload not available: not running in the main thread")
        add = getattr(self.reactor, "addSystemEventTrigger", None)
        if add is not None and self._trigger is None:
            self._trigger = add("during", "shutdown", self._exitZero)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _onSIGHUP(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Re-read the hardware now (what SIGHUP does); errors are logged, never raised."""
        reload = getattr(self.backend, "reload", None)
        if reload is None:
            log.info("SIGHUP: nothing to reload ({kind} backend keeps itself current)",
                     kind=getattr(self.backend, "kind", "this"))
            return
        log.info("SIGHUP: reloading hardware")
        try:
            reload()
        except Exception:
            log.failure("SIGHUP: reloading hardware failed")

    def _exitZero(self) -> None:
        if clear_exit_signal(self.reactor):
            log.info("stopped by SIGTERM: exiting with status 0")
