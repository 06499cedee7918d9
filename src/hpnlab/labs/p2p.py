"""Lab p2p: TCP simultaneous open between two hosts (course §2.2.1, the P2P homework).

Both peers bind a fixed port and connect() to each other at a shared start
time; nobody listens. When the two SYNs cross, each side is in SYN_SENT when
the other's SYN arrives, answers SYN-ACK, and both go SYN_SENT → SYN_RECV →
ESTABLISHED (the "six-way" handshake: SYN, SYN, SYN-ACK, SYN-ACK). When a SYN
arrives before the other side has connected, that kernel answers RST and the
connect() fails with ECONNREFUSED: the peer tries again after a *random*
pause (a fixed pause keeps both sides missing in lockstep).

The SYNs cross only if each is still in flight when the other side connects:
the two connect() calls must fall within one one-way delay of each other. A
LAN's few microseconds make that a matter of luck, so during the run the lab
delays each peer's segments of its ports by --delay-ms (netem, or hpnlab's
NFQUEUE delay line where the kernel has no netem): a window of ± that delay.

    hpnlab lab p2p --tries 20                   # on the running lab's h1, h2
    python -m hpnlab.labs.p2p peer ...          # the agent each host runs
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import random
import socket
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .. import report
from . import pcap
from ._agent import dispatch
from ._kit import (
    Capture,
    StateTrace,
    agent_argv,
    delay_line,
    host_pair,
    need_tools,
    run_agents,
    state_paths,
)

HELP = "TCP simultaneous open between two hosts: pcap proof, success rate, ladder diagram"
BASE_PORT = 41000
DELAY_MS = 10.0


# ================================================================ agent (runs on a host)

def sleep_until(t: float) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.05) if left > 0.002 else 0)


def simultaneous_connect(local: tuple[str, int], remote: tuple[str, int], start_at: float,
                         timeout: float, jitter_ms: float, syn_timeout: float | None = None,
                         rng: random.Random | None = None) -> tuple[socket.socket | None, dict]:
    """connect() from a fixed local port to a peer doing the same, from `start_at`,
    retrying refused attempts after a random pause in [0, jitter_ms]."""
    rng = rng or random.Random()
    sleep_until(start_at)
    t0 = time.time()
    info: dict[str, Any] = {"attempts": 0, "refused": 0, "timeouts": 0, "errors": [], "first_connect": t0}
    while True:
        left = t0 + timeout - time.time()
        if left <= 0:
            info["seconds"] = time.time() - t0
            return None, info
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(local)
        s.settimeout(min(left, syn_timeout) if syn_timeout else left)
        info["attempts"] += 1
        try:
            s.connect(remote)
            s.settimeout(5)
            info["seconds"] = time.time() - t0
            return s, info
        except ConnectionRefusedError:
            info["refused"] += 1
        except TimeoutError:
            info["timeouts"] += 1
        except OSError as exc:   # e.g. a reset in SYN_RECV, EADDRNOTAVAIL while a tuple is busy
            if len(info["errors"]) < 5:
                info["errors"].append(errno.errorcode.get(exc.errno or 0, str(exc)))
        s.close()
        time.sleep(rng.uniform(0, jitter_ms / 1000))


def clock_offset(s: socket.socket, to: tuple, deadline: float, samples: int = 16) -> tuple[float, float] | None:
    """(round trip, the other clock minus ours) from the sample with the shortest round
    trip (NTP-style): `to` answers {"op": "time", "k": k} with k and its clock as "t".
    `s` needs a timeout (a reply that does not come is a lost sample); None: no answer."""
    best: tuple[float, float] | None = None
    k = 0
    while k < samples and time.time() < deadline:
        t0 = time.time()
        s.sendto(json.dumps({"op": "time", "k": k}).encode(), to)
        try:
            reply, addr = s.recvfrom(256)
            msg = json.loads(reply)
        except (TimeoutError, ValueError):
            continue                            # not listening yet, or something else's datagram
        t1 = time.time()
        if addr != to or msg.get("k") != k:
            continue
        k += 1
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, msg["t"] - (t0 + t1) / 2)
    return best


def agree_start(role: str, local_ip: str, peer_ip: str, port: int, lead: float = 0.5,
                timeout: float = 20.0) -> dict:
    """A start time both peers keep, whatever their clocks say (fresh VMs under TCG are
    seconds apart): the follower reads the leader's clock over UDP, NTP-style, keeping
    the sample with the shortest round trip; the leader names a start on its own
    clock; the follower converts it to its own. Returns start_at on this host's
    clock and offset (leader's clock minus this one's)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((local_ip, port))
    s.settimeout(0.2)
    deadline = time.time() + timeout
    try:
        if role == "leader":
            start = None
            while time.time() < deadline and (start is None or time.time() < start - 0.1):
                try:
                    data, addr = s.recvfrom(256)
                except TimeoutError:
                    continue
                if addr[0] != peer_ip:
                    continue
                msg = json.loads(data)
                if msg["op"] == "start":
                    start = start or time.time() + lead
                    msg["t"] = start
                else:
                    msg["t"] = time.time()
                s.sendto(json.dumps(msg).encode(), addr)
            if start is None:
                raise TimeoutError(f"the follower {peer_ip} never asked for a start time")
            return {"start_at": start, "offset": 0.0, "rtt_ms": None}
        best = clock_offset(s, (peer_ip, port), deadline)
        if best is None:
            raise TimeoutError(f"the leader {peer_ip}:{port} did not answer")
        while time.time() < deadline:
            s.sendto(json.dumps({"op": "start"}).encode(), (peer_ip, port))
            try:
                reply = json.loads(s.recv(256))
            except TimeoutError:
                continue
            if reply.get("op") == "start":
                return {"start_at": reply["t"] - best[1], "offset": best[1], "rtt_ms": round(best[0] * 1e3, 3)}
        raise TimeoutError(f"the leader {peer_ip}:{port} named no start time")
    finally:
        s.close()


