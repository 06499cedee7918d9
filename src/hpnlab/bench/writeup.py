"""The I/O-models report: tables, goal ratios, plots and a reading of the numbers.

Everything written here is computed from the cells of the run; the prose
explains mechanisms and quotes the measured values, so a run on another
machine gets its own reading.
"""
from __future__ import annotations

import csv
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..report import md_table

REFERENCES = ("asyncio", "uvloop")       # the peers; every other engine is hpnlab's own
# engines the goals compare, run back to back in every round (iomodels.round_order)
GOAL_PEERS = (("epoll-lt", "uring", "uvloop"), ("coro", "greenlet"))
MULTI = ("epoll-threads", "epoll-acceptor", "epoll-procs")   # the multi-threaded epoll variants
CLIENT_BOUND = 0.9    # a load generator busier than this share of its core set the req/s, not the server
CSV_FIELDS = ["engine", "workers", "conns", "size", "status", "reason", "rps", "rps_min", "rps_max", "spread_pct",
              "runs_used", "runs_disturbed", "cpu_capacity_rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_req",
              "user_us_per_req",
              "syscalls_per_req", "ctxsw_per_req", "rss_idle_kib", "rss_kib", "kib_per_conn",
              "server_util", "client_util", "errors", "connected"]


def ok(cells: list[dict]) -> list[dict]:
    return [c for c in cells if c.get("rps") is not None and c["status"] == "ok"]


def label(engine: str, workers: int | None) -> str:
    """An engine with its --workers (parallel engines run once per value)."""
    return engine if workers is None else f"{engine}×{workers}"


def name(c: dict) -> str:
    return label(c["engine"], c.get("workers"))


def find(cells: list[dict], engine: str, conns: int, size: int, workers: int | None = None) -> dict | None:
    """The cell of an engine; for a parallel engine the one with `workers`, or the most workers."""
    hits = [c for c in ok(cells) if c["engine"] == engine and c["conns"] == conns and c["size"] == size
            and (workers is None or c.get("workers") == workers)]
    return max(hits, key=lambda c: c.get("workers") or 0) if hits else None


def failures(cells: list[dict]) -> list[dict]:
    """Cells that were asked for and did not run (n/a: outside the engine's nature, e.g. select past 1024)."""
    return [c for c in cells if c["status"] in ("skipped", "error")]


def failure_banner(cells: list[dict]) -> str:
    bad = failures(cells)
    by_reason: dict[tuple, list[str]] = {}
    for c in bad:
        by_reason.setdefault((name(c), c["status"], c.get("reason") or "?"), []).append(f"{c['conns']}/{c['size']}B")
    lines = [f"**INCOMPLETE RUN: {len(bad)} of {len(cells)} requested cells did not run, so `hpnlab bench` "
             "exited non-zero. The numbers below are the part that ran.**", ""]
    lines += [f"- **{engine} {status}** ({', '.join(where)}): **{reason}**"
              for (engine, status, reason), where in by_reason.items()]
    return "\n".join(lines)


def derive(cells: list[dict]) -> None:
    """Numbers computed from the measured ones (also for runs rendered again later)."""
    for c in cells:
        if c.get("cpu_us_per_req"):
            c["cpu_capacity_rps"] = round(1e6 / c["cpu_us_per_req"], 1)


def write_csv(cells: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for c in cells:
            w.writerow(c)


# -- plots ---------------------------------------------------------------------------
PLOTS = [
    ("throughput.png", "rps", "requests/s", "Throughput vs connections", False),
    ("latency.png", "p99_us", "p99 latency (µs)", "p99 latency vs connections", True),
    ("kib_per_conn.png", "kib_per_conn", "server KiB per connection", "Memory per connection", True),
    ("cpu_per_req.png", "cpu_us_per_req", "server CPU µs per request", "CPU cost per request", True),
]


def plots(cells: list[dict], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = ok(cells)
    sizes = sorted({c["size"] for c in good})
    engines = [e for e in dict.fromkeys(name(c) for c in cells) if any(name(c) == e for c in good)]
    if not sizes:
        return []
    written = []
    for fname, key, ylabel, title, logy in PLOTS:
        fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.6), squeeze=False)
        for ax, size in zip(axes[0], sizes):
            for i, engine in enumerate(engines):
                pts = sorted((c["conns"], c[key], c) for c in good
                             if name(c) == engine and c["size"] == size and c.get(key) is not None)
                if not pts:
                    continue
                xs, ys = [p[0] for p in pts], [max(p[1], 1e-3) for p in pts]
                style = "--" if engine in REFERENCES else "-"
                marker = "os^vD<>pP*X"[i % 11]
                if key == "rps":
                    # a cell that collapsed to 0 req/s is drawn at 1e-3: its bar must not go negative
                    lo = [max(0.0, y - p[2]["rps_min"]) for y, p in zip(ys, pts)]
                    hi = [max(0.0, p[2]["rps_max"] - y) for y, p in zip(ys, pts)]
                    ax.errorbar(xs, ys, yerr=[lo, hi], label=engine, linestyle=style, marker=marker,
                                capsize=3, markersize=4)
                else:
                    ax.plot(xs, ys, label=engine, linestyle=style, marker=marker, markersize=4)
            ax.set_xscale("log")
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel("concurrent connections")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title} — {size} B messages")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(fname)
    return written


# -- goals ---------------------------------------------------------------------------
def undisturbed(items: list, disturbed: Callable[[Any], bool], enough: int | None = None) -> list:
    """The items nothing disturbed, when they are at least half (or at least `enough`: the runs a
    cell was asked for), else all: on a machine that stayed busy, one engine's one quiet run
    against all of the next's busy runs misleads."""
    clean = [x for x in items if not disturbed(x)]
    return clean if 2 * len(clean) >= len(items) or (enough and len(clean) >= enough) else items


def paired_rounds(a: dict, b: dict, key: str = "rps") -> list[tuple[float, bool, int]]:
    """(a's req/s (or other `key`) over b's, whether either run was disturbed, the round), one per
    round in which both ran (their runs back to back in that round, so under much the same load
    from others). Only the rounds in which neither run was disturbed, when they are at least half
    or as many as the rounds asked for (as a cell's median does)."""
    b_by_round = {r["round"]: r for r in b.get("runs", []) if "round" in r and r.get(key)}
    pairs = [(x[key] / b_by_round[x["round"]][key],
              bool(x.get("disturbed") or b_by_round[x["round"]].get("disturbed")), x["round"])
             for x in a.get("runs", []) if x.get("round") in b_by_round and x.get(key)]
    asked = [c["repeats"] for c in (a, b) if c.get("repeats")]
    return undisturbed(pairs, lambda p: p[1], min(asked) if len(asked) == 2 else None)


def paired_ratios(a: dict, b: dict, key: str = "rps") -> list[float]:
    """paired_rounds' ratios alone."""
    return [ratio for ratio, _disturbed, _round in paired_rounds(a, b, key)]


