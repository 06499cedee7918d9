"""`hpnlab ustack …` — the user-space TCP/IP stack (course §2.4).

    hpnlab ustack serve --ifname eth2 --ip 10.77.5.101/24 --app echo   run it here (inside a host)
    hpnlab --lab labs/ustack/lab.yml ustack run h1 --app http --port 80  run it on a lab host
    hpnlab --lab labs/ustack/lab.yml ustack lab                          interop suite + measurements
"""
from __future__ import annotations

import sys
import time

from ..errors import HpnlabError
from ._common import add_up_option, console, ensure_up, positive_int, progress, provider_from

HELP = "the user-space TCP/IP stack: run an app on it, or run its interop suite and measurements"


def add_arguments(parser) -> None:
    from ..ustack import run as stackrun
    sub = parser.add_subparsers(dest="ustack_cmd", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run the stack with an app in this network namespace")
    stackrun.add_arguments(serve)
    on = sub.add_parser("run", help="run the stack with an app on a lab host's NIC (Ctrl-C stops it)")
    on.add_argument("host")
    on.add_argument("--net", help="the LAN whose NIC the stack takes (default: stack if the lab has it, else data)")
    on.add_argument("stack_args", nargs="*", help="options for `serve` after `--` (--app, --port, ...)")
    lab = sub.add_parser("lab", help="interop suite against the peer's kernel + measurements, into results/ustack/")
    add_up_option(lab)
    lab.add_argument("--net", help="the LAN whose NIC the stack takes on h1 (default: stack if the lab has it, "
                                   "else data)")
    lab.add_argument("--bytes", type=positive_int, default=64 << 20, help="bulk transfer size (default 64 MiB)")
    lab.add_argument("--results", metavar="DIR", help="results root (default: results/)")
    lab.add_argument("--impaired-lab", default="labs/ustack/impaired.yml", metavar="FILE",
                     help="the lab for the cases under loss and delay ('' to skip)")
    lab.add_argument("--impaired-bytes", type=positive_int, default=2 << 20,
                     help="bulk size under impairment (default 2 MiB)")
    only = lab.add_mutually_exclusive_group()
    only.add_argument("--bulk-only", action="store_true",
                      help="only the stack vs PyTCP on TAP (the ≥ 10× goal), profiled, and the kernels")
    only.add_argument("--interop-only", action="store_true",
                      help="every interop case, none of the measurements")


def run(args) -> int:
    if args.ustack_cmd == "serve":
        from ..ustack.run import main
        try:
            return main(args)
        except SystemExit as exc:   # the stack's own refusal (it also runs as a host's agent)
            if isinstance(exc.code, str):
                raise HpnlabError(exc.code, hint="`hpnlab ustack serve --help` lists the options") from None
            raise
    provider = provider_from(args)
    if args.ustack_cmd == "run":
        return _run_on_host(provider, args)
    from ..labs._kit import LabError
    from ..ustack import lab
    started = time.monotonic()
    with progress(f"ustack lab on {provider.lab.name} ({provider.name})") as step:
        ensure_up(provider, args, step)
        try:
            result = lab.run(provider, args.bytes, args.results, step, sys.argv, args.impaired_lab or None,
                             args.impaired_bytes, args.net,
                             mode="bulk" if args.bulk_only else "interop" if args.interop_only else "full")
        except LabError as exc:
            raise LabError(f"ustack lab: {exc}", hint=exc.hint) from exc
    failed = [r["name"] for r in result["data"]["interop"] if not r["ok"]]
    console.print(f"ustack lab done in {time.monotonic() - started:.1f}s; report: {result['report']}")
    if failed:
        console.print(f"[red]interop cases failed: {', '.join(failed)}[/red]")
        return 1
    return 0


def _run_on_host(provider, args) -> int:
    from ..labs._kit import agent_python
    from ..ustack.interop import stack_ip, stack_network
    host = provider.host(args.host)
    net = stack_network(provider, args.net)
    nic = host.nic(net)
    extra = list(args.stack_args)
    argv = [agent_python(host), "-m", "hpnlab.ustack.run", "--ifname", nic.ifname]
    if "--ip" not in extra:
        argv += ["--ip", stack_ip(host, net)]
    import signal

    def terminate(_sig, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)      # a SIGTERM stops the stack too, as Ctrl-C does
    proc = host.start(argv + extra, name=f"ustack-{args.host}")
    console.print(f"stack on {args.host}:{nic.ifname} ({' '.join(argv[3:] + extra)}); Ctrl-C stops it")
    seen = 0
    try:
        while proc.alive():
            out = proc.logs()[0]
            if len(out) > seen:
                sys.stdout.write(out[seen:])
                sys.stdout.flush()
                seen = len(out)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        rc = proc.stop(5) if proc.alive() else proc.wait(1)
    out, err = proc.logs()
    sys.stdout.write(out[seen:])
    if rc not in (0, None) and err.strip():
        console.print(f"[red]{err.strip()[-800:]}[/red]")
    return 0 if rc in (0, None, -15, 143) else 1
