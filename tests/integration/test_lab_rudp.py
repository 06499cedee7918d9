"""Lab rudp on real namespaces: KCP's scenario over the impaired link, hpnlab's ARQ, C ikcp
and TCP each bring every message back, and the report carries the issue's data.json shape."""
from __future__ import annotations

import json

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kcp_scenario_over_the_impaired_link(netns_lab, tmp_path):
    args = build_parser(["lab"]).parse_args(["lab", "--results", str(tmp_path), "rudp", "--count", "25",
                                             "--configs", "hpnlab:fast,ckcp:fast,tcp:nodelay"])
    res = lab_module("rudp").run(netns_lab, args, lambda m: None)
    data = json.loads((res["dir"] / "data.json").read_text())
    s = data["kcp_scenario"]
    assert set(s) == {"hpnlab", "ckcp", "tcp"}
    for impl, mode in (("hpnlab", "fast"), ("ckcp", "fast")):
        row = s[impl][mode]
        assert row["max_ms"] >= row["avg_ms"] > 0 and row["overhead"] > 0
    for run in data["runs"].values():
        assert len(run["rtts"]) == 25
        assert min(run["rtts"]) >= 55          # the link's 60-125 ms RTT was really there
    assert (res["dir"] / "hpnlab-fast.pcap").stat().st_size > 24 * 25
    assert data["simulated"]["hpnlab"]["fast"]["digest"] == data["simulated"]["ckcp"]["fast"]["digest"]
    text = res["report"].read_text()
    assert "hpnlab fast vs C ikcp fast" in text and "rtt_cdf.png" in text
    assert (res["dir"] / "rtt_cdf.png").exists()
