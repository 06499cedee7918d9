"""select: a reactor on select(2), the oldest demultiplexer.

select takes bit sets of descriptors that the kernel rewrites on return, so
every call copies and scans them all; and the sets have FD_SETSIZE = 1024
bits, so a descriptor number >= 1024 cannot be watched at all. This engine
closes such connections at once: select cannot serve ~1000+ connections.
"""
from __future__ import annotations

import select as _select

from .reactor import READ, WRITE, Reactor

FD_SETSIZE = 1024


class Select(Reactor):
    name = "select"

    def __init__(self, listener, protocol):
        super().__init__(listener, protocol)
        self.rset: set[int] = set()
        self.wset: set[int] = set()

    def accept_fd_ok(self, fd: int) -> bool:
        return fd < FD_SETSIZE

    def _register(self, fd, mask):
        self._modify(fd, mask)

    def _modify(self, fd, mask):
        (self.rset.add if mask & READ else self.rset.discard)(fd)
        (self.wset.add if mask & WRITE else self.wset.discard)(fd)

    def _unregister(self, fd):
        self.rset.discard(fd)
        self.wset.discard(fd)

    def serve_forever(self):
        lfd = self.listener.fileno()
        self.rset.add(lfd)
        conns = self.conns
        while True:
            readable, writable, _ = _select.select(self.rset, self.wset, ())
            for fd in writable:
                c = conns.get(fd)
                if c is not None:
                    self.on_writable(fd, c)
            for fd in readable:
                if fd == lfd:
                    self.on_accept()
                    continue
                c = conns.get(fd)
                if c is not None and c.mask & READ:
                    self.on_readable(fd, c)


ENGINE = Select
