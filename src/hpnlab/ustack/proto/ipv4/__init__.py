"""IPv4 (RFC 791): header checksum, TTL, options skipped, fragmentation, and
reassembly with a timeout and a memory bound (RFC 815's hole idea, kept simple:
fragments by offset, joined when the pieces cover the datagram)."""
from __future__ import annotations

import ipaddress
import struct
from collections import Counter

from ...checksum import verify
from ...errors import ParseError

HEADER = 20
ICMP, TCP, UDP = 1, 6, 17
MF = 0x2000
# version/IHL, TOS, total length, identification, flags/fragment offset, TTL, protocol,
# checksum, source, destination: the whole fixed header in one struct call
_HEADER = struct.Struct("!BBHHHBBH4s4s")
DF = 0x4000


class Packet:
    __slots__ = ("dst", "flags", "has_options", "header_len", "ident", "offset", "payload", "proto", "src", "ttl")

    def __init__(self, src, dst, proto, ttl, ident, flags, offset, header_len, payload, has_options):
        self.src, self.dst, self.proto, self.ttl = src, dst, proto, ttl
        self.ident, self.flags, self.offset = ident, flags, offset
        self.header_len, self.payload, self.has_options = header_len, payload, has_options

    @property
    def fragment(self) -> bool:
        return bool(self.flags & MF) or self.offset > 0


def parse(data) -> Packet:
    view = memoryview(data)
    n = len(view)
    # integrity: the header is whole, the lengths agree with the buffer, the checksum holds
    if n < HEADER:
        raise ParseError("ipv4", "truncated", f"{n} bytes, the header needs {HEADER}")
    vihl, _, total, ident, flags_frag, ttl, proto, _, src, dst = _HEADER.unpack_from(view)
    version, ihl = vihl >> 4, (vihl & 15) * 4
    if version != 4:
        raise ParseError("ipv4", "bad_version", f"version {version} (byte 0, high nibble)")
    if ihl < HEADER or ihl > n:
        raise ParseError("ipv4", "bad_header_length", f"header length {ihl} (byte 0, low nibble) with {n} bytes")
    if total < ihl or total > n:
        raise ParseError("ipv4", "bad_total_length", f"total length {total} (bytes 2-3) with a {ihl}-byte "
                                             f"header and {n} bytes received")
    if not verify(view[:ihl]):
        raise ParseError("ipv4", "bad_checksum", "header checksum (bytes 10-11) does not match")
    # sanity: addresses a host may receive from
    if src[0] >= 224 or src == b"\xff\xff\xff\xff" or src[0] == 127:
        raise ParseError("ipv4", "bad_src", f"source {ipaddress.IPv4Address(src)} (bytes 12-15) is not unicast")
    return Packet(src, dst, proto, ttl, ident, flags_frag & 0xe000, (flags_frag & 0x1fff) * 8, ihl,
                  view[ihl:total], ihl > HEADER)


def header(src: bytes, dst: bytes, proto: int, length: int, ident: int, ttl: int = 64,
           flags_frag: int = DF) -> bytes:
    total = HEADER + length
    # the checksum without building the header twice: the header's words summed as numbers
    # (version/IHL/TOS, length, id, flags, TTL/protocol, both addresses as one number:
    # 2**16 = 1 modulo 0xffff, so its words need not be split out)
    words = 0x4500 + total + ident + flags_frag + (ttl << 8 | proto) + int.from_bytes(src + dst, "big")
    return _HEADER.pack(0x45, 0, total, ident, flags_frag, ttl, proto, ~(words % 0xffff) & 0xffff, src, dst)


def build(src: bytes, dst: bytes, proto: int, payload, ident: int, ttl: int = 64, df: bool = True) -> bytes:
    return header(src, dst, proto, len(payload), ident, ttl, DF if df else 0) + payload


def fragment(src: bytes, dst: bytes, proto: int, payload, ident: int, mtu: int, ttl: int = 64) -> list[bytes]:
    """A datagram too big for `mtu`, as fragments whose payloads are multiples of 8."""
    step = (mtu - HEADER) // 8 * 8
    out = []
    for off in range(0, len(payload), step):
        chunk = payload[off:off + step]
        more = MF if off + step < len(payload) else 0
        out.append(header(src, dst, proto, len(chunk), ident, ttl, more | (off // 8)) + chunk)
    return out


class Reassembler:
    """Fragments waiting for their datagram, keyed (src, dst, proto, id); each
    datagram is given up after `timeout` s, and the whole store never holds more than
    `max_bytes` (a fragment that would exceed it is dropped)."""

    def __init__(self, timers, timeout: float = 30.0, max_bytes: int = 1 << 20, counters: Counter | None = None):
        self.timers, self.timeout, self.max_bytes = timers, timeout, max_bytes
        self.pending: dict[tuple, dict] = {}
        self.bytes = 0
        self.counters = Counter() if counters is None else counters    # the stack's, shared

    def add(self, pkt: Packet, now: float) -> bytes | None:
        """The whole payload once the last missing piece arrives, else None."""
        key = (pkt.src, pkt.dst, pkt.proto, pkt.ident)
        size = len(pkt.payload)
        if pkt.offset + size > 65535 - HEADER:
            self.counters["ipv4.frag_too_big"] += 1
            return None
        if self.bytes + size > self.max_bytes:
            self.counters["ipv4.frag_memory_full"] += 1
            return None
        entry = self.pending.get(key)
        if entry is None:
            entry = {"pieces": {}, "end": None, "bytes": 0,
                     "timer": self.timers.add(now + self.timeout, lambda t, k=key: self._expire(k), "ip_reasm")}
            self.pending[key] = entry
        if pkt.offset in entry["pieces"]:
            self.counters["ipv4.frag_duplicate"] += 1
            return None
        entry["pieces"][pkt.offset] = bytes(pkt.payload)
        entry["bytes"] += size
        self.bytes += size
        if not pkt.flags & MF:
            entry["end"] = pkt.offset + size
        if entry["end"] is None:
            return None
        covered = 0
        for off in sorted(entry["pieces"]):
            if off > covered:
                return None                     # a hole remains
            covered = max(covered, off + len(entry["pieces"][off]))
        if covered < entry["end"]:
            return None
        data = bytearray(entry["end"])
        for off, piece in sorted(entry["pieces"].items()):
            data[off:off + len(piece)] = piece
        self._drop(key)
        self.counters["ipv4.reassembled"] += 1
        return bytes(data[:entry["end"]])

    def _drop(self, key) -> None:
        entry = self.pending.pop(key)
        entry["timer"].cancel()
        self.bytes -= entry["bytes"]

    def _expire(self, key) -> None:
        if key in self.pending:
            self.counters["ipv4.frag_timeout"] += 1
            entry = self.pending.pop(key)
            self.bytes -= entry["bytes"]
