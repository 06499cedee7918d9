"""A BSD-like socket API on the stack: socket/bind/listen/accept/connect/send/recv/
sendto/recvfrom/shutdown/close/setsockopt, blocking and non-blocking, with errno-style
errors (SocketError.errno is what errno would hold).

By default one thread drives everything: a blocking call runs the stack's loop until it
can return (or its timeout passes), as a single-threaded kernel would run softirqs while
a process sleeps. `Net.start_thread()` instead gives the loop a thread of its own, and
then any number of threads may block in socket calls at once (one lock guards the
stack; a blocking call sleeps on a condition the loop signals after each pass) — the
thread-per-connection server of §2.4.4.

Descriptors are numbers the kernel handed out (each socket holds an open /dev/null):
never the same as a kernel descriptor of this process, so one event loop can index
the stack's sockets and its own eventfd or pipes in one fd table (hpnlab.servers' Loop
on `engine.StackBackend`).
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket as _socket
import threading

from .epoll import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP
from .errors import SocketError
from .loop import Loop
from .proto.tcp import Connection, Listener, Options
from .proto.tcp.connection import (
    CLOSE_WAIT,
    CLOSED,
    ESTABLISHED,
    SYN_RECEIVED,
    SYN_SENT,
)

AF_INET = _socket.AF_INET
SOCK_STREAM, SOCK_DGRAM = _socket.SOCK_STREAM, _socket.SOCK_DGRAM
SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2
SOL_SOCKET, IPPROTO_TCP = _socket.SOL_SOCKET, _socket.IPPROTO_TCP
# the options setsockopt knows: (level, name) -> Options attribute
_OPTS = {
    (IPPROTO_TCP, _socket.TCP_NODELAY): "nodelay",
    (SOL_SOCKET, _socket.SO_KEEPALIVE): "keepalive",
    (IPPROTO_TCP, _socket.TCP_KEEPIDLE): "keepidle",
    (IPPROTO_TCP, _socket.TCP_KEEPINTVL): "keepintvl",
    (IPPROTO_TCP, _socket.TCP_KEEPCNT): "keepcnt",
    (SOL_SOCKET, _socket.SO_RCVBUF): "rcvbuf",
    (SOL_SOCKET, _socket.SO_SNDBUF): "sndbuf",
}
SO_REUSEADDR = _socket.SO_REUSEADDR


def _ip(text: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise SocketError(errno.EINVAL, f"address {text!r} is not an IPv4 address") from None


class Net:
    """The stack as a process sees it: a descriptor table over one loop."""

    def __init__(self, loop: Loop):
        self.loop = loop
        self.stack = loop.stack
        self.fds: dict[int, Socket] = {}
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._thread: threading.Thread | None = None
        self._running = False

    def start_thread(self) -> None:
        """Run the loop in its own thread; from now on sockets may be used from many threads."""
        if self._thread is None:
            self._running = True
            self._thread = threading.Thread(target=self._run, name="ustack-loop", daemon=True)
            self._thread.start()

    def stop_thread(self) -> None:
        if self._thread is not None:
            self._running = False
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        loop = self.loop
        while self._running:
            with self.lock:
                loop.flush()
                wait = loop.wait_time(0.01)     # short: a socket call may have queued frames meanwhile
            loop.poll(wait)
            with self.cond:
                loop.process()
                self.cond.notify_all()

    @property
    def now(self) -> float:
        return self.loop.clock()

    def socket(self, family: int = AF_INET, type: int = SOCK_STREAM) -> Socket:
        if family != AF_INET:
            raise SocketError(errno.EAFNOSUPPORT, "only AF_INET")
        if type not in (SOCK_STREAM, SOCK_DGRAM):
            raise SocketError(errno.EPROTONOSUPPORT, "SOCK_STREAM or SOCK_DGRAM")
        try:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)     # a number no kernel descriptor has
        except OSError as exc:              # EMFILE: out of descriptors, as socket() would be
            raise SocketError(exc.errno or errno.EMFILE, "no descriptor for a new socket") from None
        with self.lock:
            sock = self.fds[fd] = Socket(self, type, fd)
        return sock

    def wait(self, ready, timeout: float | None) -> bool:
        if self._thread is None:
            return self.loop.run_until(ready, timeout)
        with self.cond:
            return self.cond.wait_for(ready, timeout)


def _locked(method):
    """Socket calls hold the stack's lock (re-entrant; a blocking wait releases it)."""
    @functools.wraps(method)
    def call(self, *args, **kw):
        with self.net.lock:
            return method(self, *args, **kw)
    return call


