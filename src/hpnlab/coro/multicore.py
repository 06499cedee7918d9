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

    def forward(signum, frame):
        for p in pids:
            try:
                os.kill(p, signum)
            except ProcessLookupError:
                pass

    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        for i in range(n):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
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
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    worst = 0
    try:
        for p in pids:
            while True:
                try:
                    _, status = os.waitpid(p, 0)
                    break
                except InterruptedError:
                    continue
            worst = max(worst, os.waitstatus_to_exitcode(status) & 0xFF)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return worst
