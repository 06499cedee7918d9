"""A VM lab whose run was killed outright (kill -9 of everything, or the machine
restarted) leaves libvirt's files behind: its domains', networks' and disks'
definitions, which `virsh` cannot see while libvirtd is stopped and which come back
when it starts, and a state file that still says "up". `hpnlab cleanup` finds them on
disk, takes the lab for dead because none of its guests runs, and removes everything;
also when the machine's restart has wiped hpnlab's registry of labs (/run), so only
libvirt's files say the lab was there.

Real libvirt, no guest booted: the objects are defined, never started (~10 s)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hpnlab.state import LIVE_DIR, LabState, registered
from hpnlab.testing import REPO, unique_lab_name
from hpnlab.vm import BOOT_DIR, POOL, lab_prefix, virt
from hpnlab.vm import setup as vmsetup

pytestmark = [pytest.mark.vm]

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]
DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os></domain>"""
NETWORK = "<network><name>{name}</name></network>"


@pytest.fixture(params=["registered", "registry wiped"])
def killed_lab(request, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("libvirt needs root")
    if os.environ.get("HPNLAB_SKIP_VM") == "1":
        pytest.skip("HPNLAB_SKIP_VM=1")
    vmsetup.ensure_packages(print)
    if virt.qemu_processes(""):
        pytest.skip("a VM lab is running here: the test must stop libvirtd (run it under the VM lock)")
    vmsetup.ensure_daemons(print)
    vmsetup.ensure_pool(print)
    name = unique_lab_name("kl")
    prefix = lab_prefix(name)
    for kind, text in (("define", DOMAIN.format(name=f"{prefix}h1")),
                       ("net-define", NETWORK.format(name=f"{prefix}data"))):
        xml = tmp_path / f"{kind}.xml"
        xml.write_text(text)
        subprocess.run([*VIRSH, kind, str(xml)], check=True, capture_output=True)
    subprocess.run([*VIRSH, "vol-create-as", POOL, f"{prefix}h1.img", "1M"], check=True, capture_output=True)
    BOOT_DIR.mkdir(parents=True, exist_ok=True)
    (BOOT_DIR / f"{prefix}vmlinuz").write_bytes(b"a lab's kernel copy")
    state = LabState(name, tmp_path / "state")
    state.dir.mkdir(parents=True)
    state.write({"provider": "vagrant", "phase": "up", "prefix": prefix, "domains": [f"{prefix}h1"]})
    # registered by an `up` that has ended, as every `up` does once the lab is up
    registered_up = request.param == "registered"
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from hpnlab.state import "
                    "register_live; register_live('vagrant', sys.argv[1], Path(sys.argv[2]))",
                    name, str(state.path)], check=True) if registered_up else None
    assert vmsetup.stop_daemons(print, force=True), "libvirtd was not one hpnlab started"
    try:
        yield {"name": name, "prefix": prefix, "state": state, "registered": registered_up}
    finally:
        if virt.kept_on_disk(prefix):
            vmsetup.ensure_daemons(print)
            virt.remove_all(prefix, print)
        (LIVE_DIR / f"vagrant.{name}").unlink(missing_ok=True)
        (BOOT_DIR / f"{prefix}vmlinuz").unlink(missing_ok=True)
        vmsetup.stop_daemons(print)


def test_cleanup_removes_what_libvirt_keeps_on_disk_of_a_killed_lab(killed_lab):
    prefix = killed_lab["prefix"]
    assert not virt.available()
    assert virt.kept_on_disk(prefix) == [f"{prefix}data", f"{prefix}h1", f"{prefix}h1.img"]
    if killed_lab["registered"]:
        assert registered("vagrant")[killed_lab["name"]]["live"]       # by its state, up
    # the state directory of its own: the cleanup judges this lab, not what REPO/.lab holds
    r = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--provider", "vagrant", "cleanup"],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env=dict(os.environ, HPNLAB_STATE_DIR=str(killed_lab["state"].dir.parent)))
    assert r.returncode == 0, r.stdout + r.stderr
    if killed_lab["registered"]:
        assert "nothing of it runs" in r.stdout + r.stderr
        assert killed_lab["state"].read() is None
    assert virt.kept_on_disk(prefix) == []
    assert not (BOOT_DIR / f"{prefix}vmlinuz").exists()
    assert killed_lab["name"] not in registered("vagrant")
    assert not virt.available(), "cleanup left libvirtd running"
