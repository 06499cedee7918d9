"""epoll-procs: N pre-forked processes, each an epoll reactor with its own SO_REUSEPORT listener.

The way out of the GIL: a process per core, each with its own interpreter,
epoll and listener; the kernel spreads new connections over the N listeners
(SO_REUSEPORT), as nginx's workers do. Nothing is shared, so nothing is
locked; the price is N times the interpreter's memory, and no shared state
between connections of different workers (a KV store would have to shard).
The parent only supervises: it forwards SIGTERM/SIGINT and reaps.
"""
from __future__ import annotations

import signal

from . import Server, Shutdown, reuseport_listeners
from .reactor import Reactor


class EpollProcs(Server):
    name = "epoll-procs"
    parallel = True

    def __init__(self, listener, protocol, workers: int = 1):
        super().__init__(listener, protocol, workers)
        # All N listeners now, before "listening" is said, so that the kernel
        # spreads connections over all of them from the first one on.
        self.listeners = reuseport_listeners(listener, workers)

    def serve_forever(self):
        from ..coro.multicore import run_workers

        def worker(i: int) -> int:
            # Each worker keeps its own listener and closes the others' copies.
            reactor = None
            try:                     # Server.serve's SIGTERM handler, inherited, raises Shutdown
                for j, other in enumerate(self.listeners):
                    if j != i:
                        other.close()
                reactor = Reactor(self.listeners[i], self.protocol)
                reactor.serve_forever()
            except Shutdown:
                pass
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second signal must not cut cleanup
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                if reactor is not None:
                    reactor.close()
            return 0

        # The parent's copies are closed once all are forked: a listener nobody
        # accepts on would still take its share of connections.
        code = run_workers(self.workers, worker, after_fork=self.close)
        if code:
            raise SystemExit(code)

    def close(self):
        for listener in self.listeners:
            listener.close()


ENGINE = EpollProcs
