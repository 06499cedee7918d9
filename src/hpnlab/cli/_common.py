"""What the subcommand modules share: opening the lab and showing progress."""
from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console

from ..providers import Provider, open_lab

console = Console(stderr=True, highlight=False)


def provider_from(args) -> Provider:
    return open_lab(args.lab, provider=args.provider)


@contextmanager
def progress(title: str):
    """A spinner with the current step; each finished step is printed with its time."""
    started = time.monotonic()
    with console.status(title) as status:
        def step(message: str) -> None:
            console.print(f"  [dim]{time.monotonic() - started:6.2f}s[/dim] {message}")
            status.update(f"{title}: {message}")
        yield step
