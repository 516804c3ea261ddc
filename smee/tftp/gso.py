# -*- test-case-name: tests.test_tftp_mux -*-
"""A window of DATA in one system call: UDP generic segmentation offload (GSO).

With ``UDP_SEGMENT`` (Linux 4.18+) one ``sendmsg`` hands the kernel a buffer
and a segment size, and the kernel cuts it into datagrams of that size (the
last may be shorter) on the way out. A TFTP window is exactly that: every
DATA but the file's final block is ``blksize + 4`` bytes. One system call and
one pass through the UDP/IP stack per window instead of per block.

The kernel cuts the bytes, not the buffers passed, so :func:`send_segments`
only uses GSO for datagrams of the same size followed by at most one shorter
one; anything else goes out one datagram at a time (what the caller does with
the rest). A kernel or device without GSO answers EINVAL, EIO, ENOPROTOOPT or
EOPNOTSUPP: :class:`GSOUnavailable` says so, and the caller stops trying on
that socket.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["SOL_UDP", "UDP_SEGMENT", "GSOUnavailable", "send_segments"]

#: <netinet/udp.h>: the level and option of UDP GSO (not in Python's socket module).
SOL_UDP = 17
UDP_SEGMENT = 103

#: Segments per send: UDP_MAX_SEGMENTS is 64 on older kernels (128 from 6.x).
MAX_SEGMENTS = 64
#: Bytes per send: one UDP datagram's worth (65535 − 20 IP − 8 UDP).
MAX_BYTES = 65507

#: errno values meaning "no GSO here" rather than "this send failed".
UNSUPPORTED = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})

_SIZE = struct.Struct("=H")


class GSOUnavailable(Exception):
    """The kernel or the route refuses UDP GSO; ``sent`` datagrams went out before it did."""

    def __init__(self, sent: int, error: OSError) -> None:
        super().__init__(f"UDP GSO unavailable: {error}")
        self.sent = sent
        self.error = error


def send_segments(sendmsg: Callable[..., Any], packets: Sequence[bytes], addr: tuple[str, int]) -> int:
    """Send ``packets`` (in order) to ``addr`` in as few GSO sends as fit; returns how many went out.

    Returns early (fewer than ``len(packets)``) when the sizes do not fit
    GSO or a send fails with an ordinary error (ENOBUFS, EAGAIN…): the
    caller sends the rest one by one, which handles such errors as it
    always has. Raises :class:`GSOUnavailable` when GSO itself is refused.
    """
    count = len(packets)
    if count < 2:
        return 0
    size = len(packets[0])
    # All but the last the same size, the last no larger: the kernel's cut.
    if max(map(len, packets)) != size or sum(map(len, packets[:-1])) != size * (count - 1):
        return 0
    per = min(MAX_SEGMENTS, MAX_BYTES // size) if size else 0
    if per < 2:
        return 0
    ancillary = [(SOL_UDP, UDP_SEGMENT, _SIZE.pack(size))]
    sent = 0
    while count - sent > 1:
        chunk = packets[sent : sent + per]
        try:
            sendmsg(chunk, ancillary, 0, addr)  # EINTR is retried by Python (PEP 475)
        except OSError as e:
            if e.errno in UNSUPPORTED:
                raise GSOUnavailable(sent, e) from e
            return sent
        sent += len(chunk)
    return sent
