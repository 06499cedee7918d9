"""A sysctl key can only ever name a file under /proc/sys: the loader refuses
anything else, and so does the Ansible module that writes the values (it also
runs from inventories a user edits). Both are checked with keys that once
escaped: an absolute path, `..` components, a slash inside a dotted key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpnlab.topology import TopologyError, parse_lab, sysctls

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "ansible/plugins/modules/hpnlab_sysctl.py"
ESCAPES = ["/etc/hostname", "../../etc/x", "net.ipv4/../../x", "net..core", ".net.core.somaxconn",
           "net.core.somaxconn/", "NET.core.somaxconn", "net.core.somaxconn\n", "net core", "",
           "kernel/../../etc", "kernel..", "net.core.s\u00f6maxconn", "net.core.\uff53omaxconn", "net.core.x\u0000",
           "~/x", "net.core.*", "."]


@pytest.mark.parametrize("key", ESCAPES)
@pytest.mark.parametrize("where", ["machine", "profile", "host"])
def test_loader_refuses_keys_outside_proc_sys(key, where):
    table = json.dumps({key: "1"})        # JSON is YAML: the key exactly as written
    text = {"machine": f"machine: {{sysctls: {table}}}\nhosts: {{h1: {{}}}}\n",
            "profile": f"profiles: {{p: {table}}}\nhosts: {{h1: {{profile: p}}}}\n",
            "host": f"hosts: {{h1: {{sysctls: {table}}}}}\n"}[where]
    with pytest.raises(TopologyError) as err:
        parse_lab(text, "t.yml")
    assert "is not a sysctl name" in str(err.value) and "t.yml:1:" in str(err.value)


def test_key_to_path_stays_under_proc_sys(tmp_path):
    assert sysctls.key_to_path("net.core.somaxconn") == Path("/proc/sys/net/core/somaxconn")
    for key in ESCAPES:
        with pytest.raises(ValueError, match="not a sysctl name"):
            sysctls.key_to_path(key)
    # a name that is well-formed but resolves elsewhere (a symlink under the root) is refused too
    root = tmp_path / "sys"
    (root / "net").mkdir(parents=True)
    (root / "net" / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside"):
        sysctls.key_to_path("net.out.x", root)


def run_module(values: dict, check_mode: bool, tmp_path: Path, persist: Path | None = None) -> dict:
    """The Ansible module as Ansible runs it: a process reading its arguments from a JSON file."""
    args = {"ANSIBLE_MODULE_ARGS": {"values": values, "_ansible_check_mode": check_mode,
                                    **({"persist": str(persist)} if persist else {})}}
    (tmp_path / "args.json").write_text(json.dumps(args))
    proc = subprocess.run([sys.executable, str(MODULE), str(tmp_path / "args.json")],
                          check=False, capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("key", ["/etc/hostname", "../../etc/x", "net.ipv4/../../x"])
def test_ansible_module_refuses_keys_outside_proc_sys(key, tmp_path):
    out = run_module({key: "pwned", "net.core.somaxconn": "4096"}, True, tmp_path)
    assert out.get("failed") and "is not a sysctl name" in out["msg"], out
    assert out.get("key") == key


@pytest.mark.parametrize("key", ["net.ipv4", "net.core.no_such_key"])
def test_ansible_module_refuses_a_key_that_is_no_file_before_writing(key, tmp_path):
    """A directory (net.ipv4) or a missing key fails the task naming it, before any key is written."""
    out = run_module({"net.core.somaxconn": "1", key: "1"}, False, tmp_path)
    assert out.get("failed") and f"sysctl {key}: no such key on this host" in out["msg"], out
    assert Path("/proc/sys/net/core/somaxconn").read_text().strip() != "1"


def test_ansible_module_writes_nothing_for_a_bad_key(tmp_path):
    """Not even in real (non-check) mode, and not the good keys listed before the bad one."""
    victim = tmp_path / "victim"
    victim.write_text("original\n")
    persist = tmp_path / "sysctl.d" / "60-hpnlab.conf"
    out = run_module({"net.core.somaxconn": "1", str(victim): "pwned"}, False, tmp_path, persist)
    assert out.get("failed") and "is not a sysctl name" in out["msg"], out
    assert victim.read_text() == "original\n"
    assert not persist.exists()
    assert Path("/proc/sys/net/core/somaxconn").read_text().strip() != "1"


@pytest.mark.skipif(os.geteuid() != 0, reason="reading every sysctl back needs root for some keys")
def test_ansible_module_accepts_real_keys(tmp_path):
    have = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    out = run_module({"net.core.somaxconn": have}, True, tmp_path)
    assert not out.get("failed") and out["changed"] is False, out


def test_machine_sysctls_refuse_keys_outside_proc_sys(tmp_path):
    """The netns provider's machine-wide sysctls (hpnlab.machine, run as root) check keys too."""
    victim = tmp_path / "victim"
    victim.write_text("original\n")
    code = ("import sys; from hpnlab import machine\n"
            "try:\n"
            f"    machine.hold_sysctls('t11', {{{str(victim)!r}: 'pwned'}})\n"
            "except machine.MachineError as exc:\n"
            "    print(exc); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HPNLAB_RUN_DIR": str(tmp_path / "run")})
    assert proc.returncode == 3 and "is not a sysctl name" in proc.stdout, proc.stdout + proc.stderr
    assert victim.read_text() == "original\n"
