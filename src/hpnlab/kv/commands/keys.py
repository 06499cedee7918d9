"""Keyspace commands: DEL, EXISTS, TYPE, RENAME, KEYS, SCAN, expiry, OBJECT, and RANGE
(ours: keys in order from an ordered index)."""
from __future__ import annotations

import fnmatch
import random
import re
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice

from .. import resp
from ..core import NOT_INT, SYNTAX, Client, Raw, command
from .args import leading_flags, to_int

_PATTERNS: dict[bytes, re.Pattern[bytes]] = {}


def matcher(pattern: bytes):
    """Redis's glob (stringmatchlen) as a compiled regex: * ? [abc] [^a] [a-z] and \\ escapes."""
    rx = _PATTERNS.get(pattern)
    if rx is None:
        out, i, n = [], 0, len(pattern)
        while i < n:
            ch = pattern[i:i + 1]
            if ch == b"\\" and i + 1 < n:
                i += 1
                out.append(re.escape(pattern[i:i + 1]))
            elif ch == b"[":
                j = pattern.find(b"]", i + 1)
                if j < 0:
                    out.append(re.escape(ch))
                else:
                    body = pattern[i + 1:j]
                    neg = body.startswith(b"^")
                    if neg:
                        body = body[1:]
                    out.append(b"[" + (b"^" if neg else b"") + body.replace(b"\\", b"\\\\") + b"]")
                    i = j
            else:
                out.append(fnmatch.translate(ch.decode("latin-1")).encode("latin-1")[4:-3]
                           if ch in (b"*", b"?") else re.escape(ch))
            i += 1
        rx = re.compile(b"(?s:" + b"".join(out) + b")\\Z")
        if len(_PATTERNS) > 1000:
            _PATTERNS.clear()
        _PATTERNS[pattern] = rx
    return rx.match


def type_name(v) -> bytes:
    t = type(v)
    if t is bytes or t is Raw:
        return b"string"
    if t is deque:
        return b"list"
    if t is dict:
        return b"hash"
    if t is set:
        return b"set"
    return b"zset"


@command("del", -2, "write", 1, -1)
@command("unlink", -2, "write fast", 1, -1)
def del_(c: Client, args: list[bytes]) -> bytes:
    n = sum(c.db.delete(k) for k in args[1:])
    c.server.dirty += n
    return b":%d\r\n" % n


@command("exists", -2, "readonly fast", 1, -1)
def exists(c: Client, args: list[bytes]) -> bytes:
    return b":%d\r\n" % sum(c.db.lookup(k) is not None for k in args[1:])


@command("type", 2, "readonly fast", 1, 1)
def type_(c: Client, args: list[bytes]) -> bytes:
    v = c.db.lookup(args[1])
    return b"+none\r\n" if v is None else b"+%b\r\n" % type_name(v)


def _rename(c: Client, args: list[bytes], nx: bool) -> bytes:
    db, src, dst = c.db, args[1], args[2]
    v = db.lookup(src)
    if v is None:
        return b"-ERR no such key\r\n"
    if nx and db.lookup(dst) is not None:
        return resp.ZERO
    if src == dst:
        return resp.ZERO if nx else resp.OK
    when = db.expires.get(src)
    db.delete(src)
    db.set(dst, v)
    if when is not None:
        db.set_expire(dst, when)
    db.touch(dst)
    c.server.dirty += 1
    return resp.ONE if nx else resp.OK


@command("rename", 3, "write", 1, 2)
def rename(c: Client, args: list[bytes]) -> bytes:
    return _rename(c, args, False)


@command("renamenx", 3, "write fast", 1, 2)
def renamenx(c: Client, args: list[bytes]) -> bytes:
    return _rename(c, args, True)


def _live_keys(c: Client):
    db = c.db
    now = time.time() * 1000
    exp = db.expires
    for k in list(db.data):
        w = exp.get(k)
        if w is None or w > now:
            yield k


@command("keys", 2, "readonly")
def keys(c: Client, args: list[bytes]) -> bytes:
    pat = args[1]
    if pat == b"*":
        return resp.bulks(list(_live_keys(c)))
    m = matcher(pat)
    return resp.bulks([k for k in _live_keys(c) if m(k)])


@command("dbsize", 1, "readonly fast")
def dbsize(c: Client, args: list[bytes]) -> bytes:
    return b":%d\r\n" % len(c.db.data)


@command("randomkey", 1, "readonly")
def randomkey(c: Client, args: list[bytes]) -> bytes:
    db = c.db
    for _ in range(100):
        n = len(db.data)
        if not n:
            return c.null
        k = db.data.key_at(random.randrange(n))
        if db.lookup(k) is not None:
            return resp.bulk(k)
    return c.null


