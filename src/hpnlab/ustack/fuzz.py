"""Malformed frames for the stack's input path: what the unit fuzz feeds in process and
what `peer fuzz` sends at a running stack from another host.

`scapy_frames` (scapy, a dev dependency: not on the lab's guests) makes frames with a
packet library that is not the stack's own — every header field and the TCP options
at random (scapy's fuzz()), and well-formed frames with one thing wrong: a checksum, a
length, an option's length. `mutate` then cuts, flips and overwrites bytes of any
frame, cheaply, so a few thousand seeds make a hundred thousand different frames.
"""
from __future__ import annotations

import random

ETHER, IPV4 = 14, 20


def mutate(frame: bytes, rng: random.Random, kind: int) -> bytes:
    """One of five damages (kind % 5): cut short; 1-5 bytes flipped past the Ethernet
    header; an IPv4 length/flags byte overwritten; the TCP data offset and option bytes
    at random; the Ethernet header followed by random bytes."""
    f = bytearray(frame)
    kind %= 5
    if kind == 0:
        return bytes(f[:rng.randrange(1, len(f))]) if len(f) > 1 else bytes(f)
    if kind == 1 and len(f) > ETHER:
        for _ in range(rng.randrange(1, 6)):
            f[rng.randrange(ETHER, len(f))] = rng.randrange(256)
    elif kind == 2 and len(f) > ETHER + IPV4:
        f[ETHER + rng.choice((0, 2, 3, 6, 7))] = rng.randrange(256)
    elif kind == 3 and len(f) > ETHER + IPV4 + 20:
        f[ETHER + IPV4 + 12] = rng.randrange(256)
        f[ETHER + IPV4 + 20:ETHER + IPV4 + 32] = rng.randbytes(12)
    else:
        return bytes(f[:ETHER]) + rng.randbytes(rng.randrange(0, 200))
    return bytes(f)


def scapy_frames(dst_mac: str, src_mac: str, dst_ip: str, src_ip: str, n: int, seed: int = 0) -> list[bytes]:
    """n frames made with scapy, addressed to the stack (so they reach its parsers)."""
    from scapy.compat import raw
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Raw, fuzz
    from scapy.volatile import RandShort

    rng = random.Random(seed)
    eth = Ether(dst=dst_mac, src=src_mac)
    ip = IP(src=src_ip, dst=dst_ip)

    def one(i: int):
        k = i % 12
        if k == 0:
            return eth / fuzz(IP(src=src_ip, dst=dst_ip) / TCP())          # every field random, options too
        if k == 1:
            return eth / ip / fuzz(TCP(dport=rng.choice((7, 80, 9))))
        if k == 2:
            return eth / ip / fuzz(UDP()) / Raw(rng.randbytes(rng.randrange(0, 64)))
        if k == 3:
            return eth / ip / fuzz(ICMP()) / Raw(rng.randbytes(rng.randrange(0, 64)))
        if k == 4:
            return eth / fuzz(ARP())
        if k == 5:                                                          # a bad TCP checksum
            return eth / ip / TCP(sport=RandShort(), dport=7, flags="S", chksum=rng.randrange(65536))
        if k == 6:                                                          # a bad IPv4 header checksum
            return eth / IP(src=src_ip, dst=dst_ip, chksum=rng.randrange(65536)) / ICMP()
        if k == 7:                                                          # UDP length past the data
            return eth / ip / UDP(dport=7, len=rng.randrange(9, 2000)) / Raw(b"x" * 10)
        if k == 8:                                                          # IP total length wrong
            return eth / IP(src=src_ip, dst=dst_ip, len=rng.randrange(0, 1600)) / TCP(dport=7)
        if k == 9:          # option bytes at random behind a valid checksum, so the option parser sees them
            opts = bytes(rng.choice((0, 1, 2, 3, 4, 8, rng.randrange(256))) if j % 2 == 0 else rng.randrange(12)
                         for j in range(4 * rng.randrange(1, 11)))
            return eth / ip / TCP(dport=7, flags="S", dataofs=5 + len(opts) // 4) / Raw(opts)
        if k == 10:                                                         # IPv4 options and fragments
            return eth / IP(src=src_ip, dst=dst_ip, ihl=rng.randrange(0, 16), flags=rng.randrange(8),
                            frag=rng.randrange(8192), options=[]) / UDP(dport=7) / Raw(rng.randbytes(30))
        return eth / fuzz(IP(src=src_ip, dst=dst_ip, proto=rng.choice((1, 6, 17))))

    return [raw(one(i)) for i in range(n)]
