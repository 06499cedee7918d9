"""The KV store in process (no sockets): transactions, expiry, limits, RDB/AOF round trips."""
from __future__ import annotations

import time

from hpnlab.kv.core import Server
from hpnlab.kv.persist import aof, rdb
from hpnlab.kv.serve import KVProtocol, Rejected


def run(c, line: str) -> bytes:
    out, _close = c.feed(line.encode() + b"\r\n")
    return out


def test_maxclients_rejects_with_redis_text():
    srv = Server(maxclients=1)
    proto = KVProtocol(srv)
    first = proto.new()
    first.connection_made(None)       # an engine that reports connections (all loop engines do)
    second = proto.new()
    assert not isinstance(first, Rejected) and isinstance(second, Rejected)
    assert second.feed(b"PING\r\n") == (b"-ERR max number of clients reached\r\n", True)
    assert srv.rejected_connections == 1


def test_watch_multi_exec_abort_and_discard():
    srv = Server()
    a, b = srv.new_client(), srv.new_client()
    assert run(a, "WATCH k") == b"+OK\r\n"
    run(b, "SET k 1")
    assert run(a, "MULTI") + run(a, "SET k 2") + run(a, "EXEC") == b"+OK\r\n+QUEUED\r\n*-1\r\n"
    assert run(b, "GET k") == b"$1\r\n1\r\n"
    out = run(a, "MULTI") + run(a, "NOSUCH") + run(a, "EXEC")
    assert out.endswith(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
    assert run(a, "MULTI") + run(a, "INCR k") + run(a, "DISCARD") + run(a, "GET k") == \
        b"+OK\r\n+QUEUED\r\n+OK\r\n$1\r\n1\r\n"


def test_active_expiry_without_touching_the_keys():
    srv = Server()
    c = srv.new_client()
    for i in range(30):
        run(c, f"SET t{i} v PX 20")
    time.sleep(0.15)
    srv.cron(time.monotonic())
    assert len(srv.dbs[0].data) == 0 and srv.expired == 30


def test_maxmemory_noeviction_answers_oom_but_lets_shrinking_commands_run():
    srv = Server(**{"maxmemory": 20_000})
    c = srv.new_client()
    replies = [run(c, f"SET k{i} {'x' * 100}") for i in range(200)]
    assert b"-OOM command not allowed when used memory > 'maxmemory'.\r\n" in replies
    kept = len(srv.dbs[0].data)
    assert 0 < kept < 200 and srv.memory.used <= 20_000 + 400
    assert run(c, "DEL k0") == b":1\r\n"                     # shrinking commands still run
    assert run(c, "GET k1").startswith(b"$100")


def test_maxmemory_allkeys_random_evicts_to_fit():
    c = Server().new_client()
    assert run(c, "CONFIG SET maxmemory-policy allkeys-random") == b"+OK\r\n"
    assert run(c, "CONFIG SET maxmemory 50kb") == b"+OK\r\n"
    for i in range(2000):
        assert run(c, f"SET k{i} {'x' * 100}") == b"+OK\r\n"
    srv = c.server
    assert srv.memory.used <= 51_200 + 400 and srv.memory.evicted > 1000
    assert srv.memory.used == sum(srv.memory.sizes.values())
    info = run(c, "INFO stats")
    assert b"evicted_keys:%d" % srv.memory.evicted in info


def test_maxmemory_volatile_ttl_evicts_the_nearest_expiry_first():
    c = Server(**{"maxmemory": 10**9, "maxmemory-policy": "volatile-ttl"}).new_client()
    run(c, "SET persistent v")
    for i in range(10):
        run(c, f"SET t{i} v EX {100 + i}")
    c.server.config["maxmemory"] = c.server.memory.used - 1
    run(c, "SET new v")
    assert run(c, "EXISTS t0") == b":0\r\n" and run(c, "EXISTS t1 persistent") == b":2\r\n"


def test_maxmemory_sizes_parse():
    c = Server().new_client()
    assert run(c, "CONFIG SET maxmemory lots").startswith(b"-ERR CONFIG SET failed")
    assert run(c, "CONFIG SET maxmemory 1gb") == b"+OK\r\n"
    assert run(c, "CONFIG GET maxmemory") == b"*2\r\n$9\r\nmaxmemory\r\n$10\r\n1073741824\r\n"


def fill(c) -> None:
    for line in ("SET s v", "SET n 42", "RPUSH l a b c", "HSET h f v g w", "SADD st x y",
                 "ZADD z 1.5 a -2 b", "SET e v EX 1000", "SELECT 2", "SET in2 yes", "SELECT 0"):
        assert not run(c, line).startswith(b"-"), line


def dump_state(srv) -> dict:
    from hpnlab.kv.commands.keys import type_name
    out = {}
    for db in srv.dbs:
        for k in db.data:
            v = db.data[k]
            t = type_name(v)
            val = sorted(v.scores.items()) if t == b"zset" else sorted(v) if t == b"set" else \
                list(v) if t == b"list" else v
            out[(db.num, k)] = (t, val if t != b"hash" else dict(v), k in db.expires)
    return out


def test_rdb_round_trip_in_process(tmp_path):
    srv = Server(dir=str(tmp_path))
    fill(srv.new_client())
    rdb.save(srv)
    back = Server(dir=str(tmp_path))
    assert rdb.load(back) == 8
    assert dump_state(back) == dump_state(srv)
    data = (tmp_path / "dump.rdb").read_bytes()
    (tmp_path / "dump.rdb").write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])
    try:
        rdb.load(Server(dir=str(tmp_path)))
    except rdb.RdbError as exc:
        assert "CRC64 mismatch" in str(exc)
    else:
        raise AssertionError("a flipped byte loaded silently")


