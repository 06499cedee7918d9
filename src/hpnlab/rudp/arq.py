"""A sans-I/O ARQ (自动重传请求) over datagrams, wire-compatible with KCP (skywind3000's ikcp).

Every segment carries ikcp's 24-byte little-endian header

    conv u32 | cmd u8 | frg u8 | wnd u16 | ts u32 | sn u32 | una u32 | len u32 | data

and the protocol follows ikcp's rules (cumulative una plus one ACK per segment, RTO from the
measured RTT with backoff, no-delay mode, fast retransmit after `resend` later ACKs, an optional
congestion window, stream and message modes), so an `Arq` and a C ikcp talk to each other.
Two of ikcp's rules cost bytes for nothing, and hpnlab's own (`ikcp_rules=False`, the
default) change them without changing the wire: a fast retransmit that reordering cannot
trigger (RACK-like, `_fast_lost`), and no ACK segment for a duplicate PUSH the una already
covers; and in no-delay (fast) mode it sends what it owes (ACKs, new data) when the output
is taken, not at the next interval tick. `ikcp_rules=True` sends the very datagrams C ikcp
does, on ikcp's schedule.

Nothing here does I/O or reads a clock: the caller passes the time in milliseconds.

    arq = Arq(conv=1); arq.nodelay(1, 10, 2, True)
    arq.send(b"hello")
    arq.update(now_ms)               # due work: flushes when the interval has passed
    for datagram in arq.pop_output(): sock.send(datagram)
    arq.input(received, now_ms)      # False (and arq.stats counts why) if dropped; like
                                     # ikcp_input it times by the last update()'s clock
    msg = arq.recv()                 # a whole message (or stream bytes), or None

Bad input (a truncated or forged segment, another conv, a segment beyond the receive window)
is dropped and counted in `stats`, never raised.
"""
from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass, field

HEADER = struct.Struct("<IBBHIIII")
OVERHEAD = HEADER.size                          # 24
CMD_PUSH, CMD_ACK, CMD_WASK, CMD_WINS = 81, 82, 83, 84
ASK_SEND, ASK_TELL = 1, 2                       # probe flags: ask the peer's window / tell ours
RTO_NODELAY, RTO_MIN, RTO_DEFAULT, RTO_MAX = 30, 100, 200, 60000
PROBE_INIT, PROBE_LIMIT = 7000, 120000
MASK = 0xFFFFFFFF


def segments(datagram: bytes):
    """The header fields (conv, cmd, frg, wnd, ts, sn, una, len) of each segment in a
    well-formed datagram (a tool for taps and tests; input() checks what it reads)."""
    off = 0
    while off + OVERHEAD <= len(datagram):
        fields = HEADER.unpack_from(datagram, off)
        yield fields
        off += OVERHEAD + fields[7]


def diff(a: int, b: int) -> int:
    """a - b on the 32-bit circle (sequence numbers and timestamps wrap)."""
    return ((a - b + 0x80000000) & MASK) - 0x80000000


@dataclass(slots=True)
class Segment:
    sn: int
    frg: int
    data: bytes
    ts: int = 0
    resendts: int = 0
    rto: int = 0
    fastack: int = 0
    xmit: int = 0


