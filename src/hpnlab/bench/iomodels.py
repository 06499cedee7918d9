"""The I/O-models benchmark: engines x connections x message sizes.

For each cell a fresh server process runs the engine (so its memory starts
clean), the C load generator drives it for `repeats` runs, and one more
short run counts the server's syscalls with perf (a counting tracepoint
perturbs the throughput a little, so it is kept out of the timed runs).
Around each timed run's measured window the runner samples the server's
/proc (CPU, context switches, RSS) and the machine's /proc/stat (to see
whether someone else's load disturbed the run, in which case it repeats it).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import time
from dataclasses import dataclass, field, replace

from ..servers import ENGINES
from . import loadgen, procstat
from .sides import Side
from .writeup import GOAL_PEERS, failures, goals, label, undisturbed, unsettled

SELECT_LIMIT = 1024 - 24     # FD_SETSIZE minus the descriptors a Python process already holds


@dataclass
class Config:
    engines: list[str] = field(default_factory=lambda: list(ENGINES))
    conns: list[int] = field(default_factory=lambda: [1, 10, 100, 1000, 10000])
    sizes: list[int] = field(default_factory=lambda: [64, 4096])
    duration: float = 3.0
    warmup: float = 1.0
    repeats: int = 3
    depth: int = 1
    port: int = 7300
    quiet_wait: float = 60.0        # seconds to wait for a quiet machine before a cell
    quiet_threshold: float = 0.25   # machine busy fraction that counts as "not quiet"
    disturbed_cores: float = 0.3    # CPU others took during a run (in cores) that makes us repeat it
    max_extra: int = 2              # extra runs allowed per cell for disturbed ones
    recheck: bool = True            # measure mostly-disturbed goals again at the end of the grid ...
    recheck_wait: float = 180.0     # ... after waiting up to this long for a quiet machine
    syscalls: bool = True
    syscall_duration: float = 1.0
    server_host: str = "h1"         # lab mode: the engines run here ...
    client_host: str = "h2"         # ... and the load generator here,
    network: str = "data"           # over this network of the lab
    workers: list[int] = field(default_factory=list)   # for parallel engines; [] = the server host's CPUs
    # the grid to use instead when the server's CPU turns out to be emulated (TCG); {} = keep
    emulated_grid: dict = field(default_factory=dict)
    emulated_why: str = ""          # why that grid, in the report's words
    grid_note: str = ""             # why the grid is not the one asked for (said in the report)
    # label -> the window its server's looks turned out to need (a LateLook); its later runs start with it
    windows: dict[str, float] = field(default_factory=dict)
    # what the server's host said (probe): engines it cannot run, and why; which are parallel
    unavailable: dict[str, str] = field(default_factory=dict)
    parallel: dict[str, bool] = field(default_factory=dict)

    def groups(self) -> list[tuple[int, int]]:
        """The (size, connections) groups to run: sizes x connections."""
        return [(s, c) for s in self.sizes for c in self.conns]


def _wait_marker(side: Side, handle, marker: str, timeout: float) -> float | None:
    """Wait for `marker` in the stderr of a process `side` started; None if it did not come.
    Else a moment it had not come yet: when the last look that missed it began (a look at a
    host of its own takes a while, so the moment it is seen can come later than it was written)."""
    before = time.monotonic()
    deadline = before + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        _out, err, alive = side.output(handle)
        if marker in err:
            return before
        if not alive:
            return None
        before = now
        time.sleep(side.poll_interval)
    return None


def _finished(side: Side, handle, timeout: float) -> tuple[str, str]:
    """(stdout, stderr) of a process `side` started, once it has exited."""
    deadline = time.monotonic() + timeout
    while True:
        out, err, alive = side.output(handle)
        if not alive:
            return out, err
        if time.monotonic() > deadline:
            raise RuntimeError(f"{handle.name} did not exit within {timeout:g} s of its end")
        time.sleep(max(side.poll_interval, 0.02))


class LateLook(RuntimeError):
    """The second look at the server came after the load's window (it would read idle CPU)."""

    def __init__(self, duration: float, look: float):
        super().__init__(f"the second look at the server came after the {duration:g} s window "
                         f"(one look took {look:.2f} s): give a longer --duration")
        self.look = look


