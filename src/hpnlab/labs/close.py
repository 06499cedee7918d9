"""Lab close: 四次挥手 — active/passive close, simultaneous close, half-close,
RST on close with unread data, and TIME_WAIT against SO_REUSEADDR and the
fixed ports of the P2P lab.

Every scenario is captured (pcap on the client's NIC), its states sampled
with `ss` on both hosts, and, on the netns provider, every state change read
from the kernel's `sock:inet_sock_set_state` tracepoint.

    hpnlab lab close
    python -m hpnlab.labs.close server|client|tw ...     (the agents)
"""
from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import threading
import time
from contextlib import ExitStack

from .. import report
from . import pcap
from ._agent import dispatch, listener
from ._kit import (
    Capture,
    LabError,
    StateTrace,
    agent_argv,
    deferred_interrupts,
    delay_line,
    host_pair,
    run_agents,
    set_sysctls,
    state_paths,
)
from .p2p import peer_jobs

HELP = "four-way close: active/passive, simultaneous (CLOSING), half-close, RST on close, TIME_WAIT"
PORT = 44000
SCENARIOS = ("normal", "simultaneous", "halfclose", "rst")


# ================================================================ agents

def _err(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc)) if exc.errno else type(exc).__name__


def _close_phase(segments: list[str]) -> list[str]:
    """The segments from the last one before the first FIN or RST (the data before that, such
    as the simultaneous scenario's pings, is not what the row is about)."""
    first = next((i for i, s in enumerate(segments) if "FIN" in s or "RST" in s), len(segments))
    return segments[max(0, first - 1):][:10]


def _lines(sock: socket.socket):
    """The lines a peer sends, without their newline, until it closes."""
    buf = b""
    while True:
        while b"\n" not in buf:
            data = sock.recv(4096)
            if not data:
                return
            buf += data
        line, buf = buf.split(b"\n", 1)
        yield line.decode()


def server_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.close server")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--scenario", choices=SCENARIOS, required=True)
    ap.add_argument("--hold", type=float, default=0.4, help="seconds to stay in CLOSE_WAIT")
    a = ap.parse_args(argv)
    ls = listener(a.port, 4)
    print(json.dumps({"listening": True}), flush=True)
    c, _ = ls.accept()
    ls.close()
    log: dict = {"role": "server", "events": []}

    def ev(what):
        log["events"].append([round(time.time(), 6), what])
    if a.scenario == "normal":
        c.recv(100)
        while c.recv(100):
            pass
        ev("read EOF (peer's FIN): CLOSE_WAIT")
        time.sleep(a.hold)
        c.close()
        ev("close(): LAST_ACK")
    elif a.scenario == "simultaneous":
        # answer the client's pings, then close `after` seconds from its "close-in" message
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = _lines(c)
        for line in lines:
            if line == "ping":
                c.sendall(b"pong\n")
            elif line.startswith("close-in "):
                time.sleep(float(line.split()[1]))
                break
        c.close()
        ev("close() at the agreed moment")
    elif a.scenario == "halfclose":
        c.recv(100)
        while c.recv(100):
            pass
        ev("read EOF: the client half-closed; still sending")
        for i in range(3):
            c.sendall(f"late line {i}\n".encode())
            time.sleep(a.hold / 3)
        c.close()
        ev("close()")
    elif a.scenario == "rst":
        c.sendall(b"x" * 4096)
        ev("sent 4096 bytes the client will not read")
        try:
            while c.recv(100):
                pass
            ev("read EOF")
        except OSError as exc:
            ev(f"recv: {_err(exc)}")
        c.close()
    print(json.dumps(log), flush=True)
    return 0


