"""The stack's own event loop: a driver, the sans-I/O core and the clock, joined.

Its surface is small on purpose — `wait_time()`, `poll()`, `process(now)`, `flush()`;
`run_once` is one turn of them. The stack's epoll waits in it, and through that epoll
hpnlab.servers' shared event loop drives the stack (engine.StackBackend).
"""
from __future__ import annotations

import select
import time

from .stack import Outgoing, Stack


class Loop:
    def __init__(self, driver, stack: Stack, clock=time.monotonic, burst: int = 256):
        self.driver, self.stack, self.clock, self.burst = driver, stack, clock, burst
        stack.offload = bool(getattr(driver, "offload", False))
        self._poll = select.poll()
        fd = driver.fileno()
        self.busy_poll = fd is None                 # a poll-mode driver (DPDK): no fd to sleep on
        if fd is not None:
            self._poll.register(fd, select.POLLIN)
        self._backlog: list[Outgoing] = []          # frames the driver could not take yet
        self.stats = {"rx": 0, "tx": 0, "wakeups": 0}

    def process(self, now: float | None = None) -> int:
        """Take what the driver has, run due timers, send what the stack made."""
        now = self.clock() if now is None else now
        frames = self.driver.rx_burst(self.burst)
        receive = self.stack.receive
        for frame, csum_ok in frames:
            receive(frame, now, csum_ok)
        self.stack.tick(now)
        self.flush()
        self.stats["rx"] += len(frames)
        return len(frames)

    def flush(self) -> None:
        out = self._backlog + self.stack.take_tx() if self._backlog else self.stack.take_tx()
        if out:
            n = self.driver.tx_burst(out)
            self.stats["tx"] += n
            self._backlog = out[n:]

    def wait_time(self, limit: float | None = None) -> float | None:
        """How long to wait for frames: until the next timer (the stack's, or a frame a
        driver holds back), at most `limit` s (None: no limit), briefly while sends wait."""
        deadline = self.stack.next_deadline()
        held = getattr(self.driver, "next_deadline", None)
        if held is not None and (due := held()) is not None:
            deadline = due if deadline is None else min(deadline, due)
        wait = limit
        if deadline is not None:
            left = max(0.0, deadline - self.clock())
            wait = left if wait is None else min(wait, left)
        if self._backlog:
            wait = 0.001 if wait is None else min(wait, 0.001)
        return wait

    def watch(self, fd: int) -> None:
        """Also end a wait when kernel descriptor `fd` is readable (an epoll nesting
        kernel descriptors in the stack's, see epoll.py)."""
        self._poll.register(fd, select.POLLIN)

    def unwatch(self, fd: int) -> None:
        self._poll.unregister(fd)

    def poll(self, timeout: float | None) -> bool:
        """Wait up to `timeout` s (None: forever) for the driver to have frames."""
        if self.busy_poll:
            timeout = 0.0                           # look at the other fds, then poll the NIC again
        ready = bool(self._poll.poll(-1 if timeout is None else int(timeout * 1000 + 0.999)))
        self.stats["wakeups"] += ready
        return ready

    def run_once(self, timeout: float | None = None) -> int:
        """Wait for frames or the next timer (at most `timeout` s), then process."""
        self.flush()
        self.poll(self.wait_time(timeout))
        return self.process()

    def run_until(self, done, timeout: float | None = None) -> bool:
        """Run until `done()` is true (True) or `timeout` s pass (False)."""
        end = None if timeout is None else self.clock() + timeout
        while not done():
            left = None if end is None else end - self.clock()
            if left is not None and left <= 0:
                return done()
            self.run_once(0.05 if left is None else min(left, 0.05))
        return True
