"""hpnlab's own code, packed for VMs and real machines (the Ansible role `labcode`).

    python -m hpnlab.labcode pack DIR     → {"fingerprint": ..., "zip": DIR/hpnlab-<fingerprint>.zip}
    python -m hpnlab.labcode build        → on the host: {"built": [...], "ready": {...}, "missing": {...}}

The zip holds the `hpnlab` package as it would sit in site-packages; the role unpacks it
under /opt/hpnlab/lib and puts that on the system python's path. It is built from the
checkout the controller runs, in well under a second and with no package index: a wheel
would need pip's isolated build environment (setuptools fetched from an index) for no
gain, since the hosts only import the package. The fingerprint, a hash over the
package's files, decides whether a host's copy is current.

The zip carries sources only; `build`, run on the host by the role, compiles the native
parts there (the bench's C load generator into <prefix>/bin, the liburing binding beside
its package) with the host's own compiler and headers, which the hpnlab box carries.
A part the host cannot build is reported, not fatal: the bench names it and its fix.

`pack` also zips VENDOR - the PyPI distributions labs import on hosts that no Debian
package carries (C ikcp's binding, aioquic) - with what they require, from the
controller's own environment; the role unpacks them into <prefix>/vendor, which is NOT
on the system python's path (the copies would shadow Debian's cffi and friends for every
program): a lab agent that needs them calls `use_vendor()`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
FINGERPRINT = "FINGERPRINT"        # in the prefix, written by the role after unpacking
VENDOR = ("kcp", "aioquic")        # the rudp lab's C ikcp and QUIC (guests reach no package index)


def installed_prefix() -> Path | None:
    """The labcode prefix (/opt/hpnlab) when this package is the copy the role unpacked
    into <prefix>/lib, else None (a checkout, a venv)."""
    prefix = PACKAGE.parents[1]
    return prefix if (prefix / FINGERPRINT).exists() else None


def _files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so"))


def fingerprint() -> str:
    digest = hashlib.sha256()
    for path in _files():
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


# What a host answers for "which hpnlab do you run": the FINGERPRINT beside the copy its python3
# imports. Plain enough that a copy from any earlier checkout can answer it.
_ASK_INSTALLED = ("import pathlib, hpnlab; "
                  "p = pathlib.Path(hpnlab.__file__).resolve().parents[2] / 'FINGERPRINT'; "
                  "print(p.read_text().strip() if p.exists() else '')")


def outdated_hosts(provider) -> dict[str, str]:
    """{host: the fingerprint of the hpnlab it runs ('' for none)} for each of the lab's hosts
    whose copy is not this checkout's - an edit or a `git pull` since provisioning. Netns
    hosts import this checkout itself, so never."""
    if provider.shares_kernel:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    def installed(host) -> str:
        result = host.run([host.python, "-c", _ASK_INSTALLED], check=False, timeout=120)
        return result.stdout.strip() if result.ok else ""

    hosts = provider.hosts()
    current = fingerprint()
    with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
        found = dict(zip(hosts, pool.map(installed, hosts.values())))
    return {name: fp for name, fp in found.items() if fp != current}


def pack(directory: Path) -> dict:
    """Write DIR/hpnlab-<fingerprint>.zip unless it is there; return where and which."""
    fp = fingerprint()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"hpnlab-{fp}.zip"
    if not target.exists():
        tmp = target.with_suffix(".zip.part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in _files():
                zf.write(path, Path("hpnlab", path.relative_to(PACKAGE)).as_posix())
        tmp.replace(target)
        for old in directory.glob("hpnlab-*.zip"):          # one lab's worth, not every past edit
            if old != target:
                old.unlink(missing_ok=True)
    return {"fingerprint": fp, "zip": str(target)}


def vendor_closure(names: tuple[str, ...] = VENDOR) -> list:
    """The installed distributions `names` and, transitively, what they require here (markers
    evaluated for this interpreter, no extras), sorted by name."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    seen: dict = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(f"{name} is not installed here, so it cannot be copied to the lab hosts "
                               f"(`make setup` installs it)") from None
        seen[name] = dist
        for spec in dist.requires or ():
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [seen[n] for n in sorted(seen)]


