"""hpnlab's ARQ and C ikcp (PyPI `kcp`) as peers: 10,000 messages each way under 10 % loss."""
from __future__ import annotations

import struct

import pytest

from hpnlab.rudp.arq import MODES, Arq
from hpnlab.rudp.ckcp import CKcp
from hpnlab.rudp.sim import Link, echo_scenario


@pytest.mark.parametrize("mode", ["fast", "normal"])
def test_ten_thousand_messages_each_way_under_loss(mode):
    py = Arq(0x11223344, snd_wnd=128)
    py.nodelay(*MODES[mode])
    c = CKcp(0x11223344, MODES[mode], snd_wnd=128)
    ends = (py, c)
    link = Link(loss=0.1, delay=(10, 40), seed=4)
    n = 10_000
    sent = [0, 0]
    got: list[list[bytes]] = [[], []]          # got[i]: what end i received
    now = 0
    while now < 600_000 and (len(got[0]) < n or len(got[1]) < n):
        for i, me in enumerate(ends):
            while sent[i] < n and me.waiting < 256:
                me.send(struct.pack("<HI", i, sent[i]) + bytes(sent[i] % 50))
                sent[i] += 1
        link.step(ends, now)
        for i, me in enumerate(ends):
            while (m := me.recv()) is not None:
                got[i].append(m)
        now += 5
    for i in (0, 1):
        want = [struct.pack("<HI", 1 - i, k) + bytes(k % 50) for k in range(n)]
        assert got[i] == want, f"end {i}: {len(got[i])} received, first difference " \
            f"{next((k for k, (x, y) in enumerate(zip(got[i], want)) if x != y), None)}"
    assert link.dropped > 0 and py.stats["retransmits"] + py.stats["fast_retransmits"] > 0
    assert not any(k.startswith("dropped") for k in py.stats), dict(py.stats)


@pytest.mark.parametrize("schedule", ["every ms", "the lab's loop"])
@pytest.mark.parametrize("mode", list(MODES))
def test_same_bytes_on_the_wire_as_c_ikcp(mode, schedule):
    """KCP's test.cpp scenario on the virtual clock: hpnlab's ARQ pair and a C ikcp pair, over
    links with the same random draws, send the very same datagrams at the very same times -
    updated every millisecond, and on the lab's loop's schedule (updates 1-3 ms apart, each
    datagram taken in at its arrival time between them)."""
    import random

    def lags():
        return random.Random(5) if schedule == "the lab's loop" else None

    def arq():
        a = Arq(1, snd_wnd=128, rcv_wnd=128, ikcp_rules=True)
        a.nodelay(*MODES[mode])
        return a

    def c():
        return CKcp(1, MODES[mode], snd_wnd=128, rcv_wnd=128)
    ours = echo_scenario(arq(), arq(), Link(loss=0.15, delay=(30, 62), seed=8), 150, lags=lags())
    theirs = echo_scenario(c(), c(), Link(loss=0.15, delay=(30, 62), seed=8), 150, lags=lags())
    assert ours == theirs
    assert max(ours[0]) > 125          # some messages were lost and resent (15 % each way)
