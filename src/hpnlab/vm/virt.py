"""libvirt objects and QEMU processes of hpnlab labs, found by name prefix
alone (no state file needed), and removed."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from . import BOX_NAME, POOL, POOL_DIR, PREFIX, Progress, owns, run
from .setup import LIBVIRT_SOCK

VIRSH = ("virsh", "-q", "-c", "qemu:///system")
DEFINITIONS = Path("/etc/libvirt/qemu")        # libvirt's persistent domains (networks/: its networks)


def available() -> bool:
    return LIBVIRT_SOCK.exists() and run([*VIRSH, "version"], check=False, timeout=20).returncode == 0


def _names(*args: str) -> list[str]:
    proc = run([*VIRSH, *args], check=False, timeout=30)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def domains(prefix: str = PREFIX) -> list[str]:
    return [n for n in _names("list", "--all", "--name") if owns(prefix, n)]


def running_domains(prefix: str = PREFIX) -> list[str]:
    return [n for n in _names("list", "--state-running", "--name") if owns(prefix, n)]


def networks(prefix: str = PREFIX) -> list[str]:
    return [n for n in _names("net-list", "--all", "--name") if owns(prefix, n)]


def volumes(prefix: str = PREFIX) -> list[str]:
    """A lab's disks; never the box's base image (shared by every lab)."""
    if run([*VIRSH, "pool-info", POOL], check=False, timeout=20).returncode != 0:
        return []
    return [n for n in _names("vol-list", POOL)
            if owns(prefix, n) and not n.startswith(f"{BOX_NAME}_vagrant_box_image")]


def kept_on_disk(prefix: str = PREFIX) -> list[str]:
    """Domains, networks and disks named `prefix`* that libvirt keeps on disk, read from its
    files: with libvirtd stopped `virsh` sees none of them, yet a run killed outright leaves
    them, and they come back the next time libvirtd starts."""
    found = [p.stem for p in DEFINITIONS.glob(f"{prefix}*.xml")]
    found += [p.stem for p in (DEFINITIONS / "networks").glob(f"{prefix}*.xml")]
    found += [p.name for p in POOL_DIR.glob(f"{prefix}*")
              if not p.name.startswith(f"{BOX_NAME}_vagrant_box_image")]
    return sorted(name for name in found if owns(prefix, name))


def qemu_processes(prefix: str = PREFIX) -> dict[int, str]:
    """PID -> guest name of QEMU processes whose -name guest=... starts with `prefix`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or b"qemu-system" not in argv[0]:
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-name":
                name = argv[i + 1].decode(errors="replace")
                name = name.split("guest=", 1)[1].split(",")[0] if "guest=" in name else name.split(",")[0]
                if owns(prefix, name):
                    found[int(proc.name)] = name
    return found


def domain_ip(domain: str, network: str) -> str | None:
    """The management address of a domain, from the lease libvirt's DHCP gave it."""
    for source in ("lease", "arp"):
        out = run([*VIRSH, "domifaddr", domain, "--source", source], check=False, timeout=20).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "ipv4":
                return parts[3].split("/")[0]
    return None


def bridge_of(network: str) -> str | None:
    out = run([*VIRSH, "net-info", network], check=False, timeout=20).stdout
    for line in out.splitlines():
        if line.lower().startswith("bridge:"):
            return line.split(":", 1)[1].strip()
    return None


def tap_of(domain: str, mac: str) -> str | None:
    out = run([*VIRSH, "domiflist", domain], check=False, timeout=20).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[4].lower() == mac.lower():
            return parts[0]
    return None


def remove_all(prefix: str, progress: Progress, keep: tuple[str, ...] = ()) -> list[str]:
    """Destroy and undefine every domain, volume and network of `prefix` (see `owns`), and
    kill QEMU processes of such guests (by PID), except those of the `keep` prefixes (live
    labs'). Returns what was removed."""
    def mine(names):
        return [n for n in names if not any(owns(p, n) for p in keep)]

    removed = []
    if available():
        for dom in mine(domains(prefix)):
            progress(f"removing domain {dom}")
            run([*VIRSH, "destroy", dom], check=False, timeout=60)
            run([*VIRSH, "undefine", dom, "--nvram", "--managed-save", "--snapshots-metadata"],
                check=False, timeout=60)
            if dom in domains(prefix):
                run([*VIRSH, "undefine", dom], check=False, timeout=60)
            removed.append(f"domain {dom}")
    for pid, name in qemu_processes(prefix).items():
        if any(owns(p, name) for p in keep):
            continue
        progress(f"killing QEMU of {name} (pid {pid})")
        _kill(pid)
        removed.append(f"qemu {name} pid {pid}")
    if available():
        for vol in mine(volumes(prefix)):
            progress(f"removing volume {vol}")
            run([*VIRSH, "vol-delete", "--pool", POOL, vol], check=False, timeout=60)
            removed.append(f"volume {vol}")
        for net in mine(networks(prefix)):
            progress(f"removing network {net}")
            run([*VIRSH, "net-destroy", net], check=False, timeout=60)
            run([*VIRSH, "net-undefine", net], check=False, timeout=60)
            removed.append(f"network {net}")
    return removed


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
