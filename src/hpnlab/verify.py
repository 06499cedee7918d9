"""Verification of a lab's hosts: the testinfra checks of tests/infra, run on every host.

Per host, one pytest run: netns hosts inside their namespace with testinfra's local
backend; VMs and real machines over one SSH connection per host (hpnlab's own SshHost,
host key checked, as a testinfra backend: a shell command per check, no Ansible module
per check). While the checks run, every host listens on a TCP port so that peers can
prove a TCP connect over each data network; the listeners end with the verify run. The
result is a Report of host × check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from testinfra.backend.base import BaseBackend

from . import inventory
from .errors import HpnlabError
from .hosts.ssh import SshHost, bare_spec, reach_of
from .paths import repo_root
from .providers import ProviderError

DEFAULT_PORT = 47999
LISTEN_TIMEOUT = 120.0      # python3's start-up on an emulated (TCG) guest of a busy machine

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
    return Path(os.environ.get("HPNLAB_INFRA_DIR") or repo_root() / "tests" / "infra")


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


def _netns(hv: dict) -> bool:
    return hv.get("ansible_connection") == "hpnlab_netns"


def ssh_host(hv: dict) -> SshHost:
    """The host an inventory's (merged) variables describe, reached as Ansible would be."""
    return SshHost.from_reach(bare_spec(hv["hpnlab_host"]), reach_of(hv))


# -- testinfra over hpnlab's SSH ------------------------------------------------------

def testinfra_host(hv: dict):
    """The testinfra host the checks use: local inside a netns host's namespace (verify runs
    them there), else one SSH connection (SshHost: key checked, jump host, sudo) for all."""
    import testinfra
    import testinfra.host
    if _netns(hv):
        return testinfra.get_host("local://")
    ssh = ssh_host(hv)
    try:
        _ = ssh.conn    # connect now: `hpnlab verify` starts the listeners meanwhile
    except Exception:   # noqa: BLE001 — each check says why it cannot connect
        pass
    backend = _SshBackend(ssh)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host


class _SshBackend(BaseBackend):
    NAME = "hpnlab-ssh"

    def __init__(self, ssh: SshHost):
        super().__init__(ssh.name)
        self.ssh = ssh          # runs every command as root (sudo -n where the login is not root)

    def run(self, command: str, *args: str, **kwargs):
        cmd = self.quote(command, *args)
        r = self.ssh.run(cmd, timeout=120, check=False)
        return self.result(r.rc, self.encode(cmd), r.stdout, r.stderr)


# -- listeners ------------------------------------------------------------------------

