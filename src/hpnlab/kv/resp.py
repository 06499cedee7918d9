"""RESP, the Redis serialization protocol: requests in, replies out.

Requests are what clients send: arrays of bulk strings ("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
or inline commands (a line of space-separated words, as `redis-cli` over telnet
or redis-benchmark's PING_INLINE send). `parse_requests` takes one buffer and
returns every complete command in it plus how far it got; an incomplete tail
is left for the next read, and `need` says how many bytes must be there before
parsing it again is worth it (a 1 MiB value arriving in 64 KiB reads is then
joined once, not sixteen times).

Bad input raises ProtocolError with Redis's own text (networking.c); the
connection replies "-ERR <text>" and closes, as Redis does.

Replies are built as bytes by the small encoders below; RESP3 (after HELLO 3)
differs only in nulls, maps, sets, doubles and booleans.
"""
from __future__ import annotations

from itertools import chain

INLINE_MAX = 64 * 1024          # PROTO_INLINE_MAX_SIZE: an inline command or a header line
MULTIBULK_MAX = 1024 * 1024     # the most arguments one command may declare
UNAUTH_MULTIBULK_MAX = 10       # before AUTH (requirepass set), as Redis 7
UNAUTH_BULK_MAX = 16384


class ProtocolError(Exception):
    """Malformed input: args[0] is Redis's text (sent as '-ERR ' + text before closing),
    args[1] the commands complete before the bad bytes (Redis runs those)."""


def parse_requests(data: bytes, pos: int, max_bulk: int, authed: bool = True
                   ) -> tuple[list[list[bytes]], int, int]:
    """(commands, position after the last complete one, bytes needed to go on).

    `need` is the buffer length the next parse needs (0: unknown, wait for a newline).
    """
    if not pos and authed and max_bulk >= FAST_BULK_MAX:
        one = _lone(data)
        if one is not None:
            return [one], len(data), 0
    cmds: list[list[bytes]] = []
    try:
        if authed and data[pos:pos + 1] == b"*" and max_bulk >= FAST_BULK_MAX:
            pos = _parse_fast(data, pos, cmds)
            if pos == len(data):
                return cmds, pos, 0
        return _parse(data, pos, max_bulk, authed, cmds)
    except ProtocolError as exc:
        raise ProtocolError(exc.args[0], cmds) from None


# The fast path: split the whole read on CRLF once (in C) and take commands as runs of
# tokens "*N", "$len", arg, ...; every "$len" must name the length of the token after it.
# It stops at the first thing it does not vouch for (an argument containing CRLF, a big
# or odd header, an incomplete tail, inline input) and _parse goes on from there.
FAST_ARGC_MAX = 64
FAST_BULK_MAX = 4096
_ARGC = {b"*%d" % n: n for n in range(1, FAST_ARGC_MAX + 1)}
_LENS = {b"$%d" % n: n for n in range(FAST_BULK_MAX + 1)}


def _lone(data: bytes) -> list[bytes] | None:
    """The arguments when `data` is exactly one command of 2 or 3 arguments - the read of a
    client that does not pipeline (GET, SET, INCR, LPUSH...) - checked unrolled; else None."""
    toks = data.split(b"\r\n")
    n, lens = len(toks), _LENS
    if n == 8 and toks[0] == b"*3" and not toks[7]:
        h1, a1, h2, a2, h3, a3 = toks[1:7]
        if lens.get(h1) == len(a1) and lens.get(h2) == len(a2) and lens.get(h3) == len(a3):
            return [a1, a2, a3]
    elif n == 6 and toks[0] == b"*2" and not toks[5]:
        h1, a1, h2, a2 = toks[1:5]
        if lens.get(h1) == len(a1) and lens.get(h2) == len(a2):
            return [a1, a2]
    return None


def _parse_fast(data: bytes, pos: int, cmds: list[list[bytes]]) -> int:
    toks = data[pos:].split(b"\r\n") if pos else data.split(b"\r\n")
    last = len(toks) - 1                 # the piece after the last CRLF: never complete
    argcs, lens = _ARGC, _LENS
    argc = argcs.get(toks[0])
    if argc is not None and last == 2 * argc + 1 and not toks[last]:
        # exactly one command (2 and 3 arguments came through _lone already)
        args = toks[2:last:2]
        if list(map(lens.get, toks[1:last:2])) == list(map(len, args)):
            cmds.append(args)
            return len(data)
    if argc is not None and not toks[last] and _uniform(toks, argc, last, cmds):
        return len(data)
    found: list[list[bytes]] = []
    ends: list[int] = []
    headers: list[bytes] = []
    i = 0
    while i < last:                       # command boundaries from the "*N" tokens alone...
        argc = argcs.get(toks[i])
        if argc is None:
            break
        end = i + 1 + 2 * argc
        if end > last:
            break
        found.append(toks[i + 2:end:2])
        headers += toks[i + 1:end:2]
        ends.append(end)
        i = end
    # ...then every "$len" against its argument at once; on a mismatch, keep the commands before it
    if list(map(lens.get, headers)) != list(map(len, chain.from_iterable(found))):
        for k, args in enumerate(found):
            start = ends[k - 1] if k else 0
            if list(map(lens.get, toks[start + 1:ends[k]:2])) != list(map(len, args)):
                found, i = found[:k], start
                break
    cmds += found
    return pos + sum(map(len, toks[:i])) + 2 * i


