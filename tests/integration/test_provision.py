"""Provision a 2-host netns lab with Ansible, verify it with testinfra, catch drift, stay idempotent,
and give the machine back (hugepages, hugetlbfs mounts, machine sysctls) afterwards."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab import machine
from hpnlab.provision import run_playbook
from hpnlab.testing import write_lab_file
from hpnlab.verify import verify

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def hugepages_total() -> int:
    return int(re.search(r"HugePages_Total:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))


def mounts_of(lab: str) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if f"/run/hpnlab/hugetlbfs/{lab}/" in line.split()[4]]


def test_provision_verify_drift_and_idempotence(lab_factory, tmp_path):
    before_pages = hugepages_total()
    before_rmem = Path("/proc/sys/net/core/rmem_max").read_text()
    lab = lab_factory(REPO / "lab.yml")
    name = lab.lab.name
    inv = tmp_path / "inventory"
    try:
        # a dry run (provision --check) says what would change and changes nothing on the machine
        dry = run_playbook(lab, inv, check=True)
        assert dry.ok, dry.failures
        assert dry.changed > 0
        assert hugepages_total() == before_pages and not mounts_of(name) and name not in machine.holders()

        first = run_playbook(lab, inv)
        assert first.ok, first.failures
        assert first.changed > 0
        for host in ("h1", "h2"):
            assert first.facts[host]["dpdk_testpmd"]["pps"] > 0, first.facts
        assert hugepages_total() == before_pages + 128
        assert len(mounts_of(name)) == 2

        report = verify(lab, inv)
        assert report.ok, [c.__dict__ for c in report.failures] or report.errors
        checks = {(c.host, c.check) for c in report.checks if c.status == "passed"}
        assert ("h2", "sysctl net.ipv4.tcp_tw_reuse") in checks
        assert ("h1", "tcp h2 over data") in checks and ("h2", "dpdk vdev on eth2 starts") in checks

        # drift by hand inside h2: `hpnlab verify` (what `make lab-verify` runs) fails naming h2 and the key
        lab.host("h2").run(["sysctl", "-w", "net.ipv4.tcp_tw_reuse=0"])
        labfile = tmp_path / "lab.yml"
        write_lab_file(labfile, name)
        env = dict(os.environ, HPNLAB_STATE_DIR=str(lab.state.dir.parent), COLUMNS="200")
        proc = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", str(labfile), "verify",
                               "--inventory-dir", str(inv)], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
        assert failed == ["FAILED host h2: sysctl net.ipv4.tcp_tw_reuse: net.ipv4.tcp_tw_reuse is '0', "
                          "the client profile wants '1'"], proc.stderr

        # provisioning repairs the drift and changes nothing else: this second run is also the
        # idempotence check (one Ansible run fewer): every task on both hosts reports ok but h2's
        # sysctl task, which says it set the drifted key and no other; the repair holds
        second = run_playbook(lab, inv)
        assert second.ok, second.failures
        assert second.changed_tasks == [
            ("h2", "kernel_tuning : The host's sysctl profile, inside its network namespace",
             "set net.ipv4.tcp_tw_reuse")], second.changed_tasks
        assert lab.host("h2").run(["sysctl", "-n", "net.ipv4.tcp_tw_reuse"]).stdout.strip() == "1"
        print(f"\nprovision first {first.seconds:.1f}s, repair and idempotent {second.seconds:.1f}s; "
              f"verify {report.seconds:.1f}s; testpmd pps "
              + ", ".join(f"{h}={f['dpdk_testpmd']['pps']}" for h, f in sorted(first.facts.items())))
    finally:
        lab.down()          # `hpnlab down`: the namespaces go, and what provisioning took from the machine
    assert hugepages_total() == before_pages
    assert mounts_of(name) == []
    assert Path("/proc/sys/net/core/rmem_max").read_text() == before_rmem
    assert name not in machine.holders()


def test_unreachable_host_is_named(lab_factory, tmp_path):
    """A host whose namespace is gone: the run fails naming it; the other host is provisioned.
    `hpnlab cleanup --only LAB` then gives back what h1's provisioning took."""
    before_pages = hugepages_total()
    lab = lab_factory(REPO / "lab.yml")
    try:
        subprocess.run(["ip", "netns", "del", lab.host_ns("h2")], check=True)
        lab.is_up = lambda: True        # the state still says up; the namespace is what is missing
        out = run_playbook(lab, tmp_path / "inventory")
        assert not out.ok
        assert [(f["host"], f["status"]) for f in out.failures] == [("h2", "unreachable")]
        assert "does not exist" in out.failures[0]["msg"]
        assert out.stats["h1"]["failures"] == 0 and out.stats["h1"]["unreachable"] == 0
        assert lab.lab.name in machine.holders()
    finally:
        type(lab).cleanup(lab=lab.lab.name)
    assert lab.lab.name not in machine.holders()
    assert hugepages_total() == before_pages
    assert mounts_of(lab.lab.name) == []
