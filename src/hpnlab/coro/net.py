"""Coroutine sockets: accept/recv/send/connect that turn would-block into a yield.

As in NtyCo's nty_recv, recv *waits first* and then reads: in a
request/response loop the next request is rarely there yet when the reply
has just been sent, so trying first would cost a failed recv (EAGAIN, and in
Python an exception) per request. send tries first: a socket is almost
always writable, and it parks only on EAGAIN or a short write.
"""
from __future__ import annotations

import errno
import socket
import types

from . import wait_readable, wait_writable
from .core import READ, WRITE, scheduler

_recv, _send = socket.socket.recv, socket.socket.send
_accept, _close = socket.socket._accept, socket.socket.close   # type: ignore[attr-defined]


class Socket(socket.socket):
    """A non-blocking socket whose accept/recv/send/sendall/connect are awaitables
    driven by the running hpnlab.coro scheduler (NtyCo hooks the POSIX names the
    same way). It *is* a socket.socket - no wrapper object per connection.

        Socket(sock)          adopt an existing socket (it is detached)
        Socket(fileno=fd)     adopt a descriptor
    """

    __slots__ = ()

    def __init__(self, sock: socket.socket | None = None, *, fileno: int | None = None):
        super().__init__(fileno=sock.detach() if sock is not None else fileno)
        self.setblocking(False)

    async def accept(self) -> tuple[Socket, tuple]:  # type: ignore[override]
        while True:
            try:
                fd, addr = _accept(self)
            except BlockingIOError:
                await wait_readable(self.fileno())
                continue
            return Socket(fileno=fd), addr

    # recv/send/sendall are generator-based awaitables (types.coroutine), not
    # `async def`: awaiting one creates one generator instead of a coroutine
    # plus the trap's generator - this is the hot path of every request.
    @types.coroutine
    def recv(self, n: int):  # type: ignore[override]
        yield (READ, self.fileno())
        while True:
            try:
                return _recv(self, n)
            except BlockingIOError:       # spurious wake-up (another reader, or RST race)
                yield (READ, self.fileno())

    async def recv_exactly(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = await self.recv(n - got)
            if not chunk:
                raise EOFError(f"peer closed after {got} of {n} bytes")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    @types.coroutine
    def send(self, data: bytes):  # type: ignore[override]
        while True:
            try:
                return _send(self, data)
            except BlockingIOError:
                yield (WRITE, self.fileno())

    @types.coroutine
    def sendall(self, data: bytes):  # type: ignore[override]
        try:
            n = _send(self, data)
        except BlockingIOError:
            n = 0
        if n == len(data):
            return
        view = memoryview(data)[n:]
        while view:
            yield (WRITE, self.fileno())
            try:
                view = view[_send(self, view):]
            except BlockingIOError:
                pass

    async def connect(self, address: tuple) -> None:  # type: ignore[override]
        err = self.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            await wait_writable(self.fileno())
            err = self.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {address}: {errno.errorcode.get(err, err)}")

    def close(self) -> None:
        """Close; tasks parked on this socket get OSError(EBADF)."""
        fd = self.fileno()
        if fd >= 0:
            try:
                scheduler().forget(fd)
            except RuntimeError:
                pass                      # no scheduler running: nothing to forget
        _close(self)


def listen(host: str, port: int, backlog: int = 4096, reuseport: bool = False) -> Socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return Socket(sock)


async def connect(address: tuple) -> Socket:
    s = Socket(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        await s.connect(address)
    except BaseException:
        s.close()
        raise
    return s


# READ/WRITE re-exported for engines that build their own traps.
__all__ = ["READ", "WRITE", "Socket", "connect", "listen"]
