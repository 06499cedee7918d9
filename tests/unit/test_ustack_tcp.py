"""TCP of the user-space stack, two stacks wired back to back on a virtual clock: the
handshake, transfer with loss (RTO, fast retransmit, NewReno), simultaneous open and
close, TIME_WAIT, RFC 5961 challenge ACKs, window scaling and timestamps, zero window
and persist probes, keep-alives, SYN backlog and accept queue bounds; epoll LT/ET on the
socket API; the red-black tree; and a fuzz run of malformed frames."""
from __future__ import annotations

import errno
import hashlib
import random

import pytest

from hpnlab.ustack import fuzz
from hpnlab.ustack.epoll import EPOLLET, EPOLLIN, EPOLLOUT, Epoll
from hpnlab.ustack.proto import ether, ipv4
from hpnlab.ustack.proto.tcp import Options
from hpnlab.ustack.proto.tcp import segment as tcpseg
from hpnlab.ustack.rbtree import RBTree
from hpnlab.ustack.sockets import Net
from hpnlab.ustack.stack import Stack

A_MAC, B_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


class Wire:
    """Two stacks and a clock; `drop(frame, direction)` decides losses."""

    def __init__(self, drop=None):
        self.a = Stack(A_MAC, "10.0.0.1")
        self.b = Stack(B_MAC, "10.0.0.2")
        self.t = 0.0
        self.drop = drop or (lambda f, d: False)
        self.log: list[tuple[str, object]] = []

    def segs(self, direction):
        return [s for d, s in self.log if d == direction]

    def _deliver(self, frames, to, direction):
        for f in frames:
            fr = ether.parse(f)
            if fr.ethertype == ether.TYPE_IPV4:
                p = ipv4.parse(fr.payload)
                if p.proto == 6:
                    self.log.append((direction, tcpseg.parse(p.payload, p.src, p.dst)))
            if not self.drop(f, direction):
                to.receive(f, self.t)

    def pump(self, until=None, limit: float = 120.0):
        end = self.t + limit
        while self.t < end:
            ta, tb = self.a.take_tx(), self.b.take_tx()
            if ta or tb:
                self._deliver(ta, self.b, "ab")
                self._deliver(tb, self.a, "ba")
                continue
            if until is not None and until():
                return True
            nxt = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
            step = min(nxt) - self.t if nxt else None
            if until is None and (step is None or step > 1.0):
                return True
            self.t += max(0.0005, min(step if step is not None else 0.01, 0.01))
            self.a.tick(self.t)
            self.b.tick(self.t)
        return until() if until else True


def connect(w, opts_a=None, opts_b=None, backlog=8):
    lst = w.b.tcp.listen((w.b.ip, 80), backlog, opts_b or Options())
    c = w.a.tcp.connect((w.a.ip, 40000), (w.b.ip, 80), opts_a or Options(), w.t)
    w.pump(lambda: c.state == "ESTABLISHED" and lst.accept_queue)
    return c, lst.accept(), lst


def transfer(w, src, dst, data):
    got, sent = bytearray(), 0
    while len(got) < len(data):
        if sent < len(data):
            sent += src.send(memoryview(data)[sent:], w.t)
        w.pump(lambda: bool(dst.rcvbuf) or dst.error is not None, limit=60)
        got += dst.recv(1 << 20, w.t)
        assert dst.error is None and src.error is None
    return bytes(got)


def test_handshake_options_and_transfer():
    w = Wire()
    c, s, _ = connect(w)
    syn = w.segs("ab")[0]
    assert syn.flags == tcpseg.SYN and syn.mss == 1460 and syn.wscale is not None and syn.tsval is not None
    assert c.ts_ok and s.ts_ok and c.snd_wscale == s.rcv_wscale and c.mss == 1448
    data = random.randbytes(3 << 20)
    assert transfer(w, c, s, data) == data
    assert c.stats["retransmits"] == 0 and c.rto.srtt is not None
    assert all(len(x.payload) <= 1448 for x in w.segs("ab"))


