"""The I/O-models bench in lab mode: server on h1, client on h2 of a real netns lab."""
from __future__ import annotations

import os

import pytest

from hpnlab.bench.iomodels import Config, benchmark

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_across_two_lab_hosts(netns_lab, tmp_path):
    cfg = Config(engines=["epoll-lt", "coro", "uring", "epoll-procs"], conns=[10], sizes=[64], duration=0.5,
                 warmup=0.2, repeats=1, max_extra=0, quiet_wait=0, syscall_duration=0.4, port=7392, workers=[2])
    result = benchmark(cfg, "lab", netns_lab, argv=["hpnlab", "bench", "--mode", "lab"],
                       results_root=tmp_path, say=lambda m: None)
    cells = result["cells"]
    assert [c["status"] for c in cells] == ["ok"] * 4, [c.get("reason") for c in cells]
    assert result["failed"] == []
    for c in cells:
        assert c["rps"] > 100 and c["connected"] == 10 and c["errors"] == 0
        assert c["cpu_us_per_req"] > 0
    # a pre-forked server is measured as all its processes: the supervisor and its 2 workers
    procs = next(c for c in cells if c["engine"] == "epoll-procs")
    assert procs["workers"] == 2 and procs["runs"][0]["processes"] == 3
    report = (result["dir"] / "report.md").read_text()
    h2 = netns_lab.host("h2").address("data")
    assert "server on lab host h1 (10.77.1.1)" in report and f"on lab host h2 ({h2})" in report
    # netns hosts share this machine's CPUs: the server was pinned to CPU0, and the reading says so
    if (os.cpu_count() or 1) >= 2:
        assert "the bench pins the server to CPU0" in report and "**the server has one core**" in report
        assert "pinned to CPU0 of this machine's" in report
    # nothing of ours is left running in the lab's namespaces
    for host in netns_lab.hosts().values():
        out = host.run(["ss", "-Htn", "state", "listening", "sport = :7392"], check=False).stdout
        assert out.strip() == ""


def test_bench_runs_on_the_hosts_asked_for(netns_lab, tmp_path):
    """--server-host/--client-host/--network choose the sides (here the other way round)."""
    cfg = Config(engines=["epoll-lt"], conns=[10], sizes=[64], duration=0.5, warmup=0.2, repeats=1, max_extra=0,
                 quiet_wait=0, syscalls=False, port=7394, server_host="h2", client_host="h1")
    result = benchmark(cfg, "lab", netns_lab, argv=["hpnlab", "bench"], results_root=tmp_path, say=lambda m: None)
    assert [c["status"] for c in result["cells"]] == ["ok"], result["cells"]
    report = (result["dir"] / "report.md").read_text()
    h1, h2 = netns_lab.host("h1").address("data"), netns_lab.host("h2").address("data")
    assert f"server on lab host h2 ({h2})" in report and f"on lab host h1 ({h1})" in report