def scan_args(args: list[bytes], start: int):
    """(match, count, type, error) from SCAN-family options."""
    match, count, typ = None, 10, None
    i = start
    while i < len(args):
        opt = args[i].upper()
        if i + 1 >= len(args):
            return None, 0, None, SYNTAX
        if opt == b"MATCH":
            match = matcher(args[i + 1]) if args[i + 1] != b"*" else None
        elif opt == b"COUNT":
            n = to_int(args[i + 1])
            if n is None:
                return None, 0, None, NOT_INT
            count = n
            if count < 1:
                return None, 0, None, SYNTAX
        elif opt == b"TYPE":
            typ = args[i + 1].lower()
        else:
            return None, 0, None, SYNTAX
        i += 2
    return match, count, typ, None


SCANS_KEPT = 64     # cursors whose resume point is remembered, per database


@command("scan", -2, "readonly")
def scan(c: Client, args: list[bytes]) -> bytes:
    """The cursor counts the keys returned so far, and the database remembers where the
    scan stopped: for ordered indexes the last key (the next call starts after it, in key
    order, whatever was added or removed meanwhile), for the hash index the dict's live
    iterator (if the dict changed size meanwhile it is invalid, and the scan goes on from
    that position in iteration order, which may then skip or repeat keys, as Redis may
    repeat them across a rehash). An unknown cursor also resumes at that position."""
    cursor = to_int(args[1])
    if cursor is None or cursor < 0:
        return b"-ERR invalid cursor\r\n"
    match, count, typ, err = scan_args(args, 2)
    if err:
        return err
    db = c.db
    data = db.data
    resume = db.scans.pop(cursor, None) if cursor else None
    it: Iterator[bytes]
    if data.ordered:
        if resume is not None:
            it = (k for k, _ in data.items_from(resume) if k != resume)
        else:
            it = islice((k for k, _ in data.items_from(b"")), cursor, None)
        batch = list(islice(it, count))
    else:
        try:
            it = resume if resume is not None else islice(iter(data), cursor, None)
            batch = list(islice(it, count))
        except RuntimeError:                  # "dictionary changed size during iteration"
            it = islice(iter(data), cursor, None)
            batch = list(islice(it, count))
    nxt = cursor + len(batch) if len(batch) == count else 0
    if nxt:
        db.scans[nxt] = batch[-1] if data.ordered else it
        if len(db.scans) > SCANS_KEPT:
            del db.scans[next(iter(db.scans))]
    out = []
    for k in batch:
        v = db.lookup(k)
        if v is None or (match and not match(k)) or (typ and type_name(v) != typ):
            continue
        out.append(k)
    return b"*2\r\n" + resp.bulk(b"%d" % nxt) + resp.bulks(out)


@command("range", -3, "readonly")
def range_(c: Client, args: list[bytes]) -> bytes:
    """RANGE start end [LIMIT n]: the keys k with start <= k <= end, in key order (ordered indexes)."""
    data = c.db.data
    if not getattr(data, "ordered", False):
        return resp.error(f"ERR RANGE needs an ordered index (this store runs --index {data.name}; "
                          "use array, rbtree or skiplist)")
    limit = -1
    if len(args) == 5 and args[3].upper() == b"LIMIT":
        n = to_int(args[4])
        if n is None:
            return NOT_INT
        limit = n
    elif len(args) != 3:
        return SYNTAX
    end = args[2]
    out: list[bytes] = []
    for k, _v in data.items_from(args[1]):
        if k > end or len(out) == limit:
            break
        if c.db.lookup(k) is not None:
            out.append(k)
    return resp.bulks(out)


def _expire(c: Client, args: list[bytes], unit: int, absolute: bool, name: str) -> bytes:
    n = to_int(args[2])
    if n is None:
        return NOT_INT
    opts, i = leading_flags(args, 3, {b"NX", b"XX", b"GT", b"LT"})
    if i < len(args):
        return resp.error(f"ERR Unsupported option {args[i].decode(errors='replace')}")
    nx, xx, gt, lt = (o in opts for o in (b"NX", b"XX", b"GT", b"LT"))
    if nx and (xx or gt or lt):
        return b"-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
    if gt and lt:
        return b"-ERR GT and LT options at the same time are not compatible\r\n"
    db, key = c.db, args[1]
    if db.lookup(key) is None:
        return resp.ZERO
    when = n * unit if absolute else int(time.time() * 1000) + n * unit
    cur = db.expires.get(key)
    if (nx and cur is not None) or (xx and cur is None) or \
            (gt and (cur is None or when <= cur)) or (lt and cur is not None and when >= cur):
        return resp.ZERO
    if when <= time.time() * 1000:
        db.delete(key)
        c.rewrite = [b"DEL", key]
    else:
        db.set_expire(key, when)
        c.rewrite = [b"PEXPIREAT", key, b"%d" % when]
    db.touch(key)
    c.server.dirty += 1
    return resp.ONE


