"""`hpnlab kv lab` on real namespaces, small: the store on h1 and redis-server on h1 measured from
h2 in one run; the report and data.json carry rps[engine][index][test][pipeline] and redis."""
from __future__ import annotations

import json
import shutil

import pytest

from hpnlab.cli import build_parser
from hpnlab.kv import lab

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")]


def test_kv_lab_small_grid(netns_lab, tmp_path):
    args = build_parser(["kv"]).parse_args(
        ["kv", "lab", "--engines", "epoll-lt,threads", "--indexes", "hash,rbtree", "--tests", "set,get",
         "--requests", "500", "--fill-keys", "1000", "--results", str(tmp_path)])
    res = lab.run(netns_lab, args, lambda m: None)
    data = json.loads((res["dir"] / "data.json").read_text())
    for engine, index in (("epoll-lt", "hash"), ("threads", "hash"), ("epoll-lt", "rbtree")):
        for test in ("set", "get"):
            for p in ("1", "16"):
                assert data["rps"][engine][index][test][p] > 0
    assert data["redis"]["set"]["1"] > 0 and data["redis"]["get"]["16"] > 0
    assert data["range_ms"]["rbtree"]["p50"] > 0 and "hash" not in data["range_ms"]
    assert 0 < data["bytes_per_key"]["redis-server"] < 10_000
    text = (res["dir"] / "report.md").read_text()
    assert "## Goals" in text and (res["dir"] / "rps_P1.png").exists()
