"""What the kernel says about a process and the machine: CPU, context switches, RSS.

/proc/PID/stat utime+stime count every thread of the process (also exited
ones, and io_uring's iou-wrk threads, which belong to the process).
Context switches are per thread in /proc/PID/task/*/status, so they are
summed. /proc/stat gives the machine's busy and steal time, to see whether
someone else's load disturbed a run.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

HZ = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcSample:
    cpu_s: float          # user + system CPU seconds, all threads
    vol: int              # voluntary context switches, all live threads
    invol: int            # non-voluntary
    rss_kib: int
    threads: int


def sample(side, pid: int, with_ctx: bool = True) -> ProcSample | None:
    stat = side.read(f"/proc/{pid}/stat")
    status = side.read(f"/proc/{pid}/status")
    if stat is None or status is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / HZ       # utime, stime (fields 14, 15)
    rss = threads = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    vol = invol = 0
    if with_ctx:
        for tid in side.listdir(f"/proc/{pid}/task"):
            st = side.read(f"/proc/{pid}/task/{tid}/status")
            for line in (st or "").splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol += int(line.split()[1])
    return ProcSample(cpu, vol, invol, rss, threads)


@dataclass
class MachineSample:
    busy: float    # CPU seconds (all CPUs) not idle/iowait/steal
    steal: float
    total: float


def machine() -> MachineSample:
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return MachineSample(busy / HZ, steal / HZ, (busy + idle + iowait + steal) / HZ)


PF_KTHREAD = 0x00200000


def others_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds so far of every user-space process on this machine except `exclude`.

    The difference of two of these samples is the load *other people* put on
    the machine during a run. Machine-wide busy time would not do: the
    loopback traffic's own softirq work is not charged to our processes.
    """
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[6]) & PF_KTHREAD:          # field 9: flags
            continue
        cpu[int(name)] = (int(fields[11]) + int(fields[12])) / HZ
    return cpu


def others_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


def busy_fraction(seconds: float = 1.0) -> tuple[float, float]:
    """(busy, steal) as fractions of all CPUs over `seconds`."""
    a = machine()
    time.sleep(seconds)
    b = machine()
    total = max(b.total - a.total, 1e-9)
    return (b.busy - a.busy) / total, (b.steal - a.steal) / total


class QuietWaiter:
    """Wait (up to max_wait s) before each cell until the machine is below `threshold` busy.

    Load average lags by a minute and counts our own just-finished run, so
    this samples /proc/stat directly (loadavg is still recorded). When a wait
    ran out without the machine getting quiet, the next cells only take a
    short look until it is quiet again: on a shared machine that stays busy,
    waiting the full time before each of 100 cells would take an hour and
    change nothing; the per-run "others' CPU" check still catches disturbance.
    """

    def __init__(self, max_wait: float, threshold: float = 0.25, say=print):
        self.max_wait, self.threshold, self.say = max_wait, threshold, say
        self.busy_streak = False

    def __call__(self) -> dict:
        started = time.monotonic()
        limit = min(self.max_wait, 3.0) if self.busy_streak else self.max_wait
        busy, steal = busy_fraction(0.5)
        if busy > self.threshold and limit > 0:
            self.say(f"    machine {busy:.0%} busy with others' load; waiting up to {limit:g}s for quiet")
        while busy > self.threshold and time.monotonic() - started < limit:
            busy, steal = busy_fraction(1.0)
        self.busy_streak = busy > self.threshold
        return {"busy_before": round(busy, 3), "steal_before": round(steal, 3),
                "waited_s": round(time.monotonic() - started, 1),
                "loadavg": open("/proc/loadavg").read().split()[:3]}
