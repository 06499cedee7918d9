"""Lab nat: why P2P needs simultaneous open — UDP hole punching and TCP
simultaneous open through two NAT routers (labs/p2p/nat.yml).

Peers pa and pb sit on private LANs behind routers ra and rb, which masquerade
onto the lab's `wan`, where the rendezvous server rz lives. Each peer
registers with rz from the very port it will use for the peer (UDP and TCP),
learns the other's *public* endpoint (what rz saw), and then:

  UDP   both send datagrams to each other's public endpoint; the first one out
        of each NAT opens a mapping + conntrack entry ("punches the hole"), so
        the other's datagrams are let in as replies;
  TCP   both connect() from their fixed port to the other's public endpoint at
        a time rz gives them: the SYNs create the same conntrack entries, and
        the kernel's simultaneous-open path completes the handshake. No peer
        listens — a listener behind a NAT is unreachable.

The routers behave like home routers: unsolicited packets from `wan` are
dropped silently (no RST, no ICMP), as they must be for the punching to work.
The knob is each router's NAT behaviour:

  cone       plain `masquerade`: the source port is kept when it can be
             (port-preserving, endpoint-independent mapping)
  symmetric  `masquerade fully-random`: every destination gets a new random
             port, so what rz saw is not what the peer will see

    hpnlab --lab labs/p2p/nat.yml lab nat
    python -m hpnlab.labs.nat rendezvous|peer ...      (the agents)
"""
from __future__ import annotations

import argparse
import json
import random
import select
import signal
import socket
import sys
import time
from pathlib import Path

from .. import report
from . import pcap
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
from .p2p import exchange, simultaneous_connect

HELP = "NAT traversal: UDP hole punching and TCP simultaneous open through cone / symmetric NATs"
RZ_PORT = 9000
SCENARIOS = (("cone", "cone"), ("cone", "symmetric"), ("symmetric", "symmetric"))
HOSTS = ("pa", "pb", "ra", "rb", "rz")
TABLE = "hpnlab_nat"


# ================================================================ agents

def rendezvous_main(argv: list[str]) -> int:
    """Pair two peers of one session over UDP and TCP; tell each the other's
    public endpoint (the source address this server saw)."""
    ap = argparse.ArgumentParser(prog="hpnlab.labs.nat rendezvous")
    ap.add_argument("--port", type=int, default=RZ_PORT)
    ap.add_argument("--lead", type=float, default=0.5, help="seconds from pairing to the TCP start time")
    a = ap.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("0.0.0.0", a.port))
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", a.port))
    t.listen(8)
    udp_seen: dict[str, tuple] = {}
    tcp_seen: dict[str, tuple] = {}
    tcp_conns: dict[str, socket.socket] = {}
    pending: dict[socket.socket, bytes] = {}
    log = {"udp": {}, "tcp": {}}
    print(json.dumps({"listening": True}), flush=True)
    while not stop:
        r, _, _ = select.select([u, t, *pending, *tcp_conns.values()], [], [], 0.1)
        for s in r:
            if s is u:
                data, addr = u.recvfrom(2048)
                msg = json.loads(data)
                udp_seen[msg["name"]] = addr
                log["udp"][msg["name"]] = f"{addr[0]}:{addr[1]}"
                other = msg["peer"]
                if other in udp_seen:
                    u.sendto(json.dumps({"self": udp_seen[msg["name"]], "peer": udp_seen[other]}).encode(), addr)
            elif s is t:
                c, _ = t.accept()
                pending[c] = b""
            elif s in pending:
                chunk = s.recv(1024)
                if not chunk:
                    del pending[s]
                    s.close()
                    continue
                pending[s] += chunk
                if b"\n" in pending[s]:
                    msg = json.loads(pending.pop(s).split(b"\n")[0])
                    tcp_seen[msg["name"]] = s.getpeername()
                    tcp_conns[msg["name"]] = s
                    log["tcp"][msg["name"]] = "%s:%d" % s.getpeername()
                    if len(tcp_conns) == 2:
                        start_at = time.time() + a.lead
                        names = list(tcp_conns)
                        for me, other in ((names[0], names[1]), (names[1], names[0])):
                            tcp_conns[me].sendall(json.dumps({"self": tcp_seen[me], "peer": tcp_seen[other],
                                                              "start_at": start_at}).encode() + b"\n")
            else:                                   # a registered peer closed its rendezvous connection
                if not s.recv(1024):
                    for k, v in list(tcp_conns.items()):
                        if v is s:
                            del tcp_conns[k]
                    s.close()
    print(json.dumps(log), flush=True)
    return 0


