"""The NAT lab's peer agent: per try, UDP then TCP, each by the first method
that fits the two NATs as the peers observed them through the rendezvous host,
and the relay when no direct path opened before the deadline.

  observe      send from the try's socket to two rendezvous ports: the two public
               endpoints seen tell the NAT's mapping (RFC 4787 §4.1): the same port
               twice is endpoint-independent (port-preserving if it is the local
               port), ports a small step apart are address-and-port-dependent with
               sequential allocation, anything else is taken as random allocation
  punch        both sides endpoint-independent: aim at the endpoint rz saw
  prediction   a sequential side's next mapping is its last one plus the step:
               the other side aims at a few ports from there
  birthday     a random side opens many sockets (--hard-sockets) toward the easy
               side's public endpoint, each creating its own mapping; the easy side
               probes random ports until one of them is such a mapping
  open filter  an easy side whose NAT lets other ports of an address in (RFC 4787
               endpoint-independent or address-dependent filtering) sends to the
               peer's address; the hard side just sends to it
  relay        through the rendezvous host (UDP datagrams, a spliced TCP stream)

TCP first tries UDP's punched mapping (a simultaneous open between the endpoints
the UDP punch found), then the same methods with non-blocking connect()s: nobody
listens; a probe SYN that meets a mapping reaches a socket in SYN_SENT
(simultaneous open).

The direct attempt's deadline is the host's own (`deadline_for`): each peer times
its probes at its start (`probe_costs`) and reads its round trip to rz; the pair's
deadline is the time the probes a plan needs take at those costs, twice over,
never under FLOOR: a second on namespaces, several on an emulated CPU.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import random
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

from .p2p import clock_offset, exchange, sleep_until

PORT_LO, PORT_HI = 1024, 65535      # where Linux NAT allocates ports for sources >= 1024
N_PORTS = PORT_HI - PORT_LO + 1
TICK = 0.005
BATCH = 32                          # probes per tick
MISS = 1e-3                         # the chance of a birthday miss the deadline leaves to the relay
FLOOR, CAP = 1.0, 15.0              # seconds: the deadline of earlier runs (met every goal on namespaces), the most
SAFETY = 2.0                        # the machine's load changes between the measurement and a try


# ================================================================ the direct attempt's deadline

def deadline_arg(text: str) -> float | None:
    """--deadline: `auto` (None: each try's from the measured costs) or fixed seconds."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor seconds") from None
    if not 0.05 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be 'auto' or 0.05 to 60 seconds (got {text})")
    return value


def probe_costs(batches: int = 4) -> dict:
    """Seconds a probe takes on this host, timed the way the lab probes: TCP, a new socket
    and a non-blocking connect() (toward a closed port on loopback, so no packet leaves
    the host; its reset makes it dearer than a real probe, never cheaper); UDP, a sendto();
    and the wait of one TICK after each BATCH, as it really lasts here (`tick_s`)."""
    sel = selectors.DefaultSelector()
    closed = socket.socket()                    # bound, not listening: its port refuses
    closed.bind(("127.0.0.1", 0))
    sink, idle = _udp_socket(), _udp_socket()   # idle: what the TICK waits on, as a quiet probe socket
    sel.register(idle, selectors.EVENT_READ)
    dst, udp_dst = closed.getsockname(), ("127.0.0.1", sink.getsockname()[1])
    out: dict = {}
    try:
        for proto in ("tcp", "udp"):
            work = ticks = 0.0
            for _ in range(batches):
                t0 = time.perf_counter()
                if proto == "tcp":
                    for c in [_connect(None, dst) for _ in range(BATCH)]:
                        if c is not None:
                            c.close()
                else:
                    for _ in range(BATCH):
                        sink.sendto(b"x", udp_dst)
                t1 = time.perf_counter()
                sel.select(TICK)
                ticks += time.perf_counter() - t1
                work += t1 - t0
                while True:
                    try:
                        sink.recv(64)
                    except BlockingIOError:
                        break
            out[proto] = {"probe_s": work / (batches * BATCH), "tick_s": ticks / batches}
    finally:
        sel.close()
        for x in (sink, idle, closed):
            x.close()
    return out


def deadline_for(pl: dict, me: dict, peer: dict, hard_sockets: int, probes: int) -> tuple[float, str]:
    """The direct attempt's deadline for this plan, from both sides' measured pace (each
    observation's "pace": probe_s, tick_s, rtt_s, and seen_s, the time a probe took in
    this side's last probing try, if any); both sides compute the same. Birthday
    against one random side: the hard side's sockets, then the probes that find one of
    its mappings with probability 1 - MISS (each hits with hard_sockets/N), at the
    easy side's cost and its TICK per BATCH, or what a probe really took the last time
    if that was longer, and three round trips; SAFETY times that,
    in FLOOR..CAP. Both sides random: no probe budget makes a direct match likely
    (two 1/N events), so the relay comes after FLOOR. Other plans aim at known ports: FLOOR."""
    rtt = max(me["pace"]["rtt_s"], peer["pace"]["rtt_s"])
    if pl["method"] != "birthday" or pl["role"] == "both-hard":
        why = ("both sides random: a direct match needs two 1/N events, the relay is the way"
               if pl["method"] == "birthday" else f"{pl['method']} aims at known ports")
        return max(FLOOR, SAFETY * 3 * rtt), why
    hard, easy = (me, peer) if pl["role"] == "hard" else (peer, me)
    k = min(probes, math.ceil(math.log(1 / MISS) * N_PORTS / hard_sockets))
    per_probe = max(easy["pace"]["probe_s"] + easy["pace"]["tick_s"] / BATCH, easy["pace"].get("seen_s", 0))
    need = hard_sockets * hard["pace"]["probe_s"] + k * per_probe + 3 * rtt
    deadline = min(CAP, max(FLOOR, SAFETY * need))
    why = (f"{hard_sockets} hard sockets x {hard['pace']['probe_s'] * 1e3:.3g} ms + {k} probes (P(hit) "
           f"{1 - (1 - hard_sockets / N_PORTS) ** k:.4f}) x {per_probe * 1e3:.3g} ms + 3 round trips of "
           f"{rtt * 1e3:.3g} ms = {need:.2f} s; x{SAFETY:g}" + ("" if deadline == SAFETY * need else
                                                                 f", held to {FLOOR:g}..{CAP:g} s"))
    return deadline, why


# ================================================================ observing the NAT

def classify(local_port: int, seen: list, filtering: str | None = None) -> dict:
    """The mapping behaviour from the two public endpoints rz saw (toward PORT, PORT+1)."""
    (ip, m0), (_, m1) = seen
    if m0 == m1:
        kind = "eim-preserving" if m0 == local_port else "eim"
    elif 0 < m1 - m0 <= 16:
        kind = "sequential"
    else:
        kind = "random"
    return {"kind": kind, "ip": ip, "private": local_port, "ports": [m0, m1], "step": m1 - m0,
            "filtering": filtering}


def easy(info: dict) -> bool:
    return info["kind"].startswith("eim")


def plan(me: dict, peer: dict, predict: int) -> dict:
    """What this side does, from both sides' observations (both compute it the same way).
    targets: the peer ports to aim at from the try's socket; hard: open many sockets;
    probe: aim at random peer ports."""
    if easy(me) and easy(peer):
        return {"method": "punch", "targets": [peer["ports"][0]]}
    # an easy side whose NAT lets in any port of an address it sent to: it sends to the
    # peer's address once (an address-dependent filter opens for it), and the hard side
    # just sends to it, from whatever mapping its NAT picks, and is answered there
    # (TCP: the easy side also listens — a SYN from an unknown port would meet no socket)
    if easy(me) and open_filter(me) and not open_filter(peer):
        return {"method": "punch", "targets": [peer["ports"][0]], "listen": True}
    if easy(peer) and open_filter(peer):
        # an address-dependent filter opens when the peer's first packet to us has left
        return {"method": "punch", "targets": [peer["ports"][0]], "peer_listens": True,
                "wait": 0.1 if peer["filtering"] == ADF else 0}
    if peer["kind"] == "sequential" and (easy(me) or me["kind"] == "sequential"):
        # an easy side can aim at several ports (its own mapping does not move); a
        # sequential side must send its first new packet to the one port predicted
        n = predict if easy(me) else 1
        last = peer["ports"][1]
        return {"method": "prediction", "targets": [last + peer["step"] * (j + 1) for j in range(n)]}
    if me["kind"] == "sequential" and easy(peer):
        return {"method": "prediction", "targets": [peer["ports"][0]]}
    if easy(me):
        return {"method": "birthday", "role": "easy", "probe": True, "targets": []}
    if easy(peer):
        return {"method": "birthday", "role": "hard", "hard": True, "targets": [peer["ports"][0]]}
    return {"method": "birthday", "role": "both-hard", "hard": True, "probe": True, "targets": []}


def open_filter(info: dict) -> bool:
    """Lets in other ports of an address this side has sent to (at least)."""
    return info.get("filtering") not in (None, APDF)


def _udp_socket(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.setblocking(False)
    return s


def _request(s: socket.socket, msg: dict, to: tuple, deadline: float, want: str,
             stray: list | None = None) -> dict | None:
    """Send a JSON datagram until a reply with `want` (and the same "key", if the
    message has one: a late duplicate answer to an earlier request is not this one's)
    comes back from `to`; what else arrives meanwhile goes to `stray` (as (data, addr)), if given."""
    raw = json.dumps(msg).encode()
    while time.time() < deadline:
        s.sendto(raw, to)
        end = time.time() + 0.05
        while time.time() < end:
            try:
                data, addr = s.recvfrom(4096)
            except BlockingIOError:
                time.sleep(0.002)
                continue
            if addr == to:
                reply = json.loads(data)
                if want in reply and reply.get("key") == msg.get("key"):
                    return reply
            elif stray is not None:
                stray.append((data, addr))
    return None


EIF, ADF, APDF = "endpoint-independent", "address-dependent", "address and port-dependent"


def observe_udp(s: socket.socket, rz_ip: str, port: int, deadline: float,
                alt_ip: str | None = None) -> tuple[list, str] | None:
    """The public endpoints toward PORT and PORT+1, and the filtering (RFC 4787 §5): rz
    answers an observation on PORT from PORT+2 as well, and from PORT on its second
    address `alt_ip`, where this socket never sent to. Both get through: the NAT filters
    on nothing (endpoint-independent); only the other port: on the address
    (address-dependent); neither: on address and port."""
    seen: list = []
    stray: list = []
    for off in (0, 1):
        r = _request(s, {"op": "observe"}, (rz_ip, port + off), deadline, "seen", stray)
        if r is None:
            return None
        seen.append(r["seen"])
    time.sleep(0.01)                         # the probe left rz with the first answer
    while True:
        try:
            stray.append(s.recvfrom(4096))
        except BlockingIOError:
            break
    probes = {addr for data, addr in stray if b"filter-probe" in data}
    if alt_ip and (alt_ip, port) in probes:
        return seen, EIF
    if (rz_ip, port + 2) in probes:
        return seen, ADF if alt_ip else f"{ADF} or {EIF}"
    return seen, APDF


def observe_tcp(local: tuple, rz_ip: str, port: int, deadline: float) -> list:
    seen = []
    for off in (0, 1):
        c = _tcp_socket(local)
        c.settimeout(max(0.1, deadline - time.time()))
        c.connect((rz_ip, port + off))
        buf = b""
        while b"\n" not in buf:
            chunk = c.recv(256)
            if not chunk:
                raise ConnectionError("rendezvous closed before saying what it saw")
            buf += chunk
        seen.append(json.loads(buf.split(b"\n")[0])["seen"])
        c.close()
    return seen


def _endpoint(addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def _tcp_socket(local: tuple | None) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if local:
        s.bind(local)
    return s


def _connect(src: tuple | None, dst: tuple) -> socket.socket | None:
    """One TCP probe: a non-blocking connect() from `src` (None: an ephemeral port);
    None when the kernel refused it at once."""
    c = _tcp_socket(src)
    c.setblocking(False)
    err = c.connect_ex(dst)
    if err not in (0, errno.EINPROGRESS):
        c.close()
        return None
    return c


# ================================================================ UDP

@dataclass
class UdpHandshake:
    """Both sides send PUNCH; whoever hears one answers ACK on that path. Done when
    this side has heard the peer and knows it was heard."""
    key: str
    name: str
    heard: bool = False
    acked: bool = False
    path: tuple | None = None               # (socket, peer address) that worked
    first_heard: float | None = None
    done_at: float | None = None
    log: list = field(default_factory=list)

    def msg(self, kind: str) -> bytes:
        return f"{kind} {self.key} {self.name}".encode()

    def receive(self, s: socket.socket, data: bytes, addr) -> bool:
        parts = data.decode(errors="replace").split()
        if len(parts) != 3 or parts[1] != self.key or parts[2] == self.name:
            return False                    # a stale probe of an earlier try, or rz
        if self.path is None:
            self.path = (s, addr)
            self.first_heard = time.time()
        if parts[0] == "PUNCH":
            self.heard = True
            s.sendto(self.msg("ACK"), addr)
        elif parts[0] == "ACK":
            self.acked = True
        self.mark()
        return True

    def mark(self) -> None:
        if self.done and self.done_at is None:
            self.done_at = time.time()

    @property
    def done(self) -> bool:
        return self.heard and self.acked


def udp_direct(hs: UdpHandshake, main: socket.socket, peer_ip: str, pl: dict, start_at: float,
               deadline: float, hard_sockets: int, probes: int, rng: random.Random) -> dict:
    socks = [main]
    if pl.get("hard"):
        socks += [_udp_socket() for _ in range(hard_sockets - 1)]
    sel = selectors.DefaultSelector()
    socks_by_fd = {s.fileno(): s for s in socks}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    candidates = rng.sample(range(PORT_LO, PORT_HI + 1), min(probes, PORT_HI - PORT_LO + 1)) if pl.get("probe") else []
    sent = 0
    span: list[float] = []                  # when probing began, when the last batch left
    try:
        sleep_until(start_at + (0.03 if pl.get("role") == "easy" else 0))   # the hard side's mappings first
        if pl.get("role") == "hard":
            for s in socks:                  # each socket's first packet opens its own mapping
                s.sendto(hs.msg("PUNCH"), (peer_ip, pl["targets"][0]))
        last_aim = on_path = 0.0
        while time.time() < deadline and not hs.done:
            now = time.time()
            if hs.path is not None:
                if now - on_path > 0.02:     # at once when the path is new: the peer waits to hear us
                    hs.path[0].sendto(hs.msg("PUNCH"), hs.path[1])
                    on_path = now
            elif candidates and sent < len(candidates):
                for x in candidates[sent:sent + BATCH]:
                    rng.choice(socks).sendto(hs.msg("PUNCH"), (peer_ip, x))
                sent = min(len(candidates), sent + BATCH)
                span[:] = [span[0] if span else now, time.time()]
            elif pl["targets"] and now - last_aim > 0.02 and pl.get("role") != "hard":
                for x in pl["targets"]:
                    main.sendto(hs.msg("PUNCH"), (peer_ip, x))
                last_aim = now
            for key, _ in sel.select(TICK):
                _drain(socks_by_fd[key.fd], hs)
        if hs.done:                          # the peer may still wait for our ACK
            linger = time.time() + 0.1
            while time.time() < linger:
                for key, _ in sel.select(TICK):
                    _drain(socks_by_fd[key.fd], hs)
        return {"probes": _probes_until(candidates, hs.path[1][1] if hs.path else None, sent),
                "probe_rate": _rate(sent, span), "sockets": len(socks),
                "peer_seen_as": _endpoint(hs.path[1]) if hs.path else None,
                "local_port": hs.path[0].getsockname()[1] if hs.path else None}
    finally:
        sel.close()
        for s in socks[1:]:
            s.close()


def _rate(sent: int, span: list[float]) -> float | None:
    """Probes per second from the first batch's start to the last one's end (`span`); None if
    this side did not probe."""
    return round(sent / max(span[1] - span[0], 1e-6)) if span and sent else None


def _probes_until(candidates: list[int], hit: int | None, sent: int) -> int | None:
    """Which probe found the peer (1-based), or all that were sent; None if this side did not probe."""
    if not candidates:
        return None
    return candidates.index(hit) + 1 if hit in candidates[:sent] else sent


def _drain(s: socket.socket, hs: UdpHandshake) -> None:
    while True:
        try:
            data, addr = s.recvfrom(2048)
        except BlockingIOError:
            return
        except OSError:                      # an ICMP error on a probe
            return
        hs.receive(s, data, addr)


def udp_relay(hs: UdpHandshake, s: socket.socket, relay: tuple, peer_name: str, deadline: float) -> dict:
    """Punch/ack through rz's relay port: the same handshake, carried in relay envelopes."""
    seen = None
    last = 0.0
    while time.time() < deadline and not hs.done:
        if time.time() - last > 0.02:
            for kind in (("PUNCH",) + (("ACK",) if hs.heard else ())):
                s.sendto(json.dumps({"key": hs.key, "name": hs.name, "peer": peer_name,
                                     "data": hs.msg(kind).decode()}).encode(), relay)
            last = time.time()
        try:
            data, addr = s.recvfrom(4096)
        except BlockingIOError:
            time.sleep(0.002)
            continue
        if addr != relay:
            continue
        msg = json.loads(data)
        if "data" not in msg:                # rz's filtering probe, late
            continue
        seen = msg["seen"]
        parts = msg["data"].split()
        if len(parts) == 3 and parts[1] == hs.key and parts[2] != hs.name:
            hs.heard |= parts[0] == "PUNCH"
            hs.acked |= parts[0] == "ACK"
            hs.mark()
    # one more round so the peer hears our ACK
    s.sendto(json.dumps({"key": hs.key, "name": hs.name, "peer": peer_name,
                         "data": hs.msg("ACK").decode()}).encode(), relay)
    return {"relay_seen_as": _endpoint(seen) if seen else None}


def meet(a, ctl: socket.socket, rz: tuple, key: str, me: dict, deadline: float, out: dict) -> tuple | None:
    """Through rz: tell the peer what our NAT did (and how fast this host probes), learn
    what its did, agree on a start time, a plan and the direct attempt's deadline.
    Records all of it (or why not) in `out`."""
    me = {**me, "pace": dict(a.pace[key.split("-")[0]])}      # as it is now: later tries update it
    out["nat"] = me
    paired = _request(ctl, {"op": "pair", "key": key, "name": a.name, "peer": a.peer_name, "info": me},
                      rz, deadline, "peer")
    if paired is None:
        out["error"] = "the rendezvous host did not pair us"
        return None
    peer = paired["peer"]
    pl = plan(me, peer, a.predict)
    direct_s, why = ((a.deadline, "fixed (--deadline)") if a.deadline is not None else
                     deadline_for(pl, me, peer, a.hard_sockets, a.probes))
    out.update(peer_nat=peer, method=pl["method"], role=pl.get("role"), targets=pl["targets"][:8],
               deadline_s=round(direct_s, 3), deadline_why=why)
    return peer, paired["start_at"] - a.rz_offset, pl, direct_s


def _pace_seen(a, proto: str, direct: dict) -> None:
    """What a probe really took in this try (from a full batch on), for the next tries' deadlines."""
    if direct.get("probe_rate") and (direct.get("probes") or 0) > BATCH:
        a.pace[proto]["seen_s"] = 1 / direct["probe_rate"]


def udp_try(a, i: int, ctl: socket.socket, rz: tuple, rng: random.Random) -> dict:
    key = f"udp-{i}"
    s = _udp_socket(a.udp_port + i)
    out: dict = {"ok": False, "outcome": "failed"}
    try:
        t_end = time.time() + (a.deadline or CAP) + a.relay_deadline + 3
        observed = observe_udp(s, rz[0], rz[1], t_end, a.rz_alt)
        if observed is None:
            return {**out, "error": "the rendezvous host did not answer"}
        met = meet(a, ctl, rz, key, classify(a.udp_port + i, *observed), t_end, out)
        if met is None:
            return out
        peer, start_at, pl, direct_s = met
        hs = UdpHandshake(key, a.name)
        direct = udp_direct(hs, s, peer["ip"], pl, start_at, start_at + direct_s, a.hard_sockets, a.probes, rng)
        out.update(direct)
        _pace_seen(a, "udp", direct)
        if hs.done:
            out.update(ok=True, outcome="direct-hole-punch", ms=round((hs.done_at - start_at) * 1e3, 1))
            return out
        if a.relay_deadline <= 0:
            return out
        hs = UdpHandshake(key, a.name)
        relayed = udp_relay(hs, s, (rz[0], rz[1] + 2), a.peer_name, time.time() + a.relay_deadline)
        out.update(relayed)
        if hs.done:
            out.update(ok=True, outcome="relayed", ms=round((hs.done_at - start_at) * 1e3, 1))
        return out
    finally:
        s.close()


# ================================================================ TCP

def tcp_direct(local: tuple, peer_ip: str, pl: dict, start_at: float, deadline: float,
               hard_sockets: int, probes: int, rng: random.Random) -> tuple[socket.socket | None, dict]:
    """Non-blocking connect()s as the plan says; the first that completes wins."""
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple] = {}
    by_fd: dict[int, socket.socket] = {}

    def connect(src: tuple | None, port: int) -> None:
        c = _connect(src, (peer_ip, port))
        if c is None:
            return
        pending[c] = (peer_ip, port)
        by_fd[c.fileno()] = c
        sel.register(c, selectors.EVENT_WRITE)

    candidates = rng.sample(range(PORT_LO, PORT_HI + 1), probes) if pl.get("probe") else []
    sent = refused = 0
    winner = None
    span: list[float] = []
    try:
        # an easy side probes once the hard side's mappings exist (a SYN that meets no mapping
        # is lost until its retransmission a second later)
        sleep_until(start_at + (0.05 if pl.get("role") == "easy" else pl.get("wait", 0)))
        if pl.get("listen"):
            server = _tcp_socket(local)
            server.listen(4)
            server.setblocking(False)
            pending[server] = ("listen",)
            by_fd[server.fileno()] = server
            sel.register(server, selectors.EVENT_READ)
        if pl.get("role") == "hard":
            for _ in range(hard_sockets):
                connect(None, pl["targets"][0])
        else:
            for x in pl["targets"]:
                connect(local, x)
        while winner is None and time.time() < deadline:
            if sent < len(candidates):
                began = time.time()
                src = None if pl.get("hard") else local
                for x in candidates[sent:sent + BATCH]:
                    connect(src, x)
                sent += BATCH
                span[:] = [span[0] if span else began, time.time()]
            for key, _ in sel.select(TICK):
                c = by_fd[key.fd]
                sel.unregister(c)
                if pending[c] == ("listen",):
                    winner = c.accept()[0]
                    break
                err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    winner = c
                    break
                if err == errno.ECONNREFUSED and not pl.get("role") and pending[c][1] in pl["targets"]:
                    # an open filter let our SYN in before the peer's socket was there (RST):
                    # again after a random pause, as on a LAN (p2p.simultaneous_connect)
                    refused += 1
                    port = pending.pop(c)[1]
                    c.close()
                    time.sleep(rng.uniform(0, 0.002))
                    connect(local, port)
        return winner, {"probes": _probes_until(candidates, winner.getpeername()[1] if winner else None,
                                                min(sent, len(candidates))),
                        "probe_rate": _rate(min(sent, len(candidates)), span),
                        "sockets": len(pending), "refused": refused}
    finally:
        sel.close()
        for c in pending:
            if c is not winner:
                c.close()


def tcp_relay(key: str, relay: tuple, deadline: float) -> tuple[socket.socket | None, dict]:
    c = socket.socket()
    c.settimeout(max(0.1, deadline - time.time()))
    try:
        c.connect(relay)
        c.sendall(json.dumps({"key": key}).encode() + b"\n")
        line = b""
        while not line.endswith(b"\n"):        # rz's first line: our endpoint as it saw it
            ch = c.recv(1)
            if not ch:
                raise ConnectionError("the relay closed before pairing us")
            line += ch
        return c, {"relay_seen_as": _endpoint(json.loads(line)["seen"])}
    except OSError as exc:
        c.close()
        return None, {"error": f"relay: {exc}"}


def tcp_on_udp_mapping(a, i: int, ctl: socket.socket, rz: tuple, udp: dict,
                       rng: random.Random) -> tuple[socket.socket | None, dict]:
    """A simultaneous open from the UDP hole's local port to the peer's endpoint the UDP
    punch found. TCP gets its own conntrack entry and NAT mapping: it lands on the
    punched port only where the NAT maps a private port to the same public port
    whatever the protocol (port preservation, a hash of the private endpoint), never
    where it picks a fresh port per new flow (sequential, random). Both sides try it
    when their own UDP punch worked; one that waits for its peer in vain goes on."""
    peer_ip, peer_port = udp["peer_seen_as"].rsplit(":", 1)
    info: dict = {"tried": True, "ok": False, "local_port": udp["local_port"], "peer": udp["peer_seen_as"]}
    paired = _request(ctl, {"op": "pair", "key": f"tcpu-{i}", "name": a.name, "peer": a.peer_name,
                            "info": {"udp": udp["peer_seen_as"]}}, rz, time.time() + a.reuse_deadline, "peer")
    if paired is None:
        return None, {**info, "error": "the peer did not try UDP's mapping"}
    start_at = paired["start_at"] - a.rz_offset
    s, more = tcp_direct((a.local, udp["local_port"]), peer_ip, {"targets": [int(peer_port)]}, start_at,
                         start_at + a.reuse_deadline, 0, 0, rng)
    return s, {**info, "ok": s is not None, "refused": more["refused"], "start_at": start_at}


def tcp_try(a, i: int, ctl: socket.socket, rz: tuple, rng: random.Random, udp: dict) -> dict:
    """TCP after this try's UDP (`udp`: its result): on UDP's punched mapping first, if
    there is one, else (or when that does not open) by its own observation and method;
    the routers filter TCP as they filter UDP, so UDP's filtering finding stands."""
    key = f"tcp-{i}"
    local = (a.local, a.tcp_port + i)
    out: dict = {"ok": False, "outcome": "failed"}
    if a.reuse and udp.get("outcome") == "direct-hole-punch" and udp.get("local_port"):
        s, out["udp_mapping"] = tcp_on_udp_mapping(a, i, ctl, rz, udp, rng)
        if s is not None:
            out["method"] = "udp-mapping"
            return _tcp_exchange(a, i, s, out, "direct-simultaneous-open", out["udp_mapping"].pop("start_at"))
    t_end = time.time() + (a.deadline or CAP) + a.relay_deadline + 3
    try:
        seen = observe_tcp(local, rz[0], rz[1], t_end)
    except OSError as exc:
        return {**out, "error": f"observe: {exc}"}
    met = meet(a, ctl, rz, key, classify(a.tcp_port + i, seen, udp.get("nat", {}).get("filtering")), t_end, out)
    if met is None:
        return out
    peer, start_at, pl, direct_s = met
    s, info = tcp_direct(local, peer["ip"], pl, start_at, start_at + direct_s, a.hard_sockets, a.probes, rng)
    out.update(info)
    _pace_seen(a, "tcp", info)
    # both sides connect(): a simultaneous open; a listener behind an open filter: a punched hole
    outcome = "direct-hole-punch" if pl.get("listen") or pl.get("peer_listens") else "direct-simultaneous-open"
    if s is None and a.relay_deadline > 0:
        s, info = tcp_relay(key, (rz[0], rz[1] + 2), time.time() + a.relay_deadline)
        out.update(info)
        outcome = "relayed"
    if s is None:
        return out
    return _tcp_exchange(a, i, s, out, outcome, start_at)


def _tcp_exchange(a, i: int, s: socket.socket, out: dict, outcome: str, start_at: float) -> dict:
    """A line each way over the connection that opened: then the try counts."""
    try:
        s.settimeout(3)
        if outcome != "relayed":
            out.update(peer_seen_as=_endpoint(s.getpeername()), local_port=s.getsockname()[1])
        out["received"] = exchange(s, a.name, f"#{i} over TCP")
        if out["received"].startswith("hello from"):
            out.update(ok=True, outcome=outcome, ms=round((time.time() - start_at) * 1e3, 1))
    except OSError as exc:
        out["error"] = f"exchange: {exc}"
    finally:
        s.close()
    return out


# ================================================================ the agent

def peer_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.nat peer")
    ap.add_argument("--name", required=True)
    ap.add_argument("--peer-name", required=True)
    ap.add_argument("--local", required=True, help="this peer's private address")
    ap.add_argument("--rz", required=True, help="rendezvous IP:PORT (PORT+1 observes too, PORT+2 relays)")
    ap.add_argument("--rz-alt", help="rz's second address, which sends a filtering probe from PORT")
    ap.add_argument("--udp-port", type=int, required=True, help="try i's UDP socket binds this + i")
    ap.add_argument("--tcp-port", type=int, required=True, help="try i's TCP sockets bind this + i")
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--deadline", type=deadline_arg, default=None,
                    help="seconds a direct attempt may take, or auto (default: from the measured probe costs)")
    ap.add_argument("--relay-deadline", type=float, default=2.0, help="seconds for the relay (0: no relay)")
    ap.add_argument("--predict", type=int, default=8, help="ports an easy side aims at past a sequential mapping")
    ap.add_argument("--hard-sockets", type=int, default=256)
    ap.add_argument("--probes", type=int, default=2048, help="random ports an easy side probes at most")
    ap.add_argument("--tcp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                    help="TCP first tries a simultaneous open on UDP's punched mapping")
    ap.add_argument("--reuse-deadline", type=float, default=0.3,
                    help="seconds for TCP on UDP's mapping (pairing included) before its own method")
    a = ap.parse_args(argv)
    ip, port = a.rz.rsplit(":", 1)
    rz = (ip, int(port))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)     # probes and hard sockets are fds
    need = a.hard_sockets + a.probes + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    rng = random.Random()
    ctl = _udp_socket()       # pairs the tries; its one mapping is made now, not inside a try's prediction
    if _request(ctl, {"op": "observe"}, rz, time.time() + 5, "seen") is None:
        print(f"the rendezvous host {a.rz} does not answer", file=sys.stderr)
        return 1
    # rz names each try's start on its own clock; two VMs' clocks can be seconds apart
    ctl.settimeout(0.2)
    clock = clock_offset(ctl, rz, time.time() + 5)
    ctl.setblocking(False)
    if clock is None:
        print(f"the rendezvous host {a.rz} does not tell its time", file=sys.stderr)
        return 1
    a.rz_offset = clock[1]
    costs = probe_costs()
    a.pace = {proto: {**c, "rtt_s": clock[0]} for proto, c in costs.items()}
    tries = []
    for i in range(a.tries):
        udp = udp_try(a, i, ctl, rz, rng)
        row = {"try": i, "udp": udp}
        if a.tcp:
            row["tcp"] = tcp_try(a, i, ctl, rz, rng, udp)
        tries.append(row)
    print(json.dumps({"name": a.name, "rz_clock": {"offset_ms": round(clock[1] * 1e3, 3),
                                                   "rtt_ms": round(clock[0] * 1e3, 3)},
                      "pace": a.pace, "tries": tries}), flush=True)
    return 0
