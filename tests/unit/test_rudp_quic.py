"""hpnlab.rudp.quic: aioquic behind the ARQs' sans-I/O face, over the simulated lossy link."""
from __future__ import annotations

import struct

from hpnlab.rudp.quic import Quic
from hpnlab.rudp.sim import Link


def test_messages_arrive_whole_and_in_order_under_loss_and_reordering():
    client, server = Quic(client=True), Quic(client=False)
    client.connect(("10.0.0.2", 4433), 0)
    link = Link(loss=0.1, delay=(5, 40), dup=0.05, seed=7)
    msgs = [struct.pack("<I", k) + bytes(k % 3000) for k in range(300)]   # up to 3 packets each
    for m in msgs:
        client.send(m)
    got: list[bytes] = []
    now = 0
    while now < 60_000 and len(got) < len(msgs):
        link.step((client, server), now)
        while (m := server.recv()) is not None:
            got.append(m)
        now += 1
    assert got == msgs
    assert link.dropped > 0 and client.stats["bytes_out"] > sum(map(len, msgs))


def test_a_stray_datagram_does_not_make_a_server_connection():
    server = Quic(client=False)
    assert not server.input(b"\x00junk", 0)
    assert server.conn is None and server.stats["dropped_header"] == 1
