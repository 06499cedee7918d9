"""Machine-wide resources that netns labs share, and how they are given back.

Network-namespace hosts share one kernel: the hugepage pool, hugetlbfs mounts
and machine-wide sysctls (vm.*, net.core.rmem_max, ...) belong to the machine,
not to a host. Provisioning takes them through this module, which keeps a
ledger in /run/hpnlab/machine.json (tmpfs: it dies with a reboot, as do the
reservations it describes):

    hugepages  per page size: how many pages each lab host holds; the pool
               grows and shrinks by exactly that many (relative changes, so
               other users of the pool are left alone)
    mounts     one hugetlbfs per lab host at /run/hpnlab/hugetlbfs/<lab>/<host>
    sysctls    the value before the first lab set a key, and which labs hold it;
               the last lab to let go restores the original (if the value is
               still the one hpnlab set)

`release(lab)` gives everything of a lab back; `hpnlab provision --release`,
`hpnlab down`, `hpnlab cleanup` and the provisioning tests call it. `release_orphans()` does
the same for labs whose namespaces are gone (after a crash).

Run as `python -m hpnlab.machine COMMAND ...`: the Ansible roles call it on
the controller (delegate_to: localhost) and read one JSON line back.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import HpnlabError
from .topology.sysctls import key_to_path

RUN_DIR = Path(os.environ.get("HPNLAB_RUN_DIR", "/run/hpnlab"))
SIZES_KB = {"2M": 2048, "1G": 1048576}


class MachineError(HpnlabError, RuntimeError):
    pass


def ledger_path() -> Path:
    return RUN_DIR / "machine.json"


@contextmanager
def _ledger():
    RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(RUN_DIR / "machine.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = _read_ledger()
        yield data
        tmp = ledger_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, ledger_path())
    finally:
        os.close(fd)


def _read_ledger() -> dict:
    """The ledger as it is now (without the lock: for a dry run or a listing)."""
    try:
        data = json.loads(ledger_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    for key in ("hugepages", "mounts", "sysctls"):
        data.setdefault(key, {})
    return data


def _pool_file(size: str) -> Path:
    if size not in SIZES_KB:
        raise MachineError(f"unknown hugepage size {size!r} (valid: {', '.join(SIZES_KB)})")
    path = Path(f"/sys/kernel/mm/hugepages/hugepages-{SIZES_KB[size]}kB/nr_hugepages")
    if not path.exists():
        raise MachineError(f"this kernel has no {size} hugepages ({path} is missing)")
    return path


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _set_pool(size: str, target: int) -> int:
    path = _pool_file(size)
    path.write_text(f"{max(target, 0)}\n")
    return _read_int(path)


def lab_dir(lab: str) -> Path:
    return RUN_DIR / "hugetlbfs" / lab


def lab_mount(lab: str, host: str) -> Path:
    return lab_dir(lab) / host


def _mounted(path: Path) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == str(path) for line in f)
    except OSError:
        return False


# -- hugepages ------------------------------------------------------------
def hold_hugepages(lab: str, host: str, count: int, size: str = "2M", check: bool = False) -> dict:
    """Make the pool hold `count` pages of `size` for lab/host, and mount its hugetlbfs
    (`check`: only say whether that would change anything, as Ansible's --check asks)."""
    key = f"{lab}/{host}"
    mount = lab_mount(lab, host)
    changed = False
    if check:
        held = _read_ledger()["hugepages"].get(size, {}).get(key, 0)
        return {"changed": count != held or _mounted(mount) != bool(count), "check": True, "host": host,
                "hugepages": count, "size": size, "mount": str(mount), "pool": _read_int(_pool_file(size))}
    with _ledger() as data:
        pool = data["hugepages"].setdefault(size, {})
        held = pool.get(key, 0)
        if count != held:
            path = _pool_file(size)
            before = _read_int(path)
            have = _set_pool(size, before + count - held)
            if have != before + count - held:
                _set_pool(size, before)
                free_mb = _meminfo().get("MemAvailable", 0) // 1024
                raise MachineError(
                    f"host {host}: could reserve only {have - before + held} of {count} {size} hugepages "
                    f"(pool {before} → {have}; {free_mb} MiB available): free memory or lower "
                    f"hugepages: in the lab file")
            if count:
                pool[key] = count
            else:
                pool.pop(key, None)
            changed = True
        if count and not _mounted(mount):
            mount.mkdir(parents=True, exist_ok=True)
            opts = f"pagesize={size},size={count * SIZES_KB[size] * 1024}"
            _sh(["mount", "-t", "hugetlbfs", "-o", opts, f"hpnlab-{lab}-{host}", str(mount)])
            data["mounts"][str(mount)] = lab
            changed = True
        elif not count and _mounted(mount):
            _sh(["umount", str(mount)])
            data["mounts"].pop(str(mount), None)
            changed = True
    return {"changed": changed, "host": host, "hugepages": count, "size": size, "mount": str(mount),
            "pool": _read_int(_pool_file(size))}


# -- machine sysctls --------------------------------------------------------
def _sysctl_path(key: str) -> Path:
    try:
        return key_to_path(key)      # refuses any key that is not a name under /proc/sys
    except ValueError as exc:
        raise MachineError(f"machine sysctl: {exc}") from None


def _norm(value: str) -> str:
    return " ".join(str(value).split())


def hold_sysctls(lab: str, values: dict[str, str], check: bool = False) -> dict:
    changed = []
    if check:
        for key, want in values.items():
            path = _sysctl_path(key)
            if not path.exists():
                raise MachineError(f"machine sysctl {key}: no such key on this kernel")
            if _norm(path.read_text()) != _norm(want):
                changed.append(key)
        return {"changed": bool(changed), "check": True, "keys": changed}
    with _ledger() as data:
        for key, want in values.items():
            path = _sysctl_path(key)
            if not path.exists():
                raise MachineError(f"machine sysctl {key}: no such key on this kernel")
            have = _norm(path.read_text())
            entry = data["sysctls"].get(key)
            if entry is None:
                entry = data["sysctls"][key] = {"original": have, "value": _norm(want), "holds": []}
            if lab not in entry["holds"]:
                entry["holds"].append(lab)
            entry["value"] = _norm(want)
            if have != _norm(want):
                path.write_text(_norm(want) + "\n")
                if _norm(path.read_text()) != _norm(want):
                    raise MachineError(f"machine sysctl {key}: wrote {want!r}, reads back {path.read_text()!r}")
                changed.append(key)
    return {"changed": bool(changed), "keys": changed}


# -- giving back ---------------------------------------------------------------
def release(lab: str) -> list[str]:
    """Give back every machine resource `lab` holds; returns what was done."""
    done = []
    with _ledger() as data:
        for mount, owner in list(data["mounts"].items()):
            if owner != lab:
                continue
            how = "unmounted"
            if _mounted(Path(mount)):
                proc = subprocess.run(["umount", mount], capture_output=True, text=True)
                if proc.returncode != 0:
                    # still in use (a lab process that `down` is about to end): detach it now; the
                    # kernel frees its pages when the last user goes
                    lazy = subprocess.run(["umount", "-l", mount], capture_output=True, text=True)
                    if lazy.returncode != 0:
                        raise MachineError(f"cannot unmount {mount}: {proc.stderr.strip()}")
                    how = "lazily unmounted (still in use)"
            del data["mounts"][mount]
            done.append(f"{how} {mount}")
        for size, pool in data["hugepages"].items():
            mine = sum(n for k, n in pool.items() if k.split("/")[0] == lab)
            if mine:
                path = _pool_file(size)
                now = _set_pool(size, _read_int(path) - mine)
                for k in [k for k in pool if k.split("/")[0] == lab]:
                    del pool[k]
                done.append(f"released {mine} {size} hugepages (pool now {now})")
        for key, entry in list(data["sysctls"].items()):
            if lab not in entry["holds"]:
                continue
            entry["holds"].remove(lab)
            if not entry["holds"]:
                path = _sysctl_path(key)
                if path.exists() and _norm(path.read_text()) == entry["value"]:
                    path.write_text(entry["original"] + "\n")
                    done.append(f"restored {key}={entry['original']}")
                del data["sysctls"][key]
        for d in lab_dir(lab).glob("*") if lab_dir(lab).exists() else []:
            if not _mounted(d):
                try:
                    d.rmdir()
                except OSError:
                    pass
        try:
            lab_dir(lab).rmdir()
        except OSError:
            pass
    return done


def holders() -> set[str]:
    """Labs that hold something in the ledger."""
    data = _read_ledger()
    labs = {k.split("/")[0] for pool in data.get("hugepages", {}).values() for k in pool}
    labs |= set(data.get("mounts", {}).values())
    labs |= {lab for e in data.get("sysctls", {}).values() for lab in e.get("holds", [])}
    return labs


def release_orphans() -> list[str]:
    """Release what labs hold whose namespaces are all gone (a crash, a `down` without release)."""
    try:
        live = {p.name for p in Path("/run/netns").iterdir()}
    except FileNotFoundError:
        live = set()
    done = []
    for lab in sorted(holders()):
        if not any(ns.startswith(f"{lab}-") or ns == f"{lab}.switch" for ns in live):
            done += [f"{lab}: {d}" for d in release(lab)]
    return done


# -- helpers -------------------------------------------------------------------
def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def _sh(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MachineError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpnlab.machine", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("hugepages", help="hold N hugepages (and a hugetlbfs mount) for a lab host")
    p.add_argument("--lab", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", default="2M", choices=sorted(SIZES_KB))
    p.add_argument("--check", action="store_true", help="change nothing; say whether it would change")
    p = sub.add_parser("sysctls", help="set machine-wide sysctls for a lab (KEY=VALUE ...)")
    p.add_argument("--lab", required=True)
    p.add_argument("--check", action="store_true", help="change nothing; say whether it would change")
    p.add_argument("values", nargs="*", metavar="KEY=VALUE")
    p = sub.add_parser("release", help="give back everything a lab holds")
    p.add_argument("--lab", required=True)
    sub.add_parser("release-orphans", help="give back what labs without namespaces hold")
    sub.add_parser("release-all", help="give back what every lab holds (before `hpnlab cleanup`)")
    sub.add_parser("show", help="print the ledger")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.cmd == "hugepages":
            out = hold_hugepages(args.lab, args.host, args.count, args.size, args.check)
        elif args.cmd == "sysctls":
            out = hold_sysctls(args.lab, dict(v.split("=", 1) for v in args.values), args.check)
        elif args.cmd == "release":
            done = release(args.lab)
            out = {"changed": bool(done), "done": done}
        elif args.cmd == "release-orphans":
            done = release_orphans()
            out = {"changed": bool(done), "done": done}
        elif args.cmd == "release-all":
            done = [f"{lab}: {d}" for lab in sorted(holders()) for d in release(lab)]
            out = {"changed": bool(done), "done": done}
        else:
            out = json.loads(ledger_path().read_text()) if ledger_path().exists() else {}
    except MachineError as exc:
        print(json.dumps({"changed": False, "failed": True, "msg": str(exc)}))
        print(f"hpnlab.machine: {exc}", file=sys.stderr)
        return 1
    out["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
