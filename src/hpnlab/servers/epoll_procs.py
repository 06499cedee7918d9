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

from . import Server, Shutdown, listen
from .reactor import Reactor


class EpollProcs(Server):
    name = "epoll-procs"
    parallel = True

    def serve_forever(self):
        from ..coro.multicore import run_workers
        host, port = self.listener.getsockname()[:2]

        def worker(i: int) -> int:
            # Worker 0 keeps the inherited listener; the others open their own.
            # Everyone else's copy is closed, or the parent's listener would take
            # its share of connections and never accept them.
            reactor = None
            try:                     # Server.serve's SIGTERM handler, inherited, raises Shutdown
                if i:
                    self.listener.close()
                listener = self.listener if i == 0 else listen(host, port, reuseport=True)
                reactor = Reactor(listener, self.protocol)
                reactor.serve_forever()
            except Shutdown:
                pass
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second signal must not cut cleanup
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                if reactor is not None:
                    reactor.close()
            return 0

        code = run_workers(self.workers, worker, after_fork=self.listener.close)
        if code:
            raise SystemExit(code)


ENGINE = EpollProcs
