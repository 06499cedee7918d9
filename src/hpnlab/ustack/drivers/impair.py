"""Impairment at the stack's own egress: loss, delay and jitter (which reorders), the
way netem would on its NIC. A driver wrapper, because the stack's frames never pass
the host kernel's netfilter (AF_PACKET and TAP writes bypass it), so the lab's
nftables/NFQUEUE impairment (hpnlab.impair) cannot reach them; the peer's side keeps
using the lab's own mechanism."""
from __future__ import annotations

import heapq
import itertools
import random
import time


class ImpairedDriver:
    def __init__(self, inner, loss_pct: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                 clock=time.monotonic, seed: int | None = None):
        self.inner, self.clock = inner, clock
        self.loss, self.delay, self.jitter = loss_pct / 100, delay_ms / 1000, jitter_ms / 1000
        self.rng = random.Random(seed)
        self.held: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self.own = {"impair_dropped": 0, "impair_delayed": 0}
        self.name, self.mac, self.mtu = inner.name, inner.mac, inner.mtu
        self.offload = False        # a loss must take one wire frame, not a 64 KiB burst of them

    def fileno(self) -> int:
        return self.inner.fileno()

    def rx_burst(self, n: int = 64):
        self._release()
        return self.inner.rx_burst(n)

    def tx_burst(self, frames: list[bytes]) -> int:
        now = self.clock()
        for f in frames:
            if self.loss and self.rng.random() < self.loss:
                self.own["impair_dropped"] += 1
                continue
            if self.delay or self.jitter:
                due = now + max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
                heapq.heappush(self.held, (due, next(self._seq), f))
                self.own["impair_delayed"] += 1
            else:
                self.inner.tx_burst([f])
        self._release()
        return len(frames)

    def _release(self) -> None:
        now = self.clock()
        out = []
        while self.held and self.held[0][0] <= now:
            out.append(heapq.heappop(self.held)[2])
        if out:
            self.inner.tx_burst(out)

    def next_deadline(self) -> float | None:
        return self.held[0][0] if self.held else None

    @property
    def counters(self) -> dict:
        """The wrapped driver's counters and this wrapper's own."""
        return {**getattr(self.inner, "counters", {}), **self.own}

    def close(self) -> None:
        self.inner.close()
