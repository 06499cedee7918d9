"""`hpnlab provision`: write inventory/<lab>.yml and run ansible/site.yml against the lab.

The playbook's own output goes to .lab/<lab>/provision.log, its events with their
times to provision-events.jsonl; the terminal shows one line a task, then a table
host × (ok, changed, failed, unreachable, testpmd pps).
A failure names the host, the task and the reason, and exits non-zero.
`--release` gives back what provisioning took from the machine (netns labs:
hugepages, hugetlbfs mounts, machine sysctls) and removes the generated
inventory; `make lab-down` runs it first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import inventory, machine
from ..providers import ProviderError
from ._common import console, progress, provider_from

HELP = "provision the lab's hosts with Ansible (kernel tuning, hugepages, DPDK, tools)"
REPO = Path(__file__).resolve().parents[3]


def ansible_dir() -> Path:
    return Path(os.environ.get("HPNLAB_ANSIBLE_DIR") or REPO / "ansible")


def mitogen_env(provider_name: str) -> dict[str, str]:
    """Ansible settings that run a lab's SSH hosts through Mitogen's strategy.

    Each plain Ansible task starts a new Python on the host that compiles Ansible's
    module_utils from a zip, no bytecode cache: ~4.5 s a task on a TCG guest. Mitogen
    keeps one interpreter per host and imports each module once, which halves a VM
    provisioning. netns hosts (own connection plugin, the controller's Python) gain
    nothing and keep Ansible's strategy. HPNLAB_ANSIBLE_STRATEGY=linear turns it off.
    """
    strategy = os.environ.get("HPNLAB_ANSIBLE_STRATEGY", "mitogen_linear")
    if provider_name == "netns" or not strategy.startswith("mitogen"):
        return {}
    import ansible_mitogen
    return {"ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
            "ANSIBLE_STRATEGY": strategy}


def add_arguments(parser) -> None:
    parser.add_argument("--inventory-dir", default="inventory", metavar="DIR",
                        help="where to write <lab>.yml (default: inventory)")
    parser.add_argument("--static-inventory", metavar="FILE",
                        help="static provider: your hosts (default: inventory/static.yml)")
    parser.add_argument("--limit", metavar="HOSTS", help="only these hosts (Ansible --limit pattern)")
    parser.add_argument("--check", action="store_true", help="dry run: report what would change")
    parser.add_argument("--release", action="store_true",
                        help="give back the machine resources provisioning took (hugepages, mounts, sysctls)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Ansible's own output")


@dataclass
class Outcome:
    rc: int
    seconds: float
    stats: dict = field(default_factory=dict)           # host → {ok, changed, failures, unreachable, ...}
    failures: list = field(default_factory=list)        # [{host, task, msg, status}]
    facts: dict = field(default_factory=dict)           # host → facts the roles set (dpdk_testpmd, ...)
    changed_tasks: list = field(default_factory=list)   # [(host, task)]
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures

    @property
    def changed(self) -> int:
        return sum(s.get("changed", 0) for s in self.stats.values())


def run_playbook(provider, inventory_dir: str | Path = "inventory", step=lambda _m: None,
                 limit: str | None = None, check: bool = False, verbose: bool = False,
                 static_inventory: str | Path | None = None, playbook: str = "site.yml") -> Outcome:
    """Write the inventory and run the playbook; return what happened (never raises on task failure)."""
    lab = provider.lab
    if lab.provider != "static" and not provider.is_up():
        raise ProviderError(f"lab {lab.name} is not up: run `make lab-up` (or `hpnlab up`) first")
    inv = inventory.write(lab, provider, inventory_dir, static_inventory)
    step(f"wrote {inv}")
    provider.state.dir.mkdir(parents=True, exist_ok=True)
    log = provider.state.dir / "provision.log"
    adir = ansible_dir()
    events_path = provider.state.dir / "provision-events.jsonl"     # kept: the run's timeline
    events_path.write_text("")
    env = dict(os.environ, ANSIBLE_CONFIG=str(adir / "ansible.cfg"), HPNLAB_EVENTS=str(events_path),
               ANSIBLE_CALLBACKS_ENABLED="hpnlab_events", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCAL_TEMP=str(provider.state.dir / "ansible-tmp"),
               ANSIBLE_HOME=str(provider.state.dir / "ansible-home"),
               **mitogen_env(lab.provider))
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), str(adir / playbook)]
    if limit:
        argv += ["--limit", limit]
    if check:
        argv += ["--check", "--diff"]
    started = time.monotonic()
    outcome = Outcome(rc=0, seconds=0.0, log=log)
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=None if verbose else out, stderr=subprocess.STDOUT if not verbose else None,
                                stdin=subprocess.DEVNULL, env=env)
        pos = 0
        try:
            while True:
                done = proc.poll() is not None
                pos = _drain(events_path, pos, outcome, step)
                if done:
                    break
                time.sleep(0.1)
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        finally:
            pos = _drain(events_path, pos, outcome, step)
    outcome.rc = proc.returncode
    outcome.seconds = time.monotonic() - started
    if outcome.rc != 0 and not outcome.failures:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
        outcome.failures.append({"host": "-", "task": "ansible-playbook", "status": "error",
                                 "msg": f"exit status {outcome.rc}: " + " / ".join(tail)})
    _save(provider, outcome)
    return outcome


def _drain(path: Path, pos: int, outcome: Outcome, step) -> int:
    try:
        with open(path) as f:
            f.seek(pos)
            while True:
                line = f.readline()
                if not line.endswith("\n"):
                    break
                pos += len(line.encode())
                _event(json.loads(line), outcome, step)
    except FileNotFoundError:
        pass
    return pos


def _event(ev: dict, outcome: Outcome, step) -> None:
    kind = ev.get("event")
    if kind == "result":
        host, task, status = ev["host"], ev["task"], ev["status"]
        if ev.get("facts"):
            outcome.facts.setdefault(host, {}).update(ev["facts"])
        if status == "changed":
            outcome.changed_tasks.append((host, task))
            step(f"[yellow]changed[/yellow] {host}: {task}")
        elif status in ("failed", "unreachable"):
            outcome.failures.append({"host": host, "task": task, "status": status, "msg": ev.get("msg", "")})
            step(f"[red]{status}[/red] {host}: {task}: {ev.get('msg', '')[:300]}")
    elif kind == "stats":
        outcome.stats = ev["hosts"]


def _save(provider, outcome: Outcome) -> None:
    record = {"when": time.time(), "seconds": round(outcome.seconds, 2), "rc": outcome.rc,
              "changed": outcome.changed, "stats": outcome.stats, "failures": outcome.failures,
              "facts": outcome.facts}
    path = provider.state.dir / "provision.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True))


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


def release(provider, step=lambda _m: None) -> list[str]:
    """Give back what provisioning took from this machine for the lab (netns labs)."""
    if provider.lab.provider != "netns":
        return []
    done = machine.release(provider.lab.name)
    for d in done:
        step(d)
    return done


def run(args) -> int:
    provider = provider_from(args)
    lab = provider.lab
    if args.release:
        with progress(f"lab {lab.name}: releasing machine resources") as step:
            try:
                done = release(provider, step)
            except machine.MachineError as exc:
                console.print(f"[red]hpnlab: {exc}[/red]")
                return 1
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
    if outcome.ok:
        console.print(f"[green]lab {lab.name} provisioned[/green] in {outcome.seconds:.1f}s, "
                      f"{outcome.changed} change(s); Ansible log: {outcome.log}")
        return 0
    hosts = sorted({f["host"] for f in outcome.failures})
    console.print(f"[red]provisioning failed on {', '.join(hosts)}[/red] after {outcome.seconds:.1f}s "
                  f"(Ansible log: {outcome.log})")
    return 1
