"""What the kernel says about a process and the machine: CPU, context switches, RSS.

/proc/PID/stat utime+stime count every thread of the process (also exited
ones, and io_uring's iou-wrk threads, which belong to the process).
Context switches are per thread in /proc/PID/task/*/status and are kept per
thread: /proc/PID/status shows the main thread's alone, and a sum over the
live threads drops the counts of threads that exit between two samples (a
negative difference). The switches between two samples are the sum of each
thread's own increase; what a thread did in the interval before it exited is
not seen (only getrusage inside the process keeps that).
/proc/stat gives the machine's busy and steal time, to see whether someone
else's load disturbed a run. A server of several processes (pre-forked
workers) is the sum of its processes.

On a host of its own (a VM, a machine) all of it is read in one shell command over
SSH (`snapshot`): one round trip per sample, not one per /proc file.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HZ = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcSample:
    cpu_s: float          # user + system CPU seconds, all threads
    switches: dict[int, tuple[int, int]]   # thread id -> (voluntary, non-voluntary) context switches
    rss_kib: int
    threads: int
    at: float = 0.0       # when, in seconds of the host's own clock (CPU deltas need its intervals)
    user_s: float = 0.0   # the user-space part of cpu_s (the rest is the kernel's, for this process)


def _parse(stat: str, status: str, task_lines: str) -> ProcSample:
    """task_lines as `grep ctxt_switches /proc/PID/task/*/status` prints them."""
    fields = stat.rsplit(")", 1)[1].split()
    user = int(fields[11]) / HZ                          # utime, stime (fields 14, 15)
    cpu = user + int(fields[12]) / HZ
    rss = threads = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    counts: dict[int, list[int]] = {}
    for line in task_lines.splitlines():
        path, key, value = line.split(":", 2)
        vol_invol = counts.setdefault(int(path.split("/")[4]), [0, 0])
        vol_invol[key != "voluntary_ctxt_switches"] = int(value)
    return ProcSample(cpu, {tid: (v, i) for tid, (v, i) in counts.items()}, rss, threads, user_s=user)


def switches_between(before: ProcSample, after: ProcSample) -> tuple[int, int]:
    """(voluntary, non-voluntary) context switches from `before` to `after`: each live
    thread's own increase (a thread born meanwhile counts from 0), never negative."""
    vol = invol = 0
    for tid, (v, i) in after.switches.items():
        v0, i0 = before.switches.get(tid, (0, 0))
        vol += v - v0
        invol += i - i0
    return vol, invol


def _total(samples: list[ProcSample | None]) -> ProcSample | None:
    """The sum over a server's processes; None once its first (main) process is gone."""
    if not samples or samples[0] is None:
        return None
    live = [s for s in samples if s is not None]
    return ProcSample(sum(s.cpu_s for s in live), {t: c for s in live for t, c in s.switches.items()},
                      sum(s.rss_kib for s in live), sum(s.threads for s in live), samples[0].at,
                      sum(s.user_s for s in live))


def _pids(pid) -> list[int]:
    return [pid] if isinstance(pid, int) else list(pid)


def _local_one(pid: int, with_ctx: bool) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    tasks = []
    if with_ctx:
        for task in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                tasks += [f"{task}:{line}" for line in task.read_text().splitlines() if "ctxt_switches" in line]
            except OSError:
                pass
    return _parse(stat, status, "\n".join(tasks))


def sample(side, pid, with_ctx: bool = True) -> ProcSample | None:
    """CPU, context switches, RSS of a server (one pid or its processes' pids)."""
    if side.local_proc:
        now = time.monotonic()
        total = _total([_local_one(p, with_ctx) for p in _pids(pid)])
        return total and ProcSample(**{**total.__dict__, "at": now})
    return snapshot(side, pid, with_ctx=with_ctx)[0]


def family(side, pids: list[int]) -> list[int]:
    """`pids` and all their descendants (an engine's pre-forked worker processes)."""
    if side.local_proc:
        stats = []
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                stats.append(Path(f"/proc/{name}/stat").read_text())
            except OSError:
                pass
    else:
        look = side.look("look - others")          # every process's stat line, under @others
        stats = look.split("@others\n", 1)[-1].split("\n@machine", 1)[0].splitlines()
    children: dict[int, list[int]] = {}
    for line in stats:
        head, _, tail = line.partition(" (")
        if head.strip().isdigit() and ")" in tail:
            children.setdefault(int(tail.rsplit(")", 1)[1].split()[1]), []).append(int(head))   # ppid
    out = list(pids)
    for pid in out:                      # grows as it goes: breadth-first
        out += [c for c in children.get(pid, []) if c not in out]
    return out


def _read(path) -> str:
    try:
        return Path(path).read_text().rstrip("\n")
    except OSError:          # gone meanwhile (a thread or process that exited)
        return ""