def udp_punch(name: str, peer_name: str, port: int, rz: tuple, timeout: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.1)
    out = {"ok": False, "sent": 0, "received_from": None}
    deadline = time.time() + timeout
    reg = json.dumps({"name": name, "peer": peer_name}).encode()
    info = None
    while info is None and time.time() < deadline:        # register until rz knows both of us
        s.sendto(reg, rz)
        try:
            data, addr = s.recvfrom(2048)
            if addr == rz:
                info = json.loads(data)
        except socket.timeout:
            pass
    if info is None:
        out["error"] = "rendezvous did not pair us"
        return out
    peer = tuple(info["peer"])
    out.update(self_public="%s:%d" % tuple(info["self"]), peer_public="%s:%d" % peer)
    got_punch = got_ack = False
    acks_to_send = 0
    while time.time() < deadline and not (got_punch and got_ack and acks_to_send == 0):
        s.sendto(b"PUNCH " + name.encode(), peer)
        out["sent"] += 1
        if acks_to_send:
            s.sendto(b"ACK " + name.encode(), peer)
            acks_to_send -= 1
        end = time.time() + 0.05
        while time.time() < end:
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                break
            if addr == rz:
                continue
            out["received_from"] = "%s:%d" % addr
            if data.startswith(b"PUNCH"):
                got_punch = True
                acks_to_send = 3
            elif data.startswith(b"ACK"):
                got_ack = True
    out["ok"] = got_punch and got_ack       # each side heard the other, and knows it was heard
    out["got_punch"], out["got_ack"] = got_punch, got_ack
    return out


def tcp_open(name: str, peer_name: str, local_ip: str, port: int, rz: tuple, timeout: float) -> dict:
    out = {"ok": False}
    r = socket.socket()
    r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    r.bind((local_ip, port))
    r.settimeout(timeout + 5)
    r.connect(rz)
    r.sendall(json.dumps({"name": name, "peer": peer_name}).encode() + b"\n")
    buf = b""
    while b"\n" not in buf:
        chunk = r.recv(1024)
        if not chunk:
            out["error"] = "rendezvous closed"
            return out
        buf += chunk
    info = json.loads(buf.split(b"\n")[0])
    peer = tuple(info["peer"])
    out.update(self_public="%s:%d" % tuple(info["self"]), peer_public="%s:%d" % peer)
    s, stats = simultaneous_connect((local_ip, port), peer, info["start_at"], timeout, jitter_ms=5.0,
                                    rng=random.Random())
    out.update(stats)
    if s is not None:
        try:
            out["received"] = exchange(s, name, "over TCP through two NATs")
            out["ok"] = out["received"].startswith("hello from")
            out["peer_seen_as"] = "%s:%d" % s.getpeername()
        except OSError as exc:
            out["error"] = str(exc)
        finally:
            s.close()
    r.close()
    return out


def peer_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.nat peer")
    ap.add_argument("--name", required=True)
    ap.add_argument("--peer-name", required=True)
    ap.add_argument("--local", required=True, help="this peer's private address")
    ap.add_argument("--rz", required=True, help="rendezvous IP:PORT")
    ap.add_argument("--udp-port", type=int, required=True)
    ap.add_argument("--tcp-port", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=3.0)
    a = ap.parse_args(argv)
    ip, port = a.rz.rsplit(":", 1)
    rz = (ip, int(port))
    res = {"name": a.name,
           "udp": udp_punch(a.name, a.peer_name, a.udp_port, rz, a.timeout),
           "tcp": tcp_open(a.name, a.peer_name, a.local, a.tcp_port, rz, a.timeout)}
    print(json.dumps(res), flush=True)
    return 0


# ================================================================ orchestration

def nat_rules(lan_if: str, wan_if: str, lan_net: str, mode: str) -> str:
    """An nftables ruleset for a home-router-like NAT: masquerade from the
    private LAN onto `wan` only; drop whatever comes in from `wan` unasked."""
    masq = "masquerade fully-random" if mode == "symmetric" else "masquerade"
    return f"""
table ip {TABLE} {{
  chain nat_post {{ type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan_if}" ip saddr {lan_net} {masq}
  }}
  chain filter_fwd {{ type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "{lan_if}" oifname "{wan_if}" ip saddr {lan_net} accept
  }}
  chain filter_in {{ type filter hook input priority filter; policy accept;
    iifname "{wan_if}" ct state new,invalid drop
  }}
}}
"""


def add_arguments(p) -> None:
    p.add_argument("--scenarios", default=",".join(f"{a}-{b}" for a, b in SCENARIOS),
                   help="NAT pairs to try: cone-cone,cone-symmetric,symmetric-symmetric")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds each peer tries (UDP, then TCP)")


