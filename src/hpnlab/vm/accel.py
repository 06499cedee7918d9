"""KVM or TCG? A short timed boot decides, because /dev/kvm can exist while a
guest hangs under it (as on the development machines).

The test boots the box's kernel with no root disk under `-accel kvm`: a working
KVM reaches "VFS: Unable to mount root fs" and panics (exit, -no-reboot) within
seconds; a hanging one prints nothing by the deadline. The answer is cached per
host boot (/run/hpnlab/accel.json).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from . import Progress

CACHE = Path("/run/hpnlab/accel.json")
MARKERS = ("Kernel panic", "Unable to mount root", "VFS:")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "?"


def kvm_boots(kernel: Path, timeout: float = 20.0) -> tuple[bool, str]:
    """Boot `kernel` under KVM for at most `timeout` s; (worked, why)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="hpnlab-kvmprobe-") as tmp:
        serial = Path(tmp) / "serial.log"
        cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
               "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel),
               "-append", "console=ttyS0 panic=-1 loglevel=4",
               "-serial", f"file:{serial}", "-name", "hpnlab-kvmprobe"]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while time.monotonic() - t0 < timeout:
                text = serial.read_text(errors="replace") if serial.exists() else ""
                if any(m in text for m in MARKERS):
                    return True, f"a test kernel booted under KVM in {time.monotonic() - t0:.1f} s"
                if proc.poll() is not None:
                    err = proc.stderr.read().strip() if proc.stderr else ""
                    return False, f"qemu -accel kvm exited ({proc.returncode}): {err[-300:]}"
                time.sleep(0.2)
            return False, f"a test kernel under KVM printed nothing useful in {timeout:g} s (hangs)"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def decided() -> str | None:
    """This boot's answer ('kvm' or 'qemu'), if the test boot ran."""
    try:
        cached = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return None
    if cached.get("boot_id") == _boot_id() and cached.get("driver") in ("kvm", "qemu"):
        return cached["driver"]
    return None


def detect(kernel: Path | None, progress: Progress, requested: str = "auto") -> str:
    """'kvm' or 'qemu' (libvirt's driver names). `requested` from lab.yml's vm.driver."""
    if requested in ("kvm", "qemu"):
        return requested
    if known := decided():
        return known
    boot = _boot_id()
    if kernel is None:
        return "qemu"
    progress("vm: testing whether KVM boots a guest (short timed boot)")
    ok, why = kvm_boots(kernel)
    driver = "kvm" if ok else "qemu"
    progress(f"vm: {'KVM' if ok else 'TCG (software)'}: {why}")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps({"boot_id": boot, "driver": driver, "why": why}))
    return driver
