"""The retransmission timer's value (RFC 6298): SRTT, RTTVAR, RTO with a floor, a
ceiling and exponential backoff. Karn's rule is the caller's: sample only segments
sent once (or use timestamp echoes, RFC 7323 §4)."""
from __future__ import annotations


class RtoEstimator:
    def __init__(self, initial: float = 1.0, minimum: float = 0.2, maximum: float = 60.0,
                 granularity: float = 0.001):
        # RFC 6298 §2.4 asks for a 1 s floor; Linux uses 200 ms, and so do we by default
        # (a LAN's RTT is far below either): `minimum` is a knob.
        self.rto, self.minimum, self.maximum, self.granularity = initial, minimum, maximum, granularity
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoffs = 0

    def sample(self, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.backoffs = 0
        self.rto = min(self.maximum, max(self.minimum, self.srtt + max(self.granularity, 4 * self.rttvar)))

    def backoff(self) -> None:
        """§5.5: double the RTO after it expired (up to the ceiling)."""
        self.backoffs += 1
        self.rto = min(self.maximum, self.rto * 2)
