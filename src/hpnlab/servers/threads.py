"""threads: one thread per connection, blocking sockets (一请求一线程, course §2.1.1).

The simplest model: accept, start a thread, and let the thread block in
recv/send. The kernel does the multiplexing by scheduling threads. In
CPython only one thread runs Python at a time (the GIL), so every request
costs a GIL hand-off and a context switch; with thousands of threads the
accept loop itself waits for the GIL behind them, and latency collapses.
Backpressure is free: a thread blocked in sendall() does not read.
The main thread accepts on the reactor's loop (where a signal can wake it)
and starts a thread per connection.
"""
from __future__ import annotations

import socket
import threading

from . import RECV_SIZE, tune
from .reactor import Reactor

# Python threads run little Python per frame here; a small stack keeps
# thousands of threads from reserving 8 MiB of address space each.
STACK_SIZE = 256 * 1024


class ThreadConn:
    """What a handler needs to answer outside feed(): the connection's thread is blocked in
    recv meanwhile, so another thread may send; timers are threads of their own."""
    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def call_later(self, delay: float, callback, *args) -> threading.Timer:
        timer = threading.Timer(delay, callback, args)
        timer.daemon = True
        timer.start()
        return timer

    def call_soon_threadsafe(self, callback, *args) -> None:
        callback(*args)


class Threads(Reactor):
    name = "threads"

    def __init__(self, listener, protocol, workers: int = 1):
        super().__init__(listener, protocol, workers)
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()

    def serve_forever(self):
        threading.stack_size(STACK_SIZE)
        super().serve_forever()

    def adopt(self, sock: socket.socket) -> None:
        sock.setblocking(True)           # accepted from a non-blocking listener
        tune(sock)
        with self.lock:
            self.conns.add(sock)
        threading.Thread(target=self.serve_conn, args=(sock,), daemon=True).start()

    def serve_conn(self, sock: socket.socket) -> None:
        handler = self.protocol.new()
        made = getattr(handler, "connection_made", None)
        if made is not None:      # a handler that answers later (the KV store's BLPOP)
            made(ThreadConn(sock))
        try:
            while True:
                data = sock.recv(RECV_SIZE)
                if not data:
                    break
                out, close = handler.feed(data)
                del data                       # do not hold the last message while blocked in recv
                if out:
                    sock.sendall(out)
                del out
                if close:
                    break
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns.discard(sock)
            sock.close()
            lost = getattr(handler, "connection_lost", None)
            if lost is not None:
                lost()

    def close(self):
        # Wake every blocked recv() with shutdown() so threads end on their own.
        with self.lock:
            conns = list(self.conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().close()


ENGINE = Threads
