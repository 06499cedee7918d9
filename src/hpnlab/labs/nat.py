"""Lab nat: NAT traversal — how two peers behind two NAT routers connect
(labs/p2p/nat.yml): hole punching, port prediction, birthday-paradox punching
and a relay, UDP first and then TCP simultaneous open.

Peers pa and pb sit on private LANs behind routers ra and rb, which NAT onto
the lab's `wan`, where the rendezvous host rz lives. The routers behave like
home routers: unsolicited packets from `wan` are dropped silently (no RST, no
ICMP), and conntrack lets in only replies from the exact address and port a
packet went to (RFC 4787 "address and port-dependent filtering"). The knob is
each router's mapping behaviour (KINDS). Per try, each peer observes its own
NAT through rz (traversal.py), both pick the method that fits the pair, and
fall back to rz's relay when no direct path opens before the deadline. Every
outcome is then proven from captures on the routers' `wan` NICs.

    hpnlab --lab labs/p2p/nat.yml lab nat
    python -m hpnlab.labs.nat rendezvous|peer ...      (the agents)
"""
from __future__ import annotations

import math
import statistics
import sys
import time

from .. import report
from . import pcap, rendezvous, traversal
from ._agent import dispatch
from ._kit import (
    Capture,
    LabError,
    agent_argv,
    deferred_interrupts,
    need_hosts,
    need_tools,
    run_agents,
)

HELP = "NAT traversal: hole punching, port prediction, birthday punching and relay through four kinds of NAT"
RZ_PORT = 9000
HOSTS = ("pa", "pb", "ra", "rb", "rz")
TABLE = "hpnlab_nat"
N_PORTS = traversal.PORT_HI - traversal.PORT_LO + 1

# kind: (the nftables NAT statement for TCP/UDP, RFC 4787's name for the behaviour)
KINDS = {
    "cone": ("masquerade", "endpoint-independent mapping, port preservation"),
    "full": ("masquerade", "endpoint-independent mapping, port preservation, endpoint-independent filtering"),
    "addr": ("masquerade", "endpoint-independent mapping, port preservation, address-dependent filtering"),
    "remap": ("masquerade to :jhash ip saddr . th sport mod 20000 seed 0x5eed offset 30000",
              "endpoint-independent mapping, no port preservation (the port is a hash of the private endpoint)"),
    # nft 1.0.6 hands numgen's host-order number to the NAT unconverted (ports would
    # step by 256): a map from the counter to ports gives real consecutive ports
    "seq": ("masquerade to :numgen inc mod 1000 map { "
            + ", ".join(f"{i} : {20000 + i}" for i in range(1000)) + " }",
            "address and port-dependent mapping, sequential port assignment (a new port per new destination)"),
    "random": ("masquerade fully-random",
               "address and port-dependent mapping, random port assignment"),
}
MAX_TRIES = 200
SCENARIOS = ("cone-cone", "remap-cone", "cone-seq", "cone-random", "full-random", "addr-random", "seq-seq",
             "random-random")