def run(provider, args, step) -> dict:
    missing = [h for h in HOSTS if h not in provider.lab.hosts]
    if missing:
        raise LabError(f"lab {provider.lab.name} has no host(s) {', '.join(missing)}: the NAT lab runs on "
                       "labs/p2p/nat.yml (`hpnlab --lab labs/p2p/nat.yml lab --up nat`)")
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
    rz_ip = str(rz.address("wan"))
    out = report.results_dir("nat", getattr(args, "results", None))
    scenarios = [tuple(s.split("-")) for s in args.scenarios.split(",") if s]
    for sc in scenarios:
        if len(sc) != 2 or any(m not in ("cone", "symmetric") for m in sc):
            raise LabError(f"bad scenario {'-'.join(sc)!r}: use cone-cone, cone-symmetric, symmetric-symmetric")
    env = report.fingerprint(provider, ["net.ipv4.ip_forward", "net.netfilter.nf_conntrack_tcp_loose"], hosts)
    results = []
    routes = []
    try:
        for key, (peer, router, lan) in side.items():
            via = str(router.address(lan))
            peer.run(["ip", "route", "replace", str(wan_net.subnet), "via", via])
            routes.append((peer, str(wan_net.subnet)))
        base = 45000 + (int(time.time()) % 10) * 100
        for i, (mode_a, mode_b) in enumerate(scenarios):
            name = f"{mode_a}-{mode_b}"
            step(f"{name}: ra {mode_a}, rb {mode_b}")
            for (peer, router, lan), mode in ((side["a"], mode_a), (side["b"], mode_b)):
                lan_if = router.nic(lan).ifname
                wan_if = router.nic("wan").ifname
                router.run(["nft", "delete", "table", "ip", TABLE], check=False)
                router.run(["nft", "-f", "-"], input=nat_rules(lan_if, wan_if, str(lab.networks[lan].subnet), mode))
            udp_port, tcp_port = base + 10 * i, base + 10 * i + 5
            rzp = rz.start(agent_argv(rz, "nat", "rendezvous", "--port", RZ_PORT), name=f"nat-rz-{i}")
            try:
                rz.wait_for_port(RZ_PORT)
                common = ["--rz", f"{rz_ip}:{RZ_PORT}", "--udp-port", udp_port, "--tcp-port", tcp_port,
                          "--timeout", args.timeout]
                bpf = "tcp or udp"
                with Capture(provider, "ra:wan", out / f"{name}-ra.pcap", bpf), \
                        Capture(provider, "rb:wan", out / f"{name}-rb.pcap", bpf):
                    res = run_agents({
                        pa: agent_argv(pa, "nat", "peer", "--name", "pa", "--peer-name", "pb",
                                       "--local", str(pa.address("lan_a")), *common),
                        pb: agent_argv(pb, "nat", "peer", "--name", "pb", "--peer-name", "pa",
                                       "--local", str(pb.address("lan_b")), *common)},
                        timeout=4 * args.timeout + 20)
            finally:
                with deferred_interrupts():
                    rzp.stop(3)
            results.append(analyse(name, mode_a, mode_b, res, out / f"{name}-ra.pcap", rz_ip))
    finally:
        with deferred_interrupts():
            for router in (ra, rb):
                router.run(["nft", "delete", "table", "ip", TABLE], check=False)
            for peer, net in routes:
                peer.run(["ip", "route", "del", net], check=False)
    md = render(results, env)
    path = report.write_report(out, md, {"scenarios": results, "environment": env})
    return {"report": path, "dir": out, "scenarios": results}


def analyse(name: str, mode_a: str, mode_b: str, res: dict, pcap_path: Path, rz_ip: str) -> dict:
    a, b = res["pa"], res["pb"]
    allsegs = pcap.read_pcap(pcap_path)
    segs = [s for s in allsegs if s.proto == "tcp" and rz_ip not in (s.src, s.dst)]
    # the public ports each NAT really used toward the other peer (UDP), from the wan capture
    pub = {k: r["udp"].get("self_public", "?:").split(":")[0] for k, r in (("a", a), ("b", b))}
    used = {k: sorted({s.sport for s in allsegs if s.proto == "udp" and s.src == pub[k]
                       and s.dst == pub["b" if k == "a" else "a"]}) for k in ("a", "b")}
    kind = "failed"
    conns = pcap.connections(segs)
    if conns:
        best = max(conns.values(), key=lambda c: sum(1 for s in c if s.has(pcap.SYN, pcap.ACK)))
        kind = pcap.handshake_kind(best)
    return {
        "scenario": name, "nat_a": mode_a, "nat_b": mode_b,
        "udp_ok": a["udp"]["ok"] and b["udp"]["ok"],
        "tcp_ok": a["tcp"]["ok"] and b["tcp"]["ok"],
        "tcp_handshake": ("failed" if not (a["tcp"]["ok"] and b["tcp"]["ok"]) else
                          kind if kind != "failed" else "(not in the pcap)"),
        "a": a, "b": b,
        "udp_ports_toward_peer": used,
        "wan_syns": sum(1 for s in segs if s.has(pcap.SYN) and not s.flags & pcap.ACK),
        "wan_rsts": sum(1 for s in segs if s.flags & pcap.RST),
    }


