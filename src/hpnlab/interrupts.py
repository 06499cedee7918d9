"""Cleanup that Ctrl-C cannot cut in half."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_deferring = 0


@contextmanager
def deferred_interrupts():
    """Hold Ctrl-C (SIGINT) back while cleanup runs, so a lab interrupted at any
    point still stops every process and removes every rule it made; the
    interrupt is raised once the (outermost) cleanup is done."""
    global _deferring
    if threading.current_thread() is not threading.main_thread() or _deferring:
        yield                      # an outer cleanup (or another thread) already holds SIGINT
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda *_: got.append(1))
    _deferring = 1
    try:
        yield
    finally:
        _deferring = 0
        signal.signal(signal.SIGINT, old)
        if got:
            raise KeyboardInterrupt
