from __future__ import annotations

import time

from ._common import console, progress, provider_from

HELP = "bring the lab's hosts up (does nothing if it is already up)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    provider = provider_from(args)
    started = time.monotonic()
    with progress(f"lab {provider.lab.name} ({provider.name}) up") as step:
        created = provider.up(step)
    if created:
        console.print(f"[green]lab {provider.lab.name} is up[/green] ({provider.name}, "
                      f"{len(provider.lab.hosts)} hosts) in {time.monotonic() - started:.2f}s")
    from . import status
    status.show(provider)
    return 0