def _mapping(row: dict, side: str) -> str:
    """UDP: the public port rz saw, the port(s) the NAT used toward the peer, what the peer received."""
    me, other = row[side], row["b" if side == "a" else "a"]
    rz_port = me["udp"].get("self_public", "?:?").split(":")[1]
    used = ",".join(map(str, row["udp_ports_toward_peer"][side][:3])) or "-"
    got = other["udp"].get("received_from")
    return f"rz saw :{rz_port}; toward peer :{used}; peer got {':' + got.split(':')[1] if got else 'nothing'}"


def render(results: list[dict], env: dict) -> str:
    L = ["# NAT lab: UDP hole punching and TCP simultaneous open through two NATs", "",
         "pa (10.77.11.10) behind ra, pb (10.77.12.10) behind rb, rendezvous rz on the lab's `wan` "
         "(10.77.10.0/24). Each peer registers with rz from the port it will use, learns the other's "
         "public endpoint, then punches: UDP first, then TCP simultaneous open from the same fixed port.", "",
         report.md_table(["ra NAT", "rb NAT", "UDP hole punch", "TCP simultaneous open", "TCP handshake (pcap at ra)",
                          "ra's mapping for pa (UDP)", "rb's mapping for pb (UDP)", "SYNs on wan"],
                         [[r["nat_a"], r["nat_b"], "ok" if r["udp_ok"] else "FAILED",
                           "ok" if r["tcp_ok"] else "FAILED", r["tcp_handshake"],
                           _mapping(r, "a"), _mapping(r, "b"),
                           r["wan_syns"]] for r in results], align="llllllll"),
         "## Why", "",
         "- **cone (port-preserving) on both sides — works.** Plain `masquerade` keeps the peer's source "
         "port, so the endpoint rz saw is the endpoint the other peer must aim at. The first packet each "
         "peer sends creates a NAT mapping and a conntrack entry whose *reply* tuple is exactly the other "
         "peer's public endpoint; the other peer's packets then count as replies (ct state established) "
         "and are let in. For TCP the first SYN out of a NAT is usually dropped by the other router (it "
         "has no entry yet); the second side's SYN then finds the entry, reaches a peer sitting in "
         "SYN_SENT, and that peer answers SYN-ACK — the SYN/SYN/SYN-ACK/ACK shape (`syn-syn-ack`), or the "
         "full six-way simultaneous open when the two SYNs cross on the wan.",
         "- **Why simultaneous open and not listen()?** A listening peer behind a NAT never sees the "
         "other's SYN: the router drops unsolicited packets. Only an *outgoing* SYN opens the hole, so both "
         "sides must connect(), and each side's kernel must accept a SYN while in SYN_SENT — that is TCP "
         "simultaneous open.",
         "- **symmetric on either side — fails.** `masquerade fully-random` gives every new destination "
         "its own random public port: the port rz saw (and passed on) is not the port the peer's packets "
         "to the other peer leave from. The other side aims at a port with no mapping behind it, and its "
         "own hole was punched for a port the symmetric side never uses. Linux conntrack filters on the "
         "full address *and port* (port-restricted), so even the cone side cannot accept the symmetric "
         "side's packets. Getting through needs port prediction or a relay (TURN).",
         "- The routers silently drop unsolicited packets from `wan` (`ct state new` on input and forward): "
         "a RST or ICMP error from them would tear down the other peer's half-open attempt; and because the "
         "drop happens before the conntrack entry is confirmed, it leaves no entry that would make "
         "`masquerade` pick another port later.", "",
         "Files: two pcaps per scenario, captured on each router's `wan` NIC (`<scenario>-ra.pcap`, "
         "`-rb.pcap`: public addresses only, including the packets the router then drops), `data.json` "
         "(every agent's view).", "",
         report.environment_md(env), report.rerun_md(None, "lab-p2p")]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    return dispatch("nat", {"rendezvous": rendezvous_main, "peer": peer_main}, argv)


if __name__ == "__main__":
    sys.exit(main())
