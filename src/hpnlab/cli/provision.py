"""`hpnlab provision`: write inventory/<lab>.yml and run ansible/site.yml against the lab
(hpnlab.provision does it); the terminal shows one line a task, then a table
host × (ok, changed, failed, unreachable, testpmd pps).
A failure names the host, the task and the reason, and exits non-zero.
`--release` gives back what provisioning took from the machine (netns labs:
hugepages, hugetlbfs mounts, machine sysctls) and removes the generated
inventory; `make lab-down` runs it first.
"""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .. import inventory
from ..errors import HpnlabError
from ..provision import Outcome, release, run_playbook
from ._common import add_inventory_options, console, progress, provider_from

HELP = "provision the lab's hosts with Ansible (kernel tuning, hugepages, DPDK, tools)"


def add_arguments(parser) -> None:
    add_inventory_options(parser)
    parser.add_argument("--limit", metavar="HOSTS", help="only these hosts (Ansible --limit pattern)")
    parser.add_argument("--check", action="store_true", help="dry run: report what would change")
    parser.add_argument("--release", action="store_true",
                        help="give back the machine resources provisioning took (hugepages, mounts, sysctls)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Ansible's own output")


def show(outcome: Outcome, out: Console | None = None) -> None:
    out = out or Console()
    table = Table(title="provisioning", title_justify="left")
    for col in ("host", "ok", "changed", "failed", "unreachable", "skipped", "testpmd pps"):
        table.add_column(col, justify="left" if col == "host" else "right")
    for host, s in sorted(outcome.stats.items()):
        pps = (outcome.facts.get(host, {}).get("dpdk_testpmd") or {}).get("pps")
        table.add_row(host, str(s.get("ok", 0)), str(s.get("changed", 0)),
                      _red(s.get("failures", 0)), _red(s.get("unreachable", 0)), str(s.get("skipped", 0)),
                      f"{pps:,}" if isinstance(pps, int) else "-")
    out.print(table)
    for f in outcome.failures:
        console.print(f"[red]FAILED[/red] host {f['host']}: {f['task']}: {f['msg']}")


def _red(n: int) -> str:
    return f"[red]{n}[/red]" if n else "0"


def run(args) -> int:
    provider = provider_from(args)
    lab = provider.lab
    if args.release:
        with progress(f"lab {lab.name}: releasing machine resources") as step:
            done = release(provider, step)     # a MachineError reaches cli.main
            generated = inventory.remove(lab, args.inventory_dir)
            if generated:
                done.append(f"removed {generated}")
                step(f"removed {generated}")
        console.print(f"released {len(done)} item(s)" if done else "nothing to release")
        return 0
    with progress(f"lab {lab.name} ({lab.provider}) provisioning") as step:
        outcome = run_playbook(provider, args.inventory_dir, step, limit=args.limit, check=args.check,
                               verbose=args.verbose, static_inventory=args.static_inventory)
    show(outcome)
    if outcome.ok and args.check:
        console.print(f"[green]lab {lab.name}: dry run[/green] in {outcome.seconds:.1f}s, nothing changed; "
                      f"provisioning would make {outcome.changed} change(s); Ansible log: {outcome.log}")
        return 0
    if outcome.ok:
        console.print(f"[green]lab {lab.name} provisioned[/green] in {outcome.seconds:.1f}s, "
                      f"{outcome.changed} change(s); Ansible log: {outcome.log}")
        return 0
    hosts = sorted({f["host"] for f in outcome.failures} - {"-"})
    raise HpnlabError(f"provisioning failed{' on ' + ', '.join(hosts) if hosts else ''} after {outcome.seconds:.1f}s "
                      "(each failure is named above)",
                      hint=f"the Ansible log: {outcome.log}; `hpnlab provision -v` shows Ansible's own output"
                           + (f"; does --limit {args.limit!r} name hosts of the lab?" if args.limit and not hosts
                              else ""))
