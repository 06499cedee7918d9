"""Link impairment (delay, jitter, loss, rate) at a NIC's egress.

Where the kernel has sch_netem (VM guests, most distributions) one netem
qdisc does everything. Where it does not (this project's dev machines load no
modules), each knob gets its own mechanism:

    rate   tbf qdisc
    loss   nftables `numgen random` drop rule
    delay  iptables-nft NFQUEUE rule + hpnlab.impair.delayq holding verdicts
           (this kernel lacks nft's own `queue` expression, xt NFQUEUE works)

Both are expressed as commands run *inside* the host, so the same plan serves
network namespaces and SSH hosts. `apply` makes a plan on a host (netem if the
host's kernel takes it, else the fallback); `applied` does it for a block and
undoes each step it made, newest first, on the way out.

What a plan makes carries hpnlab's mark, so that what a killed run (kill -9: no
undo ran) left on a machine can be found and removed, and nothing else: the root
qdisc has the handle QDISC_HANDLE, the nftables table is NFT_TABLE, the NFQUEUE
rule has the comment TAG, and iptables-nft's mangle table, where hpnlab made it,
the comment TAG too (`sweep`).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from ..errors import HpnlabError
from ..interrupts import deferred_interrupts
from ..topology.model import Impairment, format_rate

NFT_TABLE = "hpnlab_impair"
TAG = "hpnlab-impair"       # the NFQUEUE rule's comment; the mangle table's where hpnlab made it
QDISC_HANDLE = "4850:"      # hpnlab's root qdiscs ("HP"): a leftover is told from the machine's own by it
# iptables-nft keeps its mangle table (and the base chain) after the last rule went: an empty
# table that, where hpnlab made it (its comment), goes with hpnlab's last rule
DROP_OWN_MANGLE = (f"nft list table ip mangle 2>/dev/null | grep -qF 'comment \"{TAG}\"' "
                   "&& ! iptables-nft -t mangle -S | grep -q '^-[AN] ' "
                   "&& nft delete table ip mangle && echo dropped; true")


class ImpairError(HpnlabError, RuntimeError):
    hint = "the host's kernel needs sch_netem, or nftables, iptables-nft and NFQUEUE"


@dataclass
class Plan:
    mechanism: str              # what `hpnlab status` shows
    commands: list[list[str]]   # run in order inside the host
    delay_daemon: list[str] | None = None   # start (in the host) before `commands`
    queue: int | None = None
    # undo[i] undoes commands[i] (None: undone with an earlier one); run newest first
    undo: list[list[str] | None] = field(default_factory=list)


def netem_plan(ifname: str, imp: Impairment) -> Plan:
    args = ["tc", "qdisc", "replace", "dev", ifname, "root", "handle", QDISC_HANDLE, "netem"]
    if imp.delay_ms:
        args += ["delay", f"{imp.delay_ms:g}ms"] + ([f"{imp.jitter_ms:g}ms"] if imp.jitter_ms else [])
    if imp.loss_pct:
        args += ["loss", f"{imp.loss_pct:g}%"]
    if imp.rate_bps:
        args += ["rate", format_rate(imp.rate_bps)]
    # netem's default queue of 1000 packets is too short for a delayed fast link
    args += ["limit", "100000"]
    return Plan("netem", [args], undo=[_del_root_qdisc(ifname)])


def fallback_plan(ifname: str, imp: Impairment, queue: int, python: str = sys.executable,
                  match: Sequence[str] = ()) -> Plan:
    """Without netem: tbf, an nftables drop rule, an NFQUEUE delay line (run with `python`)
    for the packets that also match the iptables `match` (all of the NIC's by default)."""
    commands: list[list[str]] = []
    undo: list[list[str] | None] = []
    parts: list[str] = []
    daemon = None
    if imp.rate_bps:
        # burst: at least a few full frames, or 10 ms worth at the rate
        burst = max(imp.rate_bps // 8 // 100, 16 * 1514)
        commands.append(["tc", "qdisc", "replace", "dev", ifname, "root", "handle", QDISC_HANDLE, "tbf",
                         "rate", format_rate(imp.rate_bps), "burst", str(burst), "latency", "100ms"])
        undo.append(_del_root_qdisc(ifname))
        parts.append("tbf (rate)")
    if imp.loss_pct:
        threshold = round(imp.loss_pct / 100 * 1_000_000)
        commands += [
            ["nft", "add", "table", "inet", NFT_TABLE],
            ["nft", "add", "chain", "inet", NFT_TABLE, "egress",
             "{ type filter hook postrouting priority 0; policy accept; }"],
            ["nft", "add", "rule", "inet", NFT_TABLE, "egress", "oifname", ifname,
             "numgen", "random", "mod", "1000000", "<", str(threshold), "counter", "drop"]]
        # deleting the table (hpnlab's own) takes its chain and rule along
        undo += [["nft", "delete", "table", "inet", NFT_TABLE], None, None]
        parts.append("nftables numgen (loss)")
    if imp.delay_ms:
        daemon = [python, "-m", "hpnlab.impair.delayq", "--queue", str(queue),
                  "--delay-ms", f"{imp.delay_ms:g}", "--jitter-ms", f"{imp.jitter_ms:g}"]
        rule = ["POSTROUTING", "-o", ifname, *match, "-m", "comment", "--comment", TAG,
                "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
        # the mangle table marked as hpnlab's where it makes it (`create` fails if it exists: then not ours)
        commands += [["sh", "-c", f"nft create table ip mangle '{{ comment \"{TAG}\"; }}' 2>/dev/null; true"],
                     ["iptables-nft", "-t", "mangle", "-A", *rule]]
        undo += [["sh", "-c", DROP_OWN_MANGLE], ["iptables-nft", "-t", "mangle", "-D", *rule]]
        parts.append("NFQUEUE delay line (delay)")
    return Plan(", ".join(parts), commands, daemon, queue if daemon else None, undo)


def _del_root_qdisc(ifname: str) -> list[str]:
    return ["tc", "qdisc", "del", "dev", ifname, "root"]


def apply(host, ifname: str, imp: Impairment, queue: int, match: Sequence[str] = (),
          undo: list[Callable[[], object]] | None = None) -> Plan:
    """Impair the egress of `host`'s NIC `ifname`: netem where the host's kernel takes it,
    else the fallback (its delay line on NFQUEUE `queue`, for the packets `match` selects).
    Each step made appends its undoing to `undo`. Returns the plan that was made."""
    undo = [] if undo is None else undo
    plan = netem_plan(ifname, imp)
    if host.run(plan.commands[0], timeout=10, check=False).ok:
        undo.append(lambda: host.run(_del_root_qdisc(ifname), timeout=10, check=False))
        return plan
    plan = fallback_plan(ifname, imp, queue, host.python, match)
    if plan.delay_daemon:
        proc = host.start(plan.delay_daemon, name=f"delayq-{ifname}")
        undo.append(lambda: proc.stop(3))
        wait_queue_bound(host, queue)
    for argv, back in zip(plan.commands, plan.undo):
        host.run(argv, timeout=10)
        if back:
            undo.append(partial(host.run, back, timeout=10, check=False))
    return plan


@contextmanager
def applied(host, ifname: str, imp: Impairment, queue: int, match: Sequence[str] = ()) -> Iterator[Plan]:
    """`apply` for the block; on the way out (an error or Ctrl-C included) every step that
    was made is undone, newest first."""
    undo: list[Callable[[], object]] = []
    try:
        with deferred_interrupts():
            plan = apply(host, ifname, imp, queue, match, undo)
        yield plan
    finally:
        with deferred_interrupts():
            for step in reversed(undo):
                step()


def sweep(host, ifnames: Sequence[str], own_table: Callable[[str], bool] = lambda name: False) -> list[str]:
    """Remove what impairment plans left on `host` (a run killed before its undo): hpnlab's root
    qdiscs on `ifnames`, its nftables tables (NFT_TABLE, and those `own_table` names: a lab's),
    the NFQUEUE rules with its comment and the mangle table it made once empty. Marks that are
    not hpnlab's are left alone. Returns what it removed. (The delay lines' processes are the
    provider's: it recorded them.)"""
    import json
    import shlex
    removed = []
    for ifname in ifnames:
        shown = host.run(["tc", "-j", "qdisc", "show", "dev", ifname, "root"], timeout=10, check=False)
        qdiscs = json.loads(shown.stdout or "[]") if shown.ok else []
        if any(q.get("root") and q.get("handle") == QDISC_HANDLE for q in qdiscs):
            host.run(_del_root_qdisc(ifname), timeout=10, check=False)
            removed.append(f"qdisc {QDISC_HANDLE} on {ifname}")
    listed = host.run(["nft", "list", "tables"], timeout=10, check=False).stdout.split("\n")
    for family, name in (line.split()[1:3] for line in listed if line.startswith("table ")):
        if name == NFT_TABLE or name.startswith(NFT_TABLE + "_") or own_table(name):
            host.run(["nft", "delete", "table", family, name], timeout=10, check=False)
            removed.append(f"nft table {family} {name}")
    for table in ("mangle", "filter"):       # the delay lines' rules; the ustack FIN hold's
        rules = host.run(["iptables-nft", "-t", table, "-S"], timeout=10, check=False).stdout.splitlines()
        for argv in map(shlex.split, rules):
            if argv[:1] == ["-A"] and "--comment" in argv and argv[argv.index("--comment") + 1] == TAG:
                host.run(["iptables-nft", "-t", table, "-D", *argv[1:]], timeout=10, check=False)
                removed.append(f"iptables-nft {table} rule {shlex.join(argv[1:])}")
    if "dropped" in host.run(["sh", "-c", DROP_OWN_MANGLE], timeout=10, check=False).stdout:
        removed.append("nft table ip mangle (hpnlab's, empty)")
    return removed


def wait_queue_bound(host, queue: int, timeout: float | None = None) -> None:
    """The delay daemon is ready once the kernel lists its queue in the host's namespace."""
    timeout = timeout or host.start_timeout
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = host.run(["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
        if any(line.split()[:1] == [str(queue)] for line in table.splitlines()):
            return
        time.sleep(0.02)
    raise ImpairError(f"[{host.name}] the NFQUEUE delay line for queue {queue} did not start in {timeout:g}s")
