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

from itertools import cycle

from . import Server
from .reactor import Reactor, ReactorThread

JOIN_TIMEOUT = 5.0


class EpollAcceptor(Server):
    name = "epoll-acceptor"
    parallel = True

    def serve_forever(self):
        self.threads = [ReactorThread(Reactor(None, self.protocol), name=f"epoll-{i}")
                        for i in range(self.workers)]
        for t in self.threads:
            t.start()
        self.listener.setblocking(True)      # this thread does nothing but accept
        for t in cycle(self.threads):
            while True:
                try:
                    sock, _addr = self.listener.accept()
                    break
                except OSError:
                    continue                 # EMFILE / ECONNABORTED: keep serving the others
            t.reactor.loop.call_soon_threadsafe(t.reactor.adopt, sock)

    def close(self):
        for t in getattr(self, "threads", []):
            t.stop()
        for t in getattr(self, "threads", []):
            t.join(JOIN_TIMEOUT)
        super().close()


ENGINE = EpollAcceptor