def client_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.close client")
    ap.add_argument("--server", required=True, help="IP:PORT")
    ap.add_argument("--scenario", choices=SCENARIOS, required=True)
    a = ap.parse_args(argv)
    ip, port = a.server.rsplit(":", 1)
    c = socket.create_connection((ip, int(port)), timeout=10)
    log: dict = {"role": "client", "events": [], "local_port": c.getsockname()[1]}

    def ev(what):
        log["events"].append([round(time.time(), 6), what])
    if a.scenario == "normal":
        c.sendall(b"hello\n")
        c.close()
        ev("close(): active close, FIN_WAIT1")
    elif a.scenario == "simultaneous":
        # Agree on the moment without trusting the hosts' clocks (two emulated guests may differ
        # by more than the delay that makes FINs cross): the server closes `after` seconds from
        # receiving "close-in", the client `after` seconds plus the one-way time from sending it.
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines, rtts = _lines(c), []
        for _ in range(5):
            t0 = time.monotonic()
            c.sendall(b"ping\n")
            next(lines)
            rtts.append(time.monotonic() - t0)
        after = 0.3
        sent = time.monotonic()
        c.sendall(f"close-in {after}\n".encode())
        time.sleep(max(0.0, sent + after + min(rtts) / 2 - time.monotonic()))
        c.close()
        ev(f"close() at the agreed moment (one-way time {min(rtts) / 2 * 1000:.1f} ms)")
    elif a.scenario == "halfclose":
        c.sendall(b"request\n")
        c.shutdown(socket.SHUT_WR)
        ev("shutdown(SHUT_WR): FIN sent, can still read")
        got = b""
        while True:
            chunk = c.recv(1000)
            if not chunk:
                break
            got += chunk
            ev(f"read {len(chunk)} bytes after the half-close")
        log["received_after_shutdown"] = got.decode()
        c.close()
    elif a.scenario == "rst":
        time.sleep(0.2)                       # the server's bytes arrive and stay unread
        c.close()
        ev("close() with 4096 unread bytes")
    print(json.dumps(log), flush=True)
    return 0


def tw_main(argv: list[str]) -> int:
    """TIME_WAIT against bind()/connect() from a fixed port, on the host that closed first."""
    ap = argparse.ArgumentParser(prog="hpnlab.labs.close tw")
    ap.add_argument("--server", required=True, help="IP:PORT of a server that accepts and closes after EOF")
    ap.add_argument("--local-port", type=int, required=True)
    a = ap.parse_args(argv)
    ip, port = a.server.rsplit(":", 1)
    remote = (ip, int(port))
    out = {}
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("0.0.0.0", a.local_port))
    c.connect(remote)
    c.close()                                  # active close: this side gets TIME_WAIT
    time.sleep(0.1)

    def attempt(reuse: bool, connect: bool) -> str:
        s = socket.socket()
        try:
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", a.local_port))
            if not connect:
                return "ok"
            s.settimeout(3)
            s.connect(remote)
            return "ok"
        except OSError as exc:
            return _err(exc)
        finally:
            s.close()
    out["bind_without_reuseaddr"] = attempt(False, False)
    out["bind_with_reuseaddr"] = attempt(True, False)
    out["connect_same_4tuple_at_0.1s"] = attempt(True, True)
    # a successful reconnect makes a new TIME_WAIT; the next attempt is measured against it
    time.sleep(1.2)
    out["connect_same_4tuple_after_1s"] = attempt(True, True)
    print(json.dumps(out), flush=True)
    return 0


def sink_main(argv: list[str]) -> int:
    """Accept connections forever; close each after reading EOF (the passive side)."""
    ap = argparse.ArgumentParser(prog="hpnlab.labs.close sink")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    ls = listener(a.port, 16)
    while True:
        c, _ = ls.accept()
        try:
            while c.recv(100):
                pass
        except OSError:
            pass
        c.close()


# ================================================================ orchestration

