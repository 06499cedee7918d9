"""ICMP (RFC 792): echo request and reply, destination unreachable."""
from __future__ import annotations

from ...checksum import checksum, verify
from ...errors import ParseError

ECHO_REPLY, DEST_UNREACH, ECHO_REQUEST, TIME_EXCEEDED = 0, 3, 8, 11
PORT_UNREACH = 3
KNOWN = {ECHO_REPLY, DEST_UNREACH, 4, 5, ECHO_REQUEST, TIME_EXCEEDED, 12, 13, 14}


class Message:
    __slots__ = ("body", "code", "rest", "type")

    def __init__(self, type_, code, rest, body):
        self.type, self.code, self.rest, self.body = type_, code, rest, body


def parse(data) -> Message:
    view = memoryview(data)
    if len(view) < 8:
        raise ParseError("icmp", "truncated", f"{len(view)} bytes, the header needs 8")
    if not verify(view):
        raise ParseError("icmp", "bad_checksum", "checksum (bytes 2-3) does not match")
    if view[0] not in KNOWN:
        raise ParseError("icmp", "bad_type", f"type {view[0]} (byte 0) is not one this stack knows")
    return Message(view[0], view[1], bytes(view[4:8]), view[8:])


def build(type_: int, code: int, rest: bytes, body) -> bytes:
    head = bytes((type_, code)) + b"\0\0" + rest
    c = checksum(head, body)
    return head[:2] + c.to_bytes(2, "big") + rest + body


def echo_reply(msg: Message) -> bytes:
    return build(ECHO_REPLY, 0, msg.rest, msg.body)


def unreachable(code: int, original_ip_packet) -> bytes:
    """Destination unreachable quoting the offending datagram's header and 8 bytes."""
    ihl = (original_ip_packet[0] & 15) * 4
    return build(DEST_UNREACH, code, b"\0\0\0\0", bytes(original_ip_packet[:ihl + 8]))
