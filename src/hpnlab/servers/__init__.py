"""I/O-model servers: one module per engine behind one small interface.

    python -m hpnlab.servers ENGINE --port P [--host H] [--workers N] [--protocol echo]

Every engine serves a sans-I/O protocol handler (servers/protocols) on a
listening socket it is given, until it is stopped by SIGTERM/SIGINT. The
readiness-based engines (select ... epoll-procs, coro, greenlet) all run on
one event loop, servers/loop.py. The engines are the course's I/O models
(§2.1-2.5; the multi-threaded ones answer §2.4.4 "多个 EPOLL 该如何实现？"):

    threads    one thread per connection, blocking sockets (一请求一线程)
    select     reactor on select(2) (FD_SETSIZE caps it at 1024 descriptors)
    poll       reactor on poll(2)
    epoll-lt   reactor on level-triggered epoll
    epoll-et   reactor on edge-triggered epoll: read/write until EAGAIN
    epoll-threads   N threads, each an epoll reactor with its own SO_REUSEPORT listener
    epoll-acceptor  one acceptor thread handing connections to N epoll worker threads
    epoll-procs     N pre-forked epoll reactor processes with SO_REUSEPORT listeners
    coro       hpnlab.coro, hpnlab's own coroutine framework (NtyCo idea)
    greenlet   stack-switching coroutines on an epoll hub
    uring      proactor on io_uring (hpnlab.uring, cffi over liburing)
    asyncio    asyncio Protocol, the stdlib reference
    uvloop     the same Protocol on uvloop (libuv), the fast reference
"""
from __future__ import annotations

import errno
import importlib
import signal
import socket
import sys
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import ClassVar

from ..errors import HpnlabError
from .loop import StopHandler
from .protocols import ProtocolFactory

# engine name -> module (names in the CLI use '-', modules '_'; a module that would share
# a library's or a package's name - select, asyncio, greenlet, coro... - ends in _engine)
ENGINES: dict[str, str] = {
    "threads": "threads",
    "select": "select_engine",
    "poll": "poll",
    "epoll-lt": "epoll_lt",
    "epoll-et": "epoll_et",
    "epoll-threads": "epoll_threads",
    "epoll-acceptor": "epoll_acceptor",
    "epoll-procs": "epoll_procs",
    "coro": "coro_engine",
    "greenlet": "greenlet_engine",
    "uring": "uring_engine",
    "asyncio": "asyncio_engine",
    "uvloop": "uvloop_engine",
}

# Socket-level knobs every engine shares, so that engines differ only in the I/O model.
RECV_SIZE = 64 * 1024          # bytes asked of one recv()
HIGH_WATER = 256 * 1024        # stop reading a connection with this much unsent output...
LOW_WATER = 64 * 1024          # ...and resume below this (bounded memory under backpressure)
BACKLOG = 4096


class EngineError(HpnlabError, RuntimeError):
    """An engine cannot run here (unknown name, missing kernel feature, port in use)."""


class Shutdown(BaseException):
    """Raised by the SIGTERM/SIGINT handler to unwind an engine's loop.

    A BaseException so that engines' `except Exception` around per-connection
    work does not swallow it. CPython runs the handler only between bytecodes
    of the main thread: a signal that lands just before a blocking
    epoll_wait/io_uring_enter (or on another thread) does not interrupt it and
    would wait for the next event. So every engine's main thread waits where
    the signal.set_wakeup_fd pipe wakes it (servers/loop.py: Loop.wake_on_signals,
    SignalWakeup); asyncio and uvloop do the same in add_signal_handler. The
    handler is a StopHandler: if the main thread was in a finalizer when it ran,
    its exception was lost, and the pipe's drain raises it again.
    """


