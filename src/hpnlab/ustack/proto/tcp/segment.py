"""The TCP segment (RFC 9293 §3.1) and its options: MSS, window scale, SACK-permitted
(recognised, not used), timestamps (RFC 7323)."""
from __future__ import annotations

import struct

from ...checksum import ones_sum, pseudo_header, word_sum
from ...errors import ParseError

HEADER = 20
PROTO = 6
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128
OPT_EOL, OPT_NOP, OPT_MSS, OPT_WS, OPT_SACK_OK, OPT_SACK, OPT_TS = 0, 1, 2, 3, 4, 5, 8
_OPT_LEN = {OPT_MSS: 4, OPT_WS: 3, OPT_SACK_OK: 2, OPT_TS: 10}
# ports, seq, ack, data offset, flags, window (checksum and urgent pointer follow): one
# struct call reads or writes them all, cheaper per segment than a conversion per field
_FIXED = struct.Struct("!HHIIBBH")
_TS = struct.Struct("!BBBBII")            # NOP, NOP, kind, length, TSval, TSecr
TS_OPTION = _TS                           # connections pack it per segment, without options()
# the options of nearly every segment after the handshake: Linux's (and ours) NOP, NOP,
# timestamps; recognised as a whole, so the option loop runs only for the others
_TS_ONLY = struct.Struct("!4sII")
_TS_PREFIX = bytes((OPT_NOP, OPT_NOP, OPT_TS, 10))


class Segment:
    __slots__ = (
        "ack",
        "dport",
        "flags",
        "mss",
        "payload",
        "sack_ok",
        "seq",
        "sport",
        "tsecr",
        "tsval",
        "window",
        "wscale",
    )

    def __init__(self, sport, dport, seq, ack, flags, window, payload):
        self.sport, self.dport, self.seq, self.ack = sport, dport, seq, ack
        self.flags, self.window, self.payload = flags, window, payload
        self.mss = self.wscale = self.tsval = self.tsecr = None
        self.sack_ok = False

    @property
    def seg_len(self) -> int:
        """Sequence space taken: data, plus one each for SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)

    def __repr__(self):
        names = "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."))
                        if self.flags & bit)
        return (f"<{self.sport}>{self.dport} [{names}] seq={self.seq} ack={self.ack} win={self.window} "
                f"len={len(self.payload)}>")


def parse(data, src: bytes, dst: bytes, verify_checksum: bool = True) -> Segment:
    view = memoryview(data)
    n = len(view)
    # integrity: header length and checksum
    if n < HEADER:
        raise ParseError("tcp", "truncated", f"{n} bytes, the header needs {HEADER}")
    sport, dport, seq, ack, offset, flags, window = _FIXED.unpack_from(view)
    doff = (offset >> 4) * 4
    if doff < HEADER or doff > n:
        raise ParseError("tcp", "bad_data_offset", f"data offset {doff} (byte 12) with {n} bytes")
    if verify_checksum and word_sum(view, int.from_bytes(src + dst, "big"), PROTO + n):   # with the pseudo-header
        raise ParseError("tcp", "bad_checksum", "checksum (bytes 16-17) does not match")
    # sanity: ports, flag combinations no stack sends
    if sport == 0 or dport == 0:
        raise ParseError("tcp", "bad_port", f"port 0 (bytes {'0-1' if sport == 0 else '2-3'})")
    if flags & SYN and flags & (FIN | RST):
        raise ParseError("tcp", "bad_flags", f"flags {flags:#04x} (byte 13) combine SYN with FIN or RST")
    seg = Segment(sport, dport, seq, ack, flags, window, view[doff:])
    if doff == HEADER + 12:
        prefix, tsval, tsecr = _TS_ONLY.unpack_from(view, HEADER)
        if prefix == _TS_PREFIX:
            seg.tsval, seg.tsecr = tsval, tsecr
            return seg
    if doff > HEADER:
        parse_options(seg, view[HEADER:doff])
    return seg



def parse_options(seg: Segment, opts: memoryview) -> None:
    """Fill `seg`'s option fields from the option bytes (raises ParseError on a bad length)."""
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n or opts[i + 1] < 2 or i + opts[i + 1] > n:
            raise ParseError("tcp", "bad_option", f"option {kind} at byte {HEADER + i} has a bad length")
        length = opts[i + 1]
        want = _OPT_LEN.get(kind)
        if want is not None and length != want:
            raise ParseError("tcp", "bad_option", f"option {kind} at byte {HEADER + i} has length {length}, "
                                           f"not {want}")
        if kind == OPT_MSS:
            seg.mss = int.from_bytes(opts[i + 2:i + 4], "big")
        elif kind == OPT_WS:
            seg.wscale = min(opts[i + 2], 14)          # RFC 7323 §2.3: larger shifts count as 14
        elif kind == OPT_SACK_OK:
            seg.sack_ok = True
        elif kind == OPT_TS:
            seg.tsval = int.from_bytes(opts[i + 2:i + 6], "big")
            seg.tsecr = int.from_bytes(opts[i + 6:i + 10], "big")
        i += length


def options(mss: int | None = None, wscale: int | None = None, ts: tuple[int, int] | None = None) -> bytes:
    """Options, NOP-padded the way Linux lays them out (a 32-bit boundary each)."""
    out = b""
    if mss is not None:
        out += bytes((OPT_MSS, 4)) + mss.to_bytes(2, "big")
    if ts is not None:
        out += _TS.pack(OPT_NOP, OPT_NOP, OPT_TS, 10, *ts)
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WS, 3, wscale))
    return out


def build(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
          payload=b"", opts: bytes = b"", partial: bool = False) -> bytes:
    """The segment. `partial`: leave the checksum to an offload (the NIC, or the kernel
    behind a virtio-net header), putting only the pseudo-header's sum in the field, as
    CHECKSUM_PARTIAL wants."""
    doff = HEADER + len(opts)
    head = _FIXED.pack(sport, dport, seq, ack, (doff // 4) << 4, flags, window)
    length = doff + len(payload)
    if partial:
        c = ones_sum(pseudo_header(src, dst, PROTO, length)) or 0xFFFF
    else:
        # payload, pseudo-header, and header and options (checksum and urgent pointer zero)
        # summed apart: whole words each, so nothing is joined for the sum
        c = ~word_sum(payload, int.from_bytes(src + dst, "big"),
                      PROTO + length + int.from_bytes(head + opts, "big") % 0xffff) & 0xffff
    return b"".join((head, c.to_bytes(2, "big"), b"\0\0", opts, payload))
