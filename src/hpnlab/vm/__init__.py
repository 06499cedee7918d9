"""The VM substrate under the vagrant provider: packages and daemons (setup),
the locally built Debian 12 box (box), KVM-or-TCG detection (accel), and the
libvirt objects of a lab, found by name (virt).

Names: every libvirt object hpnlab makes starts with ``hpnlab-``:
domains ``hpnlab-<lab>-<host>``, their disks ``hpnlab-<lab>-<host>.img`` in the
storage pool ``hpnlab``, networks ``hpnlab-<lab>-mgmt`` and ``hpnlab-<lab>-<net>``;
the kernel the lab's guests boot is ``BOOT_DIR/hpnlab-<lab>-vmlinuz`` (and initrd).
`cleanup` relies on that and on nothing else.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import HpnlabError

PREFIX = "hpnlab-"
POOL = "hpnlab"
POOL_DIR = Path(os.environ.get("HPNLAB_POOL_DIR", "/var/lib/hpnlab/pool"))
BOOT_DIR = POOL_DIR.parent / "boot"      # each lab's copy of the box kernel: hpnlab-<lab>-vmlinuz, ...
BOX_NAME = "hpnlab-debian12"
# A lab's `vm:` block over these: the VM settings the Vagrantfile gets.
DEFAULTS = {"box": BOX_NAME, "driver": "auto", "iommu": False, "nat": False,
            "management_subnet": "auto", "tb_size_mb": 64}


def settings(lab) -> dict:
    return {**DEFAULTS, **(lab.vm or {})}


Progress = Callable[[str], None]


class VmError(HpnlabError, RuntimeError):
    """A VM substrate step failed; the message says what to do."""


def lab_prefix(lab: str) -> str:
    return f"{PREFIX}{lab}-"


def run(cmd: Sequence[str], timeout: float = 120, check: bool = True, env: dict | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a host command, capturing output; a failure raises VmError with its stderr."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env=env, input=input)
    except FileNotFoundError:
        raise VmError(f"`{cmd[0]}` is not installed: run `make vm-setup`") from None
    except subprocess.TimeoutExpired:
        raise VmError(f"`{' '.join(cmd)}` did not finish in {timeout:g}s") from None
    if check and proc.returncode != 0:
        err = (proc.stderr.strip() or proc.stdout.strip())[-1500:]
        raise VmError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {err}")
    return proc
