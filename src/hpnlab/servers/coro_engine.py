"""coro: the echo server written on hpnlab.coro, blocking style.

Each connection is one task running a plain recv/feed/sendall loop; the
framework turns every would-block into a yield to its epoll scheduler.
Backpressure is the same as with threads: a task parked in sendall() does
not read. A task costs one coroutine frame and a small Task object.
"""
from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable

from .. import coro
from . import RECV_SIZE, Server, tune


class LaterConn:
    """What a handler that answers later (connection_made, servers/transport.py's contract)
    gets: write() and close() from a loop callback, where nothing may block, so a write
    is a task of its own. All output goes through send(), one sender at a time, so a late
    answer never interleaves with the connection task's replies."""

    def __init__(self, conn: coro.Socket):
        self.conn = conn
        self.loop = coro.scheduler().loop
        self.queue: deque[bytes] = deque()
        self.sending = self.closing = False

    async def send(self, data: bytes) -> None:
        self.queue.append(data)
        if not self.sending:       # else the task already sending sends this too, in order
            self.sending = True
            await self._flush()

    async def _flush(self) -> None:
        try:
            while self.queue:
                await self.conn.sendall(self.queue.popleft())
        finally:
            self.sending = False
        if self.closing:
            self._shutdown()

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except OSError:
            pass                   # the connection is gone: its own task closes it

    def write(self, data: bytes) -> None:
        self.queue.append(data)    # queued now, so that a close() right after waits for it
        if not self.sending:
            self.sending = True
            coro.spawn(self._flush_quietly())

    def close(self) -> None:
        """Close once the queued output is sent (the connection task sees EOF)."""
        self.closing = True
        if not self.sending and not self.queue:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.conn.fileno() >= 0:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def call_later(self, delay: float, callback: Callable, *args):
        return self.loop.call_later(delay, callback, *args)

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        self.loop.call_soon_threadsafe(callback, *args)


async def serve_conn(conn: coro.Socket, handler) -> None:
    # No cached bound methods (recv = conn.recv): each would be a 64-byte object
    # kept alive per connection; 3.11's method calls are fast without them.
    later = None
    made = getattr(handler, "connection_made", None)
    if made is not None:        # a handler that answers later (the KV store's BLPOP)
        later = LaterConn(conn)
        made(later)
    try:
        while True:
            data = await conn.recv(RECV_SIZE)
            if not data:
                break
            out, close = handler.feed(data)
            # Drop the message before parking again: a local still holding it
            # would keep one message (4 KiB, say) alive per idle connection.
            data = None
            if out:
                await (conn.sendall(out) if later is None else later.send(out))
                out = None
            if close:
                break
    except OSError:
        pass                      # reset by peer: just close
    finally:
        conn.close()
        lost = getattr(handler, "connection_lost", None)
        if lost is not None:
            lost()


class CoroServer(Server):
    name = "coro"

    def serve_forever(self):
        coro.run(self.main())

    async def main(self):
        # Adopt the listener; Server.close() closes it through the coroutine socket.
        self.listener = listener = coro.Socket(self.listener)
        spawn, new = coro.spawn, self.protocol.new
        while True:
            conn, _ = await listener.accept()
            tune(conn)
            spawn(serve_conn(conn, new()))


ENGINE = CoroServer