def look_text(pids: list[int], with_ctx: bool, others: bool) -> str:
    """One look at this host's /proc, as the text snapshot() reads: the server's processes
    (stat, status, each thread's context switches), every process's stat (others' load) and
    the machine's CPU line. The look agent answers with it on a host of its own."""
    out = [f"@self {os.getpid()}", "@uptime", _read("/proc/uptime")]
    for pid in pids:
        out += [f"@pid {pid}", _read(f"/proc/{pid}/stat"), "@status", _read(f"/proc/{pid}/status"), "@tasks"]
        if with_ctx:
            out += [f"{task}:{line}" for task in Path(f"/proc/{pid}/task").glob("*/status")
                    for line in _read(task).splitlines() if "ctxt_switches" in line]
    if others:
        out += ["@others"] + [_read(f"/proc/{name}/stat") for name in os.listdir("/proc") if name.isdigit()]
    out += ["@machine", _read("/proc/stat").split("\n", 1)[0]]
    return "\n".join(line for line in out if line)


def snapshot(side, pid, with_ctx: bool = True, exclude: set[int] | None = None):
    """(server sample, {pid: CPU s} of every user process not in `exclude` nor the server's,
    MachineSample) of a side, in one round trip to its look agent on a remote host; the
    last two are None without `exclude`."""
    others = exclude is not None
    mine = set(_pids(pid)) | (exclude or set())
    if side.local_proc:
        return (sample(side, pid, with_ctx), others_cpu(mine) if others else None,
                machine() if others else None)
    out = side.look(f"look {'ctx' if with_ctx else '-'} {'others' if others else '-'} "
                    + " ".join(str(p) for p in _pids(pid)))
    procs: list[dict[str, list[str]]] = []
    rest: dict[str, list[str]] = {"uptime": [], "others": [], "machine": []}
    section = ""
    cur: dict[str, list[str]] | None = None
    look = 0                     # the look agent: its session is not others' load
    for line in out.splitlines():
        if line.startswith("@self "):
            look = int(line.split()[1])
        elif line.startswith("@pid "):
            cur, section = {"stat": [], "status": [], "tasks": []}, "stat"
            procs.append(cur)
        elif line in ("@uptime", "@status", "@tasks", "@others", "@machine"):
            section = line[1:]
        elif section in rest:
            rest[section].append(line)
        elif cur is not None:
            cur[section].append(line)
    proc = _total([_parse(*("\n".join(p[k]) for k in ("stat", "status", "tasks")))
                   if p["stat"] and p["status"] else None for p in procs])
    if proc is not None and rest["uptime"]:
        proc.at = float(rest["uptime"][0].split()[0])
    if not others:
        return proc, None, None
    return proc, others_from_stat(rest["others"], mine, look), \
        _machine_from(rest["machine"][0]) if rest["machine"] else None


def others_from_stat(lines: list[str], mine: set[int], look: int = 0) -> dict[int, float]:
    """{pid: CPU s} of the user processes in /proc/*/stat lines, without `mine` and without
    the session of process `look` (the shell that took this look over SSH: on an emulated
    guest its processes, new since the last look, cost a third of a core and made every
    run look disturbed by others)."""
    procs = {}
    for line in lines:
        head, _, tail = line.partition(" (")
        if not head.isdigit() or int(head) in mine or ")" not in tail:
            continue
        fields = tail.rsplit(")", 1)[1].split()
        if not int(fields[6]) & PF_KTHREAD:
            procs[int(head)] = (int(fields[3]), (int(fields[11]) + int(fields[12])) / HZ)
    own = procs[look][0] if look in procs else None
    return {pid: cpu for pid, (session, cpu) in procs.items() if session != own}


@dataclass
class MachineSample:
    busy: float    # CPU seconds (all CPUs) not idle/iowait/steal
    steal: float
    total: float


def host_sample(vm_pids: list[int | None]) -> tuple[float, list[float | None], float]:
    """(this machine's monotonic time, CPU seconds so far of each VM's QEMU process - all its
    threads: vCPUs and device models; None where there is no such VM here -, this machine's
    busy CPU seconds). Under TCG a guest's own accounting cannot see the time its vCPU threads
    waited for a host core (no steal is reported), so its QEMU process's CPU is what the host
    really gave it."""
    cpu: list[float | None] = []
    for pid in vm_pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu.append((int(fields[11]) + int(fields[12])) / HZ)
        except (OSError, TypeError):       # gone, or no VM (pid None)
            cpu.append(None)
    return time.monotonic(), cpu, machine().busy


def machine() -> MachineSample:
    with open("/proc/stat") as f:
        return _machine_from(f.readline())


def _machine_from(cpu_line: str) -> MachineSample:
    vals = [int(v) for v in cpu_line.split()[1:]]
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


