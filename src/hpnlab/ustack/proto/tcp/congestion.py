"""Congestion control: slow start and congestion avoidance (RFC 5681, byte counting
per RFC 3465 with L = 1 SMSS), fast retransmit and NewReno fast recovery (RFC 6582)."""
from __future__ import annotations

from collections import Counter


class NewReno:
    def __init__(self, mss: int):
        self.mss = mss
        # RFC 5681 §3.1's initial window
        self.cwnd = min(4 * mss, max(2 * mss, 4380))
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.in_recovery = False
        self.recover: int | None = None   # snd_max when recovery (or a timeout) began
        self._acked = 0             # bytes acked toward the next congestion-avoidance step
        self.events: Counter = Counter()

    def on_ack(self, acked: int, flight_after: int, full: bool, cwnd_limited: bool = True) -> bool:
        """New data acked. `full`: the ack covers `recover` (ends a recovery). Returns True
        when the caller must retransmit the first unacked segment (a partial ack).
        `cwnd_limited`: the window was the limit; if the application or the receiver's
        window was, cwnd does not grow (RFC 7661's point: an unused cwnd proves nothing)."""
        self.dupacks = 0
        if self.in_recovery:
            if full:
                self.in_recovery = False
                self.cwnd = max(min(self.ssthresh, flight_after + self.mss), self.mss)
                self.events["recovery_exit"] += 1
                return False
            # partial ack: deflate by what was acked, add back one SMSS, retransmit the next hole
            self.cwnd = max(self.cwnd - acked + (self.mss if acked >= self.mss else 0), self.mss)
            self.events["partial_ack"] += 1
            return True
        if not cwnd_limited:
            return False
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, self.mss)
        else:
            self._acked += acked
            if self._acked >= self.cwnd:
                self._acked -= self.cwnd
                self.cwnd += self.mss
        return False

    def on_dupack(self, flight: int, snd_max: int, una_after_recover: bool) -> bool:
        """A duplicate ACK. Returns True on the third (fast retransmit now)."""
        self.dupacks += 1
        if self.in_recovery:
            self.cwnd += self.mss               # each dupack: a segment has left the network
            return False
        if self.dupacks == 3 and una_after_recover:
            self.ssthresh = max(flight // 2, 2 * self.mss)
            self.cwnd = self.ssthresh + 3 * self.mss
            self.recover = snd_max
            self.in_recovery = True
            self.events["fast_retransmit"] += 1
            return True
        return False

    def on_timeout(self, flight: int, snd_max: int) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss                    # the loss window: one segment
        self.in_recovery = False
        self.dupacks = 0
        self.recover = snd_max
        self.events["timeout"] += 1