def nat_rules(lan_if: str, wan_if: str, lan_net: str, kind: str) -> str:
    """A home-router-like NAT: translate from the private LAN onto `wan` only;
    drop whatever comes in from `wan` unasked. Conntrack filters on address and
    port; `full` also lets in anything sent to a port a private endpoint has sent
    from (its mapping, the port being preserved): endpoint-independent filtering;
    `addr` the same, but only from an address that port has sent to:
    address-dependent filtering. A dynamic map remembers what was sent, and a
    dnat through it lets the rest in."""
    mapped = remember = let_in = ""
    if kind in ("full", "addr"):
        key, sent, came = (("inet_proto . inet_service", "meta l4proto . th sport", "meta l4proto . th dport")
                           if kind == "full" else
                           ("ipv4_addr . inet_proto . inet_service", "ip daddr . meta l4proto . th sport",
                            "ip saddr . meta l4proto . th dport"))
        mapped = (f"\n  map mapped {{ type {key} : ipv4_addr; flags dynamic,timeout; timeout 2m; }}"
                  f"\n  chain nat_pre {{ type nat hook prerouting priority dstnat; policy accept;"
                  f"\n    iifname \"{wan_if}\" dnat ip to {came} map @mapped\n  }}")
        remember = f"update @mapped {{ {sent} : ip saddr }} "
        let_in = f"\n    iifname \"{wan_if}\" ct status dnat accept"
    return f"""
table ip {TABLE} {{{mapped}
  chain nat_post {{ type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan_if}" ip saddr {lan_net} meta l4proto {{ tcp, udp }} {KINDS[kind][0]}
    oifname "{wan_if}" ip saddr {lan_net} masquerade
  }}
  chain filter_fwd {{ type filter hook forward priority filter; policy drop;
    ct state established,related accept{let_in}
    iifname "{lan_if}" oifname "{wan_if}" ip saddr {lan_net} meta l4proto {{ tcp, udp }} {remember}accept
    iifname "{lan_if}" oifname "{wan_if}" ip saddr {lan_net} accept
  }}
  chain filter_in {{ type filter hook input priority filter; policy accept;
    iifname "{wan_if}" ct state new,invalid drop
  }}
}}
"""


def parse_scenarios(spec: str) -> list[tuple[str, str]]:
    out = []
    for sc in (s for s in spec.split(",") if s):
        pair = tuple(sc.split("-"))
        if len(pair) != 2 or any(k not in KINDS for k in pair):
            raise LabError(f"--scenarios: bad scenario {sc!r}: use A-B with A, B among {', '.join(KINDS)} "
                           f"(e.g. {SCENARIOS[3]})")
        out.append(pair)
    if not out:
        raise LabError("--scenarios: no scenario given")
    return out


def add_arguments(p) -> None:
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"NAT pairs (ra's kind-rb's kind; kinds: {', '.join(KINDS)}); default: all of "
                        f"{','.join(SCENARIOS)}")
    p.add_argument("--tries", type=int, default=20, help="tries per scenario (default: 20)")
    p.add_argument("--deadline", type=traversal.deadline_arg, default=None,
                   help="seconds a direct attempt may take before the relay, or auto (the default): per try from "
                        "the probe costs and round trips the peers measure on their hosts")
    p.add_argument("--relay-deadline", type=float, default=2.0, help="seconds for the relay (0: no relay)")
    p.add_argument("--hard-sockets", type=int, default=256, help="sockets a random-allocation side opens")
    p.add_argument("--probes", type=int, default=2048, help="random ports the other side probes at most")
    p.add_argument("--no-tcp", dest="tcp", action="store_false", help="UDP only")
    p.add_argument("--no-reuse", dest="reuse", action="store_false",
                   help="TCP does not first try a simultaneous open on UDP's punched mapping")


