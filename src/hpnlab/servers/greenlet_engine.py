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

from . import RECV_SIZE, Server, missing_module, tune
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
        hub, fd, feed = self.hub, sock.fileno(), self.protocol.new().feed
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
                view = memoryview(out)
                # Drop the message before parking again (or each idle
                # connection's stack keeps its last message alive).
                del data, out
                while view:
                    try:
                        view = view[sock.send(view):]
                    except BlockingIOError:
                        hub.wait(fd, OUT)
                del view
                if close:
                    break
        except OSError:
            pass
        finally:
            hub.forget(fd)
            sock.close()

    def close(self):
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.loop.close()
        super().close()


ENGINE = GreenletServer