def exchange(s: socket.socket, name: str, tag: str) -> str:
    """Send a line, read the peer's line: data both ways over the P2P connection."""
    s.sendall(f"hello from {name} {tag}\n".encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def peer_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.p2p peer")
    ap.add_argument("--name", required=True)
    ap.add_argument("--local", required=True, help="this host's address")
    ap.add_argument("--peer", required=True, help="the other host's address")
    ap.add_argument("--port", type=int, default=BASE_PORT, help="first port; try i uses port+i on both sides")
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--sync", choices=("leader", "follower"), required=True,
                    help="the leader names the start time on its clock; the follower reads that clock")
    ap.add_argument("--spacing", type=float, default=0.5, help="seconds between the tries' start times")
    ap.add_argument("--timeout", type=float, default=3.0, help="give a try up after this many seconds")
    ap.add_argument("--jitter-ms", type=float, default=1.0, help="random pause after a refused attempt")
    ap.add_argument("--cpu", type=int, default=-1, help="pin this peer to a CPU (-1: do not)")
    a = ap.parse_args(argv)
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        try:            # the two peers on different CPUs: their retry loops really run at the same time
            os.sched_setaffinity(0, {a.cpu % (os.cpu_count() or 1)})
        except OSError:
            pass
    rng = random.Random()
    results = []
    clock = agree_start(a.sync, a.local, a.peer, a.port - 1)     # a port outside the delayed range
    for i in range(a.tries):
        port = a.port + i
        s, info = simultaneous_connect((a.local, port), (a.peer, port), clock["start_at"] + i * a.spacing,
                                       a.timeout, a.jitter_ms, rng=rng)
        info["first_connect"] += clock["offset"]           # on the leader's clock
        info.update(try_=i, port=port, ok=s is not None)
        if s is not None:
            try:
                info["received"] = exchange(s, a.name, f"#{i}")
                info["ok"] = info["received"].startswith("hello from")
            except OSError as exc:
                info.update(ok=False, errors=info["errors"] + [f"exchange: {exc}"])
            finally:
                s.close()
        results.append(info)
    print(json.dumps({"name": a.name, "clock": clock, "tries": results}))
    return 0


# ================================================================ the lab (runs here)

def add_arguments(p) -> None:
    p.add_argument("--hosts", default="h1,h2", help="the two peers (default: h1,h2)")
    p.add_argument("--network", help="the network they meet on (default: the first they share)")
    from ..cli._common import non_negative, positive_float, positive_int, tcp_port
    p.add_argument("--tries", type=positive_int, default=20, help="simultaneous opens to attempt (default: 20)")
    p.add_argument("--spacing", type=non_negative, default=0.3, help="seconds between tries (default: 0.3)")
    p.add_argument("--timeout", type=positive_float, default=2.0, help="seconds before a try counts as failed")
    p.add_argument("--jitter-ms", type=non_negative, default=1.0,
                   help="upper bound of the random pause after a refused connect (default: 1 ms)")
    p.add_argument("--port", type=tcp_port, default=BASE_PORT)
    p.add_argument("--delay-ms", type=non_negative, default=DELAY_MS,
                   help="one-way delay on each peer's segments of the lab's ports during the run, so the SYNs "
                        f"cross in flight: the two connect() calls may be this far apart (default: {DELAY_MS:g} ms; "
                        "0: the bare link)")


