"""Lab p2p (and nat) on real namespaces: the handshake is a simultaneous open,
proven from the pcap and the kernel's state trace; NAT: each traversal method
(punch, port prediction, birthday punching, relay) through the NAT kind it is for,
proven from the routers' wan captures."""
from __future__ import annotations

import json
import os

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module, nat, pcap
from hpnlab.labs._kit import LabError, StateTrace
from hpnlab.providers import open_lab
from hpnlab.testing import unique_lab_name
from hpnlab.topology import load_lab

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


@pytest.fixture(scope="module")
def nat_run(tmp_path_factory):
    """One run of the NAT lab: one scenario per method, 3 tries each (the lab's own
    run makes 20 per scenario); the both-random pair gets a short direct deadline."""
    if os.geteuid() != 0:
        pytest.skip("network-namespace labs need root")
    lab = load_lab(REPO_NAT, provider="netns", name=unique_lab_name("tnat"))
    provider = open_lab(lab)
    provider.state = type(provider.state)(lab.name, tmp_path_factory.mktemp("state"))
    provider.up()
    try:
        out = tmp_path_factory.mktemp("nat")
        scenarios = "cone-cone,remap-cone,cone-seq,cone-random,full-random,addr-random"
        res = lab_module("nat").run(provider, lab_args(out, "nat", "--scenarios", scenarios, "--tries", "3"),
                                    lambda m: None)
        both = lab_module("nat").run(provider, lab_args(out, "nat", "--scenarios", "random-random", "--tries", "2",
                                                        "--deadline", "0.3"), lambda m: None)
        yield provider, {**{r["scenario"]: r for r in res["scenarios"]},
                         **{r["scenario"]: r for r in both["scenarios"]}}, res
    finally:
        provider.down()


def methods_and_outcomes(row: dict, proto: str) -> tuple[set, set]:
    return {t["method"] for t in row[proto]["tries"]}, {t["proven"] for t in row[proto]["tries"]}


def test_nat_punch_through_endpoint_independent_nats(nat_run):
    _lab, rows, _res = nat_run
    for name, kind_a in (("cone-cone", "eim-preserving"), ("remap-cone", "eim")):
        row = rows[name]
        assert methods_and_outcomes(row, "udp") == ({"punch"}, {"direct-hole-punch"}), row["udp"]
        methods, outcomes = methods_and_outcomes(row, "tcp")       # on UDP's mapping, or by its own punch
        assert methods <= {"udp-mapping", "punch"} and outcomes == {"direct-simultaneous-open"}, row["tcp"]
        for t in row["udp"]["tries"] + [t for t in row["tcp"]["tries"] if t["method"] == "punch"]:
            m = t["a_mapping"]              # what rz saw from pa, toward its two ports
            assert m["kind"] == kind_a and m["ports"][0] == m["ports"][1], m
            assert (m["ports"][0] == m["private"]) == (kind_a == "eim-preserving"), m
            assert m["filtering"] == "address and port-dependent", m     # conntrack's own
    assert all(t["handshake"] in ("simultaneous", "syn-syn-ack") for t in rows["cone-cone"]["tcp"]["tries"])


def test_nat_tcp_opens_on_udps_punched_mapping_only_where_the_nat_keeps_the_port(nat_run):
    """UDP first, then TCP on the punched mapping: a NAT that maps a private port to the same
    public port whatever the protocol (cone: preserved; remap: a hash) lets TCP through the
    endpoints UDP punched, read here from the routers' wan captures; a sequential or random
    allocator gives the TCP flow a new port, and TCP falls back to its own method."""
    _lab, rows, res = nat_run
    ips = {"a": "10.77.10.1", "b": "10.77.10.2"}
    data = json.loads((res["dir"] / "data.json").read_text())
    for name in ("cone-cone", "remap-cone"):
        reuse = rows[name]["tcp"]["summary"]["on_udp_mapping"]
        assert reuse["tried"] == 3 and reuse["direct"] >= 2, reuse          # 3 of 3 unless a pairing ran late
        flows = {r: nat._flows(pcap.read_pcap(res["dir"] / f"{name}-{r}.pcap")) for r in ("ra", "rb")}
        for ta, tb in zip(data["agents"][name]["pa"]["tries"], data["agents"][name]["pb"]["tries"]):
            if ta["tcp"].get("method") != "udp-mapping":
                continue
            ea, eb = nat._ep(tb["udp"]["peer_seen_as"]), nat._ep(ta["udp"]["peer_seen_as"])   # UDP's public ends
            assert (ea[0], eb[0]) == (ips["a"], ips["b"]), (ea, eb)
            assert ta["tcp"]["peer_seen_as"] == ta["udp"]["peer_seen_as"], ta
            assert all(nat.both_ways(flows[r], "tcp", ea, eb) for r in ("ra", "rb")), (name, ta["try"])
    for name in ("cone-seq", "cone-random"):
        reuse = rows[name]["tcp"]["summary"]["on_udp_mapping"]
        assert reuse["tried"] >= 2 and reuse["direct"] == 0, reuse
        assert "udp-mapping" not in rows[name]["tcp"]["methods"]


@pytest.mark.parametrize("scenario, filtering", [("full-random", "endpoint-independent"),
                                                 ("addr-random", "address-dependent")])
