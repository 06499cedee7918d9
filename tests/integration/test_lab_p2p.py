"""Lab p2p (and nat) on real namespaces: the handshake is a simultaneous open,
proven from the pcap and the kernel's state trace; NAT: cone works, symmetric fails."""
from __future__ import annotations

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module, pcap
from hpnlab.labs._kit import LabError, StateTrace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_NAT = __import__("pathlib").Path(__file__).resolve().parents[2] / "labs" / "p2p" / "nat.yml"


def lab_args(tmp_path, *argv):
    return build_parser().parse_args(["lab", "--results", str(tmp_path), *argv])


def test_p2p_simultaneous_open_from_pcap_and_states(netns_lab, tmp_path):
    res = lab_module("p2p").run(netns_lab, lab_args(tmp_path, "p2p", "--tries", "10"), lambda m: None)
    assert res["ok"] >= 9, res
    assert res["kinds"]["simultaneous"] >= 1, res
    assert res["report"].is_file() and (res["dir"] / "ladder.png").is_file()
    # from the pcap of h1's NIC: for a canonical try each side sent SYN, got SYN, sent SYN-ACK
    segs = pcap.read_pcap(res["dir"] / "h1.pcap")
    h1, h2 = str(netns_lab.host("h1").address("data")), str(netns_lab.host("h2").address("data"))
    canonical = 0
    for conn in pcap.connections(segs).values():
        opening = pcap.opening(conn)
        syn = {s.src for s in opening if s.flags & pcap.SYN and not s.flags & pcap.ACK}
        synack = {s.src for s in opening if s.has(pcap.SYN, pcap.ACK)}
        if syn == synack == {h1, h2}:
            canonical += 1
    assert canonical >= 1
    import json
    data = json.loads((res["dir"] / "data.json").read_text())
    assert all(t["received"][0] and t["received"][0].startswith("hello from h2") for t in data["analysis"]["tries"]
               if t["ok"])
    if StateTrace.available(netns_lab):
        assert data["analysis"]["both_syn_sent_syn_recv_established"] >= 1


def test_p2p_names_missing_host(netns_lab, tmp_path):
    with pytest.raises(LabError, match="h9"):
        lab_module("p2p").run(netns_lab, lab_args(tmp_path, "p2p", "--hosts", "h1,h9"), lambda m: None)


def test_nat_cone_works_symmetric_fails(lab_factory, tmp_path):
    lab = lab_factory(REPO_NAT)
    res = lab_module("nat").run(lab, lab_args(tmp_path, "nat", "--scenarios", "cone-cone,symmetric-symmetric",
                                              "--timeout", "2"), lambda m: None)
    cone, sym = res["scenarios"]
    assert cone["udp_ok"] and cone["tcp_ok"], cone
    # port-preserving: the public port rz saw is the one the peer's datagrams came from
    assert cone["a"]["udp"]["self_public"] == cone["b"]["udp"]["received_from"]
    assert not sym["udp_ok"] and not sym["tcp_ok"], sym
    # no NAT rule, no route is left behind
    for r in ("ra", "rb"):
        assert "hpnlab_nat" not in lab.host(r).run(["nft", "list", "tables"]).stdout
    assert "10.77.10.0" not in lab.host("pa").run(["ip", "route"]).stdout
    assert "default" not in lab.host("pa").run(["ip", "route"]).stdout


def test_nat_on_a_lab_without_routers_says_what_is_missing(netns_lab, tmp_path):
    with pytest.raises(LabError, match="nat.yml"):
        lab_module("nat").run(netns_lab, lab_args(tmp_path, "nat"), lambda m: None)
