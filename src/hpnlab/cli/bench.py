"""`hpnlab bench` — the I/O-models benchmark (issue 5, course §2.1–2.5)."""
from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from ..errors import HpnlabError
from ..servers import ENGINES
from ._common import (
    add_format,
    console,
    ensure_current_code,
    non_negative,
    positive_float,
    positive_int,
    print_json,
    tcp_port,
)

if TYPE_CHECKING:
    from ..bench.iomodels import Config

HELP = "benchmark the I/O-model servers (threads ... io_uring) and write results/bench/<stamp>/"


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"expected positive integers, got {text!r}")
    return vals


def add_arguments(parser) -> None:
    parser.add_argument("--mode", choices=["auto", "lab", "loopback"], default="auto",
                        help="lab: server on h1, client on h2 of the running lab; loopback: this machine, "
                             "server pinned to CPU0 and client to CPU1; auto: lab if it is up")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma list (default all: {', '.join(ENGINES)})")
    parser.add_argument("--conns", default="1,10,100,1000,10000", help="comma list of connection counts")
    parser.add_argument("--sizes", default="64,4096", help="comma list of message sizes in bytes")
    parser.add_argument("--duration", type=positive_float, default=3.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=non_negative, default=1.0)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--depth", type=positive_int, default=1, help="requests in flight per connection")
    add_format(parser)
    parser.add_argument("--workers", metavar="N[,N...]",
                        help="threads/processes of the parallel engines (epoll-threads, -acceptor, -procs); "
                             "several values draw a scaling curve (default: the server host's CPU count)")
    parser.add_argument("--port", type=tcp_port, default=7300)
    parser.add_argument("--quiet-wait", type=non_negative, default=60.0,
                        help="seconds to wait for a quiet machine before each cell")
    parser.add_argument("--recheck-wait", type=non_negative, default=180.0,
                        help="seconds to wait for a quiet machine before measuring again, at the end of the grid, "
                             "the engines of a goal most of whose rounds were disturbed")
    parser.add_argument("--no-recheck", action="store_true", help="do not measure such goals again")
    parser.add_argument("--no-syscalls", action="store_true", help="skip the perf/strace syscall count")
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: 100 connections, 64 B, 0.5 s, 1 repeat, no syscall count")
    parser.add_argument("--results", metavar="DIR", help="results root (default: results/)")
    parser.add_argument("--render", metavar="RUN_DIR",
                        help="only re-write the report of an earlier run from its data.json")
    parser.add_argument("--server-host", default="h1", help="lab mode: the host the engines run on (default: h1)")
    parser.add_argument("--client-host", default="h2",
                        help="lab mode: the host of the load generator (default: h2)")
    parser.add_argument("--network", default="data", help="lab mode: the network between them (default: data)")


def rerun_argv(args, cfg, mode: str) -> list[str]:
    """The explicit command line that repeats this run (every knob spelled out)."""
    argv = ["hpnlab", "--lab", str(args.lab)] + (["--provider", args.provider] if args.provider else [])
    argv += ["bench", "--mode", mode, "--engines", ",".join(cfg.engines),
             "--conns", ",".join(map(str, cfg.conns)), "--sizes", ",".join(map(str, cfg.sizes))]
    if args.quick:
        argv.append("--quick")
    else:
        argv += ["--duration", f"{cfg.duration:g}", "--warmup", f"{cfg.warmup:g}",
                 "--repeats", str(cfg.repeats), "--quiet-wait", f"{cfg.quiet_wait:g}"]
        argv += ["--recheck-wait", f"{cfg.recheck_wait:g}"] if cfg.recheck else ["--no-recheck"]
    argv += ["--depth", str(cfg.depth), "--port", str(cfg.port)]
    if mode == "lab":
        argv += ["--server-host", cfg.server_host, "--client-host", cfg.client_host, "--network", cfg.network]
    if args.workers:
        argv += ["--workers", args.workers]
    if not cfg.syscalls:
        argv.append("--no-syscalls")
    if args.results:
        argv += ["--results", args.results]
    return argv


