"""Malformed DHCP, TFTP and syslog datagrams, and a bounded sender for them (issue 10, item 2).

A hostile or buggy host on a provisioning network sends smee everything:
truncated and oversized DHCP, wrong magic cookies, option lengths that run
past the end, option 52 pointing at garbage, endless padding, absurd header
fields; TFTP packets with unknown or cut opcodes, requests without their
NULs or option values, huge names, ACK/DATA/ERROR/WRQ to port 69; syslog
lines that are empty, 64 KiB, not UTF-8, with ``<999>`` or NULs. This module
makes such datagrams (:data:`KINDS`, :func:`generate`) and sends them
(:func:`main`), so that an end-to-end test can check that a real client
still boots while smee logs, counts and survives the junk
(tests/test_e2e_junk.py).

Each kind says what smee should make of it, independently of smee's code
(``expect``): ``"malformed"`` (its parser must refuse it), ``"parsed"``
(well-formed to the parser, nonsense to the policy), a TFTP outcome
(``"not-found"``, ``"write-refused"``, ``"unknown-tid"``...), or None where
the answer depends on how much of the datagram the socket reads (Twisted
reads 8192 bytes and silently drops the rest). The test compares smee's
counters with these numbers.

Run as a program it is bounded in count *and* time, and refuses to send
anywhere but loopback or the documentation networks (192.0.2.0/24,
198.51.100.0/24, 203.0.113.0/24), and anywhere but loopback from the root
network namespace::

    ip netns exec NS python tests/junk.py --target 192.0.2.1 --count 20000 --duration 10

It prints one JSON object: what was sent, by protocol, kind and expectation,
and how many replies came back (smee's ERRORs to TFTP junk).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

#: Hard limits of the program, whatever its arguments say.
MAX_COUNT = 200_000
MAX_DURATION = 60.0
#: Where the program may send (loopback, and the RFC 5737 documentation networks tests use).
ALLOWED = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24",
                                                  "203.0.113.0/24"))
#: Largest UDP payload over IPv4 (65535 - 20 - 8).
MAX_UDP = 65507

MAGIC = b"\x63\x82\x53\x63"
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
#: The junk's MACs: locally administered, never in a hardware file of the tests.
MAC_PREFIX = b"\x0e\x6a\x75"


@dataclass(frozen=True)
class Junk:
    """One datagram: which protocol (its port) it goes to, what it is, what smee should make of it."""

    proto: str  # "dhcp", "tftp" or "syslog"
    kind: str
    expect: str | None
    data: bytes


# --- DHCP ------------------------------------------------------------------------------------


def _mac(rng: random.Random) -> bytes:
    return MAC_PREFIX + rng.randbytes(3)


def _bootp(rng: random.Random, options: bytes, *, op: int = 1, htype: int = 1, hlen: int = 6, hops: int = 0,
           secs: int = 0, flags: int = 0x8000, ciaddr: bytes = b"\0" * 4, giaddr: bytes = b"\0" * 4,
           sname: bytes = b"", file: bytes = b"", cookie: bytes = MAGIC) -> bytes:
    chaddr = _mac(rng) + bytes(10)
    return _BOOTP.pack(op, htype, hlen, hops, rng.getrandbits(32), secs, flags, ciaddr, b"\0" * 4,
                       b"\0" * 4, giaddr, chaddr, sname, file) + cookie + options


#: A PXE client's DISCOVER options (53, 93 arch 0, 94, 60 PXEClient), then END.
_PXE = (b"\x35\x01\x01" + b"\x5d\x02\x00\x00" + b"\x5e\x03\x01\x02\x01"
        + b"\x3c\x20PXEClient:Arch:00000:UNDI:002001")


def _discover(rng: random.Random) -> bytes:
    return _bootp(rng, _PXE + b"\xff")


def dhcp_truncated(rng: random.Random) -> bytes:
    """A DISCOVER cut anywhere before its magic cookie ends (0..239 bytes)."""
    return _discover(rng)[: rng.randint(0, 239)]


def dhcp_oversized(rng: random.Random) -> bytes:
    """1.5 to 64 KB of random bytes behind a header, with a cookie that is not DHCP's."""
    data = bytearray(_discover(rng))
    data[236:240] = b"JUNK"
    return bytes(data) + rng.randbytes(rng.randint(1500, 65000) - len(data))


