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
    sub.add_parser("build", help="build the native parts here (load generator, liburing binding); print JSON")
    args = parser.parse_args(argv)
    print(json.dumps(pack(args.directory) if args.cmd == "pack" else build()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
