"""The store's core: databases, clients, the command table and the request path.

One Server holds the 16 databases, the config, the AOF and the clients blocked
in BLPOP/BRPOP. Every connection gets a Client (the sans-I/O handler the I/O
engines of hpnlab.servers drive: feed(bytes) -> (reply bytes, close?)).

The request path is kept lean: parse every complete command of a read at once
(resp.parse_requests), look each name up in one dict, call the command function
with (client, args); commands return their encoded reply. What a command
changed is counted in server.dirty (as Redis does): a change is appended to the
AOF and dirties the WATCHed keys it names.

Threads: the loop engines run one thread, so no lock is taken. The threaded
engines (threads, epoll-threads, epoll-acceptor) share this one store under one
lock (server.threaded) - course §9.1 "kvstore 为什么设计成单线程": the lock
serializes the commands anyway, so threads only add hand-offs.
"""
from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Any

from . import resp
from .index import new_index
from .memory import SHRINKING, Memory
from .resp import ProtocolError, parse_requests

WRONGTYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
SYNTAX = b"-ERR syntax error\r\n"
NOT_INT = b"-ERR value is not an integer or out of range\r\n"
NOT_FLOAT = b"-ERR value is not a valid float\r\n"
NOAUTH = b"-NOAUTH Authentication required.\r\n"


class Command:
    __slots__ = ("arity", "first", "flags", "func", "last", "name", "step")

    def __init__(self, name: str, func: Callable, arity: int, flags: str, first: int, last: int, step: int):
        self.name, self.func, self.arity, self.flags = name, func, arity, flags.split()
        self.first, self.last, self.step = first, last, step

    def keys(self, args: list[bytes]) -> list[bytes]:
        if not self.first:
            return []
        last = self.last if self.last >= 0 else len(args) + self.last
        return args[self.first:last + 1:self.step]


COMMANDS: dict[bytes, Command] = {}
LOOKUP: dict[bytes, Command] = {}      # also by UPPER-case name: most clients send that, no lower() then


def command(name: str, arity: int, flags: str = "", first: int = 0, last: int = 0, step: int = 1):
    """Register a command: arity as Redis (N exact, -N at least N, the name included)."""
    def deco(func):
        cmd = COMMANDS[name.encode()] = Command(name, func, arity, flags, first, last, step)
        LOOKUP[name.encode()] = LOOKUP[name.upper().encode()] = cmd
        return func
    return deco


class Raw(bytes):
    """A string that APPEND or SETRANGE changed in place in Redis - its `raw` encoding (a
    growable sds), whatever its length or digits. Still a string everywhere else: only
    OBJECT ENCODING tells it apart, and any other write stores plain bytes again."""

    __slots__ = ()


STRINGS = (bytes, Raw)


class Database:
    """One numbered keyspace: key -> value (index engine), key -> expiry (unix ms)."""

    def __init__(self, server: Server, num: int):
        self.server, self.num = server, num
        self.data = new_index(server.config["index"])
        self.expires: dict[bytes, int] = {}
        self.heap: list[tuple[int, bytes]] = []      # (when, key): active expiry, stale entries skipped
        self.watched: dict[bytes, set[Client]] = {}
        self.scans: dict[int, Any] = {}              # SCAN cursor -> where it resumes (commands/keys.py)

    def lookup(self, key: bytes) -> Any:
        v = self.data.get(key)
        if v is not None and self.expires:
            when = self.expires.get(key)
            if when is not None and when <= time.time() * 1000:
                self.expire_now(key)
                return None
        return v

    def expire_now(self, key: bytes) -> None:
        self.data.pop(key, None)
        self.expires.pop(key, None)
        self.server.expired += 1
        if self.server.memory is not None:
            self.server.memory.update(self, key)
        self.touch(key)
        self.server.propagate(self.num, [b"DEL", key])

    def set(self, key: bytes, value: Any, keepttl: bool = False) -> None:
        self.data[key] = value
        if not keepttl and self.expires:
            self.expires.pop(key, None)

    def delete(self, key: bytes) -> bool:
        if self.lookup(key) is None:
            return False
        self.data.pop(key)
        self.expires.pop(key, None)
        return True

    def set_expire(self, key: bytes, when_ms: int) -> None:
        self.expires[key] = when_ms
        heapq.heappush(self.heap, (when_ms, key))
        if len(self.heap) > 2 * len(self.expires) + 1024:
            self.heap = [(w, k) for k, w in self.expires.items()]
            heapq.heapify(self.heap)

    def ttl_ms(self, key: bytes) -> int:
        """-2: no key, -1: no expiry, else ms left."""
        if self.lookup(key) is None:
            return -2
        when = self.expires.get(key)
        return -1 if when is None else max(0, int(when - time.time() * 1000))

    def active_expire(self, now_ms: float, budget: int = 200) -> None:
        heap, expires = self.heap, self.expires
        while heap and budget and heap[0][0] <= now_ms:
            when, key = heapq.heappop(heap)
            budget -= 1
            if expires.get(key) == when:
                self.expire_now(key)

    def touch(self, key: bytes) -> None:
        if self.watched:
            for c in self.watched.get(key, ()):
                c.dirty_cas = True

    def flush(self) -> None:
        for clients in self.watched.values():
            for c in clients:
                c.dirty_cas = True
        self.data.clear()
        self.expires.clear()
        self.heap.clear()


