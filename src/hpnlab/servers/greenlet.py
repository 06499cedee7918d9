"""greenlet: stack-switching coroutines on an epoll hub (NtyCo's context switch).

NtyCo saves and restores CPU registers and gives every coroutine its own
stack; greenlet does the same for CPython: switch() copies the C stack of the
outgoing greenlet to the heap and back. Code stays plain blocking style -
no `await` - which is what gevent is built on. The price is per connection:
each parked greenlet keeps a saved slice of C stack (a few KiB), where a
generator coroutine keeps only its frame.

The hub is the main greenlet: it runs epoll (level-triggered, interest kept
lazily like hpnlab.coro) and switches into whichever greenlet's fd is ready.
"""
from __future__ import annotations

import select
import socket

from . import RECV_SIZE, Server, missing_module, tune

IN, OUT = select.EPOLLIN, select.EPOLLOUT
_IN_EV = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_OUT_EV = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class Hub:
    def __init__(self):
        import greenlet as _g
        self.greenlet = _g.greenlet
        self.main = _g.getcurrent()
        self.ep = select.epoll()
        self.waiting: dict[tuple[int, int], object] = {}   # (fd, IN|OUT) -> greenlet
        self.masks: dict[int, int] = {}
        self.runnable: list = []

    def wait(self, fd: int, bit: int) -> None:
        """Park the current greenlet until fd is ready for `bit`; the hub switches back."""
        self.waiting[(fd, bit)] = self.greenlet.getcurrent()
        mask = self.masks.get(fd, 0)
        if not mask & bit:
            if mask:
                self.ep.modify(fd, mask | bit)
            else:
                self.ep.register(fd, bit)
            self.masks[fd] = mask | bit
        self.main.switch()

    def forget(self, fd: int) -> None:
        if self.masks.pop(fd, None):
            self.ep.unregister(fd)
        self.waiting.pop((fd, IN), None)
        self.waiting.pop((fd, OUT), None)

    def spawn(self, fn, *args) -> None:
        self.runnable.append(self.greenlet(fn, parent=self.main))
        self.runnable.append(args)

    def run(self) -> None:
        waiting, masks = self.waiting, self.masks
        while True:
            while self.runnable:
                g, args = self.runnable[0], self.runnable[1]
                del self.runnable[:2]
                g.switch(*args)
            for fd, ev in self.ep.poll(-1, 1024):
                g = waiting.pop((fd, IN), None) if ev & _IN_EV else None
                if g is not None:
                    g.switch()
                g2 = waiting.pop((fd, OUT), None) if ev & _OUT_EV else None
                if g2 is not None:
                    g2.switch()
                if g is None and g2 is None and fd in masks:
                    # Nobody waits any more: narrow the interest (lazy, as in hpnlab.coro).
                    want = (IN if (fd, IN) in waiting else 0) | (OUT if (fd, OUT) in waiting else 0)
                    if want:
                        self.ep.modify(fd, want)
                        masks[fd] = want
                    else:
                        del masks[fd]
                        self.ep.unregister(fd)


class GreenletServer(Server):
    name = "greenlet"

    @classmethod
    def unavailable(cls):
        return missing_module("greenlet")

    def serve_forever(self):
        self.hub = hub = Hub()
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
                data = out = None
                while view:
                    try:
                        view = view[sock.send(view):]
                    except BlockingIOError:
                        hub.wait(fd, OUT)
                view = None
                if close:
                    break
        except OSError:
            pass
        finally:
            hub.forget(fd)
            sock.close()


ENGINE = GreenletServer