class SsSampler:
    """`ss -tan` for some ports on a host, every ~20 ms, in a thread."""

    def __init__(self, host, port_lo: int, port_hi: int):
        self.host, self.filter = host, f"( sport >= :{port_lo} and sport <= :{port_hi} ) or " \
                                        f"( dport >= :{port_lo} and dport <= :{port_hi} )"
        self.samples: list[tuple[float, list[tuple[str, str, str]]]] = []
        self._stop = threading.Event()

    def __enter__(self):
        def loop():
            while not self._stop.is_set():
                out = self.host.run(["ss", "-Htan", self.filter], check=False, timeout=10).stdout
                rows = [(p[0], p[3], p[4]) for p in (line.split() for line in out.splitlines()) if len(p) >= 5]
                self.samples.append((time.time(), rows))
                self._stop.wait(0.02)
        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(15)

    def states_for(self, port: int, t0: float = 0.0, t1: float = float("inf")) -> list[str]:
        """The distinct non-LISTEN states seen for a port between t0 and t1, in order of first sighting."""
        seen: list[str] = []
        for t, rows in self.samples:
            if not t0 <= t <= t1:
                continue
            for state, local, peer in rows:
                if state != "LISTEN" and (local.endswith(f":{port}") or peer.endswith(f":{port}")):
                    if state not in seen:
                        seen.append(state)
        return seen


def add_arguments(p) -> None:
    p.add_argument("--hosts", default="h1,h2", help="server,client (default: h1,h2)")
    p.add_argument("--network")
    from ..cli._common import non_negative
    p.add_argument("--delay-ms", type=non_negative, default=20.0,
                   help="one-way delay added for the simultaneous close (default: 20 ms)")
    p.add_argument("--no-p2p", action="store_true", help="skip the P2P fixed-port TIME_WAIT part")


def run(provider, args, step) -> dict:
    srv, cli, net = host_pair(provider, args.hosts, "server,client", args.network, ("tcpdump", "ss"))
    names = [srv.name, cli.name]
    hosts = {srv.name: srv, cli.name: cli}
    sip, cip = str(srv.address(net)), str(cli.address(net))
    out = report.results_dir("close", getattr(args, "results", None))
    env = report.fingerprint(provider, ["net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_fin_timeout",
                                        "net.ipv4.tcp_max_tw_buckets"], hosts)
    # a fresh block of 100 ports per run: TIME_WAITs of a run a minute ago must not meet this one
    base = PORT + (int(time.time()) % 10) * 100
    lo, hi = base, base + 99
    tracer = StateTrace((lo, hi)) if StateTrace.available(provider) else None
    results: dict = {"scenarios": {}, "tw": [], "p2p": []}
    knobs = ("net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_timestamps")
    old = {h.name: {k: h.sysctl(k) for k in knobs} for h in (srv, cli)}
    with ExitStack() as stack:      # unwound in reverse: the tracer first, the sysctls last
        stack.callback(_restore_sysctls, (srv, cli), old)
        stack.enter_context(Capture(provider, f"{names[1]}:{net}", out / "close.pcap",
                                    f"tcp and portrange {lo}-{hi}"))
        ss_s = stack.enter_context(SsSampler(srv, lo, hi))
        ss_c = stack.enter_context(SsSampler(cli, lo, hi))
        if tracer:
            stack.enter_context(tracer)
        port = base
        for scen in SCENARIOS:
            step(f"{scen} close on port {port}")
            t0 = time.time()
            results["scenarios"][scen] = _scenario(srv, cli, sip, port, scen, args, net)
            results["scenarios"][scen].update(port=port, t0=t0, t1=time.time())
            port += 1
        time.sleep(0.3)
        # TIME_WAIT vs bind/connect from a fixed port
        with srv.start(agent_argv(srv, "close", "sink", "--port", base + 50), name="close-sink"):
            srv.wait_for_port(base + 50)
            for i, ts in enumerate((1, 0)):
                set_sysctls(cli, {"net.ipv4.tcp_tw_reuse": 0, "net.ipv4.tcp_timestamps": ts})
                step(f"TIME_WAIT vs SO_REUSEADDR, tcp_timestamps={ts}, tcp_tw_reuse=0")
                res = cli.run(agent_argv(cli, "close", "tw", "--server", f"{sip}:{base + 50}",
                                         "--local-port", base + 60 + i), timeout=30)
                results["tw"].append({"tcp_timestamps": ts, **json.loads(res.stdout.splitlines()[-1])})
        # the fixed ports of the P2P lab
        if not args.no_p2p:
            for i, ts in enumerate((1, 0)):
                for h in (srv, cli):
                    set_sysctls(h, {"net.ipv4.tcp_tw_reuse": 0, "net.ipv4.tcp_timestamps": ts})
                results["p2p"].append(_p2p_twice(provider, srv, cli, sip, cip, base + 70 + i, ts, step))
    step("reading the pcap and the state traces")
    segs = pcap.read_pcap(out / "close.pcap")
    paths = state_paths(tracer.events) if tracer else {}
    for r in results["scenarios"].values():
        p = r["port"]
        conn = [s for s in segs if p in (s.sport, s.dport)]
        r["segments"] = [f"{'C' if s.src == cip else 'S'} {s.flagstr}" + (f" len={s.length}" if s.length else "")
                         for s in conn if s.flags & (pcap.FIN | pcap.RST) or s.length or
                         (s.flags == pcap.ACK and _after_fin(conn, s))]
        r["rst"] = sum(1 for s in conn if s.flags & pcap.RST)
        r["ss_server"] = ss_s.states_for(p, r["t0"], r["t1"])
        r["ss_client"] = ss_c.states_for(p, r["t0"], r["t1"])
        if tracer:
            r["trace_server"] = _closing_path(paths, sip, p)
            r["trace_client"] = _closing_path(paths, cip, None, dport=p)
    md = render(results, names, env, args, tracer is not None)
    path = report.write_report(out, md, {**results, "environment": env})
    return {"report": path, "dir": out, **results}


