"""hpnlab.rudp.arq, the sans-I/O KCP-format ARQ: two peers over a simulated link."""
from __future__ import annotations

import heapq
import struct

import pytest

from hpnlab.rudp.arq import CMD_ACK, CMD_PUSH, HEADER, MASK, MODES, Arq, segments
from hpnlab.rudp.sim import Link, echo_scenario, resend_census


def pair(mode="fast", isn=0, **kw):
    a, b = Arq(7, isn=isn, snd_wnd=128, **kw), Arq(7, isn=isn, snd_wnd=128, **kw)
    for p in (a, b):
        p.nodelay(*MODES[mode])
    return a, b


def run(a, b, link, msgs, limit_ms=120_000, every=0):
    """Send `msgs` from a to b over `link` (with `every`, one each `every` ms); return what b
    received, in order."""
    got, i, now = [], 0, 0
    while now < limit_ms and (len(got) < len(msgs)):
        while i < len(msgs) and a.waiting < 256 and now >= i * every:
            a.send(msgs[i])
            i += 1
        for end, (me, peer) in enumerate(((a, b), (b, a))):
            me.update(now)
            for d in me.pop_output():
                link.send(end, d, now)
            for d in link.deliver(1 - end, now):
                peer.input(d, now)
        while (m := b.recv()) is not None:
            got.append(m)
        now += 1
    return got


def messages(n, size=8):
    return [struct.pack("<I", k) + bytes(size - 4) for k in range(n)]


def test_perfect_link_delivers_in_order_with_no_retransmits():
    a, b = pair()
    msgs = messages(500)
    assert run(a, b, Link(delay=(10, 10)), msgs) == msgs
    assert a.stats["retransmits"] == a.stats["fast_retransmits"] == 0


@pytest.mark.parametrize("mode", list(MODES))
def test_loss_is_repaired_in_every_mode(mode):
    a, b = pair(mode)
    msgs = messages(400)
    assert run(a, b, Link(loss=0.2, delay=(5, 20), seed=3), msgs) == msgs
    assert a.stats["retransmits"] + a.stats["fast_retransmits"] > 0


def test_fast_mode_retransmits_on_duplicate_acks():
    a, b = pair("fast")
    msgs = messages(400)
    assert run(a, b, Link(loss=0.1, delay=(20, 20), seed=5), msgs) == msgs
    assert a.stats["fast_retransmits"] > 0


def test_reordering_and_duplication_are_undone():
    a, b = pair()
    msgs = messages(400)
    # delays 1..60 ms drawn per packet reorder them; 20 % are sent twice
    assert run(a, b, Link(delay=(1, 60), dup=0.2, seed=9), msgs) == msgs
    assert b.stats["duplicates"] > 0


def test_sequence_numbers_wrap_around():
    a, b = pair(isn=MASK - 50)
    msgs = messages(300)
    assert run(a, b, Link(loss=0.1, delay=(5, 25), seed=11), msgs) == msgs
    assert a.snd_nxt < 300          # went past 2**32 - 1 and on from 0


def test_message_mode_keeps_boundaries_and_stream_mode_joins_bytes():
    a, b = pair()
    big = bytes(range(256)) * 20                     # 5120 bytes: 4 fragments at mtu 1400
    msgs = [big, b"x", big[:1376], big[:1377]]
    assert run(a, b, Link(loss=0.1, delay=(5, 20), seed=2), msgs) == msgs
    s, r = pair(stream=True)
    got = run(s, r, Link(delay=(5, 5)), [b"ab", b"cd", big], limit_ms=5000)
    assert b"".join(got) == b"abcd" + big


