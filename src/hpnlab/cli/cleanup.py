from __future__ import annotations

from ..providers import provider_class
from ..topology import PROVIDERS
from ._common import console, lab_name, progress

HELP = "find and remove leftovers of any hpnlab lab (even after kill -9, without state)"


def add_arguments(parser) -> None:
    parser.add_argument("--only", metavar="LAB", type=lab_name, help="only this lab's leftovers")


def run(args) -> int:
    removed = []
    with progress("cleanup") as step:
        for name in ([args.provider] if args.provider else PROVIDERS):
            try:
                cls = provider_class(name)
            except Exception as exc:   # a provider whose tools are not installed has nothing to clean
                step(f"{name}: skipped ({exc})")
                continue
            removed += cls.cleanup(step, lab=args.only)
    console.print(f"[green]removed {len(removed)} leftover object(s)[/green]" if removed
                  else "nothing to clean up")
    return 0
