"""epoll-lt: a reactor on level-triggered epoll.

Level-triggered: epoll_wait reports a socket for as long as it is readable,
so one recv per event is enough, and data left unread is simply reported
again. That keeps the handler simple (course notes, "EPOLL 原理复习").
"""
from __future__ import annotations

import select

from .reactor import READ, WRITE, Reactor


def epoll_mask(mask: int) -> int:
    return (select.EPOLLIN if mask & READ else 0) | (select.EPOLLOUT if mask & WRITE else 0)


class EpollLT(Reactor):
    name = "epoll-lt"

    def __init__(self, listener, protocol):
        super().__init__(listener, protocol)
        self.ep = select.epoll()

    def _register(self, fd, mask):
        self.ep.register(fd, epoll_mask(mask))

    def _modify(self, fd, mask):
        self.ep.modify(fd, epoll_mask(mask))

    def _unregister(self, fd):
        self.ep.unregister(fd)

    def serve_forever(self):
        lfd = self.listener.fileno()
        self.ep.register(lfd, select.EPOLLIN)
        conns = self.conns
        IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        OUT = select.EPOLLOUT
        poll, on_readable, on_writable = self.ep.poll, self.on_readable, self.on_writable
        while True:
            for fd, ev in poll(-1, 1024):
                c = conns.get(fd)
                if c is None:
                    if fd == lfd:
                        self.on_accept()
                    continue
                if ev & OUT:
                    on_writable(fd, c)
                    if fd not in conns:
                        continue
                if ev & IN and c.mask & READ:
                    on_readable(fd, c)

    def close(self):
        super().close()
        self.ep.close()


ENGINE = EpollLT
