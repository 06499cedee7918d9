"""What runs on a lab host, one measurement a process (DPDK's EAL lives as long as
the process): prints one JSON object on stdout.

    python -m hpnlab.pktgen.agent send    --eal "ARGS" --size 64 --seconds 5 [--rate 100kpps] [--count N] [--echo]
                                          [--backoff-us N]      (sleep on a full TX ring instead of spinning)
    python -m hpnlab.pktgen.agent recv    --eal "ARGS" | --afpacket IF   --seconds 6
    python -m hpnlab.pktgen.agent testpmd --eal "ARGS" --size 64 --seconds 5
    python -m hpnlab.pktgen.agent reflect --eal "ARGS" --seconds 60    (testpmd macswap, until SIGTERM)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from .. import dpdk
from ..errors import HpnlabError
from .engine import Generator, Receiver, steady_pps
from .templates import PEER_MAC_TEXT, PROTOS, Traffic, TrafficError, parse_sizes, rate_pps


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9a-fA-F]{2}", p) for p in parts):
        raise TrafficError(f"MAC {text!r}: six hex pairs like 02:00:00:00:00:01")
    return bytes(int(p, 16) for p in parts)


# Both senders' ports are set up alike: one queue pair of these many descriptors (the
# driver clamps them to what the device has), this many mbufs; testpmd gets them as options.
DESCRIPTORS = 1024
MBUFS = 8191


def open_port(eal: str, port: int, rxq: int = 1, txq: int = 1, nmbufs: int = MBUFS, rss: bool = False):
    dpdk.init(shlex.split(eal))
    pool = dpdk.Pool(f"pktgen{port}", nmbufs)
    return dpdk.Port(port, pool, rxq=rxq, txq=txq, rxd=DESCRIPTORS, txd=DESCRIPTORS, rss=rss)


def cmd_send(a) -> dict:
    sizes = parse_sizes(a.size)
    if len(sizes) != 1:
        raise TrafficError("--size: the agent sends one size (or imix) a run")
    traffic = Traffic(proto=a.proto, sizes=sizes[0], flows=a.flows, src_ip=a.src_ip, dst_ip=a.dst_ip)
    port = open_port(a.eal, a.port)
    try:
        link = port.link()
        gen = Generator(port, traffic, port.mac if a.src_mac is None else mac_bytes(a.src_mac),
                        mac_bytes(a.dst_mac), burst=a.burst, backoff_us=a.backoff_us)
        echo = None
        if a.echo:          # a peer sends the frames back: count them here, on the clock that stamped them
            echo = Receiver(expect=a.count, hz=dpdk.tsc_hz())
            echo.want_dst(port.mac if a.src_mac is None else mac_bytes(a.src_mac))
            gen.echo(echo)
        port.reset_stats()
        out = gen.run(pps=rate_pps(a.rate, traffic.mean_size(), link.speed_mbps), count=a.count,
                      seconds=a.seconds)
        out["steady_pps"] = steady_pps(out["samples"])
        if echo is not None:
            echo.run_dpdk(port, a.echo_wait, idle=0.5)       # the last frames on their way back
            out["echo"] = echo.result(sent=out["sent"])
        time.sleep(0.05)
        out.update(rate=a.rate, port=port.name, driver=port.driver, link_mbps=link.speed_mbps, link_up=link.up,
                   stats=port.stats(), xstats=port.xstats(), size=a.size, proto=a.proto, flows=a.flows,
                   eal=a.eal)
        return out
    finally:
        port.close()


def cmd_recv(a) -> dict:
    rcv = Receiver(expect=a.expect)
    if a.afpacket:
        sock = rcv.open_afpacket(a.afpacket)
        print(json.dumps({"ready": True}), flush=True)
        rcv.run_afpacket(sock, a.seconds, a.idle)
        sock.close()
        return rcv.result()
    port = open_port(a.eal, a.port, rxq=a.queues, rss=a.queues > 1)
    try:
        print(json.dumps({"ready": True}), flush=True)
        rcv.run_dpdk(port, a.seconds, idle=a.idle)
        out = rcv.result()
        out.update(port=port.name, driver=port.driver, stats=port.stats(), rss=port.rss,
                   queue_xstats={k: v for k, v in port.xstats().items() if k.startswith("rx_q")})
        return out
    finally:
        port.close()


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """In the child: SIGKILL when the agent dies, however it dies (a killed agent left
    busy testpmds behind)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG


