"""epoll-threads: N threads, each an epoll reactor with its own SO_REUSEPORT listener.

The first answer to "多个 EPOLL 该如何实现？" (course §2.4.4): every thread
owns one epoll, one listener and the connections the kernel hands that
listener - SO_REUSEPORT hashes each new connection to one of the N
listeners, so the threads share nothing and need no locks. In C this scales
with cores. In CPython only one thread runs Python at a time (the GIL): the
threads take turns, each hand-off a futex wake and a context switch, so the
CPU per request can only grow; what N threads buy is that a thread blocked
in the kernel lets another run Python. epoll-procs is the way out.
"""
from __future__ import annotations

from . import reuseport_listeners
from .reactor import Reactor, ReactorThread, stop_all


class EpollThreads(Reactor):
    """The main thread is reactor 0, on the listener it was given."""

    name = "epoll-threads"
    parallel = True

    def __init__(self, listener, protocol, workers: int = 1):
        # The other threads get their own listeners, opened now so that all N take
        # connections from the start.
        first, *others = reuseport_listeners(listener, workers)
        super().__init__(first, protocol, workers)
        self.threads = [ReactorThread(Reactor(sock, protocol), name=f"epoll-{i}")
                        for i, sock in enumerate(others, start=1)]

    def serve_forever(self):
        for t in self.threads:
            t.start()
        super().serve_forever()

    def close(self):
        stop_all(self.threads)
        super().close()             # closes the listener too


ENGINE = EpollThreads
