"""Link impairment (delay, jitter, loss, rate) at a NIC's egress.

Where the kernel has sch_netem (VM guests, most distributions) one netem
qdisc does everything. Where it does not (this project's dev machines load no
modules), each knob gets its own mechanism:

    rate   tbf qdisc
    loss   nftables `numgen random` drop rule
    delay  iptables-nft NFQUEUE rule + hpnlab.impair.delayq holding verdicts
           (this kernel lacks nft's own `queue` expression, xt NFQUEUE works)

Both are expressed as commands run *inside* the host, so the same plan serves
network namespaces and SSH hosts.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from ..topology.model import Impairment, format_rate

NFT_TABLE = "hpnlab_impair"


@dataclass
class Plan:
    mechanism: str              # what `hpnlab status` shows
    commands: list[list[str]]   # run in order inside the host
    delay_daemon: list[str] | None = None   # start (in the host) before `commands`
    queue: int | None = None


def netem_plan(ifname: str, imp: Impairment) -> Plan:
    args = ["tc", "qdisc", "replace", "dev", ifname, "root", "netem"]
    if imp.delay_ms:
        args += ["delay", f"{imp.delay_ms:g}ms"] + ([f"{imp.jitter_ms:g}ms"] if imp.jitter_ms else [])
    if imp.loss_pct:
        args += ["loss", f"{imp.loss_pct:g}%"]
    if imp.rate_bps:
        args += ["rate", format_rate(imp.rate_bps)]
    # netem's default queue of 1000 packets is too short for a delayed fast link
    args += ["limit", "100000"]
    return Plan("netem", [args])


def fallback_plan(ifname: str, imp: Impairment, queue: int) -> Plan:
    commands, parts, daemon = [], [], None
    if imp.rate_bps:
        # burst: at least a few full frames, or 10 ms worth at the rate
        burst = max(imp.rate_bps // 8 // 100, 16 * 1514)
        commands.append(["tc", "qdisc", "replace", "dev", ifname, "root", "tbf",
                         "rate", format_rate(imp.rate_bps), "burst", str(burst), "latency", "100ms"])
        parts.append("tbf (rate)")
    if imp.loss_pct:
        threshold = round(imp.loss_pct / 100 * 1_000_000)
        commands += [
            ["nft", "add", "table", "inet", NFT_TABLE],
            ["nft", "add", "chain", "inet", NFT_TABLE, "egress",
             "{ type filter hook postrouting priority 0; policy accept; }"],
            ["nft", "add", "rule", "inet", NFT_TABLE, "egress", "oifname", ifname,
             "numgen", "random", "mod", "1000000", "<", str(threshold), "counter", "drop"]]
        parts.append("nftables numgen (loss)")
    if imp.delay_ms:
        daemon = [sys.executable, "-m", "hpnlab.impair.delayq", "--queue", str(queue),
                  "--delay-ms", f"{imp.delay_ms:g}", "--jitter-ms", f"{imp.jitter_ms:g}"]
        commands.append(["iptables-nft", "-t", "mangle", "-A", "POSTROUTING", "-o", ifname,
                         "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"])
        parts.append("NFQUEUE delay line (delay)")
    return Plan(", ".join(parts), commands, daemon, queue if daemon else None)