def testpmd_argv(eal: str, *forwarding: str) -> list[str]:
    args = shlex.split(eal)
    core = min(os.sched_getaffinity(0))
    # testpmd needs a forwarding lcore besides its main one: both on the EAL's CPU (the main one sleeps)
    if "-l" in args:
        i = args.index("-l")
        core = int(args[i + 1].split(",")[0].split("-")[0])
        del args[i:i + 2]
    return ["dpdk-testpmd", "--lcores", f"0@{core},1@{core}", *args, "--", *forwarding, "--stats-period=1",
            f"--total-num-mbufs={MBUFS}", "--txq=1", "--rxq=1", f"--txd={DESCRIPTORS}", f"--rxd={DESCRIPTORS}"]


class LogTail:
    """The whole lines a growing log (file descriptor `fd`) gained since the last look: from an
    offset, the part of a line not yet ended kept back. The loops below look at testpmd's log
    every 50 ms, and a re-read from the start each time (it prints a stats block a second) made
    a long run quadratic. pread, not seek and read: testpmd writes through a copy of the same
    descriptor, which shares its offset (a seek back would have it write over its own lines)."""

    def __init__(self, fd: int):
        self.fd, self.pos, self.part = fd, 0, b""

    def lines(self) -> str:
        new = read_from(self.fd, self.pos)
        self.pos += len(new)
        whole, _, self.part = (self.part + new).rpartition(b"\n")
        return whole.decode(errors="replace")

    def unended(self) -> str:
        """The last line, not ended yet (testpmd's output to a file comes as its buffer fills)."""
        return self.part.decode(errors="replace")

    def text(self) -> str:
        """The whole log so far."""
        return read_from(self.fd, 0).decode(errors="replace")


def read_from(fd: int, pos: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, 1 << 20, pos):
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


STARTED = "packet forwarding - ports="      # testpmd's line as forwarding starts


def run_testpmd(argv: list[str], seconds: float, until_stopped: bool = False,
                rates: int = 0) -> tuple[str, float, float]:
    """Run testpmd for `seconds` of forwarding (or, `until_stopped`, until this agent gets
    SIGTERM/Ctrl-C, at most `seconds`; or, `rates`, until it printed that many Tx-pps lines,
    at most `seconds` + 10), stop it with SIGINT as a user would; (its output, seconds it
    forwarded until then, CPU seconds it used meanwhile)."""
    with tempfile.TemporaryFile("w+b") as log:
        # a process group of its own (the signals sent to the agent's group are the agent's to
        # pass on), in the agent's session: the scheduler's autogroups are per session, and a
        # session of its own gave testpmd a fair share of its own — on a netns host, where the
        # generator shares the lab command's session with whatever else runs there, testpmd had
        # 0.36 of a CPU to the generator's 0.19 (net_null, load 7)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                process_group=0, preexec_fn=_die_with_parent)
        tail = LogTail(log.fileno())
        deadline = time.monotonic() + 60
        started: float | None = None
        printed = 0             # Tx-pps lines since forwarding started
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                new = tail.lines()
                if STARTED in new + "\n" + tail.unended():
                    started = time.monotonic()
                    # rate lines after it in the same read (their count goes on from the next)
                    printed = new.split(STARTED, 1)[-1].count("Tx-pps:") if STARTED in new else 0
                    break
                time.sleep(0.05)
            if started is None:
                raise HpnlabError("dpdk-testpmd did not start forwarding: " + tail.text()[-1500:])
            if until_stopped:
                print(json.dumps({"ready": True}), flush=True)
            cpu0 = _cpu_seconds(proc.pid)
            try:
                if rates:
                    # its main lcore looks at the clock after each 1 s sleep and prints when a
                    # whole period passed since its last line: often at every second look (here
                    # 3 s of forwarding held 1 or 2 lines; each is the rate over its own interval)
                    end = time.monotonic() + seconds + 10
                    while proc.poll() is None and time.monotonic() < end:
                        printed += tail.lines().count("Tx-pps:")
                        if printed >= rates:
                            break
                        time.sleep(0.05)
                else:
                    time.sleep(seconds)
            except KeyboardInterrupt:
                if not until_stopped:
                    raise
            cpu = _cpu_seconds(proc.pid) - cpu0
            elapsed = time.monotonic() - started        # forwarding, until it was told to stop
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return tail.text(), elapsed, cpu


def _totals(text: str, what: str) -> int:
    """testpmd's RX or TX packet total, from its last forward statistics."""
    found = re.findall(rf"{what}-packets:\s+(\d+)\s+{what}-dropped:", text)
    return int(found[-1]) if found else 0


