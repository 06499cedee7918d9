"""Sorted sets: member -> score in a dict plus a skip list ordered by (score, member),
as Redis's zset (t_zset.c) pairs a dict with its zskiplist."""
from __future__ import annotations

from typing import Any

from .. import resp
from ..core import NOT_FLOAT, NOT_INT, SYNTAX, WRONGTYPE, Client, command
from ..index.skiplist import SkipList
from ..resp import bulk, fmt_double
from .args import leading_flags, pop_count, to_float, to_int

INF = float("inf")


class ZSet:
    __slots__ = ("scores", "sl")

    def __init__(self) -> None:
        self.scores: dict[bytes, float] = {}
        self.sl = SkipList()

    def __len__(self) -> int:
        return len(self.scores)

    def add(self, member: bytes, score: float) -> None:
        old = self.scores.get(member)
        if old is not None:
            self.sl.delete((old, member))
        self.scores[member] = score
        self.sl.insert((score, member), None)

    def remove(self, member: bytes) -> bool:
        old = self.scores.pop(member, None)
        if old is None:
            return False
        self.sl.delete((old, member))
        return True

    def by_rank(self, start: int, end: int) -> list[tuple[bytes, float]]:
        node = self.sl.at(start)
        out = []
        while node is not None and start <= end:
            out.append((node.key[1], node.key[0]))
            node = node.next[0]
            start += 1
        return out

    def by_score(self, lo: float, lo_ex: bool, hi: float, hi_ex: bool) -> list[tuple[bytes, float]]:
        node = self.sl.first_gt((lo, b"\xff" * 512)) if lo_ex else self.sl.first_ge((lo, b""))
        out = []
        while node is not None:
            s = node.key[0]
            if s > hi or (hi_ex and s == hi):
                break
            out.append((node.key[1], s))
            node = node.next[0]
        return out


def double(c: Client, v: float) -> bytes:
    """A score: RESP3's double, RESP2's bulk string."""
    return b",%b\r\n" % fmt_double(v) if c.resp3 else bulk(fmt_double(v))


def _zset(c: Client, key: bytes):
    z = c.db.lookup(key)
    if z is not None and type(z) is not ZSet:
        return None, WRONGTYPE
    return z, None


def _pairs(c: Client, items: list[tuple[bytes, float]], withscores: bool) -> bytes:
    if not withscores:
        return resp.bulks([m for m, _ in items])
    if c.resp3:
        return b"*%d\r\n" % len(items) + b"".join(
            b"*2\r\n" + bulk(m) + b",%b\r\n" % fmt_double(s) for m, s in items)
    return resp.bulks([x for m, s in items for x in (m, fmt_double(s))])


