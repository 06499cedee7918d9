"""The dpdk role's bind tasks take inventory values (a user's static.yml, run as root):
bad ones are refused before anything runs, and the rest reach the scripts as
arguments, never as shell text. Run for real with ansible-playbook on this
machine, where they can only read: no value below names a NIC that exists."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIND = REPO / "ansible/roles/dpdk/tasks/bind.yml"
GOOD = {"hpnlab_dpdk_pci": "", "dpdk_driver": "uio_pci_generic", "hpnlab_dpdk_ifname": "hpnlabnone0",
        "hpnlab_dpdk_mac": "02:00:00:00:00:99"}
BAD = [("hpnlab_dpdk_pci", "0000:03:00.1; touch /tmp/hpnlab-pwned"),
       ("hpnlab_dpdk_pci", "3:0.1"),
       ("dpdk_driver", "uio_pci_generic; reboot"),
       ("dpdk_driver", "e1000e"),
       ("hpnlab_dpdk_ifname", "eth1$(id)"),
       ("hpnlab_dpdk_ifname", "a-name-longer-than-15"),
       ("hpnlab_dpdk_mac", "02:00:00:00:00:99' -o '")]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, str]:
    """One ansible-playbook run, one inventory host per case (all on this machine, connection
    local): `ok` has good values and a state-file path full of shell syntax; badN one bad value
    each. Returns each host's lines of the output."""
    tmp = tmp_path_factory.mktemp("bind")
    hosts = {"ok": {**GOOD, "dpdk_state_file": str(tmp / "$(touch pwned)`touch pwned2`")}}
    hosts |= {f"bad{i}": {**GOOD, "dpdk_state_file": str(tmp / "state"), field: value}
              for i, (field, value) in enumerate(BAD)}
    inventory = {"all": {"hosts": hosts, "vars": {"ansible_connection": "local",
                                                  "ansible_python_interpreter": sys.executable}}}
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "play.yml").write_text(
        f"- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.include_tasks: {BIND}\n")
    ansible = Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(ansible), "-i", str(tmp / "inventory.json"), "-f", "10", str(tmp / "play.yml")],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp),
                               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp / "tmp")})
    assert proc.returncode != 0, proc.stdout
    by_host = {name: [] for name in hosts}
    task = ""
    for line in proc.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line
        for name in hosts:
            if f"[{name}]" in line:
                by_host[name].append(f"{task} {line}")
    by_host["_dir"] = str(tmp)
    return by_host


@pytest.mark.parametrize("case", range(len(BAD)), ids=[f"{f}={v[:16]}" for f, v in BAD])
def test_bad_inventory_values_are_refused_first(run, case):
    lines = run[f"bad{case}"]
    assert len(lines) == 1, lines                  # one result: the check; nothing after it ran
    assert "Check the DPDK NIC's inventory values" in lines[0] and "FAILED" in lines[0], lines
    assert "must be a PCI address" in lines[0], lines
    assert not Path("/tmp/hpnlab-pwned").exists()


def test_values_reach_the_script_as_arguments(run):
    """A state-file path full of shell syntax is a file name to the script, not a command."""
    lines = run["ok"]
    assert "ok: [ok]" in lines[0], lines           # the check passed
    assert "Find the DPDK NIC" in lines[1] and "FAILED" in lines[1], lines      # no such NIC here
    assert "no PCI NIC with MAC 02:00:00:00:00:99 or name hpnlabnone0" in lines[1], lines
    assert not (Path(run["_dir"]) / "pwned").exists() and not (Path(run["_dir"]) / "pwned2").exists()
