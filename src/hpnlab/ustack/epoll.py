"""A user-space epoll for the stack's sockets: epoll_create / ctl / wait, level- and
edge-triggered, EPOLLONESHOT, and a ready list fed by the sockets' callbacks (as
Linux's ep_poll_callback feeds it), so wait() never scans the interest set.

The interest set is a red-black tree as in Linux (`interest="rbtree"`) or a dict
(`interest="dict"`); both are measured in the lab report.

A kernel descriptor (an eventfd, a pipe: what an event loop wakes itself with) may be
added too: it goes into a kernel epoll nested in this one, as Linux nests an epoll fd
in another, and the stack's wait also ends when that epoll is readable.
"""
from __future__ import annotations

import errno
import select

from .errors import SocketError
from .rbtree import RBTree

EPOLLIN, EPOLLPRI, EPOLLOUT, EPOLLERR, EPOLLHUP = 0x001, 0x002, 0x004, 0x008, 0x010
EPOLLRDHUP = 0x2000
EPOLLONESHOT, EPOLLET = 1 << 30, 1 << 31
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
_ALWAYS = EPOLLERR | EPOLLHUP          # reported whether asked for or not


class _Item:
    __slots__ = ("armed", "data", "events", "sock")

    def __init__(self, sock, events, data):
        self.sock, self.events, self.data, self.armed = sock, events, data, True


class Epoll:
    def __init__(self, net, interest: str = "rbtree"):
        if interest not in ("rbtree", "dict"):
            raise ValueError(f"interest={interest!r}: rbtree or dict")
        self.net = net
        self.interest: RBTree | dict[int, _Item] = RBTree() if interest == "rbtree" else {}
        self.ready: dict[int, _Item] = {}       # insertion-ordered: the ready list
        self.stats = {"wait_calls": 0, "events": 0, "wakeups": 0}
        self._kernel: select.epoll | None = None    # kernel descriptors, made on the first
        self._kernel_data: dict[int, object] = {}

    def ctl(self, op: int, fd: int, events: int = 0, data=None) -> None:
        sock = self.net.fds.get(fd)
        if sock is None:
            self._kernel_ctl(op, fd, events, data)
            return
        if op == EPOLL_CTL_ADD:
            if fd in self.interest:
                raise SocketError(errno.EEXIST, f"fd {fd} is already in the interest set")
            item = _Item(sock, events, fd if data is None else data)
            self.interest[fd] = item
            sock.watchers.add(self)
            self._wakeup(sock)                   # already ready? then it goes on the list now
        elif op == EPOLL_CTL_MOD:
            known = self.interest.get(fd)
            if known is None:
                raise SocketError(errno.ENOENT, f"fd {fd} is not in the interest set")
            known.events, known.armed = events, True
            if data is not None:
                known.data = data
            self._wakeup(sock)
        elif op == EPOLL_CTL_DEL:
            if fd not in self.interest:
                raise SocketError(errno.ENOENT, f"fd {fd} is not in the interest set")
            del self.interest[fd]
            self.ready.pop(fd, None)
            sock.watchers.discard(self)
        else:
            raise SocketError(errno.EINVAL, f"op {op}")

    def _kernel_ctl(self, op: int, fd: int, events: int, data) -> None:
        """epoll_ctl on the nested kernel epoll (its flag bits are Linux's, as ours are)."""
        if self._kernel is None:
            self._kernel = select.epoll()
            self.net.loop.watch(self._kernel.fileno())
        try:
            if op == EPOLL_CTL_ADD:
                self._kernel.register(fd, events)
                self._kernel_data[fd] = fd if data is None else data
            elif op == EPOLL_CTL_MOD:
                self._kernel.modify(fd, events)
                if data is not None:
                    self._kernel_data[fd] = data
            elif op == EPOLL_CTL_DEL:
                self._kernel.unregister(fd)
                del self._kernel_data[fd]
            else:
                raise SocketError(errno.EINVAL, f"op {op}")
        except OSError as exc:
            if isinstance(exc, SocketError):
                raise
            raise SocketError(exc.errno or errno.EBADF, f"fd {fd}") from None

    def register(self, fd: int, events: int = EPOLLIN, data=None) -> None:
        self.ctl(EPOLL_CTL_ADD, fd, events, data)

    def modify(self, fd: int, events: int) -> None:
        self.ctl(EPOLL_CTL_MOD, fd, events)

    def unregister(self, fd: int) -> None:
        self.ctl(EPOLL_CTL_DEL, fd)

    def _wakeup(self, sock) -> None:
        item = self.interest.get(sock.fd)
        if item is not None and item.armed and sock.poll_events() & (item.events | _ALWAYS):
            self.stats["wakeups"] += 1
            self.ready[sock.fd] = item

    def _forget(self, sock) -> None:
        """close() of a watched socket removes it, as the last close does in Linux."""
        if sock.fd in self.interest:
            del self.interest[sock.fd]
        self.ready.pop(sock.fd, None)

    def _harvest(self, maxevents: int) -> list[tuple[object, int]]:
        out: list[tuple[object, int]] = []
        for fd in list(self.ready):
            if len(out) >= maxevents:
                break
            item = self.ready.pop(fd)
            ev = item.sock.poll_events() & (item.events | _ALWAYS)
            if not ev:
                continue                          # no longer ready: off the list
            out.append((item.data, ev))
            if item.events & EPOLLONESHOT:
                item.armed = False
            elif not item.events & EPOLLET:
                self.ready[fd] = item             # level-triggered: stays on the list
        if self._kernel is not None and len(out) < maxevents:
            kdata = self._kernel_data
            out += [(kdata[fd], ev) for fd, ev in self._kernel.poll(0, maxevents - len(out))]
        return out

    def wait(self, maxevents: int = 64, timeout: float | None = -1) -> list[tuple[object, int]]:
        """Up to `maxevents` (data, events); timeout in seconds, None or < 0 forever, 0 poll."""
        self.stats["wait_calls"] += 1
        loop = self.net.loop
        loop.process()
        out = self._harvest(maxevents)
        if out or timeout == 0:
            self.stats["events"] += len(out)
            return out
        forever = timeout is None or timeout < 0
        end = None if forever else loop.clock() + timeout
        while True:
            left = None if forever else end - loop.clock()
            if left is not None and left <= 0:
                return []
            loop.run_once(0.05 if left is None else min(left, 0.05))
            out = self._harvest(maxevents)
            if out:
                self.stats["events"] += len(out)
                return out

    def close(self) -> None:
        for _, item in list(self.interest.items()):
            item.sock.watchers.discard(self)
        self.interest = type(self.interest)()
        self.ready.clear()
        if self._kernel is not None:
            self.net.loop.unwatch(self._kernel.fileno())
            self._kernel.close()
            self._kernel = None
            self._kernel_data.clear()
