"""Lab rudp: reliable UDP (course §2.2.2, ARQ 自动重传请求) in KCP's own test scenario.

KCP's test.cpp: a link with 10 % round-trip loss (5 % each way) and a 60-125 ms RTT; one end
sends an 8-byte message (index, send time) every 20 ms, the other echoes it; the sender records
each message's RTT. Here the link is the lab's: the two hosts' data NICs get the lab's
impairment (netem where the kernel has it, else nftables loss + the NFQUEUE delay line) for
the run, and the same scenario runs for

    hpnlab   hpnlab.rudp.arq in KCP's default / normal / fast modes (its fast flushes what is
             owed - ACKs, new data - whenever output is taken, not at the next 10 ms tick: an
             ACK and the echo it answers leave at once, in one datagram)
    ckcp     C ikcp (PyPI `kcp`, skywind3000's ikcp.c) in the same modes
    tcp      TCP, with and without TCP_NODELAY

Overhead: UDP payload bytes both ends sent (retransmissions, ACKs, probes) over what a perfect
run needs (each message once each way in one 24-byte-header segment, and one ACK for it).

In each round hpnlab and C ikcp of one mode run side by side (released together by a start
barrier), so the link and the machine are the same for both; netem's losses still fall on each
datagram apart, so the goal is the median of the rounds' ratios, and a difference counts only
when every round falls on the same side of 1 (`paired`).

    hpnlab lab rudp [--count 1000] [--quick]
    python -m hpnlab.labs.rudp echo|ping ...     (the agents)
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import struct
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .. import report
from ._agent import dispatch, listener
from ._kit import Capture, LabError, agent_argv, deferred_interrupts, host_pair, need_tools

HELP = "reliable UDP: hpnlab's KCP-format ARQ vs C ikcp vs TCP in KCP's scenario (10 percent loss)"
PORT = 44000
MSG = struct.Struct("<II")                     # index, send time (ms, the sender's clock)
PERFECT_BYTES = 2 * (24 + MSG.size + 24)       # per message: a PUSH and its ACK, each way
CONFIGS = [("hpnlab", m) for m in ("default", "normal", "fast")] + \
          [("ckcp", m) for m in ("default", "normal", "fast")] + [("tcp", "nodelay"), ("tcp", "nagle")] + \
          [("quic", "default")]
SWEEP_CONFIGS = ["hpnlab:fast", "ckcp:fast", "tcp:nodelay", "quic:default"]
SWEEP_PORT, UDP_PORT = 46000, 47000
FULL: dict[str, object] = {"count": 1000, "rounds": 4,
        "configs": ",".join(f"{i}:{m}" for i, m in CONFIGS if i != "quic"),
        "sweep": "0,1,5,10,20", "sweep_configs": ",".join(SWEEP_CONFIGS), "sweep_count": 300,
        "bulk_seconds": 3.0, "udp_clients": "16,256", "udp_seconds": 3.0}
QUICK = {**FULL, "count": 200, "rounds": 2, "sweep": "0,10,20", "sweep_count": 100, "bulk_seconds": 1.5,
         "udp_clients": "16,128", "udp_seconds": 1.5}
# QEMU TCG runs Python some 10-50x slower: the ARQ's 1 ms loop and the delay line lag behind
EMULATED = {**FULL, "count": 300, "rounds": 2, "sweep": "0,10,20", "sweep_count": 150, "bulk_seconds": 2.0,
            "udp_clients": "16,64", "udp_seconds": 2.0}
# on VMs and machines the labcode role puts them in <prefix>/vendor (labcode.VENDOR), here the venv has them
_FIX = "`make setup` here; on VMs and machines `make lab-up` (the labcode role) copies it"
PYTHON_NEEDS = {"ckcp": ("kcp.extension", _FIX), "quic": ("aioquic", _FIX)}
CONV = 0x68706E6C
IMPLS = ("hpnlab", "ckcp", "tcp", "quic")
CHUNK = 1024                                   # bulk runs: bytes per message
END = b"\x00"                                  # bulk runs: the source's last message
IMPAIR_QUEUE = 78
WIRE_TABLE = "hpnlab_rudp_wire"


def now_ms() -> int:
    return int(time.monotonic() * 1000)


def make_arq(impl: str, mode: str, client: bool = False, ikcp_rules: bool = False):
    from ..rudp.arq import MODES, Arq
    if impl == "quic":
        from ..rudp.quic import Quic
        return Quic(client=client)
    if impl == "hpnlab":
        arq = Arq(CONV, snd_wnd=128, rcv_wnd=128, ikcp_rules=ikcp_rules)
        arq.nodelay(*MODES[mode])
        return arq
    from ..rudp.ckcp import CKcp
    return CKcp(CONV, MODES[mode], snd_wnd=128, rcv_wnd=128)


# ================================================================ agents

def _arq_loop(sock: socket.socket, arq, on_message, done, deadline: float, produce=None) -> dict:
    """test.cpp's loop: every millisecond queue what is due (`produce(t)`), update, then take
    what arrived; until done(seconds since the last datagram came in). Returns how late the
    loop ran: updates, the longest gap between two (ms), and the gaps over 2 ms - on the
    virtual clock every gap is 1 ms; a busy machine stretches them.

    `produce` runs before `update` on the same clock reading: a message due at a flush tick
    leaves at that tick. (Queued after it, each waited a whole interval; queued at the run's
    start, each waited (import time mod 10 ms) - a phase the agent's imports set, 12-15 ms for
    hpnlab and 60-70 ms for C ikcp, which moved one run's average by up to 5 ms either way.)"""
    last_in = time.monotonic()
    loop = {"updates": 0, "gap_max_ms": 0, "gaps_over_2ms": 0}
    prev = now_ms()
    while time.monotonic() < deadline:
        t = now_ms()
        loop["updates"] += 1
        loop["gap_max_ms"] = max(loop["gap_max_ms"], t - prev)
        loop["gaps_over_2ms"] += t - prev > 2
        prev = t
        if produce:
            produce(t)
        arq.update(t)
        for d in arq.pop_output():
            _send(sock, d)
        if select.select([sock], [], [], 0.001)[0]:
            while True:
                try:
                    d = sock.recv(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                arq.input(d, now_ms())
                last_in = time.monotonic()
        while (m := arq.recv()) is not None:
            on_message(m)
        if done(time.monotonic() - last_in):
            return loop
    raise TimeoutError("the run did not finish in time")


def _send(sock: socket.socket, datagram: bytes) -> None:
    try:
        sock.send(datagram)
    except ConnectionRefusedError:          # the peer's port closed (ICMP): it has finished
        pass
    except BlockingIOError:
        # the send buffer is full (datagrams the delay line holds still count against it):
        # wait for room a moment; past that the datagram is lost here, and the protocol resends
        if select.select([], [sock], [], 0.05)[1]:
            try:
                sock.send(datagram)
            except (BlockingIOError, ConnectionRefusedError):
                pass


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)    # up to wmem_max
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)    # up to rmem_max
    return sock


def _udp_peer(port: int, impl: str, mode: str):
    """The serving end of a UDP run: wait for the first datagram, connect to its sender
    (the kernel then demultiplexes that peer to this socket), hand the datagram over."""
    sock = _udp_socket()
    sock.bind(("0.0.0.0", port))
    first, peer = sock.recvfrom(65536)
    sock.connect(peer)
    sock.setblocking(False)
    arq = make_arq(impl, mode)
    if impl == "quic":
        arq.peer = peer
    arq.input(first, now_ms())
    return sock, arq


def _udp_client(to: str, impl: str, mode: str):
    host, port = to.rsplit(":", 1)
    sock = _udp_socket()
    sock.connect((host, int(port)))
    sock.setblocking(False)
    arq = make_arq(impl, mode, client=True)
    if impl == "quic":
        arq.connect((host, int(port)), now_ms())
    return sock, arq


def echo_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.rudp echo")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--impl", choices=IMPLS, required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args(argv)
    deadline = time.monotonic() + a.timeout
    if a.impl == "tcp":
        ls = listener(a.port, 1)
        conn, _ = ls.accept()
        if a.mode == "nodelay":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(a.count):
            msg = conn.recv(MSG.size, socket.MSG_WAITALL)
            if len(msg) < MSG.size:
                raise SystemExit("the client closed early")
            conn.sendall(msg)
        conn.recv(1)
        print(json.dumps({"echoed": a.count}))
        return 0
    sock, arq = _udp_peer(a.port, a.impl, a.mode)
    echoed = 0

    def echo(m: bytes) -> None:
        nonlocal echoed
        arq.send(m)
        echoed += 1
    # done once all are echoed, acknowledged and the pinger has been quiet for a second (it may
    # still need our ACKs); or, if the pinger left before its last ACK got here, after 10 s of
    # silence (a backed-off RTO in default mode can itself be seconds: less would leave early)
    loop = _arq_loop(sock, arq, echo, lambda idle: echoed >= a.count and (
        idle > 1 and arq.waiting == 0 or idle > 10 or getattr(arq, "closed", False)), deadline)
    print(json.dumps({"echoed": echoed, "stats": dict(arq.stats), "loop": loop}))
    return 0


