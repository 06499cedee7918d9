"""TCP: the layer (demultiplexing, listeners, RST for closed ports, ISNs, ports) over
`connection.Connection`, the per-connection state machine."""
from __future__ import annotations

import collections
import hashlib
import ipaddress
import os
import random
from collections.abc import Callable

from .connection import CLOSED, LISTEN, SYN_RECEIVED, Connection, Options, _d, wscale_for
from .segment import ACK, FIN, RST, SYN, Segment, build, options, parse
from .syncookie import MAX_AGE, PERIOD, CookieJar, ts_decode, ts_encode

EPHEMERAL = range(32768, 61000)


class Listener:
    """A listening socket's two queues: half-open connections (bounded by `syn_backlog`; past
    it a SYN gets a SYN cookie and leaves no state, so a SYN flood cannot grow memory) and
    established ones waiting for accept(), which holds backlog + 1 as Linux's does
    (`sk_acceptq_is_full` is `>`)."""

    def __init__(self, layer, local: tuple[bytes, int], backlog: int, opts: Options, syn_backlog: int | None = None):
        self.layer, self.local, self.opts = layer, local, opts
        # the half-open bound: the backlog, at least 128, at most 4096 (tcp_max_syn_backlog's role)
        self.backlog = max(0, backlog)
        self.syn_backlog = syn_backlog if syn_backlog is not None else min(max(backlog, 128), 4096)
        self.syn_queue: set[Connection] = set()
        self.accept_queue: collections.deque[Connection] = collections.deque()
        self.state = LISTEN
        self.on_change: Callable[[Listener], None] | None = None
        self.counters = {"syn_dropped_syn_queue_full": 0, "syn_dropped_accept_queue_full": 0, "established": 0,
                         "syncookies_sent": 0, "syncookies_accepted": 0}
        self.last_overflow: float | None = None     # when a SYN last found the half-open queue full

    def can_accept(self) -> bool:
        return len(self.accept_queue) <= self.backlog

    def established(self, conn: Connection) -> None:
        self.syn_queue.discard(conn)
        self.accept_queue.append(conn)
        self.counters["established"] += 1
        if self.on_change is not None:
            self.on_change(self)

    def forget(self, conn: Connection) -> None:
        self.syn_queue.discard(conn)
        try:
            self.accept_queue.remove(conn)
        except ValueError:
            pass

    def accept(self) -> Connection | None:
        while self.accept_queue:
            conn = self.accept_queue.popleft()
            conn.parent = None
            if conn.state != CLOSED or conn.rcvbuf:
                return conn
        return None

    def close(self, now: float) -> None:
        for conn in list(self.syn_queue) + list(self.accept_queue):
            conn.abort(now)
        self.layer.listeners.pop(self.local[1], None)
        self.state = CLOSED