def _after_fin(conn, seg) -> bool:
    first_fin = next((s.ts for s in conn if s.flags & pcap.FIN), None)
    return first_fin is not None and seg.ts >= first_fin


def _closing_path(paths, addr, sport, dport=None) -> list[str] | None:
    for (sa, sp, _da, dp), path in paths.items():
        if sa == addr and (sport is None or sp == sport) and (dport is None or dp == dport):
            if "ESTABLISHED" in path:
                return path[path.index("ESTABLISHED"):]
    return None


def _restore_sysctls(hosts, old: dict) -> None:
    with deferred_interrupts():
        for h in hosts:
            set_sysctls(h, old[h.name])


def _scenario(srv, cli, sip: str, port: int, scen: str, args, net: str) -> dict:
    with ExitStack() as stack:      # unwound in reverse: client, server, then the delay lines
        if scen == "simultaneous":
            for h in (srv, cli):
                stack.enter_context(delay_line(h, h.nic(net).ifname, (port, port), args.delay_ms))
        s = stack.enter_context(srv.start(agent_argv(srv, "close", "server", "--port", port, "--scenario", scen),
                                          name=f"close-server-{port}"))
        srv.wait_for_port(port)
        c = stack.enter_context(cli.start(agent_argv(cli, "close", "client", "--server", f"{sip}:{port}",
                                                     "--scenario", scen), name=f"close-client-{port}"))
        res = {}
        for who, proc in (("server", s), ("client", c)):
            try:
                proc.wait(15)
            except TimeoutError:
                raise LabError(f"{scen}: the {who} did not finish: {proc.logs()[1][-500:]}") from None
            out, err = proc.logs()
            lines = [line for line in out.splitlines() if line.startswith("{") and "events" in line]
            if not lines:
                raise LabError(f"{scen}: the {who} failed: {err[-800:]}")
            res[who] = json.loads(lines[-1])
        time.sleep(0.4 if scen != "simultaneous" else 0.2)   # let ss see FIN_WAIT2/TIME_WAIT
        # who holds TIME_WAIT afterwards: asked once, synchronously (it lasts 60 s)
        tw = ["ss", "-Htan", "state", "time-wait", f"( sport = :{port} or dport = :{port} )"]
        res["time_wait_after"] = {who: len([row for row in h.run(tw).stdout.splitlines() if row.strip()])
                                  for who, h in (("client", cli), ("server", srv))}
        return res