class Server(ABC):
    """One engine. `serve()` blocks until SIGTERM/SIGINT, then closes everything.

    An engine with `parallel = True` runs `workers` threads or processes of its
    own (default: the host's CPU count) on a listener bound with SO_REUSEPORT;
    for the others `--workers N` means N forked copies of the whole engine.
    """

    name: ClassVar[str]
    parallel: ClassVar[bool] = False

    def __init__(self, listener: socket.socket, protocol: ProtocolFactory, workers: int = 1):
        self.listener = listener
        self.protocol = protocol
        self.workers = workers

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this engine cannot run on this machine, or None if it can."""
        return None

    @abstractmethod
    def serve_forever(self) -> None:
        """Run the event loop / accept loop; only returns by an exception."""

    def close(self) -> None:
        """Close the listener and every connection (after serve_forever unwound)."""
        self.listener.close()

    def serve(self) -> None:
        on_signal = StopHandler(Shutdown)
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        # A Shutdown lost in a finalizer is raised again by the loop (StopHandler): not
        # worth the "Exception ignored" traceback CPython would print on a clean stop.
        report_unraisable = sys.unraisablehook
        sys.unraisablehook = partial(_unless_shutdown, report_unraisable)
        try:
            self.serve_forever()
        except Shutdown:
            pass
        finally:
            for s in old:
                signal.signal(s, signal.SIG_IGN)   # a second signal must not interrupt cleanup
            self.close()
            for s, h in old.items():
                signal.signal(s, h)
            sys.unraisablehook = report_unraisable


def _unless_shutdown(report: Callable, unraisable) -> None:
    if not isinstance(unraisable.exc_value, Shutdown):
        report(unraisable)


def missing_module(module: str) -> str | None:
    """For Server.unavailable(): why an engine's library cannot be imported, or None."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc})"
    return None


def engine_class(name: str) -> type[Server]:
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r} (valid: {', '.join(ENGINES)})")
    try:
        module = importlib.import_module(f"{__name__}.{ENGINES[name]}")
    except ImportError as exc:
        raise EngineError(f"engine {name} is unavailable: {exc}") from None
    return module.ENGINE


def unavailable(name: str) -> str | None:
    """None if `name` can run here, else the reason (for the bench's skip list)."""
    try:
        return engine_class(name).unavailable()
    except EngineError as exc:
        return str(exc)


def listen(host: str, port: int, reuseport: bool = False, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket; a port in use gets a clear EngineError."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        # Multi-core mode: N processes each own a listener on the same port and
        # the kernel spreads connections among them (course §2.3 协程的多核模式).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise EngineError(f"port {port} on {host} is in use (EADDRINUSE)") from None
        raise EngineError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    return sock


def reuseport_listeners(listener: socket.socket, n: int) -> list[socket.socket]:
    """`listener` and n-1 more SO_REUSEPORT listeners on its address, all opened now so
    that the kernel spreads connections over all n from the first one on."""
    host, port = listener.getsockname()[:2]
    return [listener] + [listen(host, port, reuseport=True) for _ in range(1, n)]


def tune(sock: socket.socket) -> None:
    """Per-connection options all engines set alike: no Nagle delay on replies."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class QueuedLater:
    """The later-answer connection (connection_made's `conn`, servers/transport.py's
    contract) of the engines whose sends block the caller: coro and greenlet. write() and
    close() come from loop callbacks, which must not block, so the queue is flushed by a
    task or greenlet of its own (`start_flush`); the connection's own replies go through
    the same queue, so a late answer never interleaves with them."""

    def __init__(self, sock: socket.socket, loop):
        self.sock, self.loop = sock, loop
        self.queue: deque[bytes] = deque()
        self.sending = self.closing = False

    def start_flush(self) -> None:
        """Flush the queue (then `flushed()`) without blocking the caller."""
        raise NotImplementedError

    def flushed(self) -> None:
        self.sending = False
        if self.closing:
            self._shutdown()

    def write(self, data: bytes) -> None:
        self.queue.append(data)    # queued now, so that a close() right after waits for it
        if not self.sending:
            self.sending = True
            self.start_flush()

    def close(self) -> None:
        """Close once the queued output is sent (the connection's reader sees EOF)."""
        self.closing = True
        if not self.sending and not self.queue:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.sock.fileno() >= 0:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def call_later(self, delay: float, callback: Callable, *args):
        return self.loop.call_later(delay, callback, *args)

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        self.loop.call_soon_threadsafe(callback, *args)

