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
    have an even length (pseudo-headers do)."""
    if len(parts) == 1:
        return _value(parts[0]) % 0xffff
    return sum(_value(p) for p in parts) % 0xffff


def checksum(*parts) -> int:
    """The checksum to put in a header whose checksum field is zero in `parts`."""
    return ~ones_sum(*parts) & 0xffff


def verify(*parts) -> bool:
    """True if the parts (checksum field included) sum to all ones; an all-zero
    buffer does not."""
    if len(parts) == 1:
        v = _value(parts[0])
        return v % 0xffff == 0 and v != 0
    return ones_sum(*parts) == 0 and any(_value(p) for p in parts)


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
