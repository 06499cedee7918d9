"""hpnlab.rudp.concurrency on loopback: each UDP 并发 variant answers every client, and spreads
its peers the way it claims (reuseport over its workers, connected: one socket per peer)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from hpnlab.rudp.concurrency import VARIANTS, load


def test_every_variant_serves_many_clients():
    ports = dict(zip(VARIANTS, (44501, 44502, 44503)))
    servers = {v: subprocess.Popen([sys.executable, "-c", "import json; from hpnlab.rudp.concurrency import serve; "
                                    f"print(json.dumps(serve({v!r}, {p}, 1.5, workers=2)))"],
                                   stdout=subprocess.PIPE, text=True) for v, p in ports.items()}
    time.sleep(0.5)
    loads = {v: load("127.0.0.1", p, clients=32, seconds=0.3, warmup=0.1) for v, p in ports.items()}
    got = {v: json.loads(s.communicate(timeout=10)[0]) for v, s in servers.items()}
    for v in VARIANTS:
        assert loads[v]["replies"] > 50 and loads[v]["p50_us"] > 0, (v, loads[v])
        assert got[v]["answered"] >= loads[v]["replies"]
    assert got["single"]["sockets"] == 1
    assert got["reuseport"]["sockets"] == 2 and min(got["reuseport"]["per_socket"]) > 0   # the kernel spread them
    c = got["connected"]
    assert c["sockets"] == 33                                   # the listener, and one per peer
    assert c["per_socket"][0] < c["answered"] / 10              # after its first datagram, a peer bypasses it
