"""Each layer of the user-space stack on golden frames: the parser's integrity and
sanity checks, the builder, and the counter naming the path each frame took."""
from __future__ import annotations

import pytest

from hpnlab.ustack.checksum import checksum, verify
from hpnlab.ustack.errors import ParseError
from hpnlab.ustack.proto import arp, ether, icmp, ipv4, udp
from hpnlab.ustack.proto.tcp import segment as tcpseg
from hpnlab.ustack.stack import Stack
from hpnlab.ustack.timers import TimerHeap

MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")
IP, PEER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

def golden_ipv4_header() -> bytes:
    # RFC 1071's classic: 45 00 00 73 00 00 40 00 40 11 b8 61 c0 a8 00 01 c0 a8 00 c7
    return bytes.fromhex("450000730000400040 11b861c0a80001c0a800c7".replace(" ", ""))


def test_checksum_matches_rfc1071_example():
    h = golden_ipv4_header()
    assert verify(h)
    zeroed = h[:10] + b"\0\0" + h[12:]
    assert checksum(zeroed) == 0xB861
    assert not verify(b"\0" * 20)


def built_checksum():
    """hpnlab.ustack.checksum with its C helper (built here if `make setup` has not)."""
    from hpnlab.cbuild import load_or_build
    from hpnlab.ustack import _build
    from hpnlab.ustack import checksum as cs
    load_or_build("hpnlab.ustack", _build.MODULE, _build.build)
    if cs._lib is None:                         # built just now: this process imported the module before
        import importlib
        importlib.reload(cs)
    assert cs.IMPL == "C"
    return cs