def _spread_words(ahead: int, rounds: int) -> str:
    """Whether `ahead` of `rounds` paired ratios >= 1 is a difference beyond the run-to-run spread."""
    if ahead in (0, rounds):
        return f"beyond the spread: all {rounds} rounds {'≥' if ahead else '<'} 1"
    return f"inside the spread: {ahead} of {rounds} rounds ≥ 1"


def _rps_spread(c: dict) -> str:
    """A cell's median req/s, with its runs' spread when it had several."""
    spread = c.get("spread_pct") if (c.get("runs_used") or 1) > 1 else None
    return f"{c['rps']:,.0f}" + (f" (spread {spread:.0f}%)" if spread is not None else "")


def _faster(goal: str, a: dict | None, b: dict | None) -> dict:
    """Goal row "a reaches at least b's req/s" - measured, and per server CPU-second.

    With two or more rounds in which both ran, the verdict is the median of the per-round
    ratios, and the row says whether the difference is beyond the run-to-run spread (every
    round on the same side of 1) or inside it (rounds on both sides): on a shared machine a
    ratio of medians taken minutes apart mostly measures how others' load moved meanwhile.
    The cost per request (server CPU µs) is paired by round the same way."""
    r = a["rps"] / b["rps"] if a and b and b.get("rps") else None
    cap = a["cpu_capacity_rps"] / b["cpu_capacity_rps"] \
        if a and b and a.get("cpu_capacity_rps") and b.get("cpu_capacity_rps") else None
    row = {"goal": goal, "measured": f"{_rps_spread(a)} / {_rps_spread(b)}" if a and b else "n/a",
           "ratio": r, "pass": None if r is None else r >= 1.0,
           "cpu_ratio": cap, "cpu_pass": None if cap is None else cap >= 1.0}
    if a and b:
        row["pair"] = [[c["engine"], c.get("workers")] for c in (a, b)]
    rounds = paired_rounds(a, b) if a and b else []
    pairs = sorted(ratio for ratio, _disturbed, _round in rounds)
    if len(pairs) >= 2 and a and b:
        mid = statistics.median(pairs)
        wins = sum(1 for x in pairs if x >= 1.0)
        rechecked = max(a.get("rechecked_from", float("inf")), b.get("rechecked_from", float("inf")))
        row.update(paired=mid, paired_min=pairs[0], paired_max=pairs[-1], rounds=len(pairs),
                   disturbed_rounds=sum(1 for _, disturbed, _r in rounds if disturbed),
                   rechecked_rounds=sum(1 for _, _d, r in rounds if r >= rechecked),
                   beyond_spread=wins in (0, len(pairs)), spread=_spread_words(wins, len(pairs)))
        row["pass"] = mid >= 1.0
    costs = sorted(paired_ratios(b, a, "cpu_us_per_req")) if a and b else []   # b's cost / a's
    if len(costs) >= 2:
        cpu_mid, cheaper = statistics.median(costs), sum(1 for x in costs if x >= 1.0)
        row.update(cpu_ratio=cpu_mid, cpu_min=costs[0], cpu_max=costs[-1], cpu_pass=cpu_mid >= 1.0,
                   cpu_beyond_spread=cheaper in (0, len(costs)), cpu_spread=_spread_words(cheaper, len(costs)))
    return row


def _lean(goal: str, c: dict | None, limit: float) -> dict:
    """Goal row "c uses at most `limit` KiB per connection"."""
    return {"goal": goal, "measured": f"{c['kib_per_conn']:.2f} KiB/conn" if c else "n/a",
            "ratio": c["kib_per_conn"] if c else None, "pass": None if c is None else c["kib_per_conn"] <= limit}


OURS = "any hpnlab engine"      # what a goal about the best of them needs asked for


def goals(cells: list[dict]) -> list[dict]:
    """The issue's performance goals, evaluated on this run's cells, per message size; a goal
    at a (connections, size) the run's grid did not hold, or about an engine the run was not
    asked for (`--engines`), is left out (NOT_IN_GRID). One whose engine was asked for and did
    not run stays, as n/a."""
    grid = {(c["conns"], c["size"]) for c in cells}
    asked = {c["engine"] for c in cells}
    if asked - set(REFERENCES):
        asked.add(OURS)
    rows: list[tuple[dict, set[str]]] = []
    for size in sorted({c["size"] for c in ok(cells)}):
        uv = find(cells, "uvloop", 100, size)
        ours = [c for c in ok(cells) if c["engine"] not in REFERENCES and c["conns"] == 100 and c["size"] == size]
        best = beside_uvloop(ours)
        row = _faster(f"best hpnlab engine ≥ uvloop req/s @100 conns, {size} B", best, uv)
        if best and uv:
            fastest = max(ours, key=lambda c: c["rps"])
            row["measured"] = f"{name(best)} {row['measured']} (uvloop)" + (
                f"; {name(fastest)}'s median was higher, {fastest['rps']:,.0f}, but it did not run beside uvloop"
                if fastest is not best else "")
        rows.append((row, {"uvloop", OURS}))
        for conns in (100, 10000):
            rows.append((_faster(f"coro ≥ greenlet req/s @{conns} conns, {size} B",
                                 find(cells, "coro", conns, size), find(cells, "greenlet", conns, size)),
                         {"coro", "greenlet"}))
        rows.append((_lean(f"coro ≤ 1 KiB/conn @10000 conns, {size} B", find(cells, "coro", 10000, size), 1.0),
                     {"coro"}))
        for conns in (100, 1000):
            rows.append((_faster(f"uring ≥ epoll-lt req/s @{conns} conns, {size} B",
                                 find(cells, "uring", conns, size), find(cells, "epoll-lt", conns, size)),
                         {"uring", "epoll-lt"}))
        ur = find(cells, "uring", 1000, size) or find(cells, "uring", 10000, size)
        rows.append((_lean(f"uring ≤ 8 KiB/conn @{ur['conns'] if ur else 1000} conns, {size} B", ur, 8.0),
                     {"uring"}))
    for row, _engines in rows:
        row["at"] = _at(row["goal"])
    return [r for r, engines in rows if r["at"] in grid and engines <= asked]


def unsettled(rows: list[dict]) -> list[dict]:
    """The goals whose paired rounds were mostly disturbed (they were then all kept): the machine's
    load, more than the engines, set their ratio."""
    return [g for g in rows if 2 * g.get("disturbed_rounds", 0) > g.get("rounds", 0)]


def beside_uvloop(ours: list[dict]) -> dict | None:
    """The fastest (by median req/s) of hpnlab's engines `ours` that ran back to back with uvloop
    in every round (its GOAL_PEERS block), else of all of them: a paired ratio of two runs a
    minute apart is not one. In the loopback grid of 2026-12-03 epoll-threads×2 had the highest
    median at 100 x 64 B (118,572 against uvloop's 107,593) and a "paired" 0.99 of runs that
    were not neighbours. Any engine of ours that reaches uvloop is enough for the goal: the best
    one reaches at least as far."""
    beside = [c for c in ours if any("uvloop" in p and c["engine"] in p for p in GOAL_PEERS)] or ours
    return max(beside, key=lambda c: c["rps"]) if beside else None


