"""A simulated datagram link on a virtual millisecond clock (the shape of KCP's test.h
LatencySimulator): per-direction loss, a delay drawn from a range, optional duplication,
and reordering (a delay drawn per packet lets a later packet overtake an earlier one).

    link = Link(loss=0.1, delay=(5, 30), seed=1)
    link.send(0, datagram, now)        # from end 0 to end 1
    for datagram in link.deliver(1, now): ...
"""
from __future__ import annotations

import heapq
import random
from collections import Counter


class Link:
    def __init__(self, loss: float = 0.0, delay: tuple[int, int] = (0, 0), dup: float = 0.0,
                 seed: int = 0, record: bool = False):
        self.loss, self.delay, self.dup = loss, delay, dup
        # with record: (end, time sent, datagram, when its first copy arrives or None: lost)
        self.log: list[tuple[int, int, bytes, int | None]] | None = [] if record else None
        self.rng = random.Random(seed)
        self.queues: list[list[tuple[int, int, bytes]]] = [[], []]
        self.n = 0
        self.sent = [0, 0]          # bytes put on the link, per sending end
        self.dropped = 0

    def send(self, end: int, datagram: bytes, now: int) -> None:
        self.sent[end] += len(datagram)
        copies = 2 if self.rng.random() < self.dup else 1
        arrivals = []
        for _ in range(copies):
            if self.rng.random() < self.loss:
                self.dropped += 1
                continue
            self.n += 1
            arrivals.append(now + self.rng.randint(*self.delay))
            heapq.heappush(self.queues[1 - end], (arrivals[-1], self.n, datagram))
        if self.log is not None:
            self.log.append((end, now, datagram, min(arrivals, default=None)))

    def deliver(self, end: int, now: int) -> list[bytes]:
        """The datagrams due at `end` by `now`, in arrival order."""
        q, out = self.queues[end], []
        while q and q[0][0] <= now:
            out.append(heapq.heappop(q)[2])
        return out

    def step(self, ends, now: int, seen=None, until: int | None = None) -> None:
        """One tick of both ends (0 and 1) on this link: each updates, puts its output on
        the link (`seen(end, datagram)` looks at each first) and takes in what is due.
        With `until`, what arrives after `now` up to `until`, each datagram stamped with its
        own arrival time: a real loop's wait between two updates."""
        for end, me in enumerate(ends):
            me.update(now)
            for d in me.pop_output():
                if seen is not None:
                    seen(end, d)
                self.send(end, d, now)
            for t in (range(now + 1, until + 1) if until is not None else (now,)):
                for d in self.deliver(end, t):
                    me.input(d, t)


def resend_census(log) -> Counter:
    """Every PUSH resent on a recorded link, by what had become of its earlier copies when it
    left: 'needed' (none got through), 'arrived' (one had arrived: its ACK was lost or still on
    its way), 'in flight' (one was still on its way: a slow one, overtaken)."""
    from .arq import CMD_PUSH, segments
    copies: dict[tuple[int, int], list[int]] = {}
    out: Counter = Counter()
    for end, now, datagram, arrival in log:
        for _, cmd, _, _, _, sn, _, _ in segments(datagram):
            if cmd != CMD_PUSH:
                continue
            if (end, sn) in copies:
                got = copies[(end, sn)]
                out["needed" if not got else "arrived" if min(got) <= now else "in flight"] += 1
            copies.setdefault((end, sn), []).extend([arrival] if arrival is not None else [])
    return out


def echo_scenario(a, b, link: Link, count: int, every_ms: int = 20, limit_ms: int = 3_600_000,
                  lags: random.Random | None = None):
    """KCP's test.cpp on the virtual clock: `a` sends an 8-byte message (index, time) every
    `every_ms`, `b` echoes it, both update every millisecond - or, with `lags`, the schedule
    of the lab's loop: the next update 1-3 ms later (as a busy machine runs it), and what
    arrives in between taken in at its own time. Returns (RTTs in ms in the order they came
    back, a SHA-256 of every datagram both ends sent, with its time)."""
    import hashlib
    import struct
    msg = struct.Struct("<II")
    digest = hashlib.sha256()
    rtts: list[int] = []
    sent = now = 0
    while len(rtts) < count:
        if now > limit_ms:
            raise TimeoutError(f"{len(rtts)} of {count} echoes after {limit_ms} ms")
        while sent < count and now >= sent * every_ms:
            a.send(msg.pack(sent, now))
            sent += 1
        until = now + lags.choice((1, 1, 1, 2, 3)) if lags else None
        link.step((a, b), now, lambda end, d, now=now: digest.update(msg.pack(end, now) + d), until)
        now = until if until is not None else now
        while (m := b.recv()) is not None:
            b.send(m)
        while (m := a.recv()) is not None:
            i, ts = msg.unpack(m)
            if i != len(rtts):
                raise AssertionError(f"echo {i} came back where {len(rtts)} was due")
            rtts.append(now - ts)
        if lags is None:
            now += 1
    return rtts, digest.hexdigest()
