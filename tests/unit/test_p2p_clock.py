"""The p2p peers' start-time agreement, over real UDP on loopback (127.0.0.1 leads,
127.0.0.2 follows; one clock here, so the offset it finds must be ~0 and both
starts the same instant)."""
from __future__ import annotations

import threading
import time

import pytest

from hpnlab.labs.p2p import agree_start

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
