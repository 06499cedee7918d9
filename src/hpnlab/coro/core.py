"""The scheduler of hpnlab.coro: a ready queue, timers, and epoll.

Course §2.3 (NtyCo): a coroutine framework turns blocking-style code into
event-driven code. Where NtyCo switches stacks in assembly, a Python
coroutine already *is* a suspended frame: `await` on a trap hands a small
tuple up to the scheduler, which parks the task on an fd or a timer and
resumes it with `coro.send()` when the event comes. One task costs one frame
plus a small Task object - no stack of its own - which is why ten thousand
connections fit in a few MiB.

Traps (what a task yields to the scheduler):
    (READ, fd) / (WRITE, fd)   park until epoll reports the fd ready
    (SLEEP, deadline)          park until time.monotonic() >= deadline
    (JOIN, task, deadline)     park until `task` ends (deadline may be None)
    (YIELD,)                   go to the back of the ready queue

epoll interest is kept *lazily*: an fd stays registered after its waiter
woke up, because the next wait is almost always for the same direction
(recv, send reply, recv again). Only when epoll reports an fd nobody waits
for is the interest narrowed. In a request/response loop that means no
epoll_ctl at all per request - the same trick as libev's and NtyCo's.
"""
from __future__ import annotations

import heapq
import itertools
import select
import sys
import time
import traceback
from collections import deque
from collections.abc import Coroutine
from typing import Any

READ, WRITE, SLEEP, JOIN, YIELD = range(5)

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
_IN_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_OUT_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR


class Cancelled(BaseException):
    """Thrown into a task at its current await by `task.cancel()`.

    A BaseException (as asyncio.CancelledError) so that `except Exception`
    in user code does not swallow a cancellation by accident.
    """


class Task:
    """A running coroutine. `await task` gives its result or raises its exception."""

    # Ten slots and no __dict__: with 10k connections every byte here counts
    # 10k times. _value is the value to send in while running and the result
    # once done; _error is the exception to throw in, then the one it ended with.
    __slots__ = (
        "_cancel_pending",
        "_error",
        "_joiners",
        "_observed",
        "_timer",
        "_value",
        "_wait",
        "coro",
        "done",
        "name",
    )

    def __init__(self, coro: Coroutine, name: str | None = None):
        self.coro = coro
        self.name = name
        self.done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._joiners: list[Task] | None = None
        # What it is parked on; None = ready or running. An fd wait is stored as
        # the int fd*4 + 1 (read) or + 2 (write) rather than a tuple: 56 bytes
        # less per parked connection. Timer and join waits are tuples.
        self._wait: tuple | int | None = None
        self._timer: list | None = None     # its entry in the timer heap, if any
        self._cancel_pending = False
        self._observed = False

    def cancel(self) -> bool:
        """Ask the task to stop: Cancelled is raised at its current (or next) await."""
        return False if self.done else scheduler().cancel(self)

    @property
    def cancelled(self) -> bool:
        return self.done and isinstance(self._error, Cancelled)

    def result(self) -> Any:
        if not self.done:
            raise RuntimeError(f"{self!r} has not finished")
        self._observed = True
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> BaseException | None:
        self._observed = True
        return self._error if self.done else None

    def __await__(self):
        if not self.done:
            yield (JOIN, self, None)
        return self.result()

    def __repr__(self) -> str:
        state = "done" if self.done else ("parked" if self._wait else "ready")
        return f"<Task {self.name or hex(id(self))} {state}>"

    def __del__(self):
        # Like asyncio's "Task exception was never retrieved": a failed task
        # nobody awaited must not fail silently.
        if self.done and self._error is not None and not self._observed \
                and not isinstance(self._error, Cancelled):
            print(f"hpnlab.coro: task {self.name or hex(id(self))} failed and nobody awaited it:",
                  file=sys.stderr)
            traceback.print_exception(self._error, file=sys.stderr)


