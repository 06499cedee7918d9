"""The generator's traffic, described in Python: frames built once, stamped in C.

Every frame carries, at the start of its L4 payload, a 20-byte stamp the C side
writes per packet: magic "HPNL", a 64-bit sequence number and the sender's TSC.
The template leaves the stamp and the L4 checksum zero and passes the sum of
everything else, so the C side finishes the checksum from the stamp alone.

    spec = Traffic(proto="udp", sizes=[64], flows=16)
    for t in spec.templates(src_mac, dst_mac): ...  # Template(frame, stamp_off, csum_off, csum_base)
    spec.order()                                    # template index of the k-th packet
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from ..ustack.proto.ether import mac_str

STAMP_LEN = 20
PROTOS = ("udp", "tcp-syn", "icmp")
# The simple IMIX (7:4:1 of 64, 576 and 1500 bytes), in an interleaved order.
IMIX = (64, 576, 64, 1500, 64, 576, 64, 64, 576, 64, 576, 64)
HEADERS = {"udp": 14 + 20 + 8, "tcp-syn": 14 + 20 + 20, "icmp": 14 + 20 + 8}
MAX_SIZE = 1514
# The generator's frames go to a MAC no host owns: the peer's kernel leaves them alone
# (no ICMP errors, no RSTs to the SYNs); its receiver listens promiscuously.
PEER_MAC = bytes.fromhex("02686e706c02")
PEER_MAC_TEXT = mac_str(PEER_MAC)


class TrafficError(ValueError):
    """A traffic description that cannot be built; names the argument."""


def min_size(proto: str) -> int:
    return HEADERS[proto] + STAMP_LEN


def csum_sum(data: bytes) -> int:
    """Ones-complement sum of 16-bit big-endian words, folded to 16 bits (not inverted)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes) -> int:
    return ~csum_sum(data) & 0xFFFF


@dataclass(frozen=True)
class Template:
    frame: bytes
    stamp_off: int
    csum_off: int          # -1: no L4 checksum to finish
    csum_base: int
    size: int
    flow: int