@command("expire", -3, "write fast", 1, 1)
def expire(c: Client, args: list[bytes]) -> bytes:
    return _expire(c, args, 1000, False, "expire")


@command("pexpire", -3, "write fast", 1, 1)
def pexpire(c: Client, args: list[bytes]) -> bytes:
    return _expire(c, args, 1, False, "pexpire")


@command("expireat", -3, "write fast", 1, 1)
def expireat(c: Client, args: list[bytes]) -> bytes:
    return _expire(c, args, 1000, True, "expireat")


@command("pexpireat", -3, "write fast", 1, 1)
def pexpireat(c: Client, args: list[bytes]) -> bytes:
    return _expire(c, args, 1, True, "pexpireat")


@command("ttl", 2, "readonly fast", 1, 1)
def ttl(c: Client, args: list[bytes]) -> bytes:
    ms = c.db.ttl_ms(args[1])
    return b":%d\r\n" % (ms if ms < 0 else (ms + 500) // 1000)


@command("pttl", 2, "readonly fast", 1, 1)
def pttl(c: Client, args: list[bytes]) -> bytes:
    return b":%d\r\n" % c.db.ttl_ms(args[1])


@command("expiretime", 2, "readonly fast", 1, 1)
def expiretime(c: Client, args: list[bytes]) -> bytes:
    if c.db.lookup(args[1]) is None:
        return b":-2\r\n"
    w = c.db.expires.get(args[1])
    return b":-1\r\n" if w is None else b":%d\r\n" % ((w + 500) // 1000)


@command("persist", 2, "write fast", 1, 1)
def persist(c: Client, args: list[bytes]) -> bytes:
    db = c.db
    if db.lookup(args[1]) is None or db.expires.pop(args[1], None) is None:
        return resp.ZERO
    c.server.dirty += 1
    return resp.ONE


def encoding(v) -> bytes:
    """What Redis 7.0 reports for the value (its small encodings by its default thresholds)."""
    t = type(v)
    if t is Raw:
        return b"raw"
    if t is bytes:
        if len(v) <= 20 and to_int(v) is not None:
            return b"int"
        return b"embstr" if len(v) <= 44 else b"raw"
    if t is deque:
        return b"quicklist"
    if t is dict:
        small = len(v) <= 128 and all(len(k) <= 64 and len(x) <= 64 for k, x in v.items())
        return b"listpack" if small else b"hashtable"
    if t is set:
        return b"intset" if len(v) <= 512 and all(to_int(m) is not None for m in v) else b"hashtable"
    small = len(v) <= 128 and all(len(m) <= 64 for m in v.scores)
    return b"listpack" if small else b"skiplist"


@command("object", -2, "readonly")
def object_(c: Client, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"HELP":
        return resp.bulks([b"OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                           b"ENCODING <key>", b"    Return the kind of internal representation used in order",
                           b"    to store the value associated with a <key>.",
                           b"FREQ <key>", b"    Return the access frequency index of the <key>. The returned",
                           b"    integer is proportional to the logarithm of the recent access frequency",
                           b"    of the key.",
                           b"IDLETIME <key>", b"    Return the idle time of the <key>, that is the approximated",
                           b"    number of seconds elapsed since the last access to the key."])
    if sub not in (b"ENCODING", b"IDLETIME", b"FREQ") or len(args) != 3:
        return resp.error(f"ERR unknown subcommand or wrong number of arguments for "
                          f"'{args[1].decode(errors='replace')}'. Try OBJECT HELP.")
    v = c.db.lookup(args[2])
    if v is None:
        return c.null
    if sub == b"ENCODING":
        return resp.bulk(encoding(v))
    memory = c.server.memory
    if sub == b"FREQ":
        freq = memory.frequency(c.db.num, args[2]) if memory is not None else None
        return b":%d\r\n" % freq if freq is not None else resp.error(
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. " + ADJUST)
    idle = memory.idle_seconds(c.db.num, args[2]) if memory is not None else None
    if idle is not None:
        return b":%d\r\n" % idle
    if memory is not None and memory.tracking == "lfu":
        return resp.error("ERR An LFU maxmemory policy is selected, idle time not tracked. " + ADJUST)
    # Redis keeps an LRU clock in every object; this store keeps one only while it evicts by it
    return resp.error("ERR idle time is tracked only while maxmemory is set with an LRU maxmemory-policy")


ADJUST = ("Please note that when switching between policies at runtime LRU and LFU data will take some time "
          "to adjust.")
