"""`hpnlab` — one module per subcommand in this package.

A subcommand module defines HELP (one line), add_arguments(parser) and
run(args) -> int. Modules are found by name, so adding a subcommand is adding
a file. `exec_` is `exec` (trailing underscores are dropped).

Only the module of the subcommand that runs is imported (the others' HELP is
read from their source), so a module that cannot load affects nobody but its
own command: `down` and `cleanup` work whatever state `lab` is in.

Errors: every error meant for the user is an HpnlabError, handled once in
main(): its message, its hint, its exit status, no traceback (HPNLAB_DEBUG=1
prints it).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import math
import os
import pkgutil
import sys
import traceback
from pathlib import Path

from ..errors import HpnlabError
from ..topology.model import PROVIDERS

DEBUG_HINT = "HPNLAB_DEBUG=1 shows the traceback"


def _subcommands() -> dict[str, str]:
    """Command name → module name, for every module here not starting with '_'."""
    return {info.name.rstrip("_").replace("_", "-"): info.name
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
            if not info.name.startswith("_")}


def _help_of(module: str) -> str:
    """A module's HELP string, read from its source without importing it."""
    try:
        tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HELP" for t in node.targets):
                return ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError):
        pass
    return ""


def _load(name: str, module: str):
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except Exception as exc:
        raise HpnlabError(f"the `{name}` command cannot load: {type(exc).__name__}: {exc}",
                          hint=f"the other commands still work; {DEBUG_HINT}") from exc


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", default="lab.yml", metavar="FILE", help="topology file (default: lab.yml)")
    parser.add_argument("--provider", choices=PROVIDERS, help="override the provider named in the lab file")


class _Silent(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def command_in(argv: list[str]) -> str | None:
    """The subcommand an argument list asks for (None if it names none)."""
    pre = _Silent(add_help=False)
    _global_options(pre)
    pre.add_argument("command", nargs="?")
    try:
        known, _rest = pre.parse_known_args(argv)
    except ValueError:      # a bad global option: the full parser reports it
        return None
    return known.command


def build_parser(load: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; `load` names the subcommands whose modules are imported
    (default: all of them, e.g. for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="hpnlab", description="A lab for high-performance Linux network programming.",
                                     epilog=f"Errors print a message and a hint; {DEBUG_HINT}.")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in _subcommands().items():
        if load is None or name in load:
            module = _load(name, module_name)
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
        else:       # its line of help only shows in the list of commands (no command given)
            sub.add_parser(name, help=None if load else _help_of(module_name))
    return parser


def _report(exc: BaseException, message: str, hint: str | None) -> None:
    if os.environ.get("HPNLAB_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc)
    print(f"hpnlab: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command = command_in(argv)
        parser = build_parser([command] if command else [])
        args, extra = parser.parse_known_args(argv)
        for dest, value in vars(args).items():     # float options parse 'nan' and 'inf' too
            if isinstance(value, float) and not math.isfinite(value):
                parser.error(f"argument --{dest.replace('_', '-')}: must be a finite number, got {value}")
        if extra:   # free trailing words (a tcpdump filter after the options) go where a command wants them
            if not hasattr(args, "trailing") or any(word.startswith("-") for word in extra):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            setattr(args, args.trailing, getattr(args, args.trailing) + extra)
        return args.func(args) or 0
    except HpnlabError as exc:
        _report(exc, str(exc), exc.hint or DEBUG_HINT)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        _report(exc, "interrupted", None)
        return 130
    except SystemExit as exc:   # sys.exit("why") in code that also runs alone (agents): the same contract
        if not isinstance(exc.code, str):
            raise
        _report(exc, exc.code, DEBUG_HINT)
        return 1
    except OSError as exc:      # a tool or file the command needed (its name is in the message)
        _report(exc, str(exc), DEBUG_HINT)
        return 1
    except Exception as exc:    # noqa: BLE001 — a bug: say so in one line, not a traceback
        _report(exc, f"internal error: {type(exc).__name__}: {exc}",
                f"this is a bug in hpnlab; {DEBUG_HINT}, please include it in a report")
        return 1


if __name__ == "__main__":
    sys.exit(main())
