"""Lab backlog: the SYN queue (半连接队列) and the accept queue (全连接队列).

A server on h1 listens but does not accept(); a client on h2 opens many
connections at once. The lab sweeps listen()'s backlog against
net.core.somaxconn, fills the SYN queue with handshakes whose 3rd ACK never
arrives (a SYN flood, with and without SYN cookies, against
net.ipv4.tcp_max_syn_backlog), overflows the accept queue at 3rd-ACK time
with tcp_abort_on_overflow 0 and 1, and times connects against a server that
accepts slowly (SYN retransmissions: 1 s, 3 s ...).

    hpnlab lab backlog
    python -m hpnlab.labs.backlog server|client ...   (the agents)
"""
from __future__ import annotations

import argparse
import errno
import json
import select
import signal
import socket
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .. import report
from . import pcap
from ._agent import dispatch, listener
from ._kit import (
    Capture,
    LabError,
    agent_argv,
    deferred_interrupts,
    host_pair,
    nstat,
    set_sysctls,
)

HELP = "SYN queue / accept queue: backlog vs somaxconn, SYN cookies, ListenOverflows, abort_on_overflow RSTs"
PORT = 42000
SYSCTLS = ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies",
           "net.ipv4.tcp_abort_on_overflow", "net.ipv4.tcp_synack_retries", "net.ipv4.tcp_syn_retries"]
COUNTERS = ["TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtSyncookiesSent", "TcpExtSyncookiesRecv",
            "TcpExtTCPReqQFullDrop", "TcpExtTCPReqQFullDoCookies", "TcpExtTCPSynRetrans", "TcpRetransSegs",
            "TcpOutRsts", "TcpEstabResets", "TcpAttemptFails", "TcpExtTCPAbortOnData"]


# ================================================================ agents

def server_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.backlog server")
    ap.add_argument("--addr", default="0.0.0.0")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backlog", type=int, required=True)
    ap.add_argument("--accept-every", type=float, default=0.0, help="accept one connection every S seconds (0: never)")
    a = ap.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    s = listener(a.port, a.backlog, a.addr)
    print(json.dumps({"listening": True}), flush=True)
    accepted, held = 0, []
    while not stop:
        if a.accept_every > 0:
            r, _, _ = select.select([s], [], [], a.accept_every)
            if r:
                c, _ = s.accept()
                held.append(c)
                accepted += 1
                time.sleep(a.accept_every)
        else:
            time.sleep(0.05)
    print(json.dumps({"accepted": accepted}), flush=True)
    return 0


def client_main(argv: list[str]) -> int:
    """Open N non-blocking connects at once; report each one's fate; then hold
    the sockets open until told to go (SIGTERM), so the server side can be read."""
    ap = argparse.ArgumentParser(prog="hpnlab.labs.backlog client")
    ap.add_argument("--target", required=True, help="IP:PORT")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--wait", type=float, default=1.2, help="seconds to wait for the connects")
    ap.add_argument("--probe", action="store_true",
                    help="after the wait, send a byte on each connected socket and look for RSTs")
    ap.add_argument("--probe-wait", type=float, default=1.5)
    a = ap.parse_args(argv)
    host, port = a.target.rsplit(":", 1)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    socks, started, fate = [], [], []
    poller = select.poll()
    for i in range(a.n):
        s = socket.socket()
        s.setblocking(False)
        t = time.monotonic()
        rc = s.connect_ex((host, int(port)))
        socks.append(s)
        started.append(t)
        fate.append({"i": i, "state": "pending" if rc == errno.EINPROGRESS else errno.errorcode.get(rc, str(rc))})
        if rc == 0:
            fate[-1].update(state="connected", ms=0.0)
        poller.register(s.fileno(), select.POLLOUT)
    print(json.dumps({"sent": a.n}), flush=True)
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    deadline = time.monotonic() + a.wait
    pending = sum(1 for f in fate if f["state"] == "pending")
    while pending and time.monotonic() < deadline:
        for fd, _ev in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            i = by_fd[fd]
            poller.unregister(fd)
            err = socks[i].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            fate[i]["ms"] = round((time.monotonic() - started[i]) * 1000, 3)
            fate[i]["state"] = "connected" if err == 0 else errno.errorcode.get(err, str(err))
            pending -= 1
    for f in fate:
        if f["state"] == "pending":
            f["state"] = "timeout"
    if a.probe:
        for f, s in zip(fate, socks):
            if f["state"] == "connected":
                try:
                    s.send(b"x")
                except OSError as exc:
                    f["probe"] = errno.errorcode.get(exc.errno or 0, str(exc))
        time.sleep(a.probe_wait)
        for f, s in zip(fate, socks):
            if f["state"] == "connected" and "probe" not in f:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                f["probe"] = "ok" if err == 0 else errno.errorcode.get(err, str(err))
    print(json.dumps({"fate": fate}), flush=True)
    while not stop:                       # keep the sockets while the lab reads the server side
        time.sleep(0.05)
    return 0


