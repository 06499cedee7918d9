"""maxmemory: the dataset's size, estimated per key, and eviction when it is over the limit.

CPython gives no cheap count of the bytes a key holds, and the process's RSS does not
shrink when keys go (pymalloc keeps its arenas), so RSS cannot drive eviction. Instead
every key written while maxmemory is set gets an estimate of its size (object headers
of CPython 3.11 plus the bytes; containers from their length and a few sampled
elements, so the estimate is O(1) per write), and the sum is what maxmemory limits
(INFO: used_memory_dataset). Policies, as Redis names them:

    noeviction       commands that may grow the dataset get Redis's OOM error
    allkeys-random   evict random keys until the dataset fits
    volatile-random  the same among keys with a TTL
    volatile-ttl     the keys with the nearest expiry first
"""
from __future__ import annotations

import heapq
import random
from collections import deque
from itertools import islice
from typing import Any

POLICIES = ("noeviction", "allkeys-random", "volatile-random", "volatile-ttl")
OOM = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
# commands that only shrink the dataset (or touch no data) run even when it is over the limit
SHRINKING = {"del", "unlink", "lpop", "rpop", "srem", "hdel", "zrem", "spop", "zpopmin", "zpopmax", "getdel",
             "persist", "expire", "pexpire", "expireat", "pexpireat", "flushdb", "flushall", "ltrim", "lrem",
             "blpop", "brpop", "exec", "multi", "discard", "watch", "unwatch"}
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000 ** 2, "mb": 1024 ** 2, "g": 1000 ** 3, "gb": 1024 ** 3}
KEY_ENTRY = 100             # a dict slot and entry plus the key's bytes object header


def parse_size(text: str) -> int | None:
    """Redis's memory notation: 100mb, 1gb, 4096 (None when it is not one)."""
    t = text.strip().lower()
    num = t.rstrip("kmgb")
    unit = t[len(num):]
    if not num.isdigit() or unit not in UNITS:
        return None
    return int(num) * UNITS[unit]


def _avg(items: Any) -> float:
    sample = list(items)
    return sum(map(len, sample)) / len(sample) if sample else 0.0


def value_size(v: Any) -> int:
    t = type(v)
    if isinstance(v, bytes):          # plain or Raw
        return 33 + len(v)
    n = len(v)
    if t is deque:
        ends = [v[0], v[-1]] if n else []
        return 624 + n * (8 + 33 + int(_avg(ends)))
    if t is dict:
        pairs = list(islice(v.items(), 8))
        return 232 + n * (100 + int(_avg(k for k, _ in pairs) + _avg(x for _, x in pairs)))
    if t is set:
        return 216 + n * (50 + int(_avg(islice(v, 8))))
    return 400 + n * (250 + int(_avg(islice(v.scores, 8))))       # zset: dict + skip list node


class Memory:
    def __init__(self, server: Any):
        self.server = server
        self.sizes: dict[tuple[int, bytes], int] = {}
        self.used = 0
        self.evicted = 0
        self.pool: list[tuple[int, bytes]] = []        # random candidates, refilled when used up

    def recount(self) -> None:
        """From scratch (when maxmemory is turned on)."""
        self.sizes.clear()
        self.used = 0
        for db in self.server.dbs:
            for key in list(db.data):
                self.update(db, key)

    def update(self, db: Any, key: bytes) -> None:
        v = db.data.get(key)
        old = self.sizes.pop((db.num, key), 0)
        new = 0 if v is None else KEY_ENTRY + len(key) + value_size(v)
        if new:
            self.sizes[(db.num, key)] = new
        self.used += new - old

    def flushed(self, db: Any) -> None:
        for k in [k for k in self.sizes if k[0] == db.num]:
            self.used -= self.sizes.pop(k)

    def admit(self) -> bytes | None:
        """Before a command that may grow the dataset: evict to fit, or Redis's OOM error."""
        limit = self.server.config["maxmemory"]
        policy = self.server.config["maxmemory-policy"]
        while self.used > limit:
            if policy == "noeviction":
                return OOM
            victim = self._victim(policy)
            if victim is None:
                return OOM
            dbnum, key = victim
            db = self.server.dbs[dbnum]
            db.delete(key)
            db.touch(key)
            self.update(db, key)
            self.evicted += 1
            self.server.propagate(dbnum, [b"DEL", key])
        return None

    def _victim(self, policy: str) -> tuple[int, bytes] | None:
        dbs = self.server.dbs
        if policy == "volatile-ttl":
            best = None
            for db in dbs:
                while db.heap and db.expires.get(db.heap[0][1]) != db.heap[0][0]:
                    heapq.heappop(db.heap)                      # stale entry
                if db.heap and (best is None or db.heap[0][0] < best[0]):
                    best = (db.heap[0][0], db.num, db.heap[0][1])
            return None if best is None else (best[1], best[2])
        volatile = policy == "volatile-random"
        for _ in range(2):
            while self.pool:
                dbnum, key = self.pool.pop()
                db = dbs[dbnum]
                if key in db.data and (not volatile or key in db.expires):
                    return dbnum, key
            cands = [(db.num, k) for db in dbs for k in (db.expires if volatile else db.data)]
            self.pool = random.sample(cands, min(len(cands), 1024))
        return None