@dataclass
class Arq:
    conv: int
    mtu: int = 1400
    snd_wnd: int = 32
    rcv_wnd: int = 128
    stream: bool = False
    isn: int = 0                    # first sequence number (both peers must agree; KCP's is 0)
    # True: ikcp's own loss and ACK rules and its flush schedule, the very same datagrams as
    # C ikcp (tests and the lab show the two cores alike with it). False, hpnlab's: the same
    # wire format, fewer bytes - a fast retransmit that reordering cannot trigger (_fast_lost)
    # and no ACK segment per duplicate PUSH (the una every segment carries acknowledges it) -
    # and in no-delay (fast) mode, what is owed leaves when the output is taken (pop_output).
    ikcp_rules: bool = False
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if not 0 <= self.conv <= MASK:
            raise ValueError(f"conv {self.conv} is not a 32-bit number")
        if self.mtu < 50:
            raise ValueError(f"mtu {self.mtu} is below 50 bytes")
        if not (1 <= self.snd_wnd <= 0xFFFF and 1 <= self.rcv_wnd <= 0xFFFF):
            raise ValueError("snd_wnd and rcv_wnd must be 1..65535 (the header's wnd is 16 bits)")
        self.mss = self.mtu - OVERHEAD
        self.snd_una = self.snd_nxt = self.rcv_nxt = self.isn & MASK
        self.rmt_wnd = 128
        self.cwnd, self.incr, self.ssthresh = 0, 0, 2
        self.srtt = self.rttval = 0
        self.rack_ts = self.rack_rtt = 0
        self.rto, self.minrto = RTO_DEFAULT, RTO_MIN
        self.interval, self.ts_flush, self.updated = 100, 100, False
        self.nodelay_mode, self.fastresend, self.fastlimit, self.nocwnd = 0, 0, 5, False
        self.probe, self.probe_wait, self.ts_probe = 0, 0, 0
        self.current = 0
        self.snd_queue: deque[Segment] = deque()
        self.snd_buf: deque[Segment] = deque()
        self.rcv_buf: list[Segment] = []          # out of order, sorted by sn
        self.rcv_queue: deque[Segment] = deque()  # in order, for recv()
        self.acklist: list[tuple[int, int]] = []
        self.dup_ack: tuple[int, int] | None = None     # the last duplicate PUSH since the flush
        self._out: list[bytes] = []

    # -- configuration ----------------------------------------------------------------------

    def nodelay(self, nodelay: int, interval: int, resend: int, nocwnd: bool) -> None:
        """ikcp_nodelay: KCP's 'normal' is (0, 10, 0, True), 'fast' (1, 10, 2, True)."""
        self.nodelay_mode = nodelay
        self.minrto = RTO_NODELAY if nodelay else RTO_MIN
        self.interval = min(max(interval, 10), 5000)
        self.fastresend = resend
        self.nocwnd = nocwnd

    # -- the user's side --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue a message (message mode) or bytes (stream mode)."""
        if not data:
            raise ValueError("nothing to send (empty data)")
        view = memoryview(bytes(data))
        if self.stream and self.snd_queue:
            last = self.snd_queue[-1]
            room = self.mss - len(last.data)
            if room > 0:
                last.data += bytes(view[:room])
                view = view[room:]
                if not view:
                    return
        count = max(1, -(-len(view) // self.mss))
        if count >= min(self.rcv_wnd, 256):
            raise ValueError(f"message of {len(data)} bytes needs {count} fragments; at most "
                             f"{min(self.rcv_wnd, 256) - 1} fit (mss {self.mss})")
        for i in range(count):
            chunk = bytes(view[i * self.mss:(i + 1) * self.mss])
            self.snd_queue.append(Segment(0, 0 if self.stream else count - i - 1, chunk))

    def peek_size(self) -> int:
        if not self.rcv_queue:
            return -1
        first = self.rcv_queue[0]
        if first.frg == 0:
            return len(first.data)
        if len(self.rcv_queue) < first.frg + 1:
            return -1
        size = 0
        for seg in self.rcv_queue:
            size += len(seg.data)
            if seg.frg == 0:
                break
        return size

    def recv(self) -> bytes | None:
        """The next whole message (stream mode: the next segment's bytes), or None."""
        if self.peek_size() < 0:
            return None
        recover = len(self.rcv_queue) >= self.rcv_wnd
        parts = []
        while self.rcv_queue:
            seg = self.rcv_queue.popleft()
            parts.append(seg.data)
            if seg.frg == 0:
                break
        self._move_rcv_buf()
        if recover and len(self.rcv_queue) < self.rcv_wnd:
            self.probe |= ASK_TELL          # our window reopened: tell the peer at once
        return b"".join(parts)

    @property
    def waiting(self) -> int:
        """Segments not yet acknowledged (queued or in flight)."""
        return len(self.snd_queue) + len(self.snd_buf)

    def pop_output(self) -> list[bytes]:
        """The datagrams to send now. In no-delay (fast) mode on hpnlab's rules, first flush
        what is owed (ACKs, new data the window takes) rather than at the next interval tick,
        as an application calling ikcp_flush would: an ACK and the reply queued after the
        input that caused it leave at once, in one datagram - up to a tick sooner, and fewer
        needless resends. ikcp itself (ikcp_rules) waits for the tick."""
        if self.nodelay_mode and not self.ikcp_rules and self.updated and (
                self.acklist or self.dup_ack or self.probe or self._window_open()):
            self.flush()
        out, self._out = self._out, []
        return out

    def _window_open(self) -> bool:
        """New data is queued and the send window would take some of it now."""
        cwnd = min(self.snd_wnd, self.rmt_wnd) if self.nocwnd else min(self.snd_wnd, self.rmt_wnd, self.cwnd)
        return bool(self.snd_queue) and diff(self.snd_nxt, (self.snd_una + cwnd) & MASK) < 0

    # -- the network's side -----------------------------------------------------------------

    def input(self, datagram: bytes, now: int) -> bool:
        """Take one received datagram (one or more segments). False if any of it was dropped.

        `now` is not read (it is the face's, which QUIC needs): as ikcp_input does, an RTT sample
        and whatever is flushed before the next update() use the clock of the last update().
        Stamping with the arrival time instead measured RTTs up to a loop's lag longer than
        ikcp's on the lab's loop (input between updates), and the two sent different bytes."""
        self.stats["datagrams_in"] += 1
        self.stats["bytes_in"] += len(datagram)
        prev_una = self.snd_una
        maxack, got_ack = 0, False
        off, ok = 0, True
        while off < len(datagram):
            if len(datagram) - off < OVERHEAD:
                return self._drop("truncated")
            conv, cmd, frg, wnd, ts, sn, una, length = HEADER.unpack_from(datagram, off)
            off += OVERHEAD
            if conv != self.conv:
                return self._drop("conv")
            if length > len(datagram) - off:
                return self._drop("truncated")
            if cmd not in (CMD_PUSH, CMD_ACK, CMD_WASK, CMD_WINS):
                return self._drop("cmd")
            if diff(una, self.snd_nxt) > 0:          # acknowledges what was never sent
                return self._drop("forged")
            data = bytes(datagram[off:off + length])
            off += length
            self.stats["segments_in"] += 1
            self.rmt_wnd = wnd
            if cmd == CMD_ACK:
                if diff(self.current, ts) >= 0:
                    self._update_rtt(diff(self.current, ts))
                    if diff(ts, self.rack_ts) >= 0:     # the latest-sent copy known delivered
                        self.rack_ts, self.rack_rtt = ts, diff(self.current, ts)
                # its sn before its una (which mostly covers it too): the ACK finds the segment
                if not self._parse_ack(sn, ts):
                    self.stats["stale_acks"] += 1
                if not got_ack or diff(sn, maxack) > 0:
                    maxack, got_ack = sn, True
            self._parse_una(una)
            if cmd == CMD_PUSH:
                if diff(sn, self.rcv_nxt + self.rcv_wnd) >= 0:
                    ok = self._drop("window")
                    continue
                if frg >= self.rcv_wnd and not self.stream:
                    ok = self._drop("forged")
                    continue
                if diff(sn, self.rcv_nxt) < 0 and not self.ikcp_rules:
                    # una covers it: one ACK, and only if nothing else goes out (flush)
                    self.stats["dup_acks_saved"] += self.dup_ack is not None
                    self.dup_ack = (sn, ts)
                else:
                    self.acklist.append((sn, ts))
                if diff(sn, self.rcv_nxt) >= 0:
                    self._parse_data(Segment(sn, frg, data, ts))
                else:
                    self.stats["duplicates"] += 1
            elif cmd == CMD_WASK:
                self.probe |= ASK_TELL
        if got_ack:
            self._parse_fastack(maxack)
        if diff(self.snd_una, prev_una) > 0 and self.cwnd < self.rmt_wnd:
            self._grow_cwnd()
        return ok

    def _drop(self, why: str) -> bool:
        self.stats[f"dropped_{why}"] += 1
        return False

    def _update_rtt(self, rtt: int) -> None:
        if self.srtt == 0:
            self.srtt, self.rttval = rtt, rtt // 2
        else:
            self.rttval = (3 * self.rttval + abs(rtt - self.srtt)) // 4
            self.srtt = max(1, (7 * self.srtt + rtt) // 8)
        rto = self.srtt + max(self.interval, 4 * self.rttval)
        self.rto = min(max(self.minrto, rto), RTO_MAX)

    def _parse_una(self, una: int) -> None:
        while self.snd_buf and diff(una, self.snd_buf[0].sn) > 0:
            self.snd_buf.popleft()
        self._shrink()

    def _shrink(self) -> None:
        self.snd_una = self.snd_buf[0].sn if self.snd_buf else self.snd_nxt

    def _parse_ack(self, sn: int, ts: int) -> bool:
        if diff(sn, self.snd_una) < 0 or diff(sn, self.snd_nxt) >= 0:
            return False
        for i, seg in enumerate(self.snd_buf):
            if seg.sn == sn:
                if seg.xmit > 1 and ts != seg.ts:     # it echoes an earlier copy's time (Eifel's
                    self.stats["spurious_seen"] += 1  # test): the last resend was not needed
                del self.snd_buf[i]
                self._shrink()
                return True
            if diff(sn, seg.sn) < 0:
                break
        return False

    def _fast_lost(self, seg: Segment, now: int, resent: int) -> bool:
        """Fast retransmit: is `seg` lost, before its RTO says so?

        ikcp: once `resent` ACKs of later segments came in. But a link whose delay varies more
        than the gap between two sends reorders them, and later ACKs come first though nothing
        was lost (KCP's scenario: one-way 30-62 ms, a message every 20 ms); and after a resend,
        the ACKs of segments sent before it count again, so a resent segment is sent once more
        some 40 ms later, before its own ACK could be back. On the virtual clock nine in ten
        fast resends were not needed.

        hpnlab: a first resend (RACK, RFC 8985) once a segment sent after this one has been
        acknowledged and this one has been out longer than that segment's RTT plus a
        reordering window of srtt/4 - what reordering can explain, it waits out. A further
        resend: ikcp's rule, but not within srtt/2 of the last send (the ACKs that arrive
        sooner are of segments sent before it, and say nothing of it); kept this eager, it is
        what bounds the worst case when a resend is lost too."""
        if self.ikcp_rules or self.fastresend <= 0:     # (off: resent is 2**32 - 1)
            return seg.fastack >= resent
        age = diff(now, seg.ts)
        if seg.xmit == 1:
            return seg.fastack > 0 and diff(self.rack_ts, seg.ts) > 0 and age >= self.rack_rtt + self.srtt // 4
        return seg.fastack >= resent and age >= self.srtt // 2

    def _parse_fastack(self, sn: int) -> None:
        if diff(sn, self.snd_una) < 0 or diff(sn, self.snd_nxt) >= 0:
            return
        for seg in self.snd_buf:            # a later segment was acked: these were skipped
            if diff(sn, seg.sn) <= 0:
                break
            seg.fastack += 1

    def _parse_data(self, new: Segment) -> None:
        buf = self.rcv_buf
        i = len(buf)
        while i > 0 and diff(buf[i - 1].sn, new.sn) > 0:
            i -= 1
        if i > 0 and buf[i - 1].sn == new.sn:
            self.stats["duplicates"] += 1
        else:
            buf.insert(i, new)
        self._move_rcv_buf()

    def _move_rcv_buf(self) -> None:
        while self.rcv_buf and self.rcv_buf[0].sn == self.rcv_nxt and len(self.rcv_queue) < self.rcv_wnd:
            self.rcv_queue.append(self.rcv_buf.pop(0))
            self.rcv_nxt = (self.rcv_nxt + 1) & MASK

    def _grow_cwnd(self) -> None:
        mss = self.mss
        if self.cwnd < self.ssthresh:
            self.cwnd += 1
            self.incr += mss
        else:
            self.incr = max(self.incr, mss)
            self.incr += (mss * mss) // self.incr + mss // 16
            if (self.cwnd + 1) * mss <= self.incr:
                self.cwnd = (self.incr + mss - 1) // mss if mss > 0 else self.cwnd + 1
        if self.cwnd > self.rmt_wnd:
            self.cwnd, self.incr = self.rmt_wnd, self.rmt_wnd * mss

    # -- time -------------------------------------------------------------------------------

    def update(self, now: int) -> None:
        """Call often (every `interval` ms at least): flushes when the interval has passed."""
        self.current = now & MASK
        if not self.updated:
            self.updated, self.ts_flush = True, self.current
        slap = diff(self.current, self.ts_flush)
        if slap >= 10000 or slap < -10000:
            self.ts_flush, slap = self.current, 0
        if slap >= 0:
            self.ts_flush = (self.ts_flush + self.interval) & MASK
            if diff(self.current, self.ts_flush) >= 0:
                self.ts_flush = (self.current + self.interval) & MASK
            self.flush()

    def check(self, now: int) -> int:
        """Milliseconds until update() has work (0: now)."""
        now &= MASK
        if not self.updated:
            return 0
        until = diff(self.ts_flush, now)
        if until <= -10000:
            return 0
        for seg in self.snd_buf:
            until = min(until, diff(seg.resendts, now))
        return max(0, min(until, self.interval))

    def flush(self) -> None:
        if not self.updated:
            return
        now, wnd = self.current, max(0, self.rcv_wnd - len(self.rcv_queue))
        buf = bytearray()

        def emit(cmd: int, frg: int, ts: int, sn: int, data: bytes = b"", kind: str = "ack") -> None:
            nonlocal buf
            if len(buf) + OVERHEAD + len(data) > self.mtu:
                self._emit(buf)
                buf = bytearray()
            buf += HEADER.pack(self.conv, cmd, frg, wnd, ts, sn, self.rcv_nxt, len(data))
            buf += data
            self.stats["segments_out"] += 1
            self.stats[f"bytes_{kind}"] += OVERHEAD + len(data)     # the wire bytes by why

        for sn, ts in self.acklist:
            emit(CMD_ACK, 0, ts, sn)
        self.acklist.clear()

        if self.rmt_wnd == 0:                 # the peer's window is shut: ask now and then
            if self.probe_wait == 0:
                self.probe_wait, self.ts_probe = PROBE_INIT, (now + PROBE_INIT) & MASK
            elif diff(now, self.ts_probe) >= 0:
                self.probe_wait = min(PROBE_LIMIT, max(self.probe_wait, PROBE_INIT) * 3 // 2)
                self.ts_probe = (now + self.probe_wait) & MASK
                self.probe |= ASK_SEND
        else:
            self.probe_wait = self.ts_probe = 0
        if self.probe & ASK_SEND:
            emit(CMD_WASK, 0, 0, 0, kind="probe")
        if self.probe & ASK_TELL:
            emit(CMD_WINS, 0, 0, 0, kind="probe")
        self.probe = 0

        cwnd = min(self.snd_wnd, self.rmt_wnd)
        if not self.nocwnd:
            cwnd = min(self.cwnd, cwnd)
        while self.snd_queue and diff(self.snd_nxt, (self.snd_una + cwnd) & MASK) < 0:
            seg = self.snd_queue.popleft()
            seg.sn, self.snd_nxt = self.snd_nxt, (self.snd_nxt + 1) & MASK
            self.snd_buf.append(seg)

        resent = self.fastresend if self.fastresend > 0 else MASK
        rtomin = 0 if self.nodelay_mode else self.rto >> 3
        lost = change = False
        for seg in self.snd_buf:
            if seg.xmit == 0:
                seg.rto = self.rto
                seg.resendts = (now + seg.rto + rtomin) & MASK
                kind = "push_new"
            elif diff(now, seg.resendts) >= 0:                      # timed out: back off
                if self.nodelay_mode == 0:
                    seg.rto += max(seg.rto, self.rto)
                else:
                    seg.rto += (seg.rto if self.nodelay_mode < 2 else self.rto) // 2
                seg.resendts = (now + seg.rto) & MASK
                lost = True
                self.stats["retransmits"] += 1
                kind = "push_rto"
            elif self._fast_lost(seg, now, resent) and (seg.xmit <= self.fastlimit or self.fastlimit <= 0):
                seg.fastack = 0
                seg.resendts = (now + seg.rto) & MASK
                change = True
                self.stats["fast_retransmits"] += 1
                kind = "push_fast"
            else:
                continue
            seg.xmit += 1
            seg.ts = now
            emit(CMD_PUSH, seg.frg, now, seg.sn, seg.data, kind)
        if self.dup_ack is not None:
            if buf:                           # its una already says so
                self.stats["dup_acks_saved"] += 1
            else:
                emit(CMD_ACK, 0, self.dup_ack[1], self.dup_ack[0])
            self.dup_ack = None
        if buf:
            self._emit(buf)

        if change:
            inflight = diff(self.snd_nxt, self.snd_una)
            self.ssthresh = max(2, inflight // 2)
            self.cwnd, self.incr = self.ssthresh + resent, (self.ssthresh + resent) * self.mss
        if lost:
            self.ssthresh = max(2, cwnd // 2)
            self.cwnd, self.incr = 1, self.mss
        if self.cwnd < 1:
            self.cwnd, self.incr = 1, self.mss

    def _emit(self, buf: bytearray) -> None:
        self._out.append(bytes(buf))
        self.stats["datagrams_out"] += 1
        self.stats["bytes_out"] += len(buf)


MODES = {                       # KCP's test.cpp: ikcp_nodelay arguments per mode
    "default": (0, 10, 0, False),
    "normal": (0, 10, 0, True),
    "fast": (1, 10, 2, True),
}
