"""hpnlab.coro - hpnlab's own coroutine framework on epoll (course §2.3, the NtyCo idea).

Blocking-style code, reactor speed:

    from hpnlab import coro

    async def echo(conn: coro.Socket):
        while data := await conn.recv(65536):   # would-block -> the task yields
            await conn.sendall(data)
        conn.close()

    async def main():
        listener = coro.listen("127.0.0.1", 7000)
        while True:
            conn, _ = await listener.accept()
            coro.spawn(echo(conn))

    coro.run(main())                      # one core
    coro.run_workers(4, lambda i: coro.run(main()), )   # N cores: SO_REUSEPORT processes

Scheduler (ready queue, timers, epoll): core.py. Sockets: net.py.
Multi-core mode: multicore.py.
"""
from __future__ import annotations

import time
import types
from collections.abc import Awaitable, Coroutine
from typing import Any

from .core import JOIN, READ, SLEEP, WRITE, YIELD, Cancelled, Scheduler, Task, scheduler


def run(main: Coroutine) -> Any:
    """Run `main` on a fresh scheduler until it returns; its exception propagates."""
    return Scheduler().run(main)


def spawn(coro: Coroutine, name: str | None = None) -> Task:
    """Start `coro` as a new task (it runs once the current task awaits)."""
    return scheduler().spawn(coro, name)


def current() -> Task:
    t = scheduler().current
    assert t is not None
    return t


@types.coroutine
def sleep(seconds: float):
    """Suspend this task for `seconds`; sleep(0) just lets others run."""
    if seconds <= 0:
        yield (YIELD,)
    else:
        yield (SLEEP, time.monotonic() + seconds)


@types.coroutine
def wait_readable(fd: int):
    yield (READ, fd)


@types.coroutine
def wait_writable(fd: int):
    yield (WRITE, fd)


@types.coroutine
def _join(task: Task, deadline: float | None):
    if not task.done:
        yield (JOIN, task, deadline)


async def wait_for(aw: Awaitable, timeout: float) -> Any:
    """Await `aw` (a Task or a coroutine); after `timeout` s cancel it and raise TimeoutError."""
    task = aw if isinstance(aw, Task) else spawn(aw)    # type: ignore[arg-type]
    try:
        await _join(task, time.monotonic() + timeout)
    except TimeoutError:
        task.cancel()
        await _join(task, None)          # let it unwind (its finally blocks run)
        task.exception()                 # a Cancelled, or whatever it raised while unwinding
        raise
    except BaseException:
        task.cancel()
        raise
    return task.result()


async def gather(*aws: Awaitable) -> list[Any]:
    """Run all concurrently; results in order. The first exception propagates
    (after the others are cancelled)."""
    tasks = [aw if isinstance(aw, Task) else spawn(aw) for aw in aws]   # type: ignore[arg-type]
    try:
        return [await t for t in tasks]
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


from .multicore import run_workers  # noqa: E402 - they import the scheduler defined above
from .net import Socket, connect, listen  # noqa: E402

__all__ = [
    "Cancelled",
    "Scheduler",
    "Socket",
    "Task",
    "connect",
    "current",
    "gather",
    "listen",
    "run",
    "run_workers",
    "sleep",
    "spawn",
    "wait_for",
    "wait_readable",
    "wait_writable",
]
