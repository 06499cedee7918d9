"""poll: a reactor on poll(2).

poll lifts select's FD_SETSIZE limit (an array of pollfd instead of a bit
set), but the kernel still walks every registered descriptor on every call,
so its cost grows with the number of connections, busy or idle.
"""
from __future__ import annotations

import select

from .reactor import READ, WRITE, Reactor


def poll_mask(mask: int) -> int:
    return (select.POLLIN if mask & READ else 0) | (select.POLLOUT if mask & WRITE else 0)


class Poll(Reactor):
    name = "poll"

    def __init__(self, listener, protocol):
        super().__init__(listener, protocol)
        self.p = select.poll()

    def _register(self, fd, mask):
        self.p.register(fd, poll_mask(mask))

    def _modify(self, fd, mask):
        self.p.modify(fd, poll_mask(mask))

    def _unregister(self, fd):
        self.p.unregister(fd)

    def serve_forever(self):
        lfd = self.listener.fileno()
        self.p.register(lfd, select.POLLIN)
        conns = self.conns
        IN = select.POLLIN | select.POLLHUP | select.POLLERR
        OUT = select.POLLOUT
        while True:
            for fd, ev in self.p.poll():
                c = conns.get(fd)
                if c is None:
                    if fd == lfd:
                        self.on_accept()
                    continue
                if ev & select.POLLNVAL:
                    self.drop(fd, c)
                    continue
                if ev & OUT:
                    self.on_writable(fd, c)
                    if fd not in conns:
                        continue
                if ev & IN and c.mask & READ:
                    self.on_readable(fd, c)


ENGINE = Poll
