"""uring: a proactor on io_uring (course §2.5, Reactor vs Proactor).

The kernel does the I/O; we only hand it operations and read results:
  - one *multishot accept* on the listener yields a completion per new
    connection, without re-arming;
  - one *multishot recv* per connection, with IOSQE_BUFFER_SELECT: the
    kernel picks a buffer from a shared provided-buffer ring only when data
    arrives, so an idle connection owns no buffer at all (a fixed 64 KiB
    buffer per connection would cost 64 KiB/conn);
  - sends are submitted as operations; at most one is in flight per
    connection (two in-flight sends on one TCP socket could interleave if
    one is short), later output is queued and sent as one.
A batch of completions is reaped and the next batch of submissions is sent
in a single io_uring_enter().

Backpressure: if a connection's unsent output passes HIGH_WATER we cancel
its recv and re-arm it once the output drains below LOW_WATER.
"""
from __future__ import annotations

import errno
import os
import socket

from . import HIGH_WATER, LOW_WATER, Server

ACCEPT, RECV, SEND, CANCEL = 1, 2, 3, 4
NBUFS, BUFSIZE = 512, 4096


class UConn:
    __slots__ = ("closing", "fd", "feed", "inflight", "paused", "pending", "queue", "recv_on")

    def __init__(self, fd: int, feed):
        self.fd = fd
        self.feed = feed
        self.inflight: bytes | None = None   # the one send the kernel holds (kept alive here)
        self.queue: list[bytes] = []
        self.pending = 0                     # bytes not yet sent (in flight + queued)
        self.recv_on = False                 # a (multishot) recv is armed
        self.paused = False
        self.closing = False


class UringServer(Server):
    name = "uring"

    @classmethod
    def unavailable(cls):
        from .. import uring
        return uring.unavailable()

    def serve_forever(self):
        from ..uring import Ring
        self.ring = ring = Ring(entries=4096, nbufs=NBUFS, bufsize=BUFSIZE)
        self.conns: dict[int, UConn] = {}
        self.next_id = 1
        self.multishot_accept = self.multishot_recv = True
        lfd = self.listener.fileno()
        ring.prep_accept(lfd, ACCEPT, multishot=True)
        conns, take, recycle = self.conns, ring.take, ring.recycle
        F_MORE, F_BUFFER, SHIFT = ring.F_MORE, ring.F_BUFFER, ring.BUFFER_SHIFT
        send, arm_recv, finish = self.send, self.arm_recv, self.maybe_finish
        while True:
            try:
                uds, results, flagss = ring.wait()
            except InterruptedError:
                continue
            for ud, res, flags in zip(uds, results, flagss):
                kind, cid = ud & 7, ud >> 3
                if kind == RECV:
                    c = conns.get(cid)
                    if res > 0:
                        data = take(flags >> SHIFT, res)
                        if c is None or c.closing:
                            continue
                        out, close = c.feed(data)
                        if out:
                            send(c, cid, out)
                        if close:
                            c.closing = True
                            finish(c, cid)
                        if not flags & F_MORE:
                            c.recv_on = False
                            arm_recv(c, cid)
                        continue
                    if flags & F_BUFFER:
                        recycle(flags >> SHIFT)
                    if c is None:
                        continue
                    if not flags & F_MORE:
                        c.recv_on = False
                    if res == -errno.EINVAL and self.multishot_recv:
                        self.multishot_recv = False     # old kernel: fall back to one-shot recv
                        arm_recv(c, cid)
                    elif res == -errno.ENOBUFS or res == -errno.ECANCELED:
                        arm_recv(c, cid)                # buffers ran out / backpressure cancel
                    else:
                        c.closing = True                # 0 = EOF, or an error (reset)
                        finish(c, cid)
                elif kind == SEND:
                    c = conns.get(cid)
                    if c is not None:
                        self.on_sent(c, cid, res)
                elif kind == ACCEPT:
                    self.on_accept(lfd, res, flags & F_MORE)

    def on_accept(self, lfd: int, res: int, more: int) -> None:
        if res >= 0:
            cid, self.next_id = self.next_id, self.next_id + 1
            c = UConn(res, self.protocol.new().feed)
            self.conns[cid] = c
            # TCP_NODELAY as every engine does (see servers.tune).
            self.ring.lib.setsockopt(res, socket.IPPROTO_TCP, socket.TCP_NODELAY, self._one(), 4)
            self.arm_recv(c, cid)
        elif res == -errno.EINVAL and self.multishot_accept:
            self.multishot_accept = False           # kernel < 5.19: one accept at a time
        if not more:
            self.ring.prep_accept(lfd, ACCEPT, multishot=self.multishot_accept)

    def _one(self):
        one = getattr(self, "_one_c", None)
        if one is None:
            one = self._one_c = self.ring.ffi.new("int *", 1)
        return one

    def arm_recv(self, c: UConn, cid: int) -> None:
        if not c.recv_on and not c.paused and not c.closing:
            c.recv_on = True
            self.ring.prep_recv(c.fd, cid << 3 | RECV, self.multishot_recv)

    def send(self, c: UConn, cid: int, out: bytes) -> None:
        c.pending += len(out)
        if c.inflight is None:
            c.inflight = out
            self.ring.prep_send(c.fd, out, cid << 3 | SEND)
        else:
            c.queue.append(out)
        if c.pending > HIGH_WATER and not c.paused:
            c.paused = True
            if c.recv_on:
                self.ring.prep_cancel(cid << 3 | RECV, cid << 3 | CANCEL)

    def on_sent(self, c: UConn, cid: int, res: int) -> None:
        if res < 0:                                  # EPIPE / ECONNRESET: the peer is gone
            c.inflight, c.queue, c.pending = None, [], 0
            c.closing = True
            self.maybe_finish(c, cid)
            return
        c.pending -= res
        rest = c.inflight[res:] if res < len(c.inflight) else b""   # type: ignore[index]
        if not rest and c.queue:
            rest = c.queue[0] if len(c.queue) == 1 else b"".join(c.queue)
            c.queue = []
        if rest:
            c.inflight = rest
            self.ring.prep_send(c.fd, rest, cid << 3 | SEND)
        else:
            c.inflight = None
            if c.closing:
                self.maybe_finish(c, cid)
                return
        if c.paused and c.pending < LOW_WATER:
            c.paused = False
            self.arm_recv(c, cid)

    def maybe_finish(self, c: UConn, cid: int) -> None:
        """Close once nothing of ours is in flight in the kernel for this fd."""
        if c.inflight is not None:
            return
        if c.recv_on:
            # Wake the armed recv so its buffer-holding operation ends (res 0).
            self.ring.lib.shutdown(c.fd, socket.SHUT_RDWR)
            return
        del self.conns[cid]
        os.close(c.fd)

    def close(self):
        ring = getattr(self, "ring", None)
        for c in getattr(self, "conns", {}).values():
            try:
                os.close(c.fd)
            except OSError:
                pass
        if ring is not None:
            ring.close()                             # cancels what is still in flight
        super().close()


ENGINE = UringServer
