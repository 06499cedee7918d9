"""coro: the echo server written on hpnlab.coro, blocking style.

Each connection is one task running a plain recv/feed/sendall loop; the
framework turns every would-block into a yield to its epoll scheduler.
Backpressure is the same as with threads: a task parked in sendall() does
not read. A task costs one coroutine frame and a small Task object.
"""
from __future__ import annotations

from .. import coro
from . import RECV_SIZE, QueuedLater, Server, tune


class LaterConn(QueuedLater):
    """A later-answer connection on coro: the queue is flushed by a task."""

    def __init__(self, conn: coro.Socket):
        super().__init__(conn, coro.scheduler().loop)
        self.conn = conn

    async def send(self, data: bytes) -> None:
        """The connection task's own replies: sent here, or by the task already sending."""
        self.queue.append(data)
        if not self.sending:
            self.sending = True
            await self._flush()

    async def _flush(self) -> None:
        try:
            while self.queue:
                await self.conn.sendall(self.queue.popleft())
        finally:
            self.flushed()

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except OSError:
            pass                   # the connection is gone: its own task closes it

    def start_flush(self) -> None:
        coro.spawn(self._flush_quietly())


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
