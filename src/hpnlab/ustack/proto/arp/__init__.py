"""ARP for IPv4 over Ethernet (RFC 826): the packet, and a cache with timeouts,
requests with retry, replies and gratuitous ARP."""
from __future__ import annotations

from collections import Counter

from ...errors import ParseError

LENGTH = 28
REQUEST, REPLY = 1, 2
_FIXED = bytes.fromhex("0001080006 04".replace(" ", ""))   # htype 1, ptype IPv4, hlen 6, plen 4


class Packet:
    __slots__ = ("op", "sha", "spa", "tha", "tpa")

    def __init__(self, op, sha, spa, tha, tpa):
        self.op, self.sha, self.spa, self.tha, self.tpa = op, sha, spa, tha, tpa


def parse(data) -> Packet:
    view = memoryview(data)
    if len(view) < LENGTH:
        raise ParseError("arp", "truncated", f"{len(view)} bytes, a packet needs {LENGTH}")
    if bytes(view[0:6]) != _FIXED:
        raise ParseError("arp", "bad_format", f"hardware/protocol fields {bytes(view[0:6]).hex()} "
                                       "are not Ethernet/IPv4 (bytes 0-5)")
    op = int.from_bytes(view[6:8], "big")
    pkt = Packet(op, bytes(view[8:14]), bytes(view[14:18]), bytes(view[18:24]), bytes(view[24:28]))
    if op not in (REQUEST, REPLY):
        raise ParseError("arp", "bad_op", f"operation {op} (bytes 6-7) is neither request nor reply")
    if pkt.sha[0] & 1:
        raise ParseError("arp", "bad_sha", "sender hardware address is a group address (byte 8)")
    return pkt


def build(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return b"".join((_FIXED, op.to_bytes(2, "big"), sha, spa, tha, tpa))


class Cache:
    """IPv4 -> MAC with a lifetime; packets wait here (bounded) while a request is out.

    The cache does no I/O: `resolve` says what to send, the stack sends it, and timers
    call `retry`. A request that gets no answer after `tries` sends drops its queue.
    Both tables are bounded, as Linux's neighbour table is (gc_thresh3): a flood from
    many made-up neighbours (SYNs whose SYN-ACKs need ARP) cannot grow them."""

    def __init__(self, timers, send_request, emit, lifetime: float = 60.0, retry: float = 1.0,
                 tries: int = 3, queue_limit: int = 64, counters: Counter | None = None,
                 max_entries: int = 1024, max_pending: int = 256):
        self.timers, self.send_request, self.emit = timers, send_request, emit
        self.lifetime, self.retry_every, self.tries, self.queue_limit = lifetime, retry, tries, queue_limit
        self.max_entries, self.max_pending = max_entries, max_pending
        self.entries: dict[bytes, tuple[bytes, float]] = {}
        self.pending: dict[bytes, list] = {}        # ip -> [queued packets, tries left]
        self.counters = Counter() if counters is None else counters    # the stack's, shared

    def lookup(self, ip: bytes, now: float) -> bytes | None:
        entry = self.entries.get(ip)
        if entry and entry[1] > now:
            return entry[0]
        return None

    def learn(self, ip: bytes, mac: bytes, now: float) -> None:
        waiting = self.pending.pop(ip, None)
        if ip not in self.entries and len(self.entries) >= self.max_entries and not self.expire(now) \
                and not waiting:
            self.counters["arp.table_full"] += 1
            return
        self.entries[ip] = (mac, now + self.lifetime)
        if waiting:
            for packet in waiting[0]:
                self.emit(mac, packet)

    def resolve(self, ip: bytes, packet: object, now: float) -> None:
        """Send `packet` to `ip` now if its MAC is known, else queue it and ask."""
        entry = self.entries.get(ip)            # lookup() inlined: every packet sent passes here
        if entry and entry[1] > now:
            self.emit(entry[0], packet)
            return
        waiting = self.pending.get(ip)
        if waiting is None:
            if len(self.pending) >= self.max_pending:
                self.counters["arp.pending_full"] += 1
                return
            self.pending[ip] = [[packet], self.tries - 1]
            self.counters["arp.request"] += 1
            self.send_request(ip)
            self.timers.add(now + self.retry_every, lambda t, ip=ip: self.retry(ip, t), "arp_retry")
        elif len(waiting[0]) < self.queue_limit:
            waiting[0].append(packet)
        else:
            self.counters["arp.queue_full"] += 1

    def expire(self, now: float) -> int:
        """Forget entries past their lifetime; returns how many went."""
        old = [ip for ip, (_, until) in self.entries.items() if until <= now]
        for ip in old:
            del self.entries[ip]
        return len(old)

    def retry(self, ip: bytes, now: float) -> None:
        waiting = self.pending.get(ip)
        if waiting is None:
            return
        if waiting[1] <= 0:
            self.counters["arp.unresolved"] += 1
            del self.pending[ip]
            return
        waiting[1] -= 1
        self.counters["arp.request"] += 1
        self.send_request(ip)
        self.timers.add(now + self.retry_every, lambda t, ip=ip: self.retry(ip, t), "arp_retry")
