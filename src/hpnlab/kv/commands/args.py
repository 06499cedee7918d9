"""Argument parsing shared by the commands (Redis's string2ll/strtod rules)."""
from __future__ import annotations

import math

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
