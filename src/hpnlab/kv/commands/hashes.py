"""Hash commands on a dict."""
from __future__ import annotations

from .. import resp
from ..core import NOT_FLOAT, NOT_INT, WRONGTYPE, Client, command
from ..resp import bulk, bulks
from .args import fmt_float, to_float, to_int


def _hash(c: Client, key: bytes, create: bool = False):
    h = c.db.lookup(key)
    if h is None:
        if create:
            h = {}
            c.db.set(key, h)
        return h, None
    if type(h) is not dict:
        return None, WRONGTYPE
    return h, None


@command("hset", -4, "write fast", 1, 1)
@command("hmset", -4, "write fast", 1, 1)
def hset(c: Client, args: list[bytes]) -> bytes:
    if len(args) % 2:
        return resp.error(f"ERR wrong number of arguments for '{args[0].decode().lower()}' command")
    h, err = _hash(c, args[1], True)
    if err:
        return err
    added = 0
    for i in range(2, len(args), 2):
        added += args[i] not in h
        h[args[i]] = args[i + 1]
    c.server.dirty += 1
    return resp.OK if args[0].lower() == b"hmset" else b":%d\r\n" % added


@command("hsetnx", 4, "write fast", 1, 1)
def hsetnx(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1], True)
    if err:
        return err
    if args[2] in h:
        return resp.ZERO
    h[args[2]] = args[3]
    c.server.dirty += 1
    return resp.ONE


@command("hget", 3, "readonly fast", 1, 1)
def hget(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    if err:
        return err
    v = h.get(args[2]) if h else None
    return c.null if v is None else bulk(v)


@command("hmget", -3, "readonly fast", 1, 1)
def hmget(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    if err:
        return err
    h = h or {}
    return bulks([h.get(f) for f in args[2:]], c.null)


@command("hdel", -3, "write fast", 1, 1)
def hdel(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    if err:
        return err
    if not h:
        return resp.ZERO
    n = sum(h.pop(f, None) is not None for f in args[2:])
    if not h:
        c.db.delete(args[1])
    c.server.dirty += n
    return b":%d\r\n" % n


@command("hexists", 3, "readonly fast", 1, 1)
def hexists(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    return err or (resp.ONE if h and args[2] in h else resp.ZERO)


@command("hlen", 2, "readonly fast", 1, 1)
def hlen(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    return err or b":%d\r\n" % len(h or ())


@command("hstrlen", 3, "readonly fast", 1, 1)
def hstrlen(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    return err or b":%d\r\n" % len((h or {}).get(args[2], b""))


@command("hgetall", 2, "readonly", 1, 1)
def hgetall(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    if err:
        return err
    h = h or {}
    if c.resp3:
        return b"%%%d\r\n" % len(h) + b"".join(bulk(k) + bulk(v) for k, v in h.items())
    return bulks([x for kv in h.items() for x in kv])


@command("hkeys", 2, "readonly", 1, 1)
def hkeys(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    return err or bulks(list(h or ()))


@command("hvals", 2, "readonly", 1, 1)
def hvals(c: Client, args: list[bytes]) -> bytes:
    h, err = _hash(c, args[1])
    return err or bulks(list((h or {}).values()))


@command("hincrby", 4, "write fast", 1, 1)
def hincrby(c: Client, args: list[bytes]) -> bytes:
    by = to_int(args[3])
    if by is None:
        return NOT_INT
    h, err = _hash(c, args[1])
    if err:
        return err
    cur = to_int(h[args[2]]) if h and args[2] in h else 0
    if cur is None:
        return b"-ERR hash value is not an integer\r\n"
    new = cur + by
    if not -(1 << 63) <= new < (1 << 63):
        return b"-ERR increment or decrement would overflow\r\n"
    h, _ = _hash(c, args[1], True)
    h[args[2]] = b"%d" % new
    c.server.dirty += 1
    return b":%d\r\n" % new


@command("hincrbyfloat", 4, "write fast", 1, 1)
def hincrbyfloat(c: Client, args: list[bytes]) -> bytes:
    by = to_float(args[3])
    if by is None:
        return NOT_FLOAT
    h, err = _hash(c, args[1])
    if err:
        return err
    cur = to_float(h[args[2]]) if h and args[2] in h else 0.0
    if cur is None:
        return b"-ERR hash value is not a float\r\n"
    new = cur + by
    if new in (float("inf"), float("-inf")):
        return b"-ERR increment would produce NaN or Infinity\r\n"
    h, _ = _hash(c, args[1], True)
    out = fmt_float(new)
    h[args[2]] = out
    c.rewrite = [b"HSET", args[1], args[2], out]
    c.server.dirty += 1
    return bulk(out)
