"""hpnlab.servers' engines on the user-space stack: the stack's epoll as a backend of
the shared event loop (servers/loop.py), so a Reactor — its accept loop, Transports,
backpressure and protocol handlers — serves the stack's sockets without a line changed.

    reactor = StackReactor(net, listener, protocols.get("echo"))
    reactor.serve()                                    # until SIGTERM/SIGINT

What makes that work: the stack's descriptors are numbers the kernel handed out (so
the loop's fd-indexed tables hold them beside its own eventfd), its errors are the
built-in OSError classes for their errno (EAGAIN is a BlockingIOError), and its epoll
nests kernel descriptors (the loop's wake-up eventfd and signal pipe).
"""
from __future__ import annotations

from ..servers.loop import READ, WRITE, Backend
from ..servers.reactor import Reactor
from .epoll import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Epoll


class StackBackend(Backend):
    """Level-triggered, like the kernel epoll backend it stands in for."""

    name = "ustack-epoll"
    readable = EPOLLIN | EPOLLHUP | EPOLLERR
    writable = EPOLLOUT | EPOLLHUP | EPOLLERR
    _bits = (0, EPOLLIN, EPOLLOUT, EPOLLIN | EPOLLOUT)   # READ|WRITE -> epoll bits

    def __init__(self, net, interest: str = "rbtree", maxevents: int = 256):
        self.epoll = Epoll(net, interest)
        self.maxevents = maxevents

    def register(self, fd: int, mask: int) -> None:
        self.epoll.register(fd, self._bits[mask & (READ | WRITE)])

    def modify(self, fd: int, mask: int) -> None:
        self.epoll.modify(fd, self._bits[mask & (READ | WRITE)])

    def unregister(self, fd: int) -> None:
        self.epoll.unregister(fd)

    def poll(self, timeout: float | None):
        return self.epoll.wait(self.maxevents, timeout)

    def close(self) -> None:
        self.epoll.close()


class StackReactor(Reactor):
    """The servers' Reactor (the epoll-lt engine's) with the stack's epoll under it."""

    name = "ustack-epoll"

    def __init__(self, net, listener, protocol, interest: str = "rbtree"):
        # an object where the kernel engines name a backend: Reactor's Loop takes either
        self.backend = StackBackend(net, interest)  # type: ignore[misc,assignment]
        super().__init__(listener, protocol)
