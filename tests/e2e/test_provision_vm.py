"""Provisioning and verification on 2 real VMs (vagrant provider): the playbook and the
testinfra checks that the netns test runs, plus DPDK taking each VM's data NIC
(uio_pci_generic) and testpmd on h1 sending across to h2, counted by testpmd on h2.

Slow: two TCG-emulated guests boot and provision in 10-15 minutes on a loaded machine,
so it runs only with HPNLAB_VM_PROVISION=1 (marked `vm`; HPNLAB_SKIP_VM=1 skips it too).
`make lab-up` in tests/e2e/test_vagrant.py provisions VMs on every run anyway.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpnlab.cli.provision import run_playbook
from hpnlab.cli.verify import verify
from hpnlab.providers import open_lab
from hpnlab.state import LabState
from hpnlab.topology import load_lab

pytestmark = [pytest.mark.vm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
HPNLAB = [sys.executable, "-m", "hpnlab.cli"]


@pytest.fixture(scope="module")
def vm_lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("VMs through libvirt need root")
    if os.environ.get("HPNLAB_SKIP_VM") == "1":
        pytest.skip("HPNLAB_SKIP_VM=1")
    if os.environ.get("HPNLAB_VM_PROVISION") != "1":
        pytest.skip("10-15 min on TCG: set HPNLAB_VM_PROVISION=1 to run it")
    tmp = tmp_path_factory.mktemp("vmprov")
    name = f"pv{os.getpid() % 100000}"
    labfile = tmp / "lab.yml"
    labfile.write_text(re.sub(r"(?m)^name:.*$", f"name: {name}", (REPO / "lab.yml").read_text(), count=1))
    env = dict(os.environ, HPNLAB_STATE_DIR=str(tmp / "state"))
    argv = [*HPNLAB, "--lab", str(labfile), "--provider", "vagrant"]
    try:
        up = subprocess.run([*argv, "up"], env=env, capture_output=True, text=True, timeout=1500)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        provider = open_lab(load_lab(labfile, provider="vagrant"))
        provider.state = LabState(name, tmp / "state")
        yield {"provider": provider, "tmp": tmp, "labfile": labfile, "env": env, "argv": argv}
    finally:
        subprocess.run([*argv, "down"], env=env, capture_output=True, text=True, timeout=600)


def test_provision_verify_and_dpdk_across_vms(vm_lab):
    provider, inv = vm_lab["provider"], vm_lab["tmp"] / "inventory"
    first = run_playbook(provider, inv)
    assert first.ok, first.failures
    for host in ("h1", "h2"):
        assert first.facts[host]["dpdk_testpmd"]["pps"] > 0, first.facts

    report = verify(provider, inv)
    assert report.ok, [c.__dict__ for c in report.failures] or report.errors
    assert ("h2", "dpdk NIC eth1 bound") in {(c.host, c.check) for c in report.checks if c.status == "passed"}

    hosts = provider.hosts()
    hosts["h2"].run(["sysctl", "-w", "net.ipv4.tcp_tw_reuse=0"])
    proc = subprocess.run([*vm_lab["argv"], "verify", "--inventory-dir", str(inv)], env=vm_lab["env"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "FAILED host h2: sysctl net.ipv4.tcp_tw_reuse" in proc.stderr, proc.stderr

    second = run_playbook(provider, inv)
    assert second.ok, second.failures
    third = run_playbook(provider, inv)
    assert third.ok and third.changed == 0, third.changed_tasks
    print(f"\n[vm] provision first {first.seconds:.1f}s, repair {second.seconds:.1f}s, idempotent "
          f"{third.seconds:.1f}s; testpmd pps " + ", ".join(
              f"{h}={f['dpdk_testpmd']['pps']}" for h, f in sorted(first.facts.items())))

    # testpmd on h1 sends to h2's MAC; testpmd on h2 counts what arrives
    h2_mac = provider.lab.hosts["h2"].dpdk_nic.mac
    eal = "--no-telemetry --huge-unlink -m 64 --lcores 0@0,1@0 -a $(cat /var/lib/hpnlab/dpdk-nic)"
    rx = hosts["h2"].start(f"timeout -s INT 8 dpdk-testpmd {eal} --file-prefix rx -- --forward-mode=rxonly "
                           f"--stats-period 1 --total-num-mbufs=2048 </dev/null", name="testpmd-rx")
    time.sleep(3)
    tx = hosts["h1"].run(f"timeout -s INT 3 dpdk-testpmd {eal} --file-prefix tx -- --forward-mode=txonly "
                         f"--eth-peer=0,{h2_mac} --stats-period 1 --total-num-mbufs=2048 </dev/null",
                         timeout=60, check=False)
    rx.wait(30)
    out, _err = rx.logs()
    received = max([int(n) for n in re.findall(r"RX-packets:\s+(\d+)", out)] or [0])
    sent = max([int(n) for n in re.findall(r"TX-packets:\s+(\d+)", tx.stdout)] or [0])
    print(f"[vm] testpmd h1 → h2: sent {sent}, h2 counted {received}")
    assert sent > 0 and received > 0, (tx.stdout[-1500:], out[-1500:])
