"""`hpnlab verify`: run the testinfra checks (tests/infra) on every host of the lab.

Per host, one pytest run: netns hosts inside their namespace with testinfra's
local backend, VMs and real machines over SSH through the generated inventory.
While the checks run, every host listens on a TCP port (--port) so that peers
can prove a TCP connect over each data network; the listeners are this
command's child processes and end with it. The result is a table check × host;
the exit status is 0 only if every check holds, else 1 with each failing host
and check named.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import inventory
from ..providers import ProviderError
from ._common import console, progress, provider_from

HELP = "verify the lab's hosts with testinfra: a table host × check; non-zero names what fails"
REPO = Path(__file__).resolve().parents[3]
DEFAULT_PORT = 47999

# Listens on every address until its stdin closes (the verify run ends): nothing outlives it.
LISTENER = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
def serve():
    while True:
        c, _ = s.accept(); c.close()
threading.Thread(target=serve, daemon=True).start()
print("listening", flush=True)
sys.stdin.read()
"""


def infra_dir() -> Path:
    return Path(os.environ.get("HPNLAB_INFRA_DIR") or REPO / "tests" / "infra")


def add_arguments(parser) -> None:
    parser.add_argument("--inventory-dir", default="inventory", metavar="DIR",
                        help="where to write <lab>.yml (default: inventory)")
    parser.add_argument("--static-inventory", metavar="FILE",
                        help="static provider: your hosts (default: inventory/static.yml)")
    parser.add_argument("--host", action="append", metavar="HOST", help="only this host (repeatable)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"TCP port the hosts listen on for the connect checks (default {DEFAULT_PORT})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


@dataclass
class Check:
    host: str
    check: str
    status: str          # passed, failed, skipped, error
    message: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)      # host → why its run produced no results

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status in ("failed", "error")]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors

    def to_dict(self) -> dict:
        return {"ok": self.ok, "seconds": round(self.seconds, 2), "errors": self.errors,
                "checks": [c.__dict__ for c in self.checks]}


def _host_argv(lab, name: str, hv: dict, inv: Path, junit: Path) -> list[str]:
    pytest = [sys.executable, "-m", "pytest", str(infra_dir()), "-q", "-p", "no:cacheprovider",
              "--rootdir", str(infra_dir()), "-o", "addopts=", "--junitxml", str(junit)]
    if hv.get("ansible_connection") == "hpnlab_netns":
        return ["ip", "netns", "exec", hv["hpnlab_netns"], *pytest, "--hosts=local://"]
    # absolute: the checks run with cwd in a temporary directory
    return [*pytest, f"--hosts=ansible://{name}", f"--ansible-inventory={inv.resolve()}"]


def _listener_argv(hv: dict, port: int) -> list[str]:
    py = ["python3", "-c", LISTENER, str(port)]
    if hv.get("ansible_connection") == "hpnlab_netns":
        return ["ip", "netns", "exec", hv["hpnlab_netns"], *py]
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-p", str(hv.get("ansible_port", 22))]
    if hv.get("ansible_ssh_private_key_file"):
        ssh += ["-i", str(hv["ansible_ssh_private_key_file"])]
    ssh += shlex.split(str(hv.get("ansible_ssh_common_args") or ""))   # a jump host (ProxyCommand), as Ansible uses it
    target = f"{hv['ansible_user']}@{hv['ansible_host']}" if hv.get("ansible_user") else hv["ansible_host"]
    return [*ssh, target, shlex.join(py)]


def services_of(provider) -> list[dict]:
    """Services a running lab says should listen: state.json `services` ([{host, port, proto, name}])."""
    try:
        state = provider.state.read() or {}
    except Exception:
        return []
    return list(state.get("services") or [])