# ================================================================ orchestration

def _json_line(proc, timeout: float, want: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out, err = proc.logs()
        for line in out.splitlines():
            if line.startswith("{") and want in line:
                return json.loads(line)
        if not proc.alive():
            raise LabError(f"[{proc.host.name}] {proc.name} exited: {err.strip()[-800:]}")
        time.sleep(0.02)
    raise LabError(f"[{proc.host.name}] {proc.name} printed no {want!r} in {timeout:g}s")


class HoldThirdAck:
    """An nftables rule on the server that drops the handshake's 3rd ACK (pure
    ACKs to the port): handshakes stay in the SYN queue as if the clients were a
    SYN flood. Removed on exit, whatever happens."""
    TABLE = "hpnlab_backlog"

    def __init__(self, host, port: int):
        self.host, self.port = host, port

    def __enter__(self):
        self.host.run(["nft", "add", "table", "inet", self.TABLE])
        self.host.run(["nft", "add", "chain", "inet", self.TABLE, "in",
                       "{ type filter hook input priority 0 ; }"])
        self.host.run(["nft", "add", "rule", "inet", self.TABLE, "in", "tcp", "dport", str(self.port),
                       "tcp flags & (fin | syn | rst | ack) == ack", "counter", "drop"])
        return self

    def dropped(self) -> int:
        out = self.host.run(["nft", "list", "table", "inet", self.TABLE], check=False).stdout
        for word_i, word in enumerate(out.split()):
            if word == "packets":
                return int(out.split()[word_i + 1])
        return 0

    def __exit__(self, *exc):
        with deferred_interrupts():
            self.host.run(["nft", "delete", "table", "inet", self.TABLE], check=False)


def listener_queue(host, port: int) -> tuple[int, int]:
    """(Recv-Q, Send-Q) of the listener: for a LISTEN socket, the accept queue's
    current length and its limit (min(backlog, somaxconn))."""
    out = host.run(["ss", "-Hlnt", f"sport = :{port}"], timeout=10).stdout.split()
    if len(out) < 3:
        raise LabError(f"[{host.name}] no listener on {port}")
    return int(out[1]), int(out[2])


def count_state(host, port: int, state: str) -> int:
    out = host.run(["ss", "-Hnt", "state", state, f"sport = :{port}"], timeout=10).stdout
    return len([line for line in out.splitlines() if line.strip()])


def one_case(srv, cli, server_ip: str, port: int, backlog: int, n: int, wait: float,
             accept_every: float = 0.0, hold_ack: float | None = None, probe: bool = False,
             prefill: int = 0) -> dict:
    """One experiment: listen(backlog), `prefill` normal connections, then `n`
    connects (with the 3rd ACK held for `hold_ack` s if given); read both sides."""
    before_s, before_c = nstat(srv, COUNTERS), nstat(cli, COUNTERS)
    with ExitStack() as stack:      # the clients, then the server, stop on the way out
        server = stack.enter_context(srv.start(agent_argv(srv, "backlog", "server", "--port", port, "--backlog",
                                                          backlog, "--accept-every", accept_every),
                                               name=f"backlog-server-{port}"))
        _json_line(server, 10, "listening")
        if prefill:
            pre = stack.enter_context(cli.start(agent_argv(cli, "backlog", "client", "--target",
                                                           f"{server_ip}:{port}", "--n", prefill, "--wait", 0.5),
                                                name=f"backlog-prefill-{port}"))
            _json_line(pre, 10, "fate")
        syn_recv_held = held = None
        with ExitStack() as holding:    # the 3rd ACKs are let through again before the clients' end
            hold = holding.enter_context(HoldThirdAck(srv, port)) if hold_ack is not None else None
            c = stack.enter_context(cli.start(agent_argv(cli, "backlog", "client", "--target", f"{server_ip}:{port}",
                                                         "--n", n, "--wait", wait, *(["--probe"] if probe else [])),
                                              name=f"backlog-client-{port}"))
            if hold is not None and hold_ack is not None:
                _json_line(c, 15, "sent")        # every SYN is out: now hold their 3rd ACKs
                time.sleep(hold_ack)
                syn_recv_held = count_state(srv, port, "syn-recv")
                held = hold.dropped()
        fate = _json_line(c, wait + 15, "fate")["fate"]
        recvq, sendq = listener_queue(srv, port)
        row = {"backlog": backlog, "n": n, "prefill": prefill, "accept_queue": recvq, "limit": sendq,
               "syn_recv": count_state(srv, port, "syn-recv") if syn_recv_held is None else syn_recv_held,
               "server_established": count_state(srv, port, "established"),
               "client": _summarise(fate), "fate": fate}
        if hold_ack is not None:
            row["third_acks_dropped"] = held
        row["t_measured"] = time.time()        # before the clients go away (and reset what is left)
    after_s, after_c = nstat(srv, COUNTERS), nstat(cli, COUNTERS)
    row["server_counters"] = {k: after_s[k] - before_s[k] for k in COUNTERS}
    row["client_counters"] = {k: after_c[k] - before_c[k] for k in COUNTERS}
    return row


def _summarise(fate: list[dict]) -> dict:
    out: dict = {}
    for f in fate:
        out[f["state"]] = out.get(f["state"], 0) + 1
        if "probe" in f:
            key = f"probe_{f['probe']}"
            out[key] = out.get(key, 0) + 1
    lat = sorted(f["ms"] for f in fate if f["state"] == "connected")
    if lat:
        out["connect_ms_median"] = lat[len(lat) // 2]
        out["connect_ms_max"] = lat[-1]
    return out


def add_arguments(p) -> None:
    from ..cli._common import positive_float, positive_int_list
    p.add_argument("--hosts", default="h1,h2", help="server,client (default: h1,h2)")
    p.add_argument("--network")
    p.add_argument("--backlogs", type=positive_int_list, default="1,8,64,256", help="listen() backlogs to sweep")
    p.add_argument("--somaxconns", type=positive_int_list, default="16,4096",
                   help="net.core.somaxconn values to sweep")
    p.add_argument("--extra", type=int, default=6, help="connections beyond the queue's capacity")
    p.add_argument("--wait", type=positive_float, default=1.3, help="seconds a client waits for its connects")
    p.add_argument("--quick", action="store_true", help="a shorter run (tests): fewer cases")


def run(provider, args, step) -> dict:
    srv, cli, net = host_pair(provider, args.hosts, "server,client", args.network, ("tcpdump", "ss", "nstat", "nft"))
    names = [srv.name, cli.name]
    hosts = {srv.name: srv, cli.name: cli}
    ip = str(srv.address(net))
    out = report.results_dir("backlog", getattr(args, "results", None))
    backlogs = [int(x) for x in args.backlogs.split(",")]
    somaxconns = [int(x) for x in args.somaxconns.split(",")]
    if args.quick:
        backlogs, somaxconns = backlogs[:2] + backlogs[-1:], somaxconns[:1]
    old = {k: srv.sysctl(k) for k in SYSCTLS}
    env = report.fingerprint(provider, SYSCTLS, hosts)
    port = PORT
    data: dict[str, Any] = {"sweep": [], "synq": [], "overflow": [], "slow": None}
    try:
        with Capture(provider, f"{names[0]}:{net}", out / "server.pcap",
                     f"tcp and portrange {PORT}-{PORT + 99}"):
            # -- A: accept queue = min(backlog, somaxconn) + 1
            set_sysctls(srv, {"net.ipv4.tcp_syncookies": 1, "net.ipv4.tcp_abort_on_overflow": 0,
                              "net.ipv4.tcp_max_syn_backlog": 4096})
            for smc in somaxconns:
                set_sysctls(srv, {"net.core.somaxconn": smc})
                for b in backlogs:
                    expect = min(b, smc) + 1
                    step(f"A accept queue: backlog={b} somaxconn={smc} → expect {expect}")
                    row = one_case(srv, cli, ip, port, b, expect + args.extra, args.wait)
                    row.update(somaxconn=smc, expected=expect)
                    data["sweep"].append(row)
                    port += 1
            # -- B: SYN queue under a "SYN flood" (3rd ACKs dropped)
            set_sysctls(srv, {"net.core.somaxconn": 4096})
            synq_cases = [(1, 4096, 32), (0, 4096, 32), (0, 32, 256)]
            if args.quick:
                synq_cases = synq_cases[:2]
            for cookies, msb, b in synq_cases:
                set_sysctls(srv, {"net.ipv4.tcp_syncookies": cookies, "net.ipv4.tcp_max_syn_backlog": msb})
                # a peer the server has RTT metrics for is "proven" and exempt from the
                # tcp_max_syn_backlog rule: forget earlier connections first
                srv.run(["ip", "tcp_metrics", "flush", "all"], check=False)
                step(f"B SYN queue: syncookies={cookies} tcp_max_syn_backlog={msb} backlog={b}")
                row = one_case(srv, cli, ip, port, b, b + 40, 0.6, hold_ack=0.4)
                row.update(syncookies=cookies, max_syn_backlog=msb)
                data["synq"].append(row)
                port += 1
            set_sysctls(srv, {"net.ipv4.tcp_syncookies": 1, "net.ipv4.tcp_max_syn_backlog": 4096})
            # -- C: the accept queue is full when the 3rd ACK comes
            for abort in (0, 1):
                set_sysctls(srv, {"net.ipv4.tcp_abort_on_overflow": abort})
                step(f"C 3rd ACK into a full accept queue: tcp_abort_on_overflow={abort}")
                row = one_case(srv, cli, ip, port, 8, 8, 1.0, hold_ack=0.2, probe=True, prefill=8)
                row.update(abort_on_overflow=abort, port=port)
                data["overflow"].append(row)
                port += 1
            set_sysctls(srv, {"net.ipv4.tcp_abort_on_overflow": 0})
            # -- D: connect latency against a slowly accepting server
            if not args.quick:
                step("D connect latency: backlog 8, server accepts one every 40 ms, 40 clients")
                row = one_case(srv, cli, ip, port, 8, 40, 4.5, accept_every=0.04)
                data["slow"] = row
                port += 1
    finally:
        with deferred_interrupts():
            set_sysctls(srv, old)
    step("reading the pcap, plotting")
    segs = pcap.read_pcap(out / "server.pcap")
    for row in data["overflow"]:
        row["rst_from_server"] = sum(1 for s in segs if s.sport == row["port"] and s.flags & pcap.RST
                                     and s.ts < row["t_measured"])
    plots = plot(data, out)
    md = render(data, names, env, plots)
    path = report.write_report(out, md, {**data, "environment": env})
    return {"report": path, "dir": out, "data": data}


def plot(data: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for smc in sorted({r["somaxconn"] for r in data["sweep"]}):
        rows = [r for r in data["sweep"] if r["somaxconn"] == smc]
        ax.plot([r["backlog"] for r in rows], [r["accept_queue"] for r in rows], "o-",
                label=f"measured, somaxconn={smc}")
        ax.plot([r["backlog"] for r in rows], [r["expected"] for r in rows], "k:", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("listen() backlog")
    ax.set_ylabel("accept queue length (ss Recv-Q)")
    ax.set_title("accept queue: min(backlog, somaxconn) + 1 (dotted)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accept_queue.png", dpi=110)
    plt.close(fig)
    files.append("accept_queue.png")
    if data["slow"]:
        lat = sorted(f["ms"] / 1000 for f in data["slow"]["fate"] if f["state"] == "connected")
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        ax.plot(range(1, len(lat) + 1), lat, "o", ms=4)
        ax.set_xlabel("connection (sorted by connect time)")
        ax.set_ylabel("connect() latency, s")
        ax.set_title("slow accept(): SYNs dropped while the accept queue is full are retransmitted at 1 s, 3 s")
        ax.title.set_fontsize(9)
        fig.tight_layout()
        fig.savefig(out / "connect_latency.png", dpi=110)
        plt.close(fig)
        files.append("connect_latency.png")
    return files


def _c(row, side, key):
    return row[f"{side}_counters"].get(key, 0)


def render(data: dict, names: list[str], env: dict, plots: list[str]) -> str:
    srv, cli = names
    L = ["# Backlog lab: 半连接队列 (SYN queue) and 全连接队列 (accept queue)", "",
         f"Server `{srv}` listens and never calls accept(); client `{cli}` opens connections all at once.", "",
         "## A. Accept-queue length vs backlog and somaxconn", "",
         "The listener's `ss -lnt` Recv-Q is the accept queue's current length, Send-Q its limit "
         "min(backlog, net.core.somaxconn). The client asks for more connections than fit.", "",
         report.md_table(["backlog", "somaxconn", "Send-Q (limit)", "accept queue (Recv-Q)", "expected min+1",
                          "clients", "connected", "timed out", "ListenOverflows", "ListenDrops",
                          "client SYN retrans"],
                         [[r["backlog"], r["somaxconn"], r["limit"], r["accept_queue"], r["expected"], r["n"],
                           r["client"].get("connected", 0), r["client"].get("timeout", 0),
                           _c(r, "server", "TcpExtListenOverflows"), _c(r, "server", "TcpExtListenDrops"),
                           _c(r, "client", "TcpExtTCPSynRetrans")] for r in data["sweep"]]),
         "![accept queue](accept_queue.png)", "",
         "Linux lets the accept queue hold **one more** than the limit: `sk_acceptq_is_full()` tests "
         "`sk_ack_backlog > sk_max_ack_backlog`. A SYN that arrives while the queue is full is dropped "
         "(ListenOverflows and ListenDrops both count it), so the client's connect() sees no SYN-ACK and "
         "retransmits the SYN after 1 s (`client SYN retrans`); with nobody calling accept(), it times out. "
         "ListenOverflows counts every dropped SYN, the retransmitted ones too.", "",
         "## B. SYN queue under a SYN flood (3rd ACKs dropped by an nftables rule on the server)", "",
         report.md_table(["syncookies", "tcp_max_syn_backlog", "backlog", "SYNs sent", "SYN_RECV on server",
                          "SyncookiesSent", "ReqQFullDrop", "ReqQFullDoCookies", "ListenDrops"],
                         [[r["syncookies"], r["max_syn_backlog"], r["backlog"], r["n"], r["syn_recv"],
                           _c(r, "server", "TcpExtSyncookiesSent"), _c(r, "server", "TcpExtTCPReqQFullDrop"),
                           _c(r, "server", "TcpExtTCPReqQFullDoCookies"), _c(r, "server", "TcpExtListenDrops")]
                          for r in data["synq"]]),
         "The SYN queue (requests in SYN_RECV) is bounded by the same limit as the accept queue, and like it "
         "holds one more (`inet_csk_reqsk_queue_is_full()`: length > min(backlog, somaxconn)). When it is full, with "
         "`tcp_syncookies=1` the kernel answers with a SYN cookie instead of queueing (SyncookiesSent); with "
         "`tcp_syncookies=0` it drops the SYN (TCPReqQFullDrop). Without cookies `tcp_max_syn_backlog` adds a "
         "second bound: a new request is dropped once fewer than a quarter of tcp_max_syn_backlog "
         "places remain, i.e. the SYN queue stops at ¾ × tcp_max_syn_backlog — but only for peers the "
         "kernel has no RTT history for (`tcp_peer_is_proven()`; the lab flushes `ip tcp_metrics` first, "
         "otherwise the client, which connected before, would be exempt).", "",
         "## C. The 3rd ACK meets a full accept queue", "",
         "The accept queue is pre-filled with 8 connections (backlog 8: room for 9); 8 more handshakes "
         "are held in the SYN queue (3rd ACK dropped for 0.2 s), then released: when the SYN-ACK is "
         "retransmitted the clients ACK again, one fits, the rest overflow.", "",
         report.md_table(["tcp_abort_on_overflow", "client connect() ok", "ListenOverflows",
                          "RSTs from server (pcap)", "client sockets reset", "client sockets still 'ok'"],
                         [[r["abort_on_overflow"], r["client"].get("connected", 0),
                           _c(r, "server", "TcpExtListenOverflows"), r.get("rst_from_server", 0),
                           r["client"].get("probe_ECONNRESET", 0), r["client"].get("probe_ok", 0)]
                          for r in data["overflow"]]),
         "The client's connect() returned success for all of them: for the client the handshake is done "
         "when it sends the 3rd ACK. With `tcp_abort_on_overflow=0` the server silently drops that ACK, keeps "
         "the request in the SYN queue and retransmits its SYN-ACK, hoping the queue drains — the client "
         "sits in ESTABLISHED with data the server does not take. With `=1` the server answers the "
         "overflowing ACK with a RST and the client's next send/recv fails with ECONNRESET.", ""]
    if data["slow"]:
        r = data["slow"]
        lat = sorted(f["ms"] for f in r["fate"] if f["state"] == "connected")
        buckets = {"< 0.5 s": sum(1 for x in lat if x < 500), "0.5–2 s": sum(1 for x in lat if 500 <= x < 2000),
                   "2–4.5 s": sum(1 for x in lat if x >= 2000), "timed out": r["client"].get("timeout", 0)}
        L += ["## D. Connect latency against a slowly accepting server", "",
              "backlog 8, 40 clients at once, the server accepts one connection every 40 ms.", "",
              report.md_table(list(buckets), [list(buckets.values())]),
              f"Client SYN retransmissions: {_c(r, 'client', 'TcpExtTCPSynRetrans')}; "
              f"server ListenOverflows: {_c(r, 'server', 'TcpExtListenOverflows')}.", "",
              "![connect latency](connect_latency.png)", "",
              "Latency comes in steps: connections that found room connect in well under a millisecond; "
              "the others had their SYN dropped and wait for the SYN retransmission timer — 1 s after the "
              "first SYN, then 3 s, 7 s … (exponential backoff from an initial RTO of 1 s). A server that "
              "accepts slowly turns a full accept queue into whole seconds of connect latency.", ""]
    L += ["Files: `server.pcap` (the server's NIC), `data.json` (every connection's fate, every counter).", "",
          report.environment_md(env), report.rerun_md(None, "lab-backlog")]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    return dispatch("backlog", {"server": server_main, "client": client_main}, argv)


if __name__ == "__main__":
    sys.exit(main())
