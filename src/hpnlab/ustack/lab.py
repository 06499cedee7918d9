"""`make lab-ustack`: the interop suite and the measurements on a running lab, written
to results/ustack/<stamp>/ (report.md, data.json, pcap, plots, environment, re-run).

Measured side by side in one run: bulk TCP throughput with the stack at one end (both
directions) and with h1's kernel in its place on the `data` LAN; ping-flood replies/s;
echo round trips/s on one connection; epoll's interest set as a red-black tree vs a
dict. PyTCP is measured only where it is installed (`pip install PyTCP`); otherwise
data.json says so (null), never a made-up figure.
"""
from __future__ import annotations

import importlib.util
import os
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import HpnlabError
from ..labs import pcap
from ..labs._kit import Capture, LabError, agent_python, emulated
from ..report import (
    environment_md,
    fingerprint,
    md_table,
    rerun_md,
    results_dir,
    write_report,
)
from .errors import ParseError
from .interop import HostTool, StackRun, Suite, _size, impair_args, kernel_tool, peer


def _kernel_bulk(provider, nbytes: int) -> dict:
    """The same transfer between the two kernels over the `data` LAN (h2 -> h1)."""
    h1, h2 = provider.host("h1"), provider.host("h2")
    with kernel_tool(h1, "sink", 9100).start("listening") as sink:
        src = peer(h2, "source", str(h1.nic("data").address.ip), 9100, nbytes)
        sink.wait("sink", 60)
    return src


def _pytcp_on(host) -> str | None:
    """Where the host's python finds PyTCP: None if it has its own, else a copy of this
    machine's (pure Python, no dependencies) unpacked under /tmp on the host — lab guests
    reach no package registry."""
    if host.run([agent_python(host), "-c", "import pytcp"], check=False).ok:
        return None
    import tarfile
    import tempfile

    import pytcp
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "pytcp.tar"
        with tarfile.open(tar, "w") as t:
            t.add(Path(pytcp.__file__).parent, arcname="pytcp",
                  filter=lambda i: None if "__pycache__" in i.name else i)
        host.put(tar, "/tmp/hpnlab-pytcp.tar")
    host.run(["sh", "-c", "rm -rf /tmp/hpnlab-pytcp && mkdir /tmp/hpnlab-pytcp && "
                          "tar -xf /tmp/hpnlab-pytcp.tar -C /tmp/hpnlab-pytcp && rm /tmp/hpnlab-pytcp.tar"])
    return "/tmp/hpnlab-pytcp"


# PyTCP now and then stops mid-transfer (netns, this session: 293 KB of 4 MiB sent, then
# nothing for minutes; on the VMs before, "kernel -> PyTCP timed out"), and a whole-transfer
# timeout of 600 s made each such stall cost ten minutes of the run. The timeout is now what
# the slowest rate PyTCP has reached anywhere (0.64 Mbit/s sending, on TCG) allows with room
# to spare, and a direction that stalls is tried once more (data.json: pytcp.tries).
PYTCP_FLOOR_MBPS = 0.25
PYTCP_TRIES = 2


def _pytcp_timeout(nbytes: int) -> float:
    return 60 + nbytes * 8 / (PYTCP_FLOOR_MBPS * 1e6)


def _pytcp_bulk(host, nbytes: int, tap: str = "pytap0", subnet: str = "10.77.98") -> dict:
    """PyTCP on a TAP device of h1 against h1's kernel, both directions, as the stack's
    TAP cases run (same host, same kind of device, same kernel-side tools)."""
    kernel, addr = f"{subnet}.1/24", f"{subnet}.2/24"
    path = _pytcp_on(host)
    limit = _pytcp_timeout(nbytes)
    out: dict = {"timeout_s": round(limit)}

    def to_pytcp() -> dict:
        with HostTool(host, "hpnlab.ustack.pytcp_peer", "sink", tap, addr, kernel, 9000,
                      name="pytcp-sink", pythonpath=path).start("listening", 60) as pytcp:
            time.sleep(0.5)
            try:
                sent = peer(host, "source", addr.split("/")[0], 9000, nbytes, timeout=limit)
            except LabError as exc:         # what PyTCP said is the other half of the story
                out_, err = pytcp.proc.logs()
                raise LabError(f"{exc}; PyTCP's side: {(out_ + err)[-600:]}") from None
            got = pytcp.wait("sink", 60)
        if (got["bytes"], got["sha256"]) != (nbytes, sent["sha256"]):
            raise LabError(f"PyTCP received {got['bytes']} of {nbytes} bytes, sha256 "
                           f"{'matching' if got['sha256'] == sent['sha256'] else 'different'}")
        return {**sent, "empty_reads_while_established": got.get("empty_reads_while_established")}

    def from_pytcp() -> dict:
        # a process of the host's own (stopped at the block's end), not a command: a stalled
        # PyTCP must not outlive its timeout on a guest, holding the TAP device the next try needs
        with kernel_tool(host, "sink", 9001).start("listening") as sink:
            with HostTool(host, "hpnlab.ustack.pytcp_peer", "source", tap, addr, kernel,
                          f"{kernel.split('/')[0]}:9001", nbytes, round(limit), name="pytcp-source",
                          pythonpath=path).start("ready", 60) as pytcp:
                sent = pytcp.wait("source", limit)
            # PyTCP's own process: its CPU time while sending (all its threads)
            return {**sink.wait("sink", 60), "sender": sent}
    try:
        out.update(_each_way({"kernel_to_pytcp": to_pytcp, "pytcp_to_kernel": from_pytcp}))
    finally:
        if path:
            host.run(["rm", "-rf", path], check=False)
    return out


