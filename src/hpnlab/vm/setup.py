"""Install what the vagrant provider needs, start libvirt's daemons when no init
system does (PID 1 here is not systemd), and define hpnlab's storage pool.

Everything is idempotent: `ensure()` on a ready machine costs a few milliseconds.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from ..state import pid_alive as _pid_alive
from . import POOL, POOL_DIR, Progress, VmError, run

# apt-get install --no-install-recommends of these, and nothing else.
APT_PACKAGES = (
    "vagrant", "vagrant-libvirt",                  # Vagrant and its libvirt provider
    "libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",  # libvirtd, virtlogd, virsh
    "qemu-system-x86", "qemu-utils",               # the hypervisor, qemu-img
    "dnsmasq-base", "iptables",                    # libvirt's management network (DHCP, firewall)
    "mmdebstrap", "fdisk", "grub-pc-bin", "e2fsprogs",  # the box build
    "openssh-client",                              # `hpnlab shell`
)
# A command each package (group) provides: all present = nothing to install.
PROBES = ("vagrant", "virsh", "libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img",
          "dnsmasq", "iptables", "mmdebstrap", "sfdisk", "grub-mkimage", "mkfs.ext4", "ssh")
PLUGIN_DIR = Path("/usr/share/rubygems-integration/all/gems")
RUN_DIR = Path("/run/hpnlab")
DAEMONS_FILE = RUN_DIR / "daemons.json"
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")


def missing_tools() -> list[str]:
    missing = [t for t in PROBES if not shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if not list(PLUGIN_DIR.glob("vagrant-libvirt-*")):
        missing.append("vagrant-libvirt")
    if not Path("/usr/lib/grub/i386-pc/boot.img").exists():
        missing.append("grub-pc-bin")
    return missing


def ensure_packages(progress: Progress) -> None:
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0:
        raise VmError(f"missing {', '.join(missing)}; run as root: make vm-setup")
    progress(f"vm-setup: apt-get install --no-install-recommends ({', '.join(missing)} missing)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], timeout=600, env=env)
    try:
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES], timeout=1200, env=env)
    except VmError as exc:
        raise VmError(f"{exc}\nInstalling the VM packages failed. Check that apt reaches the Debian "
                      f"mirror, then run `make vm-setup` again, or use `PROVIDER=netns`.") from None
    still = missing_tools()
    if still:
        raise VmError(f"after apt-get install, still missing: {', '.join(still)}")


def ensure_qemu_user() -> None:
    """libvirt runs QEMU as libvirt-qemu; libvirt-daemon-system would make that user,
    but it also brings a NAT'ed default network, which a lab must not have."""
    if run(["getent", "passwd", "libvirt-qemu"], check=False).returncode == 0:
        return
    if run(["getent", "group", "libvirt-qemu"], check=False).returncode != 0:
        run(["groupadd", "--system", "libvirt-qemu"])
    if run(["getent", "group", "kvm"], check=False).returncode != 0:
        run(["groupadd", "--system", "kvm"])
    run(["useradd", "--system", "--gid", "kvm", "--groups", "libvirt-qemu", "--no-create-home",
         "--home-dir", "/var/lib/libvirt", "--shell", "/usr/sbin/nologin", "libvirt-qemu"])


# -- daemons --------------------------------------------------------------------

def _pidfile_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _libvirt_ready() -> bool:
    return LIBVIRT_SOCK.exists() and run(["virsh", "-c", "qemu:///system", "version"],
                                          timeout=20, check=False).returncode == 0


def _started() -> dict:
    try:
        return json.loads(DAEMONS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def ensure_daemons(progress: Progress) -> None:
    """virtlogd and libvirtd, started by hand (with -d) unless already running."""
    started = _started()
    for name, pidfile in (("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", Path("/run/libvirtd.pid"))):
        if _pidfile_pid(pidfile):
            continue
        if name == "libvirtd" and _libvirt_ready():
            continue
        progress(f"vm-setup: starting {name}")
        Path("/var/log/libvirt").mkdir(parents=True, exist_ok=True)
        # Its output goes to a file, never to a pipe of ours: a daemon writing to a
        # closed pipe after we exit would die of SIGPIPE.
        log = Path("/var/log/libvirt") / f"{name}-hpnlab.log"
        with open(log, "ab") as out:
            proc = subprocess.run([name, "-d"], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  timeout=60, start_new_session=True)
        if proc.returncode != 0:
            raise VmError(f"{name} did not start (exit {proc.returncode}); see {log}")
        deadline = time.monotonic() + 30
        while not (pid := _pidfile_pid(pidfile)):
            if time.monotonic() > deadline:
                raise VmError(f"{name} started but wrote no {pidfile}")
            time.sleep(0.1)
        started[name] = pid
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        DAEMONS_FILE.write_text(json.dumps(started))
    deadline = time.monotonic() + 30
    while not _libvirt_ready():
        if time.monotonic() > deadline:
            raise VmError("libvirtd runs but `virsh -c qemu:///system version` fails; see /var/log/libvirt")
        time.sleep(0.2)


def stop_daemons(progress: Progress, force: bool = False) -> list[str]:
    """Stop the daemons hpnlab started (by their recorded PIDs), if no domain is left."""
    started = _started()
    if not started:
        return []
    if not force and _libvirt_ready():
        out = run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=False).stdout
        if out.strip():
            return []
    if not force and _bring_up_running():
        return []
    stopped = []
    for name in ("libvirtd", "virtlogd"):
        pid = started.get(name)
        if not pid or not _pid_alive(pid) or _comm(pid) != name:
            continue
        progress(f"stopping {name} (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(f"{name} (pid {pid})")
    DAEMONS_FILE.unlink(missing_ok=True)
    return stopped


@contextmanager
def bringing_up():
    """Marks this process as bringing a lab up, so no `down` of another lab stops
    the daemons under it."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    marker = RUN_DIR / f"up.{os.getpid()}"
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def _bring_up_running() -> bool:
    """Is some hpnlab `up` or `vagrant up` (of any lab) running? Then the daemons stay."""
    for marker in RUN_DIR.glob("up.*"):
        pid = marker.name.split(".", 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        if _pid_alive(int(pid)):
            return True
        marker.unlink(missing_ok=True)      # its `up` was killed: nothing to wait for
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != me:
            try:
                if b"HPNLAB_VAGRANT_LAB=" in (proc / "environ").read_bytes():
                    return True
            except OSError:
                continue
    return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# -- storage pool -----------------------------------------------------------------

def ensure_pool(progress: Progress) -> None:
    virsh = ["virsh", "-c", "qemu:///system"]
    # The directory first, always: libvirt keeps a pool's definition (in /etc/libvirt)
    # even when its directory is gone, and then cannot start it.
    POOL_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(POOL_DIR, 0o755)
    os.chmod(POOL_DIR.parent, 0o755)
    info = run([*virsh, "pool-info", POOL], check=False)
    if info.returncode != 0:
        progress(f"vm-setup: storage pool {POOL} at {POOL_DIR}")
        run([*virsh, "pool-define-as", POOL, "dir", "--target", str(POOL_DIR)])
        run([*virsh, "pool-autostart", POOL], check=False)
        info = run([*virsh, "pool-info", POOL])
    if "running" not in info.stdout:
        run([*virsh, "pool-start", POOL])


def ensure(progress: Progress) -> None:
    """All of vm-setup: packages, the QEMU user, daemons, storage pool."""
    ensure_packages(progress)
    ensure_qemu_user()
    ensure_daemons(progress)
    ensure_pool(progress)
