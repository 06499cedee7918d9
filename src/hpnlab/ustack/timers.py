"""One timer heap for every timer of the stack: ARP retries and expiry, IP
reassembly, TCP RTO, delayed ACK, persist, keep-alive and TIME_WAIT.

Time is passed in (`run(now)`), never read here, so tests drive it by hand.
Cancelling marks an entry dead; dead entries are dropped when they reach the top.
"""
from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable


class Timer:
    __slots__ = ("alive", "callback", "deadline", "name")

    def __init__(self, deadline: float, callback: Callable[[float], None], name: str):
        self.deadline, self.callback, self.name, self.alive = deadline, callback, name, True

    def cancel(self) -> None:
        self.alive = False


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.fired: Counter = Counter()

    def add(self, deadline: float, callback: Callable[[float], None], name: str = "timer") -> Timer:
        timer = Timer(deadline, callback, name)
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].alive:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run(self, now: float) -> int:
        """Fire every live timer due at `now`; returns how many fired."""
        heap, n = self._heap, 0
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.alive:
                timer.alive = False
                self.fired[timer.name] += 1
                timer.callback(now)
                n += 1
        return n

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if t.alive)