def _loadgen_json(out: str, err: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen printed no result: {err.strip()[-300:]}")
    return json.loads(lines[-1])


def timed_run(cfg: Config, srv: Side, cli: Side, pids: list[int], port: int, conns: int, size: int,
              duration: float, syscall_probe: bool = False) -> dict:
    """One loadgen run; the server's /proc and its host's load sampled around its window."""
    connect_timeout = 30.0 + conns / 500
    # The connections stay open a while after the window, so that a second look that comes late
    # still finds a threads server's connection threads alive: a thread that exits takes its
    # context-switch counts with it. A look at a host of its own is one line to its look agent.
    linger = 0.5 if srv.local_proc else 1.0
    launched = time.monotonic()
    lg = cli.start(loadgen.argv(cli.loadgen, srv.address, port, conns, size, cfg.depth, duration, cfg.warmup,
                                connect_timeout, linger), name="loadgen")
    probe, ended = None, False
    # others' load on the server's host: on this machine the bench and the client are ours too
    exclude = {lg.pid, os.getpid()} if srv.local_proc else set()
    try:
        started = _wait_marker(cli, lg, "# measuring", connect_timeout + cfg.warmup + 15)
        if started is None:
            raise RuntimeError("loadgen never started measuring: " + cli.output(lg)[1].strip()[-300:])
        t0 = time.monotonic()
        if syscall_probe:
            probe = start_syscall_probe(srv, pids)
        else:
            s0, o0, m0 = procstat.snapshot(srv, pids, exclude=exclude)
            h0 = procstat.host_sample([srv.vm_pid, cli.vm_pid])
        look = time.monotonic() - t0          # one look's round trip (to a TCG guest's agent ~0.1 s)
        # the second look, like the probe's stop, inside the window: its numbers must come from
        # steady load, not from the idle moments after it. It starts early enough for it and the
        # check below (a round trip to the client) to end before the window does; the window
        # began after `started`, so it ends after started + duration.
        # (a look at a host of its own varies more: on a TCG guest 0.1-0.9 s, as the host gives its vCPU time)
        margin = max(0.25 if srv.local_proc else 1.0, 3 * look)
        time.sleep(max(0.05, started + duration - margin - time.monotonic()))
        if syscall_probe:
            syscall_rate = stop_syscall_probe(probe) if probe is not None else None
        else:
            t1 = time.monotonic()
            s1, o1, m1 = procstat.snapshot(srv, pids, exclude=exclude)
            h1 = procstat.host_sample([srv.vm_pid, cli.vm_pid])
            # A look that ended before started + duration was inside the window for certain (the
            # window began after `started`). Only a later one needs the client's word, which takes
            # one more round trip: on a TCG guest that trip alone could find "# done" after a look
            # that had been in time, and cost the cell a run with a longer window.
            if time.monotonic() > started + duration and "# done" in cli.output(lg)[1]:
                raise LateLook(duration, look)     # its numbers would be of the idle after the window
        if _wait_marker(cli, lg, "# done", duration + 30) is None:
            raise RuntimeError("loadgen did not finish its window")
        out, err = _finished(cli, lg, linger + 30)
        ended = True
        res = _loadgen_json(out, err)
        # where a run's time goes (on an emulated guest the window is the smaller part of it)
        phases = {"to_window": started - launched, "connect": res.get("connect_s", 0.0), "look": look,
                  "after_window": time.monotonic() - started - duration, "total": time.monotonic() - launched}
        if not syscall_probe:
            phases["look2"] = h1[0] - t1
    finally:
        if not ended:                 # it did not get to its end: stop it (one that did, exited)
            lg.stop()
    if "error" in res:
        raise RuntimeError(f"loadgen: {res['error']}")
    if syscall_probe:
        return {"rps": res["rps"], "syscalls_per_s": syscall_rate}
    if s0 is None or s1 is None:
        raise RuntimeError("the server died during the run")
    window = max(res["duration_s"], 1e-6)
    looked = max(s1.at - s0.at, 1e-3)                    # between the two looks, on the server's clock
    reqs = max(res["rps"] * looked, 1.0)                 # requests served meanwhile, at the window's rate
    server_cpu = s1.cpu_s - s0.cpu_s
    foreign = procstat.others_delta(o0, o1) / looked     # cores other people's processes used
    steal = (m1.steal - m0.steal) / looked               # a VM's CPU taken by its hypervisor
    vol, invol = procstat.switches_between(s0, s1)
    host_s = max(h1[0] - h0[0], 1e-3)                    # the same two looks, on this machine's clock
    vms = [(b - a) / host_s if a is not None and b is not None else None for a, b in zip(h0[1], h1[1])]
    busy = (h1[2] - h0[2]) / host_s
    vm = {} if vms[0] is None else {"vm_cores": round(vms[0], 3)}
    if None not in vms:         # the lab's two VMs run here: what else this machine ran meanwhile
        vm["host_others_cores"] = round(max(0.0, busy - sum(v for v in vms if v is not None)), 3)
    return vm | {
        "rps": res["rps"], "requests": res["requests"], "lat_us": res["lat_us"], "window_s": window,
        "connected": res["connected"], "alive": res["alive"], "connect_errors": res["connect_errors"],
        "errors": res["errors"] + res["closed_by_peer"], "client_util": res["client_cpu"]["util"],
        "server_util": server_cpu / looked, "cpu_us_per_req": server_cpu * 1e6 / reqs, "sampled_s": looked,
        "user_us_per_req": (s1.user_s - s0.user_s) * 1e6 / reqs,
        "ctxsw_vol_per_req": vol / reqs, "ctxsw_invol_per_req": invol / reqs,
        "rss_kib": max(s0.rss_kib, s1.rss_kib), "threads": s1.threads, "processes": len(pids),
        "foreign_cores": round(foreign, 3), "steal_cores": round(steal, 3),
        # the hypervisor's steal is CPU taken as surely as another process's: in loopback runs on
        # a cloud VM it reached 0.9 of the 2 cores, and the server's req/s fell to half
        "disturbed": foreign + steal > cfg.disturbed_cores, "host_busy_cores": round(busy, 3),
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
    }


# -- syscall counting -----------------------------------------------------------
def start_syscall_probe(srv: Side, pids: list[int]):
    """perf (or strace) counting the server's syscalls, on the server's host."""
    tool = srv.syscall_tool
    if tool == "perf":
        argv = ["perf", "stat", "-I", "100", "-x,", "-e", "raw_syscalls:sys_enter",
                "-p", ",".join(map(str, pids))]
    elif tool == "strace":
        argv = ["strace", "-c", "-f", "-q"] + [a for p in pids for a in ("-p", str(p))]
    else:
        return None
    # not pinned: the probe must not steal the server's or the client's CPU slot
    side = Side(srv.name + "-probe", srv.address, None, srv.host, srv.local_proc, logdir=srv.logdir)
    return tool, side.start(argv, name="syscalls"), time.monotonic()


def stop_syscall_probe(probe) -> float | None:
    """Syscalls per second the server made while the probe ran."""
    tool, handle, started = probe
    handle.signal(signal.SIGINT)
    try:
        handle.wait(10)
    except TimeoutError:
        handle.stop()
    elapsed = time.monotonic() - started
    out, err = handle.logs()
    text = out + err
    if tool == "perf":
        total, last_ts = 0, 0.0
        for line in text.splitlines():
            parts = line.strip().split(",")
            if len(parts) > 3 and "raw_syscalls" in parts[3] and parts[1].strip().isdigit():
                total += int(parts[1])
                last_ts = float(parts[0])
        return total / last_ts if last_ts > 0 else None
    for line in text.splitlines():           # strace -c: "100.00 ... <calls> <errors> total"
        parts = line.split()
        if parts and parts[-1] == "total":
            nums = [p for p in parts[:-1] if p.isdigit()]
            if nums:
                return int(nums[0]) / elapsed
    return None


# -- a cell -------------------------------------------------------------------------
def out_of_range(engine: str, conns: int) -> str | None:
    """Why a cell cannot exist by the engine's own nature (not a failure of the run)."""
    if engine == "select" and conns > SELECT_LIMIT:
        return "select() watches at most FD_SETSIZE=1024 descriptors"
    return None


def summarize(cell: dict) -> None:
    # The runs others' load did not disturb, when they are at least half or as many as the repeats
    # asked for: on a machine that stayed busy, the one quiet run of one engine against all runs of
    # the next made its median 2x theirs (loopback run 20261202-125039: epoll-lt 1 of 7
    # undisturbed, 78,628 req/s, vs uvloop 39,874)
    runs = undisturbed(cell["runs"], lambda r: r.get("disturbed"), cell.get("repeats"))
    rps = [r["rps"] for r in runs]
    med = statistics.median(rps)
    mid = min(runs, key=lambda r: abs(r["rps"] - med))        # the run that represents the cell
    cell.update({
        "rps": round(med, 1), "rps_min": round(min(rps), 1), "rps_max": round(max(rps), 1),
        "spread_pct": round(100 * (max(rps) - min(rps)) / med, 1) if med else None,
        "runs_used": len(runs), "runs_disturbed": sum(1 for r in cell["runs"] if r.get("disturbed")),
        "p50_us": mid["lat_us"]["p50"], "p99_us": mid["lat_us"]["p99"], "p999_us": mid["lat_us"]["p999"],
        "cpu_us_per_req": round(statistics.median(r["cpu_us_per_req"] for r in runs), 2),
        "user_us_per_req": round(statistics.median(r.get("user_us_per_req", 0.0) for r in runs), 2),
        "ctxsw_per_req": round(statistics.median(r["ctxsw_vol_per_req"] + r["ctxsw_invol_per_req"]
                                                 for r in runs), 3),
        "client_util": round(max(r["client_util"] for r in runs), 3),
        "server_util": round(statistics.median(r["server_util"] for r in runs), 3),
        "errors": sum(r["errors"] + r["connect_errors"] for r in runs),
        "connected": min(r["connected"] for r in runs),
        "host_busy_cores": round(statistics.median(r.get("host_busy_cores", 0.0) for r in runs), 3),
    })
    for key in ("vm_cores", "host_others_cores"):
        if all(key in r for r in runs):
            cell[key] = round(statistics.median(r[key] for r in runs), 3)
    rss = cell["runs"][0]["rss_kib"]      # the first run is the one on a fresh server
    cell["rss_kib"] = rss
    cell["kib_per_conn"] = round(max(0, rss - cell["rss_idle_kib"]) / cell["conns"], 2)


def _settle(srv: Side, pid, limit: float = 5.0) -> None:
    """Wait until a server is idle again (an engine that fell behind may still be
    working off the previous run's connections); it must not eat the next run's CPU."""
    deadline = time.monotonic() + limit
    prev = procstat.sample(srv, pid, with_ctx=False)
    while prev is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        cur = procstat.sample(srv, pid, with_ctx=False)
        if cur is None or cur.cpu_s - prev.cpu_s < 0.02:
            return
        prev = cur


def cfg_duration(run: dict) -> str:
    return f"{run.get('window_s', 0):.1f}"


def _record(cell: dict, run: dict, conns: int, say) -> None:
    cell["runs"].append(run)
    note = (f" (others used {run['foreign_cores']:.2f} cores, the hypervisor stole {run['steal_cores']:.2f})"
            if run["disturbed"] else "")
    say(f"    {label(cell['engine'], cell.get('workers')):>9} run {len(cell['runs'])}: {run['rps']:,.0f} req/s "
        f"p99 {run['lat_us']['p99']:,.0f} µs server {run['server_util']:.0%} CPU "
        f"client {run['client_util']:.0%}{note}")
    if run["connected"] < 0.9 * conns or run["requests"] < conns:
        # The engine collapsed (could not accept the connections in time, or not
        # even serve each one once in the window): that is the result; repeating
        # it only burns minutes.
        cell["collapsed"] = (f"only {run['connected']}/{conns} connections were accepted in time"
                             if run["connected"] < 0.9 * conns else
                             f"{run['requests']} requests in {cfg_duration(run)} s for {conns} connections")
        say(f"    {label(cell['engine'], cell.get('workers')):>9} collapsed: {cell['collapsed']}")


def lineup(cfg: Config) -> list[tuple[str, int | None]]:
    """(engine, workers) of one group: each parallel engine once per --workers value."""
    return [(e, w) for e in cfg.engines
            for w in (cfg.workers if cfg.parallel.get(e) else [None])]


def new_cells(cfg: Config, conns: int, size: int, only: set[str] | None = None) -> dict[str, dict]:
    """The cells of one group by label (those of `only`, if given), in lineup order; those that
    cannot run here (the host lacks the engine, or the engine cannot take that many connections)
    are marked so already."""
    cells = {}
    for engine, workers in lineup(cfg):
        if only is not None and label(engine, workers) not in only:
            continue
        cell: dict = {"engine": engine, "workers": workers, "conns": conns, "size": size, "status": "ok", "runs": [],
                      "repeats": cfg.repeats}
        if cfg.unavailable.get(engine):
            cell.update(status="skipped", reason=cfg.unavailable[engine])
        elif out_of_range(engine, conns):
            cell.update(status="n/a", reason=out_of_range(engine, conns))
        cells[label(engine, workers)] = cell
    return cells


def rotated(names: list, r: int) -> list:
    """Round r's order: A, B, C, then B, C, A... (no engine always runs first or last)."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def round_order(names: list[str], r: int) -> list[str]:
    """Round r's run order: the engines a goal compares run back to back (GOAL_PEERS), so
    each round gives a ratio of two runs seconds apart, under the same load; the blocks
    rotate from round to round and run in reverse order every other round (A B, then B A),
    so neither engine of a pair always runs first."""
    blocks: list[list[str]] = []
    for n in names:
        if not any(n in b for b in blocks):
            blocks.append(goal_block(n, names))
    return [n for b in rotated(blocks, r) for n in (b[::-1] if r % 2 else b)]


def goal_block(name: str, names: list[str]) -> list[str]:
    """`name` and the engines of `names` a goal compares it with (GOAL_PEERS)."""
    return [m for m in next((p for p in GOAL_PEERS if name in p), (name,)) if m in names]


def wants_rerun(runs: list[dict], repeats: int) -> bool:
    """Some runs were disturbed (others' load, hypervisor steal) and fewer than `repeats` were not."""
    return sum(1 for x in runs if not x["disturbed"]) < repeats and any(x["disturbed"] for x in runs)


def rerun_order(cells: dict[str, dict], names: list[str], repeats: int, r: int) -> list[str]:
    """Extra round r's runs: the engines that want a rerun, each with its goal peers, in round
    r's order. A goal pairs runs by round, so an engine repeated alone adds no pair: when the
    hypervisor stole through all of uring's runs but not epoll-lt's, the goal was left with
    disturbed pairs only (the full loopback grid of 2026-12-03)."""
    again = {m for n in names if wants_rerun(cells[n]["runs"], repeats) for m in goal_block(n, names)}
    return [n for n in round_order(names, r) if n in again]


class ServerPool:
    """One fresh server per runnable cell of a group, each on its own port, all started
    at once; a context manager that stops them all (and notes a server that died)."""

    def __init__(self, cfg: Config, srv: Side, cli: Side, cells: dict[str, dict], say=print):
        self.cfg, self.srv, self.cli, self.cells, self.say = cfg, srv, cli, cells, say
        self.servers: dict[str, tuple] = {}          # label -> (handle, port, pids)

    def __enter__(self) -> ServerPool:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _start(self) -> None:
        srv = self.srv
        for i, (name, cell) in enumerate(self.cells.items()):
            if cell["status"] != "ok":
                continue
            port = self.cfg.port + i
            argv = [srv.python, "-m", "hpnlab.servers", cell["engine"], "--host", srv.bind_address,
                    "--port", str(port)] + (["--workers", str(cell["workers"])] if cell["workers"] else [])
            self.servers[name] = (srv.start(argv, name=cell["engine"]), port, [])
        for name, (handle, port, _pids) in list(self.servers.items()):   # all start at once; wait for each
            why = srv.wait_listening(handle, port)
            if why:
                self.cells[name].update(status="error", reason=why)
                handle.stop()
                del self.servers[name]
        time.sleep(0.3)
        for name, (handle, _port, pids) in self.servers.items():
            pids += procstat.family(srv, srv.server_pids(handle))     # pre-forked workers too
            idle = procstat.sample(srv, pids, with_ctx=False)
            self.cells[name]["rss_idle_kib"] = idle.rss_kib if idle else 0

    def _stop(self) -> None:
        alive = []
        for name, (handle, _port, _pids) in self.servers.items():
            cell = self.cells[name]
            _out, err, running = self.srv.output(handle)
            if cell["status"] == "ok" and not running:
                cell.update(status="error", reason="the server exited during the runs: "
                            + (err.strip().splitlines() or ["?"])[-1][:200])
            alive += [handle] if running else []
        self.srv.terminate(alive)          # all at once: they end meanwhile
        for name, (handle, _port, _pids) in self.servers.items():
            self.cells[name]["server_exit"] = handle.stop(timeout=10)

    def active(self) -> list[str]:
        """The servers still worth a run: none failed, none collapsed."""
        return [e for e in self.servers if self.cells[e]["status"] == "ok" and "collapsed" not in self.cells[e]]

    def run(self, name: str, duration: float, probe: bool = False) -> dict | None:
        """One timed run against server `name`; None (and the cell marked) if it failed."""
        _handle, port, pids = self.servers[name]
        cell = self.cells[name]
        settling = time.monotonic()
        # every server of the group, not only this one: one that ran before may still be working off
        # its connections (a threads server ending 1000 threads), which would be others' load here
        everyone = [p for _h, _port, ps in self.servers.values() for p in ps]
        _settle(self.srv, everyone)
        settled = round(time.monotonic() - settling, 2)
        if not probe:
            duration = max(duration, self.cfg.windows.get(name, 0.0))
        try:
            try:
                run = timed_run(self.cfg, self.srv, self.cli, pids, port, cell["conns"], cell["size"], duration,
                                probe)
                return run | {"phases_s": run["phases_s"] | {"settle": settled}} if "phases_s" in run else run
            except LateLook as late:
                # looks at this server are slow (a busy server of many threads on an emulated
                # guest): once more with a window that holds them, and the engine's later runs
                # (this group's and the next groups') start with it instead of failing first
                longer = max(2 * duration, 6 * late.look + 1)
                self.say(f"    {name:>9}: {late}; once more with a {longer:.0f} s window, and from now on")
                self.cfg.windows[name] = longer
                _settle(self.srv, everyone)
                return timed_run(self.cfg, self.srv, self.cli, pids, port, cell["conns"], cell["size"], longer,
                                 probe)
        except (RuntimeError, OSError, ValueError) as exc:
            cell.update(status="error", reason=str(exc).strip().splitlines()[0][:300])
            self.say(f"    {name:>9} error: {cell['reason']}")
            return None


def run_group(cfg: Config, conns: int, size: int, srv: Side, cli: Side, say=print,
              quiet: procstat.QuietWaiter | None = None, only: set[str] | None = None) -> list[dict]:
    """All engines at one (connections, size): a fresh server each, runs interleaved.

    Every engine's server is started up front (each on its own port) and the
    timed runs go round-robin - engine A, B, C, then A, B, C again - so slow
    changes in the machine's load hit all engines alike instead of whichever
    happened to run during them; that keeps the *ratios* between engines honest
    on a shared machine. The first run of each server is the one on a fresh
    process, so it is the one that gives memory per connection.
    """
    cells = new_cells(cfg, conns, size, only)
    quiet_info = (quiet or procstat.QuietWaiter(cfg.quiet_wait, cfg.quiet_threshold, say))()
    began = time.monotonic()
    with ServerPool(cfg, srv, cli, cells, say) as pool:
        quiet_info["servers_start_s"] = round(time.monotonic() - began, 1)   # all of the group's, at once
        for name in pool.servers:
            cells[name]["quiet"] = quiet_info
        for r in range(cfg.repeats):
            for name in round_order(pool.active(), r):
                run = pool.run(name, cfg.duration)
                if run is not None:
                    _record(cells[name], run | {"round": r}, conns, say)
        for extra in range(cfg.max_extra):      # repeat runs others' load disturbed
            for name in rerun_order(cells, pool.active(), cfg.repeats, extra):
                run = pool.run(name, cfg.duration)
                if run is not None:
                    _record(cells[name], run | {"round": cfg.repeats + extra}, conns, say)
        if cfg.syscalls and srv.syscall_tool:
            for name in pool.active():
                probe = pool.run(name, cfg.syscall_duration, probe=True)
                if probe is not None:
                    rate = probe["syscalls_per_s"]
                    cells[name]["syscalls_per_req"] = round(rate / probe["rps"], 3) \
                        if rate and probe["rps"] else None
                    cells[name]["syscall_tool"] = srv.syscall_tool
        stopping = time.monotonic()
    quiet_info["servers_stop_s"] = round(time.monotonic() - stopping, 1)
    quiet_info["group_s"] = round(time.monotonic() - began, 1)
    for cell in cells.values():
        if cell["runs"]:
            summarize(cell)
        if cell.get("collapsed") and cell["status"] == "ok":
            cell["note"] = cell["collapsed"]
    return list(cells.values())


def run_grid(cfg: Config, srv: Side, cli: Side, say=print, checkpoint=None) -> list[dict]:
    """All groups; `checkpoint(cells)` after each, so a long run that dies keeps its data."""
    cells: list[dict] = []
    groups = cfg.groups()
    quiet = procstat.QuietWaiter(cfg.quiet_wait, cfg.quiet_threshold, say, steal_probe(srv))
    for n, (size, conns) in enumerate(groups, 1):
        say(f"[{n}/{len(groups)}] conns={conns} size={size}: {', '.join(cfg.engines)}")
        for cell in run_group(cfg, conns, size, srv, cli, say, quiet):
            if cell["status"] != "ok":
                say(f"    {label(cell['engine'], cell.get('workers')):>9} {cell['status']}: {cell.get('reason')}")
            cells.append(cell)
        if checkpoint:
            checkpoint(cells)
    if cfg.recheck and recheck_goals(cfg, cells, srv, cli, say) and checkpoint:
        checkpoint(cells)
    return cells


def steal_probe(srv: Side):
    """How the quiet waits read the hypervisor's steal: with a ping-pong between this machine's CPUs
    where the server runs on them (procstat.steal_in_pingpong), else idle (a look at /proc/stat)."""
    return procstat.steal_in_pingpong if srv.local_proc or srv.vm_pid is not None else procstat.busy_fraction


def recheck_goals(cfg: Config, cells: list[dict], srv: Side, cli: Side, say=print) -> int:
    """Measure the engines of every goal whose paired rounds were mostly disturbed (unsettled) once
    more, at the end of the grid and after a wait for a quiet machine; the new rounds join the old,
    numbered after them (a cell's `rechecked_from`). Returns the groups measured again.

    Back-to-back repeats inside a group cannot get past steal that lasts minutes (the 64 B half of
    the 2026-12-03 loopback grid: 235 of its 300 runs stolen from, and a uring goal FAILed on
    rounds all of which were); the end of the grid is later. Where the server runs on this machine
    the wait probes steal with a ping-pong between two CPUs, since steal here comes with wake-ups:
    an idle machine reads 0 % (the quiet wait before each group did, there) and so do spinners.
    Disturbance alone triggers it, never the verdict, and once."""
    todo: dict[tuple[int, int], set[str]] = {}
    for row in unsettled(goals(cells)):
        todo.setdefault(tuple(row["at"]), set()).update(label(e, w) for e, w in row["pair"])
    if not todo:
        return 0
    # half the cores a run may lose: a 1 s probe is the calm start of a longer run, not all of it
    quiet = procstat.QuietWaiter(cfg.recheck_wait, cfg.disturbed_cores / 2 / (os.cpu_count() or 1), say,
                                 steal_probe(srv))
    again = replace(cfg, syscalls=False)                   # counted already; cfg.windows stays shared
    for n, ((conns, size), names) in enumerate(sorted(todo.items()), 1):
        say(f"[recheck {n}/{len(todo)}] conns={conns} size={size}: {', '.join(sorted(names))} "
            "(most rounds of a goal of theirs were disturbed)")
        group = {label(c["engine"], c.get("workers")): c for c in cells if (c["conns"], c["size"]) == (conns, size)}
        after = 1 + max((r["round"] for c in group.values() for r in c["runs"]), default=-1)
        for fresh in run_group(again, conns, size, srv, cli, say, quiet, only=names):
            cell = group[label(fresh["engine"], fresh.get("workers"))]
            if fresh["status"] != "ok":
                cell.update(status=fresh["status"], reason=f"in the end-of-grid recheck: {fresh.get('reason')}")
                say(f"    {label(cell['engine'], cell.get('workers')):>9} {cell['status']}: {cell['reason']}")
                continue
            cell["runs"] += [run | {"round": run["round"] + after} for run in fresh["runs"]]
            cell.update(rechecked_from=after, recheck_quiet=fresh["quiet"])
            summarize(cell)
    return len(todo)


# -- a whole benchmark: sides, grid, report -------------------------------------------
SYSCTLS = ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.core.rmem_max", "net.core.wmem_max",
           "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse",
           "kernel.io_uring_disabled", "fs.nr_open"]


class _LocalRunner:
    """Just enough of a Host for report.fingerprint() to read this machine's sysctls."""

    def run(self, argv, timeout=10, check=True):
        import subprocess
        from types import SimpleNamespace
        p = subprocess.run(list(argv), capture_output=True, check=False, text=True, timeout=timeout)
        return SimpleNamespace(stdout=p.stdout, rc=p.returncode)


def lab_sides_problem(lab, server: str, client: str, network: str) -> str | None:
    """Why the lab cannot hold a server on `server` and its load on `client` over
    `network` (None: it can)."""
    if network not in lab.networks:
        return f"--network {network}: lab {lab.name} has no such network (networks: {', '.join(sorted(lab.networks))})"
    members = lab.networks[network].members
    for role, name in (("server", server), ("client", client)):
        if name not in lab.hosts:
            return f"--{role}-host {name}: lab {lab.name} has no such host (hosts: {', '.join(sorted(lab.hosts))})"
        if name not in members:
            return f"--{role}-host {name} has no NIC on network {network} (its members: {', '.join(members)})"
    if server == client:
        return f"--server-host and --client-host are both {server}: the load generator needs a host of its own"
    return None


def sides_for(mode: str, provider=None, server: str = "h1", client: str = "h2",
              network: str = "data") -> tuple[Side, Side, dict]:
    """(server side, client side, hosts for the fingerprint)."""
    import os
    if mode == "loopback":
        pin = (os.cpu_count() or 1) >= 2
        return (Side("server", "127.0.0.1", 0 if pin else None),
                Side("client", "127.0.0.1", 1 if pin else None), {"local": _LocalRunner()})
    h_srv, h_cli = provider.host(server), provider.host(client)
    addr = str(h_srv.address(network))
    same_machine = provider.shares_kernel        # the hosts share this machine's CPUs and /proc
    pin = same_machine and (os.cpu_count() or 1) >= 2
    srv = Side(server, addr, 0 if pin else None, h_srv, local_proc=same_machine)
    cli = Side(client, str(h_cli.address(network)), 1 if pin else None, h_cli, local_proc=same_machine)
    srv.vm_pid, cli.vm_pid = local_vm(provider, server), local_vm(provider, client)
    return srv, cli, {server: h_srv, client: h_cli}


def local_vm(provider, host: str) -> int | None:
    """The pid of the QEMU process that runs `host` on this machine (a vagrant lab's VM), else None."""
    if not hasattr(provider, "domain"):
        return None
    from ..vm import virt
    domain = provider.domain(host)
    return next((pid for pid, name in virt.qemu_processes(domain).items() if name == domain), None)


def prepare(cfg: Config, srv: Side, cli: Side, say=print) -> tuple[dict, str | None]:
    """Ask each side's host what it can run (hpnlab.bench.probe there); fill in `cfg`
    and the sides. Returns (the server's answer, why no cell can run or None)."""
    try:
        answer = srv.probe(cfg.engines)
        client = cli.probe([])
    except (RuntimeError, OSError, ValueError) as exc:
        return {}, str(exc)
    where = f"on {srv.host.name}" if srv.host else "here"
    cfg.unavailable = {e: f"{where}: {why}" for e, why in answer["engines"].items() if why}
    cfg.parallel = {e: True for e in answer.get("parallel", [])}
    cfg.workers = cfg.workers or [answer["cpus"]]
    if answer.get("emulated") and cfg.emulated_grid:
        cut_for_emulated(cfg)
        say(f"  {cfg.grid_note}")
    srv.syscall_tool = answer.get("syscall_tool")
    for engine, why in cfg.unavailable.items():
        say(f"  {engine} cannot run {why}")
    if "error" in client["loadgen"]:
        return answer, f"the client {'on ' + cli.host.name if cli.host else 'here'}: {client['loadgen']['error']}"
    cli.loadgen = client["loadgen"]["path"]
    return answer, None


def cut_for_emulated(cfg: Config) -> None:
    """Set the knobs of cfg.emulated_grid (the server's CPU is emulated) and say so in cfg.grid_note."""
    for knob, value in cfg.emulated_grid.items():
        setattr(cfg, knob, value)
    said = [f"{k} {v}" for k, v in cfg.emulated_grid.items() if k != "syscalls"]
    cfg.grid_note = (f"the server host's CPU is emulated (QEMU TCG), so the grid was set to {', '.join(said)} "
                     f"({cfg.emulated_why})")
    if not cfg.syscalls:
        cfg.grid_note += "; syscalls were not counted (that is one more run per cell)"


def failed_cells(cfg: Config, reason: str) -> list[dict]:
    """Every cell of the grid, failed for one reason (nothing could run)."""
    return [{"engine": e, "workers": w, "conns": c, "size": s, "status": "error", "reason": reason, "runs": []}
            for s, c in cfg.groups() for e, w in lineup(cfg)]


def benchmark(cfg: Config, mode: str, provider=None, argv: list[str] | None = None,
              results_root=None, say=print, make_target: str | None = None) -> dict:
    """Run the grid and write results/bench/<stamp>/ (also when cells failed: a partial
    report); returns {"dir", "cells", "goals", "failed": the cells asked for that did not run}."""
    import resource

    from ..report import fingerprint, rerun_command, results_dir

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:       # 10k connections: children inherit the raised limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srv, cli, hosts = sides_for(mode, provider, cfg.server_host, cfg.client_host, cfg.network)
    say(f"server on {srv.describe()}; client on {cli.describe()}")
    started = time.time()
    out = results_dir("bench", results_root)
    partial = out / "data.partial.json"
    say(f"results: {out}")

    done: list[dict] = []          # the cells of the groups that finished

    def checkpoint(cells: list[dict]) -> None:
        done[:] = cells
        partial.write_text(json.dumps({"config": cfg.__dict__, "cells": cells}, indent=1, default=str))

    server: dict = {}
    try:
        server, fatal = prepare(cfg, srv, cli, say)
        if fatal:
            say(f"nothing can run: {fatal}")
        cells = failed_cells(cfg, fatal) if fatal else run_grid(cfg, srv, cli, say, checkpoint)
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM (`timeout` ending a long run): the servers were stopped on the way
        # out; the groups that finished are written up, the rest are failed cells that say why
        say("interrupted: writing the report of the groups that finished")
        ran = {(c["size"], c["conns"]) for c in done}
        cells = done + [c for c in failed_cells(cfg, "not run: the bench was interrupted (Ctrl-C or SIGTERM)")
                        if (c["size"], c["conns"]) not in ran]
    finally:
        for side in (srv, cli):
            side.cleanup()
    env = fingerprint(provider, SYSCTLS, hosts=hosts)
    env["provider"] = provider.name if provider is not None else "none (loopback mode)"
    if provider is None:
        env["lab"] = "none"
    env["mode"] = mode
    env["versions"] = server.get("versions", {})
    env["server_python"] = server.get("python")
    env["server_cpus"] = server.get("cpus")
    env["server_emulated"] = server.get("emulated")
    env["server_pinned_cpu"] = srv.cpu
    env["server_host"] = srv.host.name if srv.host else "this machine"
    env["syscall_tool"] = srv.syscall_tool
    env["nofile_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    data = {"config": cfg.__dict__, "mode": mode, "cells": cells, "environment": env,
            "command": rerun_command(argv), "argv": list(argv or []), "make_target": make_target,
            "server_side": srv.describe(), "client_side": cli.describe(),
            "took_s": round(time.time() - started)}
    render(out, data)
    partial.unlink(missing_ok=True)
    return {"dir": out, "cells": cells, "goals": data["goals"], "failed": failures(cells)}


def server_md(env: dict) -> str:
    """The server's CPUs as the engines saw them: how many, emulated or not, pinned or not."""
    machine = (env.get("machine") or {}).get("cpus", "?")
    text = f"- server: {env.get('server_host', '?')}, {env.get('server_cpus', '?')} CPU(s)"
    if env.get("server_emulated"):
        text += (f", emulated by QEMU TCG (each vCPU a thread on this machine's {machine} cores, which also run "
                 "the client's vCPUs and everything else here): a guest instruction costs many host ones")
    if env.get("server_pinned_cpu") is not None:
        text += f", pinned to CPU{env['server_pinned_cpu']} of this machine's {machine}"
    return text + "\n"


def software_md(env: dict) -> str:
    v = env.get("versions", {})
    return server_md(env) + ("- software: " + ", ".join(f"{k} {val}" for k, val in v.items() if val)
            + f"; syscalls counted with {env.get('syscall_tool') or '-'}; "
            f"descriptor limit {env.get('nofile_limit', '?')}; mode {env.get('mode', '?')}\n")


def render(out, data: dict) -> None:
    """Write report.md, data.json, data.csv and the plots of a run from its data
    (also used to re-render an earlier run: `hpnlab bench --render DIR`)."""
    from ..report import environment_md, rerun_md, write_report
    from . import writeup

    cfg, cells, env = data["config"], data["cells"], data["environment"]
    writeup.derive(cells)
    data["goals"] = goal_rows = writeup.goals(cells)
    pngs = writeup.plots(cells, out) + writeup.scaling_plot(cells, out)
    writeup.write_csv(cells, out / "data.csv")
    sizes = sorted({c["size"] for c in cells})
    text = ["# I/O models: threads, select/poll, epoll LT/ET, coroutines, io_uring", "",
            "Course §2.1–2.5, phase 1: *how do multi-threaded epoll, coroutine epoll and asynchronous "
            "I/O (io_uring) differ in throughput, latency, CPU and memory?*", "",
            f"- mode: **{data['mode']}** — server on {data.get('server_side', '?')}, client (hpnlab-loadgen, "
            f"C epoll) on {data.get('client_side', '?')}",
            f"- grid: engines {', '.join(cfg['engines'])}; connections {cfg['conns']}; message sizes "
            f"{cfg['sizes']} B; pipeline depth {cfg['depth']}",
            f"- per (connections, size): a fresh server per engine; {cfg['repeats']} timed run(s) each of "
            f"{cfg['duration']:g} s after {cfg['warmup']:g} s warm-up, engines interleaved round-robin; runs "
            f"that others' load disturbed are repeated (up to {cfg['max_extra']} extra), with the engines a goal "
            "pairs them with; "
            + (f"a goal most of whose rounds were still disturbed is measured again at the end of the grid, "
               f"after waiting up to {cfg['recheck_wait']:g} s for a quiet machine; " if cfg.get("recheck") else "")
            + (f"syscalls counted by {env.get('syscall_tool') or 'nothing (no perf/strace)'} in a separate "
               f"{cfg['syscall_duration']:g} s run" if cfg.get("syscalls", True) else "syscalls not counted"),
            *([f"- grid cut: {cfg['grid_note']}"] if cfg.get("grid_note") else []),
            f"- took {data.get('took_s', '?')} s", "",
            writeup.goals_md(goal_rows), ""]
    text[2:2] = [writeup.failure_banner(cells), ""] if failures(cells) else []
    for size in sizes:
        text += [f"## Results — {size} B messages", "",
                 "req/s is the median of the runs, with [min–max] and spread = (max−min)/median; latency "
                 "is from the median run; req/CPU-s = requests per second of server CPU time (what one "
                 "fully available core would sustain: the engine's own cost, robust to others' load); "
                 "KiB/conn = (RSS under load − idle RSS) / connections; CPU server/client is the share of "
                 "one core each used.", "",
                 writeup.results_table(cells, size), ""]
    text += [f"![{p}]({p})" for p in pngs] + [""]
    text += [writeup.reading(cells, env | {'mode': data['mode']}), writeup.load_md(cells, cfg.get('duration')),
             writeup.skipped_md(cells), "",
             environment_md(env) + software_md(env), "",
             rerun_md(data.get("argv") or shlex.split(data.get("command", "hpnlab bench")),
                      make_target=data.get("make_target"))]
    write_report(out, "\n".join(text), data)