def run(provider, args, step) -> dict:
    need_tools("tcpdump")
    ha, hb, net = host_pair(provider, args.hosts, "the two peers", args.network)
    a_name, b_name = ha.name, hb.name
    hosts = {a_name: ha, b_name: hb}
    ip_a, ip_b = str(ha.address(net)), str(hb.address(net))
    out = report.results_dir("p2p", getattr(args, "results", None))
    ports = range(args.port, args.port + args.tries)
    bpf = f"tcp and portrange {ports.start}-{ports.stop - 1}"
    step(f"{a_name} {ip_a} ⇄ {b_name} {ip_b} on {net}: {args.tries} tries, ports {ports.start}-{ports.stop - 1}")

    common = ["--port", args.port, "--tries", args.tries, "--spacing", args.spacing, "--timeout", args.timeout,
              "--jitter-ms", args.jitter_ms]
    tracer = StateTrace(ports) if StateTrace.available(provider) else None
    cap_a = Capture(provider, f"{a_name}:{net}", out / f"{a_name}.pcap", bpf)
    cap_b = Capture(provider, f"{b_name}:{net}", out / f"{b_name}.pcap", bpf)
    with ExitStack() as stack:
        if args.delay_ms > 0:
            for host in (ha, hb):
                stack.enter_context(delay_line(host, host.nic(net).ifname, (ports.start, ports.stop - 1),
                                              args.delay_ms))
            step(f"{args.delay_ms:g} ms one-way delay on both peers' ports: the SYNs cross if the two "
                 f"connect() calls are < {args.delay_ms:g} ms apart")
        stack.enter_context(cap_a)
        stack.enter_context(cap_b)
        if tracer:
            stack.enter_context(tracer)
        jobs = peer_jobs(provider, ha, hb, ip_a, ip_b, common)
        results = run_agents(jobs, timeout=5 + args.tries * (args.spacing + args.timeout) + 10)
    step("peers finished; reading the pcaps")
    segs_a = pcap.read_pcap(out / f"{a_name}.pcap")
    clock = results[b_name]["clock"]          # B's clock + offset = A's clock (VMs' clocks differ)
    segs_b = [dataclasses.replace(s, ts=s.ts + clock["offset"]) for s in pcap.read_pcap(out / f"{b_name}.pcap")]
    analysis = analyse(results[a_name]["tries"], results[b_name]["tries"], segs_a, ip_a, ip_b,
                       tracer.events if tracer else None, args.delay_ms)
    analysis["clock"] = {"offset_ms": round(clock["offset"] * 1e3, 3), "rtt_ms": clock["rtt_ms"]}
    ladder_png = None
    example = next((t for t in analysis["tries"] if t["kind"] == "simultaneous"),
                   next((t for t in analysis["tries"] if t["ok"]), None))
    if example:
        ladder_png = out / "ladder.png"
        conn = [s for s in segs_a if args.port + example["try"] in (s.sport, s.dport)]
        conn_b = [s for s in segs_b if args.port + example["try"] in (s.sport, s.dport)]
        draw_ladder(pcap.opening(conn)[:12], pcap.opening(conn_b)[:12], (a_name, ip_a), (b_name, ip_b), ladder_png,
                    title=f"try #{example['try']}: {example['kind']} open, port {args.port + example['try']}")
    step("writing the report")
    env = report.fingerprint(provider, ["net.ipv4.tcp_syn_retries", "net.ipv4.tcp_tw_reuse"], hosts)
    md = render(analysis, a_name, b_name, ip_a, ip_b, net, args, env, ladder_png, out)
    path = report.write_report(out, md, {"analysis": analysis, "agents": results, "environment": env})
    return {"report": path, "dir": out, **{k: analysis[k] for k in ("ok", "tries_n", "kinds")}}


def syn_gap_ms(opening: list, ip_a: str, ip_b: str) -> float | None:
    """B's SYN minus A's SYN as captured on A's NIC: both have passed an egress delay there
    (A's leaving, B's arriving), so this is the connect() gap plus the difference of the
    two delays' own jitter — read with no clock but A's."""
    first: dict[str, float] = {}
    for s in opening:
        if s.flags & pcap.SYN and not s.flags & pcap.ACK:
            first.setdefault(s.src, s.ts)
    if ip_a not in first or ip_b not in first:
        return None
    return round((first[ip_b] - first[ip_a]) * 1e3, 3)


