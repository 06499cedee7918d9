from __future__ import annotations

import os
from pathlib import Path

from ..providers import ProviderError
from ._common import console, positive_int, provider_from

HELP = "tcpdump on a network (its bridge/link) or on HOST:NIC; -w writes a pcap"


def add_arguments(parser) -> None:
    parser.add_argument("target", help="a network name (e.g. data) or HOST:NIC (e.g. h1:eth1 or h1:data)")
    parser.add_argument("-w", "--write", metavar="FILE.pcap", help="write packets to a pcap file")
    parser.add_argument("-c", "--count", type=positive_int, help="stop after this many packets")
    parser.add_argument("filter", nargs="*", help="a tcpdump filter expression, e.g. tcp port 80")
    parser.set_defaults(trailing="filter")


def run(args) -> int:
    provider = provider_from(args)
    if not provider.is_up():
        raise ProviderError(f"lab {provider.lab.name} is not up: there is nothing to capture",
                            hint=f"`hpnlab --lab {args.lab} up` (or `make lab-up`) first")
    extra = []
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        extra += ["-U", "-w", str(Path(args.write).resolve())]
    if args.count:
        extra += ["-c", str(args.count)]
    argv = provider.capture_argv(args.target, extra + args.filter)
    console.print(f"[dim]{' '.join(argv)}[/dim]")
    os.execvp(argv[0], argv)
