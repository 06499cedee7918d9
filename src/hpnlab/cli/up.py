"""`hpnlab up`: bring the lab up (nothing changes if it is up), then show its status."""
from __future__ import annotations

import time

from . import status
from ._common import add_format, console, print_json, progress, provider_from

HELP = "bring the lab's hosts up (does nothing if it is already up)"


def add_arguments(parser) -> None:
    add_format(parser)


def run(args) -> int:
    provider = provider_from(args)
    started = time.monotonic()
    with progress(f"lab {provider.lab.name} ({provider.name}) up") as step:
        created = provider.up(step)
    seconds = time.monotonic() - started
    if args.format == "json":
        print_json("up", {"created": created, "seconds": round(seconds, 3), **status.payload(provider)})
        return 0
    if created:
        console.print(f"[green]lab {provider.lab.name} is up[/green] ({provider.name}, "
                      f"{len(provider.lab.hosts)} hosts) in {seconds:.2f}s")
    status.show(provider)
    return 0
