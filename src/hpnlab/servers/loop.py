"""hpnlab's event loop: one reactor under every readiness-based engine.

The shape of Redis's ae.c and asyncio's selector loop, small enough to read
in one sitting:

    loop = Loop("epoll")                  # or "epoll-et", "poll", "select"
    loop.add_reader(fd, on_readable)      # called with no arguments while fd is readable
    loop.add_writer(fd, on_writable)
    loop.call_later(0.5, tick)            # a timer (heap); .cancel() on the handle
    loop.call_soon(work)                  # next turn, before the loop sleeps again
    loop.before_sleep.append(flush)       # ae.c's beforesleep: each turn, before waiting
    loop.call_soon_threadsafe(work)       # from another thread (wakes the loop)
    loop.run_forever()                    # until loop.stop() (or an exception unwinds it)

One turn: run the before-sleep hooks, wait in the backend (no longer than
the next timer or zero if work is ready), call the readiness callbacks,
then the timers that are due, then what call_soon queued.

Backends (the demultiplexers of course §2.1.2.2) differ only in how they
wait; each is a few lines below:

    select    select(2): bit sets rebuilt and scanned every call; fds < 1024 only
    poll      poll(2): an array instead of bit sets, still scanned every call
    epoll     level-triggered epoll: the interest set lives in the kernel
    epoll-et  edge-triggered epoll: registered once for IN|OUT, never modified

Interest is kept *lazily*: remove_reader/remove_writer only clear the
callback; the kernel's interest is narrowed when it reports an fd nobody
listens to any more. A request/response connection (read, write, read...)
thus costs no epoll_ctl per request, the trick of libev and NtyCo.

Level vs edge. With a level-triggered backend a callback is called on
every turn while its fd stays ready, so reading once per call is enough.
With epoll-et (`loop.edge_triggered`) it is called once per *change*: the
callback must read (or write) until EAGAIN, or what is left is never
reported again. So that no edge is lost while nobody listened, adding a
callback on an edge-triggered loop also calls it once on the next turn.

Closing an fd: call `loop.forget(fd)` first (the kernel drops a closed
fd from epoll by itself, but the loop's own table would think the fd is
still registered and a new socket reusing the number would never be watched).

`loop.readers` / `loop.writers` are the fd -> callback tables (None: nobody
listens). A one-shot waiter (a coroutine or greenlet parked on an fd) may
clear its own slot there directly, as remove_reader would, without a call.

Callbacks run on the loop's thread; one Loop per thread. An exception in a
callback propagates out of run_forever (a server catches per-connection
errors in its own callbacks).

Signals: CPython runs a Python signal handler only between bytecodes of
the main thread. A signal that lands after the last check and before the
wait's syscall (or on another thread) only sets a flag, and the handler
would wait for the next event. `loop.wake_on_signals()` closes that gap
the way asyncio does: signal.set_wakeup_fd makes the C-level handler write
a byte to a pipe this loop watches, so the wait returns and the handler runs.

A stop can also be lost after its handler ran: the handler runs at whatever
bytecode the main thread is at, and an exception it raises inside a finalizer
(a `__del__`, a generator's close) is printed as "Exception ignored" and
dropped. So a handler made by `StopHandler` is called again when the pipe is
drained, from a plain loop callback, where its exception does propagate.
"""
from __future__ import annotations

import heapq
import itertools
import os
import select as _select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from itertools import repeat

READ, WRITE = 1, 2     # interest bits of add_reader/add_writer, and what Backend.register takes


