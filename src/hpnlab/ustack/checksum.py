"""The Internet checksum (RFC 1071).

The one's-complement sum of 16-bit words is the number's value modulo 0xffff
(2**16 ≡ 1 mod 0xffff), so one big-integer conversion and one modulo do the whole
sum in C: far faster in CPython than a loop over words.
"""
from __future__ import annotations


def _value(data) -> int:
    v = int.from_bytes(data, "big")
    return v << 8 if len(data) & 1 else v


def ones_sum(*parts) -> int:
    """The one's-complement sum (mod 0xffff) of the parts; each part but the last must
    have an even length (pseudo-headers do). Joined first: one copy costs less than a
    conversion per part (~3x faster for a segment's five parts)."""
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    v = int.from_bytes(data, "big")            # _value inlined: this runs several times per segment
    return (v << 8 if len(data) & 1 else v) % 0xffff


def checksum(*parts) -> int:
    """The checksum to put in a header whose checksum field is zero in `parts`."""
    return ~ones_sum(*parts) & 0xffff


def verify(*parts) -> bool:
    """True if the parts (checksum field included) sum to all ones; an all-zero
    buffer does not."""
    v = _value(parts[0] if len(parts) == 1 else b"".join(parts))
    return v % 0xffff == 0 and v != 0


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
