"""`hpnlab lab NAME [options]` — run one of the kernel labs against the running lab."""
from __future__ import annotations

import time
from pathlib import Path

from ..labs import LABS, lab_module
from ._common import add_format, add_up_option, console, ensure_up, print_json, progress, provider_from

HELP = "run a lab (p2p, nat, backlog, epoll, close, pktgen, rudp) on the running lab's hosts and write a report"


def add_arguments(parser) -> None:
    add_up_option(parser)
    parser.add_argument("--results", metavar="DIR", help="results root (default: results/)")
    sub = parser.add_subparsers(dest="lab_name", metavar="NAME", required=True)
    for name in LABS:
        module = lab_module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        add_format(p)           # after the lab's name: `hpnlab lab nat --format json`


def run(args) -> int:
    from ..hosts import CommandError
    from ..labs._kit import LabError
    module = lab_module(args.lab_name)
    provider = provider_from(args)
    started = time.monotonic()
    with progress(f"lab {args.lab_name} on {provider.lab.name} ({provider.name})") as step:
        ensure_up(provider, args, step)
        try:
            result = module.run(provider, args, step)
        except (LabError, CommandError, TimeoutError) as exc:
            # a host that did not do what the lab asked: name it, no traceback (the lab has
            # already stopped what it started on every host); cli.main prints it with its hint
            raise LabError(f"lab {args.lab_name}: {exc}", hint=getattr(exc, "hint", None)) from exc
    seconds = time.monotonic() - started
    summary = result.get("summary")
    if args.format == "json":
        print_json("lab", {"lab": args.lab_name, "topology": provider.lab.name, "provider": provider.name,
                           "seconds": round(seconds, 3), "report": str(Path(result["report"]).resolve()),
                           "dir": str(Path(result["dir"]).resolve()), "summary": summary})
        return 0
    console.print(f"[green]lab {args.lab_name} done[/green] in {seconds:.1f}s; report: {result['report']}")
    if summary:
        console.print(summary)
    return 0