@dataclass
class Traffic:
    proto: str = "udp"
    sizes: list[int] = field(default_factory=lambda: [64])   # one run mixes these in this order
    flows: int = 1
    src_ip: str = "10.77.2.1"
    dst_ip: str = "10.77.2.2"
    sport: int = 9000
    dport: int = 9001
    udp_checksum: bool = False

    def __post_init__(self):
        if self.proto not in PROTOS:
            raise TrafficError(f"--proto {self.proto!r}: one of {', '.join(PROTOS)}")
        if not self.sizes:
            raise TrafficError("--size: no packet size given")
        least = min_size(self.proto)
        for s in self.sizes:
            if not least <= s <= MAX_SIZE:
                raise TrafficError(f"--size {s}: a {self.proto} frame with its {STAMP_LEN}-byte stamp is "
                                   f"{least}..{MAX_SIZE} bytes (Ethernet header included, FCS not)")
        if not 1 <= self.flows <= 65535 - max(self.sport, self.dport) + 1 or self.flows > 4096:
            raise TrafficError(f"--flows {self.flows}: 1..4096 (the source port varies per flow, from {self.sport})")
        for name in ("src_ip", "dst_ip"):
            try:
                ipaddress.IPv4Address(getattr(self, name))
            except ValueError:
                raise TrafficError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: not an IPv4 address") from None

    @property
    def distinct_sizes(self) -> list[int]:
        return sorted(set(self.sizes))

    def mean_size(self) -> float:
        return sum(self.sizes) / len(self.sizes)

    def templates(self, src_mac: bytes, dst_mac: bytes) -> list[Template]:
        """One template per (size, flow), size-major."""
        return [self._build(size, flow, src_mac, dst_mac)
                for size in self.distinct_sizes for flow in range(self.flows)]

    def order(self) -> list[int]:
        """The template index of packet k is order[k % len(order)]: every flow in turn,
        and the sizes in the given pattern (IMIX interleaved)."""
        index = {s: i for i, s in enumerate(self.distinct_sizes)}
        n = len(self.sizes) * self.flows
        return [index[self.sizes[(k // self.flows) % len(self.sizes)]] * self.flows + k % self.flows
                for k in range(n)]

    def _build(self, size: int, flow: int, src_mac: bytes, dst_mac: bytes) -> Template:
        src = ipaddress.IPv4Address(self.src_ip).packed
        dst = ipaddress.IPv4Address(self.dst_ip).packed
        sport = self.sport + flow
        eth = dst_mac + src_mac + b"\x08\x00"
        l4_len = size - 14 - 20
        proto_num = {"udp": 17, "tcp-syn": 6, "icmp": 1}[self.proto]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, flow & 0xFFFF, 0x4000, 64, proto_num, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        if self.proto == "udp":
            l4 = struct.pack("!HHHH", sport, self.dport, l4_len, 0)
            csum_at = 6
        elif self.proto == "tcp-syn":
            l4 = struct.pack("!HHIIBBHHH", sport, self.dport, 0x1000 + flow, 0, 5 << 4, 0x02, 65535, 0, 0)
            csum_at = 16
        else:
            l4 = struct.pack("!BBHHH", 8, 0, 0, flow & 0xFFFF, 0)     # echo request, id = flow
            csum_at = 2
        l4 += bytes(l4_len - len(l4))
        pseudo = b"" if self.proto == "icmp" else src + dst + struct.pack("!BBH", 0, proto_num, l4_len)
        frame = eth + ip + l4
        assert len(frame) == size
        l4_off = 14 + 20
        # UDP over IPv4 may go without a checksum (0), as testpmd's txonly sends it
        csum_off = -1 if self.proto == "udp" and not self.udp_checksum else l4_off + csum_at
        return Template(frame=frame, stamp_off=l4_off + HEADERS[self.proto] - 34, csum_off=csum_off,
                        csum_base=csum_sum(pseudo + l4), size=size, flow=flow)


def parse_sizes(text: str) -> list[list[int]]:
    """--size: `64`, a sweep `64,128,256` (one run each), or `imix` (one mixed run)."""
    runs = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "imix":
            runs.append(list(IMIX))
        elif part.isdigit():
            runs.append([int(part)])
        else:
            raise TrafficError(f"--size {text!r}: sizes in bytes separated by commas, or imix")
    return runs


def size_label(sizes: list[int]) -> str:
    return "imix" if len(sizes) > 1 else str(sizes[0])


RATE_UNITS = {"pps": ("pps", 1.0), "kpps": ("pps", 1e3), "mpps": ("pps", 1e6),
              "bit": ("bps", 1.0), "kbit": ("bps", 1e3), "mbit": ("bps", 1e6), "gbit": ("bps", 1e9)}
WIRE_EXTRA = 24        # bytes a frame takes on the wire beyond its data: FCS 4, preamble 8, gap 12


def parse_rate(text: str) -> tuple[str, float]:
    """--rate: `max` (as fast as the queue takes), `line` (the link's speed), `250kpps`,
    `1.5Mpps`, `800Mbit`, `2Gbit` → (kind, value)."""
    t = text.strip().lower()
    if t in ("max", "line"):
        return t, 0.0
    number = t.rstrip("abcdefghijklmnopqrstuvwxyz/")
    unit = t[len(number):].replace("/s", "")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in RATE_UNITS or value <= 0:
        raise TrafficError(f"--rate {text!r}: max, line, or a number with one of "
                           f"{', '.join(RATE_UNITS)} (e.g. 100kpps, 1Gbit)")
    kind, scale = RATE_UNITS[unit]
    return kind, value * scale


def rate_pps(text: str, mean_size: float, link_mbps: int) -> float:
    """The packets per second a --rate asks for (0: as fast as possible)."""
    kind, value = parse_rate(text)
    if kind == "max":
        return 0.0
    if kind == "line":
        if not link_mbps:
            raise TrafficError("--rate line: the device does not report its link speed; give a rate")
        value, kind = link_mbps * 1e6, "bps"
    return value if kind == "pps" else value / ((mean_size + WIRE_EXTRA) * 8)
