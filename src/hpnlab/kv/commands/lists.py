"""List commands on a deque, and the blocking pops BLPOP/BRPOP."""
from __future__ import annotations

from collections import deque
from itertools import islice

from .. import resp
from ..core import NOT_INT, WRONGTYPE, Client, Server, command
from ..resp import bulk, bulks
from .args import pop_count, to_float, to_int


def _list(c: Client, key: bytes):
    v = c.db.lookup(key)
    if v is not None and type(v) is not deque:
        return None, WRONGTYPE
    return v, None


def _push(c: Client, args: list[bytes], left: bool, only_existing: bool) -> bytes:
    lst, err = _list(c, args[1])
    if err:
        return err
    if lst is None:
        if only_existing:
            return resp.ZERO
        lst = deque()
        c.db.set(args[1], lst)
    if left:
        lst.extendleft(args[2:])
    else:
        lst.extend(args[2:])
    c.server.dirty += 1
    c.server.signal_ready(c.db.num, args[1])
    return b":%d\r\n" % len(lst)


@command("lpush", -3, "write fast", 1, 1)
def lpush(c: Client, args: list[bytes]) -> bytes:
    return _push(c, args, True, False)


@command("rpush", -3, "write fast", 1, 1)
def rpush(c: Client, args: list[bytes]) -> bytes:
    return _push(c, args, False, False)


@command("lpushx", -3, "write fast", 1, 1)
def lpushx(c: Client, args: list[bytes]) -> bytes:
    return _push(c, args, True, True)


@command("rpushx", -3, "write fast", 1, 1)
def rpushx(c: Client, args: list[bytes]) -> bytes:
    return _push(c, args, False, True)


def _pop(c: Client, args: list[bytes], left: bool) -> bytes:
    count, err = pop_count(args)
    if err:
        return err
    lst, err = _list(c, args[1])
    if err:
        return err
    if lst is None:
        return c.null if count is None else c.null_array
    if count is None:
        v = lst.popleft() if left else lst.pop()
        out = bulk(v)
    else:
        n = min(count, len(lst))
        out = bulks([lst.popleft() if left else lst.pop() for _ in range(n)])
    if not lst:
        c.db.delete(args[1])
    c.server.dirty += 1
    return out


@command("lpop", -2, "write fast", 1, 1)
def lpop(c: Client, args: list[bytes]) -> bytes:
    return _pop(c, args, True)


@command("rpop", -2, "write fast", 1, 1)
def rpop(c: Client, args: list[bytes]) -> bytes:
    return _pop(c, args, False)


@command("llen", 2, "readonly fast", 1, 1)
def llen(c: Client, args: list[bytes]) -> bytes:
    lst, err = _list(c, args[1])
    return err or b":%d\r\n" % (len(lst) if lst is not None else 0)


def _list_and_int(c: Client, args: list[bytes]) -> tuple[deque | None, int, bytes | None]:
    """LINDEX/LSET/LREM's key n: (the list or None, n, error)."""
    n = to_int(args[2])
    if n is None:
        return None, 0, NOT_INT
    lst, err = _list(c, args[1])
    return lst, n, err


def _span(start: int, end: int, n: int) -> tuple[int, int]:
    if start < 0:
        start = max(0, n + start)
    if end < 0:
        end = n + end
    return start, min(end, n - 1)


def _ranged(c: Client, args: list[bytes]) -> tuple[deque | None, int, int, bytes | None]:
    """LRANGE/LTRIM's key start stop: (the list or None, start, end clamped to it, error)."""
    start, end = to_int(args[2]), to_int(args[3])
    if start is None or end is None:
        return None, 0, -1, NOT_INT
    lst, err = _list(c, args[1])
    if err or lst is None:
        return None, 0, -1, err
    start, end = _span(start, end, len(lst))
    return lst, start, end, None


@command("lrange", 4, "readonly", 1, 1)
def lrange(c: Client, args: list[bytes]) -> bytes:
    lst, start, end, err = _ranged(c, args)
    if err:
        return err
    if lst is None or start > end:
        return resp.EMPTY_ARRAY
    return bulks(span(lst, start, end))


def span(lst: deque, start: int, end: int) -> list[bytes]:
    """lst[start:end+1] walking in from the nearer end (a deque has no O(1) slicing)."""
    n = len(lst)
    if start == 0 and end == n - 1:
        return list(lst)
    if start <= n - 1 - end:
        return list(islice(lst, start, end + 1))
    items = list(islice(reversed(lst), n - 1 - end, n - start))
    items.reverse()
    return items


@command("lindex", 3, "readonly", 1, 1)
def lindex(c: Client, args: list[bytes]) -> bytes:
    lst, i, err = _list_and_int(c, args)
    if err:
        return err
    if lst is None or not -len(lst) <= i < len(lst):
        return c.null
    return bulk(lst[i])


