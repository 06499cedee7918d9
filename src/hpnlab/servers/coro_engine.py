"""coro: the echo server written on hpnlab.coro, blocking style.

Each connection is one task running a plain recv/feed/sendall loop; the
framework turns every would-block into a yield to its epoll scheduler.
Backpressure is the same as with threads: a task parked in sendall() does
not read. A task costs one coroutine frame and a small Task object.
"""
from __future__ import annotations

from .. import coro
from . import RECV_SIZE, Server, tune


async def serve_conn(conn: coro.Socket, handler) -> None:
    # No cached bound methods (recv = conn.recv): each would be a 64-byte object
    # kept alive per connection; 3.11's method calls are fast without them.
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
                await conn.sendall(out)
                out = None
            if close:
                break
    except OSError:
        pass                      # reset by peer: just close
    finally:
        conn.close()


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
