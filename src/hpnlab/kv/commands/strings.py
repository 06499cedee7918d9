"""String commands: GET/SET and friends, counters, ranges."""
from __future__ import annotations

import time

from .. import resp
from ..core import NOT_FLOAT, NOT_INT, STRINGS, SYNTAX, WRONGTYPE, Client, Raw, command
from ..resp import OK, bulk
from .args import expire_option, fmt_float, to_float, to_int

INVALID_EXPIRE = "ERR invalid expire time in '{}' command"


@command("get", 2, "readonly fast", 1, 1)
def get(c: Client, args: list[bytes]) -> bytes:
    db = c.db
    v = db.lookup(args[1]) if db.expires else db.data.get(args[1])
    if v is None:
        return c.null
    if type(v) is not bytes and type(v) is not Raw:
        return WRONGTYPE
    return b"$%d\r\n%b\r\n" % (len(v), v)


@command("set", -3, "write", 1, 1)
def set_(c: Client, args: list[bytes]) -> bytes:
    db = c.db
    if len(args) == 3:                      # the common case, first (Database.set inlined)
        db.data[args[1]] = args[2]
        if db.expires:
            db.expires.pop(args[1], None)
        c.server.dirty += 1
        return OK
    key, value = args[1], args[2]
    nx = xx = get_old = keepttl = False
    when: int | None = None
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            get_old = True
        elif opt == b"KEEPTTL" and when is None:
            keepttl = True
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and not keepttl and when is None and i + 1 < len(args):
            when, err = expire_option(opt, args[i + 1], "set")
            if err:
                return err
            i += 1
        else:
            return SYNTAX
        i += 1
    old = db.lookup(key)
    if get_old and old is not None and type(old) not in STRINGS:
        return WRONGTYPE
    reply = (c.null if old is None else bulk(old)) if get_old else OK
    if (nx and old is not None) or (xx and old is None):
        return reply if get_old else c.null
    db.set(key, value, keepttl)
    if when is not None:
        db.set_expire(key, when)
        c.rewrite = [b"SET", key, value, b"PXAT", b"%d" % when]
    c.server.dirty += 1
    return reply


def _set_expiring(c: Client, key: bytes, value: bytes, ttl: bytes, unit: int, name: str) -> bytes:
    n = to_int(ttl)
    if n is None:
        return NOT_INT
    if n <= 0:
        return resp.error(INVALID_EXPIRE.format(name))
    when = int(time.time() * 1000) + n * unit
    c.db.set(key, value)
    c.db.set_expire(key, when)
    c.rewrite = [b"SET", key, value, b"PXAT", b"%d" % when]
    c.server.dirty += 1
    return OK


@command("setex", 4, "write", 1, 1)
def setex(c: Client, args: list[bytes]) -> bytes:
    return _set_expiring(c, args[1], args[3], args[2], 1000, "setex")


@command("psetex", 4, "write", 1, 1)
def psetex(c: Client, args: list[bytes]) -> bytes:
    return _set_expiring(c, args[1], args[3], args[2], 1, "psetex")


@command("setnx", 3, "write fast", 1, 1)
def setnx(c: Client, args: list[bytes]) -> bytes:
    if c.db.lookup(args[1]) is not None:
        return resp.ZERO
    c.db.set(args[1], args[2])
    c.server.dirty += 1
    return resp.ONE


@command("mget", -2, "readonly fast", 1, -1)
def mget(c: Client, args: list[bytes]) -> bytes:
    lookup = c.db.lookup
    vals = [lookup(k) for k in args[1:]]
    return resp.bulks([v if type(v) in STRINGS else None for v in vals], c.null)


