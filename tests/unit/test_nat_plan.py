"""How a peer reads its NAT from what the rendezvous host saw, which method two
observations lead both sides to, and how long the direct attempt may take on this
pair of hosts (they must agree without talking further)."""
from __future__ import annotations

import argparse
import math

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs.traversal import (
    BATCH,
    CAP,
    FLOOR,
    MISS,
    N_PORTS,
    SAFETY,
    TICK,
    classify,
    deadline_arg,
    deadline_for,
    plan,
    probe_costs,
)

IP = "10.77.10.1"


def seen(*ports):
    return [(IP, p) for p in ports]


@pytest.mark.parametrize("local, ports, kind", [
    (20000, (20000, 20000), "eim-preserving"),
    (20000, (44700, 44700), "eim"),
    (20000, (20001, 20002), "sequential"),
    (20000, (38218, 12005), "random"),
    (20000, (20005, 20003), "random"),          # backwards is no sequence
])
def test_classify(local, ports, kind):
    m = classify(local, seen(*ports))
    assert m["kind"] == kind and m["ip"] == IP and m["private"] == local


def both(a: dict, b: dict) -> tuple[dict, dict]:
    return plan(a, b, predict=8), plan(b, a, predict=8)


CONE = classify(20000, seen(20000, 20000), "address and port-dependent")
OPEN = classify(20000, seen(20000, 20000), "endpoint-independent")
BY_ADDRESS = classify(20000, seen(20000, 20000), "address-dependent")
SEQ = classify(20000, seen(20001, 20002), "address and port-dependent")
RANDOM = classify(20000, seen(38218, 12005), "address and port-dependent")


def test_two_endpoint_independent_sides_punch_at_what_rz_saw():
    a, b = both(CONE, classify(20000, seen(44700, 44700)))
    assert a == {"method": "punch", "targets": [44700]} and b == {"method": "punch", "targets": [20000]}


def test_a_sequential_side_is_predicted():
    easy, seq = both(CONE, SEQ)
    assert easy == {"method": "prediction", "targets": list(range(20003, 20011))}
    assert seq == {"method": "prediction", "targets": [20000]}
    a, b = both(SEQ, classify(20000, seen(20007, 20008)))        # each aims at the other's one next port
    assert a["targets"] == [20009] and b["targets"] == [20003]


def test_a_random_side_gets_birthday_punching():
    easy, hard = both(CONE, RANDOM)
    assert easy["method"] == hard["method"] == "birthday"
    assert easy["role"] == "easy" and easy["probe"] and hard["role"] == "hard" and hard["targets"] == [20000]
    x, y = both(RANDOM, RANDOM)
    assert x["role"] == y["role"] == "both-hard"


def test_an_open_filter_is_simply_sent_to():
    """The open side sends to the peer's address (what opens an address-dependent filter)
    and listens; the hard side sends to it, later where its first packet must open the filter."""
    open_side, hard = both(OPEN, RANDOM)
    assert open_side == {"method": "punch", "targets": [38218], "listen": True}
    assert hard == {"method": "punch", "targets": [20000], "peer_listens": True, "wait": 0}
    by_address, hard = both(BY_ADDRESS, RANDOM)
    assert by_address == open_side and hard["wait"] > 0


def test_filtering_on_address_and_port_is_no_open_filter():
    assert both(CONE, RANDOM)[0]["method"] == "birthday"


# ---------------------------------------------------------------- the direct attempt's deadline

def paced(obs: dict, probe_ms: float, rtt_ms: float = 0.1, tick_ms: float = 5.1, **more) -> dict:
    return {**obs, "pace": {"probe_s": probe_ms / 1e3, "tick_s": tick_ms / 1e3, "rtt_s": rtt_ms / 1e3, **more}}


def deadlines(a: dict, b: dict) -> tuple[float, float]:
    pa, pb = both(a, b)
    return (deadline_for(pa, a, b, hard_sockets=256, probes=2048)[0],
            deadline_for(pb, b, a, hard_sockets=256, probes=2048)[0])


def test_a_fast_host_keeps_the_floor():
    """Namespaces: ~10 µs a probe; the probes a birthday try needs take 0.3 s, twice that is under a second."""
    d_easy, d_hard = deadlines(paced(CONE, 0.01), paced(RANDOM, 0.01))
    assert d_easy == d_hard == FLOOR


def test_an_emulated_host_gets_the_time_its_probes_take():
    """Under TCG a TCP probe took ~1-4 ms (the last VM run sent 224-992 probes in its 1 s):
    the deadline must cover the probes that hit with P >= 0.999 at that cost, both sides alike."""
    easy, hard = paced(CONE, 2.0, rtt_ms=3), paced(RANDOM, 1.0, rtt_ms=5)
    d_easy, d_hard = deadlines(easy, hard)
    k = math.ceil(math.log(1 / MISS) * N_PORTS / 256)
    assert d_easy == d_hard
    assert d_easy >= 256 * 1.0e-3 + k * (2.0e-3 + 5.1e-3 / BATCH) + 3 * 5e-3      # what the probes take
    assert d_easy == pytest.approx(SAFETY * (256 * 1.0e-3 + k * (2.0e-3 + 5.1e-3 / BATCH) + 3 * 5e-3))
    why = deadline_for(both(easy, hard)[0], easy, hard, 256, 2048)[1]
    assert f"{k} probes" in why and "x2" in why
    # a probe that really took longer in the last try counts instead of the start's measurement
    slower = deadlines(paced(CONE, 2.0, rtt_ms=3, seen_s=4e-3), hard)[0]
    assert slower > d_easy
    assert deadlines(paced(CONE, 50), hard)[0] == CAP


def test_other_plans_and_two_random_sides_keep_the_floor():
    for a, b in ((CONE, SEQ), (CONE, CONE), (OPEN, RANDOM), (RANDOM, RANDOM)):
        assert deadlines(paced(a, 3.0), paced(b, 3.0)) == (FLOOR, FLOOR), (a, b)


def test_the_probe_costs_are_measured_here():
    costs = probe_costs(batches=2)
    for proto in ("tcp", "udp"):
        assert 0 < costs[proto]["probe_s"] < 0.1 and costs[proto]["tick_s"] >= TICK * 0.9, costs


@pytest.mark.parametrize("text, value", [("auto", None), ("2.5", 2.5)])
def test_deadline_argument(text, value):
    assert deadline_arg(text) == value


@pytest.mark.parametrize("text", ["soon", "0", "nan", "61"])
def test_bad_deadline_is_named(text):
    with pytest.raises(argparse.ArgumentTypeError, match="'auto'"):
        deadline_arg(text)
    with pytest.raises(SystemExit):             # argparse names the option: "argument --deadline: ..."
        build_parser(["lab"]).parse_args(["lab", "nat", "--deadline", text])