class Socket:
    def __init__(self, net: Net, type_: int, fd: int):
        self.net, self.type, self.fd = net, type_, fd
        self.blocking = True
        self.timeout: float | None = None
        self.opts = Options()
        self.local: tuple[bytes, int] | None = None
        self.conn: Connection | None = None
        self.listener: Listener | None = None
        self.peer: tuple[bytes, int] | None = None      # a datagram socket's connect()
        self.dgrams: list[tuple[bytes, int, bytes]] = []
        self.closed = False
        self.rd_shut = False
        self.watchers: set = set()  # epoll instances with this fd in their interest set
        self.reuseaddr = False

    def __repr__(self):
        return f"<ustack socket fd={self.fd} {self.conn or self.listener or 'unbound'}>"

    def fileno(self) -> int:
        return self.fd

    # -- readiness, for epoll -------------------------------------------------------------

    def _changed(self, _obj=None) -> None:
        for ep in list(self.watchers):
            ep._wakeup(self)

    def poll_events(self) -> int:
        ev = 0
        if self.listener is not None:
            return EPOLLIN if self.listener.accept_queue else 0
        if self.type == SOCK_DGRAM:
            return (EPOLLIN if self.dgrams else 0) | EPOLLOUT
        c = self.conn
        if c is None:
            return EPOLLOUT | EPOLLHUP if self.local is None else EPOLLHUP
        if c.rcvbuf or c.fin_received or c.error is not None:
            ev |= EPOLLIN
        if c.fin_received:
            ev |= EPOLLRDHUP
        if c.writable:
            ev |= EPOLLOUT
        if c.error is not None:
            ev |= EPOLLERR | EPOLLHUP
        elif c.hung_up and c.state not in (SYN_SENT, SYN_RECEIVED):
            ev |= EPOLLHUP
        return ev

    # -- calls ----------------------------------------------------------------------------

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def settimeout(self, value: float | None) -> None:
        self.timeout, self.blocking = value, True

    @_locked
    def setsockopt(self, level: int, name: int, value) -> None:
        if (level, name) == (SOL_SOCKET, SO_REUSEADDR):
            self.reuseaddr = bool(value)
            return
        attr = _OPTS.get((level, name))
        if attr is None:
            raise SocketError(errno.ENOPROTOOPT, f"option ({level}, {name}) is not one this stack has")
        value = bool(value) if attr in ("nodelay", "keepalive") else value
        if attr in ("rcvbuf", "sndbuf", "keepidle", "keepintvl", "keepcnt") and value <= 0:
            raise SocketError(errno.EINVAL, f"{attr} must be positive, not {value}")
        setattr(self.opts, attr, value)
        if self.conn is not None:
            setattr(self.conn.opts, attr, value)
            if attr in ("keepalive", "keepidle"):
                self.conn.arm_keepalive(self.net.now)
            if attr == "nodelay" and value:
                self.conn.output(self.net.now)
                self.net.loop.flush()

    def getsockopt(self, level: int, name: int):
        attr = _OPTS.get((level, name))
        if attr is None:
            raise SocketError(errno.ENOPROTOOPT, f"option ({level}, {name})")
        return getattr(self.opts, attr)

    @_locked
    def bind(self, addr: tuple[str, int]) -> None:
        ip, port = addr
        ipb = _ip(ip) if ip not in ("", "0.0.0.0") else self.net.stack.ip
        if ipb != self.net.stack.ip:
            raise SocketError(errno.EADDRNOTAVAIL, f"{ip} is not this stack's address")
        if self.local is not None:
            raise SocketError(errno.EINVAL, "already bound")
        stack = self.net.stack
        if self.type == SOCK_STREAM:
            if port and (port in stack.tcp.listeners or
                         (not self.reuseaddr and any(k[1] == port for k in stack.tcp.conns)) or
                         any(s.local == (ipb, port) and s.type == SOCK_STREAM and s is not self
                             for s in self.net.fds.values())):
                raise SocketError(errno.EADDRINUSE, f"port {port}")
        elif port in stack.udp_ports:
            raise SocketError(errno.EADDRINUSE, f"udp port {port}")
        if port == 0:
            port = stack.tcp.ephemeral_port((b"\0\0\0\0", 0))
        self.local = (ipb, port)
        if self.type == SOCK_DGRAM:
            stack.udp_ports[port] = self._udp_input

    @_locked
    def listen(self, backlog: int = 128) -> None:
        if self.type != SOCK_STREAM:
            raise SocketError(errno.EOPNOTSUPP, "listen on a datagram socket")
        if self.listener is None:
            self.listener = self.net.stack.tcp.listen(self._bound(), backlog, self.opts)
            self.listener.on_change = self._changed
        else:
            self.listener.backlog = backlog

    @_locked
    def accept(self) -> tuple[Socket, tuple[str, int]]:
        if self.listener is None:
            raise SocketError(errno.EINVAL, "accept on a socket that is not listening")
        if not self.listener.accept_queue:
            self._block(lambda: bool(self.listener.accept_queue), "accept")
        sock = self.net.socket(AF_INET, SOCK_STREAM)   # first: EMFILE leaves the connection queued, as in Linux
        conn = self.listener.accept()
        if conn is None:
            sock.close()
            raise SocketError(errno.EAGAIN, "accept")
        sock.local, sock.conn, sock.opts = conn.local, conn, conn.opts
        conn.on_change = sock._changed
        return sock, (str(ipaddress.IPv4Address(conn.remote[0])), conn.remote[1])

    def connect(self, addr: tuple[str, int]) -> None:
        err = self.connect_ex(addr)
        if err:
            raise SocketError(err, f"connect to {addr[0]}:{addr[1]}")

    @_locked
    def connect_ex(self, addr: tuple[str, int]) -> int:
        ip, port = addr
        remote = (_ip(ip), int(port))
        stack = self.net.stack
        if self.type == SOCK_DGRAM:
            self._bound()
            self.peer = remote
            return 0
        if self.conn is not None:
            if self.conn.state == SYN_SENT:
                return errno.EALREADY
            return errno.EISCONN if self.conn.error is None else self.conn.error
        if self.local is None:
            self.local = (stack.ip, stack.tcp.ephemeral_port(remote))
        try:
            conn = self.conn = stack.tcp.connect(self.local, remote, self.opts, self.net.now)
        except OSError as exc:
            return exc.errno or errno.EADDRNOTAVAIL
        conn.on_change = self._changed
        self.net.loop.flush()
        if not self.blocking:
            return errno.EINPROGRESS
        try:
            self._block(lambda: conn.state != SYN_SENT and conn.state != SYN_RECEIVED, "connect")
        except SocketError as exc:
            return exc.errno or errno.ETIMEDOUT
        return conn.error or 0

    def _bound(self) -> tuple[bytes, int]:
        """The local address, bound to an ephemeral port first if the socket has none."""
        if self.local is None:
            self.bind(("", 0))
        assert self.local is not None
        return self.local

    def _block(self, ready, what: str) -> None:
        if not self.blocking:
            raise SocketError(errno.EAGAIN, what)
        if not self.net.wait(ready, self.timeout):
            raise SocketError(errno.ETIMEDOUT if what == "connect" else errno.EAGAIN, f"{what} timed out")

    def _need_conn(self):
        if self.closed:
            raise SocketError(errno.EBADF, "closed")
        if self.conn is None:
            raise SocketError(errno.ENOTCONN, "not connected")
        return self.conn

    @_locked
    def send(self, data) -> int:
        if self.type == SOCK_DGRAM:
            if self.peer is None:
                raise SocketError(errno.EDESTADDRREQ, "send on an unconnected datagram socket")
            return self.sendto(data, (str(ipaddress.IPv4Address(self.peer[0])), self.peer[1]))
        c = self._need_conn()
        if c.error is not None:
            raise SocketError(c.error, "send")
        if c.state in (SYN_SENT, SYN_RECEIVED):
            self._block(lambda: c.state not in (SYN_SENT, SYN_RECEIVED), "send")
        if c.fin_queued or c.state not in (ESTABLISHED, CLOSE_WAIT):
            raise SocketError(c.error or errno.EPIPE, "send")
        if c.send_space() <= 0:
            self._block(lambda: c.send_space() > 0 or c.error is not None or c.state == CLOSED, "send")
            if c.error is not None:
                raise SocketError(c.error, "send")
        n = c.send(memoryview(data), self.net.now)
        self.net.loop.flush()
        return n

    def sendmsg(self, buffers, *_ancillary) -> int:
        """Gather-send (writev): as much of the buffers, in order, as the send buffer takes."""
        total = 0
        for buf in buffers:
            try:
                n = self.send(buf)
            except BlockingIOError:
                if total:
                    break
                raise
            total += n
            if n < len(buf):
                break
        return total

    def sendall(self, data) -> None:
        view = memoryview(data)
        while view:
            n = self.send(view)
            view = view[n:]

    @_locked
    def recv(self, n: int = 65536) -> bytes:
        c = self._need_conn()
        if not c.rcvbuf and not c.fin_received and c.error is None and not self.rd_shut:
            self._block(lambda: bool(c.rcvbuf) or c.fin_received or c.error is not None, "recv")
        if c.rcvbuf:
            data = c.recv(n, self.net.now)
            self.net.loop.flush()
            return data
        if c.error is not None:
            raise SocketError(c.error, "recv")
        return b""

    def _udp_input(self, src: bytes, sport: int, payload: bytes) -> None:
        if len(self.dgrams) < 1024:
            self.dgrams.append((src, sport, payload))
            self._changed()
        else:
            self.net.stack.count("udp.drop.socket_full")

    @_locked
    def sendto(self, data, addr: tuple[str, int]) -> int:
        if self.type != SOCK_DGRAM:
            raise SocketError(errno.EOPNOTSUPP, "sendto on a stream socket; use send")
        if not self.net.stack.send_udp(_ip(addr[0]), self._bound()[1], int(addr[1]), bytes(data)):
            raise SocketError(errno.ENETUNREACH, addr[0])
        self.net.loop.flush()
        return len(data)

    @_locked
    def recvfrom(self, n: int = 65536) -> tuple[bytes, tuple[str, int]]:
        if self.type != SOCK_DGRAM:
            raise SocketError(errno.EOPNOTSUPP, "recvfrom on a stream socket; use recv")
        if not self.dgrams:
            self._block(lambda: bool(self.dgrams), "recvfrom")
        src, sport, payload = self.dgrams.pop(0)
        return payload[:n], (str(ipaddress.IPv4Address(src)), sport)

    @_locked
    def shutdown(self, how: int) -> None:
        c = self._need_conn()
        if how in (SHUT_RD, SHUT_RDWR):
            self.rd_shut = True
        if how in (SHUT_WR, SHUT_RDWR):
            c.shutdown_write(self.net.now)
            self.net.loop.flush()

    @_locked
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = self.net.now
        for ep in list(self.watchers):
            ep._forget(self)
        if self.listener is not None:
            self.listener.close(now)
        if self.conn is not None:
            self.conn.on_change = None
            self.conn.close(now)
        if self.type == SOCK_DGRAM and self.local is not None:
            self.net.stack.udp_ports.pop(self.local[1], None)
        self.net.fds.pop(self.fd, None)
        os.close(self.fd)
        self.net.loop.flush()

    def getsockname(self) -> tuple[str, int]:
        if self.local is None:
            return ("0.0.0.0", 0)
        return (str(ipaddress.IPv4Address(self.local[0])), self.local[1])

    def getpeername(self) -> tuple[str, int]:
        c = self._need_conn()
        return (str(ipaddress.IPv4Address(c.remote[0])), c.remote[1])
