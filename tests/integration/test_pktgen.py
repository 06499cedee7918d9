"""The packet generator on real namespaces: DPDK's net_af_packet on h1's eth2, frames
across the lab's bridge to h2. What arrives is checked byte for byte (checksums, stamps,
flows), and the lab's receiver accounting is exact: received + lost = sent, and injected
loss is measured within 1 percentage point (exactly the switch's drop count)."""
from __future__ import annotations

import json
import struct
import textwrap
import time

import pytest

from hpnlab.cli import build_parser
from hpnlab.labs import lab_module
from hpnlab.labs._kit import agent_python
from hpnlab.labs.pktgen import Loss, accounting, eal_for
from hpnlab.pktgen.templates import checksum

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SNIFF = textwrap.dedent("""
    import json, socket, sys
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("eth2", 0))
    s.settimeout(20)
    print("ready", flush=True)
    frames = []
    while len(frames) < int(sys.argv[1]):
        f, addr = s.recvfrom(4096)
        if addr[2] != socket.PACKET_OUTGOING and f[12:14] == b"\\x08\\x00" and f[23] in (1, 6, 17):
            frames.append(f.hex())
    print(json.dumps(frames))
""")

SEND = textwrap.dedent("""
    from hpnlab import dpdk
    from hpnlab.pktgen.engine import Generator
    from hpnlab.pktgen.templates import Traffic
    dpdk.init(dpdk.eal_args(vdevs=["net_af_packet0,iface=eth2"], memory_mb=256, extra=["--log-level=warning"]))
    port = dpdk.Port(0, dpdk.Pool("rx", 1023))
    for proto, size, flows in (("udp", 64, 3), ("tcp-syn", 74, 1), ("icmp", 100, 1)):
        t = Traffic(proto=proto, sizes=[size], flows=flows, udp_checksum=True)
        r = Generator(port, t, port.mac, bytes.fromhex("02686e706c02")).run(count=10, seconds=10)
        assert r["sent"] == 10, r
""")


def l4_ok(frame: bytes) -> bool:
    ihl = (frame[14] & 0xF) * 4
    ip, l4 = frame[14:14 + ihl], frame[14 + ihl:14 + struct.unpack("!H", frame[16:18])[0]]
    if checksum(ip) != 0:
        return False
    if ip[9] == 1:
        return checksum(l4) == 0
    pseudo = ip[12:20] + struct.pack("!BBH", 0, ip[9], len(l4))
    return checksum(pseudo + l4) == 0


def test_generated_frames_carry_valid_checksums_stamps_and_flows(netns_lab):
    h1, h2 = netns_lab.host("h1"), netns_lab.host("h2")
    sniff = h2.start([agent_python(h2), "-c", SNIFF, "30"], name="pktgen-sniff")
    try:
        deadline = time.monotonic() + 30
        while "ready" not in sniff.logs()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        h1.run([agent_python(h1), "-c", SEND], timeout=60)
        assert sniff.wait(30) == 0, sniff.logs()[1]
        frames = [bytes.fromhex(h) for h in json.loads(sniff.logs()[0].splitlines()[-1])]
    finally:
        sniff.stop(2)
    by_proto: dict[int, list[bytes]] = {}
    for f in frames:
        by_proto.setdefault(f[23], []).append(f)
    assert {p: len(v) for p, v in by_proto.items()} == {17: 10, 6: 10, 1: 10}
    for proto, l4_header, size in ((17, 8, 64), (6, 20, 74), (1, 8, 100)):
        seqs = []
        for f in by_proto[proto]:
            assert len(f) == size and l4_ok(f), (proto, f.hex())
            stamp = f[34 + l4_header:34 + l4_header + 20]
            assert stamp[:4] == b"HPNL"
            seqs.append(struct.unpack("<Q", stamp[4:12])[0])
        assert seqs == list(range(10)), (proto, seqs)
    assert [struct.unpack("!H", f[34:36])[0] for f in by_proto[17]] == [9000, 9001, 9002] * 3 + [9000]
    assert all(f[47] == 0x02 for f in by_proto[6])                  # TCP flags: SYN