def dhcp_oversized_pad(rng: random.Random) -> bytes:
    """A DISCOVER whose options go on as PAD up to 64 KB (no END): well-formed however it is cut."""
    return _bootp(rng, _PXE) + bytes(rng.randint(1500, 65000) - 300)


def dhcp_bad_cookie(rng: random.Random) -> bytes:
    return _bootp(rng, _PXE + b"\xff", cookie=rng.choice([b"\0\0\0\0", b"\x63\x82\x53\x64", b"\xff" * 4,
                                                          rng.randbytes(4)]))


def dhcp_option_overrun(rng: random.Random) -> bytes:
    """An option whose length runs past the end of the datagram."""
    code = rng.randint(1, 254)
    return _bootp(rng, _PXE + bytes([code, rng.randint(40, 255)]) + rng.randbytes(rng.randint(0, 30)))


def dhcp_option_no_length(rng: random.Random) -> bytes:
    """The datagram ends on an option code (no length byte), no END."""
    return _bootp(rng, _PXE + bytes([rng.randint(1, 254)]))


def dhcp_overload_garbage(rng: random.Random) -> bytes:
    """Option 52 sends the parser into ``file``/``sname``, which hold options running past their end."""
    garbage = bytes([rng.randint(1, 254), 255]) + rng.randbytes(20)
    which = rng.choice([1, 2, 3])
    return _bootp(rng, _PXE + bytes([52, 1, which]) + b"\xff", file=garbage, sname=garbage[:64])


def dhcp_overload_bad_value(rng: random.Random) -> bytes:
    """Option 52 with a value that is not 1, 2 or 3, or of the wrong length."""
    value = rng.choice([b"\x00", b"\x04", b"\xff", b"", b"\x01\x02"])
    return _bootp(rng, _PXE + bytes([52, len(value)]) + value + b"\xff")


def dhcp_endless_pad(rng: random.Random) -> bytes:
    """A cookie followed by nothing but PAD up to an Ethernet frame: no message type, no END."""
    return _bootp(rng, bytes(rng.randint(1, 1472 - 240)))


def dhcp_no_end(rng: random.Random) -> bytes:
    """A DISCOVER without END (several ROMs do that: tolerated)."""
    return _bootp(rng, _PXE)


def dhcp_random(rng: random.Random) -> bytes:
    """Random bytes; when long enough to have a cookie, never DHCP's."""
    data = bytearray(rng.randbytes(rng.randint(0, 1472)))
    if len(data) >= 240 and data[236:240] == MAGIC:
        data[236] ^= 0xFF
    return bytes(data)


def dhcp_hlen_255(rng: random.Random) -> bytes:
    return _bootp(rng, _PXE + b"\xff", hlen=255)


def dhcp_bad_op(rng: random.Random) -> bytes:
    return _bootp(rng, _PXE + b"\xff", op=rng.choice([0, 3, 7, 255]))


def dhcp_htype_0(rng: random.Random) -> bytes:
    return _bootp(rng, _PXE + b"\xff", htype=0, hlen=rng.choice([0, 6, 16]))


def dhcp_reply_from_client(rng: random.Random) -> bytes:
    """op 2 (BOOTREPLY) sent to the server port."""
    return _bootp(rng, b"\x35\x01\x02\x36\x04\xc0\x00\x02\x42\xff", op=2)


def dhcp_absurd(rng: random.Random) -> bytes:
    """Every header field at its limit, a bogus relay address and a message type that does not exist."""
    mtype = rng.choice([0, 9, 18, 255])
    return _bootp(rng, bytes([53, 1, mtype]) + _PXE[3:] + b"\xff", hops=255, secs=65535, flags=0xFFFF,
                  ciaddr=rng.randbytes(4), giaddr=bytes([203, 0, 113, rng.randint(1, 254)]))


