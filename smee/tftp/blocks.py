# -*- test-case-name: tests.test_tftp_session -*-
"""The DATA datagrams of a served binary, built once per block size and shared by every transfer.

Every machine of a boot storm fetches the same few binaries with the same
block size, and every block of every transfer used to be built again:
header packed, payload sliced, the two concatenated into a new datagram.
Built once, a block is a list lookup, a window a list slice (what UDP GSO
sends in one call), and nothing is allocated or copied per block.

The cost is memory: a copy of each file per block size in use (a few MiB for
smee's three iPXE binaries), bounded by ``max_bytes``, least recently used
first out. Small or one-off contents (the per-client ``autoexec.ipxe``,
netascii conversions) are not worth an entry and are not cached.
"""

from __future__ import annotations

import struct
import sys
from collections import OrderedDict

from smee.tftp.packet import data_header

__all__ = ["BlockCache", "build_blocks"]

#: Contents smaller than this are built per block: an entry would save little
#: and the per-client autoexec.ipxe would churn the cache.
MIN_SIZE = 32 * 1024

#: Total bytes of datagrams kept (every block of every entry).
MAX_BYTES = 32 * 1024 * 1024

#: Smaller block sizes are built per block: no real client asks for less than
#: RFC 1350's 512, and a client asking blksize 8 (RFC 2348's minimum) would
#: otherwise have a datagram object built and kept for every 8 bytes of a file.
MIN_BLKSIZE = 512

#: What each block costs beyond its bytes: a bytes object's header and the
#: list's pointer to it. Counted, so that ``max_bytes`` bounds real memory
#: (at small block sizes the headers outweigh the data several times).
BLOCK_OVERHEAD = sys.getsizeof(b"") + struct.calcsize("P")


def build_blocks(data: bytes, blksize: int) -> list[bytes]:
    """Every DATA datagram of ``data`` in ``blksize`` blocks: item ``n - 1`` is block ``n``.

    The last block is shorter than ``blksize`` (empty when the size is a
    multiple of it), as :class:`smee.tftp.session.ReadSession` sends it.
    """
    view = memoryview(data)
    return [
        data_header((index + 1) & 0xFFFF) + view[offset : offset + blksize]
        for index, offset in enumerate(range(0, len(data) + 1, blksize))
    ]


class BlockCache:
    """Built datagrams by (contents, blksize); the contents are held so their ``id`` stays theirs."""

    def __init__(self, max_bytes: int = MAX_BYTES, min_size: int = MIN_SIZE) -> None:
        self.max_bytes = max_bytes
        self.min_size = min_size
        self._entries: OrderedDict[tuple[int, int], tuple[bytes, list[bytes], int]] = OrderedDict()
        #: bytes held: the datagrams and their objects (see :data:`BLOCK_OVERHEAD`)
        self.size = 0

    def __len__(self) -> int:
        return len(self._entries)

    def blocks(self, data: bytes, blksize: int) -> list[bytes] | None:
        """The datagrams of ``data`` at ``blksize`` (built now if new), or None when not worth caching."""
        if len(data) < self.min_size or blksize < MIN_BLKSIZE:
            return None
        key = (id(data), blksize)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is data:
            self._entries.move_to_end(key)
            return entry[1]
        # Each datagram: the block, its 4-byte header and the object around it.
        size = len(data) + (4 + BLOCK_OVERHEAD) * (len(data) // blksize + 1)
        if size > self.max_bytes:
            return None
        blocks = build_blocks(data, blksize)
        self._entries[key] = (data, blocks, size)
        self.size += size
        while self.size > self.max_bytes:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self.size -= dropped
        return blocks