def test_aof_replay_and_rewrite(tmp_path):
    srv = Server(dir=str(tmp_path), appendonly="yes")
    aof.set_appendonly(srv, True)
    c = srv.new_client()
    fill(c)
    run(c, "INCR n")
    run(c, "DEL s")
    srv.aof.close()
    back = Server(dir=str(tmp_path))
    assert aof.load(back) > 5
    assert dump_state(back) == dump_state(srv)
    with open(tmp_path / "rewritten.aof", "wb") as f:
        aof.write_dataset(srv, f)
    other = Server(dir=str(tmp_path))
    aof.replay(other, (tmp_path / "rewritten.aof").read_bytes(), "rewritten.aof")
    assert dump_state(other) == dump_state(srv)
    (tmp_path / "appendonly.aof").write_bytes((tmp_path / "appendonly.aof").read_bytes()[:-3])
    try:
        aof.load(Server(dir=str(tmp_path)))
    except aof.AofError as exc:
        assert "redis-check-aof --fix" in str(exc)
    else:
        raise AssertionError("a truncated AOF loaded silently")


def test_scan_walks_ordered_indexes_in_key_order():
    c = Server(index="skiplist").new_client()
    keys = [f"k{i:03d}" for i in range(57)]
    for k in reversed(keys):
        run(c, f"SET {k} v")
    run(c, "RPUSH alist x")
    seen, cursor = [], b"0"
    while True:
        out = run(c, f"SCAN {cursor.decode()} COUNT 10 MATCH k*")
        parts = out.split(b"\r\n")
        cursor = parts[2]
        seen += [p for p in parts[5::2] if p]
        if cursor == b"0":
            break
    assert seen == [k.encode() for k in keys]
    assert run(c, "SCAN 0 TYPE list COUNT 1000") == b"*2\r\n$1\r\n0\r\n*1\r\n$5\r\nalist\r\n"
    assert run(c, "RANGE k010 k012") == b"*3\r\n$4\r\nk010\r\n$4\r\nk011\r\n$4\r\nk012\r\n"


def test_config_set_appendonly_starts_the_aof_with_the_dataset(tmp_path):
    srv = Server(dir=str(tmp_path))
    c = srv.new_client()
    run(c, "SET before 1")
    assert run(c, "CONFIG SET appendonly yes") == b"+OK\r\n"
    run(c, "SET after 2")
    assert run(c, "CONFIG GET appendonly") == b"*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
    srv.aof.close()
    back = Server(dir=str(tmp_path))
    aof.load(back)
    assert dump_state(back) == dump_state(srv)


def scan_all(c, extra: str = "COUNT 7", between=None) -> list[bytes]:
    seen, cursor = [], b"0"
    while True:
        parts = run(c, f"SCAN {cursor.decode()} {extra}").split(b"\r\n")
        cursor = parts[2]
        seen += [p for p in parts[5::2] if p]
        if between:
            between()
        if cursor == b"0":
            return seen


