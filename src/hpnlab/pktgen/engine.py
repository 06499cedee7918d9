"""The C generator and receiver (hpnlab.dpdk's shim), driven from Python a time slice
at a time so that Ctrl-C and deadlines are seen within a tenth of a second.

    gen = Generator(port, traffic, src_mac, dst_mac, burst=32)
    result = gen.run(pps=0, count=0, seconds=5)          # 0 pps: as fast as the queue takes
    rcv = Receiver(expect=1_000_000)
    rcv.run_dpdk(port, seconds=6)  |  rcv.run_afpacket("eth2", seconds=6)
    rcv.result(sent=result["sent"])
"""
from __future__ import annotations

import os
import socket
import statistics
import struct
import time

from ..dpdk import DpdkError, Port, binding
from .templates import Traffic

SLICE = 0.1            # seconds the C loops run before Python looks at signals and clocks
SOL_PACKET = 263       # <linux/socket.h> (the socket module may lack it)
PACKET_ADD_MEMBERSHIP, PACKET_STATISTICS, PACKET_MR_PROMISC = 1, 6, 1     # <linux/if_packet.h>
ETH_P_ALL = 0x0003


def tsc_hz() -> int:
    """The TSC's rate. EAL measures it when it runs; without EAL (an AF_PACKET receiver)
    it is measured here against CLOCK_MONOTONIC over 0.2 s."""
    ffi, lib = binding()
    hz = int(lib.hp_tsc_hz())
    if hz:
        return hz
    t0, c0 = time.monotonic_ns(), lib.hp_tsc()
    time.sleep(0.2)
    t1, c1 = time.monotonic_ns(), lib.hp_tsc()
    return int((c1 - c0) * 1e9 / (t1 - t0))


class Generator:
    def __init__(self, port: Port, traffic: Traffic, src_mac: bytes, dst_mac: bytes,
                 queue: int = 0, burst: int = 32, pool_size: int = 4095, backoff_us: int = 0):
        self.ffi, self.lib = ffi, lib = binding()
        self.port, self.traffic, self.queue, self.burst = port, traffic, queue, burst
        self.g = ffi.gc(lib.hp_gen_new(port.id, queue, pool_size, burst), lib.hp_gen_free)
        if self.g == ffi.NULL:
            raise DpdkError("generator: out of memory")
        # with the TX ring full: spin (0, as testpmd's txonly) or sleep this many µs
        self.backoff_us = backoff_us
        lib.hp_gen_backoff(self.g, backoff_us)
        self.templates = traffic.templates(src_mac, dst_mac)
        for t in self.templates:
            if lib.hp_gen_template(self.g, t.frame, len(t.frame), t.stamp_off, t.csum_off, t.csum_base) < 0:
                raise DpdkError(f"generator: template of {t.size} bytes rejected")
        order = traffic.order()
        ret = lib.hp_gen_schedule(self.g, ffi.new("uint32_t[]", order), len(order))
        if ret < 0:
            raise DpdkError(f"generator: mempools of {pool_size} mbufs for {len(traffic.distinct_sizes)} "
                            f"sizes: errno {-ret}", hint="more EAL memory (-m), or fewer sizes in one run")

    def run(self, pps: float = 0, count: int = 0, seconds: float = 0, first_seq: int = 0) -> dict:
        """Send until `count` packets or `seconds` passed (whichever first; at least one
        of them). The sequence numbers are first_seq, first_seq+1, ... without gaps."""
        if not count and not seconds:
            raise DpdkError("generator: give a count or a duration")
        lib = self.lib
        hz = lib.hp_tsc_hz()
        lib.hp_gen_limits(self.g, float(pps), int(count), int(first_seq))
        cpu0 = os.times()
        start = lib.hp_tsc()
        end = start + int(seconds * hz) if seconds else None
        marks = [(0.0, 0)]          # (seconds since start, packets sent) after each slice
        while True:
            now = lib.hp_tsc()
            until = now + int(SLICE * hz)
            if end is not None:
                until = min(until, end)
            done = lib.hp_gen_run(self.g, until)
            if done < 0:
                raise DpdkError(f"generator: {done}")
            marks.append(((lib.hp_tsc() - start) / hz, int(lib.hp_gen_sent(self.g))))
            if done == 1 or (end is not None and lib.hp_tsc() >= end):
                break
        elapsed = (lib.hp_tsc() - start) / hz
        cpu1 = os.times()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        sent = int(lib.hp_gen_sent(self.g))
        nbytes = int(lib.hp_gen_bytes(self.g))
        return {"sent": sent, "bytes": nbytes, "seconds": elapsed,
                "pps": sent / elapsed if elapsed else 0.0,
                # on a shared CPU the wall-clock rate says how much CPU the scheduler gave;
                # packets per CPU-second is what the generator costs
                "cpu_seconds": cpu, "pps_per_cpu": sent / cpu if cpu else 0.0,
                # on the wire each frame also has FCS (4), preamble (8) and gap (12)
                "gbps": (nbytes + 24 * sent) * 8 / elapsed / 1e9 if elapsed else 0.0,
                "ring_full": int(lib.hp_gen_full(self.g)), "frame_writes": int(lib.hp_gen_writes(self.g)),
                # stamped for a burst but not taken by the full ring (testpmd's TX-dropped)
                "unsent": int(lib.hp_gen_unsent(self.g)),
                "flow_patches": int(lib.hp_gen_patches(self.g)),
                "first_seq": first_seq, "target_pps": pps, "burst": self.burst, "backoff_us": self.backoff_us,
                "samples": per_second(marks)}

    def echo(self, receiver: Receiver, queue: int = 0) -> None:
        """Count what arrives on the port's RX queue with `receiver` while sending."""
        self.echo_receiver = receiver       # the C side holds a pointer: keep it alive
        self.lib.hp_gen_echo(self.g, receiver.r, queue)


