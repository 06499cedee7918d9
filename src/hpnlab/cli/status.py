"""`hpnlab status`: the lab's hosts, NICs (with their live state), sysctls read back,
networks and the processes labs started. Exit status 3 (table) if the lab is down."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..state import LIVE_DIR, registered
from ._common import add_format, print_json, provider_from

HELP = "hosts, NICs, addresses, sysctls and impairments of the lab"


def add_arguments(parser) -> None:
    add_format(parser)


def run(args) -> int:
    provider = provider_from(args)
    if args.format == "json":
        print_json("status", payload(provider))
        return 0
    return 0 if show(provider) else 3


def payload(provider) -> dict:
    return {**provider.status(), "other_labs_up": other_labs_up(provider)}


def other_labs_up(provider) -> list[dict]:
    """Every other lab that is up or coming up (any provider, any state directory), from
    the registry of live labs."""
    kinds = sorted({p.name.split(".", 1)[0] for p in LIVE_DIR.glob("*.*")}) if LIVE_DIR.exists() else []
    return [{"lab": name, "provider": kind, "state": str(entry["state"] or "")}
            for kind in kinds for name, entry in registered(kind).items()
            if entry["live"] and (kind, name) != (provider.name, provider.lab.name)]


def say_other_labs_up(provider, out: Console) -> None:
    others = other_labs_up(provider)
    if others:
        out.print("[yellow]other labs still up[/yellow]: "
                  + ", ".join(f"{o['lab']} ({o['provider']})" for o in others)
                  + " — `hpnlab --lab FILE down` with its lab file, or `hpnlab cleanup --only NAME`",
                  soft_wrap=True)


def show(provider) -> bool:
    st = provider.status()
    out = Console()
    state = "[green]up[/green]" if st["up"] else "[yellow]down[/yellow]"
    out.print(f"lab [bold]{st['lab']}[/bold] — provider {st['provider']} — {state}")
    hosts = Table(title="hosts", title_justify="left")
    for col in ("host", "role", "where", "NIC", "network", "address", "MAC", "MTU", "state"):
        hosts.add_column(col)
    for h in st["hosts"]:
        for i, nic in enumerate(h["nics"] or [{}]):
            first = i == 0
            live = ",".join(nic.get("addrs", [])) if "addrs" in nic else ""
            addr = nic.get("address", "")
            if live and live != addr:
                addr = f"{addr} [red](live: {live})[/red]"
            hosts.add_row(h["name"] if first else "", h["role"] if first else "", h["where"] if first else "",
                          nic.get("ifname", "-"), nic.get("network", "-"), addr, nic.get("mac", ""),
                          str(nic.get("mtu", "")), nic.get("state", "-"))
    out.print(hosts)
    sysctl = Table(title="sysctls (read back from each host)", title_justify="left")
    sysctl.add_column("host")
    sysctl.add_column("key")
    sysctl.add_column("value")
    for h in st["hosts"]:
        for i, (k, v) in enumerate(h["sysctls"].items()):
            sysctl.add_row(h["name"] if i == 0 else "", k, v)
    out.print(sysctl)
    nets = Table(title="networks", title_justify="left")
    for col in ("network", "kind", "subnet", "MTU", "members", "impairment", "mechanism"):
        nets.add_column(col)
    for n in st["networks"]:
        nets.add_row(n["name"], n["kind"], n["subnet"], str(n["mtu"]), " ".join(n["members"]),
                     n["impair"], n["mechanism"])
    out.print(nets)
    if st.get("processes"):
        procs = Table(title="processes started by labs", title_justify="left")
        for col in ("host", "name", "pid", "command"):
            procs.add_column(col)
        for p in st["processes"]:
            procs.add_row(p["host"], p["name"], str(p["pid"]), p["cmd"][:80])
        out.print(procs)
    say_other_labs_up(provider, out)
    return st["up"]
