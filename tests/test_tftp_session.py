"""TFTP read sessions and option negotiation, driven by a Clock and a model client.

Nothing here sleeps: ``send`` appends to a list, time moves only through
``Clock.advance``, and every datagram the session emits is decoded with the
real codec. :class:`Client` is a RFC 1350/7440 receiver: it ACKs at the end
of each window and at the final block, and re-ACKs its last in-order block
whenever a block arrives out of order (a gap or a duplicate).
"""

from __future__ import annotations

import random
from collections import deque

import pytest
from twisted.internet.task import Clock

from smee.tftp.blocks import BlockCache, build_blocks
from smee.tftp.packet import (
    ERR_ACCESS,
    ERR_OPTIONS,
    RRQ,
    Ack,
    Data,
    Error,
    OAck,
    Request,
    encode_ack,
    encode_request,
    parse,
)
from smee.tftp.session import (
    DEFAULT_BLKSIZE,
    WINDOWSIZE_CAP,
    Negotiated,
    ReadSession,
    negotiate,
    to_netascii,
)

MiB = 1 << 20
TIMEOUT = 3.0


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def plain(blksize: int = DEFAULT_BLKSIZE, windowsize: int = 1) -> Negotiated:
    """Parameters without an OACK (tests that care only about the DATA/ACK loop)."""
    return Negotiated(blksize, windowsize, TIMEOUT, None, None)


class Harness:
    """A session wired to a list of sent datagrams, a Clock and a record of on_done."""

    def __init__(self, data: bytes, negotiated: Negotiated, retries: int = 5) -> None:
        self.clock = Clock()
        self.sent: deque[bytes] = deque()
        self.outcomes: list[tuple[str, str]] = []
        self.session = ReadSession(
            data, negotiated, self.sent.append, self.clock, retries=retries,
            on_done=lambda outcome, detail: self.outcomes.append((outcome, detail)),
        )

    def take(self) -> list[object]:
        """Everything sent since the last call, decoded."""
        out = [parse(d) for d in self.sent]
        self.sent.clear()
        return out

    def ack(self, block: int) -> list[object]:
        self.session.received(Ack(block))
        return self.take()

    def blocks(self) -> list[int]:
        """Block numbers of the DATA sent since the last call (fails on anything else)."""
        packets = self.take()
        assert all(isinstance(p, Data) for p in packets), packets
        return [p.block for p in packets]  # type: ignore[attr-defined]

    def idle(self) -> bool:
        return self.clock.getDelayedCalls() == []


class Client:
    """A receiver: reassembles the file and ACKs like a well-behaved RFC 7440 client.

    It ACKs when a window of in-order blocks is complete or the final (short)
    block arrives; on a gap (a block ahead of the next expected one) it ACKs
    its last in-order block once, until in-order blocks flow again; and when a
    block it already ACKed arrives again it re-ACKs it (our ACK was lost, the
    server resent). Other old duplicates are ignored. With windowsize 1 this
    is plain RFC 1350. An ``eager`` client instead ACKs its last in-order
    block on every out-of-order block, a flood of duplicate ACKs.

    ``drop_data`` / ``drop_acks`` map a wire block number to how many times
    that DATA (on arrival) or that ACK (on departure) is lost.
    """

    def __init__(
        self, blksize: int, windowsize: int = 1,
        drop_data: dict[int, int] | None = None, drop_acks: dict[int, int] | None = None,
        eager: bool = False,
    ) -> None:
        self.eager = eager
        self.blksize = blksize
        self.windowsize = windowsize
        self.drop_data = dict(drop_data or {})
        self.drop_acks = dict(drop_acks or {})
        self.file = bytearray()
        self.got = 0  # blocks received in order (absolute)
        self.last_acked = 0  # absolute
        self.gap_acked = False
        self.finished = False
        self.wire_blocks: list[int] = []
        self.acks_sent = 0
        self.oack: dict[str, str] | None = None

    def _ack(self, absolute: int) -> Ack | None:
        self.last_acked = absolute
        block = absolute & 0xFFFF
        if self.drop_acks.get(block, 0):
            self.drop_acks[block] -= 1
            return None
        self.acks_sent += 1
        return Ack(block)

    def handle(self, packet: object) -> Ack | None:
        if isinstance(packet, OAck):
            self.oack = packet.options
            return self._ack(0)
        assert isinstance(packet, Data), packet
        if self.drop_data.get(packet.block, 0):
            self.drop_data[packet.block] -= 1
            return None
        self.wire_blocks.append(packet.block)
        ahead = (packet.block - (self.got + 1)) & 0xFFFF
        if self.eager and (ahead or self.finished):
            return self._ack(self.got)
        if self.finished or ahead >= 0x8000:  # old
            return self._ack(self.last_acked) if packet.block == self.last_acked & 0xFFFF else None
        if ahead:  # a gap
            if self.gap_acked:
                return None
            self.gap_acked = True
            return self._ack(self.got)
        self.gap_acked = False
        self.file += packet.payload
        self.got += 1
        if len(packet.payload) < self.blksize:
            self.finished = True
            return self._ack(self.got)
        if self.got == self.last_acked + self.windowsize:
            return self._ack(self.got)
        return None