def _p2p_twice(provider, a, b, ip_a: str, ip_b: str, port: int, ts: int, step) -> dict:
    """Two P2P simultaneous opens on the same fixed ports, 1.5 s apart: the
    first one's TIME_WAIT sits on exactly the 4-tuple the second one needs."""
    res: dict = {"tcp_timestamps": ts, "port": port, "tries": []}
    for i in range(2):
        step(f"P2P on fixed port {port}, run {i + 1}/2, tcp_timestamps={ts}")
        common = ["--port", port, "--tries", 1, "--timeout", 3, "--jitter-ms", 1]    # (they agree on the start)
        r = run_agents(peer_jobs(provider, a, b, ip_a, ip_b, common), timeout=25)
        held = ["ss", "-Htan", "state", "time-wait", f"sport = :{port}"]
        tw = {h.name: len([row for row in h.run(held).stdout.splitlines() if row.strip()]) for h in (a, b)}
        ta, tb = r[a.name]["tries"][0], r[b.name]["tries"][0]
        res["tries"].append({"ok": ta["ok"] and tb["ok"], "errors": ta["errors"] + tb["errors"],
                             "attempts": [ta["attempts"], tb["attempts"]], "time_wait_after": tw})
        time.sleep(0.7)
    return res


def render(results: dict, names: list[str], env: dict, args, traced: bool) -> str:
    srv, cli = names
    sc = results["scenarios"]

    def tr(r, who):
        p = r.get(f"trace_{who}")
        return "→".join(p) if p else "-"
    L = ["# Close lab: 四次挥手, simultaneous close, half-close, RST, TIME_WAIT", "",
         f"Server `{srv}` (S), client `{cli}` (C). `pcap` lists the FIN/RST/data segments and the ACKs "
         "after the first FIN, from the client's NIC. `ss` is what sampling `ss -tan` every ~20 ms saw; "
         + ("`trace` is every state change the kernel made (tracepoint `sock:inet_sock_set_state`)."
            if traced else "(no state tracepoint on this provider)"), "",
         "The tracepoint follows the full socket: on entering TIME_WAIT the kernel swaps it for a small "
         "timewait socket, so the trace ends in `→CLOSE` where ss shows TIME-WAIT.", "",
         report.md_table(["scenario", "pcap", "ss client", "ss server", "trace client", "trace server",
                          "TIME_WAIT after C/S"],
                         [[k, ", ".join(_close_phase(r["segments"])), " ".join(r["ss_client"]),
                           " ".join(r["ss_server"]), tr(r, "client"), tr(r, "server"),
                           f"{r['time_wait_after']['client']}/{r['time_wait_after']['server']}"]
                          for k, r in sc.items()], align="lllllll"),
         "## What each one shows", "",
         "- **normal** — the client closes first (主动关闭): FIN_WAIT1 → FIN_WAIT2 → TIME_WAIT; the server "
         "reads EOF and sits in CLOSE_WAIT (被动关闭) until *it* calls close(), then LAST_ACK → CLOSED. "
         "Only the active closer keeps TIME_WAIT (2×MSL, 60 s on Linux).",
         f"- **simultaneous** — both call close() at the same instant; {args.delay_ms:g} ms of one-way delay "
         "(netem on both data NICs where the kernel has it, else an NFQUEUE delay line for this port only) "
         "makes the FINs cross in flight. Each side "
         "receives a FIN while in FIN_WAIT1 (its own FIN not yet ACKed) and goes to **CLOSING**, skipping "
         "FIN_WAIT2, then TIME_WAIT when its FIN is ACKed: *both* sides end in TIME_WAIT.",
         "- **halfclose** — shutdown(SHUT_WR) sends a FIN but keeps the read side: the client sits in "
         f"FIN_WAIT2 while the server (CLOSE_WAIT) still sends; the client read "
         f"{sc['halfclose']['client'].get('received_after_shutdown', '').count(chr(10))} lines after its own FIN.",
         f"- **rst** — close() with unread data in the receive queue sends RST instead of FIN "
         f"(RFC 2525; counted as TcpExtTCPAbortOnClose); {sc['rst']['rst']} RST(s) in the pcap, and the server's "
         f"recv() saw: {', '.join(e[1] for e in sc['rst']['server']['events'][1:]) or '-'}. No TIME_WAIT anywhere.", ""]
    if results["tw"]:
        keys = [k for k in results["tw"][0] if k != "tcp_timestamps"]
        L += ["## TIME_WAIT vs SO_REUSEADDR (client binds a fixed port, closes actively, then again)", "",
              "`net.ipv4.tcp_tw_reuse=0` on the client throughout; the knob is `net.ipv4.tcp_timestamps`.", "",
              report.md_table(["tcp_timestamps", *keys], [[r["tcp_timestamps"], *[r[k] for k in keys]]
                                                          for r in results["tw"]]),
              "- Without SO_REUSEADDR, bind() to a port that has a TIME_WAIT socket fails (EADDRINUSE); with it "
              "bind() succeeds — SO_REUSEADDR only says *binding* next to TIME_WAIT is fine.",
              "- connect() to the *same* peer from that bound port needs the exact 4-tuple the TIME_WAIT socket "
              "holds. Measured: with timestamps on, Linux hands the 4-tuple over at once, **even with "
              "tcp_tw_reuse=0** — `tcp_twsk_unique()` applies the tcp_tw_reuse test only when the kernel picks "
              "an ephemeral port; for a port the program bound itself it allows the reuse whenever the "
              "TIME_WAIT remembers the peer's timestamp (PAWS then rejects old duplicates). With timestamps off "
              "there is nothing to protect the new connection and connect() fails with EADDRNOTAVAIL until "
              "TIME_WAIT ends (60 s).", ""]
    if results["p2p"]:
        L += ["## TIME_WAIT and the P2P lab's fixed ports", "",
              "The P2P peers bind fixed ports and both close: the second simultaneous open on the same ports "
              "needs the same 4-tuple that the first one's TIME_WAIT holds.", "",
              report.md_table(["tcp_timestamps", "run", "connected", "connect() attempts A/B",
                               "errors", f"TIME_WAIT after ({names[0]}/{names[1]})"],
                              [[r["tcp_timestamps"], i + 1, "yes" if t["ok"] else "NO",
                                "/".join(map(str, t["attempts"])), " ".join(sorted(set(t["errors"]))) or "-",
                                "/".join(str(v) for v in t["time_wait_after"].values())]
                               for r in results["p2p"] for i, t in enumerate(r["tries"])]),
              "With timestamps (the default) the second P2P open on the same ports works: connect() takes the "
              "TIME_WAIT 4-tuple over, as above. Without timestamps, connect() on a peer that holds TIME_WAIT "
              "fails with EADDRNOTAVAIL (the `errors` column). Whether the open still succeeds then depends on "
              "who holds TIME_WAIT: if only one peer does (one side closed first), the other peer's SYNs reach "
              "that TIME_WAIT socket and the exchange of RSTs that follows can end it early (RFC 1337 "
              "\"TIME-WAIT assassination\", allowed while net.ipv4.tcp_rfc1337=0), and a later retry gets "
              "through; if both do (a simultaneous close leaves TIME_WAIT on *both* peers), every retry fails "
              "until TIME_WAIT expires (60 s). A P2P program that must not depend on that picks a fresh port "
              "per attempt (its NAT mapping then changes too: back to the rendezvous server), or closes with "
              "SO_LINGER 0 (RST, no TIME_WAIT, unsent data lost).", ""]
    L += ["Files: `close.pcap`, `data.json`.", "", report.environment_md(env), report.rerun_md(None, "lab-close")]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    return dispatch("close", {"server": server_main, "client": client_main, "tw": tw_main, "sink": sink_main}, argv)


if __name__ == "__main__":
    sys.exit(main())