def config_from(args) -> Config:
    """The run's Config from the command line, with the grid an emulated server host gets instead."""
    from ..bench.iomodels import Config  # noqa: F811 - imported when run (the CLI starts without it)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise HpnlabError(f"--engines: unknown engine(s) {', '.join(bad) or '(none)'}",
                          hint=f"valid engines: {', '.join(ENGINES)}", exit_code=2)
    try:
        conns, sizes = _ints(args.conns), _ints(args.sizes)
        workers = _ints(args.workers) if args.workers else []
    except ValueError as exc:
        raise HpnlabError(f"--conns/--sizes/--workers: {exc}", hint="e.g. --conns 1,10,100 --sizes 64,4096",
                          exit_code=2) from None
    cfg = Config(engines=engines, conns=conns, sizes=sizes, duration=args.duration, warmup=args.warmup,
                 repeats=args.repeats, depth=args.depth, port=args.port, quiet_wait=args.quiet_wait,
                 recheck=not args.no_recheck, recheck_wait=args.recheck_wait,
                 syscalls=not args.no_syscalls, workers=workers, server_host=args.server_host,
                 client_host=args.client_host, network=args.network)
    if not args.quick and (args.conns, args.duration, args.repeats) == ("1,10,100,1000,10000", 3.0, 3):
        # the defaults, on a server whose CPU QEMU emulates (the default VM lab): a guest instruction
        # costs many host ones, so a run costs several seconds beyond its window there (the load
        # generator's connections and warm-up, starting and stopping the servers), and 10,000
        # connections do not fit a 1 GiB guest. Both sizes at 100 and 1000 connections, every engine.
        cfg.emulated_grid = {"conns": [100, 1000], "duration": 3.0, "repeats": 1, "syscalls": False}
        if args.quiet_wait == 60.0:
            # this machine, whose quiet the wait is for, runs the VMs and others' work: on a VM run it
            # waited the whole minute before 3 of 4 groups (84-96 % busy) and got no quieter
            cfg.emulated_grid["quiet_wait"] = 15.0
        runs = len(cfg.engines) * len(cfg.conns) * len(cfg.sizes) * (cfg.repeats + cfg.syscalls)
        cfg.emulated_why = (f"the full grid's {runs} runs at ~7 s each would take {runs * 7 / 3600:.1f} h there "
                            "and 10,000 connections do not fit a 1 GiB guest; any of --conns, --duration, "
                            "--repeats given runs the grid as asked")
    if args.quick:
        if args.conns == "1,10,100,1000,10000":
            cfg.conns = [100]
        if args.sizes == "64,4096":
            cfg.sizes = [64]
        cfg.duration, cfg.warmup, cfg.repeats, cfg.max_extra = 0.5, 0.2, 1, 0
        cfg.quiet_wait, cfg.syscalls, cfg.recheck = 0.0, False, False
        # the two looks at the server must both fall inside the window: through the look agent
        # one takes 0.1-0.9 s on a TCG guest, as the host gives its vCPU time
        cfg.emulated_grid = {"duration": 3.0}
        cfg.emulated_why = "two looks at the server must fit in the window"
    if cfg.repeats < 1 or cfg.duration <= 0 or not 0 < cfg.port < 65536:
        raise HpnlabError(f"--repeats {cfg.repeats}, --duration {cfg.duration:g}, --port {cfg.port}: out of range",
                          hint="--repeats >= 1, --duration > 0, --port 1..65535", exit_code=2)
    return cfg


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args) -> int:
    from ..bench.iomodels import benchmark, lab_sides_problem, render
    from ..providers import ProviderError, open_lab

    if args.render:
        import json
        from pathlib import Path
        run_dir = Path(args.render)
        try:
            data = json.loads((run_dir / "data.json").read_text())
        except (OSError, ValueError) as exc:
            raise HpnlabError(f"cannot read {run_dir}/data.json: {exc}",
                              hint="--render takes a run's directory under results/bench/ (it holds data.json)") \
                from None
        render(run_dir, data)
        console.print(f"report: {run_dir}/report.md")
        return 0

    cfg = config_from(args)
    provider, mode = None, args.mode
    if mode in ("auto", "lab"):
        try:
            provider = open_lab(args.lab, provider=args.provider)
            up = provider.is_up()
        except (ProviderError, OSError) as exc:
            if mode == "lab":
                raise
            console.print(f"[dim]no lab ({exc}); using loopback mode[/dim]")
            up = False
        if mode == "lab" and not up and provider is not None:
            raise ProviderError(f"lab {provider.lab.name} is not up",
                                hint="run `make lab-up` first, or use --mode loopback")
        mode = "lab" if up else "loopback"
        if mode == "loopback":
            provider = None
        elif provider is not None:
            problem = lab_sides_problem(provider.lab, cfg.server_host, cfg.client_host, cfg.network)
            if problem:
                raise HpnlabError(problem, hint="`hpnlab status` shows the lab's hosts and networks", exit_code=2)
            ensure_current_code(provider, "inventory", lambda message: console.print(f"[dim]{message}[/dim]"))
    console.print(f"hpnlab bench: mode {mode}")
    # SIGTERM (as `timeout` sends) ends the run as Ctrl-C does: servers stopped, a partial report
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = benchmark(cfg, mode, provider, argv=rerun_argv(args, cfg, mode), results_root=args.results,
                           say=lambda m: console.print(m), make_target=None)
    finally:
        signal.signal(signal.SIGTERM, before)
    if args.format == "json":
        print_json("bench", {"mode": mode, "report": str((result["dir"] / "report.md").resolve()),
                             "dir": str(result["dir"].resolve()), "goals": result["goals"], "cells": result["cells"],
                             "failed": result["failed"]})
    for g in result["goals"]:
        mark = {True: "[green]PASS[/green]", False: "[yellow]FAIL[/yellow]", None: "n/a"}[g["pass"]]
        disturbed = f", {g['disturbed_rounds']} of {g['rounds']} rounds disturbed" if g.get("disturbed_rounds") else ""
        disturbed += f", {g['rechecked_rounds']} of {g['rounds']} from the recheck" if g.get("rechecked_rounds") else ""
        paired = (f"; paired {g['paired']:.2f} [{g['paired_min']:.2f}–{g['paired_max']:.2f}], {g['spread']}{disturbed}"
                  if "paired" in g else "")
        console.print(f"  {mark} {g['goal']}: {g['measured']}{paired}")
    console.print(f"report: {result['dir']}/report.md")
    if result["failed"]:
        reasons = dict.fromkeys(f"{c['engine']}: {c.get('reason')}" for c in result["failed"])
        console.print(f"[red]{len(result['failed'])} of {len(result['cells'])} requested cells did not run[/red] "
                      "(a partial report was written):\n  " + "\n  ".join(reasons), soft_wrap=True)
        return 1
    return 0
