"""The p2p peers' start-time agreement (and the NAT lab's reading of rz's clock),
over real UDP on loopback (127.0.0.1 leads, 127.0.0.2 follows; one clock here, so the
offset it finds must be ~0 and both starts the same instant)."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from hpnlab.labs.p2p import agree_start, clock_offset
from hpnlab.labs.rendezvous import Rendezvous

PORT = 40917


def test_leader_and_follower_agree_on_one_start_time():
    out: dict = {}

    def leader():
        out["leader"] = agree_start("leader", "127.0.0.1", "127.0.0.2", PORT, lead=0.3)

    t = threading.Thread(target=leader)
    t.start()
    time.sleep(0.3)                 # the follower may start first: it retries until the leader answers
    follower = agree_start("follower", "127.0.0.2", "127.0.0.1", PORT, lead=0.3)
    t.join(5)
    lead = out["leader"]
    assert abs(follower["offset"]) < 0.002, follower
    assert abs(follower["start_at"] - lead["start_at"]) < 0.002, (follower, lead)
    assert lead["start_at"] > time.time() - 0.5 and follower["rtt_ms"] < 50


def test_a_follower_without_a_leader_says_so():
    with pytest.raises(TimeoutError, match="did not answer"):
        agree_start("follower", "127.0.0.2", "127.0.0.1", PORT + 1, timeout=0.5)


def test_clock_offset_reads_a_clock_seconds_ahead():
    """What the NAT lab's peers do with rz: a clock 5 s ahead (as between two fresh VMs)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(2)

    def answer():
        for _ in range(16):
            data, addr = srv.recvfrom(256)
            srv.sendto(json.dumps({"t": time.time() + 5.0, "k": json.loads(data)["k"]}).encode(), addr)

    t = threading.Thread(target=answer)
    t.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    rtt, offset = clock_offset(s, srv.getsockname(), time.time() + 3)
    t.join(3)
    s.close()
    srv.close()
    assert abs(offset - 5.0) < 0.005 and rtt < 0.05, (rtt, offset)


def test_rendezvous_tells_its_time():
    rz = Rendezvous(PORT + 10, lead=0.15)
    stop: list = []
    t = threading.Thread(target=rz.serve, args=(stop,))
    t.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        got = clock_offset(s, ("127.0.0.1", PORT + 10), time.time() + 3)
    finally:
        stop.append(1)
        t.join(2)
        s.close()
    assert got is not None and abs(got[1]) < 0.005, got
