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

import ipaddress
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import HpnlabError

PREFIX = "hpnlab-"
POOL = "hpnlab"
POOL_DIR = Path(os.environ.get("HPNLAB_POOL_DIR", "/var/lib/hpnlab/pool"))
BOOT_DIR = POOL_DIR.parent / "boot"      # each lab's copy of the box kernel: hpnlab-<lab>-vmlinuz, ...
BOX_NAME = "hpnlab-debian12"
# A lab's `vm:` block over these: the VM settings the Vagrantfile gets (each of the type
# of its default).
DEFAULTS = {"box": BOX_NAME, "driver": "auto", "iommu": False, "nat": False,
            "management_subnet": "auto", "tb_size_mb": 64, "dpdk_queues": 1}
DRIVERS = ("auto", "kvm", "qemu")
BOX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
TB_SIZE_MB = (8, 4096)      # QEMU's TCG translation cache, MiB
DPDK_QUEUES = (1, 8)        # queue pairs of the virtio NIC a host gives DPDK (multi-queue tap)


def settings(lab) -> dict:
    """The lab's VM settings (its `vm:` block over DEFAULTS), once settings_problems found none."""
    given = {k: v for k, v in (lab.vm or {}).items() if v is not None}
    if given.get("management_subnet", "auto") != "auto":
        given["management_subnet"] = str(ipaddress.ip_network(given["management_subnet"], strict=False))
    return {**DEFAULTS, **given}


def settings_problems(lab) -> list[tuple[int, str, str]]:
    """(line, field, message) for each value of the lab's `vm:` block that a VM cannot take,
    checked when the lab file is read rather than deep in `up`."""
    from ..topology.loader import part, show, type_problem
    block = lab.vm or {}
    line_of = getattr(block, "line_of", lambda _key: 0)
    problems = []
    for key, value in block.items():
        line, field = line_of(key), f"vm.{part(key)}"
        if key not in DEFAULTS:
            problems.append((line, field, f"unknown key (allowed: {', '.join(sorted(DEFAULTS))})"))
            continue
        if value is None:
            continue
        problem = type_problem(value, type(DEFAULTS[key]))
        if problem:
            problems.append((line, field, problem))
        elif key == "driver" and value not in DRIVERS:
            problems.append((line, field, f"must be one of {', '.join(DRIVERS)}, got {show(value)}"))
        elif key == "box" and not BOX_RE.match(value):
            problems.append((line, field, f"{show(value)} is not a box name (letters, digits, '.', '_', '-', '/')"))
        elif key == "tb_size_mb" and not TB_SIZE_MB[0] <= value <= TB_SIZE_MB[1]:
            problems.append((line, field, f"MiB, must be {TB_SIZE_MB[0]}..{TB_SIZE_MB[1]}, got {value}"))
        elif key == "dpdk_queues" and not DPDK_QUEUES[0] <= value <= DPDK_QUEUES[1]:
            problems.append((line, field, f"queue pairs, must be {DPDK_QUEUES[0]}..{DPDK_QUEUES[1]}, got {value}"))
        elif key == "management_subnet" and value != "auto":
            try:
                net = ipaddress.ip_network(value, strict=False)
                if net.version != 4 or not net.is_private or net.prefixlen > 29:
                    raise ValueError("must be a private IPv4 network of /29 or larger, or `auto`")
            except ValueError as exc:
                problems.append((line, field, f"{show(value)}: {exc}"))
                continue
            problems += [(line, field, f"{net} overlaps {n.subnet} of network {n.name}")
                         for n in lab.networks.values() if n.subnet.overlaps(net)]
    return problems


Progress = Callable[[str], None]


class VmError(HpnlabError, RuntimeError):
    """A VM substrate step failed; the message says what to do."""


def lab_prefix(lab: str) -> str:
    return f"{PREFIX}{lab}-"


def owns(prefix: str, name: str) -> bool:
    """Whether `name` (a domain, network, disk, kernel copy, console log) is one of `prefix`'s.
    For a lab's prefix, only a rest without "-" is its own: host and network names have none,
    and lab names may, so lab `a`'s `hpnlab-a-` must spare lab `a-b`'s `hpnlab-a-b-h1`."""
    if not name.startswith(prefix):
        return False
    return not (prefix.endswith("-") and prefix != PREFIX) or "-" not in name[len(prefix):]


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