class Scheduler:
    """Runs tasks until the main one ends. One per thread (normally one per process)."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.ready: deque[Task] = deque()
        # Indexed by fd (descriptors are small dense integers): a list slot is
        # 8 bytes and a bytearray slot 1, where a dict entry with its int key
        # costs ~100 - this is most of what keeps a connection under 1 KiB.
        self.readers: list[Task | None] = []
        self.writers: list[Task | None] = []
        self.masks = bytearray()                 # fd -> interest registered with epoll (0: none)
        self.fd_waiters = 0                      # tasks parked on an fd
        self.timers: list[list] = []             # heap of [deadline, seq, task]
        self._seq = itertools.count()
        self.current: Task | None = None

    # -- tasks --------------------------------------------------------------
    def spawn(self, coro: Coroutine, name: str | None = None) -> Task:
        task = Task(coro, name)
        self.ready.append(task)
        return task

    def cancel(self, t: Task) -> bool:
        if t.done:
            return False
        if t is self.current:
            t._cancel_pending = True          # raised at its next await
            return True
        self._unpark(t)
        t._error = Cancelled()
        if t._wait is not None:
            t._wait = None
            self.ready.append(t)
        return True

    def _unpark(self, t: Task) -> None:
        """Take a parked task out of whatever it waits on (not off the ready queue)."""
        w = t._wait
        if w is not None:
            kind, key = ((w & 3) - 1, w >> 2) if type(w) is int else w
            if kind == READ and self.readers[key] is t:
                self.readers[key] = None
                self.fd_waiters -= 1
            elif kind == WRITE and self.writers[key] is t:
                self.writers[key] = None
                self.fd_waiters -= 1
            elif kind == JOIN and key._joiners and t in key._joiners:
                key._joiners.remove(t)
        if t._timer is not None:
            t._timer[2] = None                 # lazily deleted from the heap
            t._timer = None

    def _finish(self, t: Task, result: Any, exc: BaseException | None) -> None:
        t.done = True
        t._value, t._error = result, exc
        t.coro = None                          # free the frame now, not when the Task goes
        joiners, t._joiners = t._joiners, None
        if joiners:
            for j in joiners:
                if j._timer is not None:
                    j._timer[2] = None
                    j._timer = None
                j._wait = None
                self.ready.append(j)

    def _add_timer(self, t: Task, deadline: float) -> None:
        entry = [deadline, next(self._seq), t]
        t._timer = entry
        heapq.heappush(self.timers, entry)

    # -- fds ------------------------------------------------------------------
    def _grow(self, fd: int) -> None:
        n = max(fd + 1, 2 * len(self.masks), 1024) - len(self.masks)
        self.readers.extend([None] * n)
        self.writers.extend([None] * n)
        self.masks.extend(bytes(n))

    def _park_fd(self, t: Task, fd: int, table: list, bit: int, kind: int) -> None:
        if fd >= len(self.masks):
            self._grow(fd)
        other = table[fd]
        if other is not None and other is not t:
            t._error = RuntimeError(f"fd {fd} already has a task waiting for the same event")
            self.ready.append(t)
            return
        if other is None:
            self.fd_waiters += 1
        table[fd] = t
        t._wait = fd << 2 | (kind + 1)
        mask = self.masks[fd]
        if not mask:
            self.ep.register(fd, bit)
            self.masks[fd] = bit
        elif not mask & bit:
            self.ep.modify(fd, mask | bit)
            self.masks[fd] = mask | bit

    def forget(self, fd: int) -> None:
        """The fd is about to be closed: drop its interest, fail its waiters."""
        if fd >= len(self.masks):
            return
        if self.masks[fd]:
            self.masks[fd] = 0
            try:
                self.ep.unregister(fd)
            except OSError:
                pass
        for table in (self.readers, self.writers):
            t = table[fd]
            if t is not None:
                table[fd] = None
                self.fd_waiters -= 1
                t._wait = None
                t._error = OSError(9, f"fd {fd} was closed while a task waited on it")
                self.ready.append(t)

    def _narrow(self, fd: int) -> None:
        """epoll reported an fd nobody waits for in that direction: stop asking."""
        mask = (EPOLLIN if self.readers[fd] is not None else 0) | \
            (EPOLLOUT if self.writers[fd] is not None else 0)
        if mask:
            if mask != self.masks[fd]:
                self.ep.modify(fd, mask)
                self.masks[fd] = mask
        elif self.masks[fd]:
            # Unregister entirely: HUP/ERR are reported even with an empty mask.
            self.masks[fd] = 0
            self.ep.unregister(fd)

    # -- the loop -------------------------------------------------------------
    def _step(self, t: Task) -> None:
        """Resume `t` until its next trap, and park it where the trap says.

        This runs once per wake-up of every task, so it is written for speed:
        the READ trap (a recv waiting) is tested first and parked inline.
        """
        self.current = t
        try:
            if t._error is None:
                value, t._value = t._value, None
                trap = t.coro.send(value)
            else:
                exc, t._error = t._error, None
                trap = t.coro.throw(exc)
        except StopIteration as stop:
            self.current = None
            self._finish(t, stop.value, None)
            return
        except (Exception, Cancelled) as exc:  # noqa: BLE001 - a task's failure is its result
            self.current = None
            self._finish(t, None, exc)
            return
        except BaseException:
            self.current = None
            raise
        self.current = None
        if t._cancel_pending:
            t._cancel_pending = False
            t._error = Cancelled()
            self.ready.append(t)
            return
        kind = trap[0]
        if kind == READ:
            fd = trap[1]
            # fast path: nobody else reads this fd and epoll already watches it for input
            if fd < len(self.masks) and self.masks[fd] & EPOLLIN and self.readers[fd] is None:
                self.readers[fd] = t
                self.fd_waiters += 1
                t._wait = fd << 2 | 1
            else:
                self._park_fd(t, fd, self.readers, EPOLLIN, READ)
        elif kind == WRITE:
            self._park_fd(t, trap[1], self.writers, EPOLLOUT, WRITE)
        elif kind == SLEEP:
            t._wait = (SLEEP, None)
            self._add_timer(t, trap[1])
        elif kind == JOIN:
            target: Task = trap[1]
            if target.done:
                self.ready.append(t)
                return
            if target._joiners is None:
                target._joiners = []
            target._joiners.append(t)
            t._wait = (JOIN, target)
            if trap[2] is not None:
                self._add_timer(t, trap[2])
        elif kind == YIELD:
            self.ready.append(t)
        else:
            t._error = RuntimeError(f"a task yielded {trap!r}; await hpnlab.coro functions only")
            self.ready.append(t)

    def run(self, main: Coroutine) -> Any:
        """Run `main` (and everything it spawns) until `main` returns; give its result."""
        global _running
        if _running is not None:
            raise RuntimeError("hpnlab.coro.run() cannot be nested")
        _running = self
        try:
            top = self.spawn(main, name="main")
            self._loop(top)
            return top.result()
        finally:
            _running = None

    def _loop(self, top: Task) -> None:
        ready, readers, writers, timers = self.ready, self.readers, self.writers, self.timers
        step, poll, monotonic = self._step, self.ep.poll, time.monotonic
        while not top.done:
            # Run what is ready now; tasks readied meanwhile wait for the next
            # round, after I/O is polled, so no task can starve the others.
            for _ in range(len(ready)):
                step(ready.popleft())
            if top.done:
                break
            if ready:
                timeout = 0.0
            elif timers:
                timeout = max(0.0, timers[0][0] - monotonic())
            elif self.fd_waiters:
                timeout = -1
            else:
                raise RuntimeError("deadlock: the main task waits, but no task can ever wake it")
            for fd, ev in poll(timeout, 1024):
                if ev & _IN_EVENTS:
                    t = readers[fd]
                    if t is not None:
                        readers[fd] = None
                        self.fd_waiters -= 1
                        t._wait = None
                        ready.append(t)
                    elif ev & EPOLLIN or writers[fd] is None:
                        self._narrow(fd)
                if ev & _OUT_EVENTS:
                    t = writers[fd]
                    if t is not None:
                        writers[fd] = None
                        self.fd_waiters -= 1
                        t._wait = None
                        ready.append(t)
                    elif ev & EPOLLOUT:
                        self._narrow(fd)
            if timers:
                now = monotonic()
                while timers and timers[0][0] <= now:
                    entry = heapq.heappop(timers)
                    t = entry[2]
                    if t is None:
                        continue                        # cancelled timer
                    t._timer = None
                    if type(t._wait) is tuple and t._wait[0] == JOIN:
                        self._unpark(t)
                        t._error = TimeoutError()
                    t._wait = None
                    ready.append(t)


_running: Scheduler | None = None


def scheduler() -> Scheduler:
    if _running is None:
        raise RuntimeError("no hpnlab.coro scheduler is running (use hpnlab.coro.run(main()))")
    return _running