def transfer(h: Harness, client: Client, max_idle: int = 100) -> None:
    """Run the session against the client until it is done; when nothing is in
    flight, let the session's timer fire."""
    h.session.start()
    idle = 0
    while not h.session.done:
        if h.sent:
            reply = client.handle(parse(h.sent.popleft()))
            if reply is not None:
                h.session.received(reply)
        else:
            idle += 1
            assert idle <= max_idle, "stuck"
            h.clock.advance(h.session.negotiated.timeout)


# --- negotiate ----------------------------------------------------------------------------------


def test_no_options_means_no_oack() -> None:
    assert negotiate({}, 1000, 1468, 5) == Negotiated(512, 1, 5.0, None, None)


def test_only_refused_options_means_no_oack() -> None:
    n = negotiate({"blksize": "7", "timeout": "0", "windowsize": "0", "multicast": "x", "utimeout": "1000"}, 10, 1468, 5)
    assert n == Negotiated(512, 1, 5.0, None, None)


@pytest.mark.parametrize(
    ("value", "cap", "expected"),
    [
        ("1468", 1468, 1468),
        ("1468", 512, 512),  # the MTU/setting cap wins
        ("512", 1468, 512),
        ("8", 1468, 8),  # RFC 2348 minimum
        ("65464", 65464, 65464),  # RFC 2348 maximum
        ("65464", 100000, 65464),  # a cap above the RFC maximum is clamped
        ("01468", 1468, 1468),
        ("7", 1468, None),
        ("0", 1468, None),
        ("65465", 65464, None),
        ("99999999999", 1468, None),
        ("abc", 1468, None),
        ("-1", 1468, None),
        ("+512", 1468, None),
        (" 512", 1468, None),
        ("5_12", 1468, None),
        ("1e3", 1468, None),
        ("\u00b2", 1468, None),  # a latin-1 "digit" that int() refuses
    ],
)
def test_blksize(value: str, cap: int, expected: int | None) -> None:
    n = negotiate({"blksize": value}, 100, cap, 5)
    if expected is None:
        assert (n.blksize, n.oack) == (512, None)
    else:
        assert (n.blksize, n.oack) == (expected, {"blksize": str(expected)})


def test_blksize_cap_below_rfc_minimum_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        negotiate({}, 100, 7, 5)


@pytest.mark.parametrize(
    ("value", "expected"), [("1", 1.0), ("3", 3.0), ("255", 255.0), ("0", None), ("256", None), ("1.5", None), ("x", None)]
)
def test_timeout(value: str, expected: float | None) -> None:
    n = negotiate({"timeout": value}, 100, 1468, 5)
    if expected is None:
        assert (n.timeout, n.oack) == (5.0, None)
    else:
        assert (n.timeout, n.oack) == (expected, {"timeout": value})


@pytest.mark.parametrize(("value", "size"), [("0", 0), ("0", MiB), ("12345", 7)])
def test_tsize_answers_the_real_size(value: str, size: int) -> None:
    n = negotiate({"tsize": value}, size, 1468, 5)
    assert (n.tsize, n.oack) == (size, {"tsize": str(size)})


def test_tsize_not_a_number_is_refused() -> None:
    assert negotiate({"tsize": "big"}, 10, 1468, 5).oack is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1), ("4", 4), ("64", 64), ("65", 64), ("65535", 64), ("0", None), ("65536", None), ("four", None)],
)
def test_windowsize(value: str, expected: int | None) -> None:
    n = negotiate({"windowsize": value}, 100, 1468, 5)
    if expected is None:
        assert (n.windowsize, n.oack) == (1, None)
    else:
        assert (n.windowsize, n.oack) == (expected, {"windowsize": str(expected)})
    assert WINDOWSIZE_CAP == 64