class Backend:
    """A demultiplexer. `poll` returns (fd, events); `readable`/`writable` are
    the event bits meaning "call the reader"/"call the writer" (errors and hang-ups
    count as both: the callback's recv/send tells what happened)."""

    name: str
    edge_triggered = False
    max_fd: int | None = None          # select: descriptors >= FD_SETSIZE cannot be watched
    readable: int
    writable: int

    def register(self, fd: int, mask: int) -> None:
        raise NotImplementedError

    def modify(self, fd: int, mask: int) -> None:
        raise NotImplementedError

    def unregister(self, fd: int) -> None:
        raise NotImplementedError

    def poll(self, timeout: float | None) -> Iterable[tuple[int, int]]:
        """Wait up to `timeout` s (None: no limit) for readiness."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class SelectBackend(Backend):
    """select(2): the kernel rewrites the bit sets on return, so every call copies
    and scans all of them; the sets have FD_SETSIZE = 1024 bits."""

    name = "select"
    max_fd = 1024
    readable, writable = READ, WRITE

    def __init__(self) -> None:
        self.rset: set[int] = set()
        self.wset: set[int] = set()

    def register(self, fd, mask):
        if fd >= self.max_fd:
            raise ValueError(f"select cannot watch fd {fd} (FD_SETSIZE is {self.max_fd})")
        self.modify(fd, mask)

    def modify(self, fd, mask):
        (self.rset.add if mask & READ else self.rset.discard)(fd)
        (self.wset.add if mask & WRITE else self.wset.discard)(fd)

    def unregister(self, fd):
        self.rset.discard(fd)
        self.wset.discard(fd)

    def poll(self, timeout):
        r, w, _ = _select.select(self.rset, self.wset, (), timeout)
        if not w:
            return zip(r, repeat(READ))      # zip reuses its tuple: no list of pairs built
        ev = dict.fromkeys(r, READ)
        for fd in w:
            ev[fd] = ev.get(fd, 0) | WRITE
        return list(ev.items())


class PollBackend(Backend):
    """poll(2): no FD_SETSIZE, but the whole array goes to the kernel on every call
    and the kernel walks every registered descriptor, busy or idle."""

    name = "poll"
    IN, OUT = _select.POLLIN, _select.POLLOUT
    ERR = _select.POLLHUP | _select.POLLERR | _select.POLLNVAL

    def __init__(self):
        self.poller = self.new_poller()
        self.bits = (0, self.IN, self.OUT, self.IN | self.OUT)    # READ|WRITE -> native
        self.readable = self.IN | self.ERR
        self.writable = self.OUT | self.ERR

    def new_poller(self):
        return _select.poll()

    def register(self, fd, mask):
        self.poller.register(fd, self.bits[mask])

    def modify(self, fd, mask):
        self.poller.modify(fd, self.bits[mask])

    def unregister(self, fd):
        self.poller.unregister(fd)

    def poll(self, timeout):
        # poll() takes milliseconds; round up so a timer is never polled for early and spun on.
        return self.poller.poll(None if timeout is None else -(-timeout * 1000 // 1))


class EpollBackend(PollBackend):
    """Level-triggered epoll: the interest set is kept in the kernel, and epoll_wait
    returns only the ready descriptors - its cost follows activity, not size."""

    name = "epoll"
    IN, OUT = _select.EPOLLIN, _select.EPOLLOUT
    ERR = _select.EPOLLHUP | _select.EPOLLERR

    def __init__(self):
        super().__init__()
        # epoll.poll takes seconds and None for "no limit", as Backend.poll does:
        # hand out the C method itself, one Python frame less per turn.
        self.poll = self.poller.poll

    def new_poller(self):
        return _select.epoll()

    def close(self):
        self.poller.close()


class EpollETBackend(EpollBackend):
    """Edge-triggered epoll: each fd is registered once for IN|OUT|RDHUP|ET and never
    modified (no epoll_ctl after the first), and reported once per change."""

    name = "epoll-et"
    edge_triggered = True
    ALL = _select.EPOLLIN | _select.EPOLLOUT | _select.EPOLLRDHUP | _select.EPOLLET

    def __init__(self):
        super().__init__()
        self.readable |= _select.EPOLLRDHUP

    def register(self, fd, mask):
        self.poller.register(fd, self.ALL)

    def modify(self, fd, mask):
        pass             # already watching both directions: who listens is the loop's table


BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (SelectBackend, PollBackend, EpollBackend, EpollETBackend)}


class TimerHandle:
    """What call_later returns; `cancel()` it to drop the call."""

    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable, args: tuple):
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True     # left in the heap, skipped when it comes up (lazy deletion)


class StopHandler:
    """A SIGTERM/SIGINT handler that unwinds the main thread by raising `exc_type(signum)`,
    and raises it again from SignalWakeup.drain if the first one was lost in a finalizer
    (see the module docstring). Once the stop is under way, the stopper sets the signal to
    SIG_IGN (or back to its old handler): the drain then no longer raises."""

    def __init__(self, exc_type: Callable[[int], BaseException]):
        self.exc_type = exc_type

    def __call__(self, signum: int, frame) -> None:
        raise self.exc_type(signum)


class SignalWakeup:
    """A non-blocking pipe that every signal with a Python handler writes a byte to
    (signal.set_wakeup_fd): a wait that watches `rfd` returns when a signal comes,
    even one that came just before the wait began. One per process at a time,
    made on the main thread; close() puts the previous wake-up fd back."""

    def __init__(self):
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.previous = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)

    def drain(self) -> None:
        """Empty the pipe; a StopHandler's signal in it raises (again) from here."""
        try:
            carried = os.read(self.rfd, 4096)  # more than that: the fd stays ready, read again
        except BlockingIOError:
            return
        for signum in set(carried):
            handler = signal.getsignal(signum)
            if isinstance(handler, StopHandler):
                handler(signum, None)

    def close(self) -> None:
        if self.wfd >= 0:
            signal.set_wakeup_fd(self.previous)
            os.close(self.rfd)
            os.close(self.wfd)
            self.rfd = self.wfd = -1