def test_lab_compares_with_testpmd_accounts_for_every_packet_and_spreads_queues(netns_lab, tmp_path):
    # what the dpdk role does on netns hosts: the kernel's frames to the stack leave with their
    # checksums filled in (a veth otherwise leaves them to an offload no DPDK port sees)
    netns_lab.host("h2").run(["ethtool", "-K", "eth2", "tx", "off"], timeout=10)
    args = build_parser(["lab"]).parse_args(
        ["lab", "--results", str(tmp_path), "pktgen", "--size", "64", "--seconds", "2", "--rounds", "1", "--no-null",
         "--count", "20000", "--rate", "40kpps", "--loss", "5", "--queues", "2", "--mq-flows", "16",
         "--stack-bytes", "65536"])
    res = lab_module("pktgen").run(netns_lab, args, lambda m: None)
    data = json.loads((res["dir"] / "data.json").read_text())
    assert set(data["pps"]) == {"net_af_packet on eth2"}       # net_null: tests/unit/test_dpdk.py
    for device in data["pps"].values():
        assert device["64"]["hpnlab"] > 0 and device["64"]["testpmd"] > 0
    assert (res["dir"] / "pps.png").stat().st_size > 0 and (res["dir"] / "latency.png").stat().st_size > 0
    clean, lossy = res["accounting"]
    assert (clean["sent"], clean["received"], clean["lost"], clean["duplicates"]) == (20000, 20000, 0, 0)
    assert lossy["received"] + lossy["lost"] == lossy["sent"] == 20000
    assert lossy["lost"] == lossy["dropped_by_rule"]          # every loss is the switch's drop
    assert abs(lossy["loss_pct"] - 5) < 1
    # the round trip through testpmd macswap on h2, counted and timed on h1's own TSC
    rtt = res["round_trip"]
    assert rtt["received"] + rtt["lost"] == rtt["sent"] == 20000 and rtt["beyond_sent"] == 0
    # (the reflector also sends back what else crosses the LAN: the hosts' own IPv6 and ARP frames)
    assert 0 < rtt["received"] <= rtt["reflector"]["tx"] <= rtt["reflector"]["rx"], rtt["reflector"]
    assert 0 < rtt["latency_ns"]["min"] <= rtt["latency_ns"]["p50"] <= rtt["latency_ns"]["p99"]
    assert sum(rtt["histogram"].values()) == rtt["received"]
    # the user-space stack over the same binding (h2's NIC stays Linux's on netns hosts)
    assert res["stack"]["driver"] == "dpdk" and all(c["ok"] for c in res["stack"]["cases"]), res["stack"]["cases"]
    assert [c["name"] for c in res["stack"]["cases"]][-2:] == ["tcp: 64 KiB linux -> stack, sha256",
                                                               "tcp: 64 KiB stack -> linux, sha256"]
    mq = res["multiqueue"]                  # 16 flows hashed over 2 RX queues: both carry some
    assert len(mq["per_queue"]) == 2 and all(n > 0 for n in mq["per_queue"]), mq
    assert [mq["queue_xstats"][f"rx_q{q}_packets"] for q in (0, 1)] == mq["per_queue"]   # the port's own counts
    # a busy-polling receiver on a shared CPU may miss frames (the ring overflows): counted, not hidden
    assert sum(mq["per_queue"]) >= mq["received"] > 0 and mq["received"] + mq["lost"] == mq["sent"]
    text = (res["dir"] / "report.md").read_text()
    assert "ratio" in text and "received + lost = 20000 + 0 = 20000 = sent 20000" in text


class NoSwitch:
    """The netns lab as the static provider sees its links: no switch of the lab's on this
    machine (real links), so the loss goes where static machines get it."""

    def __init__(self, provider):
        self._provider = provider

    def __getattr__(self, name):
        return getattr(self._provider, name)

    def switch_port(self, host, network):
        return None


def test_loss_at_the_senders_egress_hook_is_a_wire_loss_the_sender_never_sees(netns_lab):
    provider = NoSwitch(netns_lab)
    h1, h2 = netns_lab.host("h1"), netns_lab.host("h2")
    args = build_parser(["lab"]).parse_args(["lab", "pktgen", "--count", "20000", "--rate", "40kpps", "--loss", "5"])
    loss = Loss(provider, h1, "dpdk", 5)
    assert (loss.family, loss.host, loss.needs_qdisc_path) == ("netdev", h1, True)
    # the sender's af_packet vdev on the qdisc path: with PACKET_QDISC_BYPASS the hook's verdict
    # reaches its socket as a drop and the TX ring sends the frame again (lost != the rule's count)
    eal_s, _ = eal_for(provider, h1, "dpdk", 0, bypass=False)
    eal_r, _ = eal_for(provider, h2, "dpdk", 1)
    with loss:
        got = accounting(provider, h1, h2, "dpdk", eal_s, eal_r, args, lambda m: None, "lossy", loss, kind="afpacket")
    assert loss.table not in h1.run(["nft", "list", "tables"]).stdout      # the rule went with the block
    assert got["received"] + got["lost"] == got["sent"] == 20000 and got["duplicates"] == 0
    assert got["lost"] == got["dropped_by_rule"]               # every loss is the rule's, and only those
    assert abs(got["loss_pct"] - 5) < 1


def test_loss_rule_is_one_nft_transaction_a_refused_rule_leaves_the_ruleset_as_it_was(netns_lab):
    """The table, chain and rule are one `nft -f -`: where nft refuses the last line nothing of it
    is made, and a table a killed run left behind stays as it was (made apart, the leftover went
    and the new table with its chain was made before the rule failed); where nft takes it, the
    leftover is replaced (one rule, not two) and the block's end removes the table. Both places:
    the LAN's switch (bridge) and the sender's own egress hook (netdev)."""
    from hpnlab.labs._kit import LabError
    h1 = netns_lab.host("h1")
    for provider in (netns_lab, NoSwitch(netns_lab)):
        Loss(provider, h1, "dpdk", 5).__enter__()                  # a killed run's table: never exited
        probe = Loss(provider, h1, "dpdk", 5)
        before = probe.nft("list", "ruleset")
        assert probe.table in before
        bad = Loss(provider, h1, "dpdk", 5)
        bad.rule = [*bad.rule, "counter", "bogus-verdict"]
        with pytest.raises(LabError, match="bogus-verdict"):
            bad.__enter__()
        assert probe.nft("list", "ruleset") == before, probe.family
        with Loss(provider, h1, "dpdk", 5) as loss:
            rules = [i for i in json.loads(loss.nft("-j", "list", "table", loss.family, loss.table))["nftables"]
                     if "rule" in i]
            assert len(rules) == 1, rules
        assert probe.table not in probe.nft("list", "tables")