NOT_IN_GRID = ("Goals at a connection count or message size this run's grid did not hold, or about an engine "
               "it did not run (`--engines`), are left out.")


def _at(goal: str) -> tuple[int, int]:
    """(connections, size) a goal's name is about: '... @1000 conns, 64 B'."""
    m = re.search(r"@(\d+) conns, (\d+) B", goal)
    assert m, goal
    return int(m[1]), int(m[2])


# -- the reading ---------------------------------------------------------------------
def _fmt(c: dict | None, key: str = "rps", unit: str = " req/s") -> str:
    if c is None or c.get(key) is None:
        return "n/a"
    v = c[key]
    return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:.2f}{unit}"


def _ranking(cells: list[dict], conns: int, size: int) -> list[str]:
    """Every engine at one (connections, size), fastest first, with what it cost."""
    here = sorted((c for c in ok(cells) if c["conns"] == conns and c["size"] == size),
                  key=lambda c: -c["rps"])
    if len(here) < 2:
        return []
    fast, slow = here[0], here[-1]
    cheap = min(here, key=lambda c: c["cpu_us_per_req"])
    ours = [c for c in here if c["engine"] not in REFERENCES]
    refs = [c for c in here if c["engine"] in REFERENCES]
    out = [f"### All engines at {conns} connections", "",
           "Fastest first: " + "; ".join(f"{name(c)} {_fmt(c)} ({_fmt(c, 'cpu_us_per_req', ' µs')} CPU/req, "
                                         f"{_fmt(c, 'ctxsw_per_req', '')} ctxsw/req)" for c in here) + ".", "",
           f"{name(fast)} served {fast['rps'] / slow['rps']:.1f}× the requests of {name(slow)}; the cheapest per "
           f"request was {name(cheap)} at {_fmt(cheap, 'cpu_us_per_req', ' µs')} of server CPU."]
    if ours and refs:
        best, ref = beside_uvloop(ours) or ours[0], refs[0]
        pairs = sorted(paired_ratios(best, ref))
        if len(pairs) >= 2:       # as the goals decide it: round by round, of neighbours (see _faster)
            ahead = sum(1 for x in pairs if x >= 1.0)
            mid = statistics.median(pairs)
            who = "The best hpnlab engine" + (" run back to back with the peers" if best is not ours[0] else "")
            out[-1] += (f" {who}, {name(best)}, was {'ahead of' if mid >= 1.0 else 'behind'} "
                        f"the best reference peer {name(ref)} by the median of the rounds' ratios "
                        f"({mid:.2f}× [{pairs[0]:.2f}–{pairs[-1]:.2f}]; {_spread_words(ahead, len(pairs))}; "
                        f"the ratio of the medians: {best['rps'] / ref['rps']:.2f}×).")
        else:
            best = ours[0]
            verdict = "ahead of" if best["rps"] >= ref["rps"] else "behind"
            out[-1] += (f" The best hpnlab engine, {name(best)}, was {verdict} the best reference peer "
                        f"{name(ref)} ({best['rps'] / ref['rps']:.2f}×).")
    return out + [""]


def _cores(cells: list[dict], env: dict) -> list[str]:
    """How many cores the server had: what the parallel engines could possibly gain."""
    cpus, machine = env.get("server_cpus"), (env.get("machine") or {}).get("cpus")
    par = [c for c in ok(cells) if c.get("workers")]
    most = max(par, key=lambda c: c.get("server_util") or 0) if par else None
    used = (f" The most any server used was {most['server_util']:.2f} cores ({name(most)} at "
            f"{most['conns']} connections)." if most else "")
    if pinned(env):
        how = ("loopback mode pins" if env.get("mode") == "loopback" else
               f"the lab's hosts share this machine's kernel and CPUs (provider {env.get('provider', '?')}), "
               "and the bench pins")
        text = (f"This machine has {machine} cores and {how} the server to CPU0 and the load "
                "generator to CPU1" if (machine or 0) >= 2 else
                f"This machine has {machine} core(s): server and load generator share it")
        text += (", so **the server has one core**: threads or processes of a parallel engine can only take "
                 "turns on it, and what their numbers show is the cost of parallelism, not its gain (the "
                 "kernel's loopback softirq work also lands on those two cores)." + used)
    else:
        text = (f"The server host ({env.get('server_host', 'h1')}) has {cpus} CPU(s)"
                + (", so a parallel engine has one core to take turns on." if cpus == 1 else
                   f"; parallel engines ran with up to {max((c['workers'] for c in par), default=cpus)} "
                   "threads/processes.") + used)
    return ["### Cores available to the server", "", text, ""]


def pinned(env: dict) -> bool:
    """Was the server pinned to one CPU of this machine (loopback; lab hosts that share its CPUs)?"""
    return env.get("mode") == "loopback" or env.get("server_pinned_cpu") is not None


def one_core(env: dict) -> bool:
    """Did the server have a single core (pinned to CPU0, or a 1-vCPU server host)?"""
    return pinned(env) or env.get("server_cpus") == 1


