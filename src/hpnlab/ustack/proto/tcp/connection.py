"""One TCP connection (RFC 9293 §3.10): the state machine, sending with retransmission,
congestion control, delayed ACKs, Nagle, the persist timer, keep-alives and TIME_WAIT.

The connection never does I/O: it hands finished segments to `layer.emit` and gets time
as `now`. Sequence numbers are modulo 2**32; `_d(a, b)` is a - b in that space.
"""
from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from .congestion import NewReno
from .rto import RtoEstimator
from .segment import ACK, FIN, HEADER, OPT_NOP, OPT_TS, PSH, RST, SYN, TS_OPTION, Segment, build, options

if TYPE_CHECKING:
    from . import Listener

M = 0xFFFFFFFF

CLOSED, LISTEN, SYN_SENT, SYN_RECEIVED, ESTABLISHED = "CLOSED", "LISTEN", "SYN_SENT", "SYN_RECEIVED", "ESTABLISHED"
FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT = (
    "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT")
SYNCHRONIZED = {ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT}
CAN_SEND = {ESTABLISHED, CLOSE_WAIT}
CAN_QUEUE = CAN_SEND | {SYN_SENT, SYN_RECEIVED}            # send() may queue data before the handshake ends
CAN_OUTPUT = {ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK}   # data or a FIN may still leave
CAN_RECEIVE_DATA = {ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2}
LIVE = SYNCHRONIZED - {TIME_WAIT}                           # keep-alives and RST on abort
PREDICTED = {ESTABLISHED, FIN_WAIT_1, CLOSE_WAIT}             # header prediction: pure ACKs (data: ESTABLISHED)


def _d(a: int, b: int) -> int:
    """a - b as a signed distance in sequence space."""
    x = (a - b) & M
    return x - (1 << 32) if x & 0x80000000 else x


def wscale_for(rcvbuf: int) -> int:
    """The smallest window scale that lets the window field cover `rcvbuf`."""
    scale = 0
    while (0xFFFF << scale) < rcvbuf and scale < 14:
        scale += 1
    return scale


class Options:
    """The per-connection knobs (setsockopt)."""
    __slots__ = (
        "delack",
        "keepalive",
        "keepcnt",
        "keepidle",
        "keepintvl",
        "msl",
        "nodelay",
        "rcvbuf",
        "retries",
        "rto_min",
        "sndbuf",
        "syn_retries",
        "timestamps",
        "window_scaling",
    )

    def __init__(self, **kw):
        self.nodelay, self.keepalive = False, False
        self.keepidle, self.keepintvl, self.keepcnt = 7200.0, 75.0, 9
        self.rcvbuf, self.sndbuf = 1 << 20, 1 << 20
        self.window_scaling, self.timestamps = True, True
        self.delack, self.msl, self.rto_min = 0.04, 30.0, 0.2
        self.syn_retries, self.retries = 6, 15
        for k, v in kw.items():
            setattr(self, k, v)

    def copy(self) -> Options:
        return Options(**{k: getattr(self, k) for k in self.__slots__})


