"""Lab rudp on real namespaces: KCP's scenario over the impaired link, hpnlab's ARQ, C ikcp
and TCP each bring every message back; a loss sweep (QUIC included) and the UDP 并发 section
run; the report carries the issue's data.json shape."""
from __future__ import annotations

import json

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kcp_scenario_loss_sweep_and_udp_concurrency(netns_lab, tmp_path):
    args = build_parser(["lab"]).parse_args(["lab", "--results", str(tmp_path), "rudp", "--count", "20",
                                             "--rounds", "2", "--configs", "hpnlab:fast,ckcp:fast,tcp:nodelay",
                                             "--sweep", "10", "--sweep-configs", "quic:default",
                                             "--sweep-count", "5", "--bulk-seconds", "0.3",
                                             "--udp-clients", "16", "--udp-seconds", "0.3"])
    res = lab_module("rudp").run(netns_lab, args, lambda m: None)
    data = json.loads((res["dir"] / "data.json").read_text())
    s = data["kcp_scenario"]
    assert set(s) == {"hpnlab", "ckcp", "tcp"}
    for impl, mode in (("hpnlab", "fast"), ("ckcp", "fast")):
        row = s[impl][mode]
        assert row["max_ms"] >= row["avg_ms"] > 0 and row["overhead"] >= 0     # 0: no datagram was lost
    for run in data["runs"].values():
        assert len(run["rtts"]) == 40 and [r["round"] for r in run["per_round"]] == [1, 2]
        assert min(run["rtts"]) >= 55          # the link's 60-125 ms RTT was really there
    # the goal's pair ran side by side in each round: started together (the start barrier), overlapping
    for h, c in zip(data["runs"]["hpnlab:fast"]["per_round"], data["runs"]["ckcp:fast"]["per_round"]):
        assert abs(h["span"][0] - c["span"][0]) < 0.05, (h["span"], c["span"])
        assert max(h["span"][0], c["span"][0]) < min(h["span"][1], c["span"][1]) - 0.2, (h["span"], c["span"])
        for run in (h, c):
            assert run["loop"]["pinger"]["updates"] > 100 and run["loop"]["echoer"]["gap_max_ms"] >= 1
            assert run["stats"]["pinger"]["datagrams_out"] >= 20 and run["stats"]["echoer"]["datagrams_in"] > 0
    pair = data["paired"]["hpnlab:fast/ckcp:fast"]
    assert pair["rounds"] == 2
    for stat in ("avg_ms", "max_ms"):
        assert len(pair[stat]["ratios"]) == 2 and pair[stat]["min"] <= pair[stat]["median"] <= pair[stat]["max"]
        assert pair[stat]["lower_in"] + pair[stat]["higher_in"] <= 2
    assert (res["dir"] / "hpnlab-fast.pcap").stat().st_size > 24 * 20
    assert data["simulated"]["hpnlab"]["fast"]["digest"] == data["simulated"]["ckcp"]["fast"]["digest"]
    seeds = data["simulated"]["seeds"]                 # hpnlab on ikcp's rules sends C ikcp's very datagrams
    assert seeds["hpnlab:fast(ikcp rules)"]["overhead"] == seeds["ckcp:fast"]["overhead"]
    for key in ("hpnlab:fast", "hpnlab:fast(ikcp rules)"):   # the bytes by why add up to all of them
        assert sum(seeds[key]["bytes"].values()) == pytest.approx(1 + seeds[key]["overhead"], abs=0.002)
    st = data["runs"]["hpnlab:fast"]["per_round"][0]["stats"]
    assert st["pinger"]["bytes_push_new"] == st["echoer"]["bytes_push_new"] == 20 * (24 + 8)

    sweep = data["loss_sweep"]["10"]
    assert set(sweep) == {"quic:default"}          # the other implementations take the same path
    for row in sweep.values():
        assert len(row["rtts"]) == 5 and min(row["rtts"]) >= 55
        assert row["p99_ms"] >= row["p50_ms"] > 0 and row["goodput_mbps"] > 0
        assert row["overhead"] > 1                      # headers, ACKs and resends on top of the payload
    assert (res["dir"] / "latency_cdf_loss10.png").exists() and (res["dir"] / "goodput_vs_loss.png").exists()

    conc = {r["variant"]: r for r in data["udp_concurrency"]}
    assert set(conc) == {"single", "reuseport", "connected"}
    for r in conc.values():
        assert r["clients"] == 16 and r["replies"] > 0 and r["answered"] >= r["replies"]
    assert conc["single"]["sockets"] == 1
    assert conc["reuseport"]["sockets"] == 2 and min(conc["reuseport"]["per_socket"]) > 0   # the hash spread them
    c = conc["connected"]
    assert c["sockets"] == 17                           # the listener and one per peer
    assert c["per_socket"][0] < c["answered"] / 10      # after its first datagram a peer bypasses the listener

    text = res["report"].read_text()
    assert "hpnlab fast vs C ikcp fast" in text and "median of 2 rounds" in text and "rtt_cdf.png" in text
    assert "## Loss sweep" in text and "## UDP 并发" in text
    assert "Where the bytes went" in text and "bytes on the link by why" in text
    assert (res["dir"] / "rtt_cdf.png").exists()