def test_windowsize_cap_is_a_parameter() -> None:
    assert negotiate({"windowsize": "16"}, 1, 512, 5, max_windowsize=8).windowsize == 8


def test_uefi_request() -> None:
    """EDK2's first RRQ: tsize, blksize 1468, windowsize 4; the OACK keeps its order."""
    request = parse(encode_request(RRQ, "ipxe.efi", "octet", {"tsize": "0", "blksize": "1468", "windowsize": "4"}))
    assert isinstance(request, Request)
    n = negotiate(request.options, 1_040_384, 1468, 5)
    assert n == Negotiated(1468, 4, 5.0, 1_040_384, {"tsize": "1040384", "blksize": "1468", "windowsize": "4"})
    assert list(n.oack or ()) == ["tsize", "blksize", "windowsize"]


def test_option_names_are_case_insensitive_and_unknown_ones_dropped() -> None:
    request = parse(b"\0\x01f\0octet\0TSize\x000\0MULTICAST\0x\0BlkSize\x00600\0blksize\x001000\0")
    assert isinstance(request, Request)
    n = negotiate(request.options, 42, 1468, 5)
    assert n.oack == {"tsize": "42", "blksize": "600"}
    # Mixed-case names handed in directly: same answer, first occurrence wins.
    assert negotiate({"TSize": "0", "BLKSIZE": "600", "blksize": "1000"}, 42, 1468, 5).oack == n.oack


# --- netascii -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "converted"),
    [
        (b"", b""),
        (b"abc", b"abc"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb", b"a\r\0b"),
        (b"a\r\nb", b"a\r\0\r\nb"),
        (b"\n\n\r\r", b"\r\n\r\n\r\0\r\0"),
    ],
)
def test_to_netascii(raw: bytes, converted: bytes) -> None:
    assert to_netascii(raw) == converted


# --- whole transfers ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1468, 4 * 1468, MiB])
@pytest.mark.parametrize("blksize", [512, 1468])
def test_plain_transfer(size: int, blksize: int) -> None:
    data = blob(size)
    requested = {} if blksize == 512 else {"blksize": str(blksize)}
    n = negotiate(requested, size, 1468, TIMEOUT)
    assert (n.oack is None) == (blksize == 512)
    h = Harness(data, n)
    client = Client(blksize)
    transfer(h, client)
    assert bytes(client.file) == data
    assert h.outcomes == [("complete", "")]
    assert h.session.done and h.idle()
    blocks = size // blksize + 1
    assert client.wire_blocks == list(range(1, blocks + 1))
    assert h.session.blocks_sent == blocks
    assert h.session.bytes_sent == size
    assert h.session.retransmissions == 0


def test_empty_file_is_one_empty_data_1() -> None:
    h = Harness(b"", plain())
    h.session.start()
    assert h.take() == [Data(1, b"")]
    assert h.ack(1) == []
    assert h.outcomes == [("complete", "")] and h.idle()


def test_exact_multiple_ends_with_an_empty_block() -> None:
    h = Harness(b"x" * 1024, plain())
    h.session.start()
    assert h.take() == [Data(1, b"x" * 512)]
    assert h.ack(1) == [Data(2, b"x" * 512)]
    assert h.ack(2) == [Data(3, b"")]
    assert not h.session.done
    h.ack(3)
    assert h.outcomes == [("complete", "")]