def ping_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.rudp ping")
    ap.add_argument("--to", required=True, help="IP:PORT of the echo agent")
    ap.add_argument("--impl", choices=IMPLS, required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--every-ms", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--go-dir", help="once set up, say so (DIR/ready-PORT) and start when DIR/go appears: "
                    "pingers run side by side start together")
    a = ap.parse_args(argv)
    host, port = a.to.rsplit(":", 1)
    deadline = time.monotonic() + a.timeout
    rtts: list[int] = []
    start = now_ms()

    def due(i: int) -> int:
        return start + i * a.every_ms

    if a.impl == "tcp":
        s = socket.create_connection((host, int(port)), timeout=a.timeout)
        if a.mode == "nodelay":
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sent, buf = 0, b""
        _wait_for_go(a.go_dir, port, deadline)
        start, began = now_ms(), time.time()
        while len(rtts) < a.count:
            if time.monotonic() > deadline:
                raise TimeoutError("the run did not finish in time")
            if sent < a.count and now_ms() >= due(sent):
                s.send(MSG.pack(sent, now_ms() & 0xFFFFFFFF))   # 8 bytes always fit the send buffer
                sent += 1
            wait = max(0, due(sent) - now_ms()) / 1000 if sent < a.count else 0.05
            if select.select([s], [], [], wait)[0]:
                buf += s.recv(65536)
                while len(buf) >= MSG.size:
                    _, ts = MSG.unpack_from(buf)
                    buf = buf[MSG.size:]
                    rtts.append((now_ms() - ts) & 0xFFFFFFFF)
        s.close()
        print(json.dumps({"rtts": rtts, "stats": {}, "span": [began, time.time()]}))
        return 0
    sock, arq = _udp_client(a.to, a.impl, a.mode)
    sent = 0
    order: list[int] = []
    first_tick: int | None = None

    def produce(t: int) -> None:
        nonlocal sent, first_tick
        if first_tick is None:             # the ARQ's clock starts at this first update
            if not getattr(arq, "ready", True):
                return                     # QUIC: messages start once the handshake is done
            first_tick = t
        while sent < a.count and t >= first_tick + sent * a.every_ms:
            arq.send(MSG.pack(sent, t & 0xFFFFFFFF))
            sent += 1

    def got(m: bytes) -> None:
        i, ts = MSG.unpack(m)
        order.append(i)
        rtts.append((now_ms() - ts) & 0xFFFFFFFF)

    def done(idle: float) -> bool:
        if len(rtts) >= a.count and hasattr(arq, "close"):
            arq.close()                    # QUIC: say goodbye (aioquic's close is idempotent)
        return len(rtts) >= a.count and idle > 0.3      # a moment to acknowledge the last echoes
    _wait_for_go(a.go_dir, port, deadline)
    began = time.time()                    # wall clock: runs side by side are compared on it
    loop = _arq_loop(sock, arq, got, done, deadline, produce)
    print(json.dumps({"rtts": rtts, "stats": dict(arq.stats), "in_order": order == list(range(a.count)),
                      "span": [began, time.time()], "loop": loop}))
    return 0


def _wait_for_go(go_dir: str | None, port: str, deadline: float) -> None:
    """The start barrier of pingers run side by side (their agents take seconds to start on an
    emulated CPU, longer than a short run): ready, then wait for the go."""
    if go_dir is None:
        return
    Path(go_dir, f"ready-{port}").touch()
    while not os.path.exists(os.path.join(go_dir, "go")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {go_dir}/go before the run's deadline")
        time.sleep(0.001)


def sink_main(argv: list[str]) -> int:
    """Bulk: take what the source sends until it is done; report the bytes and the time from
    the first message to the last (goodput)."""
    ap = argparse.ArgumentParser(prog="hpnlab.labs.rudp sink")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--impl", choices=IMPLS, required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args(argv)
    got, first, last = 0, 0.0, 0.0
    if a.impl == "tcp":
        ls = listener(a.port, 1)
        ls.settimeout(a.timeout)
        conn, _ = ls.accept()
        conn.settimeout(a.timeout)
        while data := conn.recv(1 << 20):       # until the source's FIN: all its bytes are here
            last = time.monotonic()
            first = first or last
            got += len(data)
        conn.close()
        print(json.dumps({"bytes": got, "seconds": last - first}))
        return 0
    sock, arq = _udp_peer(a.port, a.impl, a.mode)

    ended = False

    def take(m: bytes) -> None:
        nonlocal got, first, last, ended
        if m == END:
            ended = True
            return
        last = time.monotonic()
        first = first or last
        got += len(m)
    # after the end marker, a moment to acknowledge it (the source leaves once all it sent is
    # acknowledged; QUIC says goodbye)
    _arq_loop(sock, arq, take, lambda idle: ended and (idle > 0.3 or getattr(arq, "closed", False)),
              time.monotonic() + a.timeout)
    print(json.dumps({"bytes": got, "seconds": last - first, "stats": dict(arq.stats)}))
    return 0


def source_main(argv: list[str]) -> int:
    """Bulk: send CHUNK-byte messages as fast as the protocol takes them for --seconds, then
    wait until all of it is acknowledged."""
    ap = argparse.ArgumentParser(prog="hpnlab.labs.rudp source")
    ap.add_argument("--to", required=True)
    ap.add_argument("--impl", choices=IMPLS, required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args(argv)
    chunk = bytes(CHUNK)
    if a.impl == "tcp":
        host, port = a.to.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, a.mode == "nodelay")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)   # bounds what is left at the end
        s.setblocking(False)
        block, end = chunk * 64, time.monotonic() + a.seconds
        while time.monotonic() < end:
            if select.select([], [s], [], 0.05)[1]:
                s.send(block)
        s.setblocking(True)
        s.settimeout(a.timeout)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)                               # the sink closes once it has read everything
        print(json.dumps({"stats": {}}))
        return 0
    sock, arq = _udp_client(a.to, a.impl, a.mode)
    # keep the protocol's queue full, no fuller: twice the send window (KCP counts segments,
    # QUIC bytes)
    backlog = 256 * CHUNK if a.impl == "quic" else 256
    end = float("inf")

    ended = False

    def produce(t: int) -> None:
        nonlocal end, ended
        if not getattr(arq, "ready", True):
            return
        if end == float("inf"):
            end = time.monotonic() + a.seconds
        while time.monotonic() < end and arq.waiting < backlog:
            arq.send(chunk)
        if not ended and time.monotonic() >= end:
            arq.send(END)                  # after the last chunk, in order
            ended = True

    def done(idle: float) -> bool:
        if time.monotonic() < end or (arq.waiting and idle < 2):   # 2 s quiet: the sink has gone
            return False
        if hasattr(arq, "close"):
            arq.close()
            return getattr(arq, "closed", False) or idle > 1
        return True
    _arq_loop(sock, arq, lambda m: None, done, time.monotonic() + a.timeout, produce)
    print(json.dumps({"stats": dict(arq.stats)}))
    return 0


def udpserve_main(argv: list[str]) -> int:
    from ..rudp.concurrency import VARIANTS, serve
    ap = argparse.ArgumentParser(prog="hpnlab.labs.rudp udpserve")
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    print(json.dumps(serve(a.variant, a.port, a.seconds, a.workers)))
    return 0