@command("lset", 4, "write", 1, 1)
def lset(c: Client, args: list[bytes]) -> bytes:
    lst, i, err = _list_and_int(c, args)
    if err:
        return err
    if lst is None:
        return b"-ERR no such key\r\n"
    if not -len(lst) <= i < len(lst):
        return b"-ERR index out of range\r\n"
    lst[i] = args[3]
    c.server.dirty += 1
    return resp.OK


@command("lrem", 4, "write", 1, 1)
def lrem(c: Client, args: list[bytes]) -> bytes:
    lst, count, err = _list_and_int(c, args)
    if err:
        return err
    if lst is None:
        return resp.ZERO
    items = list(lst) if count >= 0 else list(reversed(lst))
    limit = abs(count) or len(items)
    kept, removed = [], 0
    for x in items:
        if x == args[3] and removed < limit:
            removed += 1
        else:
            kept.append(x)
    if removed:
        lst.clear()
        lst.extend(kept if count >= 0 else reversed(kept))
        if not lst:
            c.db.delete(args[1])
        c.server.dirty += 1
    return b":%d\r\n" % removed


@command("ltrim", 4, "write", 1, 1)
def ltrim(c: Client, args: list[bytes]) -> bytes:
    lst, start, end, err = _ranged(c, args)
    if err:
        return err
    if lst is None:
        return resp.OK
    kept = span(lst, start, end) if start <= end else []
    lst.clear()
    lst.extend(kept)
    if not lst:
        c.db.delete(args[1])
    c.server.dirty += 1
    return resp.OK


def _move(c: Client, src: bytes, dst: bytes, from_left: bool, to_left: bool) -> bytes:
    s, err = _list(c, src)
    if err:
        return err
    if s is None:
        return c.null
    d, err = _list(c, dst)
    if err:
        return err
    v = s.popleft() if from_left else s.pop()
    if not s:
        c.db.delete(src)
    if d is None:
        d = deque()
        c.db.set(dst, d)
    d.appendleft(v) if to_left else d.append(v)
    c.server.dirty += 1
    c.server.signal_ready(c.db.num, dst)
    return bulk(v)


@command("rpoplpush", 3, "write", 1, 2)
def rpoplpush(c: Client, args: list[bytes]) -> bytes:
    return _move(c, args[1], args[2], False, True)


@command("lmove", 5, "write", 1, 2)
def lmove(c: Client, args: list[bytes]) -> bytes:
    a, b = args[3].upper(), args[4].upper()
    if a not in (b"LEFT", b"RIGHT") or b not in (b"LEFT", b"RIGHT"):
        return resp.error("ERR syntax error")
    return _move(c, args[1], args[2], a == b"LEFT", b == b"LEFT")


# -- blocking pops ------------------------------------------------------------------
def _bpop(c: Client, args: list[bytes], left: bool) -> bytes:
    timeout = to_float(args[-1])
    if timeout is None:
        return b"-ERR timeout is not a float or out of range\r\n"
    if timeout < 0:
        return b"-ERR timeout is negative\r\n"
    keys = args[1:-1]
    for key in keys:
        lst, err = _list(c, key)
        if err:
            return err
        if lst:
            v = lst.popleft() if left else lst.pop()
            if not lst:
                c.db.delete(key)
            c.server.dirty += 1
            c.rewrite = [b"LPOP" if left else b"RPOP", key]
            return bulks([key, v])
    if c.in_exec:                 # inside MULTI/EXEC a blocking pop does not block (as Redis)
        return c.null_array
    if c.conn is None:            # a handler driven without connection_made (every engine here makes it)
        return resp.error(f"ERR blocking commands need an engine that can answer later; "
                          f"{c.server.engine_name} cannot")
    timer = None
    if timeout > 0:
        timer = c.conn.call_later(timeout, lambda: _timeout(c))
    c.blocked = (keys, left, timer)
    for key in keys:
        c.server.blocking.setdefault((c.db.num, key), []).append(c)
    return b""


def _timeout(c: Client) -> None:
    with c.server.lock:
        if c.blocked is not None:
            c.unblock(c.null_array)


def serve_blocked(srv: Server, dbnum: int, key: bytes) -> None:
    """Hand elements of a list that got some to the clients blocked on it, first come first served."""
    db = srv.dbs[dbnum]
    waiters = srv.blocking.get((dbnum, key))
    while waiters:
        lst = db.lookup(key)
        if type(lst) is not deque or not lst:
            return
        w = waiters[0]
        left = w.blocked[1]
        v = lst.popleft() if left else lst.pop()
        if not lst:
            db.delete(key)
        srv.dirty += 1
        srv.propagate(dbnum, [b"LPOP" if left else b"RPOP", key])
        if srv.memory is not None:
            srv.memory.update(db, key)
        w.unblock(bulks([key, v]))
        waiters = srv.blocking.get((dbnum, key))


@command("blpop", -3, "write", 1, -2)
def blpop(c: Client, args: list[bytes]) -> bytes:
    return _bpop(c, args, True)


@command("brpop", -3, "write", 1, -2)
def brpop(c: Client, args: list[bytes]) -> bytes:
    return _bpop(c, args, False)
