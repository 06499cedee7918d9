"""What runs on a lab host (a VM, a real machine) runs under that host's python3, which has
only the box's Python packages (box/packages.txt: yaml, cffi, uvloop, greenlet), never the
controller's venv: an agent module importing rich or fabric fails on the guests only (the
KV lab's `kv serve` did). Each module started on lab hosts must import, and the CLI
subcommands started there must parse, with the controller-only packages blocked."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
CONTROLLER_ONLY = ["rich", "fabric", "paramiko", "invoke", "pyroute2", "ansible", "ansible_runner", "testinfra",
                   "matplotlib", "scapy", "redis", "pytest"]
# `python3 -m <module>` on a lab host (grep the labs, bench, pktgen, ustack and kv for "-m hpnlab.")
GUEST_MODULES = ["hpnlab.servers", "hpnlab.bench.probe", "hpnlab.bench.loadgen", "hpnlab.labcode",
                 "hpnlab.pktgen.agent", "hpnlab.ustack.run", "hpnlab.ustack.peer", "hpnlab.ustack.pytcp_peer",
                 "hpnlab.impair.delayq", "hpnlab.labs.p2p", "hpnlab.labs.nat", "hpnlab.labs.rendezvous",
                 "hpnlab.labs.rudp", "hpnlab.labs.epoll", "hpnlab.labs.close", "hpnlab.labs.backlog"]
BLOCK = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {CONTROLLER_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on a lab host)")
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(SRC)!r})
"""


def _python(code: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code, *argv], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("module", GUEST_MODULES)
def test_a_module_started_on_lab_hosts_imports_without_the_controllers_packages(module):
    proc = _python(f"import {module}")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_blocker_blocks():
    proc = _python("import hpnlab.cli._common")
    assert proc.returncode != 0 and "not on a lab host" in proc.stderr


def test_kv_serve_parses_its_arguments_on_a_lab_host():
    proc = _python("import runpy, sys; sys.argv = ['hpnlab', 'kv', 'serve', '--help']; "
                   "runpy.run_module('hpnlab.cli', run_name='__main__')")
    assert proc.returncode == 0 and "--appendonly" in proc.stdout, proc.stderr[-2000:]
