"""A fresh machine's first VM bring-up does not wait on libvirt probing QEMU (issue 12).

The condition, made on any machine: libvirt's capability cache empty, /dev/kvm 0600
root:root (no udev gave it the kvm group), and a qemu-system-x86_64 whose guests abort
under KVM (tests/e2e/kvm_fails, first in PATH) while libvirt's `-machine none` probe gets
KVM. A libvirtd that sees that /dev/kvm throws its cache away on every lookup ("KVM was
enabled when probing, but it is not available now") and probes again, ~4 s a time, for
each of vagrant-libvirt's API calls: minutes between "Creating domain" and "Starting
domain". hpnlab's libvirtd for TCG guests sees no usable /dev/kvm: one probe, then none.

The first-up lab is also the `vm: {iommu: true}` lab (one TCG boot for both): its guest
runs on q35 with QEMU's emulated Intel IOMMU and iommu_platform=on NICs, so DPDK can use
vfio-pci with real IOMMU groups (Debian's kernels have no vfio noiommu mode built in).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hpnlab.bench import loadgen
from hpnlab.uring import _build as uring_build
from hpnlab.vm import accel, lab_prefix, virt
from hpnlab.vm import setup as vmsetup

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
WRAPPER = Path(__file__).with_name("kvm_fails") / "qemu-system-x86_64"
CAPS = Path("/var/cache/libvirt/qemu/capabilities")
LAB = """\
name: {name}
provider: vagrant
hosts:
  h1: {{cpus: 1, memory: 512}}
networks:
  data: {{type: lan, subnet: 10.79.1.0/24, hosts: {{h1: 10.79.1.1}}}}
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