def _multi(cells: list[dict], conns: int, size: int, env: dict) -> list[str]:
    """The multi-threaded epoll variants against single-threaded epoll, from CPU and switches."""
    lt = find(cells, "epoll-lt", conns, size)
    rows = [c for c in (find(cells, e, conns, size) for e in MULTI) if c]
    if not rows or not lt:
        return []

    def vs(c: dict) -> str:
        more_cpu = c['cpu_us_per_req'] / lt['cpu_us_per_req'] - 1
        return (f"{name(c)} {_fmt(c)} = {c['rps'] / lt['rps']:.2f}× epoll-lt, on {c['server_util']:.2f} cores, "
                f"{_fmt(c, 'cpu_us_per_req', ' µs')} CPU/request ({more_cpu:+.0%}), "
                f"{_fmt(c, 'ctxsw_per_req', '')} context switches/request")
    out = ["### Multi-threaded epoll: threads vs processes in CPython (多线程 epoll, 多个 EPOLL)", "",
           f"At {conns} connections, epoll-lt (one thread) {_fmt(lt)} on {lt['server_util']:.2f} cores, "
           f"{_fmt(lt, 'cpu_us_per_req', ' µs')} CPU/request, {_fmt(lt, 'ctxsw_per_req', '')} context "
           "switches/request; " + "; ".join(vs(c) for c in rows) + ".", ""]
    if all(c.get("workers") == 1 for c in rows):
        # one worker each: nothing ran in parallel, so there is no gain or GIL contention to read
        costs = [f"{name(c)} {c['cpu_us_per_req'] / lt['cpu_us_per_req'] - 1:+.0%}" for c in rows]
        return out + [f"With one worker each (--workers 1; the default is the server host's CPU count, here "
                      f"{env.get('server_cpus', '?')}), nothing ran in parallel (epoll-acceptor's acceptor thread "
                      "runs only when a connection arrives): what these numbers show is what each structure costs "
                      "over the "
                      "single-threaded reactor, in CPU per request: " + ", ".join(costs) + ". What threads or "
                      "processes gain needs several workers on a server host with several CPUs (`--workers 1,2,4` "
                      "on labs/bench/lab-4cpu.yml).", ""]
    threads = [c for c in rows if c["engine"] != "epoll-procs"]
    procs = find(cells, "epoll-procs", conns, size)
    if lt["server_util"] < 0.8:
        # Nothing saturated the server: req/s was set by the client or by others' load, and a
        # throughput ratio would be noise; the cost per request still tells the mechanisms apart.
        costs = [f"{name(c)} {c['cpu_us_per_req'] / lt['cpu_us_per_req'] - 1:+.0%} CPU per request and "
                 f"{(c['ctxsw_per_req'] or 0) - (lt['ctxsw_per_req'] or 0):+.2f} context switches per request"
                 for c in rows]
        out += [f"The server was not what set the pace here: epoll-lt used {lt['server_util']:.2f} of a core "
                f"(the load generator {lt['client_util']:.0%} of its own; others' load is under Machine load), so "
                "req/s cannot show what threads or processes gain. Their cost per request, against one "
                "thread doing all the work, can: " + "; ".join(costs) + ". "
                + _thread_vs_process_cost(threads, procs) + _fair_share(rows, lt, env), ""]
        threads, procs = [], None
    if threads:
        t = max(threads, key=lambda c: c["rps"])
        gain, cost = t["rps"] / lt["rps"], t["cpu_us_per_req"] / lt["cpu_us_per_req"]
        switches = (t["ctxsw_per_req"] or 0) - (lt["ctxsw_per_req"] or 0)
        if gain < 1.1:
            why = (f"That hand-off is what the numbers show: {cost - 1:+.0%} CPU per request and {switches:+.2f} "
                   "context switches per request against one thread doing all the work." if switches >= 0.05 else
                   f"Here it cost {cost - 1:+.0%} CPU per request and context switches barely changed "
                   f"({switches:+.2f}/request): the threads mostly ran in turn rather than fighting for the GIL.")
            out += [f"Threads did not buy throughput here ({name(t)}: {gain:.2f}×). Each request runs Python "
                    "bytecode, and only the thread holding the GIL can; a thread woken by epoll first waits "
                    "for the GIL, then the holder drops it at a blocking syscall or after the 5 ms switch "
                    "interval. " + why, ""]
        else:
            out += [f"Threads bought {gain:.2f}× here ({name(t)}), at {cost - 1:+.0%} CPU per request: "
                    "recv, send and epoll_wait release the GIL, so while one thread is in the kernel another "
                    "runs Python; the gain is bounded by the share of time spent in syscalls, not by the "
                    "number of cores.", ""]
    if procs:
        gain = procs["rps"] / lt["rps"]
        if gain >= 1.1 and procs["server_util"] > 1.2:
            out += [f"Processes scaled: epoll-procs {gain:.2f}× on {procs['server_util']:.2f} cores — each "
                    "process has its own interpreter and GIL, SO_REUSEPORT spreads the connections, nothing "
                    "is shared or locked. The price is memory: "
                    f"{_fmt(procs, 'rss_idle_kib', ' KiB')} idle RSS for all processes vs "
                    f"{_fmt(lt, 'rss_idle_kib', ' KiB')} for one.", ""]
        else:
            why = ("the server had one core, so they could only take turns on it" if one_core(env) else
                   f"the load generator set the pace (it used {procs['client_util']:.0%} of its core)"
                   if procs["client_util"] > CLIENT_BOUND else
                   f"they used {procs['server_util']:.2f} cores and the client {procs['client_util']:.0%} of "
                   "one, so neither was saturated: the wire or the hypervisor set the pace")
            out += [f"Processes did not scale here (epoll-procs {gain:.2f}× on {procs['server_util']:.2f} cores): "
                    f"each process has its own GIL and could run in parallel with free cores, but {why}.", ""]
    out.append("GIL waits are not counted directly; a thread that finds the GIL taken sleeps on a condition "
               "variable, which the kernel counts as a voluntary context switch, so switches per request stand "
               "in for them.")
    return out + [""]


def _fair_share(rows: list[dict], lt: dict, env: dict) -> str:
    """On one shared core the scheduler shares CPU per task: N tasks get more of it than one."""
    more = [c for c in rows if c["server_util"] > 1.3 * lt["server_util"]]
    others = max((r.get("foreign_cores", 0) for r in lt.get("runs", [])), default=None)
    if not more or not one_core(env) or (others is not None and others < 0.2):
        return ""
    return (" Yet " + ", ".join(f"{name(c)} got {c['server_util']:.2f}" for c in more)
            + f" of the core where epoll-lt got {lt['server_util']:.2f}: with other processes runnable"
            + (f" (others used {others:.2f} cores during epoll-lt's runs)" if others is not None else "")
            + ", the scheduler shares a core per task, so N threads or processes get a larger share than "
            "one. That, not parallelism, is where their extra req/s came from.")


def _thread_vs_process_cost(threads: list[dict], procs: dict | None) -> str:
    if not threads or not procs:
        return ""
    t = min(threads, key=lambda c: c["cpu_us_per_req"])
    more = t["cpu_us_per_req"] / procs["cpu_us_per_req"] - 1
    costs = f"({_fmt(t, 'cpu_us_per_req', ' µs')} vs {_fmt(procs, 'cpu_us_per_req', ' µs')}, {more:+.0%})"
    if more > 0.05:
        return (f"Even the cheaper threaded variant ({name(t)}) paid more per request than the processes {costs}: "
                "threads share one GIL and hand it over, processes share nothing.")
    if more >= -0.05:
        return (f"The cheaper threaded variant ({name(t)}) and the processes cost about the same per request "
                f"{costs}: the GIL hand-off was not a cost this run could tell apart.")
    return (f"Here a threaded variant ({name(t)}) cost less per request than the processes {costs}: the GIL "
            "hand-off was not what the CPU went to.")


def _scaling(cells: list[dict], conns: int, size: int, env: dict) -> list[str]:
    """req/s over --workers for each parallel engine (when the run had several values)."""
    curves: dict[str, dict[int, dict]] = {}
    for c in ok(cells):
        if c.get("workers") and c["conns"] == conns and c["size"] == size:
            curves.setdefault(c["engine"], {})[c["workers"]] = c
    curves = {e: v for e, v in curves.items() if len(v) > 1}
    if not curves:
        return ["### Scaling over --workers", "",
                "Not measured in this run (one --workers value). Run `hpnlab bench --workers 1,2,4 ...` on a "
                "lab whose server host has several CPUs (lab.yml: `cpus:` of h1) to draw the curve.", ""]
    out = ["### Scaling over --workers", "", f"req/s at {conns} connections, {size} B (scaling.png), with the "
           "cores the server used by its host's count" + (" and, after the slash, the host cores this machine "
                                                         "gave the server's whole VM (its QEMU process)"
                                                         if _vm_measured(curves) else "") + ":", ""]
    for engine, by_w in curves.items():
        ws = sorted(by_w)
        base = by_w[ws[0]]["rps"]
        out.append(f"- {engine}: " + ", ".join(f"{w} → {_fmt(by_w[w])} ({by_w[w]['rps'] / base:.2f}×, "
                                                f"{_cores_of(by_w[w])} cores)" for w in ws))
    return out + [""] + _cores_delivered(curves, env)