def per_second(marks: list[tuple[float, int]]) -> list[float]:
    """Packets per second in each whole second of a run, from (seconds, packets sent)
    marks taken a slice apart: second k runs from the first mark at or after k s to the
    first at or after k+1 s (as testpmd's Tx-pps, a counter's growth over its own clock)."""
    out: list[float] = []
    k, i = 1, 0
    while True:
        j = next((n for n, (t, _) in enumerate(marks) if t >= k), None)
        if j is None:
            return out
        (t0, c0), (t1, c1) = marks[i], marks[j]
        out.append((c1 - c0) / (t1 - t0) if t1 > t0 else 0.0)
        i, k = j, k + 1


def steady_pps(samples: list[float]) -> float | None:
    """A sender's steady rate from its per-second rates: their mean after the first second
    (start-up), i.e. what it sent in those seconds over their length. Not the median: on
    the emulated VM lab a second runs at 150 or at 500 kpps as the host's scheduler lets
    the NIC's device model run, and the median of three picks one of the two."""
    rest = samples[1:]
    return float(statistics.fmean(rest)) if rest else None


# The latency histogram's buckets, as the C side lays them out.
def bucket_low(i: int, sub: int) -> int:
    if i < sub:
        return i
    msb = i // sub + 3
    return (1 << msb) | ((i % sub) << (msb - 4))


def percentiles(hist: list[int], sub: int, points=(50, 90, 99, 99.9)) -> dict[str, float]:
    """Percentiles (ns, a bucket's lower bound) of the latency histogram."""
    total = sum(hist)
    out: dict[str, float] = {}
    if not total:
        return out
    for p in points:
        target, acc = total * p / 100, 0
        for i, n in enumerate(hist):
            acc += n
            if acc >= target:
                out[f"p{p:g}"] = float(bucket_low(i, sub))
                break
    return out