def dhcp_unknown_pxe(rng: random.Random) -> bytes:
    """A well-formed PXE DISCOVER from a MAC no hardware record has."""
    return _discover(rng)


def dhcp_concat(rng: random.Random) -> bytes:
    """Thousands of one-byte pieces of option 60 (RFC 3396 concatenation) filling 8 KB."""
    return _bootp(rng, b"\x35\x01\x01" + b"\x3c\x01P" * 2600 + b"\xff")


# --- TFTP ------------------------------------------------------------------------------------


def _name(rng: random.Random, low: int, high: int) -> bytes:
    return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789._-/") for _ in range(rng.randint(low, high)))


def tftp_truncated(rng: random.Random) -> bytes:
    """0 to 3 bytes: not even an opcode and a block number."""
    return rng.randbytes(rng.randint(0, 3))


def tftp_unknown_opcode(rng: random.Random) -> bytes:
    opcode = rng.choice([0, 7, 8, 255, 256, 0x0101, 65535, rng.randint(9, 65535)])
    return struct.pack("!H", opcode) + rng.randbytes(rng.randint(2, 60))


def tftp_rrq_no_nul(rng: random.Random) -> bytes:
    """An RRQ whose last field (the mode) is not NUL-terminated."""
    return b"\0\1" + _name(rng, 1, 40) + b"\0octet"


def tftp_rrq_no_mode(rng: random.Random) -> bytes:
    return b"\0\1" + _name(rng, 1, 40) + b"\0"


def tftp_rrq_huge_name(rng: random.Random) -> bytes:
    """A 0.6 to 7 KB file name (fits the 8 KB smee reads): a name smee does not serve."""
    return b"\0\1x" + _name(rng, 600, 7000) + b"\0octet\0"


def tftp_rrq_oversized(rng: random.Random) -> bytes:
    """A 9 to 60 KB request: refused as malformed when cut at 8 KB, as not found when read whole."""
    return b"\0\1x" + _name(rng, 9000, 60000) + b"\0octet\0"


def tftp_option_no_value(rng: random.Random) -> bytes:
    return b"\0\1ipxe.efi\0octet\0" + rng.choice([b"blksize\0", b"tsize\0", b"blksize\x00512\x00windowsize\x00"])


def tftp_option_empty_value(rng: random.Random) -> bytes:
    return b"\0\1ipxe.efi\0octet\0" + rng.choice([b"blksize\0\0", b"tsize\0\0", b"\0\0"])


def tftp_ack(rng: random.Random) -> bytes:
    return struct.pack("!HH", 4, rng.getrandbits(16))


def tftp_data(rng: random.Random) -> bytes:
    return struct.pack("!HH", 3, rng.getrandbits(16)) + rng.randbytes(rng.randint(0, 512))


def tftp_oack(rng: random.Random) -> bytes:
    return b"\x00\x06blksize\x001468\x00"


def tftp_error(rng: random.Random) -> bytes:
    return struct.pack("!HH", 5, rng.randint(0, 8)) + _name(rng, 0, 40) + rng.choice([b"\0", b""])


def tftp_wrq(rng: random.Random) -> bytes:
    return b"\0\2" + rng.choice([b"ipxe.efi", b"undionly.kpxe", _name(rng, 1, 40)]) + b"\0octet\0"


def tftp_rrq_bad_mode(rng: random.Random) -> bytes:
    return b"\0\1ipxe.efi\0" + rng.choice([b"mail", b"binary", b"x" * 100]) + b"\0"


def tftp_rrq_traversal(rng: random.Random) -> bytes:
    name = rng.choice([b"../../../../etc/passwd", b"/etc/shadow", b"//ipxe.efi", b"..\\ipxe.efi",
                       b"a/b/ipxe.efi", b"ipxe.efi/..", b"IPXE.EFI"])
    return b"\0\1" + name + b"\0octet\0"


def tftp_rrq_stranger(rng: random.Random) -> bytes:
    """A well-formed RRQ of a real binary, from an address no hardware record has."""
    return b"\0\1" + rng.choice([b"ipxe.efi", b"undionly.kpxe", b"snp.efi"]) + b"\0octet\0"