def test_bad_input_is_dropped_and_counted():
    a = Arq(7)
    a.nodelay(*MODES["fast"])
    a.update(0)
    push = HEADER.pack(7, CMD_PUSH, 0, 128, 0, 0, 0, 4) + b"data"
    assert not a.input(push[:10], 1)                                     # truncated header
    assert not a.input(push[:-1], 1)                                     # len beyond the datagram
    assert not a.input(HEADER.pack(8, CMD_PUSH, 0, 128, 0, 0, 0, 0), 1)  # another conv
    assert not a.input(HEADER.pack(7, 99, 0, 128, 0, 0, 0, 0), 1)        # no such cmd
    assert not a.input(HEADER.pack(7, CMD_ACK, 0, 128, 0, 0, 5, 0), 1)   # una of unsent data
    assert not a.input(HEADER.pack(7, CMD_PUSH, 0, 128, 0, 10_000, 0, 0), 1)  # beyond rcv_wnd
    assert not a.input(b"\xff" * 23, 1)
    assert {k: v for k, v in a.stats.items() if k.startswith("dropped")} == {
        "dropped_truncated": 3, "dropped_conv": 1, "dropped_cmd": 1, "dropped_forged": 1, "dropped_window": 1}
    assert a.input(push, 2) and a.recv() == b"data"                      # and it still works


def test_receive_window_bounds_memory():
    a, b = pair()
    for k in range(1000):                     # b never calls recv(): its window fills
        a.send(struct.pack("<I", k))
    for now in range(0, 3000):
        for me, peer in ((a, b), (b, a)):
            me.update(now)
            for d in me.pop_output():
                peer.input(d, now)
    assert len(b.rcv_queue) + len(b.rcv_buf) <= b.rcv_wnd
    assert b.rmt_wnd == 128 and a.rmt_wnd == 0        # b told a its window is shut


def test_oversized_message_is_refused():
    with pytest.raises(ValueError, match="fragments"):
        Arq(1).send(bytes(1376 * 200))


def test_fast_answers_with_the_ack_and_the_reply_in_one_datagram_at_once():
    a, b = pair("fast")
    a.update(0), b.update(0)
    a.pop_output(), b.pop_output()
    a.send(b"ping")
    [push] = a.pop_output()                   # 3 ms before the next tick: out at once
    b.input(push, 4)
    b.send(b.recv())                          # the application's reply, before b's output is taken
    [reply] = b.pop_output()
    assert [f[1] for f in segments(reply)] == [CMD_ACK, CMD_PUSH]
    assert b.pop_output() == []               # nothing owed: no empty flushes


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("ikcp_rules", [False, True])
def test_fast_sends_and_acknowledges_at_once_and_ikcp_rules_wait_for_the_tick(mode, ikcp_rules):
    """hpnlab's fast mode sends what it owes when the output is taken, without an update()
    tick in between; ikcp's rules (and the other modes, as ikcp) wait for the next tick."""
    a, b = pair(mode, ikcp_rules=ikcp_rules)
    a.update(0), b.update(0)
    a.pop_output(), b.pop_output()
    a.send(b"now")                            # after the last tick: the next is at 10
    sent = a.pop_output()
    at_once = mode == "fast" and not ikcp_rules
    assert bool(sent) is at_once
    if not at_once:
        a.update(10)                          # the tick sends it
        [push] = a.pop_output()
        sent = [push]
    b.input(sent[0], 4)                       # owed: an ACK
    acks = b.pop_output()
    assert bool(acks) is at_once
    if not at_once:
        b.update(10)
        acks = b.pop_output()
    assert acks and HEADER.unpack_from(acks[0])[1] == CMD_ACK


class Scripted(Link):
    """A link with a fixed one-way delay; `fate(sns, copy)` for a datagram of a's carrying
    PUSHes `sns` (copy: how often the first of them was sent before) gives extra ms, or None:
    lost. `log`: (time, PUSH sns) of every datagram a sent."""

    def __init__(self, delay: int, fate):
        super().__init__(delay=(delay, delay))
        self.fate, self.copies, self.log = fate, {}, []

    def send(self, end, datagram, now):
        sns = [f[5] for f in segments(datagram) if f[1] == CMD_PUSH]
        extra = 0
        if end == 0 and sns:
            self.log.append((now, sns))
            copy = self.copies[sns[0]] = self.copies.get(sns[0], -1) + 1
            extra = self.fate(sns, copy)
        self.sent[end] += len(datagram)
        if extra is not None:
            self.n += 1
            heapq.heappush(self.queues[1 - end], (now + self.delay[0] + extra, self.n, datagram))


