"""SYN cookies (RFC 4987 §3.6), laid out as Linux lays them out: when a listener's
half-open queue is full, the SYN-ACK's ISN carries what the listener would have kept,
and nothing is kept; the client's ACK (ack - 1 = the cookie) rebuilds the connection.

    cookie = H1(4-tuple) + client ISN + (count << 24) + (H2(4-tuple, count) + mss_index) mod 2**24

`count` is the time in 64-s periods; a cookie older than two periods is refused. Only
one of four MSS values fits (Linux's msstab). Window scaling and SACK do not fit in
the ISN: as Linux does, they ride in the low bits of the SYN-ACK's TSval when the client
sent timestamps (its ACK echoes them in TSecr), and are turned off when it did not —
the connection then has MSS, no window scaling, no timestamps.
"""
from __future__ import annotations

import hashlib
import os

MSS_TABLE = (536, 1300, 1440, 1460)
PERIOD = 64.0                   # seconds per count step
MAX_AGE = 2                     # periods a cookie stays valid
TS_BITS = 4                     # TSval's low bits: the client's window scale, 15 for none
NO_WSCALE = (1 << TS_BITS) - 1
M = 0xFFFFFFFF


class CookieJar:
    def __init__(self):
        self._k1, self._k2 = os.urandom(16), os.urandom(16)

    @staticmethod
    def _hash(secret: bytes, key: tuple, count: int = 0) -> int:
        msg = b"%s%d%s%d/%d" % (key[0], key[1], key[2], key[3], count)
        return int.from_bytes(hashlib.blake2s(msg, key=secret, digest_size=4).digest(), "big")

    def make(self, key: tuple, client_isn: int, client_mss: int, now: float) -> tuple[int, int]:
        """Our ISN for the SYN-ACK and the MSS it stands for (the largest in the table
        that is not above the client's)."""
        index = max((i for i, m in enumerate(MSS_TABLE) if m <= client_mss), default=0)
        count = int(now / PERIOD)
        cookie = (self._hash(self._k1, key) + client_isn + (count << 24)
                  + ((self._hash(self._k2, key, count) + index) & 0xFFFFFF))
        return cookie & M, MSS_TABLE[index]

    def check(self, key: tuple, client_isn: int, cookie: int, now: float) -> int | None:
        """The MSS a returning cookie stands for, or None if it is forged or too old."""
        count = int(now / PERIOD)
        value = (cookie - self._hash(self._k1, key) - client_isn) & M
        age = (count - (value >> 24)) & 0xFF
        if age >= MAX_AGE:
            return None
        index = (value - self._hash(self._k2, key, count - age)) & 0xFFFFFF
        return MSS_TABLE[index] if index < len(MSS_TABLE) else None


def ts_encode(now_ms: int, wscale: int | None) -> int:
    """Our TSval with the client's window scale in its low bits, never ahead of our clock
    (a later segment's TSval must not look older to the client's PAWS)."""
    ts = (now_ms & ~NO_WSCALE & M) | (NO_WSCALE if wscale is None else wscale)
    return (ts - (1 << TS_BITS)) & M if ts > now_ms else ts


def ts_decode(tsecr: int) -> int | None:
    """The client's window scale from its echo of our TSval (None: it sent none)."""
    bits = tsecr & NO_WSCALE
    return None if bits == NO_WSCALE else bits