@command("mset", -3, "write", 1, -1, 2)
def mset(c: Client, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        return resp.error("ERR wrong number of arguments for 'mset' command")
    for i in range(1, len(args), 2):
        c.db.set(args[i], args[i + 1])
    c.server.dirty += 1
    return OK


@command("msetnx", -3, "write", 1, -1, 2)
def msetnx(c: Client, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        return resp.error("ERR wrong number of arguments for 'msetnx' command")
    if any(c.db.lookup(args[i]) is not None for i in range(1, len(args), 2)):
        return resp.ZERO
    for i in range(1, len(args), 2):
        c.db.set(args[i], args[i + 1])
    c.server.dirty += 1
    return resp.ONE


def _string(c: Client, key: bytes):
    """(value or None, error reply or None)."""
    v = c.db.lookup(key)
    if v is not None and type(v) not in STRINGS:
        return None, WRONGTYPE
    return v, None


@command("getset", 3, "write", 1, 1)
def getset(c: Client, args: list[bytes]) -> bytes:
    old, err = _string(c, args[1])
    if err:
        return err
    c.db.set(args[1], args[2])
    c.server.dirty += 1
    return c.null if old is None else bulk(old)


@command("getdel", 2, "write", 1, 1)
def getdel(c: Client, args: list[bytes]) -> bytes:
    old, err = _string(c, args[1])
    if err:
        return err
    if old is None:
        return c.null
    c.db.delete(args[1])
    c.server.dirty += 1
    return bulk(old)


@command("getex", -2, "write", 1, 1)
def getex(c: Client, args: list[bytes]) -> bytes:
    key = args[1]
    when: int | None = None
    persist = False
    i = 2
    while i < len(args):
        opt = args[i].upper()
        if opt == b"PERSIST" and when is None and not persist:
            persist = True
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and when is None and not persist and i + 1 < len(args):
            when, err = expire_option(opt, args[i + 1], "getex")
            if err:
                return err
            i += 1
        else:
            return SYNTAX
        i += 1
    v, err = _string(c, key)
    if err:
        return err
    if v is None:
        return c.null
    if when is not None:
        c.db.set_expire(key, when)
        c.rewrite = [b"PEXPIREAT", key, b"%d" % when]
        c.server.dirty += 1
    elif persist and c.db.expires.pop(key, None) is not None:
        c.rewrite = [b"PERSIST", key]
        c.server.dirty += 1
    return bulk(v)


def _incr(c: Client, key: bytes, by: int) -> bytes:
    v, err = _string(c, key)
    if err:
        return err
    cur = 0 if v is None else to_int(v)
    if cur is None:
        return NOT_INT
    new = cur + by
    if not -(1 << 63) <= new < (1 << 63):
        return resp.error("ERR increment or decrement would overflow")
    c.db.set(key, b"%d" % new, keepttl=True)
    c.server.dirty += 1
    return b":%d\r\n" % new


@command("incr", 2, "write fast", 1, 1)
def incr(c: Client, args: list[bytes]) -> bytes:
    return _incr(c, args[1], 1)


@command("decr", 2, "write fast", 1, 1)
def decr(c: Client, args: list[bytes]) -> bytes:
    return _incr(c, args[1], -1)


@command("incrby", 3, "write fast", 1, 1)
def incrby(c: Client, args: list[bytes]) -> bytes:
    by = to_int(args[2])
    return NOT_INT if by is None else _incr(c, args[1], by)


@command("decrby", 3, "write fast", 1, 1)
def decrby(c: Client, args: list[bytes]) -> bytes:
    by = to_int(args[2])
    if by is None or by == -(1 << 63):
        return NOT_INT if by is None else resp.error("ERR decrement would overflow")
    return _incr(c, args[1], -by)


@command("incrbyfloat", 3, "write fast", 1, 1)
def incrbyfloat(c: Client, args: list[bytes]) -> bytes:
    v, err = _string(c, args[1])
    if err:
        return err
    cur = 0.0 if v is None else to_float(v)
    by = to_float(args[2])
    if cur is None or by is None:
        return NOT_FLOAT
    new = cur + by
    if new in (float("inf"), float("-inf")):
        return resp.error("ERR increment would produce NaN or Infinity")
    out = fmt_float(new)
    c.db.set(args[1], out, keepttl=True)
    c.rewrite = [b"SET", args[1], out, b"KEEPTTL"]
    c.server.dirty += 1
    return bulk(out)


@command("append", 3, "write fast", 1, 1)
def append(c: Client, args: list[bytes]) -> bytes:
    v, err = _string(c, args[1])
    if err:
        return err
    # on a new key Redis stores the argument as given (int/embstr); an existing one turns raw
    new = args[2] if v is None else Raw(v + args[2])
    c.db.set(args[1], new, keepttl=True)
    c.server.dirty += 1
    return b":%d\r\n" % len(new)


@command("strlen", 2, "readonly fast", 1, 1)
def strlen(c: Client, args: list[bytes]) -> bytes:
    v, err = _string(c, args[1])
    return err or b":%d\r\n" % len(v or b"")


@command("getrange", 4, "readonly", 1, 1)
@command("substr", 4, "readonly", 1, 1)
def getrange(c: Client, args: list[bytes]) -> bytes:
    start, end = to_int(args[2]), to_int(args[3])
    if start is None or end is None:
        return NOT_INT
    v, err = _string(c, args[1])
    if err:
        return err
    v = v or b""
    n = len(v)
    if start < 0 and end < 0 and start > end:
        return b"$0\r\n\r\n"
    if start < 0:
        start = max(0, n + start)
    if end < 0:
        end = max(0, n + end)
    end = min(end, n - 1)
    if start > end or n == 0:
        return b"$0\r\n\r\n"
    return bulk(v[start:end + 1])


@command("setrange", 4, "write", 1, 1)
def setrange(c: Client, args: list[bytes]) -> bytes:
    off = to_int(args[2])
    if off is None:
        return NOT_INT
    if off < 0:
        return resp.error("ERR offset is out of range")
    v, err = _string(c, args[1])
    if err:
        return err
    value = args[3]
    if v is None and not value:
        return resp.ZERO
    if off + len(value) > c.server.config["proto-max-bulk-len"]:
        return resp.error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    old = v or b""
    if not value:
        return b":%d\r\n" % len(old)
    new = Raw(old.ljust(off, b"\x00")[:off] + value + old[off + len(value):] if len(old) >= off else
              old + b"\x00" * (off - len(old)) + value)
    c.db.set(args[1], new, keepttl=True)
    c.server.dirty += 1
    return b":%d\r\n" % len(new)