class Loop:
    """One event loop; see the module docstring."""

    def __init__(self, backend: str | Backend = "epoll"):
        # a Backend object: a demultiplexer made elsewhere (the user-space stack's epoll,
        # hpnlab.ustack.engine), so every engine built on the Loop runs on it unchanged
        if isinstance(backend, Backend):
            self.backend = backend
        elif backend not in BACKENDS:
            raise ValueError(f"unknown loop backend {backend!r} (valid: {', '.join(BACKENDS)})")
        else:
            self.backend = BACKENDS[backend]()
        self.edge_triggered = self.backend.edge_triggered
        # Indexed by fd (descriptors are small dense integers): cheaper than dicts
        # and what makes the dispatch a list lookup.
        self.readers: list[Callable | None] = []
        self.writers: list[Callable | None] = []
        self.masks = bytearray()           # fd -> READ|WRITE registered with the backend
        self.ready: deque[Callable] = deque()
        self.timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self.before_sleep: list[Callable[[], None]] = []
        self.stopping = False
        # Another thread's call_soon_threadsafe wakes us through this eventfd.
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.add_reader(self._wakeup, self._drain_wakeup)
        self._signals: SignalWakeup | None = None

    # -- fds --------------------------------------------------------------------
    def _grow(self, fd: int) -> None:
        n = max(fd + 1, 2 * len(self.masks), 256) - len(self.masks)
        self.readers.extend([None] * n)
        self.writers.extend([None] * n)
        self.masks.extend(bytes(n))

    def _watch(self, fd: int, bit: int, table: list, callback: Callable) -> None:
        if fd >= len(self.masks):
            self._grow(fd)
        had = table[fd]
        table[fd] = callback
        mask = self.masks[fd]
        if not mask & bit:
            if mask:
                self.backend.modify(fd, mask | bit)
            else:
                self.backend.register(fd, mask | bit)
            self.masks[fd] = mask | bit
        if self.edge_triggered and had is None:
            self.ready.append(callback)      # an edge may have passed while nobody listened

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        """Call `callback()` whenever fd is readable (replaces an earlier reader)."""
        # Fast path (a connection's next wait for input): the kernel is already
        # asked about this fd, so only the callback changes.
        if fd < len(self.masks) and self.masks[fd] & READ and not self.edge_triggered:
            self.readers[fd] = callback
        else:
            self._watch(fd, READ, self.readers, callback)

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        """Call `callback()` whenever fd is writable (replaces an earlier writer)."""
        self._watch(fd, WRITE, self.writers, callback)

    def remove_reader(self, fd: int) -> None:
        if 0 <= fd < len(self.readers):
            self.readers[fd] = None

    def remove_writer(self, fd: int) -> None:
        if 0 <= fd < len(self.writers):
            self.writers[fd] = None

    def forget(self, fd: int) -> None:
        """Drop every interest in fd now; call before closing it."""
        if fd < len(self.masks):
            self.readers[fd] = self.writers[fd] = None
            if self.masks[fd]:
                self.masks[fd] = 0
                try:
                    self.backend.unregister(fd)
                except (OSError, KeyError, ValueError):
                    pass          # already closed: the kernel dropped it

    def _narrow(self, fd: int) -> None:
        """The backend reported an fd nobody listens to in that direction: stop asking."""
        mask = self.masks[fd]
        if not mask:
            return
        want = (READ if self.readers[fd] is not None else 0) | (WRITE if self.writers[fd] is not None else 0)
        if not want:
            # unregister entirely: hang-ups and errors are reported even for an empty mask
            self.masks[fd] = 0
            self.backend.unregister(fd)
        elif want != mask:
            self.masks[fd] = want
            self.backend.modify(fd, want)

    # -- calls ------------------------------------------------------------------
    def call_soon(self, callback: Callable, *args) -> None:
        """Call `callback(*args)` on the next turn, before the loop sleeps."""
        self.ready.append(partial(callback, *args) if args else callback)

    def call_soon_threadsafe(self, callback: Callable, *args) -> None:
        """call_soon from another thread: also wakes the loop if it is waiting."""
        self.call_soon(callback, *args)       # deque.append is atomic
        try:
            os.eventfd_write(self._wakeup, 1)
        except OSError:
            pass                              # closed: the loop is gone

    def _drain_wakeup(self) -> None:
        try:
            os.eventfd_read(self._wakeup)
        except BlockingIOError:
            pass

    def wake_on_signals(self) -> None:
        """Make a signal end this loop's wait at once, so that its Python handler runs
        (see the module docstring). Only the main thread runs signal handlers: on any
        other thread this does nothing (stop such a loop with call_soon_threadsafe)."""
        if self._signals is None and threading.current_thread() is threading.main_thread():
            self._signals = SignalWakeup()
            self.add_reader(self._signals.rfd, self._signals.drain)

    def call_later(self, delay: float, callback: Callable, *args) -> TimerHandle:
        return self.call_at(time.monotonic() + delay, callback, *args)

    def call_at(self, when: float, callback: Callable, *args) -> TimerHandle:
        """Call `callback(*args)` once time.monotonic() >= when."""
        handle = TimerHandle(when, callback, args)
        heapq.heappush(self.timers, (when, next(self._seq), handle))
        return handle

    def stop(self) -> None:
        """Make run_forever return after the current turn."""
        self.stopping = True

    # -- the loop ---------------------------------------------------------------
    def run_forever(self) -> None:
        self.stopping = False
        while not self.stopping:
            self.run_once()

    def run_once(self, block: bool = True) -> None:
        """One turn. block=False never waits (someone else has work ready)."""
        for hook in self.before_sleep:
            hook()
        ready, timers = self.ready, self.timers
        if ready or not block:
            timeout: float | None = 0.0
        elif timers:
            timeout = max(0.0, timers[0][0] - time.monotonic())
        else:
            timeout = None
        self._dispatch(self.backend.poll(timeout))
        if timers:
            self._run_timers()
        for _ in range(len(ready)):           # what was queued before this turn's calls
            ready.popleft()()

    def _dispatch(self, events: Iterable[tuple[int, int]]) -> None:
        readers, writers = self.readers, self.writers
        R, W = self.backend.readable, self.backend.writable
        r_only, w_only = R & ~W, W & ~R      # hang-ups and errors are in both
        et = self.edge_triggered
        for fd, ev in events:
            if ev & R:
                cb = readers[fd]
                if cb is not None:
                    cb()
                elif not et and (ev & r_only or writers[fd] is None):
                    self._narrow(fd)
            if ev & W:
                cb = writers[fd]
                if cb is not None:
                    cb()
                elif not et and (ev & w_only or readers[fd] is None):
                    self._narrow(fd)

    def _run_timers(self) -> None:
        timers, now = self.timers, time.monotonic()
        while timers and timers[0][0] <= now:
            handle = heapq.heappop(timers)[2]
            if not handle.cancelled:
                handle.cancelled = True          # done: a later cancel() is a no-op
                self.ready.append(partial(handle.callback, *handle.args) if handle.args
                                  else handle.callback)

    def close(self) -> None:
        if self._signals is not None:
            self.forget(self._signals.rfd)
            self._signals.close()
            self._signals = None
        if self._wakeup >= 0:
            self.forget(self._wakeup)
            os.close(self._wakeup)
            self._wakeup = -1
        self.backend.close()
