"""A stream transport on hpnlab's Loop: one connected socket serving a sans-I/O handler.

Read: on each readiness callback recv, feed the handler (servers/protocols:
`feed(data) -> (reply, close)`) and write the reply. Level-triggered, one
recv per callback (the loop calls again while data is left); edge-triggered,
recv until EAGAIN - at most FAIR_READS per turn, then the rest waits for the
next turn (call_soon), so one busy connection cannot starve the others. A short
read (less than asked) also ends the turn's reading: the recv that should say
EAGAIN comes on the next turn. Read at once, it often finds the next request of
a fast request/response client - which arrived while we replied - and the loop
then serves that one connection in lockstep with its client (up to FAIR_READS
round trips) while every other ready connection waits (redis-benchmark -c 50
-P 1 on the KV store: p95 latency 2-4x level-triggered epoll's).

Write: try to send at once (a socket is almost always writable); what the
kernel did not take is kept as a queue of memoryviews over the caller's
bytes - a partial send slices a view, it never copies the unsent rest - and
the queue is flushed with one sendmsg (writev) when the loop says writable.

Backpressure, with asyncio's names: above the high water mark of unsent
bytes the transport stops reading (a peer that sends without reading cannot
make our memory grow without bound); below the low water mark it reads again.
"""
from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from itertools import islice

from . import HIGH_WATER, LOW_WATER, RECV_SIZE
from .loop import Loop

FAIR_READS = 16     # edge-triggered: reads per turn before yielding to other connections
IOV_MAX = 1024      # buffers one sendmsg may take (Linux's UIO_MAXIOV)


class Transport:
    __slots__ = ("buffered", "closing", "fd", "handler", "high", "loop", "low", "on_close",
                 "paused", "queue", "sock")

    def __init__(self, loop: Loop, sock: socket.socket, handler,
                 on_close: Callable[[Transport], object] | None = None,
                 high: int = HIGH_WATER, low: int = LOW_WATER):
        if not 0 <= low <= high:
            raise ValueError(f"water marks need 0 <= low <= high (low={low}, high={high})")
        sock.setblocking(False)
        self.loop, self.sock, self.fd, self.handler = loop, sock, sock.fileno(), handler
        self.on_close = on_close
        self.high, self.low = high, low
        self.queue: deque[memoryview] = deque()   # unsent output, oldest first
        self.buffered = 0                          # bytes in `queue`
        self.paused = False                        # reading stopped by backpressure
        self.closing = False                       # close once `queue` is flushed
        loop.add_reader(self.fd, self._read_edge if loop.edge_triggered else self._read_level)
        made = getattr(handler, "connection_made", None)
        if made is not None:      # a handler that answers later (the KV store's BLPOP) keeps us
            made(self)

    # -- for handlers that answer later ---------------------------------------------
    def call_later(self, delay: float, callback: Callable, *args):
        return self.loop.call_later(delay, callback, *args)

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

    # -- reading ----------------------------------------------------------------
    def _read_level(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.abort()
            return
        if data:
            out, close = self.handler.feed(data)
            if out:
                self.write(out)
            if close:
                self.close()
        else:
            self.close()          # EOF: flush what is queued, then close

    def _read_edge(self) -> None:
        recv, feed = self.sock.recv, self.handler.feed
        for _ in range(FAIR_READS):
            if self.paused or self.closing:
                return           # resume_reading() calls us again (no edge will)
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.abort()
                return
            if not data:
                self.close()
                return
            out, close = feed(data)
            if out:
                self.write(out)
            if close:
                self.close()
            if len(data) < RECV_SIZE:
                break     # drained for now: the EAGAIN check waits for the next turn (docstring)
        self.loop.call_soon(self._read_edge)

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if self.paused and self.fd >= 0:
            self.paused = False
            if not self.closing:
                self.loop.add_reader(self.fd, self._read_edge if self.loop.edge_triggered else self._read_level)

    # -- writing ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Send `data` (bytes-like, not modified afterwards); queue what the kernel does not take."""
        if self.fd < 0:
            return
        if not self.buffered:
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.abort()
                return
            if n == len(data):
                return
            self.queue.append(memoryview(data)[n:])
            self.buffered = len(data) - n
            self.loop.add_writer(self.fd, self._on_writable)
        else:
            self.queue.append(memoryview(data))
            self.buffered += len(data)
        if self.buffered > self.high:
            self.pause_reading()

    def _on_writable(self) -> None:
        if self.fd < 0:
            return                # closed before this (edge-triggered first) call came
        queue = self.queue
        while queue:
            try:
                if len(queue) == 1:
                    n = self.sock.send(queue[0])
                else:
                    n = self.sock.sendmsg(queue if len(queue) <= IOV_MAX else list(islice(queue, IOV_MAX)))
            except BlockingIOError:
                break
            except OSError:
                self.abort()
                return
            self.buffered -= n
            while n:
                head = queue[0]
                if n >= len(head):
                    n -= len(head)
                    queue.popleft()
                else:
                    queue[0] = head[n:]       # a view of the rest: no copy
                    n = 0
            if not self.loop.edge_triggered:
                break             # level-triggered: the loop calls again while writable
        if not queue:
            self.loop.remove_writer(self.fd)
            if self.closing:
                self.abort()
                return
        if self.paused and self.buffered <= self.low:
            self.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    # -- closing ----------------------------------------------------------------
    def close(self) -> None:
        """Stop reading; close once the queued output is sent."""
        self.closing = True
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            if not self.queue:
                self.abort()

    def abort(self) -> None:
        """Close now, dropping unsent output."""
        if self.fd < 0:
            return
        self.loop.forget(self.fd)
        self.fd = -1
        self.closing = True
        self.queue.clear()
        self.buffered = 0
        self.sock.close()
        lost = getattr(self.handler, "connection_lost", None)
        if lost is not None:
            lost()
        if self.on_close is not None:
            self.on_close(self)
