"""Install what the vagrant provider needs, start libvirt's daemons when no init
system does (PID 1 here is not systemd), and define hpnlab's storage pool.

libvirtd and /dev/kvm must agree. libvirt probes each QEMU binary once and caches
the capabilities (/var/cache/libvirt/qemu/capabilities), but it throws the cache
away on every lookup when "KVM was enabled when probing" disagrees with "its QEMU
user can open /dev/kvm now". With no udev, /dev/kvm stays 0600 root:root: the probe
(-machine none,accel=kvm:tcg) gets KVM, the access check for libvirt-qemu fails,
and each of vagrant-libvirt's dozens of API calls re-probes (~4 s each, one at a
time): five minutes of a first `vagrant up`. So where hpnlab runs guests under TCG,
libvirtd runs in a mount namespace of its own whose /dev/kvm is an unopenable empty
file (libvirt probes TCG alone, once); where KVM works, /dev/kvm gets what udev's
rule gives it (group kvm, 0660), so the probe and the check agree.

Everything is idempotent: `ensure()` on a ready machine costs a few milliseconds.
"""
from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from ..state import pid_alive as _pid_alive
from . import POOL, POOL_DIR, Progress, VmError, apt, run

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
KVM = Path("/dev/kvm")
NO_KVM = RUN_DIR / "no-kvm"             # what a TCG libvirtd sees as /dev/kvm
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
NO_KVM_CONF = RUN_DIR / "qemu.conf"     # ... and as its qemu.conf
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")


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
    try:
        apt.install(APT_PACKAGES, progress, apt.LOG_DIR / "apt-vm.log")
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


def ensure_daemons(progress: Progress, kvm: bool | None = None) -> None:
    """virtlogd and libvirtd, started by hand (with -d) unless already running.
    `kvm`: do guests run under KVM (None: what this boot's KVM test decided)."""
    if kvm is None:
        from .accel import decided
        kvm = decided() == "kvm"
    if kvm:
        _share_kvm()
    started = _started()
    for name, pidfile in (("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", LIBVIRTD_PIDFILE)):
        pid = _pidfile_pid(pidfile)
        if name == "libvirtd" and pid and _sees_kvm(pid) != kvm:
            pid = _refit_libvirtd(pid, kvm, started, progress)
        if pid:
            continue
        if name == "libvirtd" and _libvirt_ready():
            continue
        progress(f"vm-setup: starting {name}" + ("" if name != "libvirtd" or kvm or not KVM.exists()
                                                 else " (its /dev/kvm masked: guests run under TCG)"))
        Path("/var/log/libvirt").mkdir(parents=True, exist_ok=True)
        # Its output goes to a file, never to a pipe of ours: a daemon writing to a
        # closed pipe after we exit would die of SIGPIPE.
        log = Path("/var/log/libvirt") / f"{name}-hpnlab.log"
        with open(log, "ab") as out:
            proc = subprocess.run(_start_argv(name, kvm), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  timeout=60, start_new_session=True, check=False)
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


def _start_argv(name: str, kvm: bool) -> list[str]:
    if name != "libvirtd" or kvm or not KVM.exists():
        return [name, "-d"]
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    NO_KVM.touch()
    os.chmod(NO_KVM, 0)
    # libvirt gives each QEMU a /dev of its own and moves every mount under /dev into
    # it, which fails for a file mount ("Unable to move ... mount to /dev/kvm"): this
    # libvirtd's QEMUs share its /dev (qemu.conf namespaces = []), the masked one.
    QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
    QEMU_CONF.touch()
    kept = [line for line in QEMU_CONF.read_text().splitlines() if not line.strip().startswith("namespaces")]
    NO_KVM_CONF.write_text("\n".join([*kept, "namespaces = []", ""]))
    # propagation slave: mounts made on the host later (a pool, hugepages) still
    # reach libvirtd; its own masks never leak out
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
            f"mount --bind {NO_KVM} {KVM} && mount --bind {NO_KVM_CONF} {QEMU_CONF} && exec {name} -d"]


def _sees_kvm(pid: int) -> bool:
    """Does process `pid` see the real /dev/kvm (its mount namespace's view)?"""
    try:
        return stat.S_ISCHR(os.stat(f"/proc/{pid}/root{KVM}").st_mode)
    except OSError:
        return False


def _share_kvm() -> None:
    """/dev/kvm as udev's rule leaves it (group kvm, 0660): libvirt's QEMU user opens it."""
    try:
        info = KVM.stat()
        gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return
    if info.st_gid != gid or info.st_mode & 0o060 != 0o060:
        os.chown(KVM, -1, gid)
        os.chmod(KVM, stat.S_IMODE(info.st_mode) | 0o660)


def _refit_libvirtd(pid: int, kvm: bool, started: dict, progress: Progress) -> int | None:
    """A running libvirtd whose /dev/kvm is not the one this lab needs: restart it if
    hpnlab started it and nothing uses it (returns None), else make do with it."""
    ours = started.get("libvirtd") == pid
    idle = _libvirt_ready() and not run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                                        check=False).stdout.strip() and not _bring_up_running()
    if ours and idle:
        progress(f"vm-setup: restarting libvirtd (pid {pid}) " +
                 ("with /dev/kvm: guests run under KVM" if kvm else "without /dev/kvm: guests run under TCG"))
        _stop(pid)
        return None
    if kvm:
        raise VmError(f"libvirtd (pid {pid}) runs without /dev/kvm and is in use (domains, another bring-up) "
                      f"or was not started by hpnlab; take those labs down (or stop it) first, "
                      f"or set `vm: {{driver: qemu}}` in lab.yml")
    # TCG guests under a libvirtd that sees /dev/kvm: let its QEMU user open it, so that
    # libvirt's KVM check agrees with its probe (one probe, not one per API call)
    _share_kvm()
    return pid


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
        _stop(pid)
        stopped.append(f"{name} (pid {pid})")
    DAEMONS_FILE.unlink(missing_ok=True)
    return stopped


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


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


def ensure(progress: Progress, kvm: bool | None = None) -> None:
    """All of vm-setup: packages, the QEMU user, daemons (see ensure_daemons), storage pool."""
    ensure_packages(progress)
    ensure_qemu_user()
    ensure_daemons(progress, kvm)
    ensure_pool(progress)
