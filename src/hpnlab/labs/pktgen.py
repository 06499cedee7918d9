"""Lab pktgen: the course's DPDK packet generator (课后作业: 基于 dpdk 的发包工具).

On the sender host, for each packet size, hpnlab's generator and
`dpdk-testpmd --forward-mode=txonly` send as fast as they can, one after the
other, on the same port with the same EAL arguments: first on `net_null` (no
wire: the generator's own CPU cost is the limit), then on the lab's DPDK NIC
(an af_packet vdev on netns hosts, the uio-bound eth2 on VMs). Then a known
count goes at a modest rate to a receiver on the peer host, which counts what
arrived from the sequence numbers (received + lost = sent, reordering,
duplicates) and the latency from the TSC stamps; and once more with loss
injected on the link, to show the receiver measures it.

    hpnlab lab pktgen --size 64,512,1500,imix --seconds 3
    hpnlab pktgen ...                 (the same)
    make lab-pktgen [PROVIDER=netns]
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import time
from pathlib import Path

from .. import report
from ..pktgen.templates import PROTOS, Traffic, TrafficError, parse_rate, parse_sizes, size_label
from ._kit import LabError, agent_python, deferred_interrupts, host_pair

HELP = "DPDK packet generator vs dpdk-testpmd txonly (pps per size), receiver loss/reorder/latency"
NFT_TABLE = "hpnlab_pktgen"
GOAL = 0.9


def add_arguments(p) -> None:
    p.add_argument("--hosts", default="h1,h2", help="sender,receiver (default h1,h2)")
    p.add_argument("--network", help="the network to send on (default: the sender's DPDK network)")
    p.add_argument("--size", default="64,512,1500,imix",
                   help="frame sizes in bytes (no FCS), comma separated, or imix (default 64,512,1500,imix)")
    p.add_argument("--proto", choices=PROTOS, default="udp")
    p.add_argument("--flows", type=int, default=1, help="flows (source ports) the packets rotate over")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    p.add_argument("--rounds", type=int, default=3,
                   help="throughput rounds per size: hpnlab and testpmd back to back, order alternating")
    p.add_argument("--count", type=int, default=200_000, help="packets of the accounting runs")
    p.add_argument("--rate", default="100kpps", help="rate of the accounting runs (pps, bit/s or line)")
    p.add_argument("--receiver", choices=("auto", "afpacket", "dpdk"), default="auto",
                   help="the peer's receiver (auto: AF_PACKET on netns hosts, DPDK where the NIC is bound)")
    p.add_argument("--loss", type=float, help="loss %% to inject in the impaired run (default: the "
                   "network's impair.loss, else 2; 0 skips it)")
    p.add_argument("--no-null", action="store_true", help="skip the net_null comparison")
    p.add_argument("--queues", type=int, default=2,
                   help="multi-queue run: a DPDK receiver with this many RX queues (<2 skips it)")
    p.add_argument("--mq-flows", type=int, default=8, help="flows of the multi-queue run")


# -- where and how DPDK runs on a host ---------------------------------------------------------

def eal_for(provider, host, ifname: str, lcore: int, queues: int = 1) -> tuple[str, str]:
    """(EAL arguments for the host's DPDK NIC, what they drive). `queues`: queue pairs
    the af_packet vdev opens (a PACKET_FANOUT group: the kernel's flow hash picks the queue)."""
    base = ["--no-telemetry", "--log-level=warning", "-l", str(lcore)]
    if not provider.dpdk_takes_nic:       # an af_packet vdev over the kernel's NIC
        qpairs = f",qpairs={queues}" if queues > 1 else ""
        return shlex.join([*base, "--no-huge", "--no-shconf", "-m", "256", "--no-pci",
                           f"--vdev=net_af_packet0,iface={ifname}{qpairs}"]), f"net_af_packet on {ifname}"
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
    """hpnlab and testpmd, alternating, `rounds` times per size; the best run of each."""
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
                runs[tool].append(res)
        h = max(runs["hpnlab"], key=lambda x: x["pps"])
        t = max(runs["testpmd"], key=lambda x: x["pps"]) if runs["testpmd"] else None
        mean = sum(sz) / len(sz)
        rows.append({
            "device": device, "size": label, "mean_size": mean,
            "pps": {"hpnlab": h["pps"], "testpmd": t["pps"] if t else None},
            "gbps": {"hpnlab": h["gbps"], "testpmd": t["pps"] * (mean + 24) * 8 / 1e9 if t else None},
            "pps_per_cpu": {"hpnlab": h["pps_per_cpu"], "testpmd": t["pps_per_cpu"] if t else None},
            # the median over rounds of each round's ratio: the two runs of a round saw about
            # the same load from the rest of the machine
            "ratio": paired_ratio(runs, "pps"),
            "ratio_per_cpu": paired_ratio(runs, "pps_per_cpu"),
            "runs": runs,
        })
    return rows


def paired_ratio(runs: dict[str, list[dict]], key: str) -> float | None:
    ratios = sorted(h[key] / t[key] for h, t in zip(runs["hpnlab"], runs["testpmd"]) if t[key])
    return statistics.median(ratios) if ratios else None


def receiver_kind(provider, args) -> str:
    if args.receiver != "auto":
        return args.receiver
    return "dpdk" if provider.dpdk_takes_nic else "afpacket"


class Loss:
    """Drop `pct` % of the sender's frames inside the lab's switch (the netns provider's
    bridge): after the sender's NIC, so the sender cannot notice, and before the receiver's,
    whose AF_PACKET tap would see frames a filter on its own NIC dropped. The lab's own
    impairment (nftables postrouting, netem) does not apply here: it works on IP packets
    of the kernel's stack, and these frames bypass it."""

    def __init__(self, provider, sender: str, network: str, pct: float):
        self.provider, self.pct = provider, pct
        self.ns = provider.switch_netns(network)
        self.port = f"{sender}-{network}"
        self.threshold = round(pct / 100 * 1_000_000)

    def nft(self, *args: str) -> str:
        import subprocess
        proc = subprocess.run(["ip", "netns", "exec", self.ns, "nft", *args], capture_output=True, text=True,
                              timeout=20)
        if proc.returncode != 0:
            raise LabError(f"nft in {self.ns}: {proc.stderr.strip()}")
        return proc.stdout

    def __enter__(self):
        self.nft("add", "table", "bridge", NFT_TABLE)
        try:
            self.nft("add", "chain", "bridge", NFT_TABLE, "lossy", "{ type filter hook forward priority 0; }")
            self.nft("add", "rule", "bridge", NFT_TABLE, "lossy", "iifname", self.port,
                     "numgen", "random", "mod", "1000000", "<", str(self.threshold), "counter", "drop")
        except BaseException:
            self.__exit__()
            raise
        return self

    def dropped(self) -> int:
        out = json.loads(self.nft("-j", "list", "table", "bridge", NFT_TABLE))
        for item in out.get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        return 0

    def __exit__(self, *exc):
        with deferred_interrupts():
            self.nft("delete", "table", "bridge", NFT_TABLE)


def accounting(provider, sender, receiver, eal_s: str, eal_r: str, ifname_r: str, args, step,
               label: str, loss: Loss | None = None, kind: str | None = None, queues: int = 1,
               flows: int | None = None) -> dict:
    """A known count at a known rate; what the receiver saw."""
    kind = kind or receiver_kind(provider, args)
    flows = flows or args.flows
    pps = parse_rate(args.rate)
    seconds_needed = args.count / pps[1] if pps[0] == "pps" else 10.0
    listen = seconds_needed * 1.5 + 8
    rargs = ["recv", "--seconds", f"{listen:.1f}", "--expect", args.count, "--idle", 1.5]
    rargs += ["--afpacket", ifname_r] if kind == "afpacket" else ["--eal", eal_r, "--queues", queues]
    step(f"{label}: {args.count} packets at {args.rate} to a {kind} receiver on {receiver.name}")
    proc = receiver.start(agent(receiver, *rargs), name=f"pktgen-recv-{receiver.name}")
    try:
        deadline = time.monotonic() + receiver.start_timeout
        while '"ready"' not in proc.logs()[0]:
            if not proc.alive():
                out, err = proc.logs()
                parse_agent(receiver, out, err, "receiver")
                raise LabError(f"[{receiver.name}] receiver exited: {err[-1500:]}")
            if time.monotonic() > deadline:
                raise LabError(f"[{receiver.name}] receiver not ready in {receiver.start_timeout:g}s")
            time.sleep(0.1)
        sent = run_agent(sender, ["send", "--eal", eal_s, "--size", "64", "--proto", args.proto,
                                  "--flows", flows, "--count", args.count, "--rate", args.rate,
                                  "--seconds", f"{seconds_needed * 1.5 + 5:.1f}"],
                         seconds_needed * 2 + 120 + sender.start_timeout, "generator")
        rc = proc.wait(listen + 60)
        out, err = proc.logs()
        got = parse_agent(receiver, out, err, "receiver")
        if rc != 0:
            raise LabError(f"[{receiver.name}] receiver failed (exit {rc}): {err[-1500:]}")
    finally:
        with deferred_interrupts():
            if proc.alive():
                proc.stop(5)
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
           "per_queue": got.get("per_queue", []), "rss": got.get("rss")}
    if loss is not None:
        res["injected_pct"] = loss.pct
        res["dropped_by_switch"] = loss.dropped()
    return res


def run(provider, args, step) -> dict:
    try:
        sizes = parse_sizes(args.size)
        parse_rate(args.rate)
        for sz in sizes:                    # bad sizes, flows, protocol: said before anything runs
            Traffic(proto=args.proto, sizes=sz, flows=args.flows)
    except TrafficError as exc:
        raise LabError(str(exc)) from None
    if args.rounds < 1 or args.seconds <= 0 or args.count < 1:
        raise LabError("--rounds, --seconds and --count must be positive")
    lab = provider.lab
    names = args.hosts.split(",")
    net = args.network or (lab.hosts[names[0]].dpdk_network if names and names[0] in lab.hosts else None)
    sender, receiver, net = host_pair(provider, args.hosts, "sender,receiver", net)
    hosts = {sender.name: sender, receiver.name: receiver}
    ifname_s, ifname_r = sender.nic(net).ifname, receiver.nic(net).ifname
    cpus = os.cpu_count() or 1
    # netns hosts share this machine's CPUs: the sender on the first, the receiver on the last
    lcore_r = cpus - 1 if provider.shares_kernel else 0
    binding = {h.name: ensure_binding(provider, h) for h in (sender, receiver)}
    eal_s, drives_s = eal_for(provider, sender, ifname_s, 0)
    eal_r, _ = eal_for(provider, receiver, ifname_r, lcore_r)
    out = report.results_dir("pktgen", getattr(args, "results", None))
    env = report.fingerprint(provider, [], hosts)
    env["load_before"] = os.getloadavg()
    rows = []
    if not args.no_null:
        rows += throughput(sender, null_eal(0), sizes, args, step, "net_null")
    rows += throughput(sender, eal_s, sizes, args, step, drives_s)
    acc = [accounting(provider, sender, receiver, eal_s, eal_r, ifname_r, args, step, "unimpaired")]
    imp = lab.networks[net].impair
    loss_pct = args.loss if args.loss is not None else (imp.loss_pct if imp and imp.loss_pct else 2.0)
    if loss_pct and provider.switch_netns(net):
        with Loss(provider, sender.name, net, loss_pct) as loss:
            acc.append(accounting(provider, sender, receiver, eal_s, eal_r, ifname_r, args, step,
                                  f"{loss_pct:g} % loss injected", loss))
    multiqueue = None
    if args.queues > 1:
        eal_mq, _ = eal_for(provider, receiver, ifname_r, lcore_r, args.queues)
        try:
            multiqueue = accounting(provider, sender, receiver, eal_s, eal_mq, ifname_r, args, step,
                                    f"{args.queues} RX queues, {args.mq_flows} flows", kind="dpdk",
                                    queues=args.queues, flows=args.mq_flows)
        except LabError as exc:        # a NIC with one queue (QEMU's virtio-net by default)
            multiqueue = {"error": str(exc)}
    env["load_after"] = os.getloadavg()
    env["eal"] = {"sender": eal_s, "receiver": eal_r, "net_null": null_eal(0)}
    env["binding"] = binding
    png = plot(rows, out)
    data = {"throughput": rows, "accounting": acc, "multiqueue": multiqueue, "environment": env,
            "traffic": {"proto": args.proto, "flows": args.flows, "sizes": args.size, "seconds": args.seconds,
                        "rounds": args.rounds},
            "goal": GOAL}
    data["pps"] = {d: {r["size"]: r["pps"] for r in rows if r["device"] == d}
                   for d in dict.fromkeys(r["device"] for r in rows)}
    md = render(rows, acc, args, env, png, provider, out) + render_mq(multiqueue)
    path = report.write_report(out, md, data)
    return {"report": path, "dir": out, "summary": summary(rows, acc), "throughput": rows, "accounting": acc,
            "multiqueue": multiqueue}


# -- the report --------------------------------------------------------------------------------

def summary(rows: list[dict], acc: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["size"] == "64":
            lines.append(f"{r['device']}: 64 B hpnlab {r['pps']['hpnlab'] / 1e6:.2f} Mpps, "
                         f"testpmd {r['pps']['testpmd'] / 1e6:.2f} Mpps, ratio {r['ratio']:.2f}")
    for a in acc:
        lines.append(f"{a['label']}: sent {a['sent']}, received {a['received']}, lost {a['lost']} "
                     f"({a['loss_pct']:.2f} %)")
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
    md += [f"{mq['sent']} packets over {mq['flows']} flows (source ports) to a DPDK receiver polling "
           f"{len(mq['per_queue'])} RX queues"
           + (" with RSS" if mq.get("rss") else " (the device's own spreading: for net_af_packet the kernel's "
              "PACKET_FANOUT flow hash)") + ".", "",
           report.md_table(["queue", "frames", "share %"],
                           [[q, n, f"{100 * n / total:.1f}"] for q, n in enumerate(mq["per_queue"])]), "",
           f"received + lost = {mq['received']} + {mq['lost']} = {mq['received'] + mq['lost']} of "
           f"{mq['sent']} sent (the port's own miss counter, imissed: {mq['kernel_drops']}); reordered "
           f"{mq['reordered']} (one sequence, several queues: frames of different flows overtake each other "
           "between queues).", ""]
    used = sum(1 for n in mq["per_queue"] if n)
    md.append(f"Reading: {used} of {len(mq['per_queue'])} queues carried traffic"
              + ("; each flow stays in one queue, so the split follows how the hash spread the flows."
                 if used > 1 else "; the hash put every flow in one queue."))
    return "\n".join(md) + "\n"


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


def render(rows, acc, args, env, png, provider, out: Path) -> str:
    md = ["# Lab pktgen: a DPDK packet generator against dpdk-testpmd txonly", "",
          f"Sender {args.hosts.split(',')[0]}, receiver {args.hosts.split(',')[1]}; {args.proto}, "
          f"{args.flows} flow(s); each throughput run {args.seconds:g} s, {args.rounds} round(s) per tool "
          "back to back, the order alternating; the Mpps columns are each tool's best round, the ratios the "
          "median of the rounds' own ratios. testpmd's figure is the median of its own per-second Tx-pps; "
          "hpnlab's is packets sent / the run's TSC time. Both run on the same port with the same EAL "
          "arguments, one after the other.", "",
          "## Packets per second", "",
          report.md_table(["device", "size", "hpnlab Mpps", "testpmd Mpps", "ratio", "hpnlab Gbit/s",
                           "hpnlab Mpps per CPU-s", "testpmd Mpps per CPU-s", "ratio per CPU-s"],
                          [[r["device"], r["size"], _m(r["pps"]["hpnlab"]), _m(r["pps"]["testpmd"]),
                            _r(r["ratio"]), f"{r['gbps']['hpnlab']:.3f}", _m(r["pps_per_cpu"]["hpnlab"]),
                            _m(r["pps_per_cpu"]["testpmd"]), _r(r["ratio_per_cpu"])] for r in rows]),
          f"![pps per size]({png})", ""]
    md.append("Reading:")
    for r in rows:
        if r["size"] != "64" or r["ratio"] is None:
            continue
        verdict = "meets" if r["ratio"] >= GOAL else "misses"
        md.append(f"- {r['device']}: at 64 B hpnlab sent {r['ratio']:.2f}× testpmd's rate, the median of "
                  f"{len(r['runs']['testpmd'])} round(s) ({verdict} the "
                  f"{GOAL}× goal); per CPU-second of each sender the ratio is {_r(r['ratio_per_cpu'])}.")
    load = env.get("load_before"), env.get("load_after")
    cpus = env["machine"]["cpus"]
    if load[0] and max(load[0][0], load[1][0]) > cpus / 2:
        md.append(f"- the machine's load average was {load[0][0]:.1f} before and {load[1][0]:.1f} after the "
                  f"runs on {cpus} CPUs: the senders got a share of a CPU, which varies from run to run; "
                  "packets per CPU-second is the steadier comparison of what each costs.")
    md += ["", "## Receiver accounting", "",
           report.md_table(["run", "receiver", "sent", "received", "lost", "loss %", "injected %",
                            "dropped by switch", "duplicates", "reordered", "kernel drops"],
                           [[a["label"], a["receiver"], a["sent"], a["received"], a["lost"], f"{a['loss_pct']:.3f}",
                             a.get("injected_pct", "-"), a.get("dropped_by_switch", "-"), a["duplicates"],
                             a["reordered"], a["kernel_drops"]] for a in acc]), ""]
    for a in acc:
        exact = a["received"] + a["lost"] == a["sent"] and a["beyond_sent"] == 0
        line = (f"- {a['label']}: received + lost = {a['received']} + {a['lost']} = {a['received'] + a['lost']} "
                f"{'=' if exact else '≠'} sent {a['sent']}")
        if "dropped_by_switch" in a:
            line += (f"; the switch's drop counter says {a['dropped_by_switch']}, the receiver counts "
                     f"{a['lost']} lost ({a['loss_pct']:.2f} % measured, {a['injected_pct']:g} % injected, "
                     f"{abs(a['loss_pct'] - a['injected_pct']):.2f} pp apart)")
        md.append(line + ".")
    lat = [a for a in acc if a.get("latency_ns")]
    if lat:
        md += ["", "### Latency (sender's TSC stamp to the receiver's TSC, one machine's clock)", "",
               report.md_table(["run", "min µs", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"],
                               [[a["label"], *[f"{a['latency_ns'].get(k, 0) / 1e3:.1f}"
                                               for k in ("min", "p50", "p90", "p99", "p99.9", "max")]]
                                for a in lat]),
               f"![latency]({plot_latency(lat, out)})"]
    elif acc:
        md += ["", "Latency is not reported: sender and receiver are different machines, whose TSCs "
               "are not one clock."]
    md += ["", "## EAL arguments", "", f"- sender: `{env['eal']['sender']}`",
           f"- receiver: `{env['eal']['receiver']}`"]
    if any(r["device"] == "net_null" for r in rows):
        md.append(f"- net_null: `{env['eal']['net_null']}`")
    md += ["", f"The DPDK binding: {', '.join(f'{h} {how}' for h, how in env['binding'].items())}.", "",
           report.environment_md(env), report.rerun_md(make_target="lab-pktgen")]
    return "\n".join(md)
