"""Lab pktgen: the course's DPDK packet generator (课后作业: 基于 dpdk 的发包工具).

On the sender host, for each packet size, hpnlab's generator and
`dpdk-testpmd --forward-mode=txonly` send as fast as they can, one after the
other, on the same port with the same EAL arguments: first on `net_null` (no
wire: the generator's own CPU cost is the limit), then on the lab's DPDK NIC
(an af_packet vdev on netns hosts, the uio-bound eth2 on VMs). Then a known
count goes at a modest rate to a receiver on the peer host, which counts what
arrived from the sequence numbers (received + lost = sent, reordering,
duplicates) and the latency from the TSC stamps; once more with loss
injected after the sender (in the lab's switch, or at the sender's NIC's egress hook
where the links are real), to show the receiver measures it; and a round trip
through a reflector on the peer (testpmd macswap), timed by the sender's own TSC.
Where the peer's NIC stays the kernel's, the user-space stack runs over the same
binding on the sender and talks TCP to the peer's Linux. A part asked for that could
not run (or failed) is named in the report, and the command exits non-zero.

    hpnlab lab pktgen --size 64,512,1500,imix --seconds 3
    hpnlab pktgen ...                 (the same)
    make lab-pktgen [PROVIDER=netns]
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from .. import report
from ..pktgen.templates import (
    PEER_MAC_TEXT,
    PROTOS,
    Traffic,
    TrafficError,
    parse_rate,
    parse_sizes,
    size_label,
)
from ..providers import lab_nft_table
from ._kit import LabError, agent_python, deferred_interrupts, emulated, host_pair

HELP = "DPDK packet generator vs dpdk-testpmd txonly (pps per size), receiver loss/reorder/latency"
GOAL = 0.9

# The full grid, and the one used when the sender's CPU is emulated (QEMU TCG: the default
# VM lab where KVM fails), where each run's start-up alone takes 4-5 s. A knob given on the
# command line is kept either way.
GRID = {"size": "64,512,1500,imix", "seconds": 3.0, "rounds": 3, "count": 200_000, "rate": "100kpps",
        "no_null": False}
# Five rounds there: single seconds swing 3x with the host's scheduler (README), so the
# paired verdict needs rounds enough to show whether it stands beyond that spread.
EMULATED_GRID = {"size": "64,1500", "seconds": 4.0, "rounds": 5, "count": 20_000, "rate": "5kpps",
                 "no_null": True}
EMULATED_WHY = ("each run's start-up there (SSH, Python, EAL) takes 4-5 s, so the full grid's 42 throughput "
                "runs alone take over 5 minutes; 5 rounds, as single seconds swing there with the host's scheduler "
                "and the verdict needs rounds enough to show its spread; net_null would measure the emulator, "
                "not the generator; the accounting rate is one the emulated receivers kept up with")


STACK_BYTES = 1 << 20


def add_arguments(p) -> None:
    p.add_argument("--hosts", default="h1,h2", help="sender,receiver (default h1,h2)")
    p.add_argument("--network", help="the network to send on (default: the sender's DPDK network)")
    p.add_argument("--size", help=f"frame sizes in bytes (no FCS), comma separated, or imix (default "
                   f"{GRID['size']}; {EMULATED_GRID['size']} on an emulated CPU)")
    p.add_argument("--proto", choices=PROTOS, default="udp")
    p.add_argument("--flows", type=int, default=1, help="flows (source ports) the packets rotate over")
    p.add_argument("--seconds", type=float, help=f"length of each throughput run (default {GRID['seconds']:g}; "
                   f"{EMULATED_GRID['seconds']:g} emulated)")
    p.add_argument("--rounds", type=int, help="throughput rounds per size: hpnlab and testpmd back to back, "
                   f"order alternating (default {GRID['rounds']}; {EMULATED_GRID['rounds']} emulated)")
    p.add_argument("--count", type=int, help=f"packets of the accounting runs (default {GRID['count']}; "
                   f"{EMULATED_GRID['count']} emulated)")
    p.add_argument("--rate", help="rate of the accounting runs, pps, bit/s or line (default "
                   f"{GRID['rate']}; {EMULATED_GRID['rate']} emulated)")
    p.add_argument("--receiver", choices=("auto", "afpacket", "dpdk"), default="auto",
                   help="the peer's receiver (auto: DPDK where provisioning bound its NIC, else AF_PACKET)")
    p.add_argument("--loss", type=float, help="loss %% to inject in the impaired run (default: the "
                   "network's impair.loss, else 2; 0 skips it)")
    p.add_argument("--no-null", action="store_true", default=None,
                   help="skip the net_null comparison (skipped by default on an emulated CPU)")
    p.add_argument("--queues", type=int, default=2,
                   help="multi-queue run: a DPDK receiver with this many RX queues (<2 skips it)")
    p.add_argument("--mq-flows", type=int, default=8, help="flows of the multi-queue run")
    p.add_argument("--stack-bytes", type=int,
                   help="the user-space stack over DPDK against the peer's Linux: bulk size each way (default "
                   f"{STACK_BYTES >> 20} MiB where the peer's NIC is the kernel's, else not run; 0 skips it)")


# -- where and how DPDK runs on a host ---------------------------------------------------------

def dpdk_owns(provider, host: str, network: str) -> bool:
    """Whether provisioning gave the host's NIC on `network` to DPDK (VMs and machines with
    `dpdk: network`); otherwise DPDK reaches the kernel's NIC through an af_packet vdev."""
    return provider.dpdk_takes_nic and provider.lab.hosts[host].dpdk_network == network


