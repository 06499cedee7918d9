"""Argument parsing shared by the commands (Redis's string2ll/strtod rules)."""
from __future__ import annotations

import math
import time

INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1


def to_int(b: bytes) -> int | None:
    """Redis's string2ll: a canonical signed 64-bit decimal, or None."""
    try:
        v = int(b)
    except ValueError:
        return None
    if not INT_MIN <= v <= INT_MAX or b != b"%d" % v:
        return None
    return v


def to_float(b: bytes) -> float | None:
    """Redis's strtod check: a number (inf allowed, NaN not), nothing around it."""
    if not b or b[:1].isspace() or b[-1:].isspace() or b"_" in b:
        return None
    try:
        v = float(b)
    except ValueError:
        return None
    return None if math.isnan(v) else v


def fmt_float(v: float) -> bytes:
    """INCRBYFLOAT's human-friendly form: no exponent, no trailing zeros."""
    s = repr(v)
    if "e" in s or "E" in s:
        s = f"{v:.17f}".rstrip("0").rstrip(".")
    elif s.endswith(".0"):
        s = s[:-2]
    return s.encode()


OUT_OF_RANGE = b"-ERR value is out of range, must be positive\r\n"


def pop_count(args: list[bytes]) -> tuple[int | None, bytes | None]:
    """The optional COUNT of LPOP/RPOP/SPOP/ZPOPMIN (args[2]): (count or None, error or None)."""
    if len(args) > 3:
        return None, b"-ERR syntax error\r\n"
    if len(args) < 3:
        return None, None
    count = to_int(args[2])
    if count is None or count < 0:
        return None, OUT_OF_RANGE
    return count, None


def expire_option(opt: bytes, arg: bytes, name: str) -> tuple[int | None, bytes | None]:
    """EX/PX/EXAT/PXAT n of SET and GETEX as an absolute unix time in ms: (when, error)."""
    n = to_int(arg)
    if n is None:
        return None, b"-ERR value is not an integer or out of range\r\n"
    if n <= 0:
        return None, b"-ERR invalid expire time in '%b' command\r\n" % name.encode()
    now = int(time.time() * 1000)
    return {b"EX": now + n * 1000, b"PX": now + n, b"EXAT": n * 1000, b"PXAT": n}[opt], None


def leading_flags(args: list[bytes], start: int, names: set[bytes]) -> tuple[set[bytes], int]:
    """The options among `names` (any case) from args[start] on, and the index where they stop."""
    seen: set[bytes] = set()
    i = start
    while i < len(args) and args[i].upper() in names:
        seen.add(args[i].upper())
        i += 1
    return seen, i
