"""greenlet: stack-switching coroutines on an epoll hub (NtyCo's context switch).

NtyCo saves and restores CPU registers and gives every coroutine its own
stack; greenlet does the same for CPython: switch() copies the C stack of the
outgoing greenlet to the heap and back. Code stays plain blocking style -
no `await` - which is what gevent is built on. The price is per connection:
each parked greenlet keeps a saved slice of C stack (a few KiB), where a
generator coroutine keeps only its frame.

The hub is the main greenlet: it runs hpnlab's event loop (servers/loop.py,
level-triggered epoll with lazy interest) and a parked greenlet's switch()
is the loop callback of the fd it waits for.
"""
from __future__ import annotations

import socket

from . import RECV_SIZE, QueuedLater, Server, missing_module, tune
from .loop import Loop

IN, OUT = 1, 2


class Hub:
    def __init__(self):
        import greenlet as _g

        class Green(_g.greenlet):
            # Calling a parked greenlet switches into it: the greenlet itself is
            # its fd's loop callback, no bound method made per wait.
            __call__ = _g.greenlet.switch

        self.greenlet = Green
        self.getcurrent = _g.getcurrent
        self.main = _g.getcurrent()
        self.loop = Loop("epoll")

    def wait(self, fd: int, bit: int) -> None:
        """Park the current greenlet until fd is ready for `bit`; the loop switches back."""
        loop = self.loop
        if bit == IN:
            loop.add_reader(fd, self.getcurrent())
            self.main.switch()
            loop.readers[fd] = None        # one-shot: the next wait registers again (no syscall)
        else:
            loop.add_writer(fd, self.getcurrent())
            self.main.switch()
            loop.writers[fd] = None

    def forget(self, fd: int) -> None:
        self.loop.forget(fd)

    def spawn(self, fn, *args) -> None:
        self.loop.call_soon(self.greenlet(fn, parent=self.main).switch, *args)

    def run(self) -> None:
        self.loop.run_forever()


def send_all(hub: Hub, sock: socket.socket, data: bytes) -> None:
    """Send everything, parking the current greenlet while the socket is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            hub.wait(sock.fileno(), OUT)


class LaterConn(QueuedLater):
    """A later-answer connection on the greenlet hub: the queue is flushed by a greenlet."""

    def __init__(self, hub: Hub, sock: socket.socket):
        super().__init__(sock, hub.loop)
        self.hub = hub

    def send(self, data: bytes) -> None:
        """The connection greenlet's own replies: sent here, or by the greenlet already sending."""
        self.queue.append(data)
        if not self.sending:
            self.sending = True
            self._flush()

    def _flush(self) -> None:
        try:
            while self.queue:
                send_all(self.hub, self.sock, self.queue.popleft())
        finally:
            self.flushed()

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except OSError:
            pass                   # the connection is gone: its own greenlet closes it

    def start_flush(self) -> None:
        self.hub.spawn(self._flush_quietly)


class GreenletServer(Server):
    name = "greenlet"

    @classmethod
    def unavailable(cls):
        return missing_module("greenlet")

    def serve_forever(self):
        self.hub = hub = Hub()
        hub.loop.wake_on_signals()            # SIGTERM must end the hub's wait
        self.listener.setblocking(False)
        hub.spawn(self.accept_loop)
        hub.run()

    def accept_loop(self) -> None:
        hub, lfd = self.hub, self.listener.fileno()
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                hub.wait(lfd, IN)
                continue
            except OSError:
                hub.wait(lfd, IN)
                continue
            sock.setblocking(False)
            tune(sock)
            hub.spawn(self.serve_conn, sock)

    def serve_conn(self, sock: socket.socket) -> None:
        hub, fd, handler = self.hub, sock.fileno(), self.protocol.new()
        feed, later = handler.feed, None
        made = getattr(handler, "connection_made", None)
        if made is not None:        # a handler that answers later (the KV store's BLPOP)
            later = LaterConn(hub, sock)
            made(later)
        try:
            while True:
                hub.wait(fd, IN)                  # wait first, then read (as NtyCo)
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    break
                out, close = feed(data)
                # Drop the message before parking again (or each idle
                # connection's stack keeps its last message alive).
                del data
                if later is None:
                    send_all(hub, sock, out)
                else:
                    later.send(out)
                del out
                if close:
                    break
        except OSError:
            pass
        finally:
            hub.forget(fd)
            sock.close()
            lost = getattr(handler, "connection_lost", None)
            if lost is not None:
                lost()

    def close(self):
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.loop.close()
        super().close()


ENGINE = GreenletServer