def eal_for(provider, host, network: str, lcore: int, queues: int = 1, ring: int = 0,
            bypass: bool = True) -> tuple[str, str]:
    """(EAL arguments for the host's NIC on `network`, what they drive). `queues`: queue pairs
    the af_packet vdev opens (a PACKET_FANOUT group: the kernel's flow hash picks the queue);
    `ring`: frames in each of its rings (0: the PMD's 512); `bypass`: its frames skip the
    qdiscs (PACKET_QDISC_BYPASS, the PMD's default), else they take the kernel's TX path."""
    base = ["--no-telemetry", "--log-level=warning", "-l", str(lcore)]
    ifname = host.nic(network).ifname
    if not dpdk_owns(provider, host.name, network):       # an af_packet vdev over the kernel's NIC
        opts = ((f",qpairs={queues}" if queues > 1 else "") + (f",framecnt={ring}" if ring else "")
                + ("" if bypass else ",qdisc_bypass=0"))
        return shlex.join([*base, "--no-huge", "--no-shconf", "-m", "256", "--no-pci",
                           f"--vdev=net_af_packet0,iface={ifname}{opts}"]), f"net_af_packet on {ifname}"
    res = host.run(["cat", "/var/lib/hpnlab/dpdk-nic"], timeout=20, check=False)
    pci = res.stdout.strip()
    if res.rc != 0 or not pci:
        raise LabError(f"[{host.name}] no NIC bound to DPDK (/var/lib/hpnlab/dpdk-nic is missing): "
                       "provision the lab first (`make lab-provision`)")
    return shlex.join([*base, "--in-memory", "-m", "100", f"--allow={pci}"]), f"PCI {pci} (uio_pci_generic)"


def null_eal(lcore: int) -> str:
    return shlex.join(["--no-telemetry", "--log-level=warning", "-l", str(lcore), "--no-huge", "--no-shconf",
                       "-m", "256", "--no-pci", "--vdev=net_null0"])


def ensure_binding(provider, host) -> str:
    """Make the DPDK binding importable on a host: netns hosts share this checkout's; a
    VM or machine builds its own where it has DPDK's headers (the labcode role's
    copy), else gets this machine's build (same Debian 12, DPDK 22.11 ABI, Python)."""
    if provider.shares_kernel:
        return "this checkout's"
    probe = "import os, hpnlab.dpdk as d; d.binding(); print(os.path.dirname(d.__file__))"
    res = host.run([agent_python(host), "-c", probe], timeout=host.start_timeout + 240, check=False)
    if res.rc == 0:
        return "built on the host"
    from ..dpdk import _build
    local = next(Path(_build.__file__).parent.glob(f"{_build.MODULE}.*.so"), None)
    where = host.run([agent_python(host), "-c", "import os, hpnlab.dpdk as d; print(os.path.dirname(d.__file__))"],
                     timeout=host.start_timeout, check=False)
    if local is None or where.rc != 0:
        raise LabError(f"[{host.name}] the DPDK binding cannot be built there ({res.stderr.strip()[-300:]}) "
                       "and there is no build here to copy: `make setup`")
    host.put(local, f"{where.stdout.strip()}/{local.name}")
    res = host.run([agent_python(host), "-c", probe], timeout=host.start_timeout + 60, check=False)
    if res.rc != 0:
        raise LabError(f"[{host.name}] this machine's DPDK binding does not load there: {res.stderr.strip()[-500:]}")
    return "copied from the controller"


def agent(host, *args) -> list[str]:
    return [agent_python(host), "-m", "hpnlab.pktgen.agent", *[str(a) for a in args]]


