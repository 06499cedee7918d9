"""The hpnlab-debian12 box: built from Debian packages by box/build.sh, cached by
the hash of its recipe (every file under box/, and the sources of the native parts it
carries prebuilt), added to Vagrant as
`hpnlab-debian12`. A recipe change means a rebuild on the next `make box`/`up`.

An online user can set `vm: {box: debian/bookworm64}` in lab.yml instead; then
nothing is built and Vagrant fetches that box itself.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .. import labcode
from ..paths import repo_root
from . import BOX_NAME, POOL, Progress, VmError, run

# box/ files that are not part of the image (changing them needs no rebuild)
NOT_RECIPE = {"provision.sh", "README.md"}
CACHE = Path(os.environ.get("HPNLAB_BOX_CACHE", "/var/cache/hpnlab/box"))


def recipe_dir() -> Path:
    return repo_root() / "box"


def recipe_hash() -> str:
    """sha256 over the recipe's file names and contents (16 hex digits): every file
    under box/ but those in NOT_RECIPE, and what the box's native parts are built from."""
    root = recipe_dir()
    if not root.is_dir():
        raise VmError(f"no box recipe at {root}")
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in NOT_RECIPE):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(native_recipe().encode())
    return h.hexdigest()[:16]


def native_recipe() -> str:
    """The stamps of hpnlab's native parts that box/customize.sh builds into the box, as
    `hpnlab.labcode build` checks them on a guest (the load generator's recipe, the
    liburing binding's): new sources make a new box, so that no guest compiles them."""
    from ..bench import loadgen
    from ..uring import _build
    return loadgen._recipe() + hashlib.sha256(Path(_build.__file__).read_bytes()).hexdigest()[:16]


def cached(recipe: str | None = None) -> Path:
    return CACHE / (recipe or recipe_hash())


SYSCTL_NAMES = "sysctl-names.txt"      # in a box's cache: its kernel's sysctls, as a guest listed them


def sysctl_names() -> frozenset[str] | None:
    """The sysctl names of the current box's kernel, as the first `up` of a lab on that box
    recorded them from a guest (None before that)."""
    try:
        return frozenset((cached() / SYSCTL_NAMES).read_text().split())
    except (OSError, VmError):
        return None


def record_sysctl_names(names: str) -> None:
    """Keep a guest's sysctl names (one a line) for the current box (once: one box, one kernel)."""
    path = cached() / SYSCTL_NAMES
    if path.exists() or not path.parent.is_dir() or not names.split():
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(names)
    os.replace(tmp, path)


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))


def added_recipe() -> str | None:
    """The recipe hash of the box Vagrant has as hpnlab-debian12, if any."""
    meta = vagrant_home() / "boxes" / BOX_NAME / "0" / "libvirt" / "metadata.json"
    try:
        return json.loads(meta.read_text()).get("hpnlab_recipe")
    except (OSError, ValueError):
        return None


def boot_files() -> dict | None:
    """Kernel, initrd and command line of the box Vagrant has, for a direct kernel boot
    (None when that box was not built here, or before boot files were kept)."""
    recipe = added_recipe()
    if not recipe:
        return None
    where = cached(recipe)
    files = {"kernel": where / "vmlinuz", "initrd": where / "initrd.img", "cmdline": where / "cmdline"}
    return files if all(p.exists() for p in files.values()) else None


def kernel_path() -> Path | None:
    """The guest kernel of the current box (for the KVM test boot)."""
    path = cached() / "vmlinuz"
    return path if path.exists() else None


