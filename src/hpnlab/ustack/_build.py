"""Build the stack's one C helper (cffi, API mode): the Internet checksum's sum.

In Python the sum is `int.from_bytes(data) % 0xffff` (checksum.py): one conversion and
one division, both in C, yet ~2.5 µs for a 1460-byte segment on the development
machine — the division alone walks the number's 30-bit digits one by one — and every
segment sent or received pays it once. RFC 1071's loop in C does it in a fraction of
that; the stack uses it when it is built and keeps the Python sum otherwise (the same
numbers: the unit tests run both).

    python -m hpnlab.ustack._build      # what `make setup` runs (the lab runs it on VM hosts)
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..cbuild import build_main, compile_into

# The version changes with the C interface, so a build of an older one is never loaded.
MODULE = "_hpnlab_ustack_csum_v1"

CDEF = "unsigned hp_sum(const unsigned char *p, size_t n, uint64_t a, uint32_t b);"

SOURCE = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The one's-complement sum of p[0..n) as big-endian 16-bit words (an odd last byte is
   padded with a zero byte), plus a and b, folded to 16 bits (0..0xffff; 0xffff and 0
   both mean "a multiple of 0xffff", the caller reduces modulo 0xffff).
   RFC 1071's loop, 4 bytes at a time in the machine's byte order: the sum's byte order
   follows the words' (its section 2(B)), so one swap at the end makes it big-endian. */
unsigned hp_sum(const unsigned char *p, size_t n, uint64_t a, uint32_t b) {
    uint64_t sum = 0;
    uint32_t w;
    for (; n >= 4; p += 4, n -= 4) {
        memcpy(&w, p, 4);
        sum += w;
    }
    if (n >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        sum += h;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t last[2] = {p[0], 0};         /* padded with a zero byte, in memory order */
        uint16_t h;
        memcpy(&h, last, 2);
        sum += h;
    }
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    sum = ((sum & 0xff) << 8) | (sum >> 8);
#endif
    sum += (a & 0xffffffffu) + (a >> 32) + b;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (unsigned)sum;
}
"""


def build(verbose: bool = False) -> Path:
    from cffi import FFI
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(f"hpnlab.ustack.{MODULE}", SOURCE, extra_compile_args=["-O2"])
    return compile_into(ffi, MODULE, Path(__file__).parent, verbose)


if __name__ == "__main__":
    sys.exit(build_main("hpnlab.ustack", build))