# --- syslog ----------------------------------------------------------------------------------


def syslog_empty(rng: random.Random) -> bytes:
    return b""


def syslog_huge(rng: random.Random) -> bytes:
    """A well-formed line of 64 KiB (smee keeps the first 8 KiB)."""
    return b"<14>junk: " + b"A" * (65536 - 10)


def syslog_bad_utf8(rng: random.Random) -> bytes:
    return b"<14>junk: " + bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 200)))


def syslog_bad_pri(rng: random.Random) -> bytes:
    return rng.choice([b"<999>", b"<>", b"<1000>", b"<-1>", b"<abc>", b"<192>", b"<1", b"<"]) + b"junk: pri"


def syslog_nuls(rng: random.Random) -> bytes:
    """NULs only (no <PRI>)."""
    return b"\0" * rng.randint(1, 1000)


def syslog_pri_nuls(rng: random.Random) -> bytes:
    """A valid PRI followed by NULs: whether that is a message is the parser's call."""
    return b"<13>" + b"\0" * rng.randint(0, 1000)


def syslog_random(rng: random.Random) -> bytes:
    """Random bytes not starting with ``<``."""
    return bytes([rng.choice([c for c in range(256) if c != 0x3C])]) + rng.randbytes(rng.randint(0, 1400))


def syslog_info(rng: random.Random) -> bytes:
    return f"<14>junk[{rng.randint(1, 99999)}]: well-formed junk line {rng.getrandbits(32):08x}".encode()


def syslog_error(rng: random.Random) -> bytes:
    """Severity err: smee re-logs it at error, a level its log observer never suppresses."""
    return f"<11>junk: error-severity junk line {rng.getrandbits(32):08x}".encode()


#: (protocol, kind, expectation, weight, generator). Weights are relative, over all protocols.
KINDS: tuple[tuple[str, str, str | None, float, Callable[[random.Random], bytes]], ...] = (
    ("dhcp", "truncated", "malformed", 5, dhcp_truncated),
    ("dhcp", "oversized", "malformed", 0.4, dhcp_oversized),
    ("dhcp", "oversized-pad", "parsed", 0.3, dhcp_oversized_pad),
    ("dhcp", "bad-cookie", "malformed", 3, dhcp_bad_cookie),
    ("dhcp", "option-overrun", "malformed", 3, dhcp_option_overrun),
    ("dhcp", "option-no-length", "malformed", 2, dhcp_option_no_length),
    ("dhcp", "overload-garbage", "malformed", 3, dhcp_overload_garbage),
    ("dhcp", "overload-bad-value", "malformed", 2, dhcp_overload_bad_value),
    ("dhcp", "endless-pad", "parsed", 2, dhcp_endless_pad),
    ("dhcp", "no-end", "parsed", 2, dhcp_no_end),
    ("dhcp", "random", "malformed", 4, dhcp_random),
    ("dhcp", "hlen-255", "malformed", 2, dhcp_hlen_255),
    ("dhcp", "bad-op", "malformed", 1, dhcp_bad_op),
    ("dhcp", "htype-0", "parsed", 2, dhcp_htype_0),
    ("dhcp", "reply-from-client", "parsed", 2, dhcp_reply_from_client),
    ("dhcp", "absurd", "parsed", 2, dhcp_absurd),
    ("dhcp", "unknown-pxe", "parsed", 2, dhcp_unknown_pxe),
    ("dhcp", "concat", "parsed", 0.3, dhcp_concat),
    ("tftp", "truncated", "malformed", 3, tftp_truncated),
    ("tftp", "unknown-opcode", "malformed", 3, tftp_unknown_opcode),
    ("tftp", "rrq-no-nul", "malformed", 3, tftp_rrq_no_nul),
    ("tftp", "rrq-no-mode", "malformed", 2, tftp_rrq_no_mode),
    ("tftp", "option-no-value", "malformed", 2, tftp_option_no_value),
    ("tftp", "option-empty-value", "malformed", 2, tftp_option_empty_value),
    ("tftp", "rrq-huge-name", "not-found", 0.5, tftp_rrq_huge_name),
    ("tftp", "rrq-oversized", None, 0.2, tftp_rrq_oversized),
    ("tftp", "rrq-traversal", "not-found", 2, tftp_rrq_traversal),
    ("tftp", "rrq-bad-mode", "bad-mode", 1, tftp_rrq_bad_mode),
    ("tftp", "rrq-stranger", "unknown-client", 1, tftp_rrq_stranger),
    ("tftp", "ack", "unknown-tid", 2, tftp_ack),
    ("tftp", "data", "unknown-tid", 2, tftp_data),
    ("tftp", "oack", "unknown-tid", 1, tftp_oack),
    ("tftp", "error", "stray-error", 2, tftp_error),
    ("tftp", "wrq", "write-refused", 2, tftp_wrq),
    ("syslog", "empty", "malformed", 3, syslog_empty),
    ("syslog", "huge", "parsed", 0.3, syslog_huge),
    ("syslog", "bad-utf8", "parsed", 3, syslog_bad_utf8),
    ("syslog", "bad-pri", "malformed", 4, syslog_bad_pri),
    ("syslog", "nuls", "malformed", 3, syslog_nuls),
    ("syslog", "pri-nuls", None, 2, syslog_pri_nuls),
    ("syslog", "random", "malformed", 4, syslog_random),
    ("syslog", "info", "parsed", 3, syslog_info),
    ("syslog", "error", "parsed", 0.2, syslog_error),
)

