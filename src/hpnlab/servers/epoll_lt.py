"""epoll-lt: a reactor on level-triggered epoll.

epoll keeps the interest set in the kernel and returns only the ready
sockets. Level-triggered: a socket is reported for as long as it is
readable, so one recv per event is enough, and data left unread is simply
reported again - the simple handler (course notes, "EPOLL 原理复习").
"""
from __future__ import annotations

from .reactor import Reactor


class EpollLT(Reactor):
    name = "epoll-lt"
    backend = "epoll"


ENGINE = EpollLT
