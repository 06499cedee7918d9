"""How a peer reads its NAT from what the rendezvous host saw, and which method two
observations lead both sides to (they must agree without talking further)."""
from __future__ import annotations

import pytest

from hpnlab.labs.traversal import classify, plan

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