def udpload_main(argv: list[str]) -> int:
    from ..rudp.concurrency import load
    ap = argparse.ArgumentParser(prog="hpnlab.labs.rudp udpload")
    ap.add_argument("--to", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    a = ap.parse_args(argv)
    host, port = a.to.rsplit(":", 1)
    print(json.dumps(load(host, int(port), a.clients, a.seconds)))
    return 0


# ================================================================ orchestration

def add_arguments(p) -> None:
    p.add_argument("--hosts", default="h1,h2", help="pinger,echoer (default: h1,h2)")
    p.add_argument("--network")
    p.add_argument("--count", type=int, help=f"messages per run (default: {FULL['count']}, as test.cpp; "
                   f"{EMULATED['count']} on an emulated CPU)")
    p.add_argument("--quick", action="store_true", help="a small grid: 200 messages per run, a short sweep")
    p.add_argument("--loss-pct", type=float, default=10.0, help="round-trip loss, split over both "
                   "directions as test.cpp does (default: 10)")
    p.add_argument("--rtt-ms", default="60-125", help="RTT range MIN-MAX (default: 60-125)")
    p.add_argument("--rounds", type=int, help="rounds of KCP's scenario; in each, the implementations of one mode "
                   "run side by side on the link, and the goal is the median of the per-round ratios "
                   f"(default: {FULL['rounds']}; {QUICK['rounds']} with --quick or on an emulated CPU)")
    p.add_argument("--configs", help="IMPL:MODE list to run in KCP's scenario (default: all but quic:default)")
    p.add_argument("--sweep", help="round-trip loss rates (percent) for the loss sweep, or 'none' "
                   f"(default: {FULL['sweep']}; {EMULATED['sweep']} on an emulated CPU)")
    p.add_argument("--sweep-configs", help=f"IMPL:MODE list for the loss sweep (default: {FULL['sweep_configs']})")
    p.add_argument("--sweep-count", type=int, help="loss sweep: 8-byte messages per latency run "
                   f"(default: {FULL['sweep_count']})")
    p.add_argument("--bulk-seconds", type=float, help="loss sweep: seconds each bulk (goodput) run sends "
                   f"for (default: {FULL['bulk_seconds']:g})")
    p.add_argument("--udp-clients", help=f"UDP concurrency: client counts, or 'none' (default: {FULL['udp_clients']})")
    p.add_argument("--udp-seconds", type=float, help=f"UDP concurrency: seconds per run (default: "
                   f"{FULL['udp_seconds']:g})")
    p.add_argument("--udp-workers", type=int, default=2, help="UDP concurrency: SO_REUSEPORT workers (default: 2)")


def probe(hosts) -> dict[str, dict]:
    """Per host, in one interpreter: is its CPU emulated, which of PYTHON_NEEDS's modules
    does its Python lack."""
    modules = [m for m, _ in PYTHON_NEEDS.values()]
    code = ("import importlib, json\nfrom hpnlab.bench.probe import emulated_cpu\n"
            "from hpnlab.labcode import use_vendor\nuse_vendor()\nmissing = []\n"
            f"for m in {modules!r}:\n    try:\n        importlib.import_module(m)\n"
            "    except Exception:\n        missing.append(m)\n"
            "print(json.dumps({'emulated': emulated_cpu(), 'missing': missing}))")
    out = {}
    for h in hosts:
        res = h.run([agent_argv(h, "rudp")[0], "-c", code], timeout=h.start_timeout + 60)
        out[h.name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def settle_grid(args, hosts, probed: dict[str, dict]) -> list[str]:
    """Fill the knobs not given: the full grid, the quick one, or the emulated one where the
    pinger's CPU is emulated (QEMU TCG); leave out of the defaults an implementation whose
    Python package a host lacks (guests reach no registry). Returns the notes saying so."""
    notes = []
    grid = QUICK if args.quick else FULL
    if not args.quick and probed[hosts[0].name]["emulated"]:
        grid = EMULATED
        notes.append(f"{hosts[0].name}'s CPU is emulated (QEMU TCG): the knobs not given were cut to "
                     + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in EMULATED.items() if "configs" not in k))
    for knob, value in grid.items():
        if getattr(args, knob) is None:
            setattr(args, knob, value)
            if "configs" in knob:
                setattr(args, knob, _installed(str(value), knob, hosts, probed, notes))
    return notes


def _installed(spec: str, knob: str, hosts, probed: dict[str, dict], notes: list[str]) -> str:
    keep = []
    for item in spec.split(","):
        impl = item.partition(":")[0]
        if impl in PYTHON_NEEDS:
            module, fix = PYTHON_NEEDS[impl]
            missing = [h.name for h in hosts if module in probed[h.name]["missing"]]
            if missing:
                notes.append(f"{item} left out of --{knob.replace('_', '-')}: Python's {module} "
                             f"is not importable on {', '.join(missing)} ({fix} there)")
                continue
        keep.append(item)
    return ",".join(keep)


def parse_configs(spec: str, option: str = "--configs") -> list[tuple[str, str]]:
    out = []
    for item in spec.split(","):
        impl, _, mode = item.partition(":")
        if (impl, mode) not in CONFIGS:
            raise LabError(f"{option}: no {item!r} (choices: {', '.join(f'{i}:{m}' for i, m in CONFIGS)})")
        out.append((impl, mode))
    return out


def run(provider, args, step) -> dict:
    from .. import impair
    from ..topology.model import Impairment
    a, b, net = host_pair(provider, args.hosts, "pinger,echoer", args.network, tools=("nft",))
    need_tools("tcpdump")
    probed = probe((a, b))
    notes = settle_grid(args, (a, b), probed)
    configs = parse_configs(args.configs)
    count = args.count
    if count < 1 or args.rounds < 1:
        raise LabError(f"--count and --rounds must be at least 1, not {count} and {args.rounds}")
    losses = parse_numbers(args.sweep, "--sweep", 0, 99)
    sweep_configs = parse_configs(args.sweep_configs, "--sweep-configs") if losses else []
    clients = [int(c) for c in parse_numbers(args.udp_clients, "--udp-clients", 1, 60000)]
    sweep_count, bulk_s, udp_s = args.sweep_count, args.bulk_seconds, args.udp_seconds
    if sweep_count < 1 or bulk_s <= 0 or udp_s <= 0 or args.udp_workers < 1:
        raise LabError("--sweep-count and --udp-workers must be at least 1, --bulk-seconds and --udp-seconds above 0")
    try:
        lo, hi = (float(x) for x in args.rtt_ms.split("-"))
    except ValueError:
        raise LabError(f"--rtt-ms wants MIN-MAX in ms, got {args.rtt_ms!r}") from None
    if not 0 <= lo <= hi or not 0 <= args.loss_pct < 100:
        raise LabError("--rtt-ms wants 0 <= MIN <= MAX and --loss-pct 0..99")
    for impl in sorted({i for i, _ in configs + sweep_configs} & set(PYTHON_NEEDS)):
        module, fix = PYTHON_NEEDS[impl]
        for h in (a, b):
            if module in probed[h.name]["missing"]:
                raise LabError(f"[{h.name}] {impl} needs Python's {module}, not importable there ({fix}; "
                               f"or leave {impl} out of --configs/--sweep-configs)")
    if provider.lab.networks[net].impair:
        raise LabError(f"network {net} already has an impairment in the lab file; this lab sets its own")
    one_way = Impairment(delay_ms=(lo + hi) / 4, jitter_ms=(hi - lo) / 4, loss_pct=args.loss_pct / 2)
    out = report.results_dir("rudp", getattr(args, "results", None))
    env = report.fingerprint(provider, [], {a.name: a, b.name: b})
    ip_b = str(b.address(net))
    with ExitStack() as stack:
        mechanisms = []
        for h in (a, b):
            step(f"impairment on {h.name}:{h.nic(net).ifname}: {one_way.describe()}")
            plan = stack.enter_context(impair.applied(h, h.nic(net).ifname, one_way, IMPAIR_QUEUE))
            mechanisms.append(plan.mechanism)
        raw: dict[tuple[str, str], list[dict]] = {c: [] for c in configs}
        groups = side_by_side(configs)
        for rnd in range(args.rounds):
            # alternate the order (of the groups, and of the starts within one) each round
            for group in (groups if rnd % 2 == 0 else [g[::-1] for g in groups[::-1]]):
                step(f"round {rnd + 1}/{args.rounds}, side by side: {', '.join(f'{i} {m}' for i, m in group)}: "
                     f"{count} messages of 8 bytes each, one every 20 ms")
                items = [(impl, mode, PORT + 10 * rnd + CONFIGS.index((impl, mode)),
                          out / f"{impl}-{mode}.pcap" if rnd == 0 and (
                              (impl, mode) == configs[0] or mode == "fast") else None)
                         for impl, mode in group]
                for (impl, mode), part in zip(group, group_run(provider, a, b, ip_b, items, count, net)):
                    raw[(impl, mode)].append({**part, "round": rnd + 1})
    sweep: dict[str, dict] = {}
    port = SWEEP_PORT
    tcp_cc = a.run(["sysctl", "-n", "net.ipv4.tcp_congestion_control"], check=False, timeout=10).stdout.strip()
    with wire_counters([(a, a.nic(net).ifname), (b, b.nic(net).ifname)]) as wire:
        for loss in losses:
            imp = Impairment(delay_ms=one_way.delay_ms, jitter_ms=one_way.jitter_ms, loss_pct=loss / 2)
            with ExitStack() as stack:
                for h in (a, b):
                    stack.enter_context(impair.applied(h, h.nic(net).ifname, imp, IMPAIR_QUEUE))
                for impl, mode in sweep_configs:
                    step(f"loss sweep {loss:g} %, {impl} {mode}: {sweep_count} messages, then {bulk_s:g} s of bulk")
                    lat = one_run(provider, a, b, ip_b, port, impl, mode, sweep_count, None, net)
                    before = wire()
                    bulk = bulk_run(a, b, ip_b, port + 1, impl, mode, bulk_s)
                    sweep.setdefault(f"{loss:g}", {})[f"{impl}:{mode}"] = sweep_row(lat, bulk, wire() - before)
                    port += 2
    concurrency: list[dict] = []
    for n in clients:
        for variant in ("single", "reuseport", "connected"):
            step(f"UDP concurrency: {variant}, {n} clients, {udp_s:g} s")
            concurrency.append(udp_run(a, b, ip_b, UDP_PORT + len(concurrency), variant, n, udp_s, args.udp_workers))
    runs = {f"{impl}:{mode}": summarize(impl, mode, parts) for (impl, mode), parts in raw.items()}
    modes = [m for i, m in configs if i == "hpnlab" and ("ckcp", m) in configs]
    if modes:
        step(f"the same scenario on a virtual clock, same random draws for both: {', '.join(modes)}")
    simulated = simulate(modes, count, one_way, lo / 2, hi / 2)
    kcp_scenario: dict[str, dict] = {}
    for key, r in runs.items():
        impl, mode = key.split(":")
        kcp_scenario.setdefault(impl, {})[mode] = {k: r[k] for k in ("avg_ms", "max_ms", "p50_ms", "p99_ms",
                                                                     "overhead", "retransmits")}
    png = plot(runs, out)
    sweep_pngs = plot_sweep(sweep, out) if sweep else []
    data = {"kcp_scenario": kcp_scenario, "simulated": simulated, "count": count,
            "impairment_one_way": one_way.to_dict(),
            "mechanism": mechanisms[0], "runs": runs, "environment": env,
            "loss_sweep": sweep, "loss_sweep_setup": {"round_trip_loss_pct": losses, "messages": sweep_count,
                                                      "bulk_seconds": bulk_s, "chunk_bytes": CHUNK,
                                                      "tcp_congestion_control": tcp_cc},
            "udp_concurrency": concurrency, "load_avg": os.getloadavg(), "grid_notes": notes}
    pairs = paired(runs)
    data["paired"] = pairs
    md = render(runs, kcp_scenario, pairs, simulated, count, one_way, mechanisms[0], a.name, b.name, env, png, args)
    if notes:
        md = md.replace("\n\n", "\n\n" + "\n".join(f"> Grid: {n}." for n in notes) + "\n\n", 1)
    md = md.replace("\n## Re-run", f"- load average at the end (1, 5, 15 min): "
                    f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}\n\n## Re-run", 1)
    if sweep:
        md = md.replace("\n## Environment", render_sweep(sweep, sweep_pngs, sweep_count, bulk_s, one_way, tcp_cc)
                        + "\n## Environment", 1)
    if concurrency:
        md = md.replace("\n## Environment", render_concurrency(concurrency, udp_s, args.udp_workers, a.name, b.name)
                        + "\n## Environment", 1)
    path = report.write_report(out, md, data)
    goals = goal_lines(kcp_scenario, pairs)
    return {"report": path, "dir": out, "summary": goals[0] if goals else None}


def side_by_side(configs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The configs that run at once in a round: hpnlab and C ikcp of one mode, the TCP
    variants, QUIC - in the order first named."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for impl, mode in configs:
        key = impl if impl in ("tcp", "quic") else mode
        groups.setdefault(key, []).append((impl, mode))
    return list(groups.values())


def group_run(provider, a, b, ip_b: str, items: list[tuple[str, str, int, Path | None]], count: int,
              net: str) -> list[dict]:
    """KCP's scenario for each (impl, mode, port, pcap) at the same time over the same link:
    every echo agent on `b`, then every pinger on `a`, so that the link's state, the delay
    line and the machine's load are the same for all of them (its random losses still fall
    on each datagram apart: the rounds give the spread)."""
    timeout = 60 + count * 0.2
    echoes, pingers = [], []
    with ExitStack() as stack:
        try:
            for impl, mode, port, _ in items:
                echoes.append(b.start(agent_argv(b, "rudp", "echo", "--port", port, "--impl", impl, "--mode", mode,
                                                 "--count", count, "--timeout", timeout), name=f"rudp-echo-{port}"))
            for impl, _, port, pcap in items:
                b.wait_for_port(port, timeout=max(15.0, b.start_timeout), proto="tcp" if impl == "tcp" else "udp")
                if pcap:
                    stack.enter_context(Capture(provider, f"{a.name}:{a.nic(net).ifname}", pcap,
                                                f"{'tcp' if impl == 'tcp' else 'udp'} port {port}"))
            go_dir = f"/tmp/hpnlab-rudp-go-{items[0][2]}-{os.getpid()}"
            a.run(["sh", "-c", f"rm -rf {go_dir} && mkdir -p {go_dir}"], timeout=30)
            for impl, mode, port, _ in items:
                pingers.append(a.start(agent_argv(a, "rudp", "ping", "--to", f"{ip_b}:{port}", "--impl", impl,
                                                  "--mode", mode, "--count", count, "--timeout", timeout,
                                                  "--go-dir", go_dir), name=f"rudp-ping-{port}"))
            _start_together(a, go_dir, [port for _, _, port, _ in items], pingers, timeout)
            done = [(_agent_result(ping, a, f"{impl} {mode} pinger", timeout + 10),
                     _agent_result(echo, b, f"{impl} {mode} echo agent", timeout))
                    for (impl, mode, _, _), ping, echo in zip(items, pingers, echoes)]
        finally:
            with deferred_interrupts():
                for proc in pingers + echoes:
                    proc.stop(3)
                if pingers:
                    a.run(["rm", "-rf", go_dir], timeout=30, check=False)
    return [_scenario_part(impl, mode, count, pcap, client, server)
            for (impl, mode, _, pcap), (client, server) in zip(items, done)]


def _start_together(a, go_dir: str, ports: list[int], pingers: list, timeout: float) -> None:
    """Once every pinger is set up (its ready file in go_dir), let them all go at once."""
    deadline = time.monotonic() + timeout
    want = {f"ready-{port}" for port in ports}
    while not want <= set(a.run(["ls", go_dir], timeout=30).stdout.split()):
        dead = [p for p in pingers if not p.alive()]
        if dead or time.monotonic() > deadline:
            why = f"exited: {dead[0].logs()[1].strip()[-800:]}" if dead else f"not ready in {timeout:g} s"
            raise LabError(f"[{a.name}] a pinger {why}")
        time.sleep(0.1)
    a.run(["touch", f"{go_dir}/go"], timeout=30)


def _scenario_part(impl: str, mode: str, count: int, pcap: Path | None, client: dict, server: dict) -> dict:
    rtts = client["rtts"]
    if len(rtts) != count or client.get("in_order") is False:
        raise LabError(f"{impl} {mode}: {len(rtts)} of {count} messages came back"
                       + ("" if client.get("in_order", True) else ", not each once in order"))
    wire = client["stats"].get("bytes_out", 0) + server.get("stats", {}).get("bytes_out", 0)
    stats = [client["stats"], server.get("stats", {})]
    return {"rtts": rtts, "wire": wire, "pcap": pcap.name if pcap else None, "span": client.get("span"),
            "loop": {"pinger": client.get("loop"), "echoer": server.get("loop")},
            "stats": {"pinger": client["stats"], "echoer": server.get("stats", {})},
            "retransmits": sum(st.get("retransmits", 0) + st.get("fast_retransmits", 0) for st in stats)}


def one_run(provider, a, b, ip_b: str, port: int, impl: str, mode: str, count: int,
            pcap: Path | None, net: str) -> dict:
    return group_run(provider, a, b, ip_b, [(impl, mode, port, pcap)], count, net)[0]


def _agent_result(proc, host, what: str, timeout: float) -> dict:
    """Wait for a started agent and read the JSON document it printed last."""
    proc.wait(timeout)
    out, err = proc.logs()
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise LabError(f"[{host.name}] {what} printed no result: {err[-800:]}") from None


def parse_numbers(spec: str, option: str, lo: float, hi: float) -> list[float]:
    if spec.strip().lower() in ("", "none"):
        return []
    try:
        values = [float(x) for x in spec.split(",")]
    except ValueError:
        raise LabError(f"{option} wants numbers separated by commas (or 'none'), got {spec!r}") from None
    bad = [v for v in values if not lo <= v <= hi]
    if bad:
        raise LabError(f"{option}: {bad[0]:g} is outside {lo:g}..{hi:g}")
    return values


@contextmanager
def wire_counters(nics: list[tuple]):
    """An nftables counter on each (host, NIC)'s egress, ahead of the impairment's loss rule
    (priority -10 < 0; netem drops later still, in its qdisc): bytes the endpoints put on
    the wire, IP headers included. Yields a function returning the total so far."""
    made = []
    try:
        for h, ifname in nics:
            h.run(["nft", "add", "table", "inet", WIRE_TABLE], timeout=10)
            made.append(h)
            h.run(["nft", "add", "chain", "inet", WIRE_TABLE, "out",
                   "{ type filter hook postrouting priority -10; policy accept; }"], timeout=10)
            h.run(["nft", "add", "rule", "inet", WIRE_TABLE, "out", "oifname", ifname, "counter"], timeout=10)

        def total() -> int:
            n = 0
            for h in made:
                doc = json.loads(h.run(["nft", "-j", "list", "table", "inet", WIRE_TABLE], timeout=10).stdout)
                n += sum(e["counter"]["bytes"] for item in doc["nftables"] for e in item.get("rule", {}).get("expr", [])
                         if "counter" in e)
            return n
        yield total
    finally:
        with deferred_interrupts():
            for h in made:
                h.run(["nft", "delete", "table", "inet", WIRE_TABLE], timeout=10, check=False)


def bulk_run(a, b, ip_b: str, port: int, impl: str, mode: str, seconds: float) -> dict:
    """`a` sends CHUNK-byte messages to `b` for `seconds`; b's bytes and time first to last."""
    timeout = 60 + seconds * 4
    sink = b.start(agent_argv(b, "rudp", "sink", "--port", port, "--impl", impl, "--mode", mode,
                              "--timeout", timeout), name=f"rudp-sink-{port}")
    try:
        b.wait_for_port(port, timeout=max(15.0, b.start_timeout), proto="tcp" if impl == "tcp" else "udp")
        a.run(agent_argv(a, "rudp", "source", "--to", f"{ip_b}:{port}", "--impl", impl, "--mode", mode,
                         "--seconds", seconds, "--timeout", timeout), timeout=timeout + 10)
        return _agent_result(sink, b, "sink agent", timeout)
    finally:
        with deferred_interrupts():
            sink.stop(3)


def sweep_row(lat: dict, bulk: dict, wire: int) -> dict:
    """One loss rate and implementation: latency of the 8-byte messages, goodput of the bulk
    run, and its bytes on the wire (both ways, IP headers included) per payload byte."""
    srt = sorted(lat["rtts"])
    n = len(srt)
    return {"p50_ms": srt[n // 2], "p99_ms": srt[min(n - 1, n * 99 // 100)], "max_ms": srt[-1],
            "avg_ms": round(sum(srt) / n, 1), "rtts": lat["rtts"],
            "goodput_mbps": round(bulk["bytes"] * 8 / max(bulk["seconds"], 1e-3) / 1e6, 3),
            "bulk_bytes": bulk["bytes"], "wire_bytes": wire,
            "overhead": round(wire / bulk["bytes"], 3) if bulk["bytes"] else None}


def udp_rcvbuf_errors(h) -> int:
    """Datagrams the host's kernel dropped for a full socket receive queue (/proc/net/snmp)."""
    lines = [ln.split() for ln in h.run(["cat", "/proc/net/snmp"], timeout=10).stdout.splitlines()
             if ln.startswith("Udp:")]
    return int(dict(zip(lines[0], lines[1]))["RcvbufErrors"])


def udp_run(a, b, ip_b: str, port: int, variant: str, clients: int, seconds: float, workers: int) -> dict:
    """The UDP 并发 variant on `b`, `clients` closed-loop clients on `a` (no impairment)."""
    serve_s = seconds + 60                   # at most: it ends half a second after the load does
    server = b.start(agent_argv(b, "rudp", "udpserve", "--variant", variant, "--port", port,
                                "--seconds", serve_s, "--workers", workers), name=f"rudp-udp-{port}")
    try:
        b.wait_for_port(port, timeout=max(15.0, b.start_timeout), proto="udp")
        drops0 = udp_rcvbuf_errors(b)
        res = a.run(agent_argv(a, "rudp", "udpload", "--to", f"{ip_b}:{port}", "--clients", clients,
                               "--seconds", seconds), timeout=seconds + 60)
        load = json.loads(res.stdout.strip().splitlines()[-1])
        served = _agent_result(server, b, "udpserve", serve_s + 30)
        drops = udp_rcvbuf_errors(b) - drops0
    finally:
        with deferred_interrupts():
            server.stop(3)
    return {**load, "variant": variant, "sockets": served["sockets"], "per_socket": served["per_socket"],
            "answered": served["answered"], "server_cpu_s": served["cpu_s"], "rcvbuf_drops": drops,
            "server_busy": round(served["cpu_s"] / max(served["active_s"], 1e-3), 2),
            "cpu_us_per_reply": round(served["cpu_s"] / max(served["answered"], 1) * 1e6, 2)}


def summarize(impl: str, mode: str, parts: list[dict]) -> dict:
    """One implementation and mode over all rounds."""
    rtts = [x for p in parts for x in p["rtts"]]
    n, srt, wire = len(rtts), sorted(rtts), sum(p["wire"] for p in parts)
    udp = impl != "tcp"
    return {"impl": impl, "mode": mode, "rtts": rtts, "rounds": len(parts),
            "avg_ms": round(sum(rtts) / n, 1), "max_ms": srt[-1],
            "p50_ms": srt[n // 2], "p99_ms": srt[min(n - 1, int(n * 0.99))],
            "per_round": [{"round": p["round"], "avg_ms": round(sum(p["rtts"]) / len(p["rtts"]), 1),
                           "max_ms": max(p["rtts"]), "span": p["span"], "retransmits": p["retransmits"],
                           "loop": p["loop"], "stats": p["stats"],
                           "overhead": round(p["wire"] / (len(p["rtts"]) * PERFECT_BYTES) - 1, 3) if udp else None}
                          for p in parts],
            "wire_bytes": wire if udp else None,
            "overhead": round(wire / (n * PERFECT_BYTES) - 1, 3) if udp else None,
            "retransmits": sum(p["retransmits"] for p in parts) if impl == "hpnlab" else None,
            "pcap": parts[0]["pcap"]}


def simulate(modes: list[str], count: int, one_way, lo: float, hi: float, seed: int = 1) -> dict:
    """hpnlab and C ikcp in test.cpp's scenario on hpnlab.rudp.sim's virtual clock, over links
    with the same random draws. hpnlab runs ikcp's own rules here (`ikcp_rules`): where the two
    cores send the same bytes, their digests are equal. Then, over SEEDS links, hpnlab's fast
    (its own rules and flushing) against C ikcp fast, and where the bytes of each go."""
    from ..rudp.sim import Link, echo_scenario
    out: dict[str, dict] = {}
    for impl in ("hpnlab", "ckcp"):
        for mode in modes:
            link = Link(loss=one_way.loss_pct / 100, delay=(int(lo), int(hi)), seed=seed)
            rtts, digest = echo_scenario(make_arq(impl, mode, ikcp_rules=True), make_arq(impl, mode, ikcp_rules=True),
                                         link, count)
            out.setdefault(impl, {})[mode] = {"avg_ms": round(sum(rtts) / count, 1), "max_ms": max(rtts),
                                              "overhead": round(sum(link.sent) / (count * PERFECT_BYTES) - 1, 3),
                                              "digest": digest}
    if "fast" in modes:
        out["seeds"] = over_seeds(count, one_way, lo, hi, ["hpnlab:fast"])
    return out


SEEDS = 10
# the wire bytes by why (Arq.stats' bytes_<kind>); C ikcp's are those of hpnlab on ikcp's rules
BYTE_KINDS = ("push_new", "push_rto", "push_fast", "ack", "probe")
RESENDS = ("needed", "arrived", "in flight")        # hpnlab.rudp.sim.resend_census


def over_seeds(count: int, one_way, lo: float, hi: float, configs: list[str], seeds: int = SEEDS) -> dict:
    """Each of `configs` and C ikcp fast over the same `seeds` links (one run each): the mean
    average and maximum RTT, in how many seeds each was at most C ikcp's, the overhead, and the
    bytes by kind (% of a perfect run's) - C ikcp's counted by hpnlab's core on ikcp's rules,
    which sends the very same datagrams."""
    from ..rudp.sim import Link, echo_scenario, resend_census
    keys = configs + ["ckcp:fast", "hpnlab:fast(ikcp rules)"]
    runs: dict[str, list[dict]] = {k: [] for k in keys}
    for seed in range(1, seeds + 1):
        for key in keys:
            impl, mode = key.removesuffix("(ikcp rules)").split(":")
            ends = [make_arq(impl, mode, ikcp_rules=key.endswith("(ikcp rules)")) for _ in (0, 1)]
            link = Link(loss=one_way.loss_pct / 100, delay=(int(lo), int(hi)), seed=seed, record=True)
            rtts, _ = echo_scenario(ends[0], ends[1], link, count)
            assert link.log is not None
            runs[key].append({"avg_ms": sum(rtts) / count, "max_ms": max(rtts),
                              "overhead": sum(link.sent) / (count * PERFECT_BYTES) - 1,
                              "bytes": {k: sum(e.stats[f"bytes_{k}"] for e in ends) / (count * PERFECT_BYTES)
                                        for k in BYTE_KINDS} if impl == "hpnlab" else None,
                              "resends": resend_census(link.log)})
    out: dict[str, dict] = {"seeds": {"n": seeds}}
    base = runs["ckcp:fast"]
    for key, rs in runs.items():
        out[key] = {k: round(sum(r[k] for r in rs) / seeds, 3) for k in ("avg_ms", "max_ms", "overhead")}
        out[key]["worst_max_ms"] = max(r["max_ms"] for r in rs)
        if rs[0]["bytes"]:
            out[key]["bytes"] = {k: round(sum(r["bytes"][k] for r in rs) / seeds, 4) for k in BYTE_KINDS}
        out[key]["resends"] = {k: sum(r["resends"][k] for r in rs) for k in RESENDS}
        for stat in ("avg_ms", "max_ms"):
            out[key][f"{stat}_le_ckcp_in"] = sum(r[stat] <= b[stat] for r, b in zip(rs, base))
    return out


# hpnlab against C ikcp, each pair run side by side in every round
PAIRS = [("hpnlab:fast", "ckcp:fast"), ("hpnlab:normal", "ckcp:normal"),
         ("hpnlab:default", "ckcp:default")]


def paired(runs: dict) -> dict:
    """Per pair in PAIRS: hpnlab's average and maximum RTT over C ikcp's, one ratio per round
    (the two ran side by side in it); the median of the ratios, their range, in how many rounds
    hpnlab was lower and higher, and whether the difference is beyond the run-to-run spread
    (every round on the same side of 1). One round gives no spread."""
    out: dict[str, dict] = {}
    for x, y in PAIRS:
        if x not in runs or y not in runs:
            continue
        theirs = {p["round"]: p for p in runs[y]["per_round"]}
        rounds = [(p, theirs[p["round"]]) for p in runs[x]["per_round"] if p["round"] in theirs]
        row: dict = {"rounds": len(rounds)}
        for stat in ("avg_ms", "max_ms"):
            ratios = [round(p[stat] / q[stat], 3) for p, q in rounds]
            lower, higher = sum(r < 1 for r in ratios), sum(r > 1 for r in ratios)
            row[stat] = {"ratios": ratios, "median": round(statistics.median(ratios), 3), "min": min(ratios),
                         "max": max(ratios), "lower_in": lower, "higher_in": higher,
                         "beyond_spread": len(ratios) >= 2 and len(ratios) in (lower, higher)}
        row["loop_lag"] = {key: _loop_lag(runs[key]["per_round"]) for key in (x, y)}
        out[f"{x}/{y}"] = row
    return out


def _loop_lag(per_round: list[dict]) -> dict | None:
    """Over the rounds, both agents of a config: the share of update gaps over 2 ms and the
    longest gap (on the virtual clock, where the two send the same bytes, every gap is 1 ms)."""
    loops = [lp for p in per_round for lp in (p.get("loop") or {}).values() if lp]
    if not loops:
        return None
    updates = sum(lp["updates"] for lp in loops)
    return {"gaps_over_2ms_share": round(sum(lp["gaps_over_2ms"] for lp in loops) / max(updates, 1), 4),
            "gap_max_ms": max(lp["gap_max_ms"] for lp in loops)}


def _paired_verdict(name: str, r: dict, n: int) -> str:
    """'avg RTT ratio 0.980 (median of 4 rounds, [0.950–1.030]) → met; inside the spread: ...'."""
    ok = r["median"] <= 1
    if n < 2:
        spread = "one round: no spread to judge it by"
    elif r["beyond_spread"]:
        spread = (f"beyond the spread: {'lower' if r['lower_in'] == n else 'higher'} in all {n} rounds "
                  f"(were the two alike, a {2 / 2 ** n:.0%} chance)")
    else:
        spread = f"inside the spread: lower in {r['lower_in']}, higher in {r['higher_in']} of {n} rounds"
    return (f"{name} ratio {r['median']:.3f}" + (f" (median of {n} rounds, [{r['min']:.3f}–{r['max']:.3f}])"
                                                  if n > 1 else "")
            + f" → {'met' if ok else 'NOT met'}; {spread}")


def goal_lines(s: dict, pairs: dict) -> list[str]:
    """The goal, hpnlab fast <= C ikcp fast in average and maximum RTT, decided by the ratios of
    rounds in which the two ran side by side; overhead <= 15 % over the pooled rounds."""
    p = pairs.get("hpnlab:fast/ckcp:fast")
    if p is None:
        return []
    h, c = s["hpnlab"]["fast"], s["ckcp"]["fast"]
    return [f"hpnlab fast vs C ikcp fast (the goal): "
            f"{_paired_verdict('avg RTT', p['avg_ms'], p['rounds'])}; "
            f"{_paired_verdict('max RTT', p['max_ms'], p['rounds'])}; "
            f"pooled avg {h['avg_ms']} vs {c['avg_ms']} ms, max {h['max_ms']} vs {c['max_ms']} ms; "
            f"overhead {h['overhead']:.1%} (<= 15 %: {'met' if h['overhead'] <= 0.15 else 'NOT met'}; "
            f"C ikcp fast: {c['overhead']:.1%})"]


def plot(runs: dict, out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    styles = {"hpnlab": "-", "ckcp": "--"}
    _cdf_plot(plt, {key: (r["rtts"], styles.get(r["impl"], ":")) for key, r in runs.items()}, out / "rtt_cdf.png")
    return "rtt_cdf.png"


def _cdf_plot(plt, series: dict[str, tuple[list, str]], path: Path, title: str | None = None) -> None:
    """RTT CDFs, one line per label: (RTTs in ms, line style)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, (rtts, style) in series.items():
        srt = sorted(rtts)
        ax.plot(srt, [(i + 1) / len(srt) for i in range(len(srt))], label=label, ls=style)
    ax.set_xscale("log")
    ax.set_xlabel("RTT of an 8-byte message, ms (log)")
    ax.set_ylabel("fraction of messages")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(sweep: dict, out: Path) -> list[str]:
    """One latency CDF per loss rate, and goodput against loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = []
    for loss, rows in sweep.items():
        names.append(f"latency_cdf_loss{loss}.png")
        _cdf_plot(plt, {key: (r["rtts"], "-") for key, r in rows.items()}, out / names[-1], f"{loss} % round-trip loss")
    fig, ax = plt.subplots(figsize=(7, 4))
    losses = list(sweep)
    for key in next(iter(sweep.values())):
        ax.plot([float(x) for x in losses], [sweep[x][key]["goodput_mbps"] for x in losses], marker="o", label=key)
    ax.set_xlabel("round-trip loss, %")
    ax.set_ylabel("goodput, Mbit/s")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    names.append("goodput_vs_loss.png")
    fig.savefig(out / names[-1], dpi=100)
    plt.close(fig)
    return names


def render_sweep(sweep: dict, pngs: list[str], count: int, bulk_s: float, one_way, tcp_cc: str) -> str:
    losses = list(sweep)
    keys = list(sweep[losses[0]])
    rows = [[loss, key, r["p50_ms"], r["p99_ms"], r["max_ms"], r["goodput_mbps"],
             "" if r["overhead"] is None else f"{r['overhead']:.3f}"]
            for loss in losses for key, r in sweep[loss].items()]
    L = ["", "## Loss sweep", "",
         f"The same link ({one_way.describe().split(', loss')[0]} each way) at each round-trip loss rate "
         f"(half of it on each direction). Latency: {count} 8-byte messages, one every 20 ms, echoed (as "
         f"above). Goodput: {CHUNK}-byte messages sent as fast as each protocol takes them for {bulk_s:g} s, "
         "payload bytes delivered over the time from the first to the last. Wire/payload: IP bytes both "
         "hosts put on the data NICs during the bulk run (an nftables counter ahead of the loss; "
         "retransmissions, ACKs, headers, handshakes) per payload byte delivered. KCP runs test.cpp's "
         f"fast mode with 128-segment windows (no congestion window); TCP the host's congestion control "
         f"({tcp_cc or '?'}); QUIC aioquic's (Reno).", "",
         report.md_table(["loss %", "impl", "p50 ms", "p99 ms", "max ms", "goodput Mbit/s", "wire/payload"], rows),
         ""]
    L += [f"![{p}]({p})" for p in pngs]
    L += ["", "Reading:", ""]
    lo, hi = losses[0], losses[-1]
    for key in keys:
        a, b = sweep[lo][key], sweep[hi][key]
        L.append(f"- {key}: from {lo} % to {hi} % loss, p99 {a['p99_ms']} → {b['p99_ms']} ms "
                 f"({b['p99_ms'] / max(a['p99_ms'], 1):.1f}x), goodput {a['goodput_mbps']} → "
                 f"{b['goodput_mbps']} Mbit/s ({b['goodput_mbps'] / max(a['goodput_mbps'], 1e-9):.2f}x), "
                 f"wire/payload {a['overhead']} → {b['overhead']}.")
    for loss in losses:
        rows_l = sweep[loss]
        best_p99 = min(rows_l, key=lambda k: rows_l[k]["p99_ms"])
        best_gp = max(rows_l, key=lambda k: rows_l[k]["goodput_mbps"])
        L.append(f"- at {loss} %: lowest p99 {best_p99} ({rows_l[best_p99]['p99_ms']} ms); "
                 f"highest goodput {best_gp} ({rows_l[best_gp]['goodput_mbps']} Mbit/s).")
    return "\n".join(L) + "\n"


def render_concurrency(rows: list[dict], seconds: float, workers: int, a: str, b: str) -> str:
    table = [[r["variant"], r["clients"], r["rate"], r["p50_us"], r["p99_us"], r["sockets"],
              f"{min(r['per_socket'])}..{max(r['per_socket'])}", f"{r['server_busy']:.0%}", r["cpu_us_per_reply"],
              r["rcvbuf_drops"], r["resent"]] for r in rows]
    L = ["", "## UDP 并发: one socket, SO_REUSEPORT, a connected socket per peer", "",
         f"`{b}` runs a UDP echo service three ways; `{a}` runs N clients, each its own socket with one "
         f"request in flight, for {seconds:g} s (no impairment). single: one socket, one epoll loop. "
         f"reuseport: {workers} processes, each its own SO_REUSEPORT socket on the port; the kernel hashes "
         "each 4-tuple to one. connected: one unconnected socket takes a new peer's first datagram, then a "
         "socket bound to the same port and connect()ed to that peer answers it (the kernel's lookup prefers "
         "the socket that matches the whole 4-tuple); all in one epoll loop.", "",
         report.md_table(["variant", "clients", "replies/s", "p50 µs", "p99 µs", "sockets",
                          "replies per socket", "server CPU busy", "server CPU µs/reply", "rcvbuf drops",
                          "resent"], table),
         "", "server CPU busy: the server's CPU time over the time it had traffic (of one core; reuseport's "
         "workers add up). rcvbuf drops: the server host's UDP RcvbufErrors during the run (a full socket "
         "queue). resent: requests the clients sent again after 200 ms without an answer.",
         "", "Reading:", ""]
    for n in sorted({r["clients"] for r in rows}):
        group = {r["variant"]: r for r in rows if r["clients"] == n}
        best = max(group.values(), key=lambda r: r["rate"])
        base = group.get("single")
        line = f"- {n} clients: most replies/s {best['variant']} ({best['rate']}/s"
        if base and best is not base:
            line += f", {best['rate'] / max(base['rate'], 1):.2f}x single's {base['rate']}/s"
        line += ")."
        cheapest = min(group.values(), key=lambda r: r["cpu_us_per_reply"])
        line += f" Least server CPU per reply: {cheapest['variant']} ({cheapest['cpu_us_per_reply']} µs)."
        if "reuseport" in group:
            per = group["reuseport"]["per_socket"]
            line += (f" reuseport's workers answered {', '.join(map(str, per))}: "
                     + ("the hash spread the peers evenly (within 25 %)." if min(per) >= 0.75 * max(per) else
                        "an uneven split (the 4-tuple hash, not the load, picks the worker)."))
        if "connected" in group:
            c = group["connected"]
            line += (f" connected held {c['sockets']} sockets (one per peer plus the listener)"
                     + (f", at {c['cpu_us_per_reply'] / max(base['cpu_us_per_reply'], 1e-9):.2f}x single's "
                        "CPU per reply" if base else "") + ".")
        dropped = [f"{r['variant']} {r['rcvbuf_drops']}" for r in group.values() if r["rcvbuf_drops"]]
        if dropped:
            line += f" Datagrams dropped on a full receive queue: {', '.join(dropped)}."
        idle = [r["variant"] for r in group.values() if r["server_busy"] < 0.9 * (r["sockets"] if
                r["variant"] == "reuseport" else 1)]
        if idle:
            line += (f" {', '.join(idle)}: the server was busy less than 90 % of its core(s), so the clients "
                     "(one Python process on a 2-core machine shared with the server) set the rate there, "
                     "not the server; CPU per reply compares the servers.")
        else:
            line += " Every server was busy 90 % or more of its core(s): the rates compare the servers."
        L.append(line)
    return "\n".join(L) + "\n"


def render_seeds(sd: dict) -> list[str]:
    """The seeds comparison on the virtual clock, and where each one's bytes went."""
    n = sd["seeds"]["n"]
    keys = [k for k in sd if k != "seeds"]
    L = ["", f"Over {n} links (seeds 1-{n}, one run each), hpnlab on its own rules against C ikcp fast:", "",
         report.md_table(["config", "avg ms (mean)", "avg <= C ikcp's in", "max ms (mean; worst)",
                          "max <= C ikcp's in", "overhead"],
                         [[k, f"{r['avg_ms']:.1f}", f"{r['avg_ms_le_ckcp_in']} of {n}",
                           f"{r['max_ms']:.0f}; {r['worst_max_ms']}", f"{r['max_ms_le_ckcp_in']} of {n}",
                           f"{r['overhead']:.1%}"] for k, r in sd.items() if k != "seeds"])]
    with_bytes = [k for k in keys if "bytes" in sd[k]]
    if with_bytes:
        L += ["", "Where the bytes went (% of a perfect run's: its PUSHes are 57.1 %, its ACKs 42.9 %); "
              "`hpnlab:fast(ikcp rules)` sends the very datagrams C ikcp does. Resends, all seeds: needed (no "
              "earlier copy got through) or not - an earlier copy had arrived (its ACK lost or on its way) or "
              "was still in flight (overtaken):", "",
              report.md_table(["config", "first PUSHes", "resent on RTO", "fast resent", "ACKs", "probes", "total",
                               "resends: needed / arrived / in flight"],
                              [[k] + [f"{sd[k]['bytes'][b]:.1%}" for b in BYTE_KINDS]
                               + [f"{sum(sd[k]['bytes'].values()):.1%}",
                                  " / ".join(str(sd[k]["resends"][r]) for r in RESENDS)] for k in with_bytes])]
    return L


def render_wire(runs: dict) -> list[str]:
    """hpnlab's bytes on the lab's link by why, from its agents' counters over all rounds."""
    rows = []
    for key, r in runs.items():
        if r["impl"] != "hpnlab":
            continue
        st = [p["stats"][end] for p in r["per_round"] for end in ("pinger", "echoer")]
        perfect = len(r["rtts"]) * PERFECT_BYTES
        rows.append([key] + [f"{sum(x.get(f'bytes_{b}', 0) for x in st) / perfect:.1%}" for b in BYTE_KINDS]
                    + [sum(x.get(c, 0) for x in st) for c in ("spurious_seen", "dup_acks_saved", "duplicates")])
    if not rows:
        return []
    return ["", "hpnlab's bytes on the link by why (% of a perfect run's: its PUSHes are 57.1 %, its ACKs 42.9 %), "
            "both agents, all rounds. spurious resends seen: an ACK that echoed an earlier copy's send time "
            "(the segment had arrived before its last resend; a lower bound). ACKs saved: duplicate PUSHes "
            "acknowledged by the una of what went out anyway.", "",
            report.md_table(["config", "first PUSHes", "resent on RTO", "fast resent", "ACKs", "probes",
                             "spurious resends seen", "ACKs saved", "duplicate PUSHes in"], rows)]


def render(runs, s, pairs, simulated, count, one_way, mechanism, a, b, env, png, args) -> str:
    rows = [[r["impl"], r["mode"], r["avg_ms"], r["max_ms"], r["p50_ms"], r["p99_ms"],
             "n/a (TCP)" if r["overhead"] is None else f"{r['overhead']:.1%}",
             "" if r["retransmits"] is None else r["retransmits"], r["pcap"] or ""] for r in runs.values()]
    L = ["# rudp lab: reliable UDP (ARQ) in KCP's test.cpp scenario", "",
         f"`{a}` sends {count} 8-byte messages (index, send time), one every 20 ms, `{b}` echoes each; "
         f"{args.rounds} round(s); in each, hpnlab and C ikcp of one mode run "
         "side by side, at the same time over the same link, so the link's state and the machine's load are "
         "the same for both (netem's losses still fall on each datagram apart: the rounds give the spread). "
         f"Both data NICs' egress: {one_way.describe()} ({mechanism}), i.e. {args.loss_pct:g} % loss and "
         f"{args.rtt_ms} ms RTT per round trip, as test.cpp's simulator. Modes are test.cpp's ikcp_nodelay "
         "arguments: default (0,10,0,cwnd on), normal (0,10,0,no cwnd), fast (1,10,2,no cwnd); windows 128/128; "
         "hpnlab's fast also flushes what it owes (ACKs, new data) whenever its output is taken rather than "
         "at the next 10 ms tick, so an ACK and the echo it answers leave at once, in one datagram. "
         "(test.cpp's fast also sets nodelay=2 and minrto 10 on one end; the `kcp` binding cannot, so both "
         "implementations run the README's fast mode (1,10,2,1).)", "",
         report.md_table(["impl", "mode", "avg ms", "max ms", "p50 ms", "p99 ms", "overhead", "retransmits",
                          "pcap"], rows),
         "", "Overhead: UDP payload bytes both ends sent (PUSHes, retransmissions, ACKs, probes) over a perfect "
         f"run's {PERFECT_BYTES} bytes per message (one 24+8-byte PUSH and one 24-byte ACK each way); TCP's "
         "bytes are not counted (n/a).", "", f"![RTT CDF]({png})", "", "## Reading", ""]
    goals = goal_lines(s, pairs)
    L += [f"- {g}" for g in goals]
    if pairs:
        L += ["", "hpnlab over C ikcp, per round side by side (a ratio below 1: hpnlab lower). A difference is "
              "beyond the run-to-run spread only if every round falls on the same side of 1; inside it, this "
              "run cannot tell the two apart.", "",
              report.md_table(["pair", "rounds", "avg RTT ratio: median [min–max]", "per round", "max RTT ratio: "
                               "median [min–max]", "per round", "avg: lower/higher in",
                               "update gaps > 2 ms (longest): hpnlab | C ikcp"],
                              [[k, r["rounds"], f"{r['avg_ms']['median']:.3f} [{r['avg_ms']['min']:.3f}–"
                                f"{r['avg_ms']['max']:.3f}]", " ".join(f"{x:.2f}" for x in r["avg_ms"]["ratios"]),
                                f"{r['max_ms']['median']:.3f} [{r['max_ms']['min']:.3f}–{r['max_ms']['max']:.3f}]",
                                " ".join(f"{x:.2f}" for x in r["max_ms"]["ratios"]),
                                f"{r['avg_ms']['lower_in']}/{r['avg_ms']['higher_in']}"
                                + (" (beyond the spread)" if r["avg_ms"]["beyond_spread"] else ""),
                                " | ".join(f"{g['gaps_over_2ms_share']:.1%} ({g['gap_max_ms']} ms)" if g else "?"
                                           for g in r["loop_lag"].values())]
                               for k, r in pairs.items()]),
              "", "Update gaps: how late the agents' 1 ms loops ran (both ends, all rounds); on the virtual "
              "clock, where hpnlab and C ikcp send the same bytes, every gap is 1 ms.", ""]
    L += render_wire(runs) + [""]
    ranked = sorted(runs.values(), key=lambda r: r["avg_ms"])
    L.append(f"- Lowest average RTT: {ranked[0]['impl']} {ranked[0]['mode']} ({ranked[0]['avg_ms']} ms); "
             f"highest: {ranked[-1]['impl']} {ranked[-1]['mode']} ({ranked[-1]['avg_ms']} ms, "
             f"{ranked[-1]['avg_ms'] / max(ranked[0]['avg_ms'], 1e-9):.1f}x).")
    for impl in ("hpnlab", "ckcp"):
        if "default" in s.get(impl, {}) and "fast" in s[impl]:
            d, f = s[impl]["default"], s[impl]["fast"]
            verb = "cuts" if f["avg_ms"] < d["avg_ms"] else "does not cut"
            L.append(f"- {impl}: fast mode {verb} the average RTT ({d['avg_ms']} → {f['avg_ms']} ms; maximum "
                     f"{d['max_ms']} → {f['max_ms']} ms) at {f['overhead']:.1%} overhead against "
                     f"{d['overhead']:.1%}. What fast changes: a 30 ms RTO floor instead of 100, an RTO "
                     "growing x1.5 instead of x2 per timeout, a resend after 2 later ACKs, no congestion "
                     "window (default mode's window collapses to 1 segment on each timeout, and the "
                     "messages queue behind it).")
    if "tcp" in s and "fast" in s.get("ckcp", {}):
        t = min(s["tcp"].values(), key=lambda r: r["avg_ms"])
        k = s["ckcp"]["fast"]
        L.append(f"- TCP's best ({t['avg_ms']} ms avg, {t['max_ms']} ms max) against C ikcp fast "
                 f"({k['avg_ms']} / {k['max_ms']} ms): "
                 + ("TCP is slower: it waits out a 200 ms minimum RTO and doubles it on every loss, and a "
                    "lost segment holds up all behind it." if t["avg_ms"] > k["avg_ms"] else
                    "TCP is as fast or faster here."))
    if "hpnlab:fast" in runs and runs["hpnlab:fast"]["rounds"] > 1:
        for key in ("hpnlab:fast", "ckcp:fast", "hpnlab:default", "ckcp:default"):
            if key in runs:
                L.append(f"- {key} per round (avg/max ms): " + ", ".join(
                    f"{p['avg_ms']}/{p['max_ms']}" for p in runs[key]["per_round"]))
    if simulated:
        L += ["", "## The same scenario on a virtual clock", "",
              "The link's loss and delay are random, so two runs on it never see the same losses. Here "
              "both implementations run test.cpp's scenario in hpnlab.rudp.sim (a 1 ms virtual clock) over "
              "links with the same random draws, hpnlab on ikcp's own rules (`Arq(ikcp_rules=True)`: its fast "
              "retransmit, an ACK per PUSH); the digest covers every datagram both ends sent, with its time.", "",
              report.md_table(["mode", "hpnlab avg/max ms", "C ikcp avg/max ms", "hpnlab overhead",
                               "C ikcp overhead", "same bytes at the same times"],
                              [[m, f"{h['avg_ms']} / {h['max_ms']}", f"{c['avg_ms']} / {c['max_ms']}",
                                f"{h['overhead']:.1%}", f"{c['overhead']:.1%}",
                                "yes" if h["digest"] == c["digest"] else "NO"]
                               for m, h, c in ((m, simulated["hpnlab"][m], simulated["ckcp"][m])
                                               for m in simulated["hpnlab"])])]
        same = [m for m in simulated["hpnlab"] if simulated["hpnlab"][m]["digest"] == simulated["ckcp"][m]["digest"]]
        L += ["", f"Same datagrams in {len(same)} of {len(simulated['hpnlab'])} modes"
              + (": in those modes every difference between the two in the table above is the link's "
                 "randomness (which packets it dropped, how long it held them), not the protocol." if same else ".")]
        if "seeds" in simulated:
            L += render_seeds(simulated["seeds"])
    L += ["", report.environment_md(env), report.rerun_md(None, "lab-rudp")]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    from ..labcode import use_vendor
    use_vendor()                           # C ikcp's binding and aioquic, on VMs and machines
    return dispatch("rudp", {"echo": echo_main, "ping": ping_main, "sink": sink_main, "source": source_main,
                             "udpserve": udpserve_main, "udpload": udpload_main}, argv)


if __name__ == "__main__":
    sys.exit(main())