PROTOCOLS = ("dhcp", "tftp", "syslog")


def generate(rng: random.Random, protocols: Sequence[str] = PROTOCOLS,
             kinds: Sequence[str] = ()) -> Iterator[Junk]:
    """An endless stream of junk for ``protocols``, kinds drawn by weight; ``kinds``
    (``proto/kind`` names, e.g. ``syslog/error``) narrows it to those."""
    table = [k for k in KINDS if k[0] in protocols and (not kinds or f"{k[0]}/{k[1]}" in kinds)]
    if not table:
        raise ValueError(f"no junk for protocols {list(protocols)} and kinds {list(kinds)}")
    weights = [k[3] for k in table]
    while True:
        proto, kind, expect, _, make = rng.choices(table, weights)[0]
        data = make(rng)
        yield Junk(proto, kind, expect, data[:MAX_UDP])


# --- the program --------------------------------------------------------------------------------


def _in_root_netns() -> bool:
    """Whether this process may be in the host's own network namespace: it is not one of the
    namespaces ``ip netns add`` made (bind-mounted under /run/netns). pid 1's namespace cannot
    be compared with: /proc/1/ns is often unreadable, even for root, in containers."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        named = os.listdir("/run/netns")
    except OSError:
        return True  # cannot tell: assume the worst
    for name in named:
        try:
            if os.stat(os.path.join("/run/netns", name)).st_ino == mine:
                return False
        except OSError:
            continue
    return True


def check_target(target: str, root_netns: bool) -> str | None:
    """Why junk must not go to ``target`` (None: it may)."""
    try:
        addr = ipaddress.ip_address(target)
    except ValueError:
        return f"not an IP address: {target!r}"
    if not any(addr in net for net in ALLOWED):
        return f"{addr} is not loopback or a documentation network ({', '.join(map(str, ALLOWED))})"
    if root_netns and not addr.is_loopback:
        return f"{addr} from the root network namespace: run me with 'ip netns exec', or target loopback"
    return None


def _drain(sock: socket.socket, replies: dict[str, list[int]], ports: dict[int, str]) -> None:
    """Read whatever came back (smee's ERRORs to TFTP junk) without waiting."""
    for _ in range(1024):
        try:
            data, addr = sock.recvfrom(MAX_UDP)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        slot = replies.setdefault(ports.get(addr[1], "other"), [0, 0])
        slot[0] += 1
        slot[1] += len(data)


def send(target: str, ports: dict[str, int], count: int, duration: float, seed: int,
         protocols: Sequence[str], should_stop: Callable[[], bool] = lambda: False,
         kinds: Sequence[str] = ()) -> dict[str, object]:
    """Send ``count`` datagrams evenly over ``duration`` seconds (fewer if the time runs out or
    ``should_stop()`` says so: a SIGTERM still gets the summary)."""
    rng = random.Random(seed)
    junk = generate(rng, protocols, kinds)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    by_port = {port: proto for proto, port in ports.items()}
    sent: dict[str, dict[str, dict[str, object]]] = {}
    expect_totals: dict[str, dict[str, int]] = {}
    replies: dict[str, list[int]] = {}
    errors: dict[str, int] = {}
    total = nbytes = 0
    started = time.monotonic()
    deadline = started + duration
    interval = duration / count if count else 0.0
    for i in range(count):
        now = time.monotonic()
        if now >= deadline or should_stop():
            break
        ahead = started + i * interval - now
        if ahead > 0.002:
            time.sleep(ahead)
        item = next(junk)
        try:
            sock.sendto(item.data, (target, ports[item.proto]))
        except BlockingIOError:
            # the send buffer is full: give the kernel a moment, then one more try
            time.sleep(0.001)
            try:
                sock.sendto(item.data, (target, ports[item.proto]))
            except OSError as e:
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                errors[name] = errors.get(name, 0) + 1
                continue
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
            continue
        total += 1
        nbytes += len(item.data)
        entry = sent.setdefault(item.proto, {}).setdefault(item.kind, {"expect": item.expect, "sent": 0})
        entry["sent"] = int(entry["sent"]) + 1  # type: ignore[call-overload]
        totals = expect_totals.setdefault(item.proto, {})
        key = item.expect or "any"
        totals[key] = totals.get(key, 0) + 1
        if i % 256 == 255:
            _drain(sock, replies, by_port)
    elapsed = time.monotonic() - started
    time.sleep(0.2)  # the last replies
    _drain(sock, replies, by_port)
    sock.close()
    return {
        "target": target, "ports": ports, "seed": seed, "requested": count, "sent": total,
        "bytes": nbytes, "elapsed": round(elapsed, 3), "errors": errors,
        "expect": expect_totals, "kinds": sent,
        "replies": {proto: {"datagrams": n, "bytes": b} for proto, (n, b) in replies.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", required=True, help="smee's address")
    parser.add_argument("--count", type=int, default=20000, help=f"datagrams (at most {MAX_COUNT})")
    parser.add_argument("--duration", type=float, default=10.0, help=f"seconds (at most {MAX_DURATION:g})")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--dhcp-port", type=int, default=67)
    parser.add_argument("--tftp-port", type=int, default=69)
    parser.add_argument("--syslog-port", type=int, default=514)
    parser.add_argument("--kinds", default="", help="only these kinds, e.g. syslog/error,dhcp/truncated")
    parser.add_argument("--summary", help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    protocols = [p for p in args.protocols.split(",") if p]
    if not set(protocols) <= set(PROTOCOLS):
        parser.error(f"--protocols: choose from {','.join(PROTOCOLS)}")
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - {f"{k[0]}/{k[1]}" for k in KINDS}
    if unknown:
        parser.error(f"--kinds: no such kind {sorted(unknown)}")
    if not 0 < args.count <= MAX_COUNT:
        parser.error(f"--count must be 1..{MAX_COUNT}")
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION:g}]")
    why = check_target(args.target, _in_root_netns())
    if why:
        print(f"junk: refusing to send: {why}", file=sys.stderr)
        return 2
    ports = {"dhcp": args.dhcp_port, "tftp": args.tftp_port, "syslog": args.syslog_port}
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    summary = send(args.target, {p: ports[p] for p in protocols}, args.count, args.duration, args.seed,
                   protocols, lambda: bool(stopping), kinds)
    summary["stopped_by_signal"] = bool(stopping)
    text = json.dumps(summary, sort_keys=True)
    if args.summary:
        with open(args.summary, "w") as out:
            out.write(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