def test_scan_resumes_where_it_stopped_despite_changes():
    """Ordered index: keys deleted and added during a scan do not make it skip the keys that
    were there all along (each call starts after the last key returned). Hash index: without
    changes every key comes once, and each call costs COUNT keys, not the whole keyspace."""
    c = Server(index="rbtree").new_client()
    for i in range(100):
        run(c, f"SET k{i:03d} v")
    churn = iter(range(100))

    def delete_earlier_add_later():
        n = next(churn)
        run(c, f"DEL k{n:03d}")               # earlier keys go (positions would shift)...
        run(c, f"SET z{n:03d} v")              # ...later ones come
    seen = scan_all(c, between=delete_earlier_add_later)
    survivors = [f"k{i:03d}".encode() for i in range(100) if i > len(seen) // 7 + 1]
    assert set(survivors) <= set(seen)
    h = Server().new_client()
    for i in range(1000):
        run(h, f"SET k{i} v")
    assert sorted(scan_all(h, "COUNT 10")) == sorted(f"k{i}".encode() for i in range(1000))


def hot_kept(policy: str) -> float:
    """The share of 40 keys in use that survive 2000 writes into a store of room for ~200 keys,
    when one of them is read after every write. ("~" sorts them last, so a tie between keys
    without a clock would evict them first: only the clock keeps them.)"""
    c = Server().new_client()
    assert run(c, f"CONFIG SET maxmemory-policy {policy}") == b"+OK\r\n"
    assert run(c, "CONFIG SET maxmemory 50kb") == b"+OK\r\n"
    for i in range(40):
        run(c, f"SET ~hot{i} {'x' * 100}")
    for i in range(2000):
        assert run(c, f"SET k{i} {'x' * 100}") == b"+OK\r\n"
        run(c, f"GET ~hot{i % 40}")
    assert c.server.memory.evicted > 1000 and c.server.memory.used <= 51_200 + 400
    return sum(f"~hot{i}".encode() in c.server.dbs[0].data for i in range(40)) / 40


def test_maxmemory_allkeys_lru_keeps_the_keys_in_use():
    assert hot_kept("allkeys-lru") >= 0.95
    assert hot_kept("allkeys-random") < 0.5          # what the scenario does without the LRU clock


def test_maxmemory_allkeys_lfu_keeps_the_keys_used_most():
    c = Server().new_client()
    assert run(c, "CONFIG SET maxmemory-policy allkeys-lfu") + run(c, "CONFIG SET maxmemory 50kb") == b"+OK\r\n" * 2
    for i in range(40):
        run(c, f"SET ~hot{i} {'x' * 100}")
        for _ in range(30):
            run(c, f"GET ~hot{i}")
    run(c, "SET cold v")
    assert run(c, "OBJECT FREQ cold") == b":5\r\n"                  # LFU_INIT_VAL, as Redis
    assert int(run(c, "OBJECT FREQ ~hot0")[1:]) > 5
    for i in range(2000):                                          # written once, never read
        run(c, f"SET k{i} {'x' * 100}")
    assert all(f"~hot{i}".encode() in c.server.dbs[0].data for i in range(40))
    assert c.server.memory.evicted > 1000
    assert run(c, "OBJECT IDLETIME ~hot0").startswith(b"-ERR An LFU maxmemory policy is selected, idle time")


def test_maxmemory_volatile_lru_evicts_only_keys_with_a_ttl():
    c = Server().new_client()
    run(c, "CONFIG SET maxmemory-policy volatile-lru")
    run(c, "CONFIG SET maxmemory 50kb")
    for i in range(100):
        run(c, f"SET keep{i} {'x' * 100}")
    replies = [run(c, f"SET t{i} {'x' * 100} EX 1000") for i in range(2000)]
    assert all(f"keep{i}".encode() in c.server.dbs[0].data for i in range(100))
    assert c.server.memory.evicted > 1000 and set(replies) == {b"+OK\r\n"}
    assert int(run(c, "OBJECT IDLETIME keep0")[1:]) >= 0
    assert run(c, "OBJECT FREQ keep0").startswith(b"-ERR An LFU maxmemory policy is not selected")
    assert run(c, "CONFIG SET maxmemory-samples 0").startswith(b"-ERR CONFIG SET failed")
