"""`vm: {iommu: true}`: guests on q35 with QEMU's emulated Intel IOMMU and
iommu_platform=on NICs, so DPDK can use vfio-pci with real IOMMU groups (Debian's
kernels have no vfio noiommu mode built in). `hpnlab up` of one guest with a NIC
on a dpdk LAN (no provisioning: a second guest would only add a TCG boot), that
NIC bound to vfio-pci through sysfs, its group's /dev/vfio node there; `down`
leaves nothing."""
from __future__ import annotations

import os
import subprocess

import pytest

from hpnlab.testing import unique_lab_name

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1800)]

LAB = """\
name: {name}
provider: vagrant
hosts:
  h1: {{cpus: 1, memory: 512}}
networks:
  dpdk: {{type: lan, subnet: 10.79.3.0/24, hosts: [h1]}}
vm:
  iommu: true
"""

BIND_VFIO = r"""
set -eu
pci=$(basename "$(dirname "$(readlink -f /sys/class/net/$1/device)")")
dev=/sys/bus/pci/devices/$pci
modprobe vfio-pci
ip link set dev "$1" down
echo vfio-pci > "$dev/driver_override"
echo "$pci" > "$dev/driver/unbind"
echo "$pci" > /sys/bus/pci/drivers_probe
group=$(basename "$(readlink -f "$dev/iommu_group")")
noiommu=$(cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode 2>/dev/null || echo not-built)
echo "$pci $(basename "$(readlink -f "$dev/driver")") $group $noiommu"
test -c "/dev/vfio/$group"
"""


def test_iommu_guests_bind_a_nic_to_vfio_pci(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("VMs through libvirt need root")
    if os.environ.get("HPNLAB_SKIP_VM") == "1":
        pytest.skip("HPNLAB_SKIP_VM=1")
    from hpnlab.providers import open_lab
    from hpnlab.vm import lab_prefix, virt

    monkeypatch.setenv("HPNLAB_STATE_DIR", str(tmp_path / "state"))
    name = unique_lab_name("iommu")
    lab_file = tmp_path / "lab.yml"
    lab_file.write_text(LAB.format(name=name))
    provider = open_lab(lab_file)
    try:
        provider.up(print)
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", f"{lab_prefix(name)}h1"],
                             capture_output=True, text=True, check=True).stdout
        assert "q35" in xml and "intel-iommu" in xml, xml
        h1 = provider.host("h1")
        groups = h1.run(["sh", "-c", "ls /sys/kernel/iommu_groups | wc -l"]).stdout.strip()
        assert int(groups) > 1, groups
        r = h1.run(["sh", "-c", BIND_VFIO, "bind", h1.nic("dpdk").ifname], check=False, timeout=120)
        assert r.ok, (r.stdout, r.stderr)
        pci, driver, group, noiommu = r.stdout.split()
        print(f"\n[vm] iommu: {groups} IOMMU groups; {pci} bound to {driver}, group {group}, noiommu {noiommu}")
        assert driver == "vfio-pci" and noiommu in ("N", "not-built")
    finally:
        provider.down(print)
    assert not virt.qemu_processes(lab_prefix(name))
    if virt.available():
        assert not virt.domains(lab_prefix(name)) and not virt.networks(lab_prefix(name))
