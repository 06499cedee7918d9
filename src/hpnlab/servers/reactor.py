"""The Reactor shared by the select, poll and epoll engines (course §2.1.2.2).

A reactor waits for readiness on many non-blocking sockets at once and
dispatches each ready socket to its handler; EAGAIN means "not now, ask the
demultiplexer again". The engines differ only in the demultiplexer - the
Loop's backend (servers/loop.py) - so an engine is a class attribute: the
listener's reader accepts and wraps each connection in a Transport
(servers/transport.py), which reads, feeds the protocol handler, writes, and
applies backpressure.

The accept loop here is also the main thread's loop of the engines that
hand connections elsewhere (threads, epoll-acceptor: they override adopt),
so that every engine's main thread waits where a signal can wake it
(Loop.wake_on_signals).
"""
from __future__ import annotations

import socket
import threading
from typing import ClassVar

from . import Server, tune
from .loop import Loop
from .transport import Transport

ACCEPT_BATCH = 256    # accepts per listener event: a connect storm must not starve the others


class Reactor(Server):
    """A reactor on one Loop. With listener=None it only serves connections handed
    to it (adopt), as the workers of epoll-acceptor do."""

    backend: ClassVar[str] = "epoll"

    def __init__(self, listener, protocol, workers: int = 1):
        super().__init__(listener, protocol, workers)
        self.loop = Loop(self.backend)
        self.transports: set[Transport] = set()

    def serve_forever(self):
        self.loop.wake_on_signals()           # main thread only: SIGTERM must end the wait
        if self.listener is not None:
            self.listener.setblocking(False)
            self.loop.add_reader(self.listener.fileno(), self.on_accept)
        self.loop.run_forever()

    def on_accept(self) -> None:
        max_fd = self.loop.backend.max_fd
        # Edge-triggered: accept until EAGAIN, or the queued rest waits for another connect.
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:
                return              # EMFILE, ECONNABORTED: try again on the next event
            if max_fd is not None and sock.fileno() >= max_fd:
                sock.close()        # select cannot watch it: refuse rather than fail later
                continue
            self.adopt(sock)
        if self.loop.edge_triggered:
            self.loop.call_soon(self.on_accept)

    def adopt(self, sock: socket.socket) -> None:
        """Serve a new connection (here: a Transport on this loop)."""
        tune(sock)
        self.transports.add(Transport(self.loop, sock, self.protocol.new(), self.transports.discard))

    def close(self) -> None:
        for t in list(self.transports):
            t.abort()
        if self.listener is not None:
            self.loop.forget(self.listener.fileno())
            super().close()
        self.loop.close()


class ReactorThread(threading.Thread):
    """A Reactor running in a thread of its own; stop() ends it from any thread."""

    def __init__(self, reactor: Reactor, name: str):
        super().__init__(name=name, daemon=True)
        self.reactor = reactor

    def run(self) -> None:
        try:
            self.reactor.serve_forever()
        finally:
            self.reactor.close()

    def stop(self) -> None:
        self.reactor.loop.call_soon_threadsafe(self.reactor.loop.stop)


def stop_all(threads: list[ReactorThread], timeout: float = 5.0) -> None:
    """Stop the reactor threads of a multi-threaded engine and wait for them (all asked
    first, then joined); a thread that never started (a signal came first) has its
    reactor closed here."""
    started = [t for t in threads if t.is_alive()]
    for t in started:
        t.stop()
    for t in threads:
        if t in started:
            t.join(timeout)
        else:
            t.reactor.close()