def test_nat_punch_through_an_open_filter_to_a_random_nat(nat_run, scenario, filtering):
    """ra filters on nothing but its mappings (full: endpoint-independent), or on the address
    only (addr: address-dependent) — told apart by rz's probes from another port and from
    another address; pb, behind a random NAT, just sends to pa's public endpoint once pa
    has sent to pb's address; no prediction, no birthday probes."""
    _lab, rows, _res = nat_run
    row = rows[scenario]
    for proto, outcome in (("udp", "direct-hole-punch"), ("tcp", "direct-hole-punch")):
        assert methods_and_outcomes(row, proto) == ({"punch"}, {outcome}), row[proto]
        assert all(t["probes"] is None for t in row[proto]["tries"])
    assert {t["a_mapping"]["filtering"] for t in row["udp"]["tries"]} == {filtering}
    assert {t["b_mapping"]["filtering"] for t in row["udp"]["tries"]} == {"address and port-dependent"}
    assert {t["handshake"] for t in row["tcp"]["tries"]} == {"three-way"}      # pa listened


def test_nat_port_prediction_through_a_sequential_nat(nat_run):
    _lab, rows, _res = nat_run
    row = rows["cone-seq"]
    for proto in ("udp", "tcp"):
        methods, outcomes = methods_and_outcomes(row, proto)
        assert methods == {"prediction"} and outcomes == {"direct-hole-punch" if proto == "udp"
                                                          else "direct-simultaneous-open"}, row[proto]
        for t in row[proto]["tries"]:
            assert t["b_mapping"]["kind"] == "sequential" and t["b_mapping"]["step"] == 1, t


def test_nat_birthday_punching_through_a_random_nat(nat_run):
    _lab, rows, _res = nat_run
    row = rows["cone-random"]
    for proto in ("udp", "tcp"):
        methods, outcomes = methods_and_outcomes(row, proto)
        assert methods == {"birthday"} and outcomes <= {"direct-hole-punch", "direct-simultaneous-open"}, row[proto]
        assert all(0 < t["probes"] < 2048 for t in row[proto]["tries"]), row[proto]["tries"]
        assert row[proto]["birthday"]["expected_probes"] == round(64512 / 256)
        # the deadline came from this host's measured probe costs (both peers agreed on it)
        assert all(t["deadline_s"] >= 1.0 and "1741 probes" in t["deadline_why"] for t in row[proto]["tries"])
        assert all(t["probe_rate"] > 0 for t in row[proto]["tries"])


def test_nat_relay_when_both_nats_are_random(nat_run):
    lab, rows, res = nat_run
    row = rows["random-random"]
    for proto in ("udp", "tcp"):
        s = row[proto]["summary"]
        assert s["failed"] == 0 and s["relayed"] >= 1 and s["direct"] + s["relayed"] == 2, s
        assert row[proto]["birthday"]["both_hard"] and row[proto]["birthday"]["bound_p_direct"] < 0.01
        assert {(t["deadline_s"], t["deadline_why"]) for t in row[proto]["tries"]} == {(0.3, "fixed (--deadline)")}
    # data.json holds the issue's per-scenario summary; the report names each NAT by RFC 4787's terms
    data = json.loads((res["dir"] / "data.json").read_text())
    assert set(data["summary"]["cone-seq"]["udp"]) >= {"tries", "direct", "relayed", "failed", "median_ms"}
    assert "address and port-dependent mapping, sequential port assignment" in res["report"].read_text()
    assert "make lab-p2p-nat PROVIDER=netns" in res["report"].read_text()     # the re-run names its provider
    assert "round trip to rz ms" in res["report"].read_text()                 # the deadline's inputs
    # no NAT rule, no route is left behind
    for r in ("ra", "rb"):
        assert "hpnlab_nat" not in lab.host(r).run(["nft", "list", "tables"]).stdout
    assert "10.77.10.0" not in lab.host("pa").run(["ip", "route"]).stdout
    assert "default" not in lab.host("pa").run(["ip", "route"]).stdout


def test_nat_outcomes_come_from_the_pcaps(nat_run):
    """The same agents' claims read against another scenario's captures prove nothing."""
    _lab, rows, res = nat_run
    ips = {"rz": "10.77.10.100", "a": "10.77.10.1", "b": "10.77.10.2"}
    d = res["dir"]
    empty = {"a": nat._flows(pcap.read_pcap(d / "cone-seq-ra.pcap")),
             "b": nat._flows(pcap.read_pcap(d / "cone-seq-rb.pcap"))}
    right = {"a": nat._flows(pcap.read_pcap(d / "cone-cone-ra.pcap")),
             "b": nat._flows(pcap.read_pcap(d / "cone-cone-rb.pcap"))}
    data = json.loads((d / "data.json").read_text())
    raw = data["agents"]["cone-cone"]
    a, b = raw["pa"]["tries"][0]["udp"], raw["pb"]["tries"][0]["udp"]
    assert nat.prove("udp", a, b, right, ips)[0] == "direct-hole-punch"
    assert nat.prove("udp", a, b, empty, ips)[0] == "failed"


def test_nat_bad_input_is_named(nat_run, tmp_path):
    with pytest.raises(LabError, match="--scenarios: bad scenario 'cone-stun'"):
        nat.parse_scenarios("cone-cone,cone-stun")
    lab = nat_run[0]
    for argv, field in ((["--probes", "70000"], "--probes must be 1 to 64512"), (["--tries", "0"], "--tries")):
        with pytest.raises(LabError, match=field):
            lab_module("nat").run(lab, lab_args(tmp_path, "nat", *argv), lambda m: None)
    assert not list(tmp_path.rglob("*.pcap"))
    for r in ("ra", "rb"):                  # nothing half-made on the routers either
        assert "hpnlab_nat" not in lab.host(r).run(["nft", "list", "tables"]).stdout


def test_nat_on_a_lab_without_routers_says_what_is_missing(netns_lab, tmp_path):
    with pytest.raises(LabError, match="nat.yml"):
        lab_module("nat").run(netns_lab, lab_args(tmp_path, "nat"), lambda m: None)
