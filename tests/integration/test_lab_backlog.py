"""Lab backlog on real namespaces: accept queue = min(backlog, somaxconn) + 1,
ListenOverflows, SYN cookies, and RSTs with tcp_abort_on_overflow=1."""
from __future__ import annotations

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_backlog_queues(netns_lab, tmp_path):
    h1 = netns_lab.host("h1")
    before = h1.sysctl("net.core.somaxconn")
    args = build_parser().parse_args(["lab", "--results", str(tmp_path), "backlog", "--backlogs", "4,64",
                                      "--somaxconns", "16", "--quick", "--extra", "4"])
    res = lab_module("backlog").run(netns_lab, args, lambda m: None)
    data = res["data"]
    for row in data["sweep"]:
        assert row["limit"] == min(row["backlog"], row["somaxconn"])
        assert row["accept_queue"] == min(row["backlog"], row["somaxconn"]) + 1, row
        assert row["server_counters"]["TcpExtListenOverflows"] >= 4
        assert row["client"].get("timeout", 0) == 4
    cookies, no_cookies = data["synq"][:2]
    assert cookies["server_counters"]["TcpExtSyncookiesSent"] > 0
    assert no_cookies["server_counters"]["TcpExtSyncookiesSent"] == 0
    assert no_cookies["server_counters"]["TcpExtTCPReqQFullDrop"] > 0
    quiet, abort = data["overflow"]
    assert quiet["abort_on_overflow"] == 0 and abort["abort_on_overflow"] == 1
    assert quiet["server_counters"]["TcpExtListenOverflows"] > 0
    assert quiet["client"].get("probe_ECONNRESET", 0) == 0 and quiet["rst_from_server"] == 0
    assert abort["rst_from_server"] >= 1 and abort["client"].get("probe_ECONNRESET", 0) >= 1
    assert (res["dir"] / "accept_queue.png").is_file() and (res["dir"] / "server.pcap").stat().st_size > 24
    # the lab puts the sysctls back and leaves no nftables table
    assert h1.sysctl("net.core.somaxconn") == before
    assert "hpnlab_backlog" not in h1.run(["nft", "list", "tables"]).stdout
