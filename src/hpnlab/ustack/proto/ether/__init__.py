"""Ethernet II: 14-byte header, no FCS (the NIC strips and checks it)."""
from __future__ import annotations

import struct

from ...errors import ParseError

HEADER = 14
TYPE_IPV4 = 0x0800
TYPE_ARP = 0x0806
BROADCAST = b"\xff" * 6
_HEADER = struct.Struct("!6s6sH")         # dst, src, type: one call, not three slices


class Frame:
    __slots__ = ("dst", "ethertype", "payload", "src")

    def __init__(self, dst: bytes, src: bytes, ethertype: int, payload: memoryview):
        self.dst, self.src, self.ethertype, self.payload = dst, src, ethertype, payload


def parse(frame) -> Frame:
    view = memoryview(frame)
    # integrity: the header is there
    if len(view) < HEADER:
        raise ParseError("ether", "truncated", f"{len(view)} bytes, the header needs {HEADER}")
    dst, src, ethertype = _HEADER.unpack_from(view)
    # sanity: a unicast source, an Ethernet II type (not an 802.3 length)
    if src[0] & 1:
        raise ParseError("ether", "bad_src", f"source {mac_str(src)} is a group address (byte 6)")
    if ethertype < 0x0600:
        raise ParseError("ether", "not_ethernet2", f"type/length {ethertype:#06x} is an 802.3 length (byte 12)")
    return Frame(dst, src, ethertype, view[HEADER:])


def build(dst: bytes, src: bytes, ethertype: int, payload) -> bytes:
    return b"".join((dst, src, ethertype.to_bytes(2, "big"), payload))


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"MAC address {text!r}: six colon-separated bytes expected")
    return bytes(int(p, 16) for p in parts)
