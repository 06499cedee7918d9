"""Lab epoll: level-triggered (水平触发, EPOLLLT) vs edge-triggered (边缘触发, EPOLLET).

h1 sends data to h2; h2 reads it with a 1 KiB buffer from an epoll loop in
three ways and counts what it does:

    lt        LT, one 1 KiB read per wakeup (the course's picture of LT)
    lt-drain  LT, read until EAGAIN on every wakeup
    et        ET, read until EAGAIN on every wakeup (ET requires it)
    et-once   ET with one read per wakeup (bursts only): shows that ET fires on
              every arrival, and that data left behind waits for the next one

for two sending patterns: `bulk` (N MiB as fast as TCP goes) and `bursts`
(small bursts with gaps). Every epoll_wait() and recv() is the reader's own
call, so the counts are exact; with strace present the lab cross-checks them
with `strace -c` on a separate, smaller run.

    hpnlab lab epoll --mib 16
    python -m hpnlab.labs.epoll recv|send ...    (the agents)
"""
from __future__ import annotations

import argparse
import json
import select
import shutil
import socket
import sys
import time
from pathlib import Path

from .. import report
from ._agent import dispatch, listener
from ._kit import LabError, agent_argv, deferred_interrupts, host_pair, need_tools

HELP = "level- vs edge-triggered epoll: epoll_wait calls, wakeups, reads and time for a 1 KiB reader"
PORT = 43000
MODES = ("lt", "lt-drain", "et")
ALL_MODES = MODES + ("et-once",)   # et-once: ET but one read per wakeup (the mistake ET punishes)


# ================================================================ agents

def recv_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.epoll recv")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=ALL_MODES, required=True)
    ap.add_argument("--buf", type=int, default=1024)
    ap.add_argument("--rcvbuf", type=int, default=0, help="SO_RCVBUF (0: kernel default/autotuning)")
    a = ap.parse_args(argv)
    ls = listener(a.port, 1)
    conn, _ = ls.accept()
    if a.rcvbuf:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    conn.setblocking(False)
    ep = select.epoll()
    et = a.mode.startswith("et")
    ep.register(conn.fileno(), select.EPOLLIN | select.EPOLLRDHUP | (select.EPOLLET if et else 0))
    buf = bytearray(a.buf)
    waits = wakeups = empty_waits = reads = eagain = 0
    total = 0
    reads_per_wakeup: dict[int, int] = {}
    t0 = None
    done = False
    drain = a.mode in ("lt-drain", "et")
    stranded = 0
    while not done:
        # et-once gives up after a quiet spell: long enough for every burst to have arrived
        # even on a slow (emulated) guest, so what is left in the queue was stranded by ET
        events = ep.poll(2.0 if a.mode == "et-once" else 5.0)
        waits += 1
        if not events:
            empty_waits += 1
            if a.mode == "et-once" and t0 is not None:
                # no event for 2 s: whatever is still queued was left behind by an edge
                import fcntl
                import struct
                import termios
                stranded = struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0" * 4))[0]
                break
            if waits > 3 and t0 is None:
                break
            continue
        wakeups += 1
        n_here = 0
        while True:
            try:
                n = conn.recv_into(buf)
            except BlockingIOError:
                reads += 1
                eagain += 1
                break
            reads += 1
            n_here += 1
            if n == 0:
                done = True
                break
            if t0 is None:
                t0 = time.perf_counter()
            total += n
            if not drain:
                break
        reads_per_wakeup[n_here] = reads_per_wakeup.get(n_here, 0) + 1
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    print(json.dumps({"mode": a.mode, "bytes": total, "stranded": stranded, "epoll_wait": waits, "wakeups": wakeups,
                      "empty_waits": empty_waits, "reads": reads, "eagain": eagain, "seconds": seconds,
                      "reads_per_wakeup": {str(k): v for k, v in sorted(reads_per_wakeup.items())}}))
    return 0