def analyse(tries_a: list, tries_b: list, segs: list, ip_a: str, ip_b: str, events,
            delay_ms: float = 0.0) -> dict:
    conns: dict[int, list] = {}
    for s in segs:
        if s.proto == "tcp" and s.sport == s.dport:
            conns.setdefault(s.sport, []).append(s)
    paths = state_paths(events) if events is not None else {}
    rows: list[dict] = []
    kinds: dict[str, int] = {}
    for ta, tb in zip(tries_a, tries_b):
        port = ta["port"]
        conn = conns.get(port, [])
        kind = pcap.handshake_kind(conn)
        opening = pcap.opening(conn)
        state_a = last_life(paths.get((ip_a, port, ip_b, port)))
        state_b = last_life(paths.get((ip_b, port, ip_a, port)))
        # the states of the successful socket: the last path that reached ESTABLISHED
        row = {"try": ta["try_"], "port": port, "ok": ta["ok"] and tb["ok"], "kind": kind,
               "attempts": [ta["attempts"], tb["attempts"]], "refused": [ta["refused"], tb["refused"]],
               "seconds": [round(ta.get("seconds", 0), 4), round(tb.get("seconds", 0), 4)],
               "rsts": sum(1 for s in conn if s.flags & pcap.RST),
               "opening": [f"{'A' if s.src == ip_a else 'B'} {s.flagstr}" for s in opening[:6]],
               "syn_gap_ms": syn_gap_ms(opening, ip_a, ip_b),
               # how far apart the two first connect() calls were, on A's clock (B's converted)
               "connect_gap_ms": round((tb["first_connect"] - ta["first_connect"]) * 1e3, 3),
               "states": [state_a, state_b] if events is not None else None,
               "received": [ta.get("received"), tb.get("received")],
               "errors": ta["errors"] + tb["errors"]}
        rows.append(row)
        kinds[kind] = kinds.get(kind, 0) + 1 if row["ok"] else kinds.get(kind, 0)
    ok = sum(r["ok"] for r in rows)
    canonical_states = sum(1 for r in rows if r["states"] and all(
        st and _subseq(["SYN_SENT", "SYN_RECV", "ESTABLISHED"], st) for st in r["states"]))
    gaps = [abs(r["connect_gap_ms"]) for r in rows]
    inside = [r for r in rows if abs(r["connect_gap_ms"]) < delay_ms]
    return {"tries": rows, "tries_n": len(rows), "ok": ok,
            "kinds": {k: sum(1 for r in rows if r["ok"] and r["kind"] == k)
                      for k in ("simultaneous", "syn-syn-ack", "three-way", "failed")},
            "window": {"delay_ms": delay_ms, "inside": len(inside),
                       "inside_simultaneous": sum(1 for r in inside if r["ok"] and r["kind"] == "simultaneous"),
                       "median_gap_ms": statistics.median(gaps) if gaps else None,
                       "max_gap_ms": max(gaps) if gaps else None},
            "both_syn_sent_syn_recv_established": canonical_states if events is not None else None}


def peer_jobs(provider, ha, hb, ip_a: str, ip_b: str, common: list) -> dict:
    """The two peer agents; on netns (one machine) pinned to different CPUs so
    that their retry loops really run at the same time, even under load."""
    pin = provider.shares_kernel and (os.cpu_count() or 1) >= 2
    return {ha: agent_argv(ha, "p2p", "peer", "--name", ha.name, "--local", ip_a, "--peer", ip_b, *common,
                           "--cpu", 0 if pin else -1, "--sync", "leader"),
            hb: agent_argv(hb, "p2p", "peer", "--name", hb.name, "--local", ip_b, "--peer", ip_a, *common,
                           "--cpu", 1 if pin else -1, "--sync", "follower")}


def last_life(path: list[str] | None) -> list[str] | None:
    """The states of the socket that connected: refused attempts on the same
    4-tuple (CLOSE→SYN_SENT→CLOSE ...) are cut off."""
    if not path or "ESTABLISHED" not in path:
        return path[-6:] if path else path
    first = path.index("ESTABLISHED")
    start = max((i for i, st in enumerate(path[:first]) if st == "CLOSE"), default=0)
    return path[start:]