def _vm_measured(curves: dict[str, dict[int, dict]]) -> bool:
    return all("vm_cores" in c for by_w in curves.values() for c in by_w.values())


def _cores_of(c: dict) -> str:
    return f"{c['server_util']:.2f}" + (f" / {c['vm_cores']:.2f}" if "vm_cores" in c else "")


def _cores_delivered(curves: dict[str, dict[int, dict]], env: dict) -> list[str]:
    """Did the server get the cores its workers could use? Read from the CPU it used."""
    top = max(max(by_w) for by_w in curves.values())
    most = max((by_w[top] for by_w in curves.values() if top in by_w), key=lambda c: c["server_util"])
    cpus, machine = env.get("server_cpus") or top, (env.get("machine") or {}).get("cpus")
    if pinned(env):
        # pinned to CPU0 whatever the machine has: the workers share one core
        costs = [f"{e} {by_w[max(by_w)]['cpu_us_per_req'] / by_w[min(by_w)]['cpu_us_per_req'] - 1:+.0%}"
                 for e, by_w in curves.items() if by_w[min(by_w)].get("cpu_us_per_req")]
        return [f"The bench pinned the server to CPU0 (the load generator has CPU1 of this machine's "
                f"{machine or '?'}), so the {top} workers took turns on one core: the most any used was "
                f"{most['server_util']:.2f} cores ({name(most)}). On these cores the curve can only show what "
                f"parallelism costs, not what it gains: CPU per request from {min(min(b) for b in curves.values())} "
                f"to {top} workers: " + ", ".join(costs) + ". Its gain needs a server host with cores of its "
                "own (lab mode, `cpus:` of h1, on a machine with more cores than the lab's vCPUs).", ""]
    room = min(top, cpus)
    # under TCG the guest's count can run ahead of what its VM got: the cores were there only if both say so
    got = min(most["server_util"], most.get("vm_cores", most["server_util"]))
    if got >= 0.75 * room:
        return [f"With {top} workers {name(most)} used {most['server_util']:.2f} cores of the server's "
                f"{cpus}: the cores were there, and the curve is the engines' own.", ""]
    text = (f"With {top} workers no engine used more than {most['server_util']:.2f} cores ({name(most)}) of "
            f"the server's {cpus} CPU(s), so the curve stops where the cores ran out, not where the engines "
            "stopped scaling")
    if env.get("server_emulated"):
        text += (f": the server host's CPUs are emulated by QEMU TCG, each vCPU a thread on this machine's "
                 f"{machine or '?'} cores, which also run the client's vCPU and whatever else runs here. "
                 "It is a reading of the emulator's share, not of the engines on real cores")
    return [text + "." + _host_gave(curves, machine), ""]


def _host_gave(curves: dict[str, dict[int, dict]], machine) -> str:
    """What this machine gave the server's VM (its QEMU process, measured here), against what
    the guest counted and what this machine had."""
    if not _vm_measured(curves):
        return ""
    cells = [c for by_w in curves.values() for c in by_w.values()]
    top = max(max(by_w) for by_w in curves.values())
    most = max((by_w[top] for by_w in curves.values() if top in by_w), key=lambda c: c["server_util"])
    busy = statistics.median(c.get("host_busy_cores", 0.0) for c in cells)
    ahead = most["server_util"] > 1.1 * most["vm_cores"]
    return (f" Measured from outside, as the CPU time of its QEMU process (vCPU threads and device models), "
            f"the server's whole VM got {min(c['vm_cores'] for c in cells):.2f}–"
            f"{max(c['vm_cores'] for c in cells):.2f} of this machine's cores over the curve; with {top} workers "
            f"the guest counted {most['server_util']:.2f} cores of server CPU ({name(most)}) where its whole VM "
            f"got {most['vm_cores']:.2f}"
            + (" — a TCG guest's clock runs on while its vCPU threads wait for a host core, so its own count "
               "runs ahead of what it was given" if ahead else "")
            + f". This machine's {machine or '?'} cores were {busy:.2f} busy in the median run"
            + (" — all of them: there was no more to give the server, whatever its worker count."
               if machine and busy >= 0.9 * machine else "."))