def build(progress: Progress, force: bool = False) -> Path:
    """Build the box into the cache (atomically: a failed build leaves nothing)."""
    recipe = recipe_hash()
    final = cached(recipe)
    if (final / f"{BOX_NAME}.box").exists() and not force:
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f".{recipe}.building.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    progress(f"box: building {BOX_NAME} (recipe {recipe}) from Debian packages, ~1-2 min")
    t0 = time.monotonic()
    log = CACHE / f"build-{recipe}.log"
    packed = tempfile.TemporaryDirectory(prefix="hpnlab-box-labcode-")
    try:
        # the box carries hpnlab's native parts built from this checkout (box/customize.sh)
        env = dict(os.environ, HPNLAB_BOX_LABCODE=labcode.pack(Path(packed.name))["zip"])
        with open(log, "w") as out:
            proc = subprocess.Popen([str(recipe_dir() / "build.sh"), str(tmp), recipe], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None      # (a pipe)
            for line in proc.stdout:
                out.write(line)
                if line.startswith("==>"):
                    progress(line.strip())
            rc = proc.wait()
        if rc != 0:
            tail = log.read_text()[-1500:]
            hint = ""
            if any(s in tail for s in ("Could not resolve", "Failed to fetch", "Temporary failure",
                                        "Unable to connect", "Connection failed", "No route")):
                hint = ("\nThe build could not reach the Debian mirror. Check the network (or set "
                        "HPNLAB_DEBIAN_MIRROR to a reachable mirror) and run `make box` again; "
                        "or set `vm: {box: debian/bookworm64}` in lab.yml to use Vagrant's box.")
            raise VmError(f"box build failed (exit {rc}); full log: {log}\n{tail}{hint}")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        packed.cleanup()
    progress(f"box: built in {time.monotonic() - t0:.0f} s")
    _prune(keep=recipe)
    return final


def _prune(keep: str) -> None:
    for old in CACHE.iterdir():
        if old.is_dir() and old.name != keep and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def lab_vagrant_home(path: Path) -> Path:
    """A Vagrant home of the lab's own, sharing the boxes: Vagrant's global machine
    index would otherwise mix every lab's machines (all share one Vagrantfile), and
    a `vagrant up a b` fails while another lab has an `h1` up."""
    path.mkdir(parents=True, exist_ok=True)
    shared = vagrant_home() / "boxes"
    shared.mkdir(parents=True, exist_ok=True)
    link = path / "boxes"
    if not link.is_symlink():
        if link.exists():
            shutil.rmtree(link)
        link.symlink_to(shared)
    return path


def vagrant_env() -> dict:
    env = dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
               VAGRANT_DEFAULT_PROVIDER="libvirt")
    env.pop("VAGRANT_NO_PARALLEL", None)     # any value, even "", makes `up` serial
    return env


@contextmanager
def _build_lock(progress: Progress):
    """One box build/add at a time on this machine (two labs coming up at once
    wait for the same build instead of racing it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("box: another hpnlab is building or adding the box; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(progress: Progress, force: bool = False) -> str:
    """Build (if the recipe changed) and add the box to Vagrant; returns the recipe hash."""
    recipe = recipe_hash()
    if added_recipe() == recipe and not force:
        return recipe
    with _build_lock(progress):
        if added_recipe() == recipe and not force:
            return recipe
        return _build_and_add(recipe, progress, force)


def prebuild(progress: Progress) -> None:
    """Build the box into the cache if Vagrant lacks this recipe's box (`ensure` adds it)."""
    recipe = recipe_hash()
    if added_recipe() == recipe:
        return
    with _build_lock(progress):
        if added_recipe() != recipe:
            build(progress)


def _build_and_add(recipe: str, progress: Progress, force: bool) -> str:
    where = build(progress, force=force)
    progress(f"box: vagrant box add {BOX_NAME}")
    run(["vagrant", "box", "add", "--force", "--name", BOX_NAME, "--provider", "libvirt",
         str(where / f"{BOX_NAME}.box")], timeout=600, env=vagrant_env())
    remove_base_volumes(progress)
    return recipe


def remove_base_volumes(progress: Progress) -> None:
    """vagrant-libvirt copies a box into the pool once per box version; after a
    rebuild the old copies are garbage, unless a running lab's disks still sit
    on top of them (backing files), so those stay."""
    virsh = ["virsh", "-q", "-c", "qemu:///system"]
    if run([*virsh, "pool-info", POOL], check=False).returncode != 0:
        return
    names = [line.split()[0] for line in run([*virsh, "vol-list", POOL], check=False).stdout.splitlines()
             if line.strip()]
    bases = [n for n in names if n.startswith(f"{BOX_NAME}_vagrant_box_image")]
    if not bases:
        return
    in_use = set()
    for name in names:
        if name in bases:
            continue
        xml = run([*virsh, "vol-dumpxml", "--pool", POOL, name], check=False).stdout
        for base in bases:
            if base in xml:
                in_use.add(base)
    for base in bases:
        if base not in in_use:
            progress(f"box: removing the previous base volume {base}")
            run([*virsh, "vol-delete", "--pool", POOL, base], check=False)
