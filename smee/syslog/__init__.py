"""Syslog receiver (UDP, --syslog-addr:--syslog-port): what booting machines log, re-logged.

* :mod:`smee.syslog.parse`: RFC 3164 / RFC 5424 datagrams → :class:`Message`, as Smee parses them.
* :mod:`smee.syslog.protocol`: one structured ``smee.syslog.machine`` event per datagram.
* :mod:`smee.syslog.service`: the listening service, ``makeService`` for ``twistd smee``.
"""

from smee.syslog.parse import Message, SyslogParseError, parse

__all__ = ["Message", "SyslogParseError", "parse"]