class _Listener:
    """LISTENER on one host, until close(): in the namespace for a netns host, else on an SSH
    channel of its own (the first connection of the run: it checks the host key)."""

    def __init__(self, hv: dict, port: int):
        self.proc = self.ssh = self.stdin = None
        self.connected = True       # False: no SSH (or a refused host key), so no checks either
        py = ["python3", "-c", LISTENER, str(port)]
        if _netns(hv):
            self.proc = subprocess.Popen(["ip", "netns", "exec", hv["hpnlab_netns"], *py], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        else:
            self.ssh = ssh_host(hv)
            self.py = py

    def ready(self) -> str | None:
        """None once it listens, else why not."""
        if self.proc is not None:
            assert self.proc.stdout is not None and self.proc.stderr is not None     # (pipes)
            if "listening" in self.proc.stdout.readline():
                return None
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            return err.strip()[-300:] or "no answer"
        assert self.ssh is not None
        try:
            # kept: a file object's end (even garbage collection) closes the listener's stdin
            self.stdin, out, err = self.ssh.attach(self.py, timeout=LISTEN_TIMEOUT)
        except HpnlabError as exc:          # a host key refused: the message and what to do
            self.connected = False
            return f"{exc}" + (f" (hint: {exc.hint})" if exc.hint else "")
        except Exception as exc:            # no connection: the checks cannot run there either
            self.connected = False
            return f"no SSH to {self.ssh.user}@{self.ssh.ssh_address}: {exc}"
        try:
            if "listening" in out.readline():
                return None
            return err.read().decode(errors="replace").strip()[-300:] or "no answer"
        except TimeoutError:
            return f"no answer in {LISTEN_TIMEOUT:g}s"

    def close(self) -> None:
        if self.proc is not None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.ssh is not None:
            self.ssh.close()        # the channel's end closes the listener's stdin


# -- the run ----------------------------------------------------------------------------

def services_of(provider) -> list[dict]:
    """Services a running lab says should listen: state.json `services` ([{host, port, proto, name}])."""
    try:
        state = provider.state.read() or {}
    except Exception:
        return []
    return list(state.get("services") or [])


def _pytest_argv(hv: dict, junit: Path) -> list[str]:
    pytest = [sys.executable, "-m", "pytest", str(infra_dir()), "-q", "-p", "no:cacheprovider",
              "--rootdir", str(infra_dir()), "-o", "addopts=", "--junitxml", str(junit)]
    return ["ip", "netns", "exec", hv["hpnlab_netns"], *pytest] if _netns(hv) else pytest


def verify(provider, inventory_dir: str | Path = "inventory", step=lambda _m: None,
           hosts: list[str] | None = None, port: int = DEFAULT_PORT,
           static_inventory: str | Path | None = None, services: list[dict] | None = None) -> Report:
    lab = provider.lab
    if not provider.exists_before_up and not provider.is_up():
        raise ProviderError(f"lab {lab.name} is not up: run `make lab-up` first")
    inv = inventory.write(provider, inventory_dir, static_inventory)
    hostvars = inventory.read(inv)
    names = hosts or list(lab.hosts)
    unknown = [h for h in names if h not in hostvars]
    if unknown:
        raise ProviderError(f"no host {', '.join(unknown)} in lab {lab.name} (hosts: {', '.join(hostvars)})")
    started = time.monotonic()
    report = Report()
    env = dict(os.environ, HPNLAB_INVENTORY=str(inv.resolve()), HPNLAB_VERIFY_PORT=str(port),
               HPNLAB_MACHINE_PID=str(os.getpid()),
               HPNLAB_SERVICES=json.dumps(services if services is not None else services_of(provider)),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    # Every host listens (peers of the checked hosts connect to it) while the checks start:
    # pytest's start-up and its connection overlap the listeners', and the checks wait
    # (tests/infra/conftest.py) until HPNLAB_VERIFY_READY exists.
    listeners = {name: _Listener(hostvars[name], port) for name in lab.hosts}
    with tempfile.TemporaryDirectory(prefix="hpnlab-verify-") as tmp, \
            ThreadPoolExecutor(max_workers=max(len(listeners), len(names))) as pool:
        ready = Path(tmp) / "listening"
        runs = {name: subprocess.Popen(_pytest_argv(hostvars[name], Path(tmp) / f"{name}.xml"),
                                       env=dict(env, HPNLAB_HOST=name, HPNLAB_VERIFY_READY=str(ready)),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       stdin=subprocess.DEVNULL, cwd=tmp)
                for name in names}
        try:
            for name, why in zip(listeners, pool.map(_Listener.ready, listeners.values())):
                if why:
                    report.errors[name] = f"cannot listen on tcp/{port}: {why}"
            for name, run in runs.items():
                if not listeners[name].connected:       # no SSH there: no checks either
                    run.kill()
            ready.touch()
            step(f"listeners up on tcp/{port}")
            for name, (out, err) in zip(runs, pool.map(lambda run: run.communicate(), runs.values())):
                if not listeners[name].connected:
                    continue
                checks = _parse_junit(name, Path(tmp) / f"{name}.xml")
                if not checks:
                    lines = (err.strip() or out.strip()).splitlines()[-3:]
                    report.errors[name] = (f"the checks did not run (exit {runs[name].returncode}): "
                                           + " / ".join(lines))
                report.checks += checks
                bad = sum(c.status in ("failed", "error") for c in checks)
                step(f"{name}: {len(checks)} checks, {bad} failing")
        finally:
            for run in runs.values():
                if run.poll() is None:
                    run.kill()
                    run.communicate()
            for listener in listeners.values():
                listener.close()
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
        name = props.get("check") or case.get("name") or "?"
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