def zip_distribution(zf: zipfile.ZipFile, dist) -> None:
    """Add an installed distribution's files (its metadata too) to `zf` as they sit in
    site-packages, so that the zip's root goes on a path: no scripts outside it, no bytecode."""
    for f in dist.files or ():
        local = Path(str(dist.locate_file(f)))
        if f.parts[0] != ".." and "__pycache__" not in f.parts and local.is_file():
            zf.write(local, f.as_posix())


def pack_vendor(directory: Path, names: tuple[str, ...] = VENDOR) -> dict:
    """Write DIR/vendor-<fingerprint>.zip (the files of `names` and their requirements, as they
    sit in site-packages) unless it is there; the fingerprint hashes the names and versions."""
    dists = vendor_closure(names)
    fp = hashlib.sha256(" ".join(f"{d.metadata['Name']}=={d.version}" for d in dists).encode()).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"vendor-{fp}.zip"
    if not target.exists():
        tmp = target.with_suffix(".zip.part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for dist in dists:
                zip_distribution(zf, dist)
        tmp.replace(target)
        for old in directory.glob("vendor-*.zip"):
            if old != target:
                old.unlink(missing_ok=True)
    return {"vendor_fingerprint": fp, "vendor_zip": str(target),
            "vendor": [f"{d.metadata['Name']}=={d.version}" for d in dists]}


def use_vendor() -> Path | None:
    """Put <prefix>/vendor (the role's copy of VENDOR) first on this process's path, if this
    package is the role's copy and the vendor directory is there; return it."""
    prefix = installed_prefix()
    vendor = prefix / "vendor" if prefix else None
    if vendor is None or not vendor.is_dir():
        return None
    if str(vendor) not in sys.path:
        sys.path.insert(0, str(vendor))
    return vendor


def _uring_binding() -> Path:
    """Where the uring package imports its compiled binding from."""
    import sysconfig

    from .uring import _build
    return _build.build_dir() / f"{_build.MODULE}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"


def _uring_cached() -> Path:
    """The binding as built from this _build.py, kept beside the load generator: the role
    unpacks a fresh package on every install, and the compile is the slow part under TCG."""
    from .bench import loadgen
    from .uring import _build
    recipe = hashlib.sha256(Path(_build.__file__).read_bytes()).hexdigest()[:16]
    return loadgen.binary_path().parent / f"{_uring_binding().stem}-{recipe}.so"


def _uring_is_current() -> bool:
    binding, cached = _uring_binding(), _uring_cached()
    return binding.exists() and cached.exists() and binding.read_bytes() == cached.read_bytes()


def _build_uring_binding() -> Path:
    import shutil
    import tempfile

    from .uring import _build
    cached = _uring_cached()
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            try:
                built = _build.build(target_dir=Path(tmp))
            except ImportError as exc:
                raise RuntimeError(f"{exc.name} is not installed (Debian: python3-{exc.name})") from None
            for old in cached.parent.glob(f"{_uring_binding().stem}-*.so"):
                old.unlink()
            os.replace(built, cached)
    shutil.copyfile(cached, _uring_binding())
    return _uring_binding()


def build() -> dict:
    """Build what is missing or stale of the native parts; say what is ready and what cannot be."""
    from .bench import loadgen
    result: dict = {"built": [], "ready": {}, "missing": {}}
    parts = {"hpnlab-loadgen": (loadgen.binary_path, loadgen.is_current, loadgen.build),
             "liburing binding": (_uring_binding, _uring_is_current, _build_uring_binding)}
    for name, (path, current, make) in parts.items():
        try:
            if not current():
                make()
                result["built"].append(name)
            result["ready"][name] = str(path())
        except Exception as exc:  # noqa: BLE001 - any failure is reported with its reason
            result["missing"][name] = (str(exc).strip() or repr(exc)).splitlines()[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpnlab.labcode")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="zip the hpnlab package into DIR (if not there); print JSON")
    p.add_argument("directory", type=Path)
    p = sub.add_parser("pack-vendor", help=f"zip {', '.join(VENDOR)} and what they require into DIR; print JSON")
    p.add_argument("directory", type=Path)
    sub.add_parser("build", help="build the native parts here (load generator, liburing binding); print JSON")
    args = parser.parse_args(argv)
    if args.cmd == "pack-vendor":
        try:
            print(json.dumps(pack_vendor(args.directory)))
        except RuntimeError as exc:
            print(f"labcode pack-vendor: {exc}", file=sys.stderr)
            return 1
        return 0
    print(json.dumps(pack(args.directory) if args.cmd == "pack" else build()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