def cmd_testpmd(a) -> dict:
    """dpdk-testpmd --forward-mode=txonly on the same EAL arguments and port setup: its own
    per-second Tx-pps lines (port counters over its own clock), reduced as the generator's."""
    argv = testpmd_argv(a.eal, "--forward-mode=txonly", f"--txpkts={a.size}", f"--burst={a.burst}")
    # Its first line comes ~0.5 s after forwarding starts and reads 0 (no interval yet); then
    # one every 1-2 s, the first of them covering the start-up as the generator's first
    # second: as many lines as the generator's run has seconds.
    text, elapsed, cpu = run_testpmd(argv, a.seconds, rates=1 + int(a.seconds))
    samples = [float(x) for x in re.findall(r"Tx-pps:\s+(\d+)", text)][1:1 + int(a.seconds)]
    tx = _totals(text, "TX")
    if not tx:
        raise HpnlabError("dpdk-testpmd sent nothing: " + text[-1500:])
    steady = steady_pps(samples)
    if steady is None:
        raise HpnlabError(f"dpdk-testpmd printed {len(samples)} per-second rate(s) in {a.seconds:g} s: "
                          "too few for a steady rate (run it 2 s or longer): " + text[-800:])
    dropped = re.findall(r"TX-dropped:\s+(\d+)", text)
    return {"steady_pps": steady, "pps": tx / elapsed if elapsed else 0.0, "sent": tx,
            # prepared for a burst but not taken by the full ring (the generator's "unsent")
            "unsent": int(dropped[-1]) if dropped else 0, "seconds": elapsed, "samples": samples,
            # testpmd's rate over the share of a CPU it had while forwarding
            "cpu_seconds": cpu, "pps_per_cpu": steady * elapsed / cpu if cpu else 0.0,
            "size": a.size, "argv": argv}


def cmd_reflect(a) -> dict:
    """dpdk-testpmd --forward-mode=macswap: every frame goes back out of the port it came
    in, source and destination MAC swapped (the far end of a round trip)."""
    argv = testpmd_argv(a.eal, "--forward-mode=macswap", "--port-topology=loop", f"--burst={a.burst}")
    text, elapsed, _cpu = run_testpmd(argv, a.seconds, until_stopped=True)
    return {"rx": _totals(text, "RX"), "tx": _totals(text, "TX"), "seconds": elapsed, "argv": argv}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpnlab.pktgen.agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("send", "recv", "testpmd", "reflect"):
        s = sub.add_parser(name)
        s.add_argument("--eal", default="", help="EAL arguments, one string")
        s.add_argument("--port", type=int, default=0)
        s.add_argument("--seconds", type=float, default=0)
        s.add_argument("--size", default="64")
        s.add_argument("--burst", type=int, default=32)
        if name == "send":
            s.add_argument("--proto", choices=PROTOS, default="udp")
            s.add_argument("--flows", type=int, default=1)
            s.add_argument("--rate", default="max", help="max, line, 100kpps, 1Gbit...")
            s.add_argument("--count", type=int, default=0)
            s.add_argument("--src-mac")
            s.add_argument("--dst-mac", default=PEER_MAC_TEXT)
            s.add_argument("--src-ip", default="10.77.2.1")
            s.add_argument("--dst-ip", default="10.77.2.2")
            s.add_argument("--echo", action="store_true",
                           help="count the frames a peer sends back (round trip, this host's TSC)")
            s.add_argument("--echo-wait", type=float, default=3.0,
                           help="seconds to wait for the last frames back after sending")
            s.add_argument("--backoff-us", type=int, default=0,
                           help="sleep this long when the TX ring is full (0: spin, as testpmd)")
        if name == "recv":
            s.add_argument("--afpacket", metavar="IFNAME")
            s.add_argument("--expect", type=int, default=0)
            s.add_argument("--queues", type=int, default=1, help="DPDK: RX queues to spread flows over (RSS)")
            s.add_argument("--idle", type=float, default=0,
                           help="stop after this many seconds without a stamped frame (once one came)")
    a = p.parse_args(argv)
    # SIGTERM (a lab stopping its agents) unwinds like Ctrl-C: ports closed, testpmd stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        out = {"send": cmd_send, "recv": cmd_recv, "testpmd": cmd_testpmd, "reflect": cmd_reflect}[a.cmd](a)
    except (HpnlabError, TrafficError) as exc:
        print(json.dumps({"error": str(exc), "hint": getattr(exc, "hint", None)}), flush=True)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