def verify(provider, inventory_dir: str | Path = "inventory", step=lambda _m: None,
           hosts: list[str] | None = None, port: int = DEFAULT_PORT,
           static_inventory: str | Path | None = None, services: list[dict] | None = None) -> Report:
    lab = provider.lab
    if lab.provider != "static" and not provider.is_up():
        raise ProviderError(f"lab {lab.name} is not up: run `make lab-up` first")
    inv = inventory.write(lab, provider, inventory_dir, static_inventory)
    hostvars = inventory.read(inv)
    names = hosts or list(lab.hosts)
    unknown = [h for h in names if h not in hostvars]
    if unknown:
        raise ProviderError(f"no host {', '.join(unknown)} in lab {lab.name} (hosts: {', '.join(hostvars)})")
    started = time.monotonic()
    report = Report()
    # testinfra's ansible backend runs `ansible-inventory`: the venv's bin/ must be on PATH
    # even when hpnlab runs as .venv/bin/hpnlab from a shell without the venv activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    env = dict(os.environ, PATH=path, HPNLAB_INVENTORY=str(inv.resolve()), HPNLAB_VERIFY_PORT=str(port),
               HPNLAB_MACHINE_PID=str(os.getpid()),
               HPNLAB_SERVICES=json.dumps(services if services is not None else services_of(provider)),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    listeners = []
    with tempfile.TemporaryDirectory(prefix="hpnlab-verify-") as tmp:
        try:
            for name in lab.hosts:          # every host listens: peers of the checked hosts connect to it
                proc = subprocess.Popen(_listener_argv(hostvars[name], port), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                listeners.append((name, proc))
            for name, proc in listeners:
                line = proc.stdout.readline()
                if "listening" not in line:
                    err = proc.stderr.read() if proc.poll() is not None else ""
                    report.errors[name] = f"cannot listen on tcp/{port}: {err.strip()[-300:] or 'no answer'}"
            step(f"listeners up on tcp/{port}")

            def one(name: str):
                junit = Path(tmp) / f"{name}.xml"
                proc = subprocess.run(_host_argv(lab, name, hostvars[name], inv, junit),
                                      env=dict(env, HPNLAB_HOST=name), capture_output=True, text=True,
                                      stdin=subprocess.DEVNULL, cwd=tmp)
                return name, proc, junit

            with ThreadPoolExecutor(max_workers=min(4, len(names))) as pool:
                for name, proc, junit in pool.map(one, names):
                    checks = _parse_junit(name, junit)
                    if not checks:
                        out = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
                        report.errors[name] = f"the checks did not run (exit {proc.returncode}): " + " / ".join(out)
                    report.checks += checks
                    bad = sum(c.status in ("failed", "error") for c in checks)
                    step(f"{name}: {len(checks)} checks, {bad} failing")
        finally:
            for _name, proc in listeners:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            for _name, proc in listeners:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    report.seconds = time.monotonic() - started
    return report


def _parse_junit(host: str, path: Path) -> list[Check]:
    if not path.exists():
        return []
    checks = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if "NOTSET" in case.get("name", ""):     # a parametrized check with nothing to check here
            continue
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        name = props.get("check") or case.get("name", "?")
        status, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = _first_line(node.get("message") or node.text or "")
                if message == "collection failure":     # the reason is in the traceback's E lines
                    reasons = [ln[1:].strip() for ln in (node.text or "").splitlines() if ln.startswith("E ")]
                    message = f"collection failure: {reasons[0] if reasons else 'see pytest output'}"
                break
        checks.append(Check(host, name, status, message))
    return checks


def _first_line(message: str) -> str:
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("AssertionError: "):
            return line.removeprefix("AssertionError: ")
    text = message.strip().splitlines()
    first = text[0] if text else ""
    return first.removeprefix("AssertionError: ").removeprefix("Skipped: ")


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
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        show(report, hosts)
    for host, why in report.errors.items():
        console.print(f"[red]FAILED[/red] host {host}: {why}")
    for c in report.failures:
        console.print(f"[red]FAILED[/red] host {c.host}: {c.check}: {c.message}")
    if report.ok:
        console.print(f"[green]all {len(report.checks)} checks hold[/green] on {len(hosts)} host(s) "
                      f"in {report.seconds:.1f}s")
        return 0
    names = sorted({c.host for c in report.failures} | set(report.errors))
    console.print(f"[red]verification failed[/red] on {', '.join(names)}: "
                  + "; ".join(f"{c.host}: {c.check}" for c in report.failures))
    return 1
