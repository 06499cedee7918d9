"""epoll-et: a reactor on edge-triggered epoll.

Edge-triggered: epoll_wait reports a socket once per change (empty ->
non-empty), so the handler must read until recv says EAGAIN, or the rest of
the data is never reported again. Each socket is registered once for
IN|OUT|ET and never modified, which saves epoll_ctl calls; the price is the
extra recv() per event that ends in EAGAIN - in C a cheap syscall, in Python
a syscall plus a raised-and-caught BlockingIOError. The loop and the
transport carry the ET rules (servers/loop.py, servers/transport.py).
"""
from __future__ import annotations

from .reactor import Reactor


class EpollET(Reactor):
    name = "epoll-et"
    backend = "epoll-et"


ENGINE = EpollET
