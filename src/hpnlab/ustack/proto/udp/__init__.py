"""UDP (RFC 768): ports, length, checksum over the pseudo-header (zero: none sent)."""
from __future__ import annotations

from ...checksum import checksum, ones_sum, pseudo_header
from ...errors import ParseError

HEADER = 8
PROTO = 17


class Datagram:
    __slots__ = ("dport", "payload", "sport")

    def __init__(self, sport, dport, payload):
        self.sport, self.dport, self.payload = sport, dport, payload


def parse(data, src: bytes, dst: bytes, verify_checksum: bool = True) -> Datagram:
    view = memoryview(data)
    n = len(view)
    if n < HEADER:
        raise ParseError("udp", "truncated", f"{n} bytes, the header needs {HEADER}")
    length = int.from_bytes(view[4:6], "big")
    if length < HEADER or length > n:
        raise ParseError("udp", "bad_length", f"length {length} (bytes 4-5) with {n} bytes received")
    if verify_checksum and (view[6] or view[7]) and ones_sum(pseudo_header(src, dst, PROTO, length), view[:length]):
        raise ParseError("udp", "bad_checksum", "checksum (bytes 6-7) does not match")
    dport = int.from_bytes(view[2:4], "big")
    if dport == 0:
        raise ParseError("udp", "bad_port", "destination port 0 (bytes 2-3)")
    return Datagram(int.from_bytes(view[0:2], "big"), dport, view[HEADER:length])


def build(src: bytes, dst: bytes, sport: int, dport: int, payload) -> bytes:
    length = HEADER + len(payload)
    head = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + length.to_bytes(2, "big")
    c = checksum(pseudo_header(src, dst, PROTO, length), head + b"\0\0", payload) or 0xffff
    return head + c.to_bytes(2, "big") + payload
