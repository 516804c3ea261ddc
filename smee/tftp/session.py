"""One TFTP read transfer (the server sends a file): option negotiation and
the windowed send/ACK/retransmit state machine.

Sans-I/O except for the clock: datagrams go out through a ``send`` callable
and come in through :meth:`ReadSession.received`, already parsed and already
filtered to the client's TID, so the same code runs under a real socket and
under ``twisted.internet.task.Clock`` in tests.

Retransmission is driven by the timeout only. A duplicate or old ACK never
triggers a resend: answering each duplicate ACK with a DATA doubles the
traffic for the rest of the transfer (the Sorcerer's Apprentice bug, RFC 1123
4.2.3.1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from smee.tftp.packet import (
    Ack,
    Data,
    Error,
    OAck,
    Request,
    data_header,
    encode_error,
    encode_oack,
)

#: RFC 1350 block size, used when the client does not negotiate one.
DEFAULT_BLKSIZE = 512
#: RFC 2348 limits.
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464
#: RFC 2349 limits, in seconds.
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255
#: RFC 7440 limits.
MIN_WINDOWSIZE, MAX_WINDOWSIZE = 1, 65535
#: Largest window we agree to: beyond this a single loss costs more
#: retransmitted blocks than the larger window saves in round trips, and
#: socket buffers start dropping bursts. RFC 7440 lets the server answer a
#: smaller windowsize than asked, and the OACK says what was granted.
WINDOWSIZE_CAP = 64
#: The options :func:`negotiate` knows; a transfer keeps only these of its
#: request (an RRQ can carry thousands of junk options, kept per session).
OPTIONS = frozenset({"blksize", "timeout", "tsize", "windowsize"})


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The parameters of one transfer. ``oack`` is what to send before DATA 1,
    or None when no option was accepted (the transfer starts with DATA 1)."""

    blksize: int
    windowsize: int
    timeout: float
    tsize: int | None
    oack: dict[str, str] | None


def _uint(value: str) -> int | None:
    """A plain decimal number, or None. ``int()`` alone would take ``" 8"``,
    ``"+8"``, ``"8_0"`` and non-ASCII digits, which no client means."""
    if 0 < len(value) <= 10 and value.isascii() and value.isdigit():
        return int(value)
    return None


def negotiate(
    requested: Mapping[str, str],
    size: int,
    max_blksize: int,
    default_timeout: float,
    *,
    max_windowsize: int = WINDOWSIZE_CAP,
    max_timeout: int = MAX_TIMEOUT,
) -> Negotiated:
    """Decide the options of a read of ``size`` bytes (RFC 2347/2348/2349/7440).

    An option that is unknown, non-numeric or out of its RFC range is left
    out of the OACK, which RFC 2347 defines as refusing it (the default
    applies); the transfer goes on. ``max_blksize`` is the server's cap (the
    setting, or what fits the interface MTU). Names are matched
    case-insensitively, first occurrence winning, as :func:`parse` already does.

    A ``timeout`` above ``max_timeout`` is refused the same way: RFC 2349
    lets the server only accept the client's value or refuse it, and a
    client that never answers holds its session for timeout × (retries + 1)
    seconds, so up to 255 × 6 s unless the server keeps its own bound.
    """
    cap = min(max_blksize, MAX_BLKSIZE)
    if cap < MIN_BLKSIZE:
        raise ValueError(f"max_blksize {max_blksize} is below the RFC 2348 minimum {MIN_BLKSIZE}")
    blksize, windowsize, timeout, tsize = DEFAULT_BLKSIZE, 1, float(default_timeout), None
    oack: dict[str, str] = {}
    for raw_name, value in requested.items():
        name = raw_name.lower()
        if name in oack:
            continue
        number = _uint(value)
        if number is None:
            continue
        if name == "blksize" and MIN_BLKSIZE <= number <= MAX_BLKSIZE:
            blksize = min(number, cap)
            oack[name] = str(blksize)
        elif name == "timeout" and MIN_TIMEOUT <= number <= min(max_timeout, MAX_TIMEOUT):
            timeout = float(number)
            oack[name] = str(number)
        elif name == "tsize":
            # A reader sends 0 (RFC 2349); whatever it sent, the size is what it asks for.
            tsize = size
            oack[name] = str(size)
        elif name == "windowsize" and MIN_WINDOWSIZE <= number <= MAX_WINDOWSIZE:
            windowsize = min(number, max_windowsize)
            oack[name] = str(windowsize)
    return Negotiated(blksize, windowsize, timeout, tsize, oack or None)


