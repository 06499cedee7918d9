"""Multi-core mode (course §2.3 协程的多核模式): N worker processes.

Python runs one thread of Python at a time, so the way to use N cores is N
processes, each with its own scheduler and its own SO_REUSEPORT listener on
the same port; the kernel spreads incoming connections across them. The
parent only supervises: it forwards SIGTERM/SIGINT and reaps the workers.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from functools import partial

from ..servers.loop import Loop


def run_workers(n: int, target: Callable[[int], int | None],
                after_fork: Callable[[], object] | None = None) -> int:
    """Fork `n` workers running target(index); return the worst exit status.

    `after_fork()` runs in the parent once all are forked (to close what only
    the workers should hold, such as a listener)."""
    # SIGTERM/SIGINT stay blocked from the first fork until the forwarding handler is in
    # place: a signal in that window would otherwise stop the parent alone and leave its
    # workers serving. A signal that came meanwhile is delivered once unblocked.
    signals = (signal.SIGTERM, signal.SIGINT)
    pids: list[int] = []
    forwarded: set[int] = set()

    def forward(signum, frame):
        forwarded.add(signum)
        for p in pids:
            try:
                os.kill(p, signum)
            except ProcessLookupError:
                pass

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        for i in range(n):
            pid = os.fork()
            if pid == 0:
                try:
                    # A signal the parent forwarded before this worker ran is delivered (and
                    # its handler run) here: told to stop before it began, a clean stop.
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
                except BaseException:  # noqa: BLE001 - whatever the inherited handler raises
                    os._exit(0)
                code = 1
                try:
                    code = target(i) or 0
                except BaseException as exc:  # noqa: BLE001 - a worker must never return into the parent
                    print(f"worker {i}: {exc!r}", file=sys.stderr)
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            pids.append(pid)
        if after_fork is not None:
            after_fork()
        old = {s: signal.signal(s, forward) for s in signals}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        return _reap(pids, forwarded)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _reap(pids: list[int], forwarded: set[int]) -> int:
    """Wait for every worker; the worst exit status. The wait is a Loop on the workers'
    pidfds that a signal wakes too, so a SIGTERM landing just before the wait's syscall
    is forwarded at once (a blocking waitpid would sit on it until a worker ended).

    A worker that the forwarded signal itself ended stopped as asked: one that had not
    installed a handler yet (still starting) has the default action, and dies by it."""
    loop = Loop("epoll")
    loop.wake_on_signals()
    worst, left = 0, len(pids)

    def reap(pid: int, pidfd: int) -> None:
        nonlocal worst, left
        loop.forget(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, 0 if -code in forwarded else code & 0xFF)
        left -= 1
        if not left:
            loop.stop()

    try:
        for pid in pids:
            pidfd = os.pidfd_open(pid)
            loop.add_reader(pidfd, partial(reap, pid, pidfd))
        if left:
            loop.run_forever()
    finally:
        loop.close()
    return worst
