"""The scheduler of hpnlab.coro: a ready queue of tasks on hpnlab's event loop.

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

The waiting is the event loop's (servers/loop.py, level-triggered epoll):
a task parked on an fd *is* that fd's reader or writer callback (calling a
parked Task wakes it), and sleeps and join deadlines are the loop's timers.
The loop keeps epoll interest lazily: an fd stays registered after its
waiter woke up, because the next wait is almost always for the same
direction (recv, send reply, recv again), so a request/response loop costs
no epoll_ctl at all per request - the same trick as libev's and NtyCo's.
"""
from __future__ import annotations

import sys
import traceback
from collections import deque
from collections.abc import Coroutine
from typing import Any

from ..servers.loop import READ as LOOP_READ
from ..servers.loop import Loop, TimerHandle

READ, WRITE, SLEEP, JOIN, YIELD = range(5)


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
        self._wait: Any = None                     # tuple | int | None
        self._timer: TimerHandle | None = None     # its loop timer (sleep, join deadline), if any
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

    def __call__(self) -> None:
        """The loop calls a task parked on an fd when the fd is ready: wake it (once)."""
        s: Scheduler = _running   # type: ignore[assignment]   # set while any task runs
        w = self._wait
        (s.loop.readers if w & 3 == 1 else s.loop.writers)[w >> 2] = None
        s.fd_waiters -= 1
        self._wait = None
        s.ready.append(self)

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
        self.loop = Loop("epoll")
        self.ready: deque[Task] = deque()
        self.fd_waiters = 0                      # tasks parked on an fd
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
            key: Any
            kind, key = ((w & 3) - 1, w >> 2) if type(w) is int else w
            if kind in (READ, WRITE):
                table = self.loop.readers if kind == READ else self.loop.writers
                if table[key] is t:
                    table[key] = None
                    self.fd_waiters -= 1
            elif kind == JOIN and key._joiners and t in key._joiners:
                key._joiners.remove(t)
        if t._timer is not None:
            t._timer.cancel()
            t._timer = None

    def _finish(self, t: Task, result: Any, exc: BaseException | None) -> None:
        t.done = True
        t._value, t._error = result, exc
        t.coro = None  # type: ignore[assignment]   # free the frame now, not when the Task goes
        joiners, t._joiners = t._joiners, None
        if joiners:
            for j in joiners:
                if j._timer is not None:
                    j._timer.cancel()
                    j._timer = None
                j._wait = None
                self.ready.append(j)

    def _add_timer(self, t: Task, deadline: float) -> None:
        t._timer = self.loop.call_at(deadline, self._timer_fired, t)

    def _timer_fired(self, t: Task) -> None:
        t._timer = None
        if type(t._wait) is tuple and t._wait[0] == JOIN:
            self._unpark(t)
            t._error = TimeoutError()
        t._wait = None
        self.ready.append(t)

    # -- fds ------------------------------------------------------------------
    def _park_fd(self, t: Task, fd: int, kind: int) -> None:
        loop = self.loop
        table = loop.readers if kind == READ else loop.writers
        other = table[fd] if fd < len(table) else None
        if other is not None and other is not t:
            t._error = RuntimeError(f"fd {fd} already has a task waiting for the same event")
            self.ready.append(t)
            return
        if other is None:
            self.fd_waiters += 1
        t._wait = fd << 2 | (kind + 1)
        (loop.add_reader if kind == READ else loop.add_writer)(fd, t)

    def forget(self, fd: int) -> None:
        """The fd is about to be closed: drop its interest, fail its waiters."""
        loop = self.loop
        if fd >= len(loop.masks):
            return
        for table in (loop.readers, loop.writers):
            t: Any = table[fd]                 # a parked Task: the loop calls it when ready
            if t is not None:
                table[fd] = None
                self.fd_waiters -= 1
                t._wait = None
                t._error = OSError(9, f"fd {fd} was closed while a task waited on it")
                self.ready.append(t)
        loop.forget(fd)

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
            # fast path: nobody else reads this fd and the loop already watches it for input
            loop = self.loop
            if fd < len(loop.masks) and loop.masks[fd] & LOOP_READ and loop.readers[fd] is None:
                loop.readers[fd] = t
                self.fd_waiters += 1
                t._wait = fd << 2 | 1
            else:
                self._park_fd(t, fd, READ)
        elif kind == WRITE:
            self._park_fd(t, trap[1], WRITE)
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
        # A signal (Ctrl-C, SIGTERM) that lands just before epoll_wait must still wake us.
        self.loop.wake_on_signals()
        try:
            top = self.spawn(main, name="main")
            self._loop(top)
            return top.result()
        finally:
            _running = None

    def _loop(self, top: Task) -> None:
        ready, step, loop = self.ready, self._step, self.loop
        run_once = loop.run_once
        try:
            while not top.done:
                # Run what is ready now; tasks readied meanwhile wait for the next
                # round, after I/O is polled, so no task can starve the others.
                for _ in range(len(ready)):
                    step(ready.popleft())
                if top.done:
                    break
                if not (ready or self.fd_waiters or loop.timers or loop.ready):
                    raise RuntimeError("deadlock: the main task waits, but no task can ever wake it")
                run_once(not ready)
        finally:
            loop.close()


_running: Scheduler | None = None


def scheduler() -> Scheduler:
    if _running is None:
        raise RuntimeError("no hpnlab.coro scheduler is running (use hpnlab.coro.run(main()))")
    return _running