DEFAULT_CONFIG: dict[str, Any] = {
    "bind": "127.0.0.1", "port": 6379, "engine": "epoll-lt", "index": "hash",
    "appendonly": "no", "appendfsync": "everysec", "dir": ".", "requirepass": "",
    "dbfilename": "dump.rdb", "appendfilename": "appendonly.aof", "databases": 16,
    "maxclients": 10000, "maxmemory": 0, "maxmemory-policy": "noeviction",   # memory.py
    "maxmemory-samples": 5, "lfu-log-factor": 10, "lfu-decay-time": 1,
    "proto-max-bulk-len": 512 * 1024 * 1024, "client-query-buffer-limit": 1024 * 1024 * 1024,
    "save": "",
}


class Server:
    def __init__(self, **config: Any):
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown config {', '.join(sorted(unknown))}")
        self.config = {**DEFAULT_CONFIG, **config}
        self.dbs = [Database(self, i) for i in range(self.config["databases"])]
        self.dirty = 0
        self.expired = 0
        self.commands_processed = 0
        self.connections_received = 0
        self.rejected_connections = 0
        self.clients: dict[int, Client] = {}
        self.next_client_id = 1
        self.started = time.time()
        self.threaded = False
        self.lock = threading.RLock()
        self.blocking: dict[tuple[int, bytes], list[Client]] = {}
        self.ready: list[tuple[int, bytes]] = []
        self.aof: Any = None              # persist.aof.Aof once appendonly is on
        self.memory: Memory | None = None  # the dataset's size, while maxmemory is set
        if self.config["maxmemory"]:
            self.set_maxmemory(self.config["maxmemory"])
        self.next_cron = 0.0
        self.last_save = int(time.time())
        self.bgsave_child = 0
        self.engine_name = self.config["engine"]

    def set_maxmemory(self, limit: int) -> None:
        self.config["maxmemory"] = limit
        if not limit:
            self.memory = None
        elif self.memory is None:
            self.memory = Memory(self)
            self.memory.recount()

    # -- propagation (AOF) ------------------------------------------------------
    def propagate(self, dbnum: int, args: list[bytes]) -> None:
        if self.aof is not None:
            self.aof.feed(dbnum, args)

    def cron(self, now: float) -> None:
        """Active expiry (and the AOF's everysec write), at most every 100 ms, from the request path."""
        self.next_cron = now + 0.1
        now_ms = time.time() * 1000
        for db in self.dbs:
            if db.heap:
                db.active_expire(now_ms)
        if self.bgsave_child:
            from .persist import rdb
            rdb.reap(self)
        if self.aof is not None and self.aof.rewriting:
            self.aof.poll_rewrite()

    # -- blocking lists -----------------------------------------------------------
    def signal_ready(self, dbnum: int, key: bytes) -> None:
        if (dbnum, key) in self.blocking:
            self.ready.append((dbnum, key))

    def serve_ready(self) -> None:
        from .commands.lists import serve_blocked
        while self.ready:
            dbnum, key = self.ready.pop(0)
            serve_blocked(self, dbnum, key)

    def new_client(self) -> Client:
        return Client(self)


