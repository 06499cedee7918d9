"""The KV lab's report reading, computed from the run's numbers (hpnlab.kv.lab)."""
from __future__ import annotations

from hpnlab.kv.lab import fake_bound


def data(redis_p1: float, fake_p1: float) -> dict:
    return {"rps": {"epoll-lt": {"hash": {"set": {"1": 60000.0, "16": 400000.0}, "get": {}}}},
            "redis": {"set": {"1": redis_p1, "16": 900000.0}},
            "fakeredis": {"set": {"1": fake_p1, "16": 2000.0}}}


def test_redis_servers_own_ratio_to_fakeredis_stands_beside_ours():
    text = "\n".join(fake_bound(data(50000.0, 10000.0)))
    assert "| SET | -P 1 | 10000 | 6.0× (epoll-lt/hash) | 5.0× |" in text
    assert "| SET | -P 16 | 2000 | 200.0× (epoll-lt/hash) | 450.0× |" in text
    assert "At SET -P 1 redis-server itself is under 10× fakeredis" in text


def test_no_bound_claimed_where_redis_server_clears_the_goal():
    text = "\n".join(fake_bound(data(200000.0, 10000.0)))
    assert "itself is under" not in text
    assert fake_bound({"rps": {}, "redis": {}, "fakeredis": {}}) == []


def test_an_emulated_server_gets_the_cut_grid_and_the_report_says_so():
    from types import SimpleNamespace

    from hpnlab.kv.lab import EMULATED_GRID, GRID, sizing
    defaults = SimpleNamespace(requests=None, fill_keys=None)
    assert sizing(defaults, False) == (GRID, "")
    sizes, note = sizing(defaults, True)
    assert sizes == EMULATED_GRID and "emulated (QEMU TCG)" in note and f"requests {EMULATED_GRID['requests']}" in note
    sizes, note = sizing(SimpleNamespace(requests=777, fill_keys=888), True)     # what was asked for is kept
    assert (sizes["requests"], sizes["fill_keys"], note) == (777, 888, "")
