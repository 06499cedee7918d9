"""Set commands on a Python set."""
from __future__ import annotations

import random

from .. import resp
from ..core import NOT_INT, WRONGTYPE, Client, command
from ..resp import bulk, bulks
from .args import pop_count, to_int


def _set(c: Client, key: bytes):
    s = c.db.lookup(key)
    if s is not None and type(s) is not set:
        return None, WRONGTYPE
    return s, None


def _members(c: Client, s) -> bytes:
    items = list(s or ())
    if c.resp3:
        return b"~%d\r\n" % len(items) + b"".join(bulk(m) for m in items)
    return bulks(items)


@command("sadd", -3, "write fast", 1, 1)
def sadd(c: Client, args: list[bytes]) -> bytes:
    s, err = _set(c, args[1])
    if err:
        return err
    if s is None:
        s = set()
        c.db.set(args[1], s)
    before = len(s)
    s.update(args[2:])
    n = len(s) - before
    c.server.dirty += n
    return b":%d\r\n" % n


@command("srem", -3, "write fast", 1, 1)
def srem(c: Client, args: list[bytes]) -> bytes:
    s, err = _set(c, args[1])
    if err:
        return err
    if not s:
        return resp.ZERO
    before = len(s)
    s.difference_update(args[2:])
    n = before - len(s)
    if not s:
        c.db.delete(args[1])
    c.server.dirty += n
    return b":%d\r\n" % n


@command("smembers", 2, "readonly", 1, 1)
def smembers(c: Client, args: list[bytes]) -> bytes:
    s, err = _set(c, args[1])
    return err or _members(c, s)


@command("sismember", 3, "readonly fast", 1, 1)
def sismember(c: Client, args: list[bytes]) -> bytes:
    s, err = _set(c, args[1])
    return err or (resp.ONE if s and args[2] in s else resp.ZERO)


@command("smismember", -3, "readonly fast", 1, 1)
def smismember(c: Client, args: list[bytes]) -> bytes:
    s, err = _set(c, args[1])
    if err:
        return err
    s = s or set()
    return b"*%d\r\n" % (len(args) - 2) + b"".join(resp.ONE if m in s else resp.ZERO for m in args[2:])


@command("scard", 2, "readonly fast", 1, 1)
def scard(c: Client, args: list[bytes]) -> bytes:
    s, err = _set(c, args[1])
    return err or b":%d\r\n" % len(s or ())


@command("spop", -2, "write fast", 1, 1)
def spop(c: Client, args: list[bytes]) -> bytes:
    count, err = pop_count(args)
    if err:
        return err
    s, err = _set(c, args[1])
    if err:
        return err
    if not s:
        return c.null if count is None else resp.EMPTY_ARRAY
    picked = random.sample(list(s), min(count if count is not None else 1, len(s)))
    s.difference_update(picked)
    if not s:
        c.db.delete(args[1])
    c.rewrite = [b"SREM", args[1], *picked]
    c.server.dirty += 1
    return bulk(picked[0]) if count is None else bulks(picked)


@command("srandmember", -2, "readonly", 1, 1)
def srandmember(c: Client, args: list[bytes]) -> bytes:
    if len(args) > 3:
        return resp.error("ERR syntax error")
    s, err = _set(c, args[1])
    if err:
        return err
    if len(args) == 2:
        return bulk(random.choice(list(s))) if s else c.null
    count = to_int(args[2])
    if count is None:
        return NOT_INT
    items = list(s or ())
    if not items:
        return resp.EMPTY_ARRAY
    if count >= 0:
        return bulks(random.sample(items, min(count, len(items))))
    return bulks([random.choice(items) for _ in range(-count)])


def _combine(c: Client, keys: list[bytes], op: str):
    sets = []
    for k in keys:
        s, err = _set(c, k)
        if err:
            return None, err
        sets.append(s or set())
    result = set(sets[0])
    for s in sets[1:]:
        if op == "inter":
            result &= s
        elif op == "union":
            result |= s
        else:
            result -= s
    return result, None


def _algebra(op: str, store: bool):
    def cmd(c: Client, args: list[bytes]) -> bytes:
        keys = args[2:] if store else args[1:]
        result, err = _combine(c, keys, op)
        if err:
            return err
        if not store:
            return _members(c, result)
        c.db.delete(args[1])
        if result:
            c.db.set(args[1], result)
        c.server.dirty += 1
        return b":%d\r\n" % len(result)
    return cmd


for _op in ("inter", "union", "diff"):
    command(f"s{_op}", -2, "readonly", 1, -1)(_algebra(_op, False))
    command(f"s{_op}store", -3, "write", 1, -1)(_algebra(_op, True))


@command("smove", 4, "write fast", 1, 2)
def smove(c: Client, args: list[bytes]) -> bytes:
    src, err = _set(c, args[1])
    if err:
        return err
    dst, err = _set(c, args[2])
    if err:
        return err
    if not src or args[3] not in src:
        return resp.ZERO
    src.discard(args[3])
    if not src:
        c.db.delete(args[1])
    if dst is None:
        dst = set()
        c.db.set(args[2], dst)
    dst.add(args[3])
    c.server.dirty += 1
    return resp.ONE
