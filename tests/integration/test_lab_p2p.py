"""Lab p2p (and nat) on real namespaces: the handshake is a simultaneous open,
proven from the pcap and the kernel's state trace; NAT: cone works, symmetric fails."""
from __future__ import annotations

import json

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module, pcap
from hpnlab.labs._kit import LabError, StateTrace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_NAT = __import__("pathlib").Path(__file__).resolve().parents[2] / "labs" / "p2p" / "nat.yml"


def lab_args(tmp_path, *argv):
    return build_parser(["lab"]).parse_args(["lab", "--results", str(tmp_path), *argv])


@pytest.fixture(scope="module")
def p2p_run(netns_lab, tmp_path_factory):
    """One run of the lab's goal: 20 tries (spaced 0.15 s to keep the test short)."""
    out = tmp_path_factory.mktemp("p2p")
    return lab_module("p2p").run(netns_lab, lab_args(out, "p2p", "--tries", "20", "--spacing", "0.15"),
                                 lambda m: None)


def canonical_from_pcap(segs, a: str, b: str) -> int:
    """Tries whose opening is SYN, SYN, SYN-ACK, SYN-ACK: each SYN-ACK repeats its sender's
    ISN and acknowledges the peer's ISN+1 (read here from the segments, not by the lab)."""
    count = 0
    for conn in pcap.connections(segs).values():
        opening = pcap.opening(conn)
        isn = {s.src: s.seq for s in opening if s.flags & pcap.SYN and not s.flags & pcap.ACK}
        synack = {s.src: s for s in opening if s.has(pcap.SYN, pcap.ACK)}
        if set(isn) == set(synack) == {a, b} and all(
                synack[x].seq == isn[x] and synack[x].ack == (isn[y] + 1) % 2**32 for x, y in ((a, b), (b, a))):
            count += 1
    return count


def test_p2p_simultaneous_open_meets_the_goal_by_the_pcap(netns_lab, p2p_run):
    res = p2p_run
    assert res["ok"] >= 19, res
    assert res["kinds"]["simultaneous"] >= 19, res       # the lab's goal: ≥ 19 of 20 canonical
    assert res["report"].is_file() and (res["dir"] / "ladder.png").is_file()
    h1, h2 = str(netns_lab.host("h1").address("data")), str(netns_lab.host("h2").address("data"))
    assert canonical_from_pcap(pcap.read_pcap(res["dir"] / "h1.pcap"), h1, h2) >= 19
    assert canonical_from_pcap(pcap.read_pcap(res["dir"] / "h2.pcap"), h1, h2) >= 19
    data = json.loads((res["dir"] / "data.json").read_text())
    assert all(t["received"][0] and t["received"][0].startswith("hello from h2") for t in data["analysis"]["tries"]
               if t["ok"])
    window = data["analysis"]["window"]
    assert window["delay_ms"] == 10, window
    report = res["report"].read_text()
    assert "## The timing window" in report and f"{window['inside']} of 20 tries started inside" in report
    for h in ("h1", "h2"):     # the lab's delay is gone afterwards
        assert "NFQUEUE" not in netns_lab.host(h).run(["iptables-nft", "-t", "mangle", "-S"]).stdout


def test_p2p_states_from_the_tracepoint(netns_lab, p2p_run):
    if not StateTrace.available(netns_lab):
        pytest.skip("no writable tracefs with sock:inet_sock_set_state here: the state trace cannot be read")
    data = json.loads((p2p_run["dir"] / "data.json").read_text())
    assert data["analysis"]["both_syn_sent_syn_recv_established"] >= 19, data["analysis"]


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
