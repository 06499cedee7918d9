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

from . import Server, reuseport_listeners
from .reactor import Reactor, ReactorThread

JOIN_TIMEOUT = 5.0


class EpollThreads(Server):
    name = "epoll-threads"
    parallel = True

    def __init__(self, listener, protocol, workers: int = 1):
        super().__init__(listener, protocol, workers)
        # Thread 0 (the main one) serves the listener it was given; the others get
        # their own, opened now so that all N take connections from the start.
        first, *others = reuseport_listeners(listener, workers)
        self.main = Reactor(first, protocol)
        self.threads = [ReactorThread(Reactor(sock, protocol), name=f"epoll-{i}")
                        for i, sock in enumerate(others, start=1)]

    def serve_forever(self):
        for t in self.threads:
            t.start()
        self.main.serve_forever()

    def close(self):
        for t in self.threads:
            if t.is_alive():
                t.stop()
                t.join(JOIN_TIMEOUT)
            else:
                t.reactor.close()    # never started (a signal came first)
        self.main.close()            # closes the listener too


ENGINE = EpollThreads