def _each_way(ways: dict, tries: int = PYTCP_TRIES) -> dict:
    """Each way's result under its key, a way that fails run again, `tries` times in all;
    one way failing must not hide the other. `tries` says how many runs each took,
    `errors` each failed way's last error, `error` both when neither way was measured."""
    out: dict = {"tries": {}}
    errors: dict[str, str] = {}
    for key, fn in ways.items():
        for attempt in range(1, tries + 1):
            out["tries"][key] = attempt
            try:
                out[key] = fn()
                errors.pop(key, None)
                break
            except HpnlabError as exc:
                errors[key] = str(exc)[-400:]
    if errors:
        out["errors"] = errors
    if errors and len(errors) == len(ways):
        out["error"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return out


def _checksum_helper(provider, hosts) -> dict:
    """The stack's C checksum helper (ustack/_build.py) on each host that runs a stack:
    netns hosts share this checkout's (`make setup` built it); a VM or machine builds its
    own (one small C function: seconds, even under TCG). A host that cannot runs the
    Python sum — said in data.json, not fatal: the same bytes, more CPU per segment."""
    if provider.shares_kernel:
        from . import checksum
        return {h.name: checksum.IMPL for h in hosts}
    out = {}
    for h in hosts:
        res = h.run([agent_python(h), "-m", "hpnlab.ustack._build"], timeout=h.start_timeout + 240, check=False)
        out[h.name] = "C" if res.rc == 0 else f"Python: {(res.stderr or res.stdout).strip()[-200:]}"
    return out


def _pytcp_measure(h1, nbytes: int) -> dict:
    if importlib.util.find_spec("pytcp") is None:
        return {"error": "PyTCP is not installed (make setup installs it)"}
    try:
        return _pytcp_bulk(h1, nbytes)
    except Exception as exc:      # noqa: BLE001 — the report says what happened
        return {"error": f"{type(exc).__name__}: {exc}"}


def _tap_profile(h1, nbytes: int, tap: str = "ustap1", subnet: str = "10.77.96") -> dict:
    """The stack sending over TAP to h1's kernel once more, under cProfile: where its time
    goes on this host (its own functions, and each system call as a row of its own)."""
    kernel, addr = f"{subnet}.1", f"{subnet}.2"
    with kernel_tool(h1, "sink", 9003).start("listening") as sink:
        with StackRun(h1, tap, f"{addr}/24", "--driver", "tap", "--tap-kernel-ip", f"{kernel}/24", "--app", "source",
                      "--connect", f"{kernel}:9003", "--bytes", nbytes, "--profile", 12).start("ready") as run:
            sent = run.wait("source", 300)
            stats = run.wait("stats", 60)
        sink.wait("sink", 60)
    return {"bytes": nbytes, "secs": sent["secs"], "cpu_s": sent["cpu_s"], **stats["profile"]}


def _profile_section(prof: dict, tap_send: dict, pytcp_send: dict | None) -> list[str]:
    """The profile as a table, and how busy the senders were without the profiler."""
    if "top" not in prof:
        return ["## Where the stack's time goes", "", f"Not measured: {prof.get('error')}", ""]

    def busy(d: dict | None) -> str:
        if not d or not d.get("secs") or d.get("cpu_s") is None:
            return "n/a"
        return f"{d['cpu_s']:.2f} s of CPU in {d['secs']:.2f} s ({100 * d['cpu_s'] / d['secs']:.0f} % of one CPU)"
    syscalls = sum(r["own_s"] for r in prof["top"] if r["function"].startswith("<built-in method posix."))
    return ["## Where the stack's time goes (TAP, stack → kernel, under cProfile)", "",
            f"{prof['bytes'] >> 20} MiB sent once more under cProfile ({prof['secs']} s with the profiler, "
            f"{prof['total_s']} s of it counted in functions). Own time per function (calls to C, such as "
            "`posix.write` — one system call per frame on TAP — are rows of their own):", "",
            md_table(["function", "calls", "own s", "share"],
                     [(r["function"], r["calls"], r["own_s"], f"{100 * (r['share'] or 0):.1f} %")
                      for r in prof["top"]]), "",
            f"System calls among these rows: {100 * syscalls / prof['total_s']:.0f} % of the profiled time. "
            f"Without the profiler, sending over TAP the stack's process used {busy(tap_send)}; PyTCP's "
            f"{busy(pytcp_send)} (process CPU time: user + system, all threads; on a one-CPU guest the kernel's "
            "receiving side shares that CPU).", ""]


def _load(suite, kernel_ip: str, port: int, kernel_port: int = 9207) -> dict:
    """Echo round trips/s at 1 and 100 connections and connections accepted/s: the same
    server (hpnlab.servers' epoll-lt engine: its Reactor, Transports and echo protocol)
    on the stack's epoll and on h1's kernel."""
    h1, h2 = suite.h1, suite.h2
    out: dict = {"ustack": {}, "kernel": {}}

    def measure(side: str, ip: str, p: int) -> None:
        for conns in (1, 100):
            e = peer(h2, "echoload", ip, p, conns, 3, timeout=120)
            out[side][f"echo_rps_{conns}"] = e["rps"]
        out[side]["accepts_per_s"] = peer(h2, "connrate", ip, p, 3, timeout=120)["per_s"]
    with suite.app("--app", "reactor", "--port", port, "--backlog", 256):
        measure("ustack", suite.addr, port)
    server = h1.start([agent_python(h1), "-m", "hpnlab.servers", "epoll-lt", "--port", kernel_port],
                      name="ustack-kernel-echo")
    try:
        h1.wait_for_port(kernel_port, 30)
        measure("kernel", kernel_ip, kernel_port)
    finally:
        server.stop(5)
    return out


def _epoll_interest(n: int = 20000) -> dict:
    """epoll_ctl ADD/MOD/DEL and lookups on n descriptors, red-black tree vs dict:
    time per operation and the memory the interest set holds (tracemalloc)."""
    from .rbtree import RBTree
    out = {}
    for name, make in (("rbtree", RBTree), ("dict", dict)):
        tracemalloc.start()
        t0 = time.perf_counter()
        s: Any = make()
        for fd in range(n):
            s[fd] = fd
        t_add = time.perf_counter() - t0
        mem = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        t0 = time.perf_counter()
        for fd in range(n):
            s.get(fd)
        t_get = time.perf_counter() - t0
        t0 = time.perf_counter()
        for fd in range(n):
            del s[fd]
        t_del = time.perf_counter() - t0
        out[name] = {"n": n, "add_us": round(t_add / n * 1e6, 3), "lookup_us": round(t_get / n * 1e6, 3),
                     "del_us": round(t_del / n * 1e6, 3), "bytes_per_fd": round(mem / n, 1)}
    return out


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _ratio(a, b) -> str:
    return f"{a / b:.1f}×" if a and b else "n/a"


def _pytcp_reading(tap_from, tap_to, py_from, py_to, pytcp: dict) -> str:
    failed = ", ".join(pytcp.get("errors", {})).replace("_to_", " → ").replace("pytcp", "PyTCP")
    if not (py_from or py_to):
        return f"Goal: ≥ 10× PyTCP — not measured: {pytcp.get('error', 'no PyTCP figure')}."
    worst = min(r for r in ((tap_from or 0) / py_from if py_from else None,
                            (tap_to or 0) / py_to if py_to else None) if r is not None)
    return (f"Goal: ≥ 10× PyTCP on the same TAP setup — sending {_ratio(tap_from, py_from)}, receiving "
            f"{_ratio(tap_to, py_to)} (PyTCP {pytcp.get('version')}, {pytcp.get('bytes', 0) >> 20} MiB each way): "
            f"{'met' if worst >= 10 else 'not met'}"
            + (f" for the direction measured; {failed} did not complete (data.json: pytcp.errors)." if failed
               else "."))


def _flood_reading(stack: float, kernel: float, goal: float = 40000) -> str:
    """The ping-flood goal, read beside h1's kernel answering the same flood on the same LAN:
    where the kernel itself stays under the goal, the host, not the stack, sets the ceiling."""
    met = "met" if stack >= goal else "not met"
    share = f"{stack / kernel:.2f}" if kernel else "n/a"
    text = (f"Goal: ping flood ≥ {goal:,.0f} replies/s — measured {stack:,.0f} ({met}); h1's kernel answered "
            f"the same flood at {kernel:,.0f}/s, so the stack did {share} of the kernel's rate.")
    if kernel and kernel < goal:
        text += (f" The goal is out of reach of the kernel itself on this lab ({kernel / goal:.2f} of it): the "
                 f"hosts' CPU, not the stack, sets that ceiling; the stack's share of the kernel's rate is the "
                 f"figure that carries over.")
    return text


def _load_reading(load: dict) -> str:
    us, k = load["ustack"], load["kernel"]

    def share(key: str) -> str:
        return f"{us[key] / k[key]:.2f}" if us.get(key) and k.get(key) else "n/a"
    return (f"On the stack's epoll the same server reached {share('echo_rps_1')} of the kernel's echo rate at "
            f"1 connection and {share('echo_rps_100')} at 100, and accepted connections at {share('accepts_per_s')} "
            f"of the kernel's rate.")


def _ring_reading(rings: dict) -> str:
    if "afpacket-v3" not in rings:          # the stack on DPDK: no AF_PACKET ring to compare
        return ""
    v2, v3 = rings["afpacket"], rings["afpacket-v3"]
    return (f"AF_PACKET rings: with TPACKET_V2 the stack answered {v2['flood']['replies_per_s']:,.0f} pings/s and "
            f"{v2['echo']['rps']:,.0f} echo round trips/s; with TPACKET_V3 {v3['flood']['replies_per_s']:,.0f} and "
            f"{v3['echo']['rps']:,.0f} — V3 hands frames over a block at a time, when the block fills or its "
            f"timer runs out, so a request/response exchange waits for the timer.")


def _super_frame_reading(counters: dict) -> str:
    frames, big = counters.get("ether.rx", 0), counters.get("ether.rx_super_frame", 0)
    if not frames:
        return ""
    return (f"Receiving from Linux over AF_PACKET, {big} of {frames} frames ({100 * big / frames:.0f} %) were larger "
            f"than the MTU: segments merged before AF_PACKET sees them — on a veth the sending kernel's GSO "
            f"super-frames (checksum not yet computed, TP_STATUS_CSUMNOTREADY), on a VM's virtio NIC its GRO — "
            f"and the stack takes each as any receiver takes a large segment: fewer, bigger frames per byte than "
            f"on a wire, or through TAP, which segments them.")


def _interest_reading(m: dict) -> str:
    rb, d = m["rbtree"], m["dict"]
    t_rb, t_d = (x["add_us"] + x["lookup_us"] + x["del_us"] for x in (rb, d))
    faster = "dict" if t_d < t_rb else "red-black tree"
    return (f"Per add+lookup+delete the {faster} was faster here ({t_rb:.2f} µs "
            f"for the tree, {t_d:.2f} µs for the dict); the tree held "
            f"{rb['bytes_per_fd']:.0f} B per descriptor, the dict {d['bytes_per_fd']:.0f} B. The tree grows one "
            f"node at a time with no table to resize and keeps the set ordered — the course's argument for epoll's "
            f"choice; in CPython the dict's C code is the other side of the trade.")


def _syn_options(segs) -> list[dict]:
    """The options of the SYNs and SYN-ACKs in a capture, decoded by the stack's own parser."""
    from .proto.tcp import segment as tcpseg
    out = []
    for s in segs:
        if s.proto != "tcp" or not s.flags & tcpseg.SYN:
            continue
        seg = tcpseg.Segment(s.sport, s.dport, s.seq, s.ack, s.flags, 0, b"")
        try:
            tcpseg.parse_options(seg, memoryview(s.options))
        except ParseError:          # a capture cut inside the options: what was read is kept
            pass
        out.append({"src": s.src, "flags": s.flags, "mss": seg.mss, "wscale": seg.wscale, "tsval": seg.tsval})
    return out


def _pcap_flight(segs: list, sender: str) -> list[tuple[float, int]]:
    """Bytes in flight as the capture saw them: the sender's highest sequence sent minus
    the receiver's latest ACK, on the sender's longest connection."""
    conns = pcap.connections([s for s in segs if s.proto == "tcp"])
    if not conns:
        return []
    hi = ack = None
    out = []
    for s in max(conns.values(), key=len):
        if s.src == sender and s.length > 0:
            end = (s.seq + s.length) & 0xFFFFFFFF
            hi = end if hi is None or 0 < ((end - hi) & 0xFFFFFFFF) < 1 << 31 else hi
        elif s.src != sender and s.flags & pcap.ACK:
            ack = s.ack
        if hi is not None and ack is not None:
            out.append((s.ts, (hi - ack) & 0xFFFFFFFF if ((hi - ack) & 0xFFFFFFFF) < 1 << 30 else 0))
    return out


def _ladders(out: Path, stack_ip: str, linux_ip: str) -> list[str]:
    """Ladder diagrams of the simultaneous open and close, from both ends' captures."""
    from ..labs.p2p import draw_ladder
    made = []
    for case, title in (("simultaneous-open", "simultaneous open: the stack and Linux"),
                        ("simultaneous-close", "simultaneous close: the stack and Linux")):
        if not (out / f"{case}-h1.pcap").exists() or not (out / f"{case}-h2.pcap").exists():
            continue
        a, b = pcap.read_pcap(out / f"{case}-h1.pcap"), pcap.read_pcap(out / f"{case}-h2.pcap")
        if not any(s.src == stack_ip for s in a):
            # an af_packet vdev's frames skip the taps of h1's veth (netns): h2's capture,
            # which sees both ways, stands for h1's (the stack's sends at their arrival)
            a, title = b, f"{title} (both ends from h2's capture)"
        name = f"ladder-{case}.png"
        draw_ladder(a, b, ("stack (h1)", stack_ip), ("linux (h2)", linux_ip), out / name, title)
        if (out / name).exists():
            made.append(name)
    return made


def _simultaneous_reading(so: dict | None, sc: dict | None) -> str:
    """What the two simultaneous cases saw, in both sides' states and on the wire."""
    out = []
    if so:
        out.append(f"Opening, the stack went {' → '.join(so['stack_path'])} and Linux "
                   f"{' → '.join(so['linux'].get('states', []))}; on the wire (h2's capture) the open was "
                   f"**{so.get('wire')}**.")
    if sc:
        w = sc.get("wire", {})
        out.append(f"Closing, the stack went {' → '.join(sc['stack_path'])} and Linux "
                   f"{' → '.join(sc['linux'].get('states', []))}; on the wire the FINs "
                   f"{'**crossed**' if w.get('crossed') else '**did not cross**'} ({w.get('detail', '')}).")
    out.append("Neither is left to timing: h2 holds the stack's SYN (FIN) with everything after it before its TCP "
               "(an NFQUEUE) until Linux has connected (closed) too, then lets it in alone, then the rest. So in "
               "h2's capture, taken before that hold, the stack's segment arrives before Linux's leaves, yet "
               "Linux's does not acknowledge it: they crossed. The ladders are drawn from both ends' captures "
               "(`simultaneous-open-h1.pcap`, `-h2.pcap`, and the same for `-close`).")
    return " ".join(out)


def _per_size(provider, suite: Suite, sizes: list[int], path: Path) -> dict:
    """Bulk throughput each way at several transfer sizes (connection set-up and slow
    start weigh on the small ones), plotted. The suite's own transfer (its bulk case, the
    same stack, driver and peer tools, captured) is the row of its size: not run twice."""
    rows, driver = {}, suite.driver
    for n in sizes:
        s = suite if n == suite.bulk_bytes else Suite(provider, network=suite.network, bulk_bytes=n)
        if s is not suite:
            s.bulk()
        b = s.data.get("bulk", {})
        ways = [b.get(k, {}) for k in ("stack_to_linux", "linux_to_stack")]
        rows[n] = {"stack_to_linux": ways[0].get("peer", {}).get("mbps"),
                   "linux_to_stack": ways[1].get("peer", {}).get("mbps"),
                   "ok": all(w.get("whole") for w in ways)}     # the bulk case's own verdict each way
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("stack_to_linux", "stack → linux"), ("linux_to_stack", "linux → stack")):
        ax.plot([n / 1024 for n in rows], [rows[n][key] or 0 for n in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("transfer size (KiB)")
    ax.set_ylabel("Mbit/s (receiver's timing)")
    ax.set_title(f"bulk throughput per size, {'DPDK' if driver == 'dpdk' else 'AF_PACKET'}, no offloads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rows


def _conn(case: dict) -> dict:
    """The stack's connection summary in a bulk case's result ({} if it has none)."""
    return case.get("stack", {}).get("conn") or {}


def _median(xs: list) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def _flight_reading(m: dict) -> str:
    st, wire = m.get("stack"), m.get("pcap")
    if not st or wire is None:
        return ""
    return (f"Median bytes in flight: {st / 1024:.0f} KiB by the stack's count, {wire / 1024:.0f} KiB on the wire "
            f"(h1's capture: data sent minus the ACKs that have reached the NIC). "
            + (f"The difference, {(st - wire) / 1024:.0f} KiB, is acknowledged data whose ACKs wait in the receive "
               f"ring for the stack to read them: the sender is CPU-bound, not window- or network-bound."
               if st > 1.5 * wire else "The two agree: the window, not the stack's own pace, bounds the flight."))


def _plot_trace(trace: list, path, pcap_flight: list | None = None) -> bool:
    if not trace:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t0 = trace[0][0]
    ts = [r[0] - t0 for r in trace]
    fig, ax = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax[0].plot(ts, [r[1] / 1024 for r in trace], label="cwnd")
    ax[0].plot(ts, [min(r[2], 1 << 24) / 1024 for r in trace], label="ssthresh (capped)")
    ax[0].plot(ts, [r[4] / 1024 for r in trace], label="bytes in flight", alpha=0.6)
    if pcap_flight:
        # the capture's clock is the machine's wall clock; align the two by their first samples
        p0 = pcap_flight[0][0]
        ax[0].plot([t - p0 for t, _ in pcap_flight], [f / 1024 for _, f in pcap_flight],
                   label="in flight, from the pcap", alpha=0.5, linestyle=":")
    ax[0].set_ylabel("KiB")
    ax[0].legend()
    ax[1].plot(ts, [(r[3] or 0) * 1000 for r in trace], color="C3")
    ax[1].set_ylabel("SRTT (ms)")
    ax[1].set_xlabel("s since the first sample")
    fig.suptitle("the stack sending to Linux: its own instrumentation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _impaired(lab_file: str, provider_name: str | None, nbytes: int, step) -> tuple[list, dict]:
    """The bulk cases on the impaired lab (brought up here and taken down again)."""
    from ..providers import open_lab
    from ..topology import load_lab
    imp = open_lab(load_lab(lab_file, provider=provider_name))
    was_up = imp.is_up()
    try:
        if not was_up:
            imp.up(step)
        suite = Suite(imp, bulk_bytes=nbytes, stack_extra=impair_args(imp))
        step(f"impaired lab {imp.lab.name}: {suite.stack_extra[-1]} at each end, {nbytes >> 10} KiB each way")
        suite.bulk()
        return suite.results, suite.data.get("bulk", {})
    finally:
        if not was_up:
            imp.down()


def _prepare(provider, suite: Suite, step, dpdk: bool = True) -> tuple[Any, dict]:
    """What the hosts build before the first stack starts: the DPDK binding on h1 (a guest
    builds it at its first import, a minute or more under TCG, and the first stack start
    would outlive its 30 s) where the run uses DPDK, and the stack's checksum helper."""
    binding = None
    if dpdk and suite.driver != "afpacket":
        from ..labs.pktgen import ensure_binding
        step("the DPDK binding on h1")
        binding = ensure_binding(provider, suite.h1)
    return binding, _checksum_helper(provider, (suite.h1, suite.h2))


def _cases(provider, suite: Suite, out: Path, step) -> tuple[Suite, list[str]]:
    """Every interop case of the lab, in order; the offload cases run on a Suite of their
    own (returned, its results added to `suite`'s), and the ladders are drawn."""
    net, afpacket, nbytes = suite.network, suite.driver == "afpacket", suite.bulk_bytes
    suite.say = step
    step(f"interop suite: stack {suite.ip} on h1:{suite.ifname} ({suite.driver}) vs linux {suite.peer_addr} (h2)")
    suite.ping_cases()
    suite.stack_ping()
    if afpacket:                # the TPACKET_V3 ring is AF_PACKET's other way of reading the NIC
        suite.ring_v3()
    suite.udp_echo()
    suite.tcp_cases()
    suite.reactor()
    suite.http()
    # captured on h1's NIC, where the stack's frames leave and Linux's ACKs arrive: the
    # sender's view of what is in flight, to set beside the stack's own count
    with Capture(provider, f"h1:{net}", out / "bulk.pcap", "tcp", snaplen=96):
        suite.bulk()
    suite.simultaneous_open()           # each captures both ends into out/ (the ladders)
    suite.simultaneous_close()
    ladders = _ladders(out, suite.addr, suite.peer_addr)
    suite.stack_to_stack()
    suite.fuzz(100000)
    suite.syn_flood(20000)
    suite.concurrency(1000)
    suite.thread_per_connection(200)
    suite.zero_window(10.0)
    suite.tap_cases(nbytes)
    step(f"segmentation offload (virtio-net header) on {'AF_PACKET and ' if afpacket else ''}TAP")
    # the virtio-net header offloads are AF_PACKET's and TAP's (DPDK's driver has none)
    offload = Suite(provider, network=net, bulk_bytes=nbytes, stack_extra=("--driver", "afpacket", "--offload"))
    offload.say = step
    if afpacket:
        offload.bulk()
    offload.tap_cases(nbytes, offload=True)
    suite.results += offload.results
    return offload, ladders


MODES = ("full", "interop", "bulk")
# Throughput per size costs two transfers per size, each starting a stack and a peer tool:
# on an emulated CPU (QEMU TCG, the default VM lab) ~15 s per transfer (64 KiB and 1 MiB took
# 64 s in 20261202-153537). The run's own size is the bulk case's transfer, never run twice;
# there 8 MiB is left out unless it is the run's own size, and the report says so.
SIZES, EMULATED_SIZES = (64 << 10, 1 << 20, 8 << 20), (64 << 10, 1 << 20)


@contextmanager
def _part(spent: dict, name: str, step) -> Iterator[None]:
    """A named part of the run, announced and timed: data.json's `seconds` and the report's
    last table say where a run's time went (on VMs, tens of minutes)."""
    step(name)
    t0 = time.monotonic()
    try:
        yield
    finally:
        spent[name] = round(time.monotonic() - t0, 1)


def _goal(suite: Suite, nbytes: int, step, spent: dict) -> tuple[dict, list[str]]:
    """The ≥ 10× PyTCP goal, side by side on h1's TAP setup (the stack's TAP cases are the
    stack's half), the stack once more under cProfile, and the two kernels over `data` for
    scale. PyTCP's transfers are the goal's other half: one not measured fails the run."""
    pytcp_bytes = min(nbytes, 4 << 20)
    with _part(spent, f"PyTCP {_version('PyTCP')} on a TAP device, {_size(pytcp_bytes)} each way", step):
        pytcp = _pytcp_measure(suite.h1, pytcp_bytes)
    with _part(spent, "the stack under cProfile; the kernels over data", step):
        try:
            profile = _tap_profile(suite.h1, min(nbytes, 2 << 20))
        except LabError as exc:
            profile = {"error": str(exc)[-400:]}
        kernel = _kernel_bulk(suite.provider, nbytes)
    tap = suite.data.get("tap", {})
    tap_to = tap.get("kernel_to_stack", {}).get("peer", {}).get("mbps")
    tap_from = tap.get("stack_to_kernel", {}).get("peer", {}).get("mbps")
    py_to = pytcp.get("kernel_to_pytcp", {}).get("mbps")
    py_from = pytcp.get("pytcp_to_kernel", {}).get("mbps")
    suite.record("measurement: PyTCP on TAP, kernel -> PyTCP and PyTCP -> kernel, sha256",
                 lambda: (bool(py_from and py_to),
                          pytcp.get("error") or pytcp.get("errors") or f"{py_from} / {py_to} Mbit/s"))
    data = {
        # the headline, each sending to a Linux kernel: the stack and PyTCP on the same TAP setup
        # (PyTCP's only driver), the kernels over the lab's `data` LAN; the rest in bulk_mbps_detail
        "bulk_mbps": {"ustack": tap_from, "pytcp": py_from, "kernel": kernel["mbps"]},
        "bulk_mbps_detail": {"tap": {"ustack_to_kernel": tap_from, "kernel_to_ustack": tap_to,
                                     "pytcp_to_kernel": py_from, "kernel_to_pytcp": py_to},
                             "kernel_to_kernel": kernel["mbps"]},
        "tap": tap,
        "pytcp": {"version": _version("PyTCP"), "bytes": pytcp_bytes, **pytcp},
        "profile_tap_send": profile}
    text = ["## The goal: the stack vs PyTCP on TAP", "",
            md_table(["what", "value"], [
                ("TAP: stack → kernel / kernel → stack (Mbit/s)", f"{tap_from} / {tap_to}"),
                ("TAP: PyTCP → kernel / kernel → PyTCP (Mbit/s)",
                 f"{py_from} / {py_to}" if py_from or py_to else pytcp.get("error")),
                ("bulk kernel → kernel, `data` LAN (Mbit/s)", kernel["mbps"])]), "",
            _pytcp_reading(tap_from, tap_to, py_from, py_to, data["pytcp"]), "",
            *_profile_section(profile, tap.get("stack_to_kernel", {}).get("stack", {}),
                              pytcp.get("pytcp_to_kernel", {}).get("sender"))]
    return data, text


def _measurements(provider, suite: Suite, offload: Suite, kernel: float | None, out: Path, emulated: bool,
                  step, spent: dict) -> tuple[dict, list[str]]:
    """A full run's measurements after the cases and the goal: the driver's own bulk rates
    and offloads, ping floods, throughput per size, echo and accept rates, the interest set,
    the cwnd trace and the SYN options (data.json's keys, the report's sections)."""
    net, afpacket, nbytes = suite.network, suite.driver == "afpacket", suite.bulk_bytes
    # where DPDK owns h1's NIC, h1's kernel has none on that LAN: its side of the
    # comparisons (the same ping flood, the same echo server) is on the kernels' `data` LAN
    kernel_ip = str(suite.h1.nic(net if afpacket else "data").address.ip)
    rings = {}
    with _part(spent, "ping flood and echo on the stack, the flood at h1's kernel", step):
        for driver in ("afpacket", "afpacket-v3") if afpacket else (suite.driver,):
            with suite.app("--driver", driver, "--app", "echo", "--port", 7):
                rings[driver] = {"flood": peer(suite.h2, "flood", suite.addr, 5),
                                 "echo": peer(suite.h2, "echo", suite.addr, 7, 1000, 100)}
        flood = rings[suite.driver]["flood"]
        # the same flood at h1's own kernel from the same peer: what this host allows at all
        kernel_flood = peer(suite.h2, "flood", kernel_ip, 5)
    sizes = sorted({*(EMULATED_SIZES if emulated else SIZES), nbytes})
    dropped = [n for n in SIZES if n not in sizes]          # what an emulated CPU left out
    with _part(spent, f"throughput per transfer size ({', '.join(_size(n) for n in sizes)})", step):
        per_size = _per_size(provider, suite, sizes, out / "throughput.png")
    with _part(spent, "echo load and accept rate: the stack's epoll server vs the kernel's", step):
        load = _load(suite, kernel_ip, 7)
    interest = _epoll_interest()
    bulk = suite.data.get("bulk", {})
    to_stack = bulk.get("linux_to_stack", {}).get("peer", {}).get("mbps")
    from_stack = bulk.get("stack_to_linux", {}).get("peer", {}).get("mbps")

    def mbps(d: dict, *path):
        for k in path:
            d = d.get(k, {})
        return d.get("mbps")
    off_from = mbps(offload.data, "bulk", "stack_to_linux", "peer")
    off_to = mbps(offload.data, "bulk", "linux_to_stack", "peer")
    off_tap_from = mbps(offload.data, "tap_offload", "stack_to_kernel", "peer")
    off_tap_to = mbps(offload.data, "tap_offload", "kernel_to_stack", "peer")
    data = {
        "bulk_mbps_detail": {
            suite.driver: {"stack_to_linux": from_stack, "linux_to_stack": to_stack},
            "offload": {"afpacket_stack_to_linux": off_from, "afpacket_linux_to_stack": off_to,
                        "tap_stack_to_kernel": off_tap_from, "tap_kernel_to_stack": off_tap_to}},
        "ping_flood_replies_per_s": flood["replies_per_s"],
        "ping_flood_kernel_replies_per_s": kernel_flood["replies_per_s"],
        "rings": {d: {"ping_flood_replies_per_s": r["flood"]["replies_per_s"],
                      "echo_round_trips_per_s": r["echo"]["rps"]} for d, r in rings.items()},
        "echo_round_trips_per_s_1conn": suite.data.get("echo_rps_1conn"),
        "epoll_interest": interest,
        "load": load,
        "throughput_per_size_mbps": {str(k): v for k, v in per_size.items()},
    }
    trace = _conn(bulk.get("stack_to_linux", {})).get("trace") or []
    segs = pcap.read_pcap(out / "bulk.pcap")
    syns = _syn_options(segs)
    data["pcap_syn_options"] = syns
    wire = _pcap_flight(segs, suite.addr)
    plotted = _plot_trace(trace, out / "cwnd.png", wire)
    data["flight_median"] = {"stack": _median([r[4] for r in trace]), "pcap": _median([f for _, f in wire])}
    ratio = (from_stack / kernel) if from_stack and kernel else None
    text = ["## Measurements", "",
            md_table(["what", "value"], [
                ("bulk stack → linux (Mbit/s)", from_stack), ("bulk linux → stack (Mbit/s)", to_stack),
                ("stack ÷ kernel (stack sending)", f"{ratio:.3f}" if ratio else "n/a"),
                ("with --offload (TSO + checksum by the kernel), AF_PACKET: stack → linux / linux → stack",
                 f"{off_from} / {off_to}" if afpacket else "n/a (h1's NIC is DPDK's)"),
                ("with --offload, TAP: stack → kernel / kernel → stack", f"{off_tap_from} / {off_tap_to}"),
                ("ping flood, 64 in flight (replies/s)", flood["replies_per_s"]),
                ("the same flood at h1's kernel (replies/s)", kernel_flood["replies_per_s"]),
                ("echo round trips/s, 1 connection, 100 B", suite.data.get("echo_rps_1conn"))]), "",
            _flood_reading(flood["replies_per_s"], kernel_flood["replies_per_s"])
            + (f" Stretch: ≥ 1 Gbit/s with TAP offloads — {off_tap_from} Mbit/s sending, {off_tap_to} receiving "
               f"({'met' if min(off_tap_from or 0, off_tap_to or 0) >= 1000 else 'not met'})."), "",
            "## Throughput per transfer size", "",
            md_table(["bytes", "stack → linux (Mbit/s)", "linux → stack (Mbit/s)", "sha256 ok"],
                     [(n, v["stack_to_linux"], v["linux_to_stack"], "yes" if v["ok"] else "NO")
                      for n, v in per_size.items()]), "",
            f"The {_size(nbytes)} row is the bulk case's transfer (captured at h1's NIC), not run twice."
            + (f" h1's CPU is emulated (QEMU TCG), where each size costs a stack and a peer tool started per "
               f"direction: {', '.join(_size(n) for n in dropped)} not run." if dropped else ""), "",
            "![throughput](throughput.png)", "",
            "## Echo and accept rates: one server on the stack's epoll and on the kernel's", "",
            "The server is hpnlab.servers' epoll-lt engine, unchanged: on the stack its Loop's backend is the "
            "stack's epoll (`--app reactor`), on h1's kernel the kernel's epoll.", "",
            md_table(["", "echo rt/s, 1 conn", "echo rt/s, 100 conns", "connections accepted/s"],
                     [(side, v.get("echo_rps_1"), v.get("echo_rps_100"), v.get("accepts_per_s"))
                      for side, v in load.items()]), "",
            _load_reading(load), "",
            _ring_reading(rings), "",
            _super_frame_reading(bulk.get("linux_to_stack", {}).get("counters", {})) if afpacket else "", "",
            "## epoll's interest set: red-black tree vs dict", "",
            md_table(["set", "fds", "add µs", "lookup µs", "del µs", "bytes/fd"],
                     [(k, v["n"], v["add_us"], v["lookup_us"], v["del_us"], v["bytes_per_fd"])
                      for k, v in interest.items()]), "",
            _interest_reading(interest), ""]
    if plotted:
        text += ["## cwnd, ssthresh, flight and SRTT (stack sending)", "", "![cwnd](cwnd.png)", "",
                 _flight_reading(data["flight_median"]), ""]
    if syns:
        text += ["## Window scaling, timestamps and MSS in the pcap", "",
                 md_table(["from", "flags", "mss", "wscale", "TSval"],
                          [(s["src"], "SYN-ACK" if s["flags"] & 16 else "SYN", s["mss"], s["wscale"], s["tsval"])
                           for s in syns[:8]]), ""]
    text += ["Pcap of the bulk transfers at h1's NIC: `bulk.pcap`.", ""]
    return data, text


def _check_impaired_lab(provider, impaired_lab: str | None) -> None:
    if impaired_lab:        # before the run, not after it (the static provider refuses an impaired lab)
        from ..topology import TopologyError, load_lab
        try:
            load_lab(impaired_lab, provider=provider.name)
        except TopologyError as exc:
            raise LabError(f"{exc}\n(--impaired-lab '' runs the rest of the lab without it)") from None


def _deep_update(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v


def run(provider, nbytes: int = 64 << 20, results_root=None, step=print, argv=None,
        impaired_lab: str | None = "labs/ustack/impaired.yml", impaired_bytes: int = 2 << 20,
        network: str | None = None, mode: str = "full") -> dict:
    """One run, one report, in one of three modes: "full" (every interop case, then the
    measurements), "interop" (`--interop-only`: the cases alone) and "bulk" (`--bulk-only`:
    the goal's comparison alone — the stack's TAP cases, PyTCP, the profile, the kernels).
    Each part is timed into data.json's `seconds` and the report's last table."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
    cases = mode != "bulk"
    impaired_lab = impaired_lab if cases else None
    _check_impaired_lab(provider, impaired_lab)
    out = results_dir("ustack", results_root)
    load_before = os.getloadavg()[0]
    began, spent = time.monotonic(), dict[str, float]()
    suite = Suite(provider, network=network, bulk_bytes=nbytes, pcap_dir=out)
    suite.say = step
    with _part(spent, "preparing the hosts", step):
        binding, checksum = _prepare(provider, suite, step, dpdk=cases)
        is_emulated = emulated(suite.h1)
    data: dict[str, Any] = {"mode": mode, "driver": suite.driver, "dpdk_binding": binding, "checksum": checksum,
                            "emulated_cpu": is_emulated}
    sections: list[str] = []
    if cases:
        with _part(spent, "interop cases", step):
            offload, ladders = _cases(provider, suite, out, step)
    else:
        with _part(spent, f"TAP on h1: the stack each way, {_size(nbytes)}", step):
            suite.tap_cases(nbytes)
    if mode != "interop":
        goal, text = _goal(suite, nbytes, step, spent)
        data.update(goal)
        sections += text
    if mode == "full":
        more, text = _measurements(provider, suite, offload, data["bulk_mbps"]["kernel"], out, is_emulated, step,
                                   spent)
        _deep_update(data, more)
        sections += text
    if impaired_lab:
        with _part(spent, "the impaired lab", step):
            imp_results, imp_bulk = _impaired(impaired_lab, provider.name, impaired_bytes, step)
        suite.results += imp_results
        data["impaired"] = {name: {"mbps": v.get("peer", {}).get("mbps"), "cc_events": _conn(v).get("cc_events"),
                                   "retransmits": (_conn(v).get("stats") or {}).get("retransmits")}
                            for name, v in imp_bulk.items()}
    if cases:
        data.update({k: suite.data.get(k) for k in ("simultaneous_open", "simultaneous_close", "syn_flood", "fuzz")})
        sections += ["## Simultaneous open and close", "",
                     _simultaneous_reading(suite.data.get("simultaneous_open"), suite.data.get("simultaneous_close")),
                     "", *[f"![{name}]({name})" for name in ladders], ""]
    spent["the whole run (lab bring-up and take-down aside)"] = round(time.monotonic() - began, 1)
    data.update({"interop": [{k: r[k] for k in ("name", "ok", "detail", "secs")} for r in suite.results],
                 "bytes": nbytes, "seconds": spent,
                 "load_avg_1min": {"start": load_before, "end": os.getloadavg()[0]},
                 "environment": fingerprint(provider)})
    ok = sum(r["ok"] for r in suite.results)
    intro = {"full": "", "interop": " The cases only (`--interop-only`): the measurements did not run.",
             "bulk": " The goal's comparison only (`--bulk-only`): the stack's TAP cases, PyTCP, the profile and "
                     "the kernels; the rest of the suite did not run."}[mode]
    text = [f"# User-space TCP/IP stack (course §2.4) — {ok}/{len(suite.results)} cases pass", "",
            f"The stack owns h1's NIC `{suite.ifname}` on the `{suite.network}` LAN through "
            f"{'DPDK (hpnlab.dpdk, poll mode)' if suite.driver == 'dpdk' else 'AF_PACKET (a TPACKET_V2 ring)'} "
            f"with its own MAC and IP ({suite.ip}); h2 ({suite.peer_addr}) talks to it with its Linux kernel."
            + intro + (" h1's CPU is emulated (QEMU TCG): where a measurement is shorter there, its section "
                       "says so." if is_emulated else ""), "",
            "## Cases", "", md_table(["case", "result", "seconds", "detail"],
                                     [(r["name"], "ok" if r["ok"] else "FAIL", r["secs"], r["detail"])
                                      for r in suite.results]), "",
            *sections,
            "## Where the time went", "", md_table(["part", "seconds"], list(spent.items())), "",
            f"This machine's 1-minute load average was {load_before:.1f} when the run began and "
            f"{data['load_avg_1min']['end']:.1f} at its end (2 cores here; other work running beside the lab slows "
            f"every figure above, the Python stack's more than the kernel's).", "",
            environment_md(data["environment"]), rerun_md(argv, "lab-ustack")]
    report = write_report(out, "\n".join(text), data)
    return {"report": report, "data": data, "ok": ok == len(suite.results)}
