"""`hpnlab` — one module per subcommand in this package.

A subcommand module defines HELP (one line), add_arguments(parser) and
run(args) -> int. Modules are found by name, so adding a subcommand is adding
a file. `exec_` is `exec` (trailing underscores are dropped).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..providers import ProviderError
from ..state import LabBusy
from ..topology import PROVIDERS, TopologyError


def _subcommands():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield info.name.rstrip("_").replace("_", "-"), f"{__name__}.{info.name}"


def _broken(name: str, exc: Exception):
    """One subcommand that cannot load must not take `down` or `cleanup` with it."""
    def run(_args) -> int:
        print(f"hpnlab: the `{name}` command cannot load: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpnlab", description="A lab for high-performance Linux network programming.")
    parser.add_argument("--lab", default="lab.yml", metavar="FILE", help="topology file (default: lab.yml)")
    parser.add_argument("--provider", choices=PROVIDERS, help="override the provider named in the lab file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in _subcommands():
        try:
            module = importlib.import_module(module_name)
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
        except Exception as exc:  # noqa: BLE001 — reported when the command is used
            if name in sub.choices:
                del sub.choices[name]
            p = sub.add_parser(name, help=f"(broken: {exc})")
            p.set_defaults(func=_broken(name, exc))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:   # free trailing words (a tcpdump filter after the options) go where a command wants them
        if not hasattr(args, "trailing") or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, args.trailing, getattr(args, args.trailing) + extra)
    try:
        return args.func(args) or 0
    except TopologyError as exc:
        print(f"hpnlab: invalid lab file:\n{exc}", file=sys.stderr)
        return 2
    except (ProviderError, LabBusy) as exc:
        print(f"hpnlab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hpnlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
