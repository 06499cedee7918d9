"""The KV lab's report reading, computed from the run's numbers (hpnlab.kv.lab)."""
from __future__ import annotations

import pytest

from hpnlab.kv.lab import fake_bound, parse_csv
from hpnlab.labs._kit import LabError


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


def test_cpu_per_request_says_who_set_the_rate():
    from hpnlab.kv.lab import cpu_md

    def row(rps, cpu_us, busy):
        return {"rps": rps, "cpu_us": cpu_us, "busy": busy}
    d = {"rps": {"uvloop": {"hash": {"set": {"1": 60000.0}}}}, "redis": {"set": {"1": 100000.0}},
         "latency": {"uvloop": {"hash": {1: {"set": row(60000.0, 6.0, 0.36)}}},
                     "redis": {1: {"set": row(100000.0, 3.0, 0.3)}},
                     "fakeredis": {1: {"set": row(1500.0, 120.0, 0.18)}}}}
    text = "\n".join(cpu_md(d))
    assert "| SET | -P 1 | uvloop/hash | 6.0 µs, 36% | 3.0 µs, 30% | 120.0 µs, 18% |" in text
    assert "redis-server was busy 30% of the run" in text and "ours took 2.0× redis-server's CPU" in text
    assert "fakeredis took 20.0× our CPU per request" in text
    assert "fakeredis was busy 18% of its run while the same load drove redis-server 67× as fast" in text
    assert "load average" not in text
    d.update(load_before=["7.5", "6.0", "5.0"], environment={"machine": {"cpus": 2}})
    assert "the machine's load average was 7.5 on 2 CPUs" in "\n".join(cpu_md(d))
    d["latency"]["redis"][1]["set"]["busy"] = 0.95                 # the server bound: no such claim
    assert "busy 95%" not in "\n".join(cpu_md(d)) and "set the rate" not in "\n".join(cpu_md(d))


def test_the_stack_row_reads_its_cpu_against_the_same_reactor_on_the_kernel():
    """The ustack engine beside epoll-lt (the same Reactor on the kernel's TCP) and redis-server;
    the stack's own CPU per request is the difference of the user times, with the ticks' fuzz."""
    from hpnlab.kv.lab import stack_md

    def row(rps, user, sys_, busy):
        return {"rps": rps, "cpu_us": user + sys_, "user_us": user, "sys_us": sys_, "busy": busy}
    d = {"requests": 20000, "server": "h1", "client": "h2",
         "ustack": {"network": "stack", "driver": "afpacket", "ifname": "eth2", "ip": "10.77.5.101/24",
                    "address": "10.77.5.101"},
         "rps": {"epoll-lt": {"hash": {"set": {"1": 50000.0}}}, "ustack": {"hash": {"set": {"1": 10000.0}}}},
         "redis": {"set": {"1": 80000.0}},
         "latency": {"epoll-lt": {"hash": {1: {"set": row(50000.0, 3.0, 2.0, 0.25)}}},
                     "ustack": {"hash": {1: {"set": row(10000.0, 55.0, 5.0, 0.6)}}}}}
    text = "\n".join(stack_md(d))
    assert "the stack took eth2 on the `stack` LAN (afpacket) with its own address 10.77.5.101/24" in text
    assert "| SET | -P 1 | 10000 | 50000 | 80000 | 0.20× | 0.12× | 60.0 (55.0+5.0), 60% | 5.0 (3.0+2.0), 25% |" in text
    assert "the stack's TCP/IP in Python took about 52.0 µs (±1.0: 10 ms ticks), 87% of its request" in text
    assert "one CPU serves at most 16667 requests/s" in text and "busy 60% of the run, so waits" in text
    d["latency"]["ustack"]["hash"][1]["set"] = row(10000.0, 58.0, 5.0, 0.9)
    assert "busy 90%: its CPU set the rate" in "\n".join(stack_md(d))
    d["latency"]["ustack"]["hash"][1]["set"] = row(10000.0, 4.0, 5.0, 0.6)        # within the ticks' fuzz
    text = "\n".join(stack_md(d))
    assert "no split read" in text and "took about" not in text
    del d["rps"]["ustack"]
    assert stack_md(d) == []
    d["rps"]["ustack"] = {"hash": {"set": {"1": 10000.0}}}
    d["latency"]["ustack"]["hash"][1]["set"] = row(10000.0, 55.0, 5.0, 0.3)
    d.update(load_before=["8.0", "6.0", "5.0"], environment={"machine": {"cpus": 2}})
    assert "load average was 8.0 on 2 CPUs: a process that wants a CPU gets about 25% of one" in "\n".join(stack_md(d))


HEADER = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
          '"max_latency_ms"\n')


def test_a_run_within_redis_benchmarks_millisecond_clock_is_refused_not_divided_by():
    """redis-benchmark 7 prints rps = requests / elapsed whole ms: a run under 1 ms gives inf,
    which once reached the CPU-share division as 0 s and crashed the lab."""
    row = parse_csv(HEADER + '"SET","399999.97","0.940","0.392","0.999","1.503","1.543","1.543"\n')
    assert row["set"]["rps"] == pytest.approx(399999.97)
    with pytest.raises(LabError, match="GET no rate.*raise --requests"):
        parse_csv(HEADER + '"GET","inf","0.780","0.400","0.719","1.215","1.247","1.247"\n')