PINGPONG = """
import os, socket, sys, time
a, b = socket.socketpair()
cpus = sorted(os.sched_getaffinity(0))
if os.fork() == 0:
    a.close()
    os.sched_setaffinity(0, {cpus[-1]})
    try:
        while data := b.recv(64):
            b.sendall(data)
    finally:
        os._exit(0)     # also when the other end closed first
b.close()
os.sched_setaffinity(0, {cpus[0]})
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    a.sendall(b"x" * 64)
    a.recv(64)
a.close()
os.wait()
"""


def steal_in_pingpong(seconds: float = 1.0) -> tuple[float, float]:
    """(busy, steal) as fractions of all CPUs: others' processes over `seconds` while this machine is
    idle, then the hypervisor's steal over `seconds` of a ping-pong between two CPUs, the kind of
    traffic the bench makes. On the cloud VMs here steal comes with wake-ups (a vCPU that halted
    waits for its core back): two spinners read 0-2 % while a ping-pong read 3-24 % and the bench's
    runs lost 0.5-1.0 of the 2 cores, minutes on end (2026-12-03)."""
    busy, _ = busy_fraction(seconds)
    pingpong = subprocess.Popen([sys.executable, "-c", PINGPONG, str(seconds + 0.5)])
    try:
        time.sleep(0.2)             # both ends are running (a Python start takes ~30 ms)
        _, steal = busy_fraction(seconds)
    finally:
        pingpong.wait(timeout=10)
    return busy, steal


class QuietWaiter:
    """Wait (up to max_wait s) before each cell until others' processes and the hypervisor's
    steal together take less than `threshold` of the machine.

    Load average lags by a minute and counts our own just-finished run, so
    this samples /proc/stat directly (loadavg is still recorded). When a wait
    ran out without the machine getting quiet, the next cells only take a
    short look until it is quiet again: on a shared machine that stays busy,
    waiting the full time before each of 100 cells would take an hour and
    change nothing; the per-run "others' CPU" check still catches disturbance.
    `probe(seconds)` reads (busy, steal): steal_in_pingpong where the server's
    CPUs are this machine's, since an idle machine shows no steal.
    """

    def __init__(self, max_wait: float, threshold: float = 0.25, say=print, probe=None):
        self.max_wait, self.threshold, self.say = max_wait, threshold, say
        # (busy, steal) = probe(seconds); with nothing to wait for, a look at /proc/stat is enough
        self.probe = probe if probe and max_wait > 0 else busy_fraction
        self.busy_streak = False

    def __call__(self) -> dict:
        started = time.monotonic()
        limit = min(self.max_wait, 3.0) if self.busy_streak else self.max_wait
        busy, steal = self.probe(0.5)
        if busy + steal > self.threshold and limit > 0:
            self.say(f"    machine {busy:.0%} busy with others' load, {steal:.0%} stolen by the hypervisor; "
                     f"waiting up to {limit:g}s for quiet")
        while busy + steal > self.threshold and time.monotonic() - started < limit:
            busy, steal = self.probe(1.0)
        self.busy_streak = busy + steal > self.threshold
        return {"busy_before": round(busy, 3), "steal_before": round(steal, 3),
                "waited_s": round(time.monotonic() - started, 1),
                "loadavg": open("/proc/loadavg").read().split()[:3]}


def read_text(pid: int, paths: list[str]) -> str:
    """Whether process `pid` is alive, then the files at `paths` (a started program's output),
    as the look agent answers a `read`: `@alive 0|1`, then `@file` and each file's text."""
    out = [f"@alive {int(Path(f'/proc/{pid}').exists())}"]
    for path in paths:
        out += ["@file", _read(path)]
    return "\n".join(out)


def main() -> int:
    """`python3 -m hpnlab.bench.procstat`: the look agent of a host of its own (a VM, a machine).
    It reads requests, one a line, and answers each with a line `@end` after the answer:
    `look ctx|- others|- PID...` -> look_text(); `read PID PATH...` -> read_text(). The bench
    starts it once per host on one SSH channel, at real-time priority where it may: a look
    that opened an SSH session and ran a shell, cat and grep each time took 1.5-3.6 s on a TCG
    guest whose vCPU the server kept busy (the session's sshd, PAM and logind work get no
    priority), longer than the runs' windows; the load generator's markers, read the same way,
    came seconds late."""
    for line in sys.stdin:
        verb, *words = line.split() or [""]
        if verb == "look" and len(words) >= 2:
            answer = look_text([int(w) for w in words[2:] if w.isdigit()], words[0] == "ctx", words[1] == "others")
        elif verb == "read" and words and words[0].isdigit():
            answer = read_text(int(words[0]), words[1:])
        else:
            answer = f"@error unknown request {line.strip()!r}"
        sys.stdout.write(answer + "\n@end\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