def to_netascii(data: bytes) -> bytes:
    """RFC 764 NVT line endings for mode netascii: LF → CR LF, bare CR → CR NUL."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def _ignore_done(outcome: str, detail: str) -> None:
    pass


class ReadSession:
    """Send ``data`` to one client, in windows of ``windowsize`` blocks (RFC 7440).

    Blocks are numbered from 1 and counted absolutely; only the wire number
    wraps from 65535 to 0, as tftp-hpa, atftp and curl expect. The file ends
    with a block shorter than ``blksize`` (empty if the size is a multiple,
    so an empty file is one empty DATA 1).

    ``on_done(outcome, detail)`` is called once, with outcome ``complete``,
    ``timeout``, ``client-error``, ``aborted`` or ``stopped``; afterwards the
    session holds no timer and ignores everything.

    Packets of the wrong kind from the client (DATA, a repeated RRQ, OACK)
    are ignored rather than answered: a repeated RRQ is the client's own
    retransmission racing our first packet, and the timeout already resends
    whatever it is missing; an abort would kill a transfer that is working.

    ``send`` must not call back into the session synchronously (a UDP
    socket write does not). ``send_many``, if given, sends a list of
    datagrams in order (a window of two or more blocks); the protocol's
    hook for UDP GSO. ``blocks``, if given, are the DATA datagrams of
    ``data`` at the negotiated block size (:func:`smee.tftp.blocks.build_blocks`),
    shared between transfers: then nothing is built per block.

    Counters for metrics: ``blocks_sent`` and ``bytes_sent`` (payload bytes)
    count every DATA transmitted, retransmissions included, and
    ``retransmissions`` counts the timeouts that resent something.
    """

    def __init__(
        self,
        data: bytes,
        negotiated: Negotiated,
        send: Callable[[bytes], None],
        clock: IReactorTime,
        retries: int = 5,
        on_done: Callable[[str, str], None] = _ignore_done,
        send_many: Callable[[list[bytes]], None] | None = None,
        blocks: list[bytes] | None = None,
    ) -> None:
        self.negotiated = negotiated
        self.done = False
        self.bytes_sent = 0
        self.blocks_sent = 0
        self.retransmissions = 0
        #: the ERROR the client ended the transfer with, if it did
        self.client_error: Error | None = None
        self._view = memoryview(data)
        #: every DATA datagram, built beforehand (:class:`smee.tftp.blocks.BlockCache`), or None
        self._blocks = blocks
        self._send = send
        #: sends a whole window at once (UDP GSO); only worth it with windows
        self._send_many = send_many if negotiated.windowsize > 1 else None
        self._clock = clock
        self._retries = retries
        self._on_done = on_done
        self._blksize = negotiated.blksize
        self._windowsize = negotiated.windowsize
        self._timeout = negotiated.timeout
        #: absolute number of the final (short) block
        self._last = len(data) // negotiated.blksize + 1
        #: highest block the client has acknowledged (0: none yet)
        self._acked = 0
        #: highest block sent; blocks _acked+1 .. _sent are outstanding
        self._sent = 0
        #: the OACK is out and ACK 0 not yet in
        self._oack_pending = False
        self._tries = 0
        self._timer: IDelayedCall | None = None

    # --- control -------------------------------------------------------------

    def start(self) -> None:
        """Send the OACK (then wait for ACK 0) or the first window of DATA."""
        if self.done or self._timer is not None:
            return
        # The timer is armed before sending, here and below, so that a
        # ``send`` that raises leaves a session that still times out.
        self._timer = self._clock.callLater(self._timeout, self._expired)
        if self.negotiated.oack is not None:
            self._oack_pending = True
            self._send(encode_oack(self.negotiated.oack))
        else:
            self._send_window()

    def abort(self, code: int, message: str) -> None:
        """Tell the client (ERROR ``code``) and end the transfer."""
        if self.done:
            return
        try:
            self._send(encode_error(code, message))
        finally:
            # Ended even if the ERROR could not be sent: no timer outlives an abort.
            self._finish("aborted", message)

    def stop(self) -> None:
        """End the transfer without a word (server shutdown)."""
        if not self.done:
            self._finish("stopped", "")

    # --- input ---------------------------------------------------------------

    def received(self, packet: Ack | Error | Data | Request | OAck) -> None:
        """Handle one packet from the client's TID (the caller drops strangers)."""
        if self.done:
            return
        if type(packet) is Ack:
            self.ack(packet.block)
        elif type(packet) is Error:
            # Quietly: RFC 1350 says an ERROR is never acknowledged, and UEFI
            # sends ERROR 8 after the OACK only to learn tsize.
            self.client_error = packet
            self._finish("client-error", packet.message)
        # Anything else is ignored: see the class docstring.

    def ack(self, block: int) -> None:
        """An ACK of wire number ``block`` from the client: what :meth:`received`
        does with an :class:`Ack`, for a protocol that decoded it with
        :func:`smee.tftp.packet.ack_block` (no packet object per window).

        The lockstep case (windowsize 1, no OACK pending) is handled here in
        one frame: it runs once per block of every PXE ROM's transfer, so
        each call saved here is saved per block. Same rules as :meth:`_ack`.
        """
        if self.done:
            return
        timer = self._timer
        if self._windowsize != 1 or self._oack_pending or timer is None:
            self._ack(block)
            return
        acked = self._acked
        ahead = (block - acked) & 0xFFFF
        if ahead == 0 or ahead > self._sent - acked:
            return
        self._acked = acked = acked + ahead
        if acked == self._last:
            self._finish("complete", "")
            return
        # What _progress and _send_window do for a window of one block.
        self._tries = 0
        self._sent = block = acked + 1
        blksize = self._blksize
        offset = acked * blksize
        view = self._view
        blocks = self._blocks
        try:
            if blocks is not None:
                self._send(blocks[acked])
            else:
                self._send(data_header(block & 0xFFFF) + view[offset : offset + blksize])
            self.blocks_sent += 1
            self.bytes_sent += min(blksize, len(view) - offset)
        finally:
            timer.reset(self._timeout)

    def _ack(self, block: int) -> None:
        if self._oack_pending:
            if block != 0:
                return
            self._oack_pending = False
            self._progress()
            return
        # Map the 16-bit number into the outstanding window (_acked, _sent];
        # the window is far below 65536 blocks, so at most one block matches.
        # 0 is a duplicate of the last ACK, anything past the window is old or
        # was never sent: both ignored.
        acked = self._acked
        ahead = (block - acked) & 0xFFFF
        if ahead == 0 or ahead > self._sent - acked:
            return
        self._acked = acked = acked + ahead
        if acked == self._last:
            self._finish("complete", "")
            return
        self._progress()

    # --- output --------------------------------------------------------------

    def _progress(self) -> None:
        """The client moved on: send the next window and restart the timeout.

        The window goes out first and the timer is reset after it (even if a
        send raises): the client waits for the DATA, not for our bookkeeping.
        """
        self._tries = 0
        timer = self._timer
        if timer is None:
            self._timer = self._clock.callLater(self._timeout, self._expired)
            self._send_window()
            return
        try:
            self._send_window()
        finally:
            timer.reset(self._timeout)

    def _send_window(self) -> None:
        """(Re)send blocks _acked+1 up to a full window or the final block.

        The datagrams come from ``blocks`` when given; else each payload is a
        slice of a memoryview of the file, so the datagram built here
        (:data:`~smee.tftp.packet.data_header` + payload) is the only copy.
        The counters are updated once per window. With ``send_many`` a
        window of several blocks goes out in one call, and counts only once
        that call returned.
        """
        first = self._acked + 1
        last = min(self._acked + self._windowsize, self._last)
        view, blksize, send = self._view, self._blksize, self._send
        self._sent = last
        start = offset = (first - 1) * blksize
        send_many, blocks = self._send_many, self._blocks
        if send_many is not None and last > first:
            if blocks is not None:
                packets = blocks[first - 1 : last]
                offset += (last - first + 1) * blksize
            else:
                packets = []
                for block in range(first, last + 1):
                    packets.append(data_header(block & 0xFFFF) + view[offset : offset + blksize])
                    offset += blksize
            send_many(packets)
            self.blocks_sent += last - first + 1
            self.bytes_sent += min(offset, len(view)) - start
            return
        try:
            for block in range(first, last + 1):
                send(blocks[block - 1] if blocks is not None
                     else data_header(block & 0xFFFF) + view[offset : offset + blksize])
                offset += blksize
        finally:
            # What went out (up to a send that raised): start..offset, the final block possibly short.
            self.blocks_sent += (offset - start) // blksize
            self.bytes_sent += min(offset, len(view)) - start

    def _expired(self) -> None:
        """No progress for ``timeout`` seconds: resend, or give up after ``retries`` resends."""
        self._timer = None
        if self._tries >= self._retries:
            self._finish("timeout", f"no ACK after {self._tries} retransmissions")
            return
        self._tries += 1
        self.retransmissions += 1
        self._timer = self._clock.callLater(self._timeout, self._expired)
        if self._oack_pending:
            assert self.negotiated.oack is not None
            self._send(encode_oack(self.negotiated.oack))
        else:
            self._send_window()

    def _finish(self, outcome: str, detail: str) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_done(outcome, detail)