@pytest.mark.parametrize("blksize", [512, 1468])
def test_windowed_transfer_sends_each_block_once(blksize: int) -> None:
    data = blob(MiB)
    n = negotiate({"blksize": str(blksize), "windowsize": "16"}, MiB, 1468, TIMEOUT)
    h = Harness(data, n)
    client = Client(blksize, 16)
    transfer(h, client)
    blocks = MiB // blksize + 1
    assert bytes(client.file) == data
    assert client.wire_blocks == list(range(1, blocks + 1))
    assert h.session.blocks_sent == blocks
    assert client.acks_sent == 1 + -(-blocks // 16)  # ACK 0, then one per window
    assert h.clock.seconds() == 0  # no timer ever fired
    assert h.outcomes == [("complete", "")] and h.idle()


def test_last_window_is_short() -> None:
    h = Harness(bytes(5 * 512 + 100), plain(windowsize=4))
    h.session.start()
    assert h.blocks() == [1, 2, 3, 4]
    assert h.ack(4) == [Data(5, bytes(512)), Data(6, bytes(100))]
    h.ack(6)
    assert h.outcomes == [("complete", "")] and h.idle()


def test_ack_by_number_is_received_ack() -> None:
    """session.ack(n) (the transfer port's shortcut) does what received(Ack(n)) does."""
    h = Harness(bytes(5 * 512 + 100), plain(windowsize=4))
    h.session.start()
    assert h.blocks() == [1, 2, 3, 4]
    h.session.ack(4)
    assert h.blocks() == [5, 6]
    h.session.ack(6)
    assert h.outcomes == [("complete", "")] and h.idle()
    h.session.ack(6)  # after the end: ignored
    assert h.take() == [] and h.outcomes == [("complete", "")]


@pytest.mark.parametrize("size", [0, 100, 512, 5 * 512, 5 * 512 + 100])
def test_byte_and_block_counters(size: int) -> None:
    h = Harness(bytes(size), plain(windowsize=4))
    h.session.start()
    h.clock.advance(TIMEOUT)  # one retransmission of the first window, counted too
    block = 0
    while not h.outcomes:
        block = min(block + 4, size // 512 + 1)
        h.take()
        h.session.ack(block)
    first_window = min(4, size // 512 + 1)
    assert h.session.blocks_sent == size // 512 + 1 + first_window
    assert h.session.bytes_sent == size + min(size, first_window * 512)


def test_send_that_raises_counts_what_went_out_and_keeps_the_timer() -> None:
    sent: list[bytes] = []

    def send(datagram: bytes) -> None:
        if len(sent) == 6:
            raise OSError("buffer full")
        sent.append(datagram)

    clock = Clock()
    session = ReadSession(bytes(10 * 512), plain(windowsize=4), send, clock)
    session.start()
    with pytest.raises(OSError):
        session.received(Ack(4))
    assert session.blocks_sent == 6 and session.bytes_sent == 6 * 512
    assert [c.getTime() for c in clock.getDelayedCalls()] == [TIMEOUT]  # reset despite the error


# --- loss and retransmission --------------------------------------------------------------------


def test_lost_data_is_resent_after_the_timeout_with_identical_bytes() -> None:
    h = Harness(blob(2000), plain())
    h.session.start()
    h.take()
    h.session.received(Ack(1))
    first = list(h.sent)
    assert [parse(d) for d in first] == [Data(2, blob(2000)[512:1024])]
    h.sent.clear()
    h.clock.advance(TIMEOUT - 0.01)
    assert not h.sent
    h.clock.advance(0.01)
    assert list(h.sent) == first
    h.sent.clear()
    assert h.blocks() == []
    assert h.ack(2) == [Data(3, blob(2000)[1024:1536])]
    assert h.session.retransmissions == 1


def test_lost_ack_client_reacks_after_our_resend() -> None:
    data = blob(1500)
    h = Harness(data, plain())
    client = Client(512, drop_acks={2: 1})
    transfer(h, client)
    assert bytes(client.file) == data
    assert client.wire_blocks == [1, 2, 2, 3]
    assert h.session.retransmissions == 1
    assert h.outcomes == [("complete", "")] and h.idle()


def test_timer_restarts_on_progress() -> None:
    """A timeout counts from the last progress, not from the start of the transfer."""
    h = Harness(blob(5000), plain())
    h.session.start()
    h.take()
    h.clock.advance(TIMEOUT - 1)
    assert h.ack(1) == [Data(2, blob(5000)[512:1024])]
    h.clock.advance(TIMEOUT - 0.5)
    assert h.blocks() == []
    h.clock.advance(0.5)
    assert h.blocks() == [2]


@pytest.mark.parametrize("windowsize", [1, 4])
def test_duplicate_and_old_acks_never_cause_a_send(windowsize: int) -> None:
    h = Harness(blob(20 * 512), plain(windowsize=windowsize))
    h.session.start()
    h.take()
    assert len(h.ack(windowsize)) == windowsize  # the next window
    assert h.ack(windowsize) == []  # duplicate
    assert h.ack(windowsize - 1) == []  # old (0 when windowsize is 1)
    assert h.ack(0) == []
    assert h.session.blocks_sent == 2 * windowsize
    h.ack(2 * windowsize)
    assert h.session.blocks_sent == 3 * windowsize


def test_ack_beyond_what_was_sent_is_ignored() -> None:
    h = Harness(blob(20 * 512), plain(windowsize=4))
    h.session.start()
    assert h.blocks() == [1, 2, 3, 4]
    assert h.ack(5) == []
    assert h.ack(9) == []
    assert h.ack(65535) == []
    assert h.ack(3) == [Data(4, blob(20 * 512)[3 * 512 : 4 * 512])] + [
        Data(b, blob(20 * 512)[(b - 1) * 512 : b * 512]) for b in (5, 6, 7)
    ]


def test_ack_mid_window_resumes_from_the_next_block() -> None:
    h = Harness(blob(20 * 512), plain(windowsize=4))
    h.session.start()
    assert h.blocks() == [1, 2, 3, 4]
    h.session.received(Ack(2))
    assert h.blocks() == [3, 4, 5, 6]


def test_windowsize_16_lost_block_in_the_middle_of_a_window() -> None:
    data = blob(100 * 1468 + 7)
    n = negotiate({"blksize": "1468", "windowsize": "16"}, len(data), 1468, TIMEOUT)
    h = Harness(data, n)
    client = Client(1468, 16, drop_data={6: 1})
    transfer(h, client)
    assert bytes(client.file) == data
    assert h.outcomes == [("complete", "")] and h.idle()
    # Blocks 6..16 of the first window went out twice; nothing else did and no timer fired.
    assert h.session.blocks_sent == 101 + 11
    assert h.session.retransmissions == 0
    assert client.wire_blocks[:16] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 6]
    assert client.wire_blocks[16:31] == list(range(7, 22))


def test_lost_last_block_of_a_window_is_recovered_by_the_timeout() -> None:
    data = blob(40 * 512)
    h = Harness(data, plain(windowsize=8))
    client = Client(512, 8, drop_data={8: 1})
    transfer(h, client)
    assert bytes(client.file) == data
    assert h.session.retransmissions == 1  # the whole window again, once
    assert h.session.blocks_sent == 41 + 8


@pytest.mark.parametrize("windowsize", [4, 16])
def test_eager_client_duplicate_ack_flood_still_completes(windowsize: int) -> None:
    data = blob(300 * 512 + 1)
    h = Harness(data, plain(windowsize=windowsize))
    client = Client(512, windowsize, drop_data={6: 1, 100: 2, 200: 1}, drop_acks={64: 1}, eager=True)
    transfer(h, client)
    assert bytes(client.file) == data
    assert h.outcomes == [("complete", "")] and h.idle()


def test_progress_resets_the_retry_count() -> None:
    data = blob(3 * 512)
    h = Harness(data, plain(), retries=2)
    client = Client(512, drop_data={1: 2, 2: 2, 3: 2, 4: 2})
    transfer(h, client)
    assert bytes(client.file) == data
    assert h.outcomes == [("complete", "")]
    assert h.session.retransmissions == 8


@pytest.mark.parametrize("retries", [0, 1, 5])
def test_timeout_exhaustion(retries: int) -> None:
    h = Harness(blob(3000), plain(), retries=retries)
    h.session.start()
    first = h.sent.popleft()
    for _ in range(retries):
        h.clock.advance(TIMEOUT)
        assert list(h.sent) == [first]
        h.sent.clear()
        assert not h.session.done
    h.clock.advance(TIMEOUT)
    assert not h.sent
    assert h.session.done
    assert h.outcomes == [("timeout", f"no ACK after {retries} retransmissions")]
    assert h.idle()
    h.clock.advance(100 * TIMEOUT)
    h.session.received(Ack(1))
    assert not h.sent and len(h.outcomes) == 1


def test_timeout_exhaustion_waiting_for_ack_0_resends_the_oack() -> None:
    n = negotiate({"tsize": "0", "timeout": "2"}, 3000, 1468, TIMEOUT)
    h = Harness(blob(3000), n, retries=3)
    h.session.start()
    assert h.take() == [OAck({"tsize": "3000", "timeout": "2"})]
    for _ in range(3):
        h.clock.advance(2)  # the negotiated timeout, not the default
        assert h.take() == [OAck({"tsize": "3000", "timeout": "2"})]
    h.clock.advance(2)
    assert h.take() == []
    assert h.outcomes[0][0] == "timeout" and h.idle()


def test_send_that_raises_still_leaves_a_timer() -> None:
    h = Harness(blob(100), plain(), retries=1)
    calls: list[bytes] = []

    def failing(datagram: bytes) -> None:
        calls.append(datagram)
        if len(calls) == 1:
            raise OSError("no buffer space")

    h.session._send = failing  # type: ignore[attr-defined]
    with pytest.raises(OSError):
        h.session.start()
    h.clock.advance(TIMEOUT)
    assert len(calls) == 2
    h.session.received(Ack(1))
    assert h.outcomes == [("complete", "")] and h.idle()


# --- rollover -----------------------------------------------------------------------------------


@pytest.mark.parametrize("windowsize", [1, 7])
def test_block_numbers_roll_over_to_zero(windowsize: int) -> None:
    blocks = 70_000
    data = blob(8 * (blocks - 1) + 3)
    n = negotiate({"blksize": "8", "windowsize": str(windowsize)}, len(data), 1468, TIMEOUT)
    h = Harness(data, n)
    client = Client(8, windowsize)
    transfer(h, client)
    assert bytes(client.file) == data
    assert h.outcomes == [("complete", "")] and h.idle()
    assert h.session.blocks_sent == blocks
    assert client.wire_blocks[65533:65538] == [65534, 65535, 0, 1, 2]
    assert client.wire_blocks[-1] == blocks - 65536


def test_ack_across_the_wrap_maps_into_the_outstanding_window() -> None:
    """Window 65534..65537 goes out as 65534, 65535, 0, 1; ACK 0 means block 65536."""
    data = blob(8 * 65540)
    h = Harness(data, plain(blksize=8, windowsize=4))
    h.session._acked = h.session._sent = 65533  # type: ignore[attr-defined]  # skip ahead
    h.session.start()
    assert h.blocks() == [65534, 65535, 0, 1]
    assert h.ack(0) == [Data(1, data[65536 * 8 : 65537 * 8]), Data(2, data[65537 * 8 : 65538 * 8]),
                        Data(3, data[65538 * 8 : 65539 * 8]), Data(4, data[65539 * 8 : 65540 * 8])]
    assert h.ack(65535) == []  # old, from before the wrap
    assert h.ack(0) == []  # duplicate


# --- OACK, ACK 0 and client errors ------------------------------------------------------------


def test_oack_then_ack_0_starts_data_1() -> None:
    data = blob(5000)
    n = negotiate({"blksize": "1468", "windowsize": "2"}, len(data), 1468, TIMEOUT)
    h = Harness(data, n)
    h.session.start()
    assert h.take() == [OAck({"blksize": "1468", "windowsize": "2"})]
    assert h.ack(1) == []  # not the ACK we wait for
    assert h.ack(0) == [Data(1, data[:1468]), Data(2, data[1468:2936])]
    assert h.ack(0) == []  # a duplicate ACK 0 does not restart anything


def test_ack_0_without_oack_is_ignored() -> None:
    h = Harness(blob(2000), plain())
    h.session.start()
    assert h.blocks() == [1]
    assert h.ack(0) == []


def test_uefi_tsize_probe_ends_quietly() -> None:
    """EDK2 asks tsize, blksize 1468, windowsize 4, then answers the OACK with ERROR 8."""
    data = blob(MiB)
    n = negotiate({"tsize": "0", "blksize": "1468", "windowsize": "4"}, len(data), 1468, TIMEOUT)
    h = Harness(data, n)
    h.session.start()
    assert h.take() == [OAck({"tsize": str(MiB), "blksize": "1468", "windowsize": "4"})]
    h.session.received(Error(ERR_OPTIONS, "User aborted the transfer"))
    assert h.take() == []
    assert h.outcomes == [("client-error", "User aborted the transfer")]
    assert h.session.client_error == Error(8, "User aborted the transfer")
    assert h.idle()
    h.clock.advance(100)
    assert h.take() == []


def test_client_error_mid_transfer() -> None:
    h = Harness(blob(5000), plain(windowsize=2))
    h.session.start()
    h.ack(2)
    h.take()
    h.session.received(Error(0, "disk full"))
    assert h.take() == [] and h.outcomes == [("client-error", "disk full")] and h.idle()


@pytest.mark.parametrize(
    "stray",
    [Data(1, b"x"), Request(RRQ, "ipxe.efi", "octet", {}), OAck({"blksize": "512"})],
    ids=["DATA", "RRQ", "OACK"],
)
def test_stray_packet_types_are_ignored(stray: object) -> None:
    h = Harness(blob(2000), plain())
    h.session.start()
    h.session.received(stray)  # type: ignore[arg-type]
    assert h.blocks() == [1]
    h.session.received(Ack(1))
    h.session.received(stray)  # type: ignore[arg-type]
    assert h.blocks() == [2]
    assert not h.session.done
    h.clock.advance(TIMEOUT)  # the timer is unaffected too
    assert h.blocks() == [2]
    for block in (2, 3, 4):
        h.ack(block)
    assert h.outcomes == [("complete", "")] and h.idle()


# --- abort, stop, after done ------------------------------------------------------------------


def test_abort_sends_error_and_ends() -> None:
    h = Harness(blob(5000), plain())
    h.session.start()
    h.take()
    h.session.abort(ERR_ACCESS, "go away")
    assert h.take() == [Error(2, "go away")]
    assert h.outcomes == [("aborted", "go away")] and h.idle()
    h.session.abort(0, "again")
    h.session.stop()
    assert h.take() == [] and len(h.outcomes) == 1


def test_abort_ends_even_if_the_error_cannot_be_sent() -> None:
    h = Harness(blob(5000), plain())
    h.session.start()

    def failing(datagram: bytes) -> None:
        raise OSError("network unreachable")

    h.session._send = failing  # type: ignore[attr-defined]
    with pytest.raises(OSError):
        h.session.abort(0, "internal error")
    assert h.outcomes == [("aborted", "internal error")] and h.idle()


def test_stop_is_silent() -> None:
    h = Harness(blob(5000), plain())
    h.session.start()
    h.take()
    h.session.stop()
    assert h.take() == []
    assert h.outcomes == [("stopped", "")] and h.idle()


def test_stop_before_start() -> None:
    h = Harness(blob(5000), plain())
    h.session.stop()
    h.session.start()
    assert h.take() == [] and h.outcomes == [("stopped", "")] and h.idle()


def test_nothing_happens_after_complete() -> None:
    h = Harness(b"tiny", plain())
    h.session.start()
    h.ack(1)
    assert h.outcomes == [("complete", "")] and h.idle()
    for packet in (Ack(1), Ack(2), Ack(0), Error(0, "late"), Data(1, b"")):
        h.session.received(packet)  # type: ignore[arg-type]
    h.session.start()
    assert h.take() == [] and len(h.outcomes) == 1 and h.idle()


def test_default_on_done_and_encoded_ack_path() -> None:
    """The default on_done accepts the call; ACKs straight off the wire work."""
    clock = Clock()
    sent: list[bytes] = []
    session = ReadSession(b"abc", plain(), sent.append, clock)
    session.start()
    reply = parse(encode_ack(1))
    assert isinstance(reply, Ack)
    session.received(reply)
    assert session.done and clock.getDelayedCalls() == []
    assert (session.blocks_sent, session.bytes_sent) == (1, 3)



# --- send_many (a window in one call: the protocol's UDP GSO hook) ------------------------------


class ManySender:
    """``send`` and ``send_many`` recorders: ``calls`` is one entry per call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        self.fail_many = False

    def send(self, datagram: bytes) -> None:
        self.calls.append(("send", [datagram]))

    def send_many(self, datagrams: list[bytes]) -> None:
        if self.fail_many:
            raise OSError("buffer full")
        self.calls.append(("many", list(datagrams)))

    def blocks(self) -> list[tuple[str, list[int]]]:
        out = [(kind, [parse(d).block for d in ds]) for kind, ds in self.calls]  # type: ignore[attr-defined]
        self.calls.clear()
        return out


def test_windows_of_several_blocks_go_out_in_one_send_many_call() -> None:
    data = blob(9 * 512 + 100)  # 10 blocks: windows 1-4, 5-8, 9-10
    out = ManySender()
    clock = Clock()
    session = ReadSession(data, plain(windowsize=4), out.send, clock, send_many=out.send_many)
    session.start()
    assert out.blocks() == [("many", [1, 2, 3, 4])]
    session.ack(4)
    assert out.blocks() == [("many", [5, 6, 7, 8])]
    session.ack(6)  # mid-window: the next window starts after 6
    assert out.blocks() == [("many", [7, 8, 9, 10])]
    clock.advance(TIMEOUT)  # the retransmission is a window too
    assert out.blocks() == [("many", [7, 8, 9, 10])]
    session.ack(9)
    assert out.blocks() == [("send", [10])]  # a window of one block: plain send
    session.ack(10)
    assert session.done and session.blocks_sent == 17 and session.retransmissions == 1
    assert session.bytes_sent == 8 * 512 + 2 * (3 * 512 + 100) + 100  # 1-8, 7-10 twice, 10 again


def test_send_many_is_not_used_in_lockstep() -> None:
    out = ManySender()
    session = ReadSession(blob(1500), plain(), out.send, Clock(), send_many=out.send_many)
    session.start()
    for block in (1, 2, 3):
        session.ack(block)
    assert [kind for kind, _ in out.calls] == ["send"] * 3
    assert session.done and session.blocks_sent == 3


def test_send_many_that_raises_counts_nothing_and_keeps_the_timer() -> None:
    out = ManySender()
    clock = Clock()
    session = ReadSession(bytes(10 * 512), plain(windowsize=4), out.send, clock, send_many=out.send_many)
    session.start()
    out.fail_many = True
    with pytest.raises(OSError):
        session.ack(4)
    assert session.blocks_sent == 4 and session.bytes_sent == 4 * 512
    assert [c.getTime() for c in clock.getDelayedCalls()] == [TIMEOUT]
    out.fail_many = False
    clock.advance(TIMEOUT)  # the window is resent
    assert out.blocks()[-1] == ("many", [5, 6, 7, 8])


def test_lockstep_send_that_raises_counts_nothing_and_keeps_the_timer() -> None:
    sent: list[bytes] = []
    fail = [False]

    def send(datagram: bytes) -> None:
        if fail[0]:
            raise OSError("buffer full")
        sent.append(datagram)

    clock = Clock()
    session = ReadSession(bytes(3 * 512), plain(), send, clock)
    session.start()
    fail[0] = True
    clock.advance(1.0)
    with pytest.raises(OSError):
        session.ack(1)
    assert session.blocks_sent == 1 and session.bytes_sent == 512
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0 + TIMEOUT]
    fail[0] = False
    clock.advance(TIMEOUT)
    assert [parse(d) for d in sent] == [Data(1, bytes(512)), Data(2, bytes(512))]


# --- blocks built once (smee.tftp.blocks) --------------------------------------------------------


def _transfer(data: bytes, negotiated: Negotiated, **kwargs: object) -> list[bytes]:
    """Every datagram a session sends for ``data`` to a client ACKing each window, retransmission included."""
    out: list[bytes] = []
    clock = Clock()
    session = ReadSession(data, negotiated, out.append, clock,
                          send_many=(lambda ds: out.extend(ds)), **kwargs)  # type: ignore[arg-type]
    session.start()
    clock.advance(TIMEOUT)  # one retransmission of the first window
    for _ in range(10000):
        if session.done:
            return out
        session.ack(parse(out[-1]).block)  # type: ignore[union-attr]
    raise AssertionError("transfer did not end")


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 4 * 512, 10 * 512 + 7])
@pytest.mark.parametrize("windowsize", [1, 4])
def test_prebuilt_blocks_send_exactly_what_building_sends(size: int, windowsize: int) -> None:
    data = blob(size, seed=size)
    negotiated = plain(windowsize=windowsize)
    built = build_blocks(data, 512)
    assert len(built) == size // 512 + 1
    assert _transfer(data, negotiated, blocks=built) == _transfer(data, negotiated)


def test_block_cache_shares_entries_and_skips_small_contents() -> None:
    cache = BlockCache(max_bytes=1 << 20, min_size=1000)
    data = blob(5000)
    first = cache.blocks(data, 512)
    assert first is not None and cache.blocks(data, 512) is first  # shared, not rebuilt
    assert cache.blocks(data, 1024) is not first and len(cache) == 2
    assert cache.blocks(blob(999), 512) is None and len(cache) == 2
    assert cache.blocks(bytes(bytearray(data)), 512) is not first  # equal bytes, another object: its own entry


def test_block_cache_is_bounded_least_recently_used_first() -> None:
    cache = BlockCache(max_bytes=12000, min_size=1)
    a, b, c = blob(5000, 1), blob(5000, 2), blob(5000, 3)
    blocks_a = cache.blocks(a, 512)
    cache.blocks(b, 512)
    assert cache.blocks(a, 512) is blocks_a  # a used last: b goes first
    cache.blocks(c, 512)
    assert len(cache) == 2 and cache.size <= 12000
    assert cache.blocks(a, 512) is blocks_a
    assert cache.blocks(blob(20000), 512) is None  # larger than the whole cache: never kept
