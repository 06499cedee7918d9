"""epoll-et: a reactor on edge-triggered epoll.

Edge-triggered: epoll_wait reports a socket once per change (empty ->
non-empty), so the handler must read until recv says EAGAIN, or the rest of
the data is never reported again. Each socket is registered once for
IN|OUT|ET and never modified, which saves epoll_ctl calls; the price is the
extra recv() per event that ends in EAGAIN - in C a cheap syscall, in Python
a syscall plus a raised-and-caught BlockingIOError.
"""
from __future__ import annotations

import select

from . import LOW_WATER, RECV_SIZE
from .reactor import Conn, Reactor

ET_MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
FAIR_READS = 16   # reads per turn before yielding to other connections


class EpollET(Reactor):
    name = "epoll-et"

    def __init__(self, listener, protocol):
        super().__init__(listener, protocol)
        self.ep = select.epoll()
        self.backlog: list[int] = []   # connections with data left unread after their turn

    def _register(self, fd, mask):
        self.ep.register(fd, ET_MASK)

    def _modify(self, fd, mask):
        pass   # interest never changes in ET mode: pausing is our own flag

    def _unregister(self, fd):
        self.ep.unregister(fd)

    def drain(self, fd: int, c: Conn) -> None:
        """Read until EAGAIN (the ET rule), unless backpressure pauses us."""
        for _ in range(FAIR_READS):
            if c.paused or c.closing:
                return
            try:
                data = c.sock.recv(RECV_SIZE)
            except BlockingIOError:
                c.readable = False
                return
            except OSError:
                self.drop(fd, c)
                return
            if not data:
                c.readable = False
                self.on_eof(fd, c)
                return
            if not self.deliver(fd, c, data):
                return
        self.backlog.append(fd)   # more may be waiting; no new edge will come for it

    def flush(self, fd: int, c: Conn) -> None:
        """Write until EAGAIN or done; resume reading under the low water mark."""
        while c.out:
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                break
            except OSError:
                self.drop(fd, c)
                return
            c.out = c.out[n:]
        if not c.out and c.closing:
            self.drop(fd, c)
            return
        if c.paused and len(c.out) < LOW_WATER:
            c.paused = False
            if c.readable:
                self.drain(fd, c)

    def serve_forever(self):
        lfd = self.listener.fileno()
        self.ep.register(lfd, select.EPOLLIN | select.EPOLLET)
        conns = self.conns
        IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
        OUT = select.EPOLLOUT
        while True:
            timeout = 0 if self.backlog else -1
            for fd, ev in self.ep.poll(timeout, 1024):
                c = conns.get(fd)
                if c is None:
                    if fd == lfd:
                        self.accept_all()
                    continue
                if ev & OUT and c.out:
                    self.flush(fd, c)
                    if fd not in conns:
                        continue
                if ev & IN:
                    c.readable = True
                    self.drain(fd, c)
            if self.backlog:
                pending, self.backlog = self.backlog, []
                for fd in pending:
                    c = conns.get(fd)
                    if c is not None and c.readable:
                        self.drain(fd, c)

    def accept_all(self) -> None:
        # ET on the listener too: accept until EAGAIN, or queued connections
        # would wait for a next connection to make a new edge.
        before = -1
        while len(self.conns) != before:
            before = len(self.conns)
            self.on_accept()

    def close(self):
        super().close()
        self.ep.close()


ENGINE = EpollET
