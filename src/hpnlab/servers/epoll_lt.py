"""epoll-lt: a reactor on level-triggered epoll.

epoll keeps the interest set in the kernel and returns only the ready
sockets. Level-triggered: a socket is reported for as long as it is
readable, so one recv per event is enough, and data left unread is simply
reported again - the simple handler (course notes, "EPOLL 原理复习").
"""
from __future__ import annotations

import select

from .reactor import PollerReactor


class EpollLT(PollerReactor):
    name = "epoll-lt"
    IN, OUT, ERR = select.EPOLLIN, select.EPOLLOUT, select.EPOLLHUP | select.EPOLLERR

    def new_poller(self):
        return select.epoll()

    def wait(self):
        return self.poller.poll(-1, 1024)

    def close(self):
        super().close()
        self.poller.close()


ENGINE = EpollLT
