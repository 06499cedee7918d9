"""asyncio: the stdlib's event loop with a Protocol - the reference peer.

asyncio's selector loop is a reactor on epoll (LT) written in Python
(asyncio/selector_events.py); Protocol callbacks avoid the coroutine layer.
Backpressure uses the transport's write-buffer limits: pause_writing()
pauses reading until the buffer drains.
"""
from __future__ import annotations

import asyncio
import signal

from . import HIGH_WATER, LOW_WATER, Server


class LaterConn:
    """What a handler needs to answer outside data_received: write, close and the loop's timers."""
    __slots__ = ("call_later", "call_soon_threadsafe", "close", "write")

    def __init__(self, transport, loop):
        self.write, self.close = transport.write, transport.close
        self.call_later, self.call_soon_threadsafe = loop.call_later, loop.call_soon_threadsafe


class EngineProtocol(asyncio.Protocol):
    __slots__ = ("handler", "transport")

    def __init__(self, factory):
        self.handler = factory.new()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        made = getattr(self.handler, "connection_made", None)
        if made is not None:      # a handler that answers later (the KV store's BLPOP)
            made(LaterConn(transport, asyncio.get_running_loop()))

    def connection_lost(self, exc):
        lost = getattr(self.handler, "connection_lost", None)
        if lost is not None:
            lost()

    def data_received(self, data):
        out, close = self.handler.feed(data)
        if out:
            self.transport.write(out)
        if close:
            self.transport.close()

    def eof_received(self):
        return False          # close our side too, after flushing

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


class AsyncioServer(Server):
    name = "asyncio"

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def serve(self):
        # The loop runs in C (uvloop) or blocks in epoll_wait; its own signal
        # handling wakes it, so stop via add_signal_handler, not an exception.
        loop = self.new_loop()
        stopping = loop.create_future()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, lambda: stopping.done() or stopping.set_result(None))

        async def main():
            self.listener.setblocking(False)
            server = await loop.create_server(lambda: EngineProtocol(self.protocol),
                                              sock=self.listener, backlog=4096)
            await stopping
            server.close()
            # Transports of open connections are closed with the loop below.

        try:
            loop.run_until_complete(main())
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.close()

    def serve_forever(self):     # not used: serve() is overridden
        raise NotImplementedError


ENGINE = AsyncioServer