def scaling_plot(cells: list[dict], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts: dict[tuple, list] = {}
    for c in ok(cells):
        if c.get("workers"):
            pts.setdefault((c["engine"], c["conns"], c["size"]), []).append((c["workers"], c["rps"], c))
    pts = {k: sorted(v, key=lambda p: p[0]) for k, v in pts.items() if len(v) > 1}
    if not pts:
        return []
    fig, (ax, cores) = plt.subplots(1, 2, figsize=(11, 4.6))
    for (engine, conns, size), xy in sorted(pts.items()):
        line, = ax.plot([x for x, *_ in xy], [y for _, y, *_ in xy], marker="o",
                        label=f"{engine} {conns} conns {size} B")
        cores.plot([x for x, *_ in xy], [c["server_util"] for *_, c in xy], marker="o", color=line.get_color(),
                   label=f"{engine}: server CPU (its host's /proc)")
        if all("vm_cores" in c for *_, c in xy):
            cores.plot([x for x, *_ in xy], [c["vm_cores"] for *_, c in xy], marker="s", linestyle="--",
                       color=line.get_color(), label=f"{engine}: its whole VM (QEMU, this machine's /proc)")
    ax.set_xlabel("--workers (threads or processes)")
    ax.set_ylabel("requests/s")
    ax.set_title("Parallel engines: scaling over workers")
    cores.set_xlabel("--workers (threads or processes)")
    cores.set_ylabel("cores")
    cores.set_title("Cores the server used")
    for a in (ax, cores):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    return ["scaling.png"]


def reading(cells: list[dict], env: dict | None = None) -> str:
    good = ok(cells)
    if not good:
        return "## Reading\n\nNo cell produced numbers; see the skipped/failed list.\n"
    size = 64 if any(c["size"] == 64 for c in good) else min(c["size"] for c in good)
    conns_all = sorted({c["conns"] for c in good if c["size"] == size})
    lo_c = 100 if 100 in conns_all else conns_all[len(conns_all) // 2]
    hi_c = max(conns_all)
    out = ["## Reading", "",
           f"Numbers quoted below are for {size} B messages, from this run. Where req/s and CPU µs/request "
           "disagree, trust the CPU cost: req/s also reflects how much CPU other load left the server.", ""]
    out += _ranking(cells, lo_c, size) + _cores(cells, env or {})
    lt = find(cells, "epoll-lt", lo_c, size)

    th_lo, th_hi = find(cells, "threads", lo_c, size), find(cells, "threads", hi_c, size)
    lt_hi = find(cells, "epoll-lt", hi_c, size)
    mid_c = 1000 if 1000 in conns_all and 1000 not in (lo_c, hi_c) else None
    th_mid, lt_mid = (find(cells, "threads", mid_c, size), find(cells, "epoll-lt", mid_c, size)) \
        if mid_c else (None, None)
    mid = (f"at {mid_c}: {_fmt(th_mid)} (p99 {_fmt(th_mid, 'p99_us', ' µs')}, epoll-lt {_fmt(lt_mid)}); "
           if th_mid else "")
    collapsed = th_hi.get("note") if th_hi else None
    fell = bool(collapsed) or bool(th_hi and lt_hi and th_hi["rps"] < 0.5 * lt_hi["rps"])
    out += [] if not (th_lo or th_hi) else [("### Why one-thread-per-connection collapses (一请求一线程)" if fell else
             f"### One thread per connection (一请求一线程): it held up to {hi_c} connections in this run"), "",
            f"threads: {_fmt(th_lo)} at {lo_c} connections (epoll-lt {_fmt(lt)})"
            + ("" if hi_c == lo_c else
               f"; {mid}{_fmt(th_hi)} at {hi_c} (p99 {_fmt(th_hi, 'p99_us', ' µs')}"
               + (f"; {collapsed}" if collapsed else "") + f"); epoll-lt at {hi_c}: {_fmt(lt_hi)}") + ". "
            f"Context switches per request: {_fmt(th_lo, 'ctxsw_per_req', '')} (threads) vs "
            f"{_fmt(find(cells, 'epoll-lt', lo_c, size), 'ctxsw_per_req', '')} (epoll-lt) at {lo_c}. "
            "Every request wakes a different thread: the kernel switches to it, it must take the GIL, "
            "and only one thread runs Python at a time, so N ready threads queue for one lock and the "
            "wake-up/hand-off cost is paid per request instead of per batch. "
            + ("The accept loop is one more thread in that queue: while thousands of connection threads "
               "hold or wait for the GIL it accepts late (accept starvation), new connections sit in the "
               "SYN/accept queue, and the tail latency explodes long before the CPU is full. " if fell else
               f"At {hi_c} connections it had not collapsed here ({_ratio(th_hi, lt_hi)} epoll-lt's req/s); the "
               "course's collapse comes with thousands of threads (`--conns 1000,10000` shows it). ")
            + f"Each thread also keeps a kernel task and a stack: {_fmt(th_hi, 'kib_per_conn', ' KiB/conn')} at "
            f"{hi_c} connections.", ""]
    out += _multi(cells, lo_c, size, env or {}) + _scaling(cells, lo_c, size, env or {})

    et = find(cells, "epoll-et", lo_c, size)
    faster = "slower" if lt and et and et["rps"] < lt["rps"] else "not slower"
    costlier = "more" if lt and et and et["cpu_us_per_req"] > lt["cpu_us_per_req"] else "not more"
    out += ["### Why edge-triggered can be slower than level-triggered in Python", "",
            f"At {lo_c} connections epoll-et {_fmt(et)} vs epoll-lt {_fmt(lt)} — ET was {faster} here, and it "
            f"cost {costlier} CPU per request ({_fmt(et, 'cpu_us_per_req', ' µs')} vs "
            f"{_fmt(lt, 'cpu_us_per_req', ' µs')}); "
            f"syscalls/request {_fmt(et, 'syscalls_per_req', '')} (ET) vs {_fmt(lt, 'syscalls_per_req', '')} (LT). "
            "The ET rule is: read until EAGAIN, because no new event comes for data already there. "
            "With one small request per connection at a time, that is one extra recv() per event that "
            "returns EAGAIN — in C a cheap syscall, in Python a syscall plus constructing, raising and "
            "catching a BlockingIOError. ET's saving — no epoll_ctl to switch EPOLLOUT on and off, fewer "
            "repeated wake-ups for data left unread — only pays off when reads are large or interest "
            "changes often (course notes: 1 GB arriving in 1 KB reads). LT with one recv per event "
            "suits request/response traffic.", ""]

    ur_lo, ur_hi = find(cells, "uring", lo_c, size), find(cells, "uring", hi_c, size)
    ur_1 = find(cells, "uring", min(conns_all), size)
    lt_1 = find(cells, "epoll-lt", min(conns_all), size)
    out += ["### Where io_uring wins, and where it does not (Reactor vs Proactor)", "",
            f"uring vs epoll-lt: {_fmt(ur_lo)} vs {_fmt(lt)} at {lo_c}"
            + (f"; {_fmt(ur_hi)} vs {_fmt(lt_hi)} at {hi_c}" if hi_c > lo_c else "")
            + (f"; {_fmt(ur_1)} vs {_fmt(lt_1)} at {min(conns_all)}" if min(conns_all) < lo_c else "")
            + ". "
            f"Syscalls/request: uring {_fmt(ur_lo, 'syscalls_per_req', '')}, epoll-lt "
            f"{_fmt(lt, 'syscalls_per_req', '')}; CPU µs/request {_fmt(ur_lo, 'cpu_us_per_req', '')} vs "
            f"{_fmt(lt, 'cpu_us_per_req', '')}. "
            "A proactor hands whole operations to the kernel: multishot recv re-arms itself, and one "
            "io_uring_enter() submits a batch of sends and reaps a batch of completions, so with many "
            "busy connections syscalls per request fall well below one and the per-request Python work "
            "is a tuple from the completion queue. With one or few connections there is no batch to "
            "amortise: each request is still a full submit-and-wait round trip, and the Python-level "
            "bookkeeping (tagging operations, keeping send buffers alive, recycling provided buffers) "
            "costs as much as epoll's recv/send. "
            + _big_messages(cells, lo_c, size) +
            "The provided-buffer ring keeps memory flat "
            f"({_fmt(ur_hi, 'kib_per_conn', ' KiB/conn')} at {hi_c}) because a buffer is taken only "
            "when data arrives; the echo handler is given a view of that buffer and its reply is sent "
            "from the buffer itself, so an echo copies nothing in user space (epoll-lt makes a bytes "
            "object per recv; a handler that wants bytes, as the KV store does, gets one copy).", ""]

    co, gr = find(cells, "coro", hi_c, size), find(cells, "greenlet", hi_c, size)
    co_lo, gr_lo = find(cells, "coro", lo_c, size), find(cells, "greenlet", lo_c, size)
    out += ["### What a coroutine costs per connection (协程)", "",
            f"At {hi_c} connections: coro {_fmt(co, 'kib_per_conn', ' KiB/conn')}, greenlet "
            f"{_fmt(gr, 'kib_per_conn', ' KiB/conn')}, threads {_fmt(th_hi, 'kib_per_conn', ' KiB/conn')}, "
            f"epoll-lt {_fmt(lt_hi, 'kib_per_conn', ' KiB/conn')}. Throughput at {lo_c}: coro {_fmt(co_lo)}, "
            f"greenlet {_fmt(gr_lo)}, epoll-lt {_fmt(lt)}; CPU per request coro "
            f"{_fmt(co_lo, 'cpu_us_per_req', ' µs')}, greenlet {_fmt(gr_lo, 'cpu_us_per_req', ' µs')}, "
            f"epoll-lt {_fmt(lt, 'cpu_us_per_req', ' µs')}. "
            "A generator coroutine parks as one heap frame (its locals and the await point) plus a small "
            "Task; a greenlet, like NtyCo's coroutines, parks a saved slice of C stack; a thread parks a "
            "whole kernel task with its own stack. All three let the code stay in blocking style. What the "
            "coroutine adds to the bare reactor is a generator resume per wake-up and a generator object per "
            "await: "
            + (f"here {100 * (co_lo['cpu_us_per_req'] / lt['cpu_us_per_req'] - 1):+.0f}% CPU per request vs "
               f"epoll-lt at {lo_c} connections."
               if co_lo and lt else "not measured in this run."), ""]

    client = max(good, key=lambda c: c.get("client_util") or 0)
    bound = [c for c in good if (c.get("client_util") or 0) > CLIENT_BOUND]
    out += ["### Is the load generator the bottleneck?", "",
            f"The C load generator used at most {client['client_util']:.0%} of its CPU "
            f"({name(client)}, {client['conns']} conns, {client['size']} B). "
            + (f"{len(bound)} cell(s) had it above {CLIENT_BOUND:.0%} — those numbers are client-bound: "
               + ", ".join(f"{name(c)}@{c['conns']}/{c['size']}B" for c in bound[:8]) + "."
               if bound else f"No cell had it above {CLIENT_BOUND:.0%}, so the servers set the pace."), ""]
    return "\n".join(out) + "\n"


def _ratio(a: dict | None, b: dict | None) -> str:
    return f"{a['rps'] / b['rps']:.2f}×" if a and b and b.get("rps") else "n/a ×"


def _big_messages(cells: list[dict], conns: int, size: int) -> str:
    big = max((c["size"] for c in ok(cells)), default=0)
    ur, lt = find(cells, "uring", conns, big), find(cells, "epoll-lt", conns, big)
    ur_s, lt_s = find(cells, "uring", conns, size), find(cells, "epoll-lt", conns, size)
    if big <= size or not ur or not lt or not ur_s or not lt_s:
        return ""
    saved = 1 - ur["cpu_us_per_req"] / lt["cpu_us_per_req"]
    saved_s = 1 - ur_s["cpu_us_per_req"] / lt_s["cpu_us_per_req"]
    text = (f"With {big} B messages at {conns} connections: uring {_fmt(ur, 'cpu_us_per_req', ' µs')} vs epoll-lt "
            f"{_fmt(lt, 'cpu_us_per_req', ' µs')} CPU per request ({-saved:+.0%}; {-saved_s:+.0%} at {size} B). "
            "Both engines copy each message twice in the kernel (into the receive buffer, out of it on the "
            "send) and run the same TCP path, and that work grows with the message; what io_uring saves - "
            "syscalls, and Python calls per request - does not"
            + (", so it is a smaller share of a bigger request. " if saved < saved_s else
               " (here the saving did not shrink with the message, though). "))
    if all(c.get("user_us_per_req") for c in (ur, lt, ur_s, lt_s)):
        k_ur, k_lt, k_ur_s, k_lt_s = (c["cpu_us_per_req"] - c["user_us_per_req"] for c in (ur, lt, ur_s, lt_s))
        text += (f"Split: user space (Python) uring {ur['user_us_per_req']:.2f} vs epoll-lt "
                 f"{lt['user_us_per_req']:.2f} µs, kernel {k_ur:.2f} vs {k_lt:.2f} µs; from {size} B to "
                 f"{big} B the kernel part grew {k_ur - k_ur_s:+.2f} µs under uring and "
                 f"{k_lt - k_lt_s:+.2f} µs under epoll-lt"
                 + (" - the provided buffers, the completion batches and the sends from the buffer cost "
                    "no more per byte than epoll's recv/send. " if k_ur - k_ur_s <= k_lt - k_lt_s
                    else " - io_uring's path costs more per byte here (provided buffers cycled through "
                    "cache, sends from lent buffers). "))
    bound = [c for c in (ur, lt) if (c.get("client_util") or 0) > CLIENT_BOUND]
    if bound:
        text += (f"At {big} B the load generator used {max(c['client_util'] for c in bound):.0%} of its CPU "
                 f"({', '.join(name(c) for c in bound)}): there the client, not the server, set the req/s, "
                 "and the servers differ by their CPU per request. ")
    return text


# -- the report ----------------------------------------------------------------------
def results_table(cells: list[dict], size: int) -> str:
    rows = []
    for c in cells:
        if c["size"] != size:
            continue
        if c.get("rps") is None:
            rows.append([name(c), c["conns"], c["status"], "", "", "", "", "", "", "", "", "", ""])
            continue
        rows.append([name(c), c["conns"],
                     f"{c['rps']:,.0f} [{c['rps_min']:,.0f}–{c['rps_max']:,.0f}]",
                     f"{c['spread_pct']:.1f}%" if c.get("spread_pct") is not None else "",
                     f"{c['cpu_capacity_rps']:,.0f}" if c.get("cpu_capacity_rps") else "",
                     f"{c['p50_us']:,.0f}", f"{c['p99_us']:,.0f}", f"{c['p999_us']:,.0f}",
                     f"{c['cpu_us_per_req']:.1f}" + (f" ({c['user_us_per_req']:.1f})" if c.get("user_us_per_req")
                                                     else ""),
                     "" if c.get("syscalls_per_req") is None else f"{c['syscalls_per_req']:.2f}",
                     f"{c['ctxsw_per_req']:.3f}", f"{c['kib_per_conn']:.2f}",
                     f"{c['server_util']:.0%} / {c['client_util']:.0%}"])
    return md_table(["engine", "conns", "req/s median [min–max]", "spread", "req/CPU-s", "p50 µs", "p99 µs",
                     "p999 µs", "CPU µs/req (user)", "syscalls/req", "ctxsw/req", "KiB/conn", "CPU server/client"],
                    rows, align="lrrrrrrrrrrrr")


def skipped_md(cells: list[dict]) -> str:
    bad = [c for c in cells if c["status"] != "ok"]
    if not bad:
        return "## Skipped or failed\n\nNothing: every cell ran.\n"
    seen: dict[tuple, list] = {}
    for c in bad:
        seen.setdefault((name(c), c["status"], c.get("reason", "")), []).append(f"{c['conns']}/{c['size']}B")
    rows = [[e, s, ", ".join(where), r] for (e, s, r), where in seen.items()]
    return "## Skipped or failed\n\n" + md_table(["engine", "status", "cells (conns/size)", "why"], rows,
                                                 align="llll")


def load_md(cells: list[dict], window: float | None = None) -> str:
    """How much other people's load and the hypervisor took during the runs (and, given the
    window asked for, which cells needed a longer one)."""
    runs = [r for c in cells for r in c.get("runs", [])]
    if not runs:
        return ""
    foreign = sorted(r["foreign_cores"] for r in runs)
    steal = sorted(r["steal_cores"] for r in runs)
    disturbed = sum(1 for r in runs if r.get("disturbed"))
    groups = {(c["conns"], c["size"]): c["quiet"] for c in cells if c.get("quiet")}   # one wait per group
    waits = [q["waited_s"] for q in groups.values()]
    loads = [float(q["loadavg"][0]) for q in groups.values()]
    return "\n".join([
        "## Machine load during the runs", "",
        f"- other people's processes used {foreign[len(foreign) // 2]:.2f} cores in the median run "
        f"(max {foreign[-1]:.2f}); hypervisor steal: median {steal[len(steal) // 2]:.2f} cores, "
        f"max {steal[-1]:.2f}",
        f"- {disturbed} of {len(runs)} runs lost more than the limit to the two together and were repeated "
        "(or kept, marked, when the repeat budget ran out); a cell's median and a goal's paired rounds "
        "leave them out when they are fewer than half", *_host_md(runs),
        f"- waited {sum(waits):.0f} s in total for a quiet machine before the {len(groups)} group(s); "
        f"1-min load average when they started: "
        + (f"{min(loads):.1f} – {max(loads):.1f}" if loads else "?"),
        *(_longer_windows(cells, window) if window else []), *_time_md(cells, groups),
        "- spreads above ~15% in the tables mean the machine was not steady: compare engines by "
        "CPU µs/request there, which load disturbs less than req/s", ""]) + "\n"


def _host_md(runs: list[dict]) -> list[str]:
    """The machine under the lab's VMs: what else it ran (a TCG guest sees none of it as steal)."""
    others = sorted(r["host_others_cores"] for r in runs if "host_others_cores" in r)
    if not others:
        return []
    busy = statistics.median(r["host_busy_cores"] for r in runs if "host_others_cores" in r)
    return [f"- this machine, which runs the lab's VMs: {busy:.2f} cores busy in the median run, of which work "
            f"other than the two VMs {others[len(others) // 2]:.2f} cores (max {others[-1]:.2f}); the guests "
            "see none of it as steal, only as a slower CPU"]


def _time_md(cells: list[dict], groups: dict) -> list[str]:
    """Where the run's time went: on an emulated guest the windows are the smaller part of it."""
    runs = [r["phases_s"] for c in cells for r in c.get("runs", []) if "phases_s" in r]
    if not runs:
        return []

    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in runs)
    starts = [q["servers_start_s"] for q in groups.values() if "servers_start_s" in q]
    return [f"- time: {len(runs)} timed runs took {med('total'):.1f} s each in the median: {med('to_window'):.1f} s "
            f"to the window (connecting {med('connect'):.2f} s, at most {max(r['connect'] for r in runs):.2f} s; "
            f"then the warm-up), the window, {med('after_window'):.1f} s after it; one look at the server took "
            f"{med('look'):.2f} s (at most {max(r['look'] for r in runs):.2f} s), waiting for the servers to be "
            f"idle before a run {med('settle'):.2f} s"
            + (f"; starting a group's servers took {min(starts):.0f}–{max(starts):.0f} s" if starts else "")]


def _longer_windows(cells: list[dict], asked: float) -> list[str]:
    """The cells whose window was longer than asked: a look at the server over SSH took so long that
    two did not fit (the first such run of an engine was repeated, its later ones started longer)."""
    longer = [f"{name(c)} @{c['conns']}/{c['size']} B {max(r['window_s'] for r in c['runs']):.0f} s" for c in cells
              if any(r.get("window_s", 0) > asked + 0.5 for r in c.get("runs", []))]
    if not longer:
        return []
    return [f"- {len(longer)} cell(s) ran a longer window than the {asked:g} s asked for, because looks at "
            "the server took so long that two did not fit in it (slow looks: a busy guest CPU, or a "
            "server of many threads): " + ", ".join(longer)]


def goals_md(rows: list[dict]) -> str:
    mark = {True: "PASS", False: "FAIL", None: "n/a"}

    def paired(g: dict) -> str:
        if "paired" not in g:
            return ""
        notes = [f"{g[k]} {word}" for k, word in (("disturbed_rounds", "disturbed"),
                                                   ("rechecked_rounds", "from the recheck")) if g.get(k)]
        return (f"{g['paired']:.2f} [{g['paired_min']:.2f}–{g['paired_max']:.2f}], "
                f"{g['rounds']} rounds{' (' + ', '.join(notes) + ')' if notes else ''}; {g['spread']}")

    def per_cpu(g: dict) -> str:
        if g.get("cpu_ratio") is None:
            return ""
        if "cpu_min" not in g:
            return f"{g['cpu_ratio']:.2f}"
        return f"{g['cpu_ratio']:.2f} [{g['cpu_min']:.2f}–{g['cpu_max']:.2f}]; {g['cpu_spread']}"
    table = md_table(["goal", "measured (median req/s)", "ratio / value", "paired ratio: median [min–max]",
                      "result", "ratio per server CPU-s (paired likewise)", "result per CPU-s"],
                     [[g["goal"], g["measured"], "" if g["ratio"] is None else f"{g['ratio']:.2f}", paired(g),
                       mark[g["pass"]], per_cpu(g),
                       mark[g.get("cpu_pass")] if "cpu_pass" in g else ""] for g in rows], align="llllclc")
    inside = [g["goal"] for g in rows if g.get("beyond_spread") is False]
    by_cost = [g["goal"] for g in rows if g.get("beyond_spread") is False and g.get("cpu_beyond_spread")]
    busy = [g["goal"] for g in unsettled(rows)]
    rechecked = [g["goal"] for g in rows if g.get("rechecked_rounds")]
    return ("## Performance goals (this run)\n\n"
            "The goals are about req/s measured in one run. The engines a goal compares ran back to back "
            "in every round (their order flipped each round), so each round gives one ratio of two runs "
            "seconds apart; where there are two rounds or more, the result is the median of those ratios "
            "(\"paired ratio\"), and a difference counts as beyond the run-to-run spread only if every "
            "round fell on the same side of 1. On a machine shared with other load, req/s also measures how "
            "much CPU the others left us; the last two columns compare the engines' own cost instead "
            f"(requests per second of server CPU time). {NOT_IN_GRID}\n\n" + table
            + ("\n\n" + f"{len(inside)} goal(s) were decided inside the run-to-run spread (rounds on both "
               "sides of 1): their PASS/FAIL is not a difference this run can show: " + "; ".join(inside) + "."
               + (f" By server CPU per request, {len(by_cost)} of them differed beyond the spread (every round "
                  "on one side of 1; the last two columns say which way): " + "; ".join(by_cost) + "."
                  if by_cost else "")
               if inside else "")
            + ("\n\n" + f"{len(rechecked)} goal(s) were measured again at the end of the grid, after a wait for "
               "a quiet machine, because most of their rounds had been disturbed (only that, never the "
               "verdict, triggers it); the rounds of both times are pooled as any are: the undisturbed ones "
               "when they are at least half or as many as the repeats asked for: " + "; ".join(rechecked) + "."
               if rechecked else "")
            + ("\n\n" + f"{len(busy)} goal(s) rest on rounds most of which were disturbed (a run lost more "
               "cores than the limit to steal or others' processes; see Machine load during the runs), so "
               "they were kept and the machine's load, more than the engines, set their req/s ratio: "
               + "; ".join(busy) + "."
               if busy else ""))