def parse_agent(host, stdout: str, stderr: str, what: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            out = json.loads(line)
            if "error" in out:
                raise LabError(f"[{host.name}] {what}: {out['error']}"
                               + (f" ({out['hint']})" if out.get("hint") else ""))
            return out
    raise LabError(f"[{host.name}] {what} printed no result: {stderr.strip()[-1500:]}")


def run_agent(host, args: list, timeout: float, what: str) -> dict:
    res = host.run(agent(host, *args), timeout=timeout, check=False)
    return parse_agent(host, res.stdout, res.stderr, what)


# -- the runs ----------------------------------------------------------------------------------

def throughput(sender, eal: str, sizes: list[list[int]], args, step, device: str) -> list[dict]:
    """hpnlab and testpmd, interleaved: in each of `rounds` rounds one run of each, back to
    back, the order swapped every round; per size each tool's median run, and the verdict
    from the rounds' own ratios (`paired`)."""
    rows = []
    for sz in sizes:
        label = size_label(sz)
        runs: dict[str, list[dict]] = {"hpnlab": [], "testpmd": []}
        for r in range(args.rounds):
            order = ("hpnlab", "testpmd") if r % 2 == 0 else ("testpmd", "hpnlab")
            for tool in order:
                if tool == "testpmd" and label == "imix":
                    continue           # testpmd's txonly sends one size (or fixed segments), no mix
                step(f"{device}: {label} B, {tool}, round {r + 1}/{args.rounds}")
                timeout = args.seconds + 120 + sender.start_timeout
                if tool == "hpnlab":
                    res = run_agent(sender, ["send", "--eal", eal, "--size", label, "--proto", args.proto,
                                             "--flows", args.flows, "--seconds", args.seconds], timeout,
                                    f"generator on {device}")
                else:
                    res = run_agent(sender, ["testpmd", "--eal", eal, "--size", label, "--seconds", args.seconds],
                                    timeout, f"testpmd on {device}")
                res["round"] = r + 1
                runs[tool].append(res)
        mean = sum(sz) / len(sz)
        pps = {tool: median_of(runs[tool], "steady_pps") for tool in runs}
        pair, pair_cpu = paired(runs, "steady_pps"), paired(runs, "pps_per_cpu")
        rows.append({
            "device": device, "size": label, "mean_size": mean, "pps": pps,
            "gbps": {tool: None if v is None else v * (mean + 24) * 8 / 1e9 for tool, v in pps.items()},
            "pps_per_cpu": {tool: median_of(runs[tool], "pps_per_cpu") for tool in runs},
            # frames made for a burst that the full TX ring did not take, per frame sent
            "unsent_per_sent": {tool: sum(x["unsent"] for x in rs) / max(1, sum(x["sent"] for x in rs))
                                for tool, rs in runs.items() if rs},
            # each sender's seconds after its first, lowest and highest, over all its runs
            "second_range": {tool: [min(s), max(s)] for tool, rs in runs.items()
                             if (s := [x for run in rs for x in run["samples"][1:]])},
            "paired": pair, "paired_per_cpu": pair_cpu,
            "ratio": pair and pair["median"], "ratio_per_cpu": pair_cpu and pair_cpu["median"],
            "runs": runs,
        })
    return rows


def median_of(runs: list[dict], key: str) -> float | None:
    return statistics.median(r[key] for r in runs) if runs else None


def paired(runs: dict[str, list[dict]], key: str) -> dict | None:
    """hpnlab over testpmd, one ratio per round (the two ran back to back in it, under about
    the same load from the rest of the machine): their median, range, in how many rounds
    the ratio reached the goal and 1, and whether the verdict is beyond the run-to-run
    spread (every round on the same side of the goal). On the VM lab single seconds swing
    between ~150 and ~540 kpps with the host's scheduler, so one round's ratio says little."""
    ratios = [h[key] / t[key] for h, t in zip(runs["hpnlab"], runs["testpmd"]) if t[key]]
    if not ratios:
        return None
    met = sum(x >= GOAL for x in ratios)
    return {"ratios": [round(x, 3) for x in ratios], "median": statistics.median(ratios), "min": min(ratios),
            "max": max(ratios), "rounds": len(ratios), "met_in": met, "faster_in": sum(x >= 1 for x in ratios),
            "beyond_spread": len(ratios) >= 2 and met in (0, len(ratios))}


def verdict(row: dict) -> str:
    """The reading of one size's paired ratios against the goal."""
    p = row["paired"]
    n = p["rounds"]
    text = (f"- {row['device']}: at {row['size']} B hpnlab sent {p['median']:.2f}× testpmd's rate, the median of "
            f"{n} round(s)" + (f" [{p['min']:.2f}–{p['max']:.2f}]" if n > 1 else "")
            + f": {'meets' if p['median'] >= GOAL else 'misses'} the {GOAL}× goal; ")
    if n < 2:
        text += "one round gives no spread to judge it by"
    elif p["beyond_spread"]:
        text += (f"beyond the spread: every round {'reached' if p['met_in'] else 'fell short of'} {GOAL}× "
                 f"(hpnlab ahead of testpmd in {p['faster_in']} of {n})")
    else:
        text += (f"inside the spread: {p['met_in']} of {n} rounds reached {GOAL}×, {n - p['met_in']} did not "
                 f"(hpnlab ahead of testpmd in {p['faster_in']} of {n}): the rounds do not settle it beyond "
                 "their spread")
    return text + f"; per CPU-second of each sender the ratio is {_r(row['ratio_per_cpu'])}."


def receiver_kind(provider, args, receiver: str, network: str) -> str:
    if args.receiver != "auto":
        return args.receiver
    return "dpdk" if dpdk_owns(provider, receiver, network) else "afpacket"


def settle_grid(args, sender) -> str:
    """Fill the knobs not given with the full grid, or the emulated one where the sender's
    CPU is emulated; returns why the grid was cut ('' if it was not)."""
    cut = emulated(sender)
    grid = EMULATED_GRID if cut else GRID
    for knob, value in grid.items():
        if getattr(args, knob) is None:
            setattr(args, knob, value)
    if not cut:
        return ""
    return (f"{sender.name}'s CPU is emulated (QEMU TCG), so the knobs not given were set to: sizes "
            f"{EMULATED_GRID['size']}, {EMULATED_GRID['rounds']} rounds of {EMULATED_GRID['seconds']:g} s, "
            f"net_null skipped, {EMULATED_GRID['count']} packets at {EMULATED_GRID['rate']} for the accounting "
            f"runs ({EMULATED_WHY}; give --size, --seconds, --rounds, --count, --rate to choose)")


class Loss:
    """Drop `pct` % of the generator's frames after they left the sender, where the sender
    cannot notice, and before the receiver's NIC (whose AF_PACKET tap would see frames a
    filter on that NIC dropped). The lab's own impairment (nftables postrouting, netem in the
    guests) does not apply here: it sits in the kernel's IP path, which these frames bypass.

    Where the lab has a switch on this machine (the netns provider's bridge, the VM lab's
    libvirt bridge), an nftables bridge rule on the sender's port drops them. Where it has
    none (static machines: real links) and the sender's NIC is the kernel's (DPDK reaches
    it through an af_packet vdev), a rule on that NIC's netdev egress hook on the sender
    takes them: with `fwd to lo`, not `drop` — a hook that drops a frame hands the
    AF_PACKET socket NET_XMIT_DROP and its TX ring sends the frame again (and a ring whose
    frame waits there is overwritten by the PMD's next burst), while a frame the hook took
    over counts as sent, as a real wire's loss; lo's stack discards a frame for another
    host's MAC. The frames must take the socket's qdisc path for that (`eal_for(bypass=False)`):
    with PACKET_QDISC_BYPASS (the PMD's default) the hook's every verdict but accept
    reads as a drop. Where the sender's NIC is DPDK's and no switch is ours, there is no
    place to drop them: LabError says so."""

    def __init__(self, provider, sender, network: str, pct: float):
        self.pct = pct
        self.table = lab_nft_table("pktgen", provider.lab.name)
        # only the generator's frames (to PEER_MAC): not the hosts' own ARP and IPv6 chatter
        rule = ["ether", "daddr", PEER_MAC_TEXT,
                "numgen", "random", "mod", "1000000", "<", str(round(pct / 100 * 1_000_000)), "counter"]
        port = provider.switch_port(sender.name, network)
        if port is not None:
            self.ns, self.host = port[0], None
            self.family, self.hook = "bridge", "forward"
            self.rule = ["iifname", port[1], *rule, "drop"]
            self.where = f"the {network} LAN's switch, on {sender.name}'s port {port[1]}"
        elif not dpdk_owns(provider, sender.name, network):
            ifname = sender.nic(network).ifname
            self.ns, self.host = None, sender
            self.family, self.hook = "netdev", f'egress device "{ifname}"'
            self.rule = [*rule, "fwd", "to", "lo"]
            self.where = f"{sender.name}'s {ifname}, its nftables egress hook"
        else:
            raise LabError(f"no place to drop {sender.name}'s frames on {network}: its NIC is DPDK's (no kernel "
                           f"hook sees them) and the {provider.name} provider's links have no switch of the lab's")
        self.needs_qdisc_path = self.host is not None

    def nft(self, *args: str, script: str | None = None, check: bool = True) -> str:
        """nft with `args` where the rule lives (`script` on its stdin); its output."""
        if self.host is not None:
            res = self.host.run(["nft", *args], timeout=20, check=False, input=script)
            rc, out, err = res.rc, res.stdout, res.stderr
        else:
            import subprocess
            where = ["ip", "netns", "exec", self.ns] if self.ns else []
            proc = subprocess.run([*where, "nft", *args], input=script, capture_output=True, text=True, timeout=20)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        if rc != 0 and check:
            raise LabError(f"nft on {self.host.name if self.host else self.ns or 'this machine'} "
                           f"(loss on {self.where}): {err.strip()}")
        return out

    def script(self) -> str:
        """The table, its chain and its rule as one nft transaction: it is made whole or not at
        all (a refused line leaves the ruleset as it was). A table a killed run left behind
        goes first (`add` keeps an existing one, `delete` then takes it and what it held)."""
        t = f"{self.family} {self.table}"
        return (f"add table {t}\ndelete table {t}\nadd table {t}\n"
                f"add chain {t} lossy {{ type filter hook {self.hook} priority 0; }}\n"
                f"add rule {t} lossy {' '.join(self.rule)}\n")

    def __enter__(self):
        try:
            with deferred_interrupts():       # nft is not cut off between its commit and the undo below
                self.nft("-f", "-", script=self.script())
        except KeyboardInterrupt:             # held back while nft made the table: it goes again
            self.nft("delete", "table", self.family, self.table, check=False)
            raise
        return self

    def dropped(self) -> int:
        out = json.loads(self.nft("-j", "list", "table", self.family, self.table))
        for item in out.get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        return 0

    def __exit__(self, *exc):
        with deferred_interrupts():
            self.nft("delete", "table", self.family, self.table)


def start_agent(host, args: list, name: str):
    """An agent in the background on `host`, once it said it is ready."""
    proc = host.start(agent(host, *args), name=name)
    deadline = time.monotonic() + host.start_timeout + 60
    while '"ready"' not in proc.logs()[0]:
        if not proc.alive():
            out, err = proc.logs()
            parse_agent(host, out, err, name)
            raise LabError(f"[{host.name}] {name} exited: {err[-1500:]}")
        if time.monotonic() > deadline:
            proc.stop(5)
            raise LabError(f"[{host.name}] {name} not ready in {host.start_timeout + 60:g}s")
        time.sleep(0.1)
    return proc


def finish_agent(host, proc, timeout: float, name: str) -> dict:
    """The JSON result of a background agent, once it exited."""
    try:
        rc = proc.wait(timeout)
        out, err = proc.logs()
        got = parse_agent(host, out, err, name)
        if rc != 0:
            raise LabError(f"[{host.name}] {name} failed (exit {rc}): {err[-1500:]}")
        return got
    finally:
        with deferred_interrupts():
            if proc.alive():
                proc.stop(5)


def stop_agent(host, proc, timeout: float, name: str) -> dict:
    """SIGTERM to a background agent that answers it with its result; that result. Read from
    its output, not its exit status: the signal goes to the process group, and the shell
    that would have recorded the status (SSH hosts) dies of it."""
    try:
        proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            out, err = proc.logs()
            done = [line for line in out.splitlines() if line.startswith("{") and '"ready"' not in line]
            if done:
                return parse_agent(host, done[-1], err, name)
            if time.monotonic() > deadline:
                raise LabError(f"[{host.name}] {name} gave no result {timeout:g}s after SIGTERM: {err[-1500:]}")
            time.sleep(0.2)
    finally:
        with deferred_interrupts():
            if proc.alive():
                proc.stop(5)


def send_known_count(sender, eal_s: str, args, flows: int, *extra) -> dict:
    pps = parse_rate(args.rate)
    seconds_needed = args.count / pps[1] if pps[0] == "pps" else 10.0
    return run_agent(sender, ["send", "--eal", eal_s, "--size", "64", "--proto", args.proto,
                              "--flows", flows, "--count", args.count, "--rate", args.rate,
                              "--seconds", f"{seconds_needed * 1.5 + 5:.1f}", *extra],
                     seconds_needed * 2 + 120 + sender.start_timeout, "generator")


def accounting(provider, sender, receiver, net: str, eal_s: str, eal_r: str, args, step,
               label: str, loss: Loss | None = None, kind: str | None = None, queues: int = 1,
               flows: int | None = None) -> dict:
    """A known count at a known rate; what the receiver saw."""
    kind = kind or receiver_kind(provider, args, receiver.name, net)
    flows = flows or args.flows
    pps = parse_rate(args.rate)
    listen = (args.count / pps[1] if pps[0] == "pps" else 10.0) * 1.5 + 8
    rargs = ["recv", "--seconds", f"{listen:.1f}", "--expect", args.count, "--idle", 1.5]
    rargs += ["--afpacket", receiver.nic(net).ifname] if kind == "afpacket" else ["--eal", eal_r, "--queues", queues]
    step(f"{label}: {args.count} packets at {args.rate} to a {kind} receiver on {receiver.name}")
    proc = start_agent(receiver, rargs, f"pktgen-recv-{receiver.name}")
    try:
        sent = send_known_count(sender, eal_s, args, flows)
    except BaseException:
        with deferred_interrupts():
            proc.stop(5)
        raise
    got = finish_agent(receiver, proc, listen + 60, "receiver")
    unique = got["unique"]
    res = {"label": label, "receiver": kind, "sent": sent["sent"], "rate": args.rate, "achieved_pps": sent["pps"],
           "received": unique, "lost": sent["sent"] - unique, "duplicates": got["duplicates"],
           "reordered": got["reordered"],
           # frames the receiving ring had no room for: the socket's or the DPDK port's count
           "kernel_drops": got.get("kernel_drops") or got.get("stats", {}).get("imissed", 0),
           "loss_pct": 100.0 * (sent["sent"] - unique) / sent["sent"] if sent["sent"] else 0.0,
           "latency_ns": got["latency_ns"] if provider.shares_kernel else None,     # one clock for both
           "histogram": got["histogram"] if provider.shares_kernel else None,
           "beyond_sent": max(0, got["max_seq"] - sent["sent"]), "flows": flows,
           "per_queue": got.get("per_queue", []), "rss": got.get("rss"), "driver": got.get("driver"),
           "queue_xstats": got.get("queue_xstats", {})}
    if loss is not None:
        res["injected_pct"] = loss.pct
        res["dropped_by_rule"] = loss.dropped()
        res["dropped_where"] = loss.where
    return res


def round_trip(sender, receiver, eal_echo: str, eal_reflect: str, args, step) -> dict:
    """The known count through a reflector on the peer (testpmd macswap sends every frame
    back): what came back, and the round-trip time from the TSC that stamped each frame —
    one clock, also where the two hosts' TSCs are not one (VMs, machines)."""
    step(f"round trip: {args.count} packets at {args.rate} through testpmd macswap on {receiver.name}")
    proc = start_agent(receiver, ["reflect", "--eal", eal_reflect, "--seconds", 600],
                       f"pktgen-reflect-{receiver.name}")
    try:
        sent = send_known_count(sender, eal_echo, args, args.flows, "--echo")
    except BaseException:
        with deferred_interrupts():
            proc.stop(5)
        raise
    reflector = stop_agent(receiver, proc, 60, "reflector")
    back = sent["echo"]
    return {"label": "round trip", "sent": sent["sent"], "rate": args.rate, "reflector": reflector,
            "received": back["unique"], "lost": back["lost"], "loss_pct": back["loss_pct"],
            "duplicates": back["duplicates"], "reordered": back["reordered"],
            "beyond_sent": max(0, back["max_seq"] - sent["sent"]),
            "latency_ns": back["latency_ns"], "histogram": back["histogram"]}


def stack_over_dpdk(provider, sender, receiver, net: str, nbytes: int, step) -> dict:
    """The user-space stack on the sender's NIC through this binding (`--driver dpdk`),
    against the peer's Linux: ping, echo, and `nbytes` each way with their SHA-256."""
    from ..ustack.interop import Suite
    # DPDK also where the lab leaves the sender's NIC to the kernel: an af_packet vdev over it
    suite = Suite(provider, sender.name, receiver.name, net, bulk_bytes=nbytes, driver="dpdk")
    step(f"the user-space stack over {suite.driver} ({suite.ifname}) on {sender.name} against Linux on "
         f"{receiver.name}")
    suite.stack_ping()
    suite.tcp_cases()
    suite.bulk()
    return {"driver": suite.driver, "device": suite.ifname, "address": suite.addr, "peer": suite.peer_addr,
            "cases": suite.results, "bulk": suite.data.get("bulk", {}), "echo_rps": suite.data.get("echo_rps_1conn")}


def check_knobs(args) -> None:
    """The traffic knobs given, judged before anything runs."""
    try:
        sizes = parse_sizes(args.size) if args.size is not None else []
        if args.rate is not None:
            parse_rate(args.rate)
        for sz in sizes:                    # bad sizes, flows, protocol
            Traffic(proto=args.proto, sizes=sz, flows=args.flows)
    except TrafficError as exc:
        raise LabError(str(exc)) from None
    for knob in ("rounds", "seconds", "count"):
        value = getattr(args, knob)
        if value is not None and value <= 0:
            raise LabError(f"--{knob} must be positive (got {value:g})")
    if args.stack_bytes is not None and args.stack_bytes < 0:
        raise LabError(f"--stack-bytes must be 0 (skip) or more (got {args.stack_bytes})")
    if args.seconds is not None and args.seconds < 2:
        raise LabError(f"--seconds must be at least 2 (got {args.seconds:g}): each sender's rate is the mean of "
                       "its per-second rates after its first second")


def run(provider, args, step) -> dict:
    check_knobs(args)
    lab = provider.lab
    names = args.hosts.split(",")
    net = args.network or (lab.hosts[names[0]].dpdk_network if names and names[0] in lab.hosts else None)
    sender, receiver, net = host_pair(provider, args.hosts, "sender,receiver", net)
    hosts = {sender.name: sender, receiver.name: receiver}
    grid_note = settle_grid(args, sender)
    if grid_note:
        step(grid_note)
    sizes = parse_sizes(args.size)
    cpus = os.cpu_count() or 1
    # netns hosts share this machine's CPUs: the sender on the first, the receiver on the last
    lcore_r = cpus - 1 if provider.shares_kernel else 0
    # both hosts at once: where the binding is built there, an emulated guest takes a minute or more
    with ThreadPoolExecutor(max_workers=2) as pool:
        built = {h.name: pool.submit(ensure_binding, provider, h) for h in (sender, receiver)}
        binding = {name: job.result() for name, job in built.items()}
    eal_s, drives_s = eal_for(provider, sender, net, 0)
    eal_r, drives_r = eal_for(provider, receiver, net, lcore_r)
    out = report.results_dir("pktgen", getattr(args, "results", None))
    env = report.fingerprint(provider, [], hosts)
    env["load_before"] = os.getloadavg()
    env["grid_note"] = grid_note
    t0 = time.monotonic()
    rows = []
    if not args.no_null:
        rows += throughput(sender, null_eal(0), sizes, args, step, "net_null")
    rows += throughput(sender, eal_s, sizes, args, step, drives_s)
    acc = [accounting(provider, sender, receiver, net, eal_s, eal_r, args, step, "unimpaired")]
    imp = lab.networks[net].impair
    loss_pct = args.loss if args.loss is not None else (imp.loss_pct if imp and imp.loss_pct else 2.0)
    not_run: list[str] = []         # parts asked for that could not run: the command fails, naming them
    if loss_pct:
        with ExitStack() as held:
            try:
                loss = held.enter_context(Loss(provider, sender, net, loss_pct))
            except LabError as exc:         # no place for the rule, or nft refused it
                not_run.append(f"the receiver accounting with {loss_pct:g} % loss injected: {exc}")
                step(f"not run: {not_run[-1]}")
            else:
                eal_lossy = eal_for(provider, sender, net, 0, bypass=False)[0] if loss.needs_qdisc_path else eal_s
                acc.append(accounting(provider, sender, receiver, net, eal_lossy, eal_r, args, step,
                                      f"{loss_pct:g} % loss injected", loss))
    # both ends busy-poll rings the kernel fills: on an af_packet vdev, rings that hold what
    # arrives while a busy machine's scheduler has a poller off its CPU (82 ms at 100 kpps)
    eal_echo, _ = eal_for(provider, sender, net, 0, ring=8192)
    eal_reflect, _ = eal_for(provider, receiver, net, lcore_r, ring=8192)
    rtt = round_trip(sender, receiver, eal_echo, eal_reflect, args, step)
    multiqueue = None
    if args.queues > 1:
        eal_mq, _ = eal_for(provider, receiver, net, lcore_r, args.queues)
        try:
            multiqueue = accounting(provider, sender, receiver, net, eal_s, eal_mq, args, step,
                                    f"{args.queues} RX queues, {args.mq_flows} flows", kind="dpdk",
                                    queues=args.queues, flows=args.mq_flows)
        except LabError as exc:        # a NIC with one queue pair
            multiqueue = {"error": f"{exc} (a VM's DPDK NIC gets more with `vm: {{dpdk_queues: N}}` in the lab file)"}
            not_run.append(f"the multi-queue run: {multiqueue['error']}")
    stack: dict | None = None
    if dpdk_owns(provider, receiver.name, net):
        why = (f"the stack over DPDK talks to the peer's Linux, and {receiver.name}'s NIC on {net} is DPDK's "
               f"({drives_r}); a lab file like labs/pktgen/stack-vs-linux.yml leaves it to Linux")
        if args.stack_bytes:        # asked for: a failure; by default a part this lab has not
            not_run.append(f"the user-space stack over DPDK: {why}")
        else:
            stack = {"not_in_lab": why}
    elif args.stack_bytes != 0:
        stack = stack_over_dpdk(provider, sender, receiver, net, args.stack_bytes or STACK_BYTES, step)
        failed = [c["name"] for c in stack["cases"] if not c["ok"]]
        if failed:
            not_run.append(f"the user-space stack over DPDK: {len(failed)} case(s) failed: {', '.join(failed)}")
    env["load_after"] = os.getloadavg()
    env["seconds"] = round(time.monotonic() - t0, 1)
    env["eal"] = {"sender": eal_s, "receiver": eal_r, "net_null": null_eal(0), "round trip, sender": eal_echo,
                  "round trip, reflector": eal_reflect}
    env["binding"] = binding
    png = plot(rows, out)
    data = {"throughput": rows, "accounting": acc, "round_trip": rtt, "multiqueue": multiqueue, "stack": stack,
            "environment": env,
            "traffic": {"proto": args.proto, "flows": args.flows, "sizes": args.size, "seconds": args.seconds,
                        "rounds": args.rounds, "count": args.count, "rate": args.rate},
            "goal": GOAL, "not_run": not_run}
    data["pps"] = {d: {r["size"]: r["pps"] for r in rows if r["device"] == d}
                   for d in dict.fromkeys(r["device"] for r in rows)}
    md = (render(rows, acc, rtt, args, env, png, provider, out) + render_mq(multiqueue) + render_stack(stack)
          + render_not_run(not_run) + render_tail(env))
    path = report.write_report(out, md, data)
    fail_if_incomplete(not_run, path)
    return {"report": path, "dir": out, "summary": summary(rows, acc, rtt), "throughput": rows, "accounting": acc,
            "round_trip": rtt, "multiqueue": multiqueue, "stack": stack}


def fail_if_incomplete(not_run: list[str], report_path) -> None:
    """A run that could not do all it was asked fails (the CLI exits non-zero), naming each
    part and why, once the report of what did run is written."""
    if not_run:
        raise LabError(f"{len(not_run)} part(s) asked for did not run or failed (the report of the rest: "
                       f"{report_path}):\n  - " + "\n  - ".join(not_run))


# -- the report --------------------------------------------------------------------------------

def summary(rows: list[dict], acc: list[dict], rtt: dict) -> str:
    lines = []
    for r in rows:
        if r["size"] == "64":
            lines.append(f"{r['device']}: 64 B hpnlab {r['pps']['hpnlab'] / 1e6:.2f} Mpps, "
                         f"testpmd {r['pps']['testpmd'] / 1e6:.2f} Mpps, ratio {r['ratio']:.2f}")
    for a in acc:
        lines.append(f"{a['label']}: sent {a['sent']}, received {a['received']}, lost {a['lost']} "
                     f"({a['loss_pct']:.2f} %)")
    lat = rtt["latency_ns"]
    lines.append(f"round trip: sent {rtt['sent']}, back {rtt['received']}, lost {rtt['lost']}; RTT p50 "
                 f"{lat.get('p50', 0) / 1e3:.1f} µs, p99 {lat.get('p99', 0) / 1e3:.1f} µs")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    devices = list(dict.fromkeys(r["device"] for r in rows))
    fig, axes = plt.subplots(1, len(devices), figsize=(5.5 * len(devices), 3.8), squeeze=False)
    for ax, dev in zip(axes[0], devices):
        mine = [r for r in rows if r["device"] == dev]
        x = range(len(mine))
        ax.bar([i - 0.2 for i in x], [r["pps"]["hpnlab"] / 1e6 for r in mine], 0.4, label="hpnlab pktgen")
        ax.bar([i + 0.2 for i in x], [(r["pps"]["testpmd"] or 0) / 1e6 for r in mine], 0.4,
               label="testpmd txonly")
        ax.set_xticks(list(x), [f"{r['size']} B" if r["size"] != "imix" else "imix" for r in mine])
        ax.set_ylabel("Mpps")
        ax.set_title(dev)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pps.png", dpi=110)
    plt.close(fig)
    return "pps.png"


def render_mq(mq: dict | None) -> str:
    if mq is None:
        return ""
    md = ["", "## Multi-queue (多队列网卡)", ""]
    if "error" in mq:
        return "\n".join(md + [f"Not run here: {mq['error']}", ""])
    total = sum(mq["per_queue"]) or 1
    xstats = mq.get("queue_xstats", {})
    md += [f"{mq['sent']} packets over {mq['flows']} flows (source ports) to a DPDK receiver polling "
           f"{len(mq['per_queue'])} RX queues"
           + (" with RSS" if mq.get("rss") else f" without RSS: {SPREAD.get(mq.get('driver'), SPREAD[None])}")
           + ".", "",
           report.md_table(["queue", "frames polled", "share %", "the port's own count (xstats rx_q<N>_...)"],
                           [[q, n, f"{100 * n / total:.1f}",
                             xstats.get(f"rx_q{q}_good_packets", xstats.get(f"rx_q{q}_packets", "-"))]
                            for q, n in enumerate(mq["per_queue"])]), "",
           f"received + lost = {mq['received']} + {mq['lost']} = {mq['received'] + mq['lost']} of "
           f"{mq['sent']} sent (the port's own miss counter, imissed: {mq['kernel_drops']}); reordered "
           f"{mq['reordered']} (one sequence, several queues: frames of different flows overtake each other "
           "between queues).", ""]
    used = sum(1 for n in mq["per_queue"] if n)
    md.append(f"Reading: {used} of {len(mq['per_queue'])} queues carried traffic"
              + ("; each flow stays in one queue, so the split follows how the hash spread the flows."
                 if used > 1 else "; the hash put every flow in one queue."))
    return "\n".join(md) + "\n"


# Who puts a flow in a queue when the port has no RSS, by the receiving port's driver.
SPREAD = {
    "net_af_packet": "the kernel's PACKET_FANOUT flow hash picks each frame's queue",
    "net_virtio": "QEMU's virtio-net here has no RSS of its own; the host's multi-queue tap behind it puts "
                  "each flow in one of its queues by the flow's hash, and each tap queue feeds one RX queue",
    None: "the device's own spreading",
}


def _m(v) -> str:
    return "-" if v is None else f"{v / 1e6:.3f}"


def _r(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def plot_latency(acc: list[dict], out: Path) -> str:
    """The receiver's latency histograms as CDFs (log time axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for a in acc:
        points = sorted((int(k), n) for k, n in a["histogram"].items())
        total, run = sum(n for _, n in points), 0
        xs, ys = [], []
        for low, n in points:
            run += n
            xs.append(max(low, 1) / 1e3)
            ys.append(run / total)
        ax.step(xs, ys, where="post", label=a["label"])
    ax.set_xscale("log")
    ax.set_xlabel("one-way latency, µs (bucket lower bounds)")
    ax.set_ylabel("fraction of packets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    return "latency.png"


def ring_reading(row: dict) -> str | None:
    """What the untaken frames say, where both senders met a full TX ring after most bursts."""
    untaken = row["unsent_per_sent"]
    if len(untaken) < 2 or min(untaken.values()) < 1:
        return None
    seconds = row.get("second_range", {})
    swing = ("; single seconds ran at " + " and ".join(
        f"{seconds[t][0] / 1e3:.0f}–{seconds[t][1] / 1e3:.0f} kpps for {t}" for t in ("hpnlab", "testpmd"))
        if len(seconds) == 2 else "")
    return (f"- {row['device']}: both senders found the TX ring full after most bursts (per frame sent, hpnlab "
            f"made {untaken['hpnlab']:.1f} that the ring did not take, testpmd {untaken['testpmd']:.1f}){swing}: "
            "the device behind the ring set both rates, not the senders — on an emulated NIC, the host's device "
            "model and the CPU it gets (labs/pktgen/README.md, labs/pktgen/sender_cpu.py).")


def render(rows, acc, rtt, args, env, png, provider, out: Path) -> str:
    md = ["# Lab pktgen: a DPDK packet generator against dpdk-testpmd txonly", "",
          f"Sender {args.hosts.split(',')[0]}, receiver {args.hosts.split(',')[1]}; {args.proto}, "
          f"{args.flows} flow(s); each throughput run {args.seconds:g} s, {args.rounds} round(s) of one run "
          "of each tool back to back, the order swapped every round; the Mpps columns are each tool's median "
          "run, the ratio the median of the rounds' own ratios with their range. Both run on the same port with"
          " the same EAL arguments, one after the other, set up alike: one TX and one RX queue of 1024 "
          "descriptors asked (the driver clamps them to its ring), 8191 mbufs, bursts of 32, one polling lcore,"
          " no offloads, and a full ring met the same way (the burst's untaken frames freed, the next burst "
          "made at once). Each rate is measured the same way: the port's TX count per second on the sender's "
          "own clock (testpmd's Tx-pps lines; the generator's count after each 0.1 s slice), the mean of the "
          "seconds after the first (start-up).", ""]
    if env.get("grid_note"):
        md += [f"The grid: {env['grid_note']}.", ""]
    md += ["## Packets per second", "",
          report.md_table(["device", "size", "hpnlab Mpps", "testpmd Mpps", "ratio [min–max]", "hpnlab Gbit/s",
                           "hpnlab Mpps per CPU-s", "testpmd Mpps per CPU-s", "ratio per CPU-s",
                           "untaken per sent, hpnlab / testpmd"],
                          [[r["device"], r["size"], _m(r["pps"]["hpnlab"]), _m(r["pps"]["testpmd"]),
                            _r(r["ratio"]) + (f" [{r['paired']['min']:.2f}–{r['paired']['max']:.2f}]"
                                              if r["paired"] and r["paired"]["rounds"] > 1 else ""),
                            f"{r['gbps']['hpnlab']:.3f}", _m(r["pps_per_cpu"]["hpnlab"]),
                            _m(r["pps_per_cpu"]["testpmd"]), _r(r["ratio_per_cpu"]),
                            " / ".join(f"{r['unsent_per_sent'][t]:.2f}" if t in r["unsent_per_sent"] else "-"
                                       for t in ("hpnlab", "testpmd"))] for r in rows]),
          f"![pps per size]({png})", ""]
    md.append("Reading:")
    for r in rows:
        if r["size"] != "64" or r["ratio"] is None:
            continue
        md.append(verdict(r))
        full = ring_reading(r)
        if full:
            md.append(full)
    load = env.get("load_before"), env.get("load_after")
    cpus = env["machine"]["cpus"]
    if load[0] and max(load[0][0], load[1][0]) > cpus / 2:
        md.append(f"- the machine's load average was {load[0][0]:.1f} before and {load[1][0]:.1f} after the "
                  f"runs on {cpus} CPUs: the senders got a share of a CPU, which varies from run to run; "
                  "packets per CPU-second is the steadier comparison of what each costs.")
    md += ["", "## Receiver accounting", "",
           report.md_table(["run", "receiver", "sent", "received", "lost", "loss %", "injected %",
                            "dropped by the loss rule", "duplicates", "reordered", "kernel drops"],
                           [[a["label"], a["receiver"], a["sent"], a["received"], a["lost"], f"{a['loss_pct']:.3f}",
                             a.get("injected_pct", "-"), a.get("dropped_by_rule", "-"), a["duplicates"],
                             a["reordered"], a["kernel_drops"]] for a in acc]), ""]
    for a in acc:
        exact = a["received"] + a["lost"] == a["sent"] and a["beyond_sent"] == 0
        line = (f"- {a['label']}: received + lost = {a['received']} + {a['lost']} = {a['received'] + a['lost']} "
                f"{'=' if exact else '≠'} sent {a['sent']}")
        if "dropped_by_rule" in a:
            line += (f"; the loss rule ({a['dropped_where']}) counted {a['dropped_by_rule']} dropped, the "
                     f"receiver counts "
                     f"{a['lost']} lost ({a['loss_pct']:.2f} % measured, {a['injected_pct']:g} % injected, "
                     f"{abs(a['loss_pct'] - a['injected_pct']):.2f} pp apart)")
        md.append(line + ".")
    sender, receiver = args.hosts.split(",")
    exact = rtt["received"] + rtt["lost"] == rtt["sent"] and rtt["beyond_sent"] == 0
    refl = rtt["reflector"]
    md += ["", "## Round trip", "",
           f"{rtt['sent']} packets at {rtt['rate']} from {sender} to `dpdk-testpmd --forward-mode=macswap` on "
           f"{receiver}, which sends what it receives back (it received {refl['rx']} and sent {refl['tx']}); "
           f"{sender}'s generator counted what came back while sending: {rtt['received']} back + {rtt['lost']} "
           f"lost = {rtt['received'] + rtt['lost']} {'=' if exact else '≠'} sent {rtt['sent']} "
           f"({rtt['loss_pct']:.3f} %"
           + (f"; about {max(0, rtt['sent'] - refl['rx'])} lost on the way there, "
              f"{max(0, refl['tx'] - rtt['received'])} on the way back" if rtt["lost"] else "")
           + f"; the reflector's counts also hold any other frame on the LAN), {rtt['duplicates']} duplicates, "
           f"{rtt['reordered']} reordered. The round-trip time is the TSC when a frame came back minus the TSC "
           "stamped into it when it left: one clock, so it holds also where the hosts' clocks are not one.", ""]
    lat = [a for a in [*acc, rtt] if a.get("latency_ns")]
    md += ["### Latency from the TSC stamps", "",
           report.md_table(["run", "what", "min µs", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"],
                           [[a["label"], "round trip" if a is rtt else "one way (one machine's TSC)",
                             *[f"{a['latency_ns'].get(k, 0) / 1e3:.1f}"
                               for k in ("min", "p50", "p90", "p99", "p99.9", "max")]]
                            for a in lat]),
           f"![latency]({plot_latency(lat, out)})", ""]
    if not any(a.get("latency_ns") for a in acc):
        md.append("One-way latency is not reported: sender and receiver are different machines, whose TSCs "
                  "are not one clock (the round trip above is timed on one).")
    p50 = rtt["latency_ns"].get("p50", 0)
    if p50:
        md.append(f"Reading: half the frames were back within {p50 / 1e3:.1f} µs and 99 % within "
                  f"{rtt['latency_ns'].get('p99', 0) / 1e3:.1f} µs"
                  + (" — on emulated CPUs, where a guest's poll loop shares a host core with everything "
                     "else, the tail is the scheduler's." if env.get("grid_note") else "."))
    return "\n".join(md) + "\n"


def render_stack(stack: dict | None) -> str:
    if stack is None:
        return ""
    md = ["", "## The user-space stack over this binding, against Linux", ""]
    if "not_in_lab" in stack:
        return "\n".join(md + [f"Not part of this lab: {stack['not_in_lab']}.", ""])
    ok = sum(c["ok"] for c in stack["cases"])
    md += [f"hpnlab.ustack with `--driver dpdk` on `{stack['device']}` ({stack['address']}), the peer's kernel "
           f"at {stack['peer']}: {ok} of {len(stack['cases'])} cases passed.", "",
           report.md_table(["case", "result", "detail", "s"],
                           [[c["name"], "pass" if c["ok"] else "FAIL", c["detail"], c["secs"]]
                            for c in stack["cases"]]), ""]
    return "\n".join(md)


def render_not_run(not_run: list[str]) -> str:
    if not not_run:
        return ""
    return "\n".join(["", "## Not run or failed", "",
                      f"**{len(not_run)} part(s) asked for did not run or failed, so the command exited non-zero:**",
                      "", *[f"- {what}" for what in not_run], ""])


def render_tail(env: dict) -> str:
    md = ["", "## EAL arguments", "", f"- sender: `{env['eal']['sender']}`",
          f"- receiver: `{env['eal']['receiver']}`", f"- net_null: `{env['eal']['net_null']}`",
          f"- round trip: sender `{env['eal']['round trip, sender']}`, reflector "
          f"`{env['eal']['round trip, reflector']}`", "",
          f"The DPDK binding: {', '.join(f'{h} {how}' for h, how in env['binding'].items())}. "
          f"All runs took {env['seconds']:g} s.", "",
          report.environment_md(env), report.rerun_md(make_target="lab-pktgen")]
    return "\n".join(md)