def run(provider, args, step) -> dict:
    missing = [h for h in HOSTS if h not in provider.lab.hosts]
    if missing:
        raise LabError(f"lab {provider.lab.name} has no host(s) {', '.join(missing)}: the NAT lab runs on "
                       "labs/p2p/nat.yml (`hpnlab --lab labs/p2p/nat.yml lab --up nat`)")
    scenarios = parse_scenarios(args.scenarios)
    for flag, value, lo, hi in (("--tries", args.tries, 1, MAX_TRIES), ("--hard-sockets", args.hard_sockets, 1, 4096),
                                ("--probes", args.probes, 1, N_PORTS),
                                ("--relay-deadline", args.relay_deadline, 0, 60)):
        if not lo <= value <= hi:
            raise LabError(f"{flag} must be {lo:g} to {hi:g} (got {value:g})")
    hosts = need_hosts(provider, *HOSTS)
    need_tools("tcpdump")
    need_tools("nft", "ip", hosts=[hosts["ra"], hosts["rb"]])
    lab = provider.lab
    for r in ("ra", "rb"):
        if hosts[r].sysctl("net.ipv4.ip_forward") != "1":
            raise LabError(f"router {r} does not forward (net.ipv4.ip_forward=0): use labs/p2p/nat.yml, "
                           "which sets it in the router's sysctls")
    pa, pb, ra, rb, rz = (hosts[h] for h in HOSTS)
    side = {"a": (pa, ra, "lan_a"), "b": (pb, rb, "lan_b")}
    wan_net = lab.networks["wan"]
    ips = {"rz": str(rz.address("wan")), "a": str(ra.address("wan")), "b": str(rb.address("wan"))}
    # rz's second address (the wan's last one nobody has): filtering probes from it tell
    # address-dependent from endpoint-independent filtering
    taken = {h.address("wan") for h in (ra, rb, rz)}
    alt = next(str(x) for x in reversed(list(wan_net.subnet.hosts())) if x not in taken)
    rz_wan = f"{alt}/{wan_net.subnet.prefixlen}"
    out = report.results_dir("nat", getattr(args, "results", None))
    env = report.fingerprint(provider, ["net.ipv4.ip_forward", "net.netfilter.nf_conntrack_udp_timeout"], hosts)
    results, agents = [], {}
    undo: list[tuple] = []                  # (host, argv) that takes back what the lab added
    one = (args.deadline or traversal.CAP) + args.relay_deadline + 1.5
    per_try = 2 * one if args.tcp else one
    try:
        rz.run(["ip", "addr", "replace", rz_wan, "dev", rz.nic("wan").ifname])
        undo.append((rz, ["ip", "addr", "del", rz_wan, "dev", rz.nic("wan").ifname]))
        for peer, router, lan in side.values():
            peer.run(["ip", "route", "replace", str(wan_net.subnet), "via", str(router.address(lan))])
            undo.append((peer, ["ip", "route", "del", str(wan_net.subnet)]))
        # fresh private ports per run (no stale conntrack entry meets a new try), all below
        # the ephemeral range the hard sides' extra sockets use
        span = 2 * args.tries * len(scenarios)
        base = 10000 + (int(time.time()) % max(1, 22000 // span)) * span
        for i, (kind_a, kind_b) in enumerate(scenarios):
            name = f"{kind_a}-{kind_b}"
            step(f"{name}: ra {KINDS[kind_a][1]}; rb {KINDS[kind_b][1]}; {args.tries} tries")
            for (_peer, router, lan), kind in ((side["a"], kind_a), (side["b"], kind_b)):
                router.run(["nft", "delete", "table", "ip", TABLE], check=False)
                # a file, not stdin: `seq`'s 1000-port map is more than an SSH channel's stdin took
                rules = out / f"{name}-{router.name}.nft"
                rules.write_text(nat_rules(router.nic(lan).ifname, router.nic("wan").ifname,
                                           str(lab.networks[lan].subnet), kind))
                router.put(rules, f"/tmp/{TABLE}.nft")
                router.run(["nft", "-f", f"/tmp/{TABLE}.nft"])
            udp_port = base + 2 * args.tries * i
            rzp = rz.start(agent_argv(rz, "nat", "rendezvous", "--port", RZ_PORT, "--alt-ip", alt),
                           name=f"nat-rz-{i}")
            try:
                rz.wait_for_port(RZ_PORT)
                common = ["--rz", f"{ips['rz']}:{RZ_PORT}", "--rz-alt", alt,
                          "--udp-port", udp_port, "--tcp-port", udp_port + args.tries,
                          "--tries", args.tries, "--deadline", args.deadline or "auto",
                          "--relay-deadline", args.relay_deadline, "--hard-sockets", args.hard_sockets,
                          "--probes", args.probes, "--tcp" if args.tcp else "--no-tcp",
                          "--reuse" if args.reuse else "--no-reuse"]
                with Capture(provider, "ra:wan", out / f"{name}-ra.pcap", "tcp or udp"), \
                        Capture(provider, "rb:wan", out / f"{name}-rb.pcap", "tcp or udp"):
                    res = run_agents({
                        pa: agent_argv(pa, "nat", "peer", "--name", "pa", "--peer-name", "pb",
                                       "--local", str(pa.address("lan_a")), *common),
                        pb: agent_argv(pb, "nat", "peer", "--name", "pb", "--peer-name", "pa",
                                       "--local", str(pb.address("lan_b")), *common)},
                        timeout=args.tries * per_try + 30)
            finally:
                with deferred_interrupts():
                    rzp.stop(3)
            agents[name] = res
            step(f"{name}: reading the routers' wan captures")
            results.append(analyse(name, kind_a, kind_b, res, pcap.read_pcap(out / f"{name}-ra.pcap"),
                                   pcap.read_pcap(out / f"{name}-rb.pcap"), ips, args.hard_sockets,
                                   args.probes))
    finally:
        with deferred_interrupts():
            for router in (ra, rb):
                router.run(["nft", "delete", "table", "ip", TABLE], check=False)
            for host, argv in reversed(undo):
                host.run(argv, check=False)
    md = render(results, args, env)
    summary = {r["scenario"]: {p: r[p]["summary"] for p in ("udp", "tcp") if p in r} for r in results}
    path = report.write_report(out, md, {"summary": summary, "scenarios": results, "agents": agents,
                                              "environment": env})
    return {"report": path, "dir": out, "summary": summary, "scenarios": results}


# ================================================================ proof from the captures

def _ep(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    ip, port = text.rsplit(":", 1)
    return ip, int(port)


def _flows(segs: list) -> dict:
    """(proto, src, sport, dst, dport) -> [packets, payload-carrying packets, segments]."""
    out: dict = {}
    for s in segs:
        f = out.setdefault((s.proto, s.src, s.sport, s.dst, s.dport), [0, 0, []])
        f[0] += 1
        f[1] += s.length > 0
        if s.proto == "tcp":
            f[2].append(s)
    return out


def both_ways(flows: dict, proto: str, x: tuple, y: tuple) -> bool:
    """Payload went x → y and y → x."""
    return all(flows.get((proto, *p, *q), [0, 0])[1] > 0 for p, q in ((x, y), (y, x)))


def prove(proto: str, a: dict, b: dict, flows: dict, ips: dict) -> tuple[str, str | None]:
    """The outcome the wan captures show for one try: the peers' own claims say
    which endpoints to look at; the packets must be there, both ways, in both
    routers' captures (`flows` holds one dict per router)."""
    claim = str(a.get("outcome")) if a.get("outcome") == b.get("outcome") else "failed"
    if claim == "failed":
        return "failed", None
    if claim == "relayed":
        relay = (ips["rz"], RZ_PORT + 2)
        ok = all(both_ways(flows[k], proto, _ep(row.get("relay_seen_as")) or ("?", 0), relay)
                 for k, row in (("a", a), ("b", b)))
        return ("relayed" if ok else "failed"), None
    ea, eb = _ep(b.get("peer_seen_as")), _ep(a.get("peer_seen_as"))     # each peer's public endpoint
    if not ea or not eb or ea[0] != ips["a"] or eb[0] != ips["b"]:
        return "failed", None
    if not all(both_ways(flows[k], proto, ea, eb) for k in ("a", "b")):
        return "failed", None
    shape = None
    if proto == "tcp":
        none: list = [0, 0, []]
        segs = flows["a"].get(("tcp", *ea, *eb), none)[2] + flows["a"].get(("tcp", *eb, *ea), none)[2]
        shape = pcap.handshake_kind(sorted(segs, key=lambda s: s.ts))
    return claim, shape


def summarise(rows: list[dict]) -> dict:
    times = [r["ms"] for r in rows if r["proven"] != "failed" and r.get("ms") is not None]
    direct = [r for r in rows if r["proven"].startswith("direct")]
    return {"tries": len(rows), "direct": len(direct),
            "relayed": sum(r["proven"] == "relayed" for r in rows),
            "failed": sum(r["proven"] == "failed" for r in rows),
            "median_ms": round(statistics.median(times), 1) if times else None,
            "median_direct_ms": round(statistics.median([r["ms"] for r in direct]), 1) if direct else None,
            "deadline_s": _median([r.get("deadline_s") for r in rows]),
            "claims_not_in_pcap": sum(r["claimed"] != "failed" and r["proven"] == "failed" for r in rows)}


def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def on_udp_mapping(rows: list[dict]) -> dict:
    """TCP tries both peers began on UDP's punched mapping, and those that opened there (by the pcap)."""
    return {"tried": sum(bool(r.get("on_udp_mapping")) for r in rows),
            "direct": sum(r["method"] == "udp-mapping" and r["proven"].startswith("direct") for r in rows)}


def birthday(rows: list[dict], hard_sockets: int, budget: int) -> dict | None:
    """Probes until success against the bound: with n mappings among N ports, each
    random probe hits with p = n/N, so P(hit within k) = 1 - (1 - p)^k (a median of
    ln 2 / p probes); when both sides are random, a probe pair matches with 1/N²."""
    probes = [r["probes"] for r in rows if r.get("probes") is not None and r["proven"].startswith("direct")]
    spent = [r["probes"] for r in rows if r.get("probes") is not None]
    if not spent:
        return None
    both_hard = any(r.get("role") == "both-hard" for r in rows)
    k = statistics.median(spent)
    if both_hard:
        bound = 1 - math.exp(-(k * k) / N_PORTS ** 2)
        return {"both_hard": True, "probes_per_side": k, "bound_p_direct": bound,
                "measured_p_direct": sum(r["proven"].startswith("direct") for r in rows) / len(rows)}
    p = hard_sockets / N_PORTS
    return {"both_hard": False, "median_probes": statistics.median(probes) if probes else None,
            "max_probes": max(probes) if probes else None, "expected_probes": round(1 / p),
            "median_bound": round(math.log(2) / p), "budget": budget,
            "p_hit_within_budget": 1 - (1 - p) ** budget}


def analyse(name: str, kind_a: str, kind_b: str, res: dict, segs_a: list, segs_b: list, ips: dict,
            hard_sockets: int, probes: int) -> dict:
    flows = {"a": _flows(segs_a), "b": _flows(segs_b)}
    out: dict = {"scenario": name, "nat_a": kind_a, "nat_b": kind_b,
                 "rfc4787_a": KINDS[kind_a][1], "rfc4787_b": KINDS[kind_b][1],
                 "rz_clock": {p: res[p].get("rz_clock") for p in ("pa", "pb")},
                 "pace": {p: res[p].get("pace") for p in ("pa", "pb")}}
    for proto in ("udp", "tcp"):
        rows = []
        for ta, tb in zip(res["pa"]["tries"], res["pb"]["tries"]):
            a, b = ta.get(proto), tb.get(proto)
            if a is None or b is None:
                continue
            proven, shape = prove(proto, a, b, flows, ips)
            easy_side = a if a.get("role") in ("easy", "both-hard") else b
            rows.append({"try": ta["try"], "method": a.get("method"), "claimed": a.get("outcome")
                         if a.get("outcome") == b.get("outcome") else "failed", "proven": proven,
                         "handshake": shape, "role": easy_side.get("role"), "probes": easy_side.get("probes"),
                         "ms": max(a.get("ms") or 0, b.get("ms") or 0) or None,
                         "deadline_s": max(a.get("deadline_s") or 0, b.get("deadline_s") or 0) or None,
                         "deadline_why": a.get("deadline_why"), "probe_rate": easy_side.get("probe_rate"),
                         "on_udp_mapping": "udp_mapping" in a and "udp_mapping" in b,
                         "a_mapping": a.get("nat"), "b_mapping": b.get("nat"),
                         "errors": [x for x in (a.get("error"), b.get("error")) if x]})
        if rows:
            methods = sorted({r["method"] for r in rows if r["method"]})
            out[proto] = {"summary": summarise(rows) | ({"on_udp_mapping": on_udp_mapping(rows)}
                                                         if proto == "tcp" else {}),
                          "methods": methods, "tries": rows,
                          "birthday": birthday(rows, hard_sockets, probes) if "birthday" in methods else None}
    return out


# ================================================================ report

def _mapping(m: dict | None) -> str:
    if not m:
        return "-"
    filtering = f"; filtering: {m['filtering']}" if m.get("filtering") else ""
    return f":{m['private']} → rz saw :{m['ports'][0]}, :{m['ports'][1]} ({m['kind']}{filtering})"


def goals(results: list[dict]) -> list[str]:
    """The lab's goals, read from the proven counts: an easy NAT meets a hard one
    directly in ≥ 95 % of tries; two hard ones connect every try counting the relay."""
    out = []
    for r in results:
        hard = [k for k in (r["nat_a"], r["nat_b"]) if k in ("seq", "random")]
        for proto in ("udp", "tcp"):
            s = r.get(proto, {}).get("summary")
            if not s or not hard:
                continue
            if len(hard) == 1:
                need = math.ceil(0.95 * s["tries"])
                met = "met" if s["direct"] >= need else "**missed**"
                out.append(f"- {r['scenario']} {proto.upper()}: **{s['direct']} of {s['tries']} direct** "
                           f"(goal ≥ {need}: {met}), median time to connect {_ms(s['median_direct_ms'])} ms")
            else:
                conn = s["direct"] + s["relayed"]
                met = "met" if conn == s["tries"] else "**missed**"
                out.append(f"- {r['scenario']} {proto.upper()}: {s['direct']} of {s['tries']} direct, "
                           f"**{conn} of {s['tries']} connected** counting the relay (goal: all, {met})")
    return out


def _clock(c: dict) -> str:
    return f"{c['offset_ms']:+.1f} ms (round trip {c['rtt_ms']:.1f} ms)"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def _short(rule: str) -> str:
    return rule if len(rule) < 100 else rule.split("{")[0] + "{ 0 : 20000, 1 : 20001, … 999 : 20999 }"


def deadline_md(results: list[dict], args) -> list[str]:
    """How long each direct attempt was given, and why: the costs the peers measured
    against the rate their probes really went out at."""
    L = ["## The direct attempt's deadline", ""]
    if args.deadline is not None:
        return L + [f"Fixed by `--deadline {args.deadline:g}` for every try.", ""]
    L += ["Each peer timed its probes at its start (TCP: a new socket and a non-blocking connect(); UDP: a "
          f"sendto(); in batches of {traversal.BATCH} with a {traversal.TICK * 1e3:g} ms wait after each, as the "
          "lab probes) and read its round trip to rz; per try both computed the same deadline from both "
          f"sides' figures: for birthday punching against one random side, the time the hard side's sockets "
          f"and the probes that hit with P ≥ {1 - traversal.MISS:g} take at those costs, plus three round "
          f"trips, ×{traversal.SAFETY:g} (the machine's load moves between the measurement and a try), "
          f"within {traversal.FLOOR:g}–{traversal.CAP:g} s; every other plan gets {traversal.FLOOR:g} s. "
          "A try that connects ends at once, so a long deadline costs only the tries that miss.", ""]
    pace = [[p, f"{1e6 * c['tcp']['probe_s']:.0f}", f"{1e6 * c['udp']['probe_s']:.1f}",
             f"{1e3 * c['tcp']['tick_s']:.1f}", f"{1e3 * c['tcp']['rtt_s']:.1f}"]
            for p, c in (results[0].get("pace") or {}).items() if c] if results else []
    if pace:
        L += [f"Measured at the start of {results[0]['scenario']}:", "",
              report.md_table(["peer", "TCP probe µs", "UDP probe µs", "tick ms", "round trip to rz ms"],
                              pace, align="lrrrr")]
    rows = []
    for r in results:
        for proto in ("udp", "tcp"):
            tries = [t for t in r.get(proto, {}).get("tries", []) if t.get("deadline_s")]
            if not tries:
                continue
            ds, rates = [t["deadline_s"] for t in tries], [t["probe_rate"] for t in tries if t.get("probe_rate")]
            rows.append([r["scenario"], proto.upper(), f"{statistics.median(ds):.2f} [{min(ds):.2f}–{max(ds):.2f}]",
                         f"{statistics.median(rates):.0f}" if rates else "-", tries[-1]["deadline_why"]])
    return L + [report.md_table(["scenario", "proto", "deadline s, median [range]", "probes/s sent (median)",
                                 "why (last try)"], rows, align="llrrl")] if rows else L


def render(results: list[dict], args, env: dict) -> str:
    L = ["# NAT lab: hole punching, port prediction, birthday punching and relay", "",
         "pa (10.77.11.10) behind ra, pb (10.77.12.10) behind rb, rendezvous rz (10.77.10.100) on the lab's `wan`. "
         f"{args.tries} tries per scenario; per try UDP first, then TCP, each direct within "
         f"{'the deadline below' if args.deadline is None else f'{args.deadline:g} s'} or relayed through rz. "
         "Outcomes are counted from the captures on both routers' `wan` NICs (a claim by the "
         "peers that the packets do not show counts as failed).", "", "## NAT kinds (RFC 4787)", "",
         report.md_table(["kind", "nftables (TCP/UDP)", "RFC 4787 behaviour"],
                         [[k, f"`{_short(v[0])}`", v[1] if "filtering" in v[1] else
                  v[1] + ", address and port-dependent filtering (conntrack)"]
                          for k, v in KINDS.items()], align="lll"),
         "## Results", ""]
    rows = []
    for r in results:
        for proto in ("udp", "tcp"):
            if proto not in r:
                continue
            s = r[proto]["summary"]
            shapes = [t["handshake"] for t in r[proto]["tries"] if t["handshake"]]
            reuse = s.get("on_udp_mapping")
            rows.append([r["scenario"], proto.upper(), ", ".join(r[proto]["methods"]), s["tries"], s["direct"],
                         s["relayed"], s["failed"], _ms(s["median_ms"]), _ms(s["median_direct_ms"]),
                         f"{reuse['direct']} of {reuse['tried']}" if reuse else "-",
                         ", ".join(f"{k} {shapes.count(k)}" for k in sorted(set(shapes))) or "-"])
    L += [report.md_table(["scenario (ra-rb)", "proto", "method", "tries", "direct", "relayed", "failed",
                           "median ms", "median direct ms", "TCP on UDP's mapping", "TCP handshake (pcap)"],
                          rows, align="lllrrrrrrrl")]
    L += ["", "TCP goes first where UDP's hole is: a simultaneous open from the UDP socket's private port to "
          "the endpoint the UDP punch reached (method `udp-mapping`; the column counts the tries where both "
          "peers' UDP punch worked, and how many of them opened TCP there, by the pcap). TCP is a flow of its "
          "own to the routers (its own conntrack entry and NAT mapping), so this lands on the punched port "
          "only where the NAT maps a private port to the same public port whatever the protocol (port "
          "preservation, a hash of the private endpoint); a sequential or random allocator gives the new flow "
          "a new port, and TCP falls back to its own observation and method."]
    L += ["", *goals(results), ""]
    clocks = [f"{r['scenario']}: pa {_clock(r['rz_clock']['pa'])}, pb {_clock(r['rz_clock']['pb'])}"
              for r in results if r.get("rz_clock", {}).get("pa")]
    if clocks:
        L += ["rz names each try's start time on its own clock; each peer read that clock first "
              "(NTP-style, the sample with the shortest round trip) and converted it to its own. "
              "rz's clock minus the peer's: " + "; ".join(clocks) + ".", ""]
    L += deadline_md(results, args)
    L += ["## Mappings seen from the rendezvous host", "",
          "Try 0 of each scenario: the peer's private port, the public ports rz saw from it toward "
          f"{RZ_PORT} and {RZ_PORT + 1}, and what the peer concluded.", "",
          report.md_table(["scenario", "proto", "pa behind ra", "pb behind rb"],
                          [[r["scenario"], p.upper(),
                            *((_mapping(r[p]["tries"][0]["a_mapping"]), _mapping(r[p]["tries"][0]["b_mapping"]))
                              if r[p]["tries"][0]["method"] != "udp-mapping" else ["UDP's (no TCP observation)"] * 2)]
                           for r in results for p in ("udp", "tcp") if p in r], align="llll")]
    L += ["## Birthday punching against the bound", ""]
    for r in results:
        for proto in ("udp", "tcp"):
            bd = r.get(proto, {}).get("birthday")
            if not bd:
                continue
            if bd["both_hard"]:
                L.append(f"- {r['scenario']} {proto.upper()}: both sides random; each sent a median "
                         f"{bd['probes_per_side']:g} probes. A probe pair matches only if each hits the mapping "
                         f"the other's probe created: P ≈ 1 − exp(−k²/N²) = {bd['bound_p_direct']:.2%} per try "
                         f"(N = {N_PORTS}); measured direct {bd['measured_p_direct']:.0%}.")
            else:
                med = "-" if bd["median_probes"] is None else f"{bd['median_probes']:g}"
                L.append(f"- {r['scenario']} {proto.upper()}: the random side opened {args.hard_sockets} mappings; "
                         f"the easy side needed a median **{med}** probes (most {bd['max_probes']}); the bound: "
                         f"median ln 2·N/n = {bd['median_bound']}, mean N/n = {bd['expected_probes']}, "
                         f"P(hit within the budget of {bd['budget']}) = {bd['p_hit_within_budget']:.4f}.")
    L += ["", "## How each method works", "",
          "- **punch** (both endpoint-independent): the endpoint rz saw is the one the peer must aim at; each "
          "side's first packet opens its own router's conntrack entry, so the other side's packets arrive as "
          "replies. TCP: both connect(); the SYN that finds the hole reaches a socket in SYN_SENT.",
          "- **punch through an open filter** (`full`: endpoint-independent filtering): rz answers each "
          f"observation from a third port ({RZ_PORT + 2}) too; when that gets through, the side's router does not "
          "filter on the port, so the hard side just sends to it from whatever mapping its NAT picks, and is "
          "answered there. For TCP the open side listens (a SYN from an unknown port would meet no connected "
          "socket and be refused): a three-way handshake, through a hole its own earlier packets opened.",
          "- **prediction** (sequential allocation): a peer sends from its socket to rz's two ports and sees "
          "the mapping move by a step; the next new destination gets the next port, so the other side aims at "
          "a few ports past it (a sequential side aims at exactly one, as each new destination costs it a port).",
          "- **birthday** (random allocation): the random side opens many sockets toward the easy side's public "
          "endpoint, each creating its own random mapping; the easy side probes random ports until one is such "
          "a mapping: the probe arrives as a reply. With n mappings among N ports that takes about N/n probes, "
          "not N. When both sides are random, every probe creates a new random mapping on its own side as well, "
          "so a match needs two independent 1/N events: that is what the relay is for.",
          "- **relay**: both peers send to rz's relay port (UDP) or connect to it (TCP) — outgoing packets, which "
          "every NAT lets through — and rz forwards between them (TURN/DERP-like).", "",
          "Files: two pcaps per scenario, captured on each router's `wan` NIC (`<scenario>-ra.pcap`, "
          "`-rb.pcap`), `data.json` (per scenario `{tries, direct, relayed, failed, median_ms}` for UDP and "
          "TCP, and every try).", "",
          report.environment_md(env), report.rerun_md(None, f"lab-p2p-nat PROVIDER={env['provider']}")]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    return dispatch("nat", {"rendezvous": rendezvous.main, "peer": traversal.peer_main}, argv)


if __name__ == "__main__":
    sys.exit(main())