def _uniform(toks: list[bytes], argc: int, last: int, cmds: list[list[bytes]]) -> bool:
    """A pipeline of commands that all have `argc` arguments and fill the read exactly
    (redis-benchmark -P, a client's batch of SETs): checked and cut column by column
    - argument j of every command is one slice - with no Python loop per command."""
    stride = 2 * argc + 1
    n, rest = divmod(last, stride)
    if rest or toks[0:last:stride].count(toks[0]) != n:
        return False
    lens = _LENS
    cols = [toks[j:last:stride] for j in range(2, stride, 2)]
    for j, col in enumerate(cols):
        if list(map(lens.get, toks[2 * j + 1:last:stride])) != list(map(len, col)):
            return False
    cmds += map(list, zip(*cols))
    return True


def _parse(data: bytes, pos: int, max_bulk: int, authed: bool, cmds: list[list[bytes]]
           ) -> tuple[list[list[bytes]], int, int]:
    n = len(data)
    find = data.find
    while pos < n:
        if data[pos] != 42:                                   # not '*': inline
            e = find(b"\n", pos)
            if e < 0:
                if n - pos > INLINE_MAX:
                    raise ProtocolError("Protocol error: too big inline request")
                return cmds, pos, 0
            line = data[pos:e]
            pos = e + 1
            args = split_inline(line[:-1] if line.endswith(b"\r") else line)
            if args:
                cmds.append(args)
            continue
        e = find(b"\r\n", pos)
        if e < 0:
            if n - pos > INLINE_MAX:
                raise ProtocolError("Protocol error: too big mbulk count string")
            return cmds, pos, 0
        try:
            argc = int(data[pos + 1:e])
        except ValueError:
            raise ProtocolError("Protocol error: invalid multibulk length") from None
        if argc > MULTIBULK_MAX:
            raise ProtocolError("Protocol error: invalid multibulk length")
        if not authed and argc > UNAUTH_MULTIBULK_MAX:
            raise ProtocolError("Protocol error: unauthenticated multibulk length")
        p = e + 2
        args = []
        for _ in range(argc):
            if p >= n:
                return cmds, pos, 0
            if data[p] != 36:                                 # '$'
                raise ProtocolError(f"Protocol error: expected '$', got '{chr(data[p])}'")
            e = find(b"\r\n", p)
            if e < 0:
                if n - p > INLINE_MAX:
                    raise ProtocolError("Protocol error: too big bulk count string")
                return cmds, pos, 0
            try:
                ln = int(data[p + 1:e])
            except ValueError:
                raise ProtocolError("Protocol error: invalid bulk length") from None
            if ln < 0 or ln > max_bulk:
                raise ProtocolError("Protocol error: invalid bulk length")
            if not authed and ln > UNAUTH_BULK_MAX:
                raise ProtocolError("Protocol error: unauthenticated bulk length")
            p = e + 2
            end = p + ln
            if end + 2 > n:
                return cmds, pos, end + 2 - pos
            args.append(data[p:end])
            p = end + 2
        pos = p
        if args:                                              # "*0\r\n" is skipped, as Redis does
            cmds.append(args)
    return cmds, pos, 0


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_SPACE = b" \n\r\t\v\f\x00"


def split_inline(line: bytes) -> list[bytes]:
    """Redis's sdssplitargs: words, "double quoted" with escapes, 'single quoted'."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        inq = insq = False
        while True:
            if inq:
                if i >= n:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                ch = line[i]
                if ch == 92 and i + 3 < n and line[i + 1] == 120 and _ishex(line[i + 2:i + 4]):
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif ch == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif ch == 34:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    inq = False
                    i += 1
                    break
                else:
                    cur.append(ch)
            elif insq:
                if i >= n:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                ch = line[i]
                if ch == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif ch == 39:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("Protocol error: unbalanced quotes in request")
                    insq = False
                    i += 1
                    break
                else:
                    cur.append(ch)
            else:
                if i >= n:
                    break
                ch = line[i]
                if ch in _SPACE:
                    break
                if ch == 34:
                    inq = True
                elif ch == 39:
                    insq = True
                else:
                    cur.append(ch)
            i += 1
        args.append(bytes(cur))


def _ishex(b: bytes) -> bool:
    return all(c in b"0123456789abcdefABCDEF" for c in b)


# -- replies -------------------------------------------------------------------
OK = b"+OK\r\n"
QUEUED = b"+QUEUED\r\n"
PONG = b"+PONG\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"
EMPTY_ARRAY = b"*0\r\n"
NULL2 = b"$-1\r\n"
NULL_ARRAY2 = b"*-1\r\n"
NULL3 = b"_\r\n"


def bulk(v: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(v), v)


def error(msg: str) -> bytes:
    """msg starts with its code (ERR, WRONGTYPE, ...); newlines would break the frame."""
    return b"-%b\r\n" % msg.replace("\r", " ").replace("\n", " ").encode()


def bulks(values, null: bytes = NULL2) -> bytes:
    """An array of bulk strings (None items as `null`)."""
    parts = [b"*%d\r\n" % len(values)]
    for v in values:
        parts.append(null if v is None else b"$%d\r\n%b\r\n" % (len(v), v))
    return b"".join(parts)


def fmt_double(d: float) -> bytes:
    """Scores as Redis prints them (%.17g, inf/-inf)."""
    if d == float("inf"):
        return b"inf"
    if d == float("-inf"):
        return b"-inf"
    if d == int(d) and abs(d) < 1e17:
        return b"%d" % int(d)
    return (b"%.17g" % d)
