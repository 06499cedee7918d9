"""The Internet checksum (RFC 1071).

The one's-complement sum of 16-bit words is the number's value modulo 0xffff
(2**16 ≡ 1 mod 0xffff), so one big-integer conversion and one modulo do the whole
sum in C: far faster in CPython than a loop over words. Still, for a full segment
that division is most of a segment's checksum; where `make setup` built the stack's C
helper (_build.py), `word_sum` — the sum every checksum here takes: TCP's, and through
`ones_sum` and `verify` those of UDP, ICMP and IPv4 — runs RFC 1071's loop there
instead, for all but short data (C_FROM). `IMPL` says which is in use.
"""
from __future__ import annotations

import importlib

from ._build import MODULE

try:
    _c = importlib.import_module(f"{__package__}.{MODULE}")
    _ffi, _lib = _c.ffi, _c.lib
except ImportError:            # not built here: the Python sum, same numbers
    _ffi = _lib = None


def _py_word_sum(data, a: int = 0, b: int = 0) -> int:
    v = int.from_bytes(data, "big")
    return ((v << 8 if len(data) & 1 else v) + a + b) % 0xffff


# Below this many bytes the Python sum is as fast or faster: the call into C, and for a
# memoryview (what the parsers hand over) cffi's from_buffer, cost more than the one
# conversion saves - an IPv4 header, a bare ACK. Here (min of 40 runs, load 3.6): C ahead
# from 64 B for bytes, from ~192 B for a memoryview (20 B view: 0.27 µs Python, 0.70 C).
C_FROM = 128


def _c_word_sum(data, a: int = 0, b: int = 0) -> int:
    if len(data) < C_FROM:
        # _py_word_sum inlined: a call is a third of a short sum, and IPv4 takes one a packet
        v = int.from_bytes(data, "big")
        return ((v << 8 if len(data) & 1 else v) + a + b) % 0xffff
    if type(data) is not bytes:
        data = _ffi.from_buffer(data)
    return _lib.hp_sum(data, len(data), a, b) % 0xffff


# word_sum(data, a, b): the one's-complement sum of data's words (an odd last byte
# padded) plus a (< 2**64) and b (< 2**32), modulo 0xffff
word_sum = _py_word_sum if _lib is None else _c_word_sum
IMPL = "Python" if _lib is None else "C"


def ones_sum(*parts) -> int:
    """The one's-complement sum (mod 0xffff) of the parts; each part but the last must
    have an even length (pseudo-headers do). Joined first: one copy costs less than a
    sum per part (~3x faster for a segment's five parts, in Python)."""
    return word_sum(parts[0] if len(parts) == 1 else b"".join(parts))


def checksum(*parts) -> int:
    """The checksum to put in a header whose checksum field is zero in `parts`."""
    return ~ones_sum(*parts) & 0xffff


def verify(*parts) -> bool:
    """True if the parts (checksum field included) sum to all ones; an all-zero
    buffer, whose sum is as much a multiple of 0xffff, does not."""
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return word_sum(data) == 0 and any(data)


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
