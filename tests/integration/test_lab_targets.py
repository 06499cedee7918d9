"""A make target that brought a lab up for itself takes it down again (unless KEEP=1), and
`make lab-down` / `hpnlab status` of one lab name the other labs still up (issue 12)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab.state import registered
from hpnlab.testing import unique_lab_name, write_lab_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
QUICK = "LAB_ARGS=--scenarios cone-cone --tries 2"


def _namespaces(lab: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{lab}-")]


def test_a_target_downs_the_lab_it_brought_up_unless_keep(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("netns labs need root")
    nat = unique_lab_name("tn")
    nat_file = write_lab_file(tmp_path / "nat.yml", nat, source=REPO / "labs" / "p2p" / "nat.yml")
    other_file = write_lab_file(tmp_path / "other.yml", unique_lab_name("to"))
    env = dict(os.environ, HPNLAB_STATE_DIR=str(tmp_path / "state"))

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    try:
        run = make("lab-p2p-nat", f"NAT_LAB={nat_file}", QUICK)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "taking down the lab this target brought up" in run.stdout
        assert nat not in registered("netns") and not _namespaces(nat)

        kept = make("lab-p2p-nat", f"NAT_LAB={nat_file}", QUICK + " --format json", "KEEP=1")
        assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
        result = json.loads(kept.stdout)        # `hpnlab lab --format json`: one object, nothing else
        assert (result["kind"], result["version"], result["lab"], result["topology"]) == ("hpnlab/lab", 1, "nat", nat)
        assert Path(result["report"]).is_file() and result["summary"], result
        assert registered("netns")[nat]["live"] and _namespaces(nat)

        down = make("lab-down", f"LAB={other_file}", "PROVIDER=netns")
        assert down.returncode == 0, down.stderr[-3000:]
        assert "other labs still up" in down.stderr and f"{nat} (netns)" in down.stderr, down.stderr
        status = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", str(other_file), "status"],
                                env=env, capture_output=True, text=True, timeout=60, check=False)
        assert status.returncode == 3 and f"{nat} (netns)" in status.stdout, status.stdout
    finally:
        subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", str(nat_file), "down"], env=env,
                       capture_output=True, timeout=120, check=False)
    assert not _namespaces(nat)


def test_lab_up_option_brings_the_lab_up_provisioned(tmp_path):
    """`hpnlab lab NAME --up` leaves a lab as `make lab-up` would: up and provisioned."""
    if os.geteuid() != 0:
        pytest.skip("netns labs need root")
    name = unique_lab_name("tu")
    lab_file = write_lab_file(tmp_path / "lab.yml", name)
    env = dict(os.environ, HPNLAB_STATE_DIR=str(tmp_path / "state"))
    cli = [sys.executable, "-m", "hpnlab.cli", "--lab", str(lab_file), "--provider", "netns"]
    try:
        run = subprocess.run([*cli, "lab", "--up", "--results", str(tmp_path / "results"), "epoll",
                              "--mib", "1", "--bursts", "4", "--no-strace"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        provisioned = json.loads((tmp_path / "state" / name / "provision.json").read_text())
        assert provisioned["rc"] == 0 and not provisioned["failures"], provisioned
        assert (tmp_path / "inventory" / f"{name}.yml").is_file()
    finally:
        subprocess.run([*cli, "down"], cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False)