class Client:
    """One connection's state; `feed` is the engines' handler interface."""

    def __init__(self, server: Server):
        self.server = server
        self.id = server.next_client_id
        server.next_client_id += 1
        self.db = server.dbs[0]
        self.resp3 = False
        self.null = resp.NULL2
        self.null_array = resp.NULL_ARRAY2
        self.name = b""
        self.lib = [b"", b""]
        self.authed = not server.config["requirepass"]
        self.multi: list[tuple[Command, list[bytes]]] | None = None
        self.multi_error = False
        self.in_exec = False
        self.rewrite: list[bytes] | None = None
        self.watching: list[tuple[Database, bytes]] = []
        self.dirty_cas = False
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.need = 0
        self.conn: Any = None
        self.blocked: Any = None          # (keys, side, timer) while in BLPOP/BRPOP
        self.held: list[bytes] = []       # input that arrived while blocked
        self.closing = False
        self.created = time.time()
        if not server.threaded:
            self.feed = self._feed        # type: ignore[method-assign]  # no lock: one call less per read

    def connection_made(self, conn: Any) -> None:
        """From the engine, so that a handler can answer later (a blocked BLPOP): `conn` offers
        write(bytes), close(), call_later(delay, fn) and call_soon_threadsafe(fn, *args).
        Every engine of hpnlab.servers calls it and, at the end, connection_lost; a client is
        counted (INFO clients, CLIENT LIST, maxclients) in between - one driven without these
        calls (in-process tests) is not, since nothing would ever forget it."""
        self.conn = conn
        self.server.clients[self.id] = self

    def set_protocol(self, v3: bool) -> None:
        self.resp3 = v3
        self.null = resp.NULL3 if v3 else resp.NULL2
        self.null_array = resp.NULL3 if v3 else resp.NULL_ARRAY2

    # -- the handler interface --------------------------------------------------
    def feed(self, data: bytes) -> tuple[bytes, bool]:
        srv = self.server
        if srv.threaded:
            with srv.lock:
                return self._feed(data)
        return self._feed(data)

    def _feed(self, data: bytes) -> tuple[bytes, bool]:
        srv = self.server
        if self.blocked is not None:
            self.held.append(data)
            return b"", False
        if self.pending:
            self.pending.append(data)
            self.pending_len += len(data)
            if self.pending_len > srv.config["client-query-buffer-limit"]:
                return self._drop()
            if self.pending_len < self.need:
                return b"", False
            data = b"".join(self.pending)
            self.pending = []
        try:
            cmds, pos, need = parse_requests(data, 0, srv.config["proto-max-bulk-len"], self.authed)
            err = None
        except ProtocolError as exc:             # the commands before the bad bytes still run
            cmds, pos, need, err = exc.args[1], len(data), 0, exc
        now = time.monotonic()
        if now >= srv.next_cron:
            srv.cron(now)
        srv.commands_processed += len(cmds)
        if len(cmds) == 1 and err is None and pos == len(data):
            # one whole command, the read of a client that does not pipeline (-P 1)
            r = self.execute(cmds[0])
            if self.blocked is None and not srv.ready:
                aof = srv.aof
                if aof is not None and aof.buf:
                    aof.flush()           # before the reply, as in _flush
                return r, self.closing
            if self.blocked is None and not self.closing:
                srv.serve_ready()         # the general path's order: a closing client serves no one
            return self._flush([r] if r else []), self.closing and self.blocked is None
        out = []
        execute = self.execute
        for i, args in enumerate(cmds):
            r = execute(args)
            if r:
                out.append(r)
            if self.blocked is not None:
                rest = cmds[i + 1:]
                if rest:
                    self.held.append(b"".join(_encode_request(a) for a in rest))
                if pos < len(data):
                    self.held.append(data[pos:])
                return self._flush(out), False
            if self.closing:
                return self._flush(out), True
        if err is not None:
            out.append(resp.error(f"ERR {err.args[0]}"))
            self._release()
            return self._flush(out), True
        if pos < len(data):
            rest = data[pos:]
            if len(rest) > srv.config["client-query-buffer-limit"]:
                return self._drop()
            self.pending = [rest]
            self.pending_len = len(rest)
            self.need = need
        if srv.ready:
            srv.serve_ready()
        return self._flush(out), False

    def _flush(self, out: list[bytes]) -> bytes:
        aof = self.server.aof
        if aof is not None and aof.buf:
            aof.flush()                   # written (and fsynced for "always") before any reply
        return out[0] if len(out) == 1 else b"".join(out)

    def _drop(self) -> tuple[bytes, bool]:
        self.pending = []
        self._release()
        return b"", True

    def execute(self, args: list[bytes]) -> bytes:
        srv = self.server
        cmd = LOOKUP.get(args[0]) or COMMANDS.get(args[0].lower())
        if cmd is None:
            self.multi_error = self.multi is not None
            shown = " ".join(f"'{a[:128].decode(errors='replace')}'" for a in args[1:])
            return resp.error(f"ERR unknown command '{args[0][:128].decode(errors='replace')}', "
                              f"with args beginning with: {shown}{' ' if shown else ''}")
        n, arity = len(args), cmd.arity
        if n != arity and (arity > 0 or n < -arity):
            self.multi_error = self.multi is not None
            return resp.error(f"ERR wrong number of arguments for '{cmd.name}' command")
        if not self.authed and "noauth" not in cmd.flags:
            return NOAUTH
        if self.multi is not None and "notx" not in cmd.flags:
            self.multi.append((cmd, args))
            return resp.QUEUED
        if srv.memory is not None and "write" in cmd.flags and cmd.name not in SHRINKING:
            oom = srv.memory.admit()
            if oom:
                return oom
        dirty = srv.dirty
        reply = cmd.func(self, args)
        if srv.dirty != dirty:
            if srv.aof is not None or self.db.watched or srv.memory is not None:
                self._after_write(cmd, args)
            else:
                self.rewrite = None
        if srv.memory is not None and srv.memory.tracking and cmd.first:
            srv.memory.accessed(self.db.num, cmd.keys(args))     # LRU/LFU eviction's clock
        return reply

    def _after_write(self, cmd: Command, args: list[bytes]) -> None:
        db = self.db
        memory = self.server.memory
        if memory is not None:
            if cmd.name in ("flushdb", "flushall"):
                for d in (self.server.dbs if cmd.name == "flushall" else [db]):
                    memory.flushed(d)
            for k in cmd.keys(args):
                memory.update(db, k)
        if db.watched:
            for k in cmd.keys(args):
                db.touch(k)
        if self.server.aof is not None:
            self.server.propagate(db.num, self.rewrite or args)
        self.rewrite = None

    # -- blocking ---------------------------------------------------------------
    def unblock(self, reply: bytes) -> None:
        """Answer a blocked client (from whichever thread served it) and go on with held input."""
        keys, _side, timer = self.blocked
        for key in keys:
            waiters = self.server.blocking.get((self.db.num, key))
            if waiters and self in waiters:
                waiters.remove(self)
                if not waiters:
                    del self.server.blocking[(self.db.num, key)]
        if timer is not None:
            timer.cancel()
        self.blocked = None
        held, self.held = self.held, []
        out, close = self._feed(b"".join(held)) if held else (b"", False)
        conn = self.conn
        if conn is not None:
            conn.call_soon_threadsafe(self._push, reply + out, close)

    def _push(self, data: bytes, close: bool) -> None:
        if data:
            self.conn.write(data)
        if close:
            self.conn.close()

    def _release(self) -> None:
        for db, key in self.watching:
            ws = db.watched.get(key)
            if ws is not None:
                ws.discard(self)
                if not ws:
                    del db.watched[key]
        self.watching = []

    def connection_lost(self) -> None:
        self._release()
        if self.blocked is not None:
            self.held = []
            self.conn = None
            self.unblock(b"")
        self.server.clients.pop(self.id, None)


def _encode_request(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


encode_request = _encode_request

