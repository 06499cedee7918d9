"""What a lab run killed with kill -9 leaves on static machines (hpnlab.static_machines: the
hosts of a netns lab with an sshd each, whose kernel has no netem, so an impairment there is a
tbf qdisc, an nftables loss table, an iptables-nft NFQUEUE rule and a delay-line process) is
removed by the next run, by `hpnlab cleanup` and by `hpnlab down`; a live run's is left alone,
and so is everything on the machines that is not hpnlab's. A run that ends normally leaves no
empty mangle table behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab.static_machines import Machines
from hpnlab.testing import REPO, unique_lab_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A lab run's part that matters here: it starts (begin_run, as every lab command does), impairs
# h1's data NIC (delay, loss, rate) and holds it ("wait": until killed) or ends normally ("exit").
DRIVER = """
import sys, time
from hpnlab import impair
from hpnlab.providers import open_lab
from hpnlab.topology.model import Impairment
provider = open_lab("lab.yml")
provider.begin_run(lambda m: print(m, flush=True))
if sys.argv[1] != "start":
    h1 = provider.host("h1")
    h1.python = sys.executable   # the machines share this file system: this venv's hpnlab runs the delay line
    with impair.applied(h1, "lan0", Impairment(delay_ms=5, loss_pct=1, rate_bps=100_000_000), 7):
        print("applied", flush=True)
        if sys.argv[1] == "wait":
            time.sleep(600)
"""


def _sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _on(ns: str, *argv: str) -> str:
    return _sh("ip", "netns", "exec", ns, *argv)


def _cmdline(pid: str) -> bytes:
    """A process's command line; empty for one that ended after `ip netns pids` listed it."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _found(ns: str) -> dict:
    """What is on machine `ns`: its qdiscs, nftables tables, mangle rules and delay lines."""
    delay_lines = [pid for pid in _sh("ip", "netns", "pids", ns).split() if b"hpnlab.impair.delayq" in _cmdline(pid)]
    return {"qdiscs": _on(ns, "tc", "qdisc", "show", "dev", "lan0", "root") + _on(ns, "tc", "qdisc", "show", "dev",
                                                                                   "eth2", "root"),
            "tables": sorted(line.split(None, 1)[1] for line in _on(ns, "nft", "list", "tables").splitlines()),
            "mangle": [r for r in _on(ns, "iptables-nft", "-t", "mangle", "-S").splitlines() if r.startswith("-A")],
            "delay_lines": delay_lines}


@pytest.fixture
def static_lab(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the machines are network namespaces: root")
    made = Machines(tmp_path / "machines")
    try:
        made.up(REPO / "lab.yml", name=unique_lab_name("sl"), ifnames={"data": "lan0"})
        work = tmp_path / "work"
        work.mkdir()
        (work / "lab.yml").write_text(made.lab_path.read_text())
        # state and the registry of live labs of the test's own: `hpnlab cleanup` sees this lab only
        env = dict(os.environ, HPNLAB_STATE_DIR=str(tmp_path / "state"), HPNLAB_RUN_DIR=str(tmp_path / "run"),
                   HPNLAB_STATIC_INVENTORY=str(made.inventory_path), PYTHONPATH=str(REPO / "src"))
        yield made, work, env
    finally:
        if "env" in locals():
            subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", "lab.yml", "down"], cwd=work, env=env,
                           capture_output=True, timeout=120, check=False)
        made.down()


def test_a_killed_runs_impairments_go_and_nothing_else(static_lab):
    machines, work, env = static_lab
    ns = machines.namespace("h1")

    def hpnlab(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", "lab.yml", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"hpnlab {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc

    def run(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", DRIVER, mode], cwd=work, env=env, capture_output=True,
                              text=True, timeout=120, check=True).stdout

    def killed_run(meanwhile: bool = False) -> list[str]:
        """A run that impairs h1's data NIC and is killed with kill -9 meanwhile: its leftovers stay.
        `meanwhile`: another run starts while it is live and leaves what it made alone. What the
        run said before it was killed."""
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, "wait"], cwd=work, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            said = []
            while not said or said[-1] not in ("applied\n", ""):
                said.append(proc.stdout.readline())     # type: ignore[union-attr]
            assert said[-1] == "applied\n", said + [proc.stderr.read()]     # type: ignore[union-attr]
            left = _found(ns)
            assert "qdisc tbf 4850: root" in left["qdiscs"] and "inet hpnlab_impair" in left["tables"]
            assert any("--comment hpnlab-impair -j NFQUEUE" in r for r in left["mangle"]) and left["delay_lines"]
            if meanwhile:
                assert "another run of lab" in run("start") and _found(ns) == left
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert _found(ns) == left
        return said

    hpnlab("up")
    # the machine's own: a root qdisc on another NIC, an nftables table
    _on(ns, "tc", "qdisc", "add", "dev", "eth2", "root", "handle", "1:", "tbf", "rate", "1mbit", "burst", "20000",
        "latency", "50ms")
    _on(ns, "nft", "add", "table", "inet", "theirs")
    theirs = _found(ns)
    assert theirs["tables"] == ["inet theirs"] and not theirs["mangle"]

    # a run that ends normally takes everything along, the mangle table it made too
    assert "applied" in run("exit")
    assert _found(ns) == theirs

    # (the next run forgets its processes' records and names none: they ended with it)
    assert not [line for line in killed_run(meanwhile=True) if "left by an earlier run" in line]
    # ... and the next run removes a killed run's leftovers
    out = run("start")
    assert "left by an earlier run" in out and "ended delayq-lan0" in out and "nft table ip mangle" in out, out
    assert _found(ns) == theirs

    killed_run()            # ... `hpnlab cleanup` (the lab stays up)
    out = hpnlab("--provider", "static", "cleanup").stderr
    assert "removed qdisc 4850: on lan0" in out, out
    assert _found(ns) == theirs and json.loads(hpnlab("status", "--json").stdout)["up"]

    # ... `hpnlab down`; with a mangle rule of the machine's own, which stays with its table
    _on(ns, "iptables-nft", "-t", "mangle", "-A", "POSTROUTING", "-o", "eth2", "-j", "ACCEPT")
    theirs = _found(ns)
    killed_run()
    hpnlab("down")
    assert _found(ns) == theirs and "ip mangle" in theirs["tables"]