@contextlib.contextmanager
def _fresh_libvirt():
    """No libvirtd, an empty capability cache, no KVM answer for this boot, /dev/kvm
    0600 root:root, and the failing QEMU first in PATH; all put back afterwards."""
    if os.geteuid() != 0:
        pytest.skip("VM labs need root")
    if os.environ.get("HPNLAB_SKIP_VM") == "1":
        pytest.skip("HPNLAB_SKIP_VM=1")
    if not vmsetup.KVM.exists():
        pytest.skip("no /dev/kvm: nothing for libvirt to probe")
    vmsetup.ensure_packages(print)
    # (with libvirtd stopped, what it keeps on disk: it would bring them back)
    domains = sorted({*virt.kept_on_disk(), *(virt.domains("") if virt.available() else [])})
    assert not domains, (f"libvirt has domains ({domains}): run with no VM lab up (under the VM lock); "
                         "a killed run's are removed by `hpnlab --provider vagrant cleanup`")
    vmsetup.stop_daemons(print)
    if vmsetup._pidfile_pid(vmsetup.LIBVIRTD_PIDFILE):
        pytest.skip("libvirtd here was not started by hpnlab: the test cannot restart it")
    wrapdir = Path(tempfile.mkdtemp(prefix="hpnlab-kvmfails-", dir="/tmp"))
    os.chmod(wrapdir, 0o755)                        # libvirt's QEMU user runs the wrapper
    shutil.copy(WRAPPER, wrapdir)
    calls = wrapdir / "calls.log"
    calls.touch(mode=0o666)
    os.chmod(calls, 0o666)
    kvm, answer = vmsetup.KVM.stat(), accel.CACHE.read_bytes() if accel.CACHE.exists() else None
    shutil.rmtree(CAPS, ignore_errors=True)
    accel.CACHE.unlink(missing_ok=True)
    os.chown(vmsetup.KVM, 0, 0)
    os.chmod(vmsetup.KVM, 0o600)
    try:
        yield {"calls": calls, "wrapdir": wrapdir,
               "PATH": f"{wrapdir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    finally:
        vmsetup.stop_daemons(print)
        os.chown(vmsetup.KVM, kvm.st_uid, kvm.st_gid)
        os.chmod(vmsetup.KVM, kvm.st_mode & 0o7777)
        if answer is None:
            accel.CACHE.unlink(missing_ok=True)
        else:
            accel.CACHE.write_bytes(answer)
        shutil.rmtree(wrapdir, ignore_errors=True)


@pytest.fixture
def fresh_libvirt():
    with _fresh_libvirt() as fresh:
        yield fresh


@pytest.fixture(scope="module")
def first_up(tmp_path_factory):
    """`hpnlab up` of LAB in a fresh libvirt; the lab stays up for the module's tests."""
    tmp = tmp_path_factory.mktemp("firstup")
    with _fresh_libvirt() as fresh:
        name = f"probe{os.getpid() % 100000}"
        lab = tmp / "lab.yml"
        lab.write_text(LAB.format(name=name))
        # a libvirtd re-probing on every call would take minutes: `vagrant up` gets 5
        env = dict(os.environ, PATH=fresh["PATH"], HPNLAB_STATE_DIR=str(tmp / "state"),
                   PYTHONUNBUFFERED="1", HPNLAB_VM_BOOT_TIMEOUT="300")
        hpnlab = [sys.executable, "-m", "hpnlab.cli", "--lab", str(lab)]
        t0 = time.monotonic()
        up = subprocess.run([*hpnlab, "up"], env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
                            check=False)
        print(f"\n[vm] first up, empty capability cache, KVM aborting: {time.monotonic() - t0:.0f} s")
        try:
            yield {**fresh, "up": up, "env": env, "hpnlab": hpnlab, "name": name, "lab": lab}
        finally:
            down = subprocess.run([*hpnlab, "down"], env=env, capture_output=True, text=True, timeout=600,
                                  cwd=REPO, check=False)
            if virt.available() and virt.domains(lab_prefix(name)):
                subprocess.run([*hpnlab, "cleanup", "--only", name], env=env, capture_output=True, timeout=600,
                               cwd=REPO, check=False)
            assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
            assert not virt.qemu_processes(lab_prefix(name))
            if virt.available():
                assert not virt.domains(lab_prefix(name)) and not virt.networks(lab_prefix(name))


def _up(first_up) -> str:
    out = first_up["up"].stdout + first_up["up"].stderr
    assert first_up["up"].returncode == 0, f"hpnlab up failed:\n{out[-4000:]}"
    return out


def _elapsed(output: str, event: str) -> float:
    found = re.search(rf"^\s*([\d.]+)s h1: {event}", output, re.MULTILINE)
    assert found, f"no `h1: {event}` in the bring-up's output:\n{output[-3000:]}"
    return float(found.group(1))


def test_a_kvm_libvirtd_sees_dev_kvm_and_probes_once(fresh_libvirt):
    """Where KVM works, libvirt keeps it: /dev/kvm as udev leaves it, one probe, then
    lookups from the cache (libvirt's check and its probe agree)."""
    vmsetup.ensure_daemons(print, kvm=True)
    pid = vmsetup._pidfile_pid(vmsetup.LIBVIRTD_PIDFILE)
    assert pid and vmsetup._sees_kvm(pid)
    assert vmsetup.KVM.stat().st_mode & 0o060 == 0o060
    virsh = [*virt.VIRSH, "domcapabilities", "--virttype", "kvm", "--emulatorbin", "/usr/bin/qemu-system-x86_64"]
    first = subprocess.run(virsh, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0 and "<domain>kvm</domain>" in first.stdout, first.stderr
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run(virsh, capture_output=True, timeout=120, check=True)
        assert time.monotonic() - t0 < 1.5, "libvirt probed QEMU again: its cache did not hold"


def test_first_up_with_kvm_failing_does_not_wait_on_libvirt_probes(first_up):
    out = _up(first_up)
    calls = first_up["calls"].read_text().splitlines()
    # hpnlab's KVM test boot ran the wrapper, saw the abort, and chose TCG
    assert any("-accel kvm" in c for c in calls), calls
    assert "TCG (software): qemu -accel kvm exited" in out, out[-3000:]
    # libvirt probed the (wrapper) binary once, and cached what it found
    probes = [c for c in calls if " none,accel=" in f" {c}"]
    assert 1 <= len(probes) <= 2, f"libvirt probed QEMU {len(probes)} times:\n" + "\n".join(probes)
    assert any(str(first_up["wrapdir"]) in p.read_text() for p in CAPS.glob("*.xml")), \
        "libvirt wrote no capability cache for the QEMU in PATH"
    gap = _elapsed(out, "Starting domain") - _elapsed(out, "Creating domain")
    assert gap < 15, f"{gap:.0f} s between creating and starting the domain (libvirt re-probing?)"


def test_the_box_carries_the_native_parts_built_from_this_checkout(first_up):
    """With the stamps the labcode role checks: provisioning copies them instead of
    compiling under TCG."""
    _up(first_up)
    stamps = subprocess.run([*first_up["hpnlab"], "exec", "h1", "--", "sh", "-c",
                             "cat /opt/hpnlab/build/hpnlab-loadgen.recipe; echo; ls /opt/hpnlab/build"],
                            env=first_up["env"], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    recipe, _, built = stamps.stdout.partition("\n")
    assert recipe == loadgen._recipe(), stamps.stdout + stamps.stderr
    assert "hpnlab-loadgen" in built.split(), built
    uring = hashlib.sha256(Path(uring_build.__file__).read_bytes()).hexdigest()[:16]
    assert any(f.endswith(f"-{uring}.so") for f in built.split()), built


def test_iommu_guests_bind_a_nic_to_vfio_pci(first_up, monkeypatch):
    from hpnlab.providers import open_lab
    _up(first_up)
    monkeypatch.setenv("HPNLAB_STATE_DIR", first_up["env"]["HPNLAB_STATE_DIR"])
    name = first_up["name"]
    xml = subprocess.run([*virt.VIRSH, "dumpxml", f"{lab_prefix(name)}h1"],
                         capture_output=True, text=True, check=True).stdout
    assert "q35" in xml and "intel-iommu" in xml, xml
    h1 = open_lab(first_up["lab"]).host("h1")
    groups = h1.run(["sh", "-c", "ls /sys/kernel/iommu_groups | wc -l"]).stdout.strip()
    assert int(groups) > 1, groups
    r = h1.run(["sh", "-c", BIND_VFIO, "bind", h1.nic("dpdk").ifname], check=False, timeout=120)
    assert r.ok, (r.stdout, r.stderr)
    pci, driver, group, noiommu = r.stdout.split()
    print(f"\n[vm] iommu: {groups} IOMMU groups; {pci} bound to {driver}, group {group}, noiommu {noiommu}")
    assert driver == "vfio-pci" and noiommu in ("N", "not-built")
