"""What the subcommand modules share: opening the lab, showing progress, printing JSON.

`--format json` (up, status, exec, lab, verify, bench) prints one JSON object on stdout
and nothing else there (progress and errors go to stderr). Every object starts with

    "kind":    "hpnlab/<command>"     which command's shape it is
    "version": 1                      raised when a key changes meaning or goes away
                                      (new keys may come at any version)

The keys of each command are in the README (section "JSON output").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager

from rich.console import Console

from ..providers import Provider, ProviderError, open_lab

console = Console(stderr=True, highlight=False)
JSON_VERSION = 1


# the argument types live in _args (standard library only: agents parse with them on hosts
# without rich); re-exported here, where the subcommands have always found them
from ._args import (  # noqa: E402, F401
    add_up_option,
    non_negative,
    positive_float,
    positive_int,
    positive_int_list,
    tcp_port,
)


def lab_name(text: str) -> str:
    """A lab's name as lab.yml's `name:` allows it (never '' or a path: cleanup matches on it)."""
    from ..topology.loader import LAB_NAME_RE
    if not LAB_NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a lab name (lower-case letters, digits, '_' or '-', "
                                         "starting with a letter, at most 31)")
    return text


def add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table (for people, the default) or json (for scripts; see the README)")
    parser.add_argument("--json", dest="format", action="store_const", const="json", help="--format json")


def add_inventory_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inventory-dir", default="inventory", metavar="DIR",
                        help="where to write <lab>.yml (default: inventory)")
    parser.add_argument("--static-inventory", metavar="FILE",
                        help="static provider: your hosts (default: inventory/static.yml)")


def print_json(command: str, payload: dict) -> None:
    """One JSON object on stdout, in the versioned envelope this module's docstring describes."""
    json.dump({"kind": f"hpnlab/{command}", "version": JSON_VERSION, **payload}, sys.stdout, indent=2,
              default=str)
    sys.stdout.write("\n")


def provider_from(args) -> Provider:
    return open_lab(args.lab, provider=args.provider)


def ensure_up(provider: Provider, args, step) -> None:
    """What a lab command needs first: with --up a lab that is not up comes up and is
    provisioned, as `make lab-up` does (a lab command relies on the tuning and tools the
    roles install); a lab that is not up then is an error saying how to bring it up."""
    if args.up and not provider.is_up():
        # provision imports Ansible-side machinery: only when it is needed
        from ..provision import run_playbook
        provider.up(step)
        outcome = run_playbook(provider, getattr(args, "inventory_dir", "inventory"), step)
        if not outcome.ok:
            failed = "; ".join(f"{f['host']}: {f['task']}: {f['msg']}" for f in outcome.failures)
            raise ProviderError(f"lab {provider.lab.name} came up but provisioning failed: "
                                f"{failed or f'ansible exited {outcome.rc}'}",
                                hint=f"see {outcome.log}; `hpnlab --lab {args.lab} provision` retries it")
    if not provider.is_up():
        raise ProviderError(f"lab {provider.lab.name} is not up",
                            hint=f"`hpnlab --lab {args.lab} up` (or `make lab-up`), or pass --up")
    ensure_current_code(provider, getattr(args, "inventory_dir", "inventory"), step)


def ensure_current_code(provider: Provider, inventory_dir, step) -> None:
    """Labs run their agents with the hosts' own copy of hpnlab (the labcode role's): after an
    edit or a `git pull` since provisioning that is older code - an option unrecognised, a fix
    missing, figures from code the report does not describe. Bring it up to date first, with
    the labcode role alone."""
    # every lab command and the bench come through here as their run starts: what a killed
    # earlier run left on the hosts may go first (the provider's begin_run)
    provider.begin_run(step)
    from ..labcode import outdated_hosts
    outdated = outdated_hosts(provider)
    if not outdated:
        return
    from ..provision import run_playbook
    step(f"hpnlab on {', '.join(sorted(outdated))} is older than this checkout: updating it")
    outcome = run_playbook(provider, inventory_dir, step, playbook="labcode.yml")
    if not outcome.ok:
        failed = "; ".join(f"{f['host']}: {f['task']}: {f['msg']}" for f in outcome.failures)
        raise ProviderError(f"could not update hpnlab on the hosts of lab {provider.lab.name}: "
                            f"{failed or f'ansible exited {outcome.rc}'}",
                            hint=f"see {outcome.log}; `make lab-provision` (hpnlab provision) re-runs every role")


@contextmanager
def progress(title: str):
    """A spinner with the current step; each finished step is printed with its time."""
    started = time.monotonic()
    with console.status(title) as status:
        def step(message: str) -> None:
            console.print(f"  [dim]{time.monotonic() - started:6.2f}s[/dim] {message}")
            status.update(f"{title}: {message}")
        yield step
