"""epoll-acceptor: one acceptor thread handing connections to N epoll worker threads.

The other answer to "多个 EPOLL 该如何实现？" (course §2.4.4), the shape of
memcached and Netty (a boss thread and worker event loops): the main thread
only accepts, and deals each new connection round-robin to a worker, which
owns it for life in its own epoll. The hand-off is a queue append plus an
eventfd write that wakes the worker (Loop.call_soon_threadsafe). Balancing
is by count of connections rather than the kernel's hash. The GIL applies
as to epoll-threads: one thread runs Python at a time.
"""
from __future__ import annotations

import socket
from itertools import cycle

from .reactor import Reactor, ReactorThread, stop_all


class EpollAcceptor(Reactor):
    """The main thread's reactor only accepts; adopt() deals connections out."""

    name = "epoll-acceptor"
    parallel = True

    def __init__(self, listener, protocol, workers: int = 1):
        super().__init__(listener, protocol, workers)
        self.threads = [ReactorThread(Reactor(None, protocol), name=f"epoll-{i}")
                        for i in range(workers)]
        self.next_thread = cycle(self.threads)

    def serve_forever(self):
        for t in self.threads:
            t.start()
        super().serve_forever()

    def adopt(self, sock: socket.socket) -> None:
        worker = next(self.next_thread).reactor
        worker.loop.call_soon_threadsafe(worker.adopt, sock)

    def close(self):
        stop_all(self.threads)
        super().close()


ENGINE = EpollAcceptor