def one_way_run(fate, ikcp_rules, delay=100, n=80, every=10):
    """a sends an 8-byte message every `every` ms to b over a Scripted link; b only ACKs. The
    RTO's floor is raised out of the way (a steady delay makes KCP's RTO hug the RTT): only
    fast retransmits act. Returns a's stats and the times a sent sn 40."""
    a, b = pair("fast", ikcp_rules=ikcp_rules)
    a.minrto = a.rto = 1000
    link = Scripted(delay, fate)
    msgs = messages(n)
    assert run(a, b, link, msgs, every=every) == msgs
    return a.stats, [when for when, sns in link.log if 40 in sns]


@pytest.mark.parametrize("ikcp_rules", [False, True])
def test_a_resent_segment_is_not_resent_on_every_ack_of_an_older_send(ikcp_rules):
    """sn 40's first copy is lost (RTT 200 ms, a message every 10 ms); the ACKs of 41, 42, ...
    (sent before its resend) keep coming for a whole RTT after the resend. ikcp counts them
    again: a copy of sn 40 every 2 ACKs (20 ms), up to its fastlimit, before the first resend's
    ACK can be back; hpnlab sends a further copy no sooner than srtt/2 after the last."""
    stats, sends = one_way_run(lambda sns, copy: None if sns[0] == 40 and copy == 0 else 0, ikcp_rules)
    gaps = [b - a for a, b in zip(sends[1:], sends[2:])]
    if ikcp_rules:
        assert len(sends) == 6 and max(gaps) <= 30, sends
    else:
        assert 2 <= len(sends) <= 4 and min(gaps, default=100) >= 100, sends
        assert sends[1] - sends[0] >= 200 + 200 // 4                  # RACK: its RTT + srtt/4


@pytest.mark.parametrize("ikcp_rules", [False, True])
def test_reordering_inside_the_window_is_not_taken_for_loss(ikcp_rules):
    """sn 40 takes 35 ms longer than the others (RTT 200 ms, a message every 10 ms): 41, 42 and
    43 overtake it and their ACKs come first. ikcp resends it after two of them; hpnlab's RACK
    rule waits the later segment's RTT plus srtt/4 and sees sn 40's own ACK first."""
    stats, sends = one_way_run(lambda sns, copy: 35 if 40 in sns else 0, ikcp_rules)
    assert stats["retransmits"] == 0
    if ikcp_rules:
        assert len(sends) == 2, sends
    else:
        assert len(sends) == 1 and stats["fast_retransmits"] == 0, sends


@pytest.mark.parametrize("ikcp_rules", [False, True])
def test_duplicate_pushes_are_acknowledged_by_una(ikcp_rules):
    """Every PUSH arrives twice: ikcp ACKs each copy; hpnlab ACKs a duplicate of what it has
    already delivered only through the una of what it sends anyway (one ACK if nothing)."""
    a, b = pair("fast", ikcp_rules=ikcp_rules)
    msgs = messages(200)
    assert run(a, b, Link(delay=(20, 20), dup=1.0, seed=1), msgs) == msgs
    acks = b.stats["bytes_ack"] // HEADER.size
    assert b.stats["duplicates"] >= 200
    if ikcp_rules:
        assert acks >= 400 and b.stats["dup_acks_saved"] == 0
    else:
        assert acks < 300 and b.stats["dup_acks_saved"] > 100
    assert a.stats["retransmits"] == a.stats["fast_retransmits"] == 0


def test_resend_census_counts_every_resend_by_what_became_of_the_earlier_copies():
    a, b = pair("fast", ikcp_rules=True)
    link = Link(loss=0.1, delay=(30, 62), seed=3, record=True)
    echo_scenario(a, b, link, 300)
    census = resend_census(link.log)
    assert sum(census.values()) == sum(p.stats["retransmits"] + p.stats["fast_retransmits"] for p in (a, b))
    assert census["needed"] > 0 and census["arrived"] > 0 and census["in flight"] > 0
    lossless = Link(delay=(30, 62), seed=3, record=True)
    echo_scenario(*pair("fast", ikcp_rules=True), lossless, 300)
    assert resend_census(lossless.log)["needed"] == 0