def send_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hpnlab.labs.epoll send")
    ap.add_argument("--to", required=True, help="IP:PORT")
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--pattern", choices=("bulk", "bursts"), default="bulk")
    ap.add_argument("--burst", type=int, default=16384, help="bytes per burst (bursts)")
    ap.add_argument("--gap-ms", type=float, default=5.0, help="pause between bursts (bursts)")
    a = ap.parse_args(argv)
    ip, port = a.to.rsplit(":", 1)
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.create_connection((ip, int(port)), timeout=5)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    chunk = bytes(65536)
    left, reset = a.bytes, False
    t0 = time.perf_counter()
    try:
        _send(s, a, chunk, left)
    except (ConnectionResetError, BrokenPipeError):
        reset = True                   # the reader gave up (et-once) and closed with unread data
    print(json.dumps({"bytes": a.bytes, "bursts": -(-a.bytes // a.burst) if a.pattern == "bursts" else 0,
                      "reset": reset, "seconds": time.perf_counter() - t0}))
    return 0


def _send(s, a, chunk: bytes, left: int) -> None:
    while left > 0:
        if a.pattern == "bulk":
            n = min(left, len(chunk))
            s.sendall(chunk[:n])
        else:
            n = min(left, a.burst)
            s.sendall(bytes(n))
            time.sleep(a.gap_ms / 1000)
        left -= n
    s.shutdown(socket.SHUT_WR)
    s.recv(1)                      # wait for the reader to close: everything was read
    s.close()


# ================================================================ orchestration

def add_arguments(p) -> None:
    from ..cli._common import non_negative, positive_float, positive_int
    p.add_argument("--hosts", default="h1,h2", help="sender,receiver (default: h1,h2)")
    p.add_argument("--network")
    p.add_argument("--mib", type=positive_float, default=16, help="MiB to send in the bulk pattern (default: 16)")
    p.add_argument("--bursts", type=positive_int, default=64, help="bursts in the bursts pattern (default: 64)")
    p.add_argument("--burst-kib", type=positive_int, default=16, help="KiB per burst (default: 16)")
    p.add_argument("--gap-ms", type=non_negative, default=5.0)
    p.add_argument("--buf", type=positive_int, default=1024, help="the reader's buffer (default: 1024)")
    p.add_argument("--no-strace", action="store_true", help="skip the strace -c cross-check")


def one_run(snd, rcv, ip: str, port: int, mode: str, pattern: str, nbytes: int, args,
            strace_out: Path | None = None) -> dict:
    argv = agent_argv(rcv, "epoll", "recv", "--port", port, "--mode", mode, "--buf", args.buf)
    on_host = f"/tmp/hpnlab-epoll-strace-{port}.txt"     # strace writes on the receiver; fetched below
    if strace_out:
        argv = ["strace", "-f", "-c", "-o", on_host, "-e", "trace=epoll_wait,epoll_pwait,recvfrom,read", *argv]
    r = rcv.start(argv, name=f"epoll-recv-{port}")
    try:
        rcv.wait_for_port(port, timeout=max(15.0, rcv.start_timeout))
        send = snd.run(agent_argv(snd, "epoll", "send", "--to", f"{ip}:{port}", "--bytes", nbytes,
                                  "--pattern", pattern, "--burst", args.burst_kib * 1024,
                                  "--gap-ms", args.gap_ms), timeout=120)
        r.wait(30)
        out, err = r.logs()
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise LabError(f"[{rcv.name}] reader printed no result: {err[-800:]}") from None
    finally:
        with deferred_interrupts():
            r.stop(3)
    res.update(pattern=pattern, sender=json.loads(send.stdout.strip().splitlines()[-1]))
    # et-once stops reading, so its receive window closes: what did not fit stays in the
    # sender's buffer (more of it on a guest whose window opened less), never more than sent
    arrived = res["bytes"] + res.get("stranded", 0)
    if arrived != nbytes and not (mode == "et-once" and arrived < nbytes):
        raise LabError(f"reader got {res['bytes']} bytes, sender sent {nbytes}")
    res["unsent"] = nbytes - arrived
    if strace_out:
        rcv.get(on_host, strace_out)
        rcv.run(["rm", "-f", on_host], check=False)
        res["strace"] = parse_strace_c(strace_out.read_text())
    return res


def parse_strace_c(text: str) -> dict[str, int]:
    calls = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in ("epoll_wait", "epoll_pwait", "recvfrom", "read") \
                and parts[3].isdigit():
            calls[parts[-1]] = int(parts[3])
    return calls


def run(provider, args, step) -> dict:
    snd, rcv, net = host_pair(provider, args.hosts, "sender,receiver", args.network)
    names = [snd.name, rcv.name]
    hosts = {snd.name: snd, rcv.name: rcv}
    ip = str(rcv.address(net))
    out = report.results_dir("epoll", getattr(args, "results", None))
    env = report.fingerprint(provider, ["net.ipv4.tcp_rmem", "net.core.rmem_default"], hosts)
    port = PORT
    runs = []
    bulk = int(args.mib * 1024 * 1024)
    bursts = args.bursts * args.burst_kib * 1024
    for pattern, nbytes in (("bulk", bulk), ("bursts", bursts)):
        for mode in MODES:
            step(f"{pattern}: {mode} reader, {nbytes / 2**20:g} MiB")
            runs.append(one_run(snd, rcv, ip, port, mode, pattern, nbytes, args))
            port += 1
    step("bursts: et-once reader (ET, one read per wakeup), 8 bursts")
    et_once = one_run(snd, rcv, ip, port, "et-once", "bursts", 8 * args.burst_kib * 1024, args)
    port += 1
    checks = []
    if not args.no_strace and shutil.which("strace"):
        need_tools("strace", hosts=[rcv])
        for mode in ("lt", "et"):
            step(f"strace -c cross-check: {mode}, bulk 4 MiB")
            res = one_run(snd, rcv, ip, port, mode, "bulk", 4 * 2**20, args, out / f"strace-{mode}.txt")
            checks.append(res)
            port += 1
    png = plot(runs, out)
    md = render(runs, checks, names, args, env, png, et_once)
    path = report.write_report(out, md, {"runs": runs, "et_once": et_once, "strace_checks": checks,
                                         "environment": env})
    return {"report": path, "dir": out, "runs": runs, "et_once": et_once, "strace_checks": checks}


def plot(runs: list[dict], out: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, pattern in zip(axes, ("bulk", "bursts")):
        rows = [r for r in runs if r["pattern"] == pattern]
        x = range(len(rows))
        w = 0.27
        for off, key, label in ((-w, "epoll_wait", "epoll_wait() calls"), (0, "wakeups", "wakeups (events)"),
                                (w, "reads", "recv() calls")):
            ax.bar([i + off for i in x], [r[key] for r in rows], w, label=label)
        ax.set_xticks(list(x), [r["mode"] for r in rows])
        ax.set_yscale("log")
        kib = rows[0]["bytes"] / 1024
        ax.axhline(kib, color="k", ls=":", lw=1)
        ax.text(len(rows) - 0.5, kib, f" bytes/1 KiB = {kib:g}", va="bottom", ha="right", fontsize=8)
        ax.set_title(f"{pattern}: {rows[0]['bytes'] / 2**20:g} MiB"
                     + (f" in {rows[0]['sender']['bursts']} bursts" if pattern == "bursts" else ""))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "epoll_counts.png", dpi=110)
    plt.close(fig)
    return "epoll_counts.png"


def render(runs, checks, names, args, env, png, et_once) -> str:
    snd, rcv = names
    L = ["# epoll lab: LT (水平触发) vs ET (边缘触发)", "",
         f"`{snd}` sends, `{rcv}` reads with a {args.buf}-byte buffer from an epoll loop. "
         "`lt` reads once per wakeup; `lt-drain` and `et` read until EAGAIN on every wakeup.", "",
         report.md_table(["pattern", "mode", "bytes", "epoll_wait()", "wakeups", "recv()", "EAGAIN",
                          "reads/wakeup (mean)", "bytes/1 KiB", "time s"],
                         [[r["pattern"], r["mode"], r["bytes"], r["epoll_wait"], r["wakeups"], r["reads"],
                           r["eagain"], f"{r['reads'] / max(1, r['wakeups']):.1f}",
                           r["bytes"] // args.buf, f"{r['seconds']:.3f}"] for r in runs]),
         f"![counts]({png})", ""]
    by = {(r["pattern"], r["mode"]): r for r in runs}
    b_lt, b_et = by[("bulk", "lt")], by[("bulk", "et")]
    u_lt, u_et = by[("bursts", "lt")], by[("bursts", "et")]
    nb = u_et["sender"]["bursts"]
    L += ["## The course's claim against the measurement", "",
          "*Claim:* with 1 GB buffered and 1 KiB reads, LT makes epoll_wait() return about once per 1 KiB "
          "(1 GB/1 KB times); ET returns once, when the buffer goes from empty to non-empty, and the "
          "program then reads until EAGAIN.", "",
          f"- **LT, one read per wakeup — holds.** bulk: {b_lt['wakeups']} wakeups for "
          f"{b_lt['bytes'] // args.buf} KiB ({b_lt['wakeups'] / (b_lt['bytes'] / args.buf):.2f} per KiB); "
          f"bursts: {u_lt['wakeups']} for {u_lt['bytes'] // args.buf} KiB. Level-triggered epoll reports "
          "the fd as long as the receive queue is non-empty, so each 1 KiB read costs one epoll_wait().",
          f"- **ET — holds, with a correction.** bulk: {b_et['wakeups']} wakeups for "
          f"{b_et['bytes'] // args.buf} KiB ({b_et['eagain']} drains reached EAGAIN"
          + (": a 1 KiB reader is slower than the sender, so once woken it rarely empties the queue"
             if b_et["wakeups"] <= 5 else ": each time the reader caught up with the sender, the next "
             "arriving segment woke it again") + f"). bursts: {u_et['wakeups']} wakeups for {nb} bursts — "
          "about one per *arrival burst*, not one in total. Linux's ET is not \"empty → non-empty\" but "
          "\"new data arrived since the last report\": every skb the TCP stack queues calls the socket's "
          "wakeup callback and re-arms the edge (the `et-once` run below shows it).",
          f"- **The cost is the reading pattern, not the trigger.** `lt-drain` (LT that also reads to EAGAIN) "
          f"needs {by[('bulk', 'lt-drain')]['wakeups']} wakeups for the bulk transfer vs ET's "
          f"{b_et['wakeups']}: the same order. ET's real difference is that it *forces* the drain loop "
          "(stop early and no new event comes for the data left behind), and that it does not report a "
          "socket again just because data is still there — what matters with many fds and several threads.",
          "- Each drain ends with one extra recv() that returns EAGAIN (the `EAGAIN` column): the price "
          "of reading until empty. In the bulk run a draining reader hardly ever sees EAGAIN: the sender "
          "refills the receive queue faster than 1 KiB reads empty it, so it rarely returns to epoll_wait().",
          "",
          "### ET with one read per wakeup (`et-once`, bursts)", "",
          f"{et_once['wakeups']} wakeups for {et_once['sender']['bursts']} bursts, {et_once['reads']} reads of 1 KiB, "
          f"**{et_once['stranded']} bytes left in the receive queue** when no further event came "
          f"(of {et_once['bytes'] + et_once['stranded']} that arrived"
          + (f"; {et_once['unsent']} more never left the sender: the unread queue closed the receive window"
             if et_once.get("unsent") else "") + "). "
          + ("(1) The reader was woken again for new bursts although it never emptied the buffer — Linux ET "
             "fires on *arrival*, not only on empty → non-empty. "
             if et_once["wakeups"] >= 0.75 * et_once["sender"]["bursts"] else
             f"(1) Only {et_once['wakeups']} wakeups for {et_once['sender']['bursts']} bursts: Linux ET fires on "
             "each *arrival* that wakes the socket, but here bursts arrived merged (GRO on the NIC, or held back "
             "once the unread queue closed the receive window), so fewer edges reached the reader. ")
          + "(2) The bytes behind each 1 KiB read never produce an event of their own: with ET, a reader that "
          "stops before EAGAIN strands data until more arrives (and after the last burst, forever).", ""]
    if checks:
        L += ["## Cross-check with `strace -c` (4 MiB bulk; tracing slows the reader)", "",
              report.md_table(["mode", "epoll_wait (reader's count)", "epoll_wait (strace)", "recv (reader)",
                               "recvfrom (strace)"],
                              [[c["mode"], c["epoll_wait"], c["strace"].get("epoll_wait", 0) +
                                c["strace"].get("epoll_pwait", 0), c["reads"], c["strace"].get("recvfrom", 0)]
                               for c in checks]),
              "The kernel-side counts match the reader's own (strace also sees the accept()/startup calls, "
              "a handful at most).", ""]
    L += [report.environment_md(env), report.rerun_md(None, "lab-epoll")]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    return dispatch("epoll", {"recv": recv_main, "send": send_main}, argv)


if __name__ == "__main__":
    sys.exit(main())