def test_word_sum_in_c_and_python_agree(monkeypatch):
    """The C helper (make setup builds it) and the Python sum give the same checksums: the
    stack's segments are the same bytes whichever it runs, and either catches the same errors."""
    import random
    cs = built_checksum()
    rng = random.Random(7)
    sizes = list(range(0, 9)) + [19, 20, 21, 1459, 1460, 1461, 1500] + [rng.randrange(0, 9000) for _ in range(300)]
    for n in sizes:
        data = rng.randbytes(n)
        a, b = rng.randrange(1 << 64), rng.randrange(1 << 32)
        want = cs._py_word_sum(data, a, b)
        for form in (data, bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
            assert cs._c_word_sum(form, a, b) == want, (n, type(form))     # C from C_FROM bytes on
            with monkeypatch.context() as m:
                m.setattr(cs, "C_FROM", 0)                                  # the C loop on every size
                assert cs._c_word_sum(form, a, b) == want, (n, type(form))
    monkeypatch.setattr(cs, "C_FROM", 0)
    assert cs._c_word_sum(golden_ipv4_header()) == 0     # a header with its checksum sums to all ones


def test_ones_sum_and_verify_take_word_sum_and_agree_in_c_and_python(monkeypatch):
    """UDP's, ICMP's and IPv4's checksums (ones_sum, checksum, verify) sum through word_sum,
    the C loop where it is built, as TCP's do: the same answers with either sum, and the sum
    that word_sum is is the one they took."""
    import random
    cs = built_checksum()
    rng = random.Random(11)
    cases = [(golden_ipv4_header(),), (b"\0" * 20,), (b"",), (b"\xff\xff",)]
    cases += [(rng.randbytes(12), rng.randbytes(rng.randrange(0, 1600))) for _ in range(100)]
    cases += [(memoryview(b"x" + c[0])[1:],) for c in cases[:40:3]]
    monkeypatch.setattr(cs, "C_FROM", 0)                    # the C loop on every size
    seen = {}
    for impl in (cs._py_word_sum, cs._c_word_sum):
        taken: list = []

        def counted(d, a=0, b=0, impl=impl, taken=taken):
            taken.append(impl)
            return impl(d, a, b)
        monkeypatch.setattr(cs, "word_sum", counted)
        seen[impl] = [(cs.ones_sum(*c), cs.checksum(*c), cs.verify(*c)) for c in cases]
        assert len(taken) == 3 * len(cases)
    assert seen[cs._py_word_sum] == seen[cs._c_word_sum]
    assert [v for _, _, v in seen[cs._c_word_sum][:4]] == [True, False, False, True]
    monkeypatch.undo()
    assert cs.word_sum is cs._c_word_sum


def test_ether_parse_and_checks():
    f = ether.build(MAC, PEER_MAC, ether.TYPE_IPV4, b"x" * 46)
    fr = ether.parse(f)
    assert (fr.dst, fr.src, fr.ethertype, bytes(fr.payload)) == (MAC, PEER_MAC, 0x0800, b"x" * 46)
    with pytest.raises(ParseError) as e:
        ether.parse(f[:13])
    assert e.value.reason == "truncated"
    with pytest.raises(ParseError) as e:
        ether.parse(ether.build(MAC, b"\x01" + PEER_MAC[1:], 0x0800, b""))
    assert e.value.reason == "bad_src" and "byte 6" in str(e.value)
    with pytest.raises(ParseError) as e:
        ether.parse(ether.build(MAC, PEER_MAC, 0x0100, b""))
    assert e.value.reason == "not_ethernet2"


def test_arp_golden_request():
    # who-has 10.0.0.1 tell 10.0.0.2, as Linux sends it
    golden = bytes.fromhex("0001080006040001" "020000000002" "0a000002" "000000000000" "0a000001")
    assert arp.build(arp.REQUEST, PEER_MAC, PEER, b"\0" * 6, IP) == golden
    p = arp.parse(golden)
    assert (p.op, p.sha, p.spa, p.tpa) == (1, PEER_MAC, PEER, IP)
    with pytest.raises(ParseError) as e:
        arp.parse(golden[:27])
    assert e.value.reason == "truncated"
    with pytest.raises(ParseError) as e:
        arp.parse(golden[:7] + b"\x09" + golden[8:])
    assert e.value.reason == "bad_op"


def test_ipv4_checks_and_fragments():
    p = ipv4.build(PEER, IP, ipv4.UDP, b"y" * 30, ident=7)
    pkt = ipv4.parse(p)
    assert (pkt.src, pkt.dst, pkt.proto, pkt.ttl, bytes(pkt.payload)) == (PEER, IP, 17, 64, b"y" * 30)
    bad = bytearray(p)
    bad[10] ^= 1
    for data, reason in [(p[:19], "truncated"), (b"\x65" + p[1:], "bad_version"),
                         (b"\x44" + p[1:], "bad_header_length"), (p[:2] + b"\x00\x10" + p[4:], "bad_total_length"),
                         (bytes(bad), "bad_checksum")]:
        with pytest.raises(ParseError) as e:
            ipv4.parse(data)
        assert e.value.reason == reason
    # options are skipped: IHL 6 with a NOP option word
    with_opts = bytearray(b"\x46" + p[1:2] + (len(p) + 4).to_bytes(2, "big") + p[4:10] + b"\0\0" + p[12:20]
                          + b"\x01\x01\x01\x00" + p[20:])
    with_opts[10:12] = checksum(bytes(with_opts[:24])).to_bytes(2, "big")
    pkt = ipv4.parse(bytes(with_opts))
    assert pkt.has_options and bytes(pkt.payload) == b"y" * 30
    # fragments, reassembled in any order; a missing piece times out and frees memory
    frags = ipv4.fragment(PEER, IP, ipv4.UDP, bytes(range(256)) * 16, ident=9, mtu=1500)
    assert len(frags) == 3 and all(len(f) <= 1500 for f in frags)
    timers = TimerHeap()
    r = ipv4.Reassembler(timers, timeout=30)
    assert r.add(ipv4.parse(frags[2]), 0) is None and r.add(ipv4.parse(frags[0]), 0) is None
    assert r.add(ipv4.parse(frags[1]), 0) == bytes(range(256)) * 16 and r.bytes == 0
    r.add(ipv4.parse(frags[0]), 1)
    assert r.bytes > 0
    timers.run(100)
    assert r.bytes == 0 and r.counters["ipv4.frag_timeout"] == 1
    small = ipv4.Reassembler(timers, max_bytes=2000)
    small.add(ipv4.parse(frags[0]), 0)
    small.add(ipv4.parse(frags[1]), 0)
    assert small.counters["ipv4.frag_memory_full"] == 1 and small.bytes <= 2000


def test_icmp_and_udp():
    req = icmp.build(icmp.ECHO_REQUEST, 0, b"\x00\x01\x00\x02", b"abc")
    m = icmp.parse(req)
    assert (m.type, m.rest, bytes(m.body)) == (8, b"\x00\x01\x00\x02", b"abc")
    assert icmp.parse(icmp.echo_reply(m)).type == icmp.ECHO_REPLY
    with pytest.raises(ParseError) as e:
        icmp.parse(req[:-1] + b"d")
    assert e.value.reason == "bad_checksum"
    d = udp.build(PEER, IP, 5000, 7, b"hello")
    got = udp.parse(d, PEER, IP)
    assert (got.sport, got.dport, bytes(got.payload)) == (5000, 7, b"hello")
    with pytest.raises(ParseError) as e:
        udp.parse(d, PEER, bytes([10, 0, 0, 3]))            # the pseudo-header counts
    assert e.value.reason == "bad_checksum"
    with pytest.raises(ParseError) as e:
        udp.parse(d[:4] + b"\x00\x40" + d[6:], PEER, IP)
    assert e.value.reason == "bad_length"
    assert udp.parse(d[:6] + b"\0\0" + d[8:], PEER, IP).dport == 7   # checksum 0: none sent


def test_tcp_segment_options_and_checks():
    opts = tcpseg.options(mss=1460, wscale=7, ts=(1, 2))
    raw = tcpseg.build(PEER, IP, 40000, 80, 1000, 0, tcpseg.SYN, 64240, b"", opts)
    s = tcpseg.parse(raw, PEER, IP)
    assert (s.sport, s.dport, s.seq, s.flags, s.mss, s.wscale, s.tsval, s.tsecr) == (40000, 80, 1000, 2, 1460, 7, 1, 2)
    assert s.seg_len == 1
    with pytest.raises(ParseError) as e:
        tcpseg.parse(raw[:-1] + bytes([raw[-1] ^ 1]), PEER, IP)
    assert e.value.reason == "bad_checksum"
    bad_opt = tcpseg.build(PEER, IP, 1, 2, 0, 0, tcpseg.SYN, 0, b"", b"\x02\x09\x05\xb4")
    with pytest.raises(ParseError) as e:
        tcpseg.parse(bad_opt, PEER, IP)
    assert e.value.reason == "bad_option"
    synfin = tcpseg.build(PEER, IP, 1, 2, 0, 0, tcpseg.SYN | tcpseg.FIN, 0)
    with pytest.raises(ParseError) as e:
        tcpseg.parse(synfin, PEER, IP)
    assert e.value.reason == "bad_flags"


def _stack():
    return Stack(MAC, "10.0.0.1", 24)


def test_stack_counts_each_path():
    s = _stack()
    s.receive(ether.build(MAC, PEER_MAC, ether.TYPE_ARP, arp.build(arp.REQUEST, PEER_MAC, PEER, b"\0" * 6, IP)), 0)
    assert s.counters["arp.reply_sent"] == 1
    reply = ether.parse(s.take_tx()[0])
    assert reply.dst == PEER_MAC and arp.parse(reply.payload).op == arp.REPLY
    ping = ipv4.build(PEER, IP, ipv4.ICMP, icmp.build(icmp.ECHO_REQUEST, 0, b"\0\1\0\1", b"x" * 8), 1)
    s.receive(ether.build(MAC, PEER_MAC, ether.TYPE_IPV4, ping), 0)
    assert s.counters["icmp.echo_request"] == 1
    out = ether.parse(s.take_tx()[0])
    assert icmp.parse(ipv4.parse(out.payload).payload).type == icmp.ECHO_REPLY
    bad = bytearray(ping)
    bad[11] ^= 0xFF
    s.receive(ether.build(MAC, PEER_MAC, ether.TYPE_IPV4, bytes(bad)), 0)
    assert s.counters["ipv4.drop.bad_checksum"] == 1
    s.receive(ether.build(PEER_MAC, PEER_MAC, ether.TYPE_IPV4, ping), 0)
    assert s.counters["ether.drop.not_for_us"] == 1
    # UDP to a closed port: ICMP port unreachable quoting the datagram
    dg = ipv4.build(PEER, IP, ipv4.UDP, udp.build(PEER, IP, 5000, 9, b"?"), 2)
    s.receive(ether.build(MAC, PEER_MAC, ether.TYPE_IPV4, dg), 0)
    unreach = icmp.parse(ipv4.parse(ether.parse(s.take_tx()[0]).payload).payload)
    assert (unreach.type, unreach.code) == (3, 3) and bytes(unreach.body[:20]) == dg[:20]
    # TCP to a closed port: RST,ACK with ack = seq + 1
    syn = ipv4.build(PEER, IP, ipv4.TCP, tcpseg.build(PEER, IP, 40000, 81, 5, 0, tcpseg.SYN, 1000), 3)
    s.receive(ether.build(MAC, PEER_MAC, ether.TYPE_IPV4, syn), 0)
    rst = tcpseg.parse(ipv4.parse(ether.parse(s.take_tx()[0]).payload).payload, IP, PEER)
    assert rst.flags == tcpseg.RST | tcpseg.ACK and rst.ack == 6
    assert s.counters["tcp.rst_sent"] == 1 and "stack.internal_error" not in s.counters


def test_arp_resolution_retries_then_gives_up():
    s = _stack()
    s.send_udp(PEER, 1, 2, b"queued")
    assert arp.parse(ether.parse(s.take_tx()[0]).payload).tpa == PEER
    for t in (1.01, 2.02, 3.03):
        s.tick(t)
    assert s.arp.counters["arp.request"] == 3 and s.arp.counters["arp.unresolved"] == 1
    s.send_udp(PEER, 1, 2, b"again")
    s.take_tx()
    s.receive(ether.build(MAC, PEER_MAC, ether.TYPE_ARP, arp.build(arp.REPLY, PEER_MAC, PEER, MAC, IP)), 4)
    sent = ether.parse(s.take_tx()[0])
    assert sent.dst == PEER_MAC and bytes(udp.parse(ipv4.parse(sent.payload).payload, IP, PEER).payload) == b"again"
    s.gratuitous_arp()
    g = arp.parse(ether.parse(s.take_tx()[0]).payload)
    assert g.spa == g.tpa == IP


def _scapy_golden():
    """(name, frame made by scapy, the counter it must bump): a packet library that is not
    the stack's own builds each frame, so parser and builder cannot share a mistake."""
    from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPOption_NOP, Raw, raw
    me, peer, us = "02:00:00:00:00:02", "02:00:00:00:00:01", "10.0.0.1"
    eth = Ether(dst="02:00:00:00:00:01", src=me)
    ip = IP(src="10.0.0.2", dst=us)
    syn = TCP(sport=40000, dport=81, flags="S")
    cases = [
        ("ether truncated", raw(eth)[:10], "ether.drop.truncated"),
        ("ether 802.3 length", raw(Ether(dst=peer, src=me, type=0x0100)), "ether.drop.not_ethernet2"),
        ("ether group source", raw(Ether(dst=peer, src="03:00:00:00:00:01") / ip / ICMP()), "ether.drop.bad_src"),
        ("ether other type", raw(Ether(dst=peer, src=me, type=0x86DD) / Raw(b"x" * 40)), "ether.drop.unknown_type"),
        ("ether not for us", raw(Ether(dst="02:00:00:00:00:09", src=me) / ip / ICMP()), "ether.drop.not_for_us"),
        ("arp who-has us", raw(Ether(dst="ff:ff:ff:ff:ff:ff", src=me) / ARP(hwsrc=me, psrc="10.0.0.2", pdst=us)),
         "arp.reply_sent"),
        ("arp not ethernet", raw(eth / ARP(hwtype=6, hwlen=6, plen=4, psrc="10.0.0.2", pdst=us)),
         "arp.drop.bad_format"),
        ("arp bad op", raw(eth / ARP(op=9, hwsrc=me, psrc="10.0.0.2", pdst=us)), "arp.drop.bad_op"),
        ("ipv4 version 6", raw(eth / IP(version=6, src="10.0.0.2", dst=us) / ICMP()), "ipv4.drop.bad_version"),
        ("ipv4 bad checksum", raw(eth / IP(src="10.0.0.2", dst=us, chksum=0x1234) / ICMP()),
         "ipv4.drop.bad_checksum"),
        ("ipv4 ihl 4", raw(eth / IP(src="10.0.0.2", dst=us, ihl=4) / ICMP()), "ipv4.drop.bad_header_length"),
        ("ipv4 total length past the frame", raw(eth / IP(src="10.0.0.2", dst=us, len=900) / ICMP()),
         "ipv4.drop.bad_total_length"),
        ("ipv4 multicast source", raw(eth / IP(src="224.0.0.9", dst=us) / ICMP()), "ipv4.drop.bad_src"),
        ("ipv4 not for us", raw(eth / IP(src="10.0.0.2", dst="10.0.0.77") / ICMP()), "ipv4.drop.not_for_us"),
        ("ipv4 options skipped", raw(eth / IP(src="10.0.0.2", dst=us, options=[IPOption_NOP()] * 4) / ICMP()),
         "ipv4.options_skipped"),
        ("ipv4 unknown protocol", raw(eth / IP(src="10.0.0.2", dst=us, proto=99) / Raw(b"x")),
         "ipv4.drop.unknown_protocol"),
        ("ipv4 first fragment", raw(eth / IP(src="10.0.0.2", dst=us, flags="MF") / UDP(dport=7) / Raw(b"x" * 16)),
         "ipv4.fragment"),
        ("icmp echo request", raw(eth / ip / ICMP(type=8) / Raw(b"ping")), "icmp.echo_request"),
        ("icmp bad checksum", raw(eth / ip / ICMP(type=8, chksum=0x4321) / Raw(b"ping")), "icmp.drop.bad_checksum"),
        ("icmp unknown type", raw(eth / ip / ICMP(type=42)), "icmp.drop.bad_type"),
        ("icmp port unreachable", raw(eth / ip / ICMP(type=3, code=3) / Raw(b"q" * 28)), "icmp.unreachable.3"),
        ("udp closed port", raw(eth / ip / UDP(sport=5000, dport=9) / Raw(b"?")), "udp.port_unreachable"),
        ("udp bad checksum", raw(eth / ip / UDP(dport=9, chksum=0x1111) / Raw(b"?")), "udp.drop.bad_checksum"),
        ("udp length past the data", raw(eth / ip / UDP(dport=9, len=200) / Raw(b"?")), "udp.drop.bad_length"),
        ("udp port 0", raw(eth / ip / UDP(dport=0) / Raw(b"?")), "udp.drop.bad_port"),
        ("tcp syn to a closed port", raw(eth / ip / syn), "tcp.rst_sent"),
        ("tcp bad checksum", raw(eth / ip / TCP(dport=81, flags="S", chksum=0x2222)), "tcp.drop.bad_checksum"),
        ("tcp data offset past the segment", raw(eth / ip / TCP(dport=81, dataofs=15)), "tcp.drop.bad_data_offset"),
        ("tcp syn+fin", raw(eth / ip / TCP(dport=81, flags="SF")), "tcp.drop.bad_flags"),
        ("tcp port 0", raw(eth / ip / TCP(sport=0, dport=81, flags="S")), "tcp.drop.bad_port"),
        ("tcp mss option of length 9", raw(eth / ip / TCP(dport=81, flags="S", dataofs=6) / Raw(b"\x02\x09\x05\xb4")),
         "tcp.drop.bad_option"),
        ("tcp options kept", raw(eth / ip / TCP(dport=81, flags="S", options=[("MSS", 1460), ("WScale", 7),
                                                                             ("Timestamp", (1, 0))])),
         "tcp.rst_sent"),
    ]
    return cases


@pytest.mark.parametrize("name, frame, counter", _scapy_golden(), ids=lambda x: x if isinstance(x, str) else "")
def test_scapy_golden_frames_take_their_path(name, frame, counter):
    s = _stack()
    s.arp.learn(PEER, PEER_MAC, 0)
    s.receive(frame, 0)
    assert s.counters[counter] == 1, (name, dict(s.counters))
    assert "stack.internal_error" not in s.counters
