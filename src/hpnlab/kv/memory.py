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
    allkeys-lru      the least recently used key of a sample (volatile-lru: among keys with a TTL)
    allkeys-lfu      the least frequently used key of a sample (volatile-lfu: among keys with a TTL)

LRU and LFU are Redis's approximations (evict.c): each eviction samples
maxmemory-samples random keys into a pool of the 16 best candidates seen so far and
evicts the best that still exists. The access clock is kept per key, only while maxmemory
is set and the policy is an LRU/LFU one (the request path pays nothing otherwise): LRU the
time of the last access, LFU Redis's 8-bit logarithmic counter (new keys start at 5, an
access raises it with probability 1/((counter-5)*lfu-log-factor+1), and it drops by one
for every lfu-decay-time minutes without access). OBJECT IDLETIME and OBJECT FREQ read it.
"""
from __future__ import annotations

import bisect
import heapq
import random
import time
from collections import deque
from itertools import islice
from typing import Any

POLICIES = ("noeviction", "allkeys-random", "volatile-random", "volatile-ttl", "allkeys-lru", "volatile-lru",
            "allkeys-lfu", "volatile-lfu")
LFU_INIT, LFU_MAX = 5, 255      # Redis's LFU_INIT_VAL and the 8-bit counter's top
POOL_SIZE = 16                  # EVPOOL_SIZE
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
        # LRU: (dbnum, key) -> last access (monotonic s); LFU: -> (counter, minute of its last decay)
        self.clock: dict[tuple[int, bytes], Any] = {}
        self.tracking = ""                               # "lru", "lfu" or "" (from the policy)
        self.evpool: list[tuple[float, int, bytes]] = []  # (how evictable, dbnum, key), best last
        self.policy_changed()

    def policy_changed(self) -> None:
        """After CONFIG SET maxmemory-policy: the clock starts over for the new kind (Redis
        reinterprets the old field: it, too, takes some time to adjust)."""
        policy = self.server.config["maxmemory-policy"]
        tracking = policy[-3:] if policy.endswith(("-lru", "-lfu")) else ""
        if tracking != self.tracking:
            self.clock.clear()
            self.evpool.clear()
            self.tracking = tracking

    def accessed(self, dbnum: int, keys: list[bytes]) -> None:
        """A command read or wrote these keys (those that exist after it count)."""
        clock, sizes = self.clock, self.sizes
        if self.tracking == "lru":
            now = time.monotonic()
            for k in keys:
                if (dbnum, k) in sizes:
                    clock[(dbnum, k)] = now
            return
        minute = int(time.monotonic() // 60)
        factor = self.server.config["lfu-log-factor"]
        for k in keys:
            if (dbnum, k) not in sizes:
                continue
            old = clock.get((dbnum, k))
            if old is None:
                clock[(dbnum, k)] = (LFU_INIT, minute)     # created now
                continue
            counter = self._decayed(old, minute)
            if counter < LFU_MAX and random.random() < 1.0 / (max(0, counter - LFU_INIT) * factor + 1):
                counter += 1
            clock[(dbnum, k)] = (counter, minute)

    def _decayed(self, entry: tuple[int, int], minute: int) -> int:
        counter, since = entry
        period = self.server.config["lfu-decay-time"]
        return max(0, counter - (minute - since) // period) if period else counter

    def idle_seconds(self, dbnum: int, key: bytes) -> int | None:
        """OBJECT IDLETIME: None when LRU is not tracked."""
        if self.tracking != "lru":
            return None
        last = self.clock.get((dbnum, key))
        return int(time.monotonic() - last) if last is not None else 0

    def frequency(self, dbnum: int, key: bytes) -> int | None:
        """OBJECT FREQ: None when LFU is not tracked."""
        if self.tracking != "lfu":
            return None
        entry = self.clock.get((dbnum, key))
        return LFU_INIT if entry is None else self._decayed(entry, int(time.monotonic() // 60))

    def _evictable(self, dbnum: int, key: bytes) -> float:
        """Higher is a better victim: seconds idle (LRU), 255 - counter (LFU)."""
        entry = self.clock.get((dbnum, key))
        if self.tracking == "lru":
            return time.monotonic() - entry if entry is not None else float("inf")
        return LFU_MAX - (LFU_INIT if entry is None else self._decayed(entry, int(time.monotonic() // 60)))

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
        elif self.clock:
            self.clock.pop((db.num, key), None)
        self.used += new - old

    def flushed(self, db: Any) -> None:
        for k in [k for k in self.sizes if k[0] == db.num]:
            self.used -= self.sizes.pop(k)
            self.clock.pop(k, None)

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
        volatile = policy.startswith("volatile-")
        if not self.tracking:
            return self._random_key(volatile)
        return self._sampled(volatile)

    def _live(self, dbnum: int, key: bytes, volatile: bool) -> bool:
        db = self.server.dbs[dbnum]
        return key in db.data and (not volatile or key in db.expires)

    def _random_key(self, volatile: bool) -> tuple[int, bytes] | None:
        dbs = self.server.dbs
        for _ in range(2):
            while self.pool:
                dbnum, key = self.pool.pop()
                if self._live(dbnum, key, volatile):
                    return dbnum, key
            cands = [(db.num, k) for db in dbs for k in (db.expires if volatile else db.data)]
            self.pool = random.sample(cands, min(len(cands), 1024))
        return None

    def _sampled(self, volatile: bool) -> tuple[int, bytes] | None:
        """Redis's evictionPoolPopulate + the pick: sample, keep the 16 best, evict the best live one."""
        pool = self.evpool
        for _ in range(self.server.config["maxmemory-samples"]):
            cand = self._random_key(volatile)
            if cand is None:
                break
            entry = (self._evictable(*cand), *cand)
            if any(e[1:] == cand for e in pool):
                continue
            if len(pool) < POOL_SIZE or entry > pool[0]:
                bisect.insort(pool, entry)
                if len(pool) > POOL_SIZE:
                    pool.pop(0)
        while pool:
            score, dbnum, key = pool.pop()
            if not self._live(dbnum, key, volatile):
                continue
            now = self._evictable(dbnum, key)
            if now < score:               # used since it was sampled: back in line at its new place
                bisect.insort(pool, (now, dbnum, key))
                continue
            return dbnum, key
        return None
