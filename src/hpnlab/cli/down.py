from __future__ import annotations

import time

from .. import inventory
from ._common import console, progress, provider_from
from .status import say_other_labs_up

HELP = "remove everything the lab made (hosts, links, processes, state, generated inventory)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    provider = provider_from(args)
    started = time.monotonic()
    with progress(f"lab {provider.lab.name} down") as step:
        provider.down(step)
        generated = inventory.remove(provider.lab)
        if generated:
            step(f"removed {generated}")
    console.print(f"[green]lab {provider.lab.name} is down[/green] in {time.monotonic() - started:.2f}s")
    say_other_labs_up(provider, console)
    return 0