def test_loss_recovery_fast_retransmit_and_rto():
    rng = random.Random(5)

    def drop(f, d):
        return len(f) > 200 and rng.random() < 0.05     # 5 % of data segments
    w = Wire(drop)
    c, s, _ = connect(w)
    data = random.randbytes(2 << 20)
    got = transfer(w, c, s, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert c.cc.events.get("fast_retransmit", 0) >= 1 and c.stats["retransmits"] >= 1
    assert c.cc.ssthresh < 1 << 30


def test_header_prediction_changes_nothing_on_the_wire(monkeypatch):
    """The fast path (Connection._predicted) takes nearly all of a clean bulk transfer's
    segments and sends exactly the bytes the full path would: the same transfer, with the
    same losses, run with and without it gives the same frames both ways."""
    from hpnlab.ustack.proto.tcp.connection import Connection

    def run(loss):
        rng = random.Random(11)
        frames = []

        def drop(f, d):
            frames.append((d, bytes(f)))
            return len(f) > 200 and rng.random() < loss     # data segments: fast retransmit, NewReno, RTO
        w = Wire(drop)
        w.a.tcp._secret = w.b.tcp._secret = b"k" * 16        # the same ISNs both runs
        c, s, _ = connect(w)
        data = random.Random(3).randbytes(1 << 20)
        assert c.send(data, w.t) == len(data)
        c.shutdown_write(w.t)                               # FIN_WAIT_1 with the whole buffer in flight
        got = bytearray()
        while not s.fin_received:
            w.pump(lambda: bool(s.rcvbuf) or s.fin_received, limit=60)
            got += s.recv(1 << 20, w.t)
        s.close(w.t)
        w.pump(lambda: c.state == "TIME_WAIT" and s.state == "CLOSED")
        assert got == data and c.state == "TIME_WAIT" and s.state == "CLOSED"
        return frames, c.stats, s.stats
    _, c_clean, s_clean = run(0.0)
    assert c_clean["predicted"] > 0.9 * c_clean["segs_in"] and s_clean["predicted"] > 0.9 * s_clean["segs_in"]
    fast, c_fast, s_fast = run(0.02)
    monkeypatch.setattr(Connection, "_predicted", lambda self, seg, now: False)
    full, c_full, s_full = run(0.02)
    assert c_full["predicted"] == s_full["predicted"] == 0 and c_fast["predicted"] > 0 and s_fast["predicted"] > 0
    assert c_fast["retransmits"] > 0 and c_fast["retransmits"] == c_full["retransmits"]
    assert len(fast) == len(full) and fast == full


def test_rto_backoff_and_karn():
    w = Wire()
    c, s, _ = connect(w)
    w.drop = lambda f, d: d == "ab"                 # black hole
    c.send(b"x" * 100, w.t)
    rtos = []
    for _ in range(4):
        before = c.stats["retransmits"]
        w.pump(lambda before=before: c.stats["retransmits"] > before, limit=200)
        rtos.append(c.rto.rto)
    assert rtos == sorted(rtos) and rtos[-1] >= 4 * rtos[0] * 0.99 and c.rtt_seq is None
    w.drop = lambda f, d: False
    w.pump(lambda: c.flight == 0, limit=200)
    assert s.recv(1000, w.t) == b"x" * 100


def test_simultaneous_open_and_close():
    w = Wire()
    ca = w.a.tcp.connect((w.a.ip, 5000), (w.b.ip, 6000), Options(), w.t)
    cb = w.b.tcp.connect((w.b.ip, 6000), (w.a.ip, 5000), Options(), w.t)
    w.pump(lambda: ca.state == cb.state == "ESTABLISHED")
    for c in (ca, cb):
        assert [s for _, s in c.history] == ["CLOSED", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"]
    ca.close(w.t)
    cb.close(w.t)
    w.pump(lambda: ca.state == cb.state == "TIME_WAIT")
    for c in (ca, cb):
        assert "CLOSING" in [s for _, s in c.history]
    w.pump(lambda: ca.state == "CLOSED", limit=200)
    assert (w.a.ip, 5000, w.b.ip, 6000) not in w.a.tcp.conns


def test_normal_close_time_wait_on_active_side():
    w = Wire()
    c, s, _ = connect(w)
    c.close(w.t)
    w.pump(lambda: s.state == "CLOSE_WAIT")
    s.close(w.t)
    w.pump(lambda: s.state == "CLOSED" and c.state == "TIME_WAIT")
    assert [x for _, x in c.history][-3:] == ["FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT"]
    # a retransmitted FIN in TIME_WAIT gets its ACK again
    fin = [x for x in w.segs("ba") if x.flags & tcpseg.FIN][-1]
    n = len(w.segs("ab"))
    w.a.tcp.input(fin, w.b.ip, w.a.ip, w.t)
    w.pump()
    assert len(w.segs("ab")) == n + 1 and w.segs("ab")[-1].flags == tcpseg.ACK


def test_rfc5961_challenge_acks():
    w = Wire()
    c, _s, _ = connect(w)
    # an in-window RST that is not exactly rcv_nxt: challenge ACK, connection lives
    w.a.tcp.input(tcpseg.Segment(80, 40000, (c.rcv_nxt + 100) & 0xFFFFFFFF, 0, tcpseg.RST, 0, b""),
                  w.b.ip, w.a.ip, w.t)
    assert c.state == "ESTABLISHED" and c.stats["challenge_acks"] == 1
    # a SYN on an established connection: challenge ACK too
    w.a.tcp.input(tcpseg.Segment(80, 40000, c.rcv_nxt, 0, tcpseg.SYN, 1000, b""), w.b.ip, w.a.ip, w.t)
    assert c.state == "ESTABLISHED" and c.stats["challenge_acks"] == 2
    # the exact RST resets
    w.a.tcp.input(tcpseg.Segment(80, 40000, c.rcv_nxt, 0, tcpseg.RST, 0, b""), w.b.ip, w.a.ip, w.t)
    assert c.state == "CLOSED" and c.error == errno.ECONNRESET


def test_zero_window_persist_then_reopen():
    w = Wire()
    c, s, _ = connect(w, opts_b=Options(rcvbuf=16384))
    data = random.randbytes(100000)
    sent = c.send(data, w.t)
    w.pump(lambda: c.snd_wnd == 0 and c.flight == 0, limit=10)
    w.pump(lambda: c.stats["zero_window_probes"] >= 2, limit=30)
    assert c.persist_timer is not None and len(s.rcvbuf) == 16384
    got = bytearray()
    while len(got) < len(data):
        got += s.recv(1 << 20, w.t)
        if sent < len(data):
            sent += c.send(data[sent:], w.t)
        w.pump(lambda: bool(s.rcvbuf), limit=30)
    assert bytes(got) == data


def test_keepalive_probes_and_timeout():
    w = Wire()
    c, _s, _ = connect(w, opts_a=Options(keepalive=True, keepidle=10, keepintvl=2, keepcnt=3))
    c.arm_keepalive(w.t)
    w.pump(lambda: c.stats["keepalive_probes"] >= 1, limit=30)
    w.pump(lambda: False, limit=5)
    assert c.state == "ESTABLISHED" and c.keep_probes <= 1        # the peer's ACKs answer each probe
    w.drop = lambda f, d: d == "ba"
    w.pump(lambda: c.state == "CLOSED", limit=60)
    assert c.error == errno.ETIMEDOUT


def test_syn_backlog_and_accept_queue_are_bounded():
    """With SYN cookies off (tcp_syncookies = 0), a full half-open queue drops SYNs."""
    w = Wire()
    w.b.tcp.syncookies = False
    lst = w.b.tcp.listen((w.b.ip, 80), 2, Options(), syn_backlog=4)
    # a SYN flood from many ports, answers never come back: the half-open queue stays at 4
    w.drop = lambda f, d: d == "ba"
    for port in range(1000, 1100):
        w.b.tcp.input(tcpseg.Segment(port, 80, port * 1000, 0, tcpseg.SYN, 1000, b""), w.a.ip, w.b.ip, w.t)
    assert len(lst.syn_queue) == 4 and lst.counters["syn_dropped_syn_queue_full"] == 96
    w.pump(lambda: not lst.syn_queue, limit=200)                  # half-open ones give up
    w.drop = lambda f, d: False
    conns = [w.a.tcp.connect((w.a.ip, 2000 + i), (w.b.ip, 80), Options(), w.t) for i in range(5)]
    w.pump(lambda: False, limit=3)
    assert len(lst.accept_queue) == 3                             # backlog + 1, as Linux
    assert sum(c.state == "ESTABLISHED" for c in conns) >= 3


def _flood(w, n: int, start: int = 0) -> None:
    """n SYNs to port 80 of b from ports/ISNs nobody answers for; their SYN-ACKs go nowhere."""
    for i in range(start, start + n):
        w.b.tcp.input(tcpseg.Segment(1024 + i % 60000, 80, i * 7919 & 0xFFFFFFFF, 0, tcpseg.SYN, 64240, b""),
                      bytes([10, 0, 1 + i // 60000 % 200, 1]), w.b.ip, w.t)
        if i % 1000 == 0:
            w.b.take_tx()
    w.b.take_tx()


def test_syn_flood_keeps_no_state_and_a_client_still_connects():
    """Past the half-open bound every SYN gets a cookie and leaves nothing behind: the
    stack's memory does not grow with the flood, and a real client then connects through
    a cookie (its MSS and, riding in the timestamps, its window scale intact)."""
    import tracemalloc
    w = Wire()
    w.b.gateway = w.a.ip                                    # the flood's made-up sources route via a
    lst = w.b.tcp.listen((w.b.ip, 80), 128, Options(), syn_backlog=16)
    tracemalloc.start()
    _flood(w, 1000)
    before = tracemalloc.get_traced_memory()[0]
    _flood(w, 10000, start=1000)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(lst.syn_queue) == 16 and len(w.b.tcp.conns) == 16
    assert lst.counters["syncookies_sent"] == 11000 - 16 and grown < 64 << 10, grown
    c = w.a.tcp.connect((w.a.ip, 40000), (w.b.ip, 80), Options(), w.t)
    w.pump(lambda: c.state == "ESTABLISHED" and lst.accept_queue)
    s = lst.accept()
    assert lst.counters["syncookies_accepted"] == 1 and [x for _, x in s.history] == ["CLOSED", "ESTABLISHED"]
    assert s.peer_mss == 1460 and s.ws_ok and s.snd_wscale == c.rcv_wscale and s.rcv_wscale == c.snd_wscale > 0
    data = random.randbytes(1 << 20)
    assert transfer(w, c, s, data) == data and transfer(w, s, c, data[:100000]) == data[:100000]


def test_syn_flood_from_many_neighbours_keeps_arp_bounded():
    """SYNs from 5,000 made-up on-link addresses: each SYN-ACK needs ARP, and the ARP
    cache keeps at most 256 resolutions pending (then the SYN-ACK is dropped)."""
    w = Wire()
    w.b = Stack(B_MAC, "10.0.0.2", 16)
    w.b.tcp.listen((w.b.ip, 80), 128, Options(), syn_backlog=16)
    for i in range(5000):
        src = bytes([10, 0, 1 + i // 250, 1 + i % 250])
        w.b.tcp.input(tcpseg.Segment(1024 + i, 80, i, 0, tcpseg.SYN, 64240, b""), src, w.b.ip, w.t)
        w.b.take_tx()
    assert len(w.b.arp.pending) == 256 and w.b.counters["arp.pending_full"] == 5000 - 256
    for t in (1.01, 2.02, 3.03):                      # unanswered: the retries give up, the table empties
        w.b.tick(t)
    assert not w.b.arp.pending and len(w.b.tcp.conns) == 16


def test_syn_cookie_without_timestamps_and_forged_acks():
    w = Wire()
    lst = w.b.tcp.listen((w.b.ip, 80), 8, Options(), syn_backlog=0)     # every SYN gets a cookie
    c = w.a.tcp.connect((w.a.ip, 40001), (w.b.ip, 80), Options(timestamps=False), w.t)
    w.pump(lambda: c.state == "ESTABLISHED" and lst.accept_queue)
    s = lst.accept()
    # no timestamps to carry it: no window scaling (Linux's choice), the MSS from the table
    assert not s.ws_ok and not s.ts_ok and not c.ws_ok and s.peer_mss == 1460 and s.snd_wscale == 0
    assert transfer(w, c, s, b"through a cookie") == b"through a cookie"
    # ACKs that return no valid cookie: a reset, nothing queued
    rsts = w.b.counters["tcp.rst_sent"]
    for port in range(2000, 2050):
        w.b.tcp.input(tcpseg.Segment(port, 80, 5000, random.getrandbits(32), tcpseg.ACK, 1000, b""),
                      w.a.ip, w.b.ip, w.t)
    assert w.b.counters["tcp.syncookie_failed"] == 50 and w.b.counters["tcp.rst_sent"] == rsts + 50
    assert not lst.accept_queue and lst.counters["syncookies_accepted"] == 1


def test_cookie_connection_echoes_the_timestamp_of_the_clients_next_segment():
    """A connection a SYN cookie made has acknowledged the client's SYN (our cookie SYN-ACK
    did), so its Last.ACK.sent is the client's ISN + 1: the client's next segment refreshes
    TS.Recent (RFC 7323 §4.3) and our ACK echoes that segment's TSval. Echoing the older
    handshake ACK's instead inflates the client's RTT (by how long its data took to get
    through, e.g. retransmissions through an overflowing ring) and so its RTO."""
    from hpnlab.ustack.proto.tcp import syncookie
    w = Wire()
    lst = w.b.tcp.listen((w.b.ip, 80), 8, Options(), syn_backlog=0)     # every SYN gets a cookie
    isn, key = 1000, (w.b.ip, 80, w.a.ip, 40000)       # an ISN past 0 in sequence space

    def seg(seq, ack, flags, payload, tsval, tsecr):
        s = tcpseg.Segment(40000, 80, seq, ack, flags, 502, payload)
        s.tsval, s.tsecr = tsval, tsecr
        return s
    syn = seg(isn, 0, tcpseg.SYN, b"", 100, 0)
    syn.mss, syn.wscale = 1460, 7
    w.b.tcp.input(syn, w.a.ip, w.b.ip, w.t)
    cookie, _ = w.b.tcp.cookies.make(key, isn, 1460, w.t)
    echo = syncookie.ts_encode(int(w.t * 1000), 7)
    w.b.tcp.input(seg(isn + 1, cookie + 1, tcpseg.ACK, b"", 101, echo), w.a.ip, w.b.ip, w.t)
    s = lst.accept_queue[0]
    assert s.ws_ok and s.snd_wscale == 7 and s.ts_recent == 101
    w.b.take_tx()
    w.t = 3.0                                          # the data got through 3 s later
    w.b.tcp.input(seg(isn + 1, cookie + 1, tcpseg.ACK | tcpseg.PSH, b"x" * 20, 3101, echo), w.a.ip, w.b.ip, w.t)
    assert s.ts_recent == 3101
    sent: list = []
    w.b.tcp.emit = lambda dst, raw: sent.append(raw)
    s.send_ack(w.t)                                    # what our ACK of it echoes
    ack = tcpseg.parse(sent[-1], w.b.ip, w.a.ip)
    assert (ack.tsval, ack.tsecr) == (3000, 3101)


def test_cookie_encodes_mss_and_expires():
    from hpnlab.ustack.proto.tcp import syncookie
    jar = syncookie.CookieJar()
    key = (bytes([10, 0, 0, 2]), 80, bytes([10, 0, 0, 1]), 40000)
    for mss, want in ((1460, 1460), (9000, 1460), (1400, 1300), (536, 536), (100, 536)):
        isn, got = jar.make(key, 12345, mss, 1000.0)
        assert got == want and jar.check(key, 12345, isn, 1000.0 + 50) == want
        assert jar.check(key, 12345, isn, 1000.0 + 200) is None           # older than two periods
        assert jar.check(key, 99999, isn, 1000.0) is None                  # another client ISN
        assert jar.check((key[0], 80, key[2], 40001), 12345, isn, 1000.0) is None
    for ws in (None, 0, 7, 14):
        ts = syncookie.ts_encode(123456789, ws)
        assert ts <= 123456789 and syncookie.ts_decode(ts) == ws


def make_net(stack):
    class NoLoop:
        def __init__(self, stack):
            self.stack, self.t = stack, 0.0

        def clock(self):
            return self.t

        def flush(self):
            pass

        def process(self, now=None):
            return 0

        def run_once(self, timeout=None):
            self.t += timeout or 0.01
            return 0

        def run_until(self, done, timeout=None):
            return done()
    return Net(NoLoop(stack))


@pytest.mark.parametrize("interest", ["rbtree", "dict"])
def test_epoll_level_and_edge_triggered(interest):
    w = Wire()
    na, nb = make_net(w.a), make_net(w.b)
    ls = nb.socket()
    ls.setblocking(False)
    ls.bind(("", 80))
    ls.listen(4)
    ep = Epoll(nb, interest)
    ep.register(ls.fd, EPOLLIN)
    assert ep.wait(8, 0) == []
    cs = na.socket()
    cs.setblocking(False)
    assert cs.connect_ex(("10.0.0.2", 80)) == errno.EINPROGRESS
    w.pump(lambda: bool(ls.listener.accept_queue))
    assert ep.wait(8, 0) == [(ls.fd, EPOLLIN)]
    ss, _ = ls.accept()
    ss.setblocking(False)
    with pytest.raises(OSError) as e:
        ss.recv(10)
    assert e.value.errno == errno.EAGAIN
    lt, et = Epoll(nb, interest), Epoll(nb, interest)
    lt.register(ss.fd, EPOLLIN)
    et.register(ss.fd, EPOLLIN | EPOLLET)
    cs.send(b"hello")
    w.pump()
    assert lt.wait(8, 0) == [(ss.fd, EPOLLIN)] and et.wait(8, 0) == [(ss.fd, EPOLLIN)]
    # not read: LT reports again, ET does not until new data arrives
    assert lt.wait(8, 0) == [(ss.fd, EPOLLIN)] and et.wait(8, 0) == []
    cs.send(b" again")
    w.pump()
    assert et.wait(8, 0) == [(ss.fd, EPOLLIN)]
    assert ss.recv(100) == b"hello again"
    assert lt.wait(8, 0) == []
    lt.modify(ss.fd, EPOLLOUT)
    assert lt.wait(8, 0) == [(ss.fd, EPOLLOUT)]
    cs.close()
    w.pump()
    assert ss.recv(100) == b""


def test_rbtree_invariants_and_order():
    t, d = RBTree(), {}
    rng = random.Random(1)
    for i in range(3000):
        k = rng.randrange(1000)
        if rng.random() < 0.6:
            t[k] = d[k] = i
        elif k in d:
            del t[k], d[k]
        if i % 100 == 0:
            t.black_height()
    assert list(t.items()) == sorted(d.items()) and len(t) == len(d)
    t.black_height()


def test_fuzz_malformed_frames_never_raise():
    """100,000 frames through receive(): seeds made by scapy (header fields and TCP
    options at random, one checksum/length/option wrong) and the stack's own frames of a
    live connection, cut short, bytes flipped, lengths and options overwritten
    (ustack.fuzz). Nothing raises out of receive(), nothing is counted as an internal
    error, the parsers' checks each turned some away, and the connection still works."""
    w = Wire()
    c, s, _ = connect(w)
    seeds = _sample_frames(w) + fuzz.scapy_frames("02:00:00:00:00:02", "02:00:00:00:00:01", "10.0.0.2",
                                                  "10.0.0.1", 600, seed=14)
    rng = random.Random(20261201)
    frames = 0
    for i in range(100000):
        f = rng.choice(seeds)
        w.b.receive(f if i % 10 == 9 else fuzz.mutate(f, rng, i), w.t)   # a tenth go in whole
        w.b.take_tx()
        frames += 1
    assert frames == 100000
    assert "stack.internal_error" not in w.b.counters, w.b.last_error
    drops = {k for k in w.b.counters if ".drop." in k}
    assert {"ether.drop.truncated", "ipv4.drop.bad_checksum", "ipv4.drop.bad_total_length", "tcp.drop.bad_checksum",
            "tcp.drop.bad_option", "tcp.drop.bad_data_offset", "udp.drop.bad_length", "icmp.drop.bad_type",
            "arp.drop.bad_format"} <= drops, drops
    data = random.randbytes(200000)
    assert transfer(w, c, s, data) == data


def _sample_frames(w):
    frames = []
    orig = w.b.receive

    def keep(f, now, csum_ok=False):
        frames.append(bytes(f))
        orig(f, now, csum_ok)
    w.b.receive = keep
    c = w.a.tcp.connect((w.a.ip, 41000), (w.b.ip, 80), Options(), w.t)
    w.pump(lambda: c.state == "ESTABLISHED")
    c.send(b"x" * 3000, w.t)
    w.a.ping(w.b.ip, 1, 1, b"p" * 100)
    w.a.send_udp(w.b.ip, 1, 9, b"u" * 50)
    w.a.send_ip(w.b.ip, 17, b"z" * 3000, df=False)              # fragments
    w.pump()
    w.b.receive = orig
    return frames
