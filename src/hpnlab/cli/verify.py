"""`hpnlab verify`: run the testinfra checks (tests/infra) on every host of the lab
(hpnlab.verify does it) and print a table check × host; the exit status is 0 only if
every check holds, else 1 with each failing host and check named.
"""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..verify import DEFAULT_PORT, Check, Report, verify
from ._common import add_format, add_inventory_options, console, print_json, progress, provider_from, tcp_port

HELP = "verify the lab's hosts with testinfra: a table host × check; non-zero names what fails"


def add_arguments(parser) -> None:
    add_inventory_options(parser)
    parser.add_argument("--host", action="append", metavar="HOST", help="only this host (repeatable)")
    parser.add_argument("--port", type=tcp_port, default=DEFAULT_PORT,
                        help=f"TCP port the hosts listen on for the connect checks (default {DEFAULT_PORT})")
    add_format(parser)


MARK = {"passed": "[green]✓[/green]", "failed": "[red]✗[/red]", "error": "[red]E[/red]", "skipped": "[dim]-[/dim]"}


def show(report: Report, hosts: list[str], out: Console | None = None) -> None:
    out = out or Console()
    table = Table(title="verification (✓ holds, ✗ fails, - not applicable, blank: not a check of that host)",
                  title_justify="left")
    table.add_column("check")
    for h in hosts:
        table.add_column(h, justify="center")
    rows: dict[str, dict[str, Check]] = {}
    for c in report.checks:
        rows.setdefault(c.check, {})[c.host] = c
    for check, by_host in rows.items():
        table.add_row(check, *(MARK[by_host[h].status] if h in by_host else "" for h in hosts))
    out.print(table)


def run(args) -> int:
    provider = provider_from(args)
    lab = provider.lab
    hosts = args.host or list(lab.hosts)
    with progress(f"lab {lab.name} ({lab.provider}) verify") as step:
        report = verify(provider, args.inventory_dir, step, hosts=args.host, port=args.port,
                        static_inventory=args.static_inventory)
    if args.format == "json":
        print_json("verify", {"lab": lab.name, "provider": provider.name, "hosts": hosts, **report.to_dict()})
    else:
        show(report, hosts)
    for host, why in report.errors.items():     # (escaped: "[h1]" in a message is not markup)
        console.print(f"[red]FAILED[/red] host {host}: {escape(why)}")
    for c in report.failures:
        console.print(f"[red]FAILED[/red] host {c.host}: {escape(c.check)}: {escape(c.message)}")
    if report.ok:
        console.print(f"[green]all {len(report.checks)} checks hold[/green] on {len(hosts)} host(s) "
                      f"in {report.seconds:.1f}s")
        return 0
    names = sorted({c.host for c in report.failures} | set(report.errors))
    console.print(f"[red]verification failed[/red] on {', '.join(names)}"
                  + "".join((": " if i == 0 else "; ") + f"{c.host}: {escape(c.check)}"
                            for i, c in enumerate(report.failures)))
    return 1