@command("zadd", -4, "write fast", 1, 1)
def zadd(c: Client, args: list[bytes]) -> bytes:
    opts, i = leading_flags(args, 2, {b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"})
    nx, xx, gt, lt, ch, incr = (o in opts for o in (b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"))
    rest = args[i:]
    if not rest or len(rest) % 2:
        return SYNTAX
    if nx and xx:
        return b"-ERR XX and NX options at the same time are not compatible\r\n"
    if (gt and nx) or (lt and nx) or (gt and lt):
        return b"-ERR GT, LT, and/or NX options at the same time are not compatible\r\n"
    if incr and len(rest) > 2:
        return b"-ERR INCR option supports a single increment-element pair\r\n"
    pairs = []
    for j in range(0, len(rest), 2):
        s = to_float(rest[j])
        if s is None:
            return NOT_FLOAT
        pairs.append((rest[j + 1], s))
    z, err = _zset(c, args[1])
    if err:
        return err
    if z is None:
        if xx:
            return c.null if incr else resp.ZERO
        z = ZSet()
        c.db.set(args[1], z)
    added = changed = 0
    result = None
    for member, score in pairs:
        old = z.scores.get(member)
        if incr:
            if old is not None:
                score = old + score
            if score != score:
                return b"-ERR resulting score is not a number (NaN)\r\n"
        if (nx and old is not None) or (xx and old is None) or \
                (old is not None and ((gt and score <= old) or (lt and score >= old))):
            continue
        result = score
        if old is None:
            added += 1
            z.add(member, score)
        elif old != score:
            changed += 1
            z.add(member, score)
    if not z:
        c.db.delete(args[1])
    if added or changed:
        c.server.dirty += 1
    if incr:
        return c.null if result is None else double(c, result)
    return b":%d\r\n" % (added + changed if ch else added)


@command("zincrby", 4, "write fast", 1, 1)
def zincrby(c: Client, args: list[bytes]) -> bytes:
    return zadd(c, [b"ZADD", args[1], b"INCR", args[2], args[3]])


@command("zrem", -3, "write fast", 1, 1)
def zrem(c: Client, args: list[bytes]) -> bytes:
    z, err = _zset(c, args[1])
    if err:
        return err
    if z is None:
        return resp.ZERO
    n = sum(z.remove(m) for m in args[2:])
    if not z:
        c.db.delete(args[1])
    c.server.dirty += n
    return b":%d\r\n" % n


@command("zscore", 3, "readonly fast", 1, 1)
def zscore(c: Client, args: list[bytes]) -> bytes:
    z, err = _zset(c, args[1])
    if err:
        return err
    s = z.scores.get(args[2]) if z else None
    if s is None:
        return c.null
    return double(c, s)


@command("zmscore", -3, "readonly fast", 1, 1)
def zmscore(c: Client, args: list[bytes]) -> bytes:
    z, err = _zset(c, args[1])
    if err:
        return err
    scores = z.scores if z else {}
    if c.resp3:
        return b"*%d\r\n" % (len(args) - 2) + b"".join(
            double(c, scores[m]) if m in scores else c.null for m in args[2:])
    return resp.bulks([fmt_double(scores[m]) if m in scores else None for m in args[2:]], c.null)


@command("zcard", 2, "readonly fast", 1, 1)
def zcard(c: Client, args: list[bytes]) -> bytes:
    z, err = _zset(c, args[1])
    return err or b":%d\r\n" % len(z or ())


def _rank(c: Client, args: list[bytes], rev: bool) -> bytes:
    if len(args) > 4 or (len(args) == 4 and args[3].upper() != b"WITHSCORE"):
        return SYNTAX
    z, err = _zset(c, args[1])
    if err:
        return err
    if z is None or args[2] not in z.scores:
        return c.null_array if len(args) == 4 else c.null
    score = z.scores[args[2]]
    r = z.sl.rank((score, args[2]))
    assert r is not None
    if rev:
        r = len(z) - 1 - r
    if len(args) == 4:
        return b"*2\r\n:%d\r\n" % r + bulk(fmt_double(score))
    return b":%d\r\n" % r


@command("zrank", -3, "readonly fast", 1, 1)
def zrank(c: Client, args: list[bytes]) -> bytes:
    return _rank(c, args, False)


@command("zrevrank", -3, "readonly fast", 1, 1)
def zrevrank(c: Client, args: list[bytes]) -> bytes:
    return _rank(c, args, True)


def _score_bound(b: bytes) -> tuple[float, bool] | None:
    ex = b.startswith(b"(")
    v = to_float(b[1:] if ex else b)
    if v is None and b[1 if ex else 0:] in (b"+inf", b"-inf"):
        v = INF if b.endswith(b"+inf") else -INF
    return None if v is None else (v, ex)


def zrange_generic(c: Client, z, start: bytes, stop: bytes, byscore: bool, rev: bool,
                   limit: tuple[int, int] | None, withscores: bool) -> bytes:
    if byscore:
        lo, hi = (stop, start) if rev else (start, stop)
        blo, bhi = _score_bound(lo), _score_bound(hi)
        if blo is None or bhi is None:
            return b"-ERR min or max is not a float\r\n"
        items = z.by_score(blo[0], blo[1], bhi[0], bhi[1]) if z else []
        if rev:
            items.reverse()
        if limit is not None:
            off, cnt = limit
            items = [] if off < 0 else items[off:] if cnt < 0 else items[off:off + cnt]
        return _pairs(c, items, withscores)
    s, e = to_int(start), to_int(stop)
    if s is None or e is None:
        return NOT_INT
    if not z:
        return resp.EMPTY_ARRAY
    n = len(z)
    if s < 0:
        s = max(0, n + s)
    if e < 0:
        e = n + e
    e = min(e, n - 1)
    if s > e:
        return resp.EMPTY_ARRAY
    if rev:
        items = z.by_rank(n - 1 - e, n - 1 - s)
        items.reverse()
    else:
        items = z.by_rank(s, e)
    return _pairs(c, items, withscores)


def range_options(args: list[bytes], flags: tuple[bytes, ...]) -> tuple[dict, bytes | None]:
    """The options after ZRANGE-family key start stop: {FLAG: True, b"LIMIT": (offset, count)}."""
    opts: dict[bytes, Any] = {}
    i = 4
    while i < len(args):
        o = args[i].upper()
        if o in flags:
            opts[o] = True
        elif o == b"LIMIT" and i + 2 < len(args):
            off, cnt = to_int(args[i + 1]), to_int(args[i + 2])
            if off is None or cnt is None:
                return opts, NOT_INT
            opts[o] = (off, cnt)
            i += 2
        else:
            return opts, SYNTAX
        i += 1
    return opts, None


@command("zrange", -4, "readonly", 1, 1)
def zrange(c: Client, args: list[bytes]) -> bytes:
    opts, err = range_options(args, (b"BYSCORE", b"REV", b"WITHSCORES"))
    if err:
        return err
    byscore, rev, withscores, limit = b"BYSCORE" in opts, b"REV" in opts, b"WITHSCORES" in opts, opts.get(b"LIMIT")
    if limit is not None and not byscore:
        return b"-ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX\r\n"
    z, err = _zset(c, args[1])
    return err or zrange_generic(c, z, args[2], args[3], byscore, rev, limit, withscores)


@command("zrevrange", -4, "readonly", 1, 1)
def zrevrange(c: Client, args: list[bytes]) -> bytes:
    if len(args) > 5 or (len(args) == 5 and args[4].upper() != b"WITHSCORES"):
        return SYNTAX
    z, err = _zset(c, args[1])
    return err or zrange_generic(c, z, args[2], args[3], False, True, None, len(args) == 5)


def _byscore(rev: bool):
    def cmd(c: Client, args: list[bytes]) -> bytes:
        opts, err = range_options(args, (b"WITHSCORES",))
        if err:
            return err
        z, err = _zset(c, args[1])
        return err or zrange_generic(c, z, args[2], args[3], True, rev, opts.get(b"LIMIT"),
                                     b"WITHSCORES" in opts)
    return cmd


command("zrangebyscore", -4, "readonly", 1, 1)(_byscore(False))
command("zrevrangebyscore", -4, "readonly", 1, 1)(_byscore(True))


@command("zcount", 4, "readonly fast", 1, 1)
def zcount(c: Client, args: list[bytes]) -> bytes:
    lo, hi = _score_bound(args[2]), _score_bound(args[3])
    if lo is None or hi is None:
        return b"-ERR min or max is not a float\r\n"
    z, err = _zset(c, args[1])
    if err:
        return err
    return b":%d\r\n" % (len(z.by_score(lo[0], lo[1], hi[0], hi[1])) if z else 0)


def _zpop(c: Client, args: list[bytes], maximum: bool) -> bytes:
    n, err = pop_count(args)
    if err:
        return err
    count = 1 if n is None else n
    z, err = _zset(c, args[1])
    if err:
        return err
    if not z or not count:
        return resp.EMPTY_ARRAY
    n = len(z)
    items = z.by_rank(max(0, n - count), n - 1)[::-1] if maximum else z.by_rank(0, min(count, n) - 1)
    for m, _ in items:
        z.remove(m)
    if not z:
        c.db.delete(args[1])
    c.rewrite = [b"ZREM", args[1], *[m for m, _ in items]]
    c.server.dirty += 1
    if c.resp3 and len(args) == 2:
        m, s = items[0]
        return b"*2\r\n" + bulk(m) + b",%b\r\n" % fmt_double(s)
    return _pairs(c, items, True)


@command("zpopmin", -2, "write fast", 1, 1)
def zpopmin(c: Client, args: list[bytes]) -> bytes:
    return _zpop(c, args, False)


@command("zpopmax", -2, "write fast", 1, 1)
def zpopmax(c: Client, args: list[bytes]) -> bytes:
    return _zpop(c, args, True)


