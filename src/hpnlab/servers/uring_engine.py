"""uring: a proactor on io_uring (course §2.5, Reactor vs Proactor).

The kernel does the I/O; we only hand it operations and read results:
  - one *multishot accept* on the listener yields a completion per new
    connection, without re-arming;
  - one *multishot recv* per connection, with IOSQE_BUFFER_SELECT: the
    kernel picks a buffer from a shared provided-buffer ring only when data
    arrives, so an idle connection owns no buffer at all (a fixed 64 KiB
    buffer per connection would cost 64 KiB/conn);
  - sends go to a send queue kept in C (hpnlab.uring: Ring.send copies the
    bytes there); C keeps one send in flight per connection (two on one TCP
    socket could interleave if one is short), re-issues partial sends, and
    handles their completions inside the harvest - Python never sees a
    successful send. That halves the completions Python handles per request:
    in Python, a completion costs more than the syscall io_uring saves.
A batch of completions is reaped and the next batch of submissions is sent
in a single io_uring_enter().

Provided buffers go back to the kernel in one batch at the next wait(), so
the data of a recv completion is copied out (bytes) before that - unless the
handler takes views (protocols: echo does): it then gets a memoryview of the
buffer itself, and a reply that is that same view is sent from the buffer,
which goes back to the kernel when the send is done; the next wait() sends all
of a batch's such replies in the same call (Ring.wait(back)). An echo then
copies nothing in user space (epoll-lt makes a bytes object per recv) and makes
no Python->C call of its own.

A signal wakes the wait through a poll on the wake-up pipe of
signal.set_wakeup_fd (servers/loop.py's SignalWakeup), re-armed each time:
io_uring_enter only returns EINTR for a signal that comes while it waits.

Backpressure: if a connection's queued output passes HIGH_WATER we cancel
its recv and ask the ring to tell us (a DRAIN completion) once the queue is
below LOW_WATER, and re-arm the recv then.

A handler that answers later (connection_made, servers/transport.py's contract)
gets a UringLater: write() queues on the ring's send queue like any reply;
call_soon_threadsafe() queues the call and wakes the ring through an eventfd
it polls; call_later() is a timer thread that does that when it fires.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
from collections import deque
from collections.abc import Callable

from . import HIGH_WATER, LOW_WATER, Server
from .loop import SignalWakeup

ACCEPT, RECV, SIGNAL, CANCEL, WAKE = 1, 2, 3, 4, 7   # user_data = fd << 3 | kind (the ring's SEND/DRAIN: 5, 6)
NBUFS, BUFSIZE = 512, 4096


class UConn:
    __slots__ = ("closing", "feed", "lost", "paused", "recv_on", "views")

    def __init__(self, feed, lost=None, views=False):
        self.feed, self.lost = feed, lost
        self.views = views                   # feed takes a view of the provided buffer
        self.recv_on = False                 # a (multishot) recv is armed
        self.paused = False                  # recv cancelled by backpressure
        self.closing = False


class UringLater:
    """What a handler that answers later gets on uring; see the module docstring."""

    def __init__(self, server: UringServer, fd: int, conn: UConn):
        self.server, self.fd, self.conn = server, fd, conn

    def write(self, data: bytes) -> None:
        srv, c, fd = self.server, self.conn, self.fd
        if srv.conns.get(fd) is c and not c.closing:
            if srv.back:
                srv.send_back_now()
            queued = srv.ring.lib.hp_send(srv.ring.r, fd, data, len(data))
            if not 0 <= queued <= HIGH_WATER:
                srv.on_backlog(c, fd, queued)

    def close(self) -> None:
        if self.server.conns.get(self.fd) is self.conn:
            self.conn.closing = True
            self.server.maybe_finish(self.conn, self.fd)

    def call_later(self, delay: float, callback: Callable, *args) -> threading.Timer:
        timer = threading.Timer(delay, self.call_soon_threadsafe, (callback, *args))
        timer.daemon = True
        timer.start()
        return timer

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        self.server.soon.append((callback, args))      # deque.append is atomic
        try:
            os.eventfd_write(self.server.wake, 1)
        except OSError:
            pass                                        # closed: the server is gone


class UringServer(Server):
    name = "uring"

    @classmethod
    def unavailable(cls):
        from .. import uring
        return uring.unavailable()

    def serve_forever(self) -> None:
        from ..uring import Ring
        self.ring = ring = Ring(entries=4096, nbufs=NBUFS, bufsize=BUFSIZE)
        self.conns: dict[int, UConn] = {}
        self.multishot_accept = self.multishot_recv = True
        lfd = self.listener.fileno()
        ring.prep_accept(lfd, ACCEPT, multishot=True)
        self.signals = signals = SignalWakeup()
        ring.prep_poll(signals.rfd, SIGNAL)
        self.soon: deque[tuple[Callable, tuple]] = deque()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ring.prep_poll(self.wake, WAKE)
        ring.set_high_water(HIGH_WATER)
        # Buffers whose data goes back as it came (an echo): sent by the next wait() in
        # one call, not by a Python->C call each (that call cost more than the rest of
        # a request's Python). Whatever else touches a connection's send queue sends
        # them first (send_back_now), so the order of the bytes never changes.
        self.back: list[int] = []
        back = self.back
        conns, bufs, bufsize = self.conns, ring.bufs, ring.bufsize
        assert bufs is not None         # (a ring made with nbufs has its provided buffers)
        send, r = ring.lib.hp_send, ring.r
        F_MORE, SHIFT = ring.F_MORE, ring.BUFFER_SHIFT
        SEND, DRAIN = ring.SEND_TAG, ring.DRAIN_TAG
        arm_recv, finish = self.arm_recv, self.maybe_finish
        while True:
            try:
                uds, results, flagss = ring.wait(back)
            except InterruptedError:
                continue
            for ud, res, flags in zip(uds, results, flagss):
                kind, fd = ud & 7, ud >> 3
                if kind == RECV:
                    c = conns.get(fd)
                    if res > 0:
                        if c is None or c.closing:
                            continue
                        bid = flags >> SHIFT
                        off = bid * bufsize
                        data = bufs[off:off + res] if c.views else bufs[off:off + res].tobytes()
                        out, close = c.feed(data)
                        if out is data:                 # echoed: sent from the ring's buffer
                            back.append(bid)
                        elif out:
                            if back:
                                self.send_back_now()
                            queued = send(r, fd, bytes(out) if c.views else out, len(out))
                            if not 0 <= queued <= HIGH_WATER:
                                self.on_backlog(c, fd, queued)
                        if close:
                            c.closing = True
                            finish(c, fd)
                        if not flags & F_MORE:
                            c.recv_on = False
                            arm_recv(c, fd)
                        continue
                    if c is None:
                        continue
                    if not flags & F_MORE:
                        c.recv_on = False
                    if res == -errno.EINVAL and self.multishot_recv:
                        self.multishot_recv = False     # old kernel: fall back to one-shot recv
                        arm_recv(c, fd)
                    elif res == -errno.ENOBUFS or res == -errno.ECANCELED:
                        arm_recv(c, fd)                 # buffers ran out / backpressure cancel
                    else:
                        c.closing = True                # 0 = EOF, or an error (reset)
                        finish(c, fd)
                elif kind == DRAIN:
                    c = conns.get(fd)
                    if c is not None:
                        self.on_drained(c, fd)
                elif kind == SEND:              # a send failed, or a send back passed HIGH_WATER
                    c = conns.get(fd)
                    if c is not None:
                        self.on_backlog(c, fd, res)
                elif kind == ACCEPT:
                    self.on_accept(lfd, res, flags & F_MORE)
                elif kind == SIGNAL:                    # its handler runs next (or ran)
                    signals.drain()
                    ring.prep_poll(signals.rfd, SIGNAL)
                elif kind == WAKE:
                    self.run_soon()

    def send_back_now(self) -> None:
        """Send the buffers listed to go back now (see serve_forever)."""
        for fd, queued in self.ring.send_back(self.back):
            c = self.conns.get(fd)
            if c is not None:
                self.on_backlog(c, fd, queued)

    def run_soon(self) -> None:
        try:
            os.eventfd_read(self.wake)
        except BlockingIOError:
            pass
        soon = self.soon
        for _ in range(len(soon)):
            callback, args = soon.popleft()
            callback(*args)
        self.ring.prep_poll(self.wake, WAKE)

    def on_accept(self, lfd: int, res: int, more: int) -> None:
        if res >= 0:
            handler = self.protocol.new()
            c = UConn(handler.feed, getattr(handler, "connection_lost", None),
                      getattr(handler, "takes_views", False))
            self.conns[res] = c
            made = getattr(handler, "connection_made", None)
            if made is not None:     # a handler that answers later (the KV store's BLPOP)
                made(UringLater(self, res, c))
            # TCP_NODELAY as every engine does (see servers.tune).
            self.ring.lib.setsockopt(res, socket.IPPROTO_TCP, socket.TCP_NODELAY, self._one(), 4)
            self.arm_recv(c, res)
        elif res == -errno.EINVAL and self.multishot_accept:
            self.multishot_accept = False           # kernel < 5.19: one accept at a time
        if not more:
            self.ring.prep_accept(lfd, ACCEPT, multishot=self.multishot_accept)

    def _one(self):
        one = getattr(self, "_one_c", None)
        if one is None:
            one = self._one_c = self.ring.ffi.new("int *", 1)
        return one

    def arm_recv(self, c: UConn, fd: int) -> None:
        if not c.recv_on and not c.paused and not c.closing:
            c.recv_on = True
            self.ring.prep_recv(fd, fd << 3 | RECV, self.multishot_recv)

    def on_backlog(self, c: UConn, fd: int, queued: int) -> None:
        """A send could not be queued (queued < 0), or the queue passed HIGH_WATER."""
        if queued < 0:
            c.closing = True
            self.maybe_finish(c, fd)
        elif not c.paused:
            c.paused = True
            if c.recv_on:
                self.ring.prep_cancel(fd << 3 | RECV, fd << 3 | CANCEL)
            if not c.closing:
                self.ring.send_notify(fd, LOW_WATER)

    def on_drained(self, c: UConn, fd: int) -> None:
        if c.closing:
            self.maybe_finish(c, fd)
        elif c.paused:
            c.paused = False
            self.arm_recv(c, fd)

    def maybe_finish(self, c: UConn, fd: int) -> None:
        """Close once nothing of ours is in flight in the kernel for this fd."""
        if self.back:
            self.send_back_now()
        if self.ring.send_notify(fd, 0) > 0:
            return                                   # a DRAIN (or a failed send) comes back here
        if c.recv_on:
            # Wake the armed recv so its buffer-holding operation ends (res 0).
            self.ring.lib.shutdown(fd, socket.SHUT_RDWR)
            return
        del self.conns[fd]
        self.ring.send_forget(fd)
        os.close(fd)
        if c.lost is not None:
            c.lost()

    def close(self):
        ring = getattr(self, "ring", None)
        for fd in getattr(self, "conns", {}):
            try:
                os.close(fd)
            except OSError:
                pass
        if ring is not None:
            ring.close()                             # cancels what is still in flight
        if getattr(self, "signals", None) is not None:
            self.signals.close()
        if getattr(self, "wake", -1) >= 0:
            os.close(self.wake)
            self.wake = -1
        super().close()


ENGINE = UringServer
