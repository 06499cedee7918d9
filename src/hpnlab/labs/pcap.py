"""A small pcap reader (stdlib only) for the labs: TCP and UDP over IPv4.

    for seg in read_pcap("h1.pcap"):           # Segment(ts, src, sport, dst, dport, ...)
        print(seg.ts, seg.flagstr, seg.src, seg.sport)

tcpdump writes classic pcap (`-w`); link types Ethernet (1), Linux cooked
(113, `-i any`) and cooked v2 (276) are understood. Everything else is
skipped, not guessed at.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_MAGIC = {0xA1B2C3D4: ("<", 1e-6), 0xD4C3B2A1: (">", 1e-6),
          0xA1B23C4D: ("<", 1e-9), 0x4D3CB2A1: (">", 1e-9)}


@dataclass(frozen=True)
class Segment:
    ts: float
    proto: str          # "tcp" | "udp"
    src: str
    sport: int
    dst: str
    dport: int
    flags: int = 0
    seq: int = 0
    ack: int = 0
    length: int = 0     # payload bytes
    ttl: int = 0
    options: bytes = b""    # TCP option bytes as captured (a short snaplen may cut them)

    @property
    def flagstr(self) -> str:
        """tcpdump-style flag names: SYN, SYN-ACK, ACK, FIN-ACK, RST, RST-ACK, PSH-ACK ..."""
        if self.proto != "tcp":
            return "UDP"
        names = [n for bit, n in ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"))
                 if self.flags & bit]
        return "-".join(names) or "none"

    def has(self, *bits: int) -> bool:
        return all(self.flags & b for b in bits)

    @property
    def key(self) -> tuple:
        """The connection a segment belongs to, the same in both directions."""
        a, b = (self.src, self.sport), (self.dst, self.dport)
        return (self.proto, *min(a, b), *max(a, b))

    def endpoint(self) -> str:
        return f"{self.src}:{self.sport}"


def read_pcap(path: str | Path) -> list[Segment]:
    return list(iter_pcap(path))


def iter_pcap(path: str | Path) -> Iterator[Segment]:
    data = Path(path).read_bytes()
    if len(data) < 24:
        return
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in _MAGIC:
        raise ValueError(f"{path}: not a classic pcap file (magic {magic:#x}); write it with tcpdump -w")
    endian, scale = _MAGIC[magic]
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        frame = data[off:off + caplen]
        off += caplen
        seg = _decode(frame, linktype, sec + frac * scale)
        if seg is not None:
            yield seg


def _decode(frame: bytes, linktype: int, ts: float) -> Segment | None:
    if linktype == 1:                       # Ethernet, maybe one VLAN tag
        if len(frame) < 14:
            return None
        ethertype, ip = struct.unpack("!H", frame[12:14])[0], 14
        if ethertype == 0x8100 and len(frame) >= 18:
            ethertype, ip = struct.unpack("!H", frame[16:18])[0], 18
    elif linktype == 113:                   # Linux cooked capture
        if len(frame) < 16:
            return None
        ethertype, ip = struct.unpack("!H", frame[14:16])[0], 16
    elif linktype == 276:                   # Linux cooked capture v2
        if len(frame) < 20:
            return None
        ethertype, ip = struct.unpack("!H", frame[0:2])[0], 20
    elif linktype in (12, 101):             # raw IP
        ethertype, ip = 0x0800, 0
    else:
        return None
    if ethertype != 0x0800 or len(frame) < ip + 20:
        return None
    vihl, _tos, total, _id, _frag, ttl, proto = struct.unpack("!BBHHHBB", frame[ip:ip + 10])
    ihl = (vihl & 0x0F) * 4
    src = ".".join(str(b) for b in frame[ip + 12:ip + 16])
    dst = ".".join(str(b) for b in frame[ip + 16:ip + 20])
    l4 = ip + ihl
    end = ip + total if total else len(frame)
    if proto == 6 and len(frame) >= l4 + 14:
        sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", frame[l4:l4 + 14])
        doff = (off_flags >> 12) * 4
        return Segment(ts, "tcp", src, sport, dst, dport, off_flags & 0x3F, seq, ack,
                       max(0, end - l4 - doff), ttl, frame[l4 + 20:l4 + doff])
    if proto == 17 and len(frame) >= l4 + 8:
        sport, dport, ulen = struct.unpack("!HHH", frame[l4:l4 + 6])
        return Segment(ts, "udp", src, sport, dst, dport, 0, 0, 0, max(0, ulen - 8), ttl)
    return None


def connections(segments: list[Segment]) -> dict[tuple, list[Segment]]:
    """Segments grouped by connection (same 4-tuple either way), in capture order."""
    out: dict[tuple, list[Segment]] = {}
    for s in segments:
        out.setdefault(s.key, []).append(s)
    return out


def handshake_kind(segs: list[Segment]) -> str:
    """Classify the opening of one connection from its segments.

    simultaneous   both sides answered the other's SYN with a SYN-ACK, and the two
                   SYN-ACKs acknowledge each other's ISN (SYN, SYN, SYN-ACK, SYN-ACK:
                   the course's "six-way" open)
    syn-syn-ack    one side's SYN-ACK repeats the ISN of a SYN it had sent itself
                   (it was in SYN_SENT when the other's SYN came), the other side
                   answered with a plain ACK: SYN, SYN, SYN-ACK, ACK
    three-way      the SYN-ACK carries a fresh ISN: a listener answered
    failed         no SYN-ACK at all (RSTs, drops)

    Refused earlier attempts on the same 4-tuple do not confuse it: SYN-ACKs are
    matched to each other and to SYNs by sequence numbers.
    """
    synacks = [s for s in segs if s.has(SYN, ACK)]
    if not synacks:
        return "failed"
    for x in synacks:
        for y in synacks:
            if x.endpoint() != y.endpoint() and x.ack == (y.seq + 1) % 2**32 and y.ack == (x.seq + 1) % 2**32:
                return "simultaneous"
    last = synacks[-1]
    own_syn = any(s.endpoint() == last.endpoint() and s.flags & SYN and not s.flags & ACK and s.seq == last.seq
                  for s in segs)
    return "syn-syn-ack" if own_syn else "three-way"


def opening(segs: list[Segment]) -> list[Segment]:
    """The segments of the attempt that opened the connection: from the first
    SYN after the last RST that came before the first SYN-ACK (earlier, refused
    attempts on the same 4-tuple are cut off)."""
    first_synack = next((i for i, s in enumerate(segs) if s.has(SYN, ACK)), None)
    if first_synack is None:
        return segs
    last_rst = max((i for i, s in enumerate(segs[:first_synack]) if s.flags & RST), default=-1)
    return segs[last_rst + 1:]