class TcpLayer:
    """Connections by 4-tuple, listeners by port. `emit(dst_ip, segment)` is the IP layer's."""

    def __init__(self, stack, timers, emit, mss: int):
        self.stack, self.timers, self.emit, self.mss = stack, timers, emit, mss
        self.count = stack.count        # the stack's counters: "tcp.rst_sent", ...
        self.conns: dict[tuple, Connection] = {}
        self.listeners: dict[int, Listener] = {}
        self._secret = os.urandom(16)
        self.cookies = CookieJar()
        self.syncookies = True      # net.ipv4.tcp_syncookies = 1: cookies once the half-open queue is full


    @property
    def offload(self) -> bool:
        """The driver segments and checksums (TSO): segments may be up to offload_max."""
        return self.stack.offload

    offload_max = 63 * 1024

    def emit_offload(self, dst: bytes, segment: bytes, header_len: int, mss: int) -> None:
        self.stack.send_tcp_offload(dst, segment, header_len, mss)

    @staticmethod
    def addr_str(key) -> str:
        return f"{ipaddress.IPv4Address(key[0])}:{key[1]}-{ipaddress.IPv4Address(key[2])}:{key[3]}"

    def iss(self, key, now: float) -> int:
        """RFC 6528: a 4 µs clock plus a keyed hash of the 4-tuple."""
        h = hashlib.blake2s(b"%s%d%s%d" % (key[0], key[1], key[2], key[3]), key=self._secret, digest_size=4)
        return (int(now * 250000) + int.from_bytes(h.digest(), "big")) & 0xFFFFFFFF

    # -- opening --------------------------------------------------------------------------

    def listen(self, local: tuple[bytes, int], backlog: int, opts: Options, syn_backlog: int | None = None) -> Listener:
        listener = Listener(self, local, backlog, opts, syn_backlog)
        self.listeners[local[1]] = listener
        return listener

    def port_in_use(self, port: int) -> bool:
        return port in self.listeners or any(k[1] == port for k in self.conns)

    def ephemeral_port(self, remote: tuple[bytes, int]) -> int:
        start = random.randrange(len(EPHEMERAL))
        for i in range(len(EPHEMERAL)):
            port = EPHEMERAL[(start + i) % len(EPHEMERAL)]
            if port not in self.listeners and (self.stack.ip, port, remote[0], remote[1]) not in self.conns:
                return port
        raise OSError(99, "no free ephemeral port")     # EADDRNOTAVAIL

    def connect(self, local: tuple[bytes, int], remote: tuple[bytes, int], opts: Options, now: float) -> Connection:
        key = (local[0], local[1], remote[0], remote[1])
        if key in self.conns:
            raise OSError(99, "that 4-tuple is in use")   # EADDRNOTAVAIL, as Linux says
        conn = Connection(self, local, remote, opts, now, self.iss(key, now), self.mss)
        self.conns[key] = conn
        conn.open_active(now)
        return conn

    def forget(self, conn: Connection) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        if conn.parent is not None:
            conn.parent.forget(conn)

    # -- input ----------------------------------------------------------------------------

    def input(self, seg: Segment, src: bytes, dst: bytes, now: float) -> None:
        key = (dst, seg.dport, src, seg.sport)
        conn = self.conns.get(key)
        if conn is not None:
            self.stack.counters["tcp.rx_conn"] += 1
            conn.input(seg, now)
            return
        listener = self.listeners.get(seg.dport)
        if listener is not None and listener.state == LISTEN:
            self._listen_input(listener, seg, key, now)
            return
        self.count("tcp.rx_closed_port")
        self.send_rst_for((dst, seg.dport), (src, seg.sport), seg)

    def _listen_input(self, listener: Listener, seg: Segment, key, now: float) -> None:
        f = seg.flags
        if f & RST:
            self.count("tcp.listen_rst_ignored")
            return
        if f & ACK:
            if not f & SYN and self._cookie_ack(listener, seg, key, now):
                return
            self.count("tcp.listen_ack_rst")
            self.send_rst_for(key[:2], key[2:], seg)
            return
        if not f & SYN:
            self.count("tcp.listen_dropped")
            return
        if not listener.can_accept():
            listener.counters["syn_dropped_accept_queue_full"] += 1
            self.count("tcp.accept_queue_full_syn_drop")
            return
        if len(listener.syn_queue) >= listener.syn_backlog:
            listener.last_overflow = now
            if self.syncookies:
                self._send_cookie(listener, seg, key, now)
            else:
                listener.counters["syn_dropped_syn_queue_full"] += 1
                self.count("tcp.syn_queue_full")
            return
        self.count("tcp.syn_received")
        conn = Connection(self, (key[0], key[1]), (key[2], key[3]), listener.opts.copy(), now,
                          self.iss(key, now), self.mss)
        conn.parent = listener
        listener.syn_queue.add(conn)
        self.conns[key] = conn
        conn.open_passive(seg, now)

    def _send_cookie(self, listener: Listener, syn: Segment, key, now: float) -> None:
        """A SYN-ACK whose ISN is a SYN cookie; nothing of the SYN is kept."""
        opts = listener.opts
        isn, _mss = self.cookies.make(key, syn.seq, syn.mss or 536, now)
        ts = ws = None
        if syn.tsval is not None and opts.timestamps:          # else no wscale/timestamps: Linux's choice
            peer_ws = syn.wscale if opts.window_scaling else None
            ts = (ts_encode(int(now * 1000) & 0xFFFFFFFF, peer_ws), syn.tsval)
            ws = wscale_for(opts.rcvbuf) if peer_ws is not None else None
        listener.counters["syncookies_sent"] += 1
        self.count("tcp.syncookie_sent")
        self.emit(key[2], build(key[0], key[2], key[1], key[3], isn, (syn.seq + 1) & 0xFFFFFFFF, SYN | ACK,
                                min(opts.rcvbuf, 0xFFFF), b"", options(mss=self.mss, wscale=ws, ts=ts)))

    def _cookie_ack(self, listener: Listener, seg: Segment, key, now: float) -> bool:
        """An ACK for no connection: if cookies went out lately and it returns a valid one,
        the connection it stands for, established and queued for accept(). False: not a cookie."""
        if listener.last_overflow is None or now - listener.last_overflow > MAX_AGE * PERIOD:
            return False
        mss = self.cookies.check(key, (seg.seq - 1) & 0xFFFFFFFF, (seg.ack - 1) & 0xFFFFFFFF, now)
        if mss is None:
            self.count("tcp.syncookie_failed")
            return False
        if not listener.can_accept():
            self.count("tcp.accept_queue_overflow")
            return True                 # dropped, as Linux does; the client's retransmission may fit
        ts_ok = seg.tsecr is not None and listener.opts.timestamps
        wscale = ts_decode(seg.tsecr) if ts_ok and listener.opts.window_scaling else None
        conn = Connection(self, key[:2], key[2:], listener.opts.copy(), now, (seg.ack - 1) & 0xFFFFFFFF, self.mss)
        conn.parent = listener
        self.conns[key] = conn
        conn.open_from_cookie(seg, mss, wscale, ts_ok, now)
        listener.counters["syncookies_accepted"] += 1
        self.count("tcp.syncookie_accepted")
        listener.established(conn)
        if seg.payload or seg.flags & FIN:
            conn.input(seg, now)
        return True

    def send_rst_for(self, local: tuple[bytes, int], remote: tuple[bytes, int], seg: Segment) -> None:
        """RFC 9293 §3.10.7.1: the reset for a segment no connection takes."""
        if seg.flags & RST:
            return
        self.count("tcp.rst_sent")
        if seg.flags & ACK:
            raw = build(local[0], remote[0], local[1], remote[1], seg.ack, 0, RST, 0)
        else:
            raw = build(local[0], remote[0], local[1], remote[1], 0, (seg.seq + seg.seg_len) & 0xFFFFFFFF,
                        RST | ACK, 0)
        self.emit(remote[0], raw)

    def states(self) -> dict[str, int]:
        """How many connections are in each state."""
        states: dict[str, int] = {}
        for c in self.conns.values():
            states[c.state] = states.get(c.state, 0) + 1
        return states


__all__ = ["SYN_RECEIVED", "Connection", "Listener", "Options", "Segment", "TcpLayer", "_d", "build", "parse"]