def _subseq(needle: list[str], hay: list[str]) -> bool:
    it = iter(hay)
    return all(any(x == n for x in it) for n in needle)


def draw_ladder(segs_a: list, segs_b: list, a: tuple, b: tuple, path: Path, title: str) -> None:
    """A ladder (sequence) diagram: each segment an arrow from its sender's
    capture time to its receiver's capture time, the two hosts as vertical lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def k(s):
        return (s.src, s.sport, s.dst, s.dport, s.seq, s.ack, s.flags)
    seen_b: dict[tuple, float] = {}
    for s in segs_b:
        seen_b.setdefault(k(s), s.ts)
    seen_a: dict[tuple, float] = {}
    for s in segs_a:
        seen_a.setdefault(k(s), s.ts)
    arrows = []
    for s in segs_a + segs_b:
        key = k(s)
        if s.src == a[1] and key in seen_a:
            arrows.append((seen_a[key], seen_b.get(key), "A", s))
        elif s.src == b[1] and key in seen_b:
            arrows.append((seen_b[key], seen_a.get(key), "B", s))
    arrows = sorted({(t0, t1, who, s) for t0, t1, who, s in arrows}, key=lambda x: x[0])
    if not arrows:
        return
    t_base = arrows[0][0]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.55 * len(arrows)))
    xa, xb = 0.0, 1.0
    span = max((t1 or t0) for t0, t1, _w, _s in arrows) - t_base or 1e-6
    for t0, t1, who, s in arrows:
        y0 = (t0 - t_base) * 1e6
        y1 = ((t1 if t1 is not None else t0) - t_base) * 1e6
        x0, x1 = (xa, xb) if who == "A" else (xb, xa)
        colour = "tab:red" if s.flags & pcap.RST else ("tab:blue" if who == "A" else "tab:green")
        style = "-" if t1 is not None else "--"
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color=colour, linestyle=style, lw=1.4))
        label = f"{s.flagstr}  seq={s.seq % 100000} ack={s.ack % 100000}" + (f" len={s.length}" if s.length else "")
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, label, ha="center", va="bottom", fontsize=8, color=colour,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    top = span * 1e6
    for x, (name, ip) in ((xa, a), (xb, b)):
        ax.plot([x, x], [-0.05 * top, top * 1.05], color="black", lw=2)
        ax.text(x, -0.08 * top, f"{name}\n{ip}", ha="center", va="bottom", fontsize=9, weight="bold")
    ax.set_ylim(top * 1.08, -0.15 * top)
    ax.set_xlim(-0.25, 1.25)
    ax.set_xticks([])
    ax.set_ylabel("µs since the first segment (capture time on sender → receiver)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(an: dict, a: str, b: str, ip_a: str, ip_b: str, net: str, args, env: dict,
           ladder: Path | None, out: Path) -> str:
    k, w = an["kinds"], an["window"]
    goal = math.ceil(0.95 * an["tries_n"])
    met = "met" if k["simultaneous"] >= goal else "**missed**"
    lines = [f"# P2P lab: TCP simultaneous open, {a} ⇄ {b}", "",
             f"**{k['simultaneous']} of {an['tries_n']} tries were canonical simultaneous opens** "
             f"(goal ≥ 95 %, {goal} of {an['tries_n']}: {met}); {an['ok']} connected and exchanged data both ways.",
             "",
             f"- canonical simultaneous opens (SYN, SYN, SYN-ACK, SYN-ACK): **{k['simultaneous']}**",
             f"- fell back to SYN, SYN, SYN-ACK, ACK (only one SYN met a peer in SYN_SENT): {k['syn-syn-ack']}",
             f"- plain three-way handshakes: {k['three-way']}"]
    if an["both_syn_sent_syn_recv_established"] is not None:
        lines.append(f"- tries where the kernel's `sock:inet_sock_set_state` tracepoint shows **both** sockets "
                     f"going SYN_SENT → SYN_RECV → ESTABLISHED: **{an['both_syn_sent_syn_recv_established']}**")
    else:
        lines.append("- the kernel's state tracepoint was not read (it needs the netns provider and a writable "
                     "tracefs): the pcap alone classifies the handshakes")
    lines += ["", "## The timing window", ""]
    if w["delay_ms"] > 0:
        lines += [f"Two SYNs cross only if each is still in flight when the other side calls connect(): the two "
                  f"calls must be less than one one-way delay apart. On a LAN that is a few microseconds, so the "
                  f"lab delays each peer's segments of its ports by **{w['delay_ms']:g} ms** while it runs "
                  f"(netem where the kernel has it, else hpnlab's NFQUEUE delay line): a window of "
                  f"±{w['delay_ms']:g} ms around the shared start time.", ""]
    else:
        lines += ["This run used the bare link (--delay-ms 0): the window is the link's own one-way delay, "
                  "microseconds on a LAN, so crossing SYNs are a matter of luck.", ""]
    if w["median_gap_ms"] is not None:
        inside = (f" {w['inside']} of {an['tries_n']} tries started inside the window, and "
                  f"{w['inside_simultaneous']} of those were canonical." if w["delay_ms"] > 0 else "")
        c = an["clock"]
        lines += [f"The peers agree on each try's start time themselves: {b} reads {a}'s clock over UDP before "
                  f"the tries (NTP-style, the sample with the shortest round trip, {c['rtt_ms']} ms) and finds it "
                  f"{c['offset_ms']:+.3f} ms from its own — 0 where the hosts share a kernel, seconds between "
                  f"freshly booted VMs, which an absolute start time passed to both would turn into a gap of "
                  f"seconds.", "",
                  f"How far apart the two first connect() calls of a try were (`connect gap`, on {a}'s clock, "
                  f"{b}'s times converted with that offset): median "
                  f"{w['median_gap_ms']:.3f} ms, largest {w['max_gap_ms']:.3f} ms.{inside} A try that starts "
                  f"outside it still connects: the early SYN is refused (RST) and retried until the two overlap. "
                  f"`SYN gap` is the same gap read from {a}'s pcap alone (B's SYN minus A's): it adds the "
                  f"difference between the delay each SYN actually got.", ""]
    lines += ["Each try uses its own port on both sides (so a try's TIME_WAIT never meets the next one). "
              "`attempts` counts connect() calls per side: every refused attempt is a SYN that arrived "
              "before the other side had connected and was answered with RST.", "",
              report.md_table(["try", "port", "ok", "handshake", "connect gap ms", "SYN gap ms", "attempts A/B",
                               "RSTs", "connect s A/B", "opening (pcap, A=" + a + ")", "states A | B (tracepoint)"],
                              [[r["try"], r["port"], "yes" if r["ok"] else "NO", r["kind"],
                                f"{r['connect_gap_ms']:+.3f}",
                                "-" if r["syn_gap_ms"] is None else f"{r['syn_gap_ms']:+.3f}",
                                "/".join(map(str, r["attempts"])), r["rsts"],
                                "/".join(f"{x:.3f}" for x in r["seconds"]), ", ".join(r["opening"]),
                                " \\| ".join("→".join(s or ["?"]) for s in r["states"]) if r["states"] else "-"]
                               for r in an["tries"]], align="rlllrrrrlll")]
    if ladder:
        lines += ["## Ladder diagram of one handshake", "", f"![ladder]({ladder.name})", "",
                  "Time runs down. Each arrow starts at the sender's capture time and ends at the receiver's; "
                  "in a simultaneous open the two SYNs cross, then the two SYN-ACKs cross.", ""]
    lines += ["## How to read this", "",
              "- A canonical simultaneous open shows in the pcap as each side sending SYN, receiving the other's "
              "SYN while still in SYN_SENT, and answering SYN-ACK (with its *own* ISN again and the peer's "
              "ISN+1). Neither side ever was a listener; both end up ESTABLISHED.",
              "- `syn-syn-ack` means both sides sent a SYN, but only one of them reached its peer while that "
              "peer was in SYN_SENT (the other arrived between two of the peer's attempts and was refused, or "
              "was dropped): that peer went SYN_SENT → SYN_RECV and answered SYN-ACK with its own ISN; the other "
              "took the SYN-ACK like a client, SYN_SENT → ESTABLISHED, and answered a plain ACK. The pcap tells "
              "the two apart by sequence numbers (a SYN-ACK that repeats its sender's own SYN's ISN), and the "
              "state trace agrees. Outside the timing window (or with --delay-ms 0) how often each happens "
              "depends on how the two retry loops interleave, i.e. on the machine's load.",
              "- Refused attempts are cheap on a LAN (one RTT); the random pause after each one is what makes "
              "two retrying peers eventually overlap.", "",
              f"Files: `{a}.pcap`, `{b}.pcap` (captured on each host's NIC on `{net}`), `data.json`.", "",
              report.environment_md(env),
              report.rerun_md(None, "lab-p2p")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return dispatch("p2p", {"peer": peer_main}, argv)


if __name__ == "__main__":
    sys.exit(main())