class Receiver:
    """Counts the stamped frames it sees: unique, duplicates, reordered, latency."""

    def __init__(self, expect: int = 0, hz: int | None = None):
        self.ffi, self.lib = ffi, lib = binding()
        self.hz = hz or tsc_hz()
        self.r = ffi.gc(lib.hp_rcv_new(expect, self.hz), lib.hp_rcv_free)
        if self.r == ffi.NULL:
            raise DpdkError("receiver: out of memory")
        self.kernel_drops = 0
        self.mode = ""
        self.per_queue: list[int] = []

    def want_dst(self, mac: bytes) -> None:
        """Count only frames sent to `mac`."""
        self.lib.hp_rcv_want_dst(self.r, mac)

    def _loop(self, seconds: float, step, idle: float = 0) -> None:
        """Receive for `seconds`, or until `idle` seconds passed without a stamped frame
        once one came (0: the whole time)."""
        lib = self.lib
        counts = self.ffi.new("struct hp_rcv_counts *")
        end = lib.hp_tsc() + int(seconds * self.hz)
        seen, quiet_since = 0, lib.hp_tsc()
        while lib.hp_tsc() < end:
            ret = step(min(end, lib.hp_tsc() + int(SLICE * self.hz)))
            if ret < 0:
                raise DpdkError(f"receiver: {self.mode}: errno {-ret}")
            lib.hp_rcv_counts(self.r, counts)
            if counts.stamped != seen:
                seen, quiet_since = counts.stamped, lib.hp_tsc()
            elif idle and seen and lib.hp_tsc() - quiet_since > idle * self.hz:
                break

    def run_dpdk(self, port: Port, seconds: float, idle: float = 0) -> None:
        """Poll every RX queue of the port; frames per queue in self.per_queue."""
        self.mode = f"dpdk {port.name}"
        counts = self.ffi.new("uint64_t[]", port.rxq)
        self._loop(seconds, lambda until: self.lib.hp_rcv_dpdk(self.r, port.id, port.rxq, counts, until), idle)
        self.per_queue = [int(c) for c in counts]

    def open_afpacket(self, ifname: str) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)        # SO_RCVBUFFORCE (root)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        sock.bind((ifname, 0))
        # promiscuous while the socket lives: the generator sends to a MAC nobody owns
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)   # reset the kernel's counters
        return sock

    def run_afpacket(self, sock: socket.socket, seconds: float, idle: float = 0) -> None:
        self.mode = "af_packet"
        self._loop(seconds, lambda until: self.lib.hp_rcv_afpacket(self.r, sock.fileno(), until), idle)
        _packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        self.kernel_drops += drops

    def result(self, sent: int | None = None) -> dict:
        ffi, lib = self.ffi, self.lib
        c = ffi.new("struct hp_rcv_counts *")
        lib.hp_rcv_counts(self.r, c)
        hist = ffi.new("uint64_t[]", lib.HP_HIST_N)
        lib.hp_rcv_hist(self.r, hist, lib.HP_HIST_N)
        hist_list = [int(x) for x in hist]
        unique = int(c.unique)
        out = {"mode": self.mode, "frames": int(c.frames), "stamped": int(c.stamped), "unique": unique,
               "duplicates": int(c.dups), "reordered": int(c.reordered), "max_seq": int(c.max_seq),
               "kernel_drops": self.kernel_drops, "per_queue": self.per_queue,
               "latency_ns": {"min": int(c.lat_min_ns), "max": int(c.lat_max_ns),
                              "mean": int(c.lat_sum_ns) / unique if unique else 0.0,
                              **percentiles(hist_list, lib.HP_HIST_SUB)},
               "histogram": {str(bucket_low(i, lib.HP_HIST_SUB)): n for i, n in enumerate(hist_list) if n}}
        if sent is not None:
            out["sent"] = sent
            out["lost"] = sent - unique
            out["loss_pct"] = 100.0 * (sent - unique) / sent if sent else 0.0
        return out
