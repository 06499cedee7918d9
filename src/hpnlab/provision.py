"""Provisioning: write inventory/<lab>.yml and run an Ansible playbook (ansible/site.yml)
against the lab's hosts.

The playbook's own output goes to .lab/<lab>/provision.log, its events with their
times to provision-events.jsonl, a summary to provision.json; `run_playbook` returns an
Outcome (per host: ok, changed, failed, unreachable; the facts the roles set; each failure
with its host, task and reason). `release` gives back what provisioning took from the
machine for labs whose hosts share its kernel.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import inventory
from .paths import repo_root
from .providers import Progress, Provider, ProviderError, _quiet


def ansible_dir() -> Path:
    return Path(os.environ.get("HPNLAB_ANSIBLE_DIR") or repo_root() / "ansible")


def mitogen_env(provider: Provider) -> dict[str, str]:
    """Ansible settings that run a lab's SSH hosts through Mitogen's strategy.

    Each plain Ansible task starts a new Python on the host that compiles Ansible's
    module_utils from a zip, no bytecode cache: ~4.5 s a task on a TCG guest. Mitogen
    keeps one interpreter per host and imports each module once, which halves a VM
    provisioning. A provider whose hosts gain nothing by it (`ansible_mitogen` False: a
    connection that runs the controller's Python) keeps Ansible's strategy.
    HPNLAB_ANSIBLE_STRATEGY=linear turns it off.
    """
    strategy = os.environ.get("HPNLAB_ANSIBLE_STRATEGY", "mitogen_linear")
    if not provider.ansible_mitogen or not strategy.startswith("mitogen"):
        return {}
    import ansible_mitogen
    return {"ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
            "ANSIBLE_STRATEGY": strategy}


@dataclass
class Outcome:
    rc: int
    seconds: float
    stats: dict = field(default_factory=dict)           # host → {ok, changed, failures, unreachable, ...}
    failures: list = field(default_factory=list)        # [{host, task, msg, status}]
    facts: dict = field(default_factory=dict)           # host → facts the roles set (dpdk_testpmd, ...)
    changed_tasks: list = field(default_factory=list)   # [(host, task, what it said it changed)]
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures

    @property
    def changed(self) -> int:
        return sum(s.get("changed", 0) for s in self.stats.values())


def run_playbook(provider: Provider, inventory_dir: str | Path = "inventory", step: Progress = _quiet,
                 limit: str | None = None, check: bool = False, verbose: bool = False,
                 static_inventory: str | Path | None = None, playbook: str = "site.yml") -> Outcome:
    """Write the inventory and run the playbook; return what happened (never raises on task failure)."""
    lab = provider.lab
    if not provider.exists_before_up and not provider.is_up():
        raise ProviderError(f"lab {lab.name} is not up: run `make lab-up` (or `hpnlab up`) first")
    inv = inventory.write(provider, inventory_dir, static_inventory)
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
               **mitogen_env(provider))
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), str(adir / playbook)]
    if limit:
        argv += ["--limit", limit]
    if check:
        argv += ["--check", "--diff"]
    started = time.monotonic()
    outcome = Outcome(rc=0, seconds=0.0, log=log)
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=None if verbose else out, stdin=subprocess.DEVNULL, env=env,
                                stderr=None if verbose else subprocess.STDOUT)
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
            said = ev.get("msg", "")
            outcome.changed_tasks.append((host, task, said))
            step(f"[yellow]changed[/yellow] {host}: {task}" + (f" ({said[:300]})" if said else ""))
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


def release(provider: Provider, step: Progress = _quiet) -> list[str]:
    """Give back what provisioning took from this machine for the lab (the provider's
    `release_machine` hook: something only where the hosts share this machine's kernel)."""
    return provider.release_machine(step)
