"""Lab epoll on real namespaces: LT wakes once per 1 KiB read, ET far less;
ET with one read per wakeup strands data."""
from __future__ import annotations

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_lt_vs_et(netns_lab, tmp_path):
    args = build_parser(["lab"]).parse_args(["lab", "--results", str(tmp_path), "epoll", "--mib", "4",
                                      "--bursts", "16"])
    res = lab_module("epoll").run(netns_lab, args, lambda m: None)
    by = {(r["pattern"], r["mode"]): r for r in res["runs"]}
    for pattern in ("bulk", "bursts"):
        lt, et = by[(pattern, "lt")], by[(pattern, "et")]
        kib = lt["bytes"] // 1024
        assert lt["reads"] >= kib and lt["wakeups"] >= kib          # LT: one wakeup per 1 KiB read
        assert et["wakeups"] * 4 < lt["wakeups"], (pattern, et, lt)  # ET: far fewer
        # ET drains on every wakeup: each drain ends in EAGAIN, except the last, which ends in EOF
        assert et["reads"] >= kib, (pattern, et)
        assert et["eagain"] == et["wakeups"] - 1, (pattern, et)
    assert by[("bursts", "et")]["wakeups"] <= 16 + 8
    assert res["et_once"]["stranded"] > 0
    for check in res["strace_checks"]:          # strace, where installed, agrees with the reader
        assert check["strace"].get("epoll_wait", 0) + check["strace"].get("epoll_pwait", 0) == check["epoll_wait"]
