# -*- test-case-name: tests.test_syslog -*-
"""The syslog service: one UDP socket on --syslog-addr:--syslog-port (514).

Bound in :meth:`ListeningService.privilegedStartService`, so ``twistd -u/-g``
binds port 514 as root and then drops privileges, like TFTP's port 69.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from smee.listen import BindError, ListeningService, bind_hint, grow_port_buffer
from smee.syslog.parse import MAX_DATAGRAM
from smee.syslog.protocol import DEFAULT_LOOKUP_TIMEOUT, SyslogProtocol

__all__ = ["SyslogBindError", "SyslogService", "makeService"]

log = Logger(namespace="smee.syslog")


class SyslogBindError(BindError):
    """The syslog socket could not be opened; the text names the options and the OS error."""


def _bind_error(address: tuple[str, int], e: OSError) -> SyslogBindError:
    hint = bind_hint(
        e, "another syslog server is listening; stop it, choose another --syslog-port "
        "or set --syslog-enabled=false",
        "not an address of this host; set --syslog-addr to one",
    )
    return SyslogBindError(
        f"smee: --syslog-addr={address[0]} --syslog-port={address[1]}: cannot listen for syslog on "
        f"{address[0]}:{address[1]}{hint}: {e.strerror or e}"
    )


class SyslogService(ListeningService):
    """Receive syslog on ``address``; ``protocol`` and ``port`` are set while running."""

    def __init__(
        self,
        backend: Any,
        reactor: Any,
        address: tuple[Any, int] = ("0.0.0.0", 514),
        *,
        lookup_timeout: float = DEFAULT_LOOKUP_TIMEOUT,
        messages: Any = None,
        timeline: Any = None,
        protocol_factory: Callable[..., SyslogProtocol] = SyslogProtocol,
    ) -> None:
        self.backend = backend
        self.reactor = reactor
        self.address = (str(address[0]), int(address[1]))
        self.lookup_timeout = lookup_timeout
        self.messages = messages
        self.timeline = timeline
        self.protocol_factory = protocol_factory
        self.port: Any = None
        self.protocol: SyslogProtocol | None = None

    def stopService(self) -> defer.Deferred[Any]:
        Service.stopService(self)
        port, self.port, self.protocol = self.port, None, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def _listen(self) -> None:
        host, number = self.address
        protocol = self.protocol_factory(
            self.backend, self.reactor, lookup_timeout=self.lookup_timeout,
            messages=self.messages, timeline=self.timeline,
        )
        try:
            # One byte more than is parsed, so an over-long datagram is seen (and noted) as such.
            self.port = self.reactor.listenUDP(number, protocol, interface=host, maxPacketSize=MAX_DATAGRAM + 1)
        except CannotListenError as e:
            error = e.socketError if isinstance(e.socketError, OSError) else OSError(str(e.socketError))
            raise _bind_error(self.address, error) from None
        grow_port_buffer(self.port, "syslog", log)
        self.protocol = protocol
        bound = self.port.getHost()
        log.info("syslog listening on {host}:{port} (UDP)", host=bound.host, port=bound.port)


def makeService(settings: Any, runtime: Any, reactor: Any) -> SyslogService:
    """The ``syslog`` child of ``twistd smee``: --syslog-addr:--syslog-port."""
    metrics = getattr(runtime, "metrics", None)
    return SyslogService(
        runtime.backend, reactor, (str(settings.syslog_addr), settings.syslog_port),
        messages=getattr(metrics, "syslog_messages", None),
        timeline=getattr(runtime, "timeline", None),
    )
