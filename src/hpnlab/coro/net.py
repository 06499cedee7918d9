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

from .core import READ, WRITE, scheduler
from . import wait_readable, wait_writable


class Socket:
    """A non-blocking socket driven by the running hpnlab.coro scheduler."""

    __slots__ = ("sock", "fd")

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()

    async def accept(self) -> tuple["Socket", tuple]:
        while True:
            try:
                conn, addr = self.sock.accept()
            except BlockingIOError:
                await wait_readable(self.fd)
                continue
            return Socket(conn), addr

    # recv/send/sendall are generator-based awaitables (types.coroutine), not
    # `async def`: an await on them creates one generator instead of a
    # coroutine plus the trap's generator - the hot path of every request.
    @types.coroutine
    def recv(self, n: int):
        yield (READ, self.fd)
        while True:
            try:
                return self.sock.recv(n)
            except BlockingIOError:       # spurious wake-up (another reader, or RST race)
                yield (READ, self.fd)

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
    def send(self, data: bytes):
        while True:
            try:
                return self.sock.send(data)
            except BlockingIOError:
                yield (WRITE, self.fd)

    @types.coroutine
    def sendall(self, data: bytes):
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n == len(data):
            return
        view = memoryview(data)[n:]
        while view:
            yield (WRITE, self.fd)
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                pass

    async def connect(self, address: tuple) -> None:
        err = self.sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            await wait_writable(self.fd)
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {address}: {errno.errorcode.get(err, err)}")

    def setsockopt(self, *args) -> None:
        self.sock.setsockopt(*args)

    def close(self) -> None:
        """Close; tasks parked on this socket get OSError(EBADF)."""
        if self.fd >= 0:
            try:
                scheduler().forget(self.fd)
            except RuntimeError:
                pass                      # no scheduler running: nothing to forget
            self.fd = -1
            self.sock.close()

    def fileno(self) -> int:
        return self.fd

    def getsockname(self):
        return self.sock.getsockname()


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
__all__ = ["Socket", "listen", "connect", "READ", "WRITE"]
