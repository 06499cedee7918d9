"""The generator's traffic description (hpnlab.pktgen.templates): frames, schedule, rates."""
from __future__ import annotations

import struct

import pytest

from hpnlab.pktgen.templates import (
    IMIX,
    STAMP_LEN,
    Traffic,
    TrafficError,
    checksum,
    csum_sum,
    parse_rate,
    parse_sizes,
    rate_pps,
)

SRC, DST = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def finish(t, seq: int, tsc: int) -> bytes:
    """What the C side does to a template: the stamp, then the checksum from its sum."""
    f = bytearray(t.frame)
    f[t.stamp_off:t.stamp_off + STAMP_LEN] = b"HPNL" + struct.pack("<QQ", seq, tsc)
    if t.csum_off >= 0:
        s = t.csum_base + csum_sum(bytes(f[t.stamp_off:t.stamp_off + STAMP_LEN]))
        f[t.csum_off:t.csum_off + 2] = struct.pack("!H", ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF)
    return bytes(f)


@pytest.mark.parametrize("proto,size", [("udp", 64), ("tcp-syn", 74), ("icmp", 1500)])
def test_templates_finished_with_a_stamp_have_valid_checksums(proto, size):
    for t in Traffic(proto=proto, sizes=[size], flows=2, udp_checksum=True).templates(SRC, DST):
        f = finish(t, 123456789, 2 ** 40 + 7)
        assert len(f) == size and f[:12] == DST + SRC and checksum(f[14:34]) == 0
        l4 = f[34:]
        pseudo = b"" if proto == "icmp" else f[26:34] + struct.pack("!BBH", 0, f[23], len(l4))
        assert checksum(pseudo + l4) == 0


def test_udp_goes_without_checksum_by_default_as_testpmd_sends():
    (t,) = Traffic(sizes=[64]).templates(SRC, DST)
    assert t.csum_off == -1 and t.frame[40:42] == b"\0\0"


def test_schedule_covers_every_size_and_flow_in_imix_proportions():
    tr = Traffic(sizes=list(IMIX), flows=3)
    templates, order = tr.templates(SRC, DST), tr.order()
    assert len(templates) == 3 * 3 and len(order) == len(IMIX) * 3
    sizes = [templates[i].size for i in order]
    assert (sizes.count(64), sizes.count(576), sizes.count(1500)) == (7 * 3, 4 * 3, 1 * 3)
    assert {(templates[i].size, templates[i].flow) for i in order} == {(s, f) for s in (64, 576, 1500)
                                                                        for f in range(3)}


def test_sizes_rates_and_bad_input():
    assert parse_sizes("64, 512,imix") == [[64], [512], list(IMIX)]
    assert parse_rate("1.5Mpps") == ("pps", 1.5e6) and parse_rate("2Gbit/s") == ("bps", 2e9)
    assert rate_pps("100kpps", 64, 0) == 1e5 and rate_pps("max", 64, 0) == 0
    assert rate_pps("line", 64, 10000) == pytest.approx(10e9 / ((64 + 24) * 8))
    for bad, field in ((lambda: parse_sizes("64,big"), "--size"), (lambda: parse_rate("fast"), "--rate"),
                       (lambda: rate_pps("line", 64, 0), "--rate line"),
                       (lambda: Traffic(proto="tcp-syn", sizes=[64]), "--size 64"),
                       (lambda: Traffic(proto="sctp"), "--proto"), (lambda: Traffic(flows=0), "--flows"),
                       (lambda: Traffic(dst_ip="10.1.1"), "--dst-ip")):
        with pytest.raises(TrafficError, match=field):
            bad()