class Connection:
    def __init__(self, layer, local: tuple[bytes, int], remote: tuple[bytes, int], opts: Options, now: float,
                 iss: int, our_mss: int):
        self.layer, self.local, self.remote, self.opts = layer, local, remote, opts
        self.key = (local[0], local[1], remote[0], remote[1])
        self.state = CLOSED
        self.history: list[tuple[float, str]] = []
        self.error: int | None = None           # errno once reset, refused or timed out
        self.on_change: Callable[[Connection], None] | None = None   # the socket's: readiness may have changed
        self.parent: Listener | None = None     # the listener of a passive open
        self.trace: list | None = None          # (t, cwnd, ssthresh, srtt, flight) samples when enabled
        self._trace_t = 0.0
        # send side
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.snd_wscale = 0
        self.sndbuf = bytearray()               # from data_seq on: unacked, then unsent
        self.fin_queued = False
        self.our_mss = our_mss
        self.peer_mss = 536
        self.ts_ok = self.ws_ok = False
        self.ts_recent = 0
        self.last_ack_sent = 0
        # receive side
        self.irs = self.rcv_nxt = 0
        self.rcv_wscale = 0
        self.rcvbuf = bytearray()
        self.ooo: dict[int, tuple[bytes, bool]] = {}   # seq -> (data, fin): segments past a hole
        self.rcv_adv = 0                        # the right edge advertised last
        self.fin_received = False
        self.unacked_segments = 0
        # timers (one heap, the stack's)
        self.rto = RtoEstimator(minimum=opts.rto_min)
        self.cc = NewReno(our_mss)
        self.rto_timer = self.delack_timer = self.persist_timer = self.keep_timer = self.tw_timer = None
        self.rto_deadline = 0.0
        self.retries = 0
        self.persist_backoff = 0
        self.rtt_seq: int | None = None         # Karn: the one segment being timed (no timestamps)
        self.rtt_time = 0.0
        self.last_rx = now
        self.keep_probes = 0
        self.stats = {"segs_out": 0, "segs_in": 0, "retransmits": 0, "bytes_out": 0, "bytes_in": 0,
                      "dupacks_in": 0, "challenge_acks": 0, "zero_window_probes": 0, "keepalive_probes": 0,
                      "predicted": 0}             # segments header prediction took (_predicted)
        self._set_state(CLOSED, now)

    # -- helpers --------------------------------------------------------------------------------

    def __repr__(self):
        return f"<Connection {self.layer.addr_str(self.key)} {self.state}>"

    def _set_state(self, state: str, now: float) -> None:
        self.state = state
        self.history.append((now, state))

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    @property
    def mss(self) -> int:
        """The data bytes one segment carries (the peer's MSS less our options)."""
        return min(self.peer_mss, self.our_mss) - (12 if self.ts_ok else 0)

    @property
    def data_seq(self) -> int:
        """The sequence number of sndbuf[0]: one past the SYN."""
        return self.snd_una if self.snd_una != self.iss else (self.iss + 1) & M

    @property
    def flight(self) -> int:
        return _d(self.snd_nxt, self.snd_una)

    @property
    def fin_seq(self) -> int:
        return (self.data_seq + len(self.sndbuf)) & M

    def rcv_window(self) -> int:
        return max(0, self.opts.rcvbuf - len(self.rcvbuf))

    def _window_field(self) -> int:
        # rcv_window(), but never moving the right edge left (RFC 9293 §3.8.6.2.2)
        wnd = max(self.opts.rcvbuf - len(self.rcvbuf), _d(self.rcv_adv, self.rcv_nxt), 0)
        field = min(wnd >> self.rcv_wscale, 0xFFFF)
        self.rcv_adv = (self.rcv_nxt + (field << self.rcv_wscale)) & M
        return field

    def _emit(self, seq: int, flags: int, payload=b"", now: float = 0.0, opts: bytes | None = None) -> None:
        if opts is None:                        # the timestamps option: our ms clock, TS.Recent
            opts = TS_OPTION.pack(OPT_NOP, OPT_NOP, OPT_TS, 10, int(now * 1000) & M, self.ts_recent) \
                if self.ts_ok else b""
        if flags & SYN:                          # a SYN's window is never scaled (RFC 7323 §2.2)
            window = min(self.rcv_window(), 0xFFFF)
            self.rcv_adv = (self.rcv_nxt + window) & M
        else:
            window = self._window_field() if flags & ACK else 0
        ack = self.rcv_nxt if flags & ACK else 0
        if flags & ACK:
            self.last_ack_sent = ack
            self.unacked_segments = 0
            if self.delack_timer:               # inline: every ACK-bearing segment passes here
                self.delack_timer.cancel()
                self.delack_timer = None
        self.stats["segs_out"] += 1
        if self.layer.stack.offload:
            self.layer.emit_offload(self.remote[0], build(self.local[0], self.remote[0], self.local[1],
                                                          self.remote[1], seq, ack, flags, window, payload, opts,
                                                          partial=True), HEADER + len(opts), self.mss)
        else:
            self.layer.emit(self.remote[0], build(self.local[0], self.remote[0], self.local[1], self.remote[1],
                                                   seq, ack, flags, window, payload, opts))

    def _syn_options(self, now: float, ack: bool) -> bytes:
        ws = ts = None
        if self.opts.window_scaling and (not ack or self.ws_ok):
            ws = self.rcv_wscale
        if self.opts.timestamps and (not ack or self.ts_ok):
            ts = (int(now * 1000) & M, self.ts_recent if ack else 0)
        return options(mss=self.our_mss, wscale=ws, ts=ts)

    def _send_syn(self, now: float) -> None:
        if self.state == SYN_SENT:
            self._emit(self.iss, SYN, now=now, opts=self._syn_options(now, ack=False))
        else:
            self._emit(self.iss, SYN | ACK, now=now, opts=self._syn_options(now, ack=True))
        self.snd_nxt = (self.iss + 1) & M
        if _d(self.snd_nxt, self.snd_max) > 0:
            self.snd_max = self.snd_nxt
        self._arm_rto(now)

    def send_ack(self, now: float) -> None:
        self._emit(self.snd_nxt, ACK, now=now)

    def _send_rst(self, now: float) -> None:
        self._emit(self.snd_nxt, RST | ACK, now=now)

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 §3.2/§4.2: answer a suspicious RST or SYN with an ACK, change nothing."""
        self.stats["challenge_acks"] += 1
        self.layer.count("tcp.challenge_ack")
        self.send_ack(now)

    def _sample(self, now: float, force: bool = False) -> None:
        if self.trace is not None and (force or now - self._trace_t >= 0.002) and len(self.trace) < 50000:
            self._trace_t = now
            self.trace.append((round(now, 6), self.cc.cwnd, min(self.cc.ssthresh, 1 << 30),
                               self.rto.srtt, self.flight))

    # -- opening ---------------------------------------------------------------------------------

    def _pick_wscale(self) -> None:
        if self.opts.window_scaling:
            self.rcv_wscale = wscale_for(self.opts.rcvbuf)

    def open_active(self, now: float) -> None:
        self._pick_wscale()
        self._set_state(SYN_SENT, now)
        self._send_syn(now)

    def open_passive(self, syn: Segment, now: float) -> None:
        self._pick_wscale()
        self._take_syn(syn, now)
        self._set_state(SYN_RECEIVED, now)
        self._send_syn(now)

    def open_from_cookie(self, ack: Segment, mss: int, wscale: int | None, ts_ok: bool, now: float) -> None:
        """The handshake a SYN cookie vouched for (the client's ACK of our cookie SYN-ACK,
        syncookie.py): ESTABLISHED at once, with what the cookie carried."""
        self.irs = (ack.seq - 1) & M
        self.rcv_nxt = ack.seq
        self.rcv_adv = (ack.seq + min(self.rcv_window(), 0xFFFF)) & M    # the SYN-ACK's window
        # ... and its ACK (Last.ACK.sent): else TS.Recent would not follow the client's next
        # segments (RFC 7323 §4.3) and we would echo the handshake ACK's TSval, inflating the
        # client's RTT by however long its data took to get through (a ring's drops) and its RTO
        self.last_ack_sent = ack.seq
        self.peer_mss = mss
        self.ws_ok = wscale is not None
        if wscale is not None:
            self._pick_wscale()
            self.snd_wscale = wscale
        self.ts_ok = ts_ok
        if ts_ok:
            self.ts_recent = ack.tsval
        self.snd_una = self.snd_nxt = self.snd_max = ack.ack
        self.snd_wnd = self.max_snd_wnd = ack.window << self.snd_wscale
        self.snd_wl1, self.snd_wl2 = ack.seq, ack.ack
        self.cc = NewReno(self.mss)
        self._set_state(ESTABLISHED, now)
        self.arm_keepalive(now)

    def _take_syn(self, syn: Segment, now: float) -> None:
        self.irs = syn.seq
        self.rcv_nxt = (syn.seq + 1) & M
        self.rcv_adv = self.rcv_nxt
        if syn.mss:
            self.peer_mss = syn.mss
        self.ws_ok = syn.wscale is not None and self.opts.window_scaling
        if self.ws_ok:
            self.snd_wscale = syn.wscale
        else:
            self.snd_wscale = self.rcv_wscale = 0
        if syn.tsval is not None and self.opts.timestamps:
            self.ts_ok = True
            self.ts_recent = syn.tsval
        self.snd_wnd = syn.window            # a SYN's window is never scaled
        self.max_snd_wnd = self.snd_wnd
        self.snd_wl1, self.snd_wl2 = syn.seq, syn.ack
        self.cc = NewReno(self.mss)

    # -- the application's side ---------------------------------------------------------------

    def send(self, data, now: float) -> int:
        """Queue what fits in the send buffer; returns how many bytes were taken."""
        if self.error is not None:
            raise OSError(self.error, "connection failed")
        if self.fin_queued or self.state not in CAN_QUEUE:
            raise OSError(errno.EPIPE, "the sending side is shut down")
        room = self.opts.sndbuf - len(self.sndbuf)
        n = min(room, len(data))
        if n > 0:
            self.sndbuf += data[:n]
            if self.state in CAN_SEND:
                self.output(now)
        return n

    def send_space(self) -> int:
        return self.opts.sndbuf - len(self.sndbuf)

    def recv(self, n: int, now: float) -> bytes:
        data = bytes(self.rcvbuf[:n])
        del self.rcvbuf[:n]
        if data and self.state in SYNCHRONIZED:
            # a window that had closed (or nearly) and opens by at least 2 SMSS or half the
            # buffer earns an update (receiver SWS avoidance, RFC 9293 §3.8.6.2.2)
            advertised = _d(self.rcv_adv, self.rcv_nxt)
            if self.rcv_window() - advertised >= min(self.opts.rcvbuf // 2, 2 * self.our_mss):
                self.send_ack(now)
        return data

    def shutdown_write(self, now: float) -> None:
        if self.state == SYN_SENT:
            self._drop(now)
            return
        if self.fin_queued or self.state not in CAN_SEND and self.state != SYN_RECEIVED:
            return
        self.fin_queued = True
        if self.state == CLOSE_WAIT:
            self._set_state(LAST_ACK, now)
        elif self.state in (ESTABLISHED, SYN_RECEIVED):
            self._set_state(FIN_WAIT_1, now)
        self.output(now)

    def close(self, now: float) -> None:
        """close(): unread data means RST (RFC 2525 §2.17, as Linux does), else FIN."""
        if self.state in (CLOSED, LISTEN, SYN_SENT):
            self._drop(now)
            return
        if self.rcvbuf and self.state in SYNCHRONIZED:
            self.abort(now)
            return
        self.shutdown_write(now)
        if self.state == FIN_WAIT_2:
            self._arm_fin_wait2(now)

    def abort(self, now: float) -> None:
        if self.state in LIVE or self.state == SYN_RECEIVED:
            self._send_rst(now)
        self._drop(now)

    # -- output -----------------------------------------------------------------------------

    def output(self, now: float) -> None:
        """Send what the windows allow (Nagle and sender SWS avoidance), the FIN when due."""
        if self.state not in CAN_OUTPUT:
            return
        mss = self.mss
        # with segmentation offload one segment may carry many MSS (the driver cuts it)
        burst = mss * max(1, self.layer.offload_max // mss) if self.layer.offload else mss
        sent = False
        # what sending does not change, read once (this loop runs once per segment sent)
        sndbuf, data_seq, snd_una = self.sndbuf, self.data_seq, self.snd_una
        window = min(self.snd_wnd, self.cc.cwnd)
        while True:
            off = _d(self.snd_nxt, data_seq)
            unsent = len(sndbuf) - off
            flight = _d(self.snd_nxt, snd_una)
            usable = window - flight
            if unsent > 0:
                n = min(burst, unsent, usable)
                if n <= 0:
                    break
                last = n == unsent
                if n < mss:
                    if not last and flight > 0:
                        break                      # window-limited: wait for a whole segment
                    if last and flight > 0 and not self.opts.nodelay and not self.fin_queued:
                        break                      # Nagle: one small segment in flight at most
                fin = last and self.fin_queued
                payload = sndbuf[off:off + n]
                flags = ACK | (PSH if last else 0) | (FIN if fin else 0)
                self._send_data(self.snd_nxt, flags, payload, now)
                self.snd_nxt = (self.snd_nxt + n + (1 if fin else 0)) & M
            elif self.fin_queued and self.snd_nxt == self.fin_seq:
                self._send_data(self.snd_nxt, ACK | FIN, b"", now)
                self.snd_nxt = (self.snd_nxt + 1) & M
            else:
                break
            sent = True
            if _d(self.snd_nxt, self.snd_max) > 0:
                self.snd_max = self.snd_nxt
        if sent:
            self._arm_rto(now)
        unsent = len(self.sndbuf) - _d(self.snd_nxt, self.data_seq)
        if unsent > 0 and self.snd_wnd == 0 and self.flight == 0:
            self._arm_persist(now)

    def _send_data(self, seq: int, flags: int, payload, now: float) -> None:
        """`payload`: a slice of sndbuf, a copy already (build copies it once more, into the segment)."""
        if self.rtt_seq is None and not self.ts_ok and seq == self.snd_max:
            self.rtt_seq, self.rtt_time = seq, now
        self.stats["bytes_out"] += len(payload)
        self._emit(seq, flags, payload, now)

    def _retransmit_first(self, now: float) -> None:
        """Resend the segment at snd_una (fast retransmit, a partial ack)."""
        off = _d(self.snd_una, self.data_seq)
        n = min(self.mss, len(self.sndbuf) - off)
        fin = self.fin_queued and off + max(n, 0) == len(self.sndbuf)
        if n <= 0 and not fin:
            return
        self.stats["retransmits"] += 1
        self.layer.count("tcp.retransmit")
        self.rtt_seq = None
        self._emit(self.snd_una, ACK | (FIN if fin else 0), bytes(self.sndbuf[off:off + max(n, 0)]), now)

    # -- timers -------------------------------------------------------------------------------

    def _stop(self, *timers: str) -> None:
        """Cancel these timers (attribute names) and forget them."""
        for name in timers:
            t = getattr(self, name)
            if t is not None:
                t.cancel()
                setattr(self, name, None)

    def _sample_echo(self, tsecr: int, now: float) -> None:
        """An RTT sample from a timestamp echo (RFC 7323 §4.1): our clock counts ms."""
        self.rto.sample(max(0.0, (int(now * 1000) - tsecr) / 1000))

    def _arm_rto(self, now: float) -> None:
        """Restart the retransmission timer (RFC 6298 §5.3: on every new ACK). The armed
        heap entry is kept when it falls due no later than the new deadline, and moves there
        when it falls due: a bulk sender pushes one heap entry per RTO interval, not a Timer
        per ACK that stays in the heap, dead, until its old deadline comes up."""
        deadline = now + self.rto.rto
        self.rto_deadline = deadline
        t = self.rto_timer
        if t is not None:
            if t.deadline <= deadline:
                return
            t.cancel()
        self.rto_timer = self.layer.timers.add(deadline, self._rto_due, "tcp_rto")

    def _rto_due(self, now: float) -> None:
        if now < self.rto_deadline:              # restarted since this entry was pushed
            self.rto_timer = self.layer.timers.add(self.rto_deadline, self._rto_due, "tcp_rto")
            return
        self._on_rto(now)

    def _on_rto(self, now: float) -> None:
        self.rto_timer = None
        if self.state in (SYN_SENT, SYN_RECEIVED):
            if self.retries >= self.opts.syn_retries:
                self._fail(errno.ETIMEDOUT, now)
                return
            self.retries += 1
            self.rto.backoff()
            self.stats["retransmits"] += 1
            self.layer.count("tcp.syn_retransmit")
            self._send_syn(now)
            return
        if self.flight == 0:
            return
        if self.retries >= self.opts.retries:
            self._fail(errno.ETIMEDOUT, now)
            return
        self.retries += 1
        self.rto.backoff()
        self.rtt_seq = None                         # Karn: no sample from a retransmitted range
        self.cc.on_timeout(self.flight, self.snd_max)
        self.snd_nxt = self.snd_una                 # go back: resend from the first unacked byte
        self.stats["retransmits"] += 1
        self.layer.count("tcp.rto")
        self._sample(now, force=True)
        self.output(now)
        if self.flight == 0 and self.snd_wnd == 0:
            self._arm_persist(now)

    def _arm_persist(self, now: float) -> None:
        if self.persist_timer is None:
            delay = min(60.0, max(self.rto.rto, 0.2) * (2 ** self.persist_backoff))
            self.persist_timer = self.layer.timers.add(now + delay, self._on_persist, "tcp_persist")

    def _on_persist(self, now: float) -> None:
        """A zero-window probe: one byte past the window, sent while the peer's window is
        zero, with backoff; its ACK brings the window update we would otherwise wait for."""
        self.persist_timer = None
        if self.state not in CAN_OUTPUT or self.snd_wnd > 0:
            self.persist_backoff = 0
            self.output(now)
            return
        # the probe's byte counts as sent (its ACK may cover it); later probes resend it
        seq = self.snd_una if self.flight > 0 else self.snd_nxt
        off = _d(seq, self.data_seq)
        if off < len(self.sndbuf):
            self.stats["zero_window_probes"] += 1
            self.layer.count("tcp.zero_window_probe")
            self._emit(seq, ACK, bytes(self.sndbuf[off:off + 1]), now)
            if self.flight == 0:
                self.snd_nxt = (self.snd_nxt + 1) & M
                if _d(self.snd_nxt, self.snd_max) > 0:
                    self.snd_max = self.snd_nxt
        self.persist_backoff = min(self.persist_backoff + 1, 8)
        self._arm_persist(now)

    def _schedule_delack(self, now: float) -> None:
        if self.delack_timer is None:
            self.delack_timer = self.layer.timers.add(now + self.opts.delack, self._on_delack, "tcp_delack")

    def _on_delack(self, now: float) -> None:
        self.delack_timer = None
        if self.state in SYNCHRONIZED:
            self.send_ack(now)

    def arm_keepalive(self, now: float) -> None:
        self._stop("keep_timer")
        if self.opts.keepalive and self.state in LIVE:
            self.keep_timer = self.layer.timers.add(now + self.opts.keepidle, self._on_keepalive, "tcp_keepalive")

    def _on_keepalive(self, now: float) -> None:
        self.keep_timer = None
        if not self.opts.keepalive or self.state not in LIVE:
            return
        idle = now - self.last_rx
        if idle < self.opts.keepidle and self.keep_probes == 0:
            self.keep_timer = self.layer.timers.add(self.last_rx + self.opts.keepidle, self._on_keepalive,
                                                    "tcp_keepalive")
            return
        if self.keep_probes >= self.opts.keepcnt:
            self._fail(errno.ETIMEDOUT, now)
            return
        # the probe: SEG.SEQ = SND.NXT - 1, no data; a live peer answers with an ACK
        self.keep_probes += 1
        self.stats["keepalive_probes"] += 1
        self.layer.count("tcp.keepalive_probe")
        self._emit((self.snd_una - 1) & M, ACK, b"", now)
        self.keep_timer = self.layer.timers.add(now + self.opts.keepintvl, self._on_keepalive, "tcp_keepalive")

    def _arm_fin_wait2(self, now: float) -> None:
        if self.tw_timer is None:
            self.tw_timer = self.layer.timers.add(now + 2 * self.opts.msl, self._on_final_timer, "tcp_fin_wait2")

    def _enter_time_wait(self, now: float) -> None:
        self._set_state(TIME_WAIT, now)
        self._stop("rto_timer", "persist_timer", "keep_timer", "tw_timer")
        self.tw_timer = self.layer.timers.add(now + 2 * self.opts.msl, self._on_final_timer, "tcp_time_wait")
        self._notify()

    def _on_final_timer(self, now: float) -> None:
        self.tw_timer = None
        self._drop(now)

    def _fail(self, code: int, now: float) -> None:
        self.error = code
        self._drop(now)

    def _drop(self, now: float) -> None:
        """To CLOSED: forget the connection and stop its timers."""
        self._stop("rto_timer", "delack_timer", "persist_timer", "keep_timer", "tw_timer")
        if self.state != CLOSED:
            self._set_state(CLOSED, now)
        self.layer.forget(self)
        self._notify()

    # -- input: RFC 9293 §3.10.7 -------------------------------------------------------------

    def input(self, seg: Segment, now: float) -> None:
        self.stats["segs_in"] += 1
        if self.state in PREDICTED and self._predicted(seg, now):
            return
        if self.state == SYN_SENT:
            self._input_syn_sent(seg, now)
        elif self.state != CLOSED:
            self._input_synchronized(seg, now)

    def _update_send_window(self, seg) -> int | None:
        """RFC 9293's window update: SND.WL1/WL2 keep old segments from shrinking the window.
        The window before, if this segment updated it."""
        if _d(self.snd_wl1, seg.seq) < 0 or (self.snd_wl1 == seg.seq and _d(self.snd_wl2, seg.ack) <= 0):
            old = self.snd_wnd
            self.snd_wnd = seg.window << self.snd_wscale
            if self.snd_wnd > self.max_snd_wnd:
                self.max_snd_wnd = self.snd_wnd
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            return old
        return None

    def _predicted(self, seg: Segment, now: float) -> bool:
        """Header prediction (Van Jacobson's, Linux's tcp_rcv_established fast path): a bulk
        transfer's segments are nearly all either a pure ACK of new data or the next data
        in order acking nothing new, with only ACK (and PSH) set, a window that was open and
        a timestamp not older than the last. Those are taken here with what §3.10.7 would do
        to them and nothing else; True when the segment was one of them, False sends it
        down the full path untouched. Pure ACKs also after our FIN or the peer's (a sender
        that shut down with a send buffer still in flight), data only in ESTABLISHED."""
        if seg.flags & ~PSH != ACK or seg.seq != self.rcv_nxt or not self.snd_wnd:
            return False                        # (a window reopening from zero: the full path's persist logic)
        if self.ts_ok and (seg.tsval is None or _d(seg.tsval, self.ts_recent) < 0):
            return False
        payload = seg.payload
        acked = _d(seg.ack, self.snd_una)
        if payload:
            if acked != 0 or self.state != ESTABLISHED or self.ooo \
                    or len(payload) > self.opts.rcvbuf - len(self.rcvbuf):
                return False
        elif acked <= 0 or _d(seg.ack, self.snd_max) > 0:
            return False                        # a duplicate ACK (fast retransmit) or one for unsent data
        self.stats["predicted"] += 1
        self.last_rx = now
        self.keep_probes = 0
        if self.ts_ok and _d(seg.seq, self.last_ack_sent) <= 0:
            self.ts_recent = seg.tsval
        self._update_send_window(seg)
        if not payload:
            self._new_ack(seg, acked, now)      # our FIN acked: on to FIN_WAIT_2, TIME_WAIT or CLOSED
            self.output(now)
            return True
        # _receive and _accept for in-order data with no hole behind it
        n = len(payload)
        self.rcvbuf += payload
        self.stats["bytes_in"] += n
        self.rcv_nxt = (self.rcv_nxt + n) & M
        if n >= self.mss:
            self.unacked_segments += 1
        if self.unacked_segments >= 2:
            self.send_ack(now)
        else:
            self._schedule_delack(now)
        self._notify()
        if self.sndbuf:                         # else output() has nothing to send
            self.output(now)
        return True

    def _input_syn_sent(self, seg: Segment, now: float) -> None:
        f = seg.flags
        if f & ACK and (_d(seg.ack, self.iss) <= 0 or _d(seg.ack, self.snd_max) > 0):
            if not f & RST:
                self.layer.send_rst_for(self.local, self.remote, seg)
            return
        if f & RST:
            if f & ACK:
                self.layer.count("tcp.refused")
                self._fail(errno.ECONNREFUSED, now)
            return
        if not f & SYN:
            return
        self._take_syn(seg, now)
        if f & ACK:
            self.snd_una = seg.ack
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            if seg.tsecr:
                self._sample_echo(seg.tsecr, now)
            elif self.retries == 0:
                self.rto.sample(now - self.history[-1][0])
            self.retries = 0
            self._stop("rto_timer")
            self._set_state(ESTABLISHED, now)
            self.arm_keepalive(now)
            self.send_ack(now)
            self.output(now)
            self._notify()
        else:
            # simultaneous open (RFC 9293 figure 7): SYN-ACK with our ISS again
            self.layer.count("tcp.simultaneous_open")
            self._set_state(SYN_RECEIVED, now)
            self._emit(self.iss, SYN | ACK, now=now, opts=self._syn_options(now, ack=True))

    def _acceptable(self, seg: Segment) -> bool:
        length, wnd = seg.seg_len, self.rcv_window()
        wnd = max(wnd, _d(self.rcv_adv, self.rcv_nxt))
        start = _d(seg.seq, self.rcv_nxt)
        if length == 0:
            return start == 0 if wnd == 0 else 0 <= start < wnd
        if wnd == 0:
            return False
        end = start + length - 1
        return 0 <= start < wnd or 0 <= end < wnd

    def _input_synchronized(self, seg: Segment, now: float) -> None:
        f = seg.flags
        if self.state == SYN_RECEIVED and f & SYN and f & ACK and seg.seq == self.irs:
            # simultaneous open, the peer's SYN-ACK: its SYN we have; take it as the ACK
            seg.seq, seg.flags = (seg.seq + 1) & M, f & ~SYN
            f = seg.flags
        # PAWS (RFC 7323 §5): an old timestamp marks an old duplicate
        if (self.ts_ok and seg.tsval is not None and not f & RST and self.state != SYN_RECEIVED
                and _d(seg.tsval, self.ts_recent) < 0):
            self.layer.count("tcp.paws_drop")
            self.send_ack(now)
            return
        # 1. sequence number
        if not self._acceptable(seg):
            self.layer.count("tcp.unacceptable")
            if not f & RST:
                self.send_ack(now)      # also the answer to a keep-alive probe
            return
        self.last_rx = now
        self.keep_probes = 0
        # 2. RST (RFC 5961 §3.2: only an exact match resets; in-window gets a challenge ACK)
        if f & RST:
            if seg.seq == self.rcv_nxt:
                self.layer.count("tcp.reset")
                if self.state == SYN_RECEIVED and self.parent is not None:
                    self._drop(now)     # passive open: back to LISTEN, i.e. forget it
                elif self.state in (CLOSING, LAST_ACK, TIME_WAIT):
                    self._drop(now)
                else:
                    self._fail(errno.ECONNRESET if self.state != SYN_RECEIVED else errno.ECONNREFUSED, now)
            else:
                self._challenge_ack(now)
            return
        # 4. SYN in a synchronized state (RFC 5961 §4.2): challenge ACK
        if f & SYN:
            if self.state == SYN_RECEIVED and seg.seq == self.irs:
                self._emit(self.iss, SYN | ACK, now=now, opts=self._syn_options(now, ack=True))
                return                  # a retransmitted SYN: the SYN-ACK again
            self._challenge_ack(now)
            return
        # 5. ACK
        if not f & ACK:
            return
        if seg.tsval is not None and self.ts_ok and _d(seg.seq, self.last_ack_sent) <= 0:
            self.ts_recent = seg.tsval
        if self.state == SYN_RECEIVED:
            if not (0 < _d(seg.ack, self.snd_una) and _d(seg.ack, self.snd_max) <= 0):
                self.layer.send_rst_for(self.local, self.remote, seg)
                return
            if self.parent is not None and not self.parent.can_accept():
                self.layer.count("tcp.accept_queue_overflow")
                return                  # as Linux with tcp_abort_on_overflow=0: the ACK is dropped
            self.snd_una = seg.ack
            self.retries = 0
            if seg.tsecr:
                self._sample_echo(seg.tsecr, now)
            self._stop("rto_timer")
            self.snd_wnd = seg.window << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self.snd_wl1, self.snd_wl2 = seg.seq, seg.ack
            self._set_state(ESTABLISHED, now)
            self.arm_keepalive(now)
            if self.parent is not None:
                self.parent.established(self)
            self._notify()
        else:
            if not self._process_ack(seg, now):
                return
        # 7. data
        if seg.payload or f & FIN:
            if self.state in CAN_RECEIVE_DATA:
                self._receive(seg, now)
            elif f & FIN and self.state == TIME_WAIT:
                self.send_ack(now)      # the peer lost our ACK of its FIN: again, and restart 2MSL
                self._stop("tw_timer")
                self.tw_timer = self.layer.timers.add(now + 2 * self.opts.msl, self._on_final_timer, "tcp_time_wait")
            elif f & FIN or seg.payload:
                self.send_ack(now)
        self.output(now)

    def _process_ack(self, seg: Segment, now: float) -> bool:
        """§3.10.7.4 fifth check, with RFC 5961 §5.2's ACK range. False: drop the segment."""
        acked = _d(seg.ack, self.snd_una)
        if _d(seg.ack, self.snd_max) > 0:
            self.layer.count("tcp.ack_unsent")
            self.send_ack(now)
            return False
        if acked < -max(self.max_snd_wnd, 1):
            self.layer.count("tcp.ack_too_old")
            self._challenge_ack(now)
            return False
        old = self._update_send_window(seg)
        if old is not None:
            if old == 0 and self.snd_wnd > 0:
                self.persist_backoff = 0
                self._stop("persist_timer")
                if 0 < self.flight <= 1:
                    self.snd_nxt = self.snd_una   # the probe's byte was not taken: send it again first
            window_changed = old != self.snd_wnd
        else:
            window_changed = False
        if acked > 0:
            self._new_ack(seg, acked, now)
        elif acked == 0 and self.flight > 0 and not seg.payload and not seg.flags & (SYN | FIN) \
                and not window_changed and self.snd_wnd > 0:      # answers to window probes are no dupacks
            self.stats["dupacks_in"] += 1
            # RFC 6582 §3.2 step 1: no new recovery for losses of the previous window
            una_after = self.cc.recover is None or _d(self.snd_una, self.cc.recover) > 0
            if self.cc.on_dupack(self.flight, self.snd_max, una_after):
                self.layer.count("tcp.fast_retransmit")
                self._retransmit_first(now)
                self._sample(now, force=True)
            elif self.cc.in_recovery:
                self.output(now)
        return self.state != CLOSED

    def _new_ack(self, seg: Segment, acked: int, now: float) -> None:
        # RTT: the timestamp echo, else Karn's one timed segment
        if self.ts_ok and seg.tsecr:
            self._sample_echo(seg.tsecr, now)
        elif self.rtt_seq is not None and _d(seg.ack, self.rtt_seq) > 0:
            self.rto.sample(now - self.rtt_time)
            self.rtt_seq = None
        data_before = self.data_seq
        syn_acked = self.snd_una == self.iss
        self.snd_una = seg.ack
        if _d(self.snd_nxt, self.snd_una) < 0:
            self.snd_nxt = self.snd_una           # an ack past a go-back point
        nbytes = acked - (1 if syn_acked else 0)
        fin_acked = self.fin_queued and _d(seg.ack, (data_before + len(self.sndbuf)) & M) > 0
        if fin_acked:
            nbytes -= 1
        if nbytes > 0:
            del self.sndbuf[:nbytes]
        if fin_acked:
            self.sndbuf.clear()
        self.retries = 0
        full = self.cc.recover is None or _d(seg.ack, self.cc.recover) >= 0
        cwnd_limited = self.flight + acked + self.mss >= self.cc.cwnd
        if self.cc.on_ack(acked, self.flight, full, cwnd_limited):
            self._retransmit_first(now)
            self._arm_rto(now)
        if self.flight == 0:
            self._stop("rto_timer")
        else:
            self._arm_rto(now)
        self._sample(now)
        if fin_acked:
            if self.state == FIN_WAIT_1:
                self._set_state(FIN_WAIT_2, now)
                if self.on_change is None:      # orphaned (closed by the app): don't wait forever
                    self._arm_fin_wait2(now)
            elif self.state == CLOSING:
                self._enter_time_wait(now)
            elif self.state == LAST_ACK:
                self._drop(now)
                return
        self._notify()

    def _receive(self, seg: Segment, now: float) -> None:
        data = seg.payload
        seq = seg.seq
        fin = bool(seg.flags & FIN)
        start = _d(seq, self.rcv_nxt)
        if start < 0:                            # trim what we already have
            data = data[-start:]
            seq = self.rcv_nxt
            start = 0
        room = self.rcv_window()
        if start + len(data) > max(room, _d(self.rcv_adv, self.rcv_nxt)):
            keep = max(0, max(room, _d(self.rcv_adv, self.rcv_nxt)) - start)
            data, fin = data[:keep], False       # past the window: cut, and the FIN with it
        if start > 0:
            if len(self.ooo) < 256 and (data or fin):
                self.ooo[seq] = (bytes(data), fin)
            self.layer.count("tcp.out_of_order")
            self.send_ack(now)                   # a duplicate ACK at once (RFC 5681 §4.2)
            return
        had_hole = bool(self.ooo)
        self._accept(data, fin, now)
        while self.ooo:
            for s in list(self.ooo):
                d = _d(s, self.rcv_nxt)
                if d <= 0:
                    chunk, f = self.ooo.pop(s)
                    if d + len(chunk) + f > 0:
                        self._accept(chunk[-d:] if d < 0 else chunk, f, now)
                    break
            else:
                break
        full = len(data) >= self.mss
        self.unacked_segments += 1 if full else 0
        if self.fin_received or had_hole or self.unacked_segments >= 2 or not data:
            self.send_ack(now)
        else:
            self._schedule_delack(now)
        self._notify()

    def _accept(self, data, fin: bool, now: float) -> None:
        if self.fin_received:
            return
        if data:
            self.rcvbuf += data
            self.stats["bytes_in"] += len(data)
            self.rcv_nxt = (self.rcv_nxt + len(data)) & M
        if fin:
            self.rcv_nxt = (self.rcv_nxt + 1) & M
            self.fin_received = True
            if self.state == ESTABLISHED:
                self._set_state(CLOSE_WAIT, now)
            elif self.state == FIN_WAIT_1:
                if self.snd_una == self.snd_max and self.fin_queued and _d(self.snd_max, self.fin_seq) > 0:
                    self._enter_time_wait(now)
                else:
                    self._set_state(CLOSING, now)   # simultaneous close
                    self.layer.count("tcp.simultaneous_close")
            elif self.state == FIN_WAIT_2:
                self._enter_time_wait(now)

    # -- what sockets and epoll ask -----------------------------------------------------------

    @property
    def readable(self) -> bool:
        return bool(self.rcvbuf) or self.fin_received or self.error is not None or self.state == CLOSED

    @property
    def writable(self) -> bool:
        return self.state in CAN_SEND and not self.fin_queued and self.send_space() > 0

    @property
    def hung_up(self) -> bool:
        return self.state == CLOSED or (self.fin_received and self.fin_queued)
