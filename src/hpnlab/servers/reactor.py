"""The Reactor shared by the select, poll and epoll engines (course §2.1.2.2).

A reactor waits for readiness on many non-blocking sockets at once and
dispatches each ready socket to its handler; EAGAIN means "not now, ask the
demultiplexer again". The engines differ only in the demultiplexer
(select/poll/epoll, level- or edge-triggered), so the per-connection work
lives here once: read, feed the protocol handler, write what it can,
buffer the rest, and stop reading while the buffered output is above a high
water mark (backpressure: a client that sends without reading cannot make
the server's memory grow without bound).
"""
from __future__ import annotations

import socket
from abc import abstractmethod

from . import HIGH_WATER, LOW_WATER, RECV_SIZE, Server, tune

READ, WRITE = 1, 2


class Conn:
    __slots__ = ("closing", "handler", "mask", "out", "paused", "readable", "sock")

    def __init__(self, sock: socket.socket, handler):
        self.sock = sock
        self.handler = handler
        self.out = b""          # unsent output (bytes or bytearray)
        self.mask = 0           # interest currently registered (READ|WRITE)
        self.closing = False    # close once `out` is flushed
        self.paused = False     # reading stopped by backpressure
        self.readable = False   # edge-triggered only: data may be waiting unread


class Reactor(Server):
    """Subclasses implement the demultiplexer: `_register`, `_modify`, `_unregister`, `serve_forever`."""

    def __init__(self, listener, protocol):
        super().__init__(listener, protocol)
        listener.setblocking(False)
        self.conns: dict[int, Conn] = {}

    # -- the demultiplexer ----------------------------------------------------
    @abstractmethod
    def _register(self, fd: int, mask: int) -> None: ...

    @abstractmethod
    def _modify(self, fd: int, mask: int) -> None: ...

    @abstractmethod
    def _unregister(self, fd: int) -> None: ...

    def _want(self, fd: int, c: Conn, mask: int) -> None:
        # Only tell the kernel when the interest really changes: with epoll each
        # change is an epoll_ctl syscall.
        if mask != c.mask:
            c.mask = mask
            self._modify(fd, mask)

    def accept_fd_ok(self, fd: int) -> bool:
        """select() overrides this: it cannot watch descriptors >= FD_SETSIZE."""
        return True

    # -- connection work ------------------------------------------------------
    def on_accept(self) -> None:
        # Accept everything queued (bounded, so a connect storm cannot starve
        # established connections).
        for _ in range(256):
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:
                return              # EMFILE, ECONNABORTED: try again on the next event
            fd = sock.fileno()
            if not self.accept_fd_ok(fd):
                sock.close()
                continue
            sock.setblocking(False)
            tune(sock)
            c = Conn(sock, self.protocol.new())
            self.conns[fd] = c
            c.mask = READ
            self._register(fd, READ)

    def on_readable(self, fd: int, c: Conn) -> None:
        """Level-triggered: one recv per readiness event; the kernel will tell us again."""
        try:
            data = c.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.drop(fd, c)
            return
        if data:
            self.deliver(fd, c, data)
        else:
            self.on_eof(fd, c)

    def on_eof(self, fd: int, c: Conn) -> None:
        if c.out:
            c.closing = True
            self._want(fd, c, WRITE)
        else:
            self.drop(fd, c)

    def deliver(self, fd: int, c: Conn, data: bytes) -> bool:
        """Feed `data` to the handler and send the reply; False if the connection is gone."""
        out, close = c.handler.feed(data)
        if out:
            if c.out:
                if not isinstance(c.out, bytearray):
                    c.out = bytearray(c.out)
                c.out += out
            else:
                # Optimistic write: the socket is almost always writable, so try
                # now instead of waiting for a readiness event.
                try:
                    n = c.sock.send(out)
                except BlockingIOError:
                    n = 0
                except OSError:
                    self.drop(fd, c)
                    return False
                if n < len(out):
                    c.out = out[n:]
        if close:
            c.closing = True
        if c.out:
            if len(c.out) > HIGH_WATER:
                c.paused = True
            self._want(fd, c, WRITE if (c.paused or c.closing) else READ | WRITE)
        elif c.closing:
            self.drop(fd, c)
            return False
        return True

    def on_writable(self, fd: int, c: Conn) -> None:
        if c.out:
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                return
            except OSError:
                self.drop(fd, c)
                return
            c.out = c.out[n:]
        if not c.out:
            if c.closing:
                self.drop(fd, c)
                return
            c.paused = False
            self._want(fd, c, READ)
        elif c.paused and len(c.out) < LOW_WATER:
            c.paused = False
            self._want(fd, c, READ | WRITE)

    def drop(self, fd: int, c: Conn) -> None:
        self.conns.pop(fd, None)
        try:
            self._unregister(fd)
        except (OSError, KeyError, ValueError):
            pass
        c.sock.close()

    def close(self) -> None:
        for fd, c in list(self.conns.items()):
            self.drop(fd, c)
        super().close()


class PollerReactor(Reactor):
    """A reactor over a poller object with register/modify/unregister/poll:
    select.poll and select.epoll share that interface, so poll and epoll-lt are
    this class with different flags (and a different cost inside the kernel)."""

    IN: int
    OUT: int
    ERR: int          # reported without being asked for: treat as readable (recv tells what happened)

    def __init__(self, listener, protocol):
        super().__init__(listener, protocol)
        self.poller = self.new_poller()

    @abstractmethod
    def new_poller(self): ...

    @abstractmethod
    def wait(self) -> list[tuple[int, int]]: ...

    def _mask(self, mask: int) -> int:
        return (self.IN if mask & READ else 0) | (self.OUT if mask & WRITE else 0)

    def _register(self, fd, mask):
        self.poller.register(fd, self._mask(mask))

    def _modify(self, fd, mask):
        self.poller.modify(fd, self._mask(mask))

    def _unregister(self, fd):
        self.poller.unregister(fd)

    def serve_forever(self):
        lfd = self.listener.fileno()
        self.poller.register(lfd, self.IN)
        conns, wait = self.conns, self.wait
        on_readable, on_writable = self.on_readable, self.on_writable
        IN, OUT = self.IN | self.ERR, self.OUT
        while True:
            for fd, ev in wait():
                c = conns.get(fd)
                if c is None:
                    if fd == lfd:
                        self.on_accept()
                    continue
                if ev & OUT:
                    on_writable(fd, c)
                    if fd not in conns:
                        continue
                if ev & IN and c.mask & READ:
                    on_readable(fd, c)
