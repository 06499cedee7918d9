"""hpnlab's own code, packed for VMs and real machines (the Ansible role `labcode`).

    python -m hpnlab.labcode pack DIR     → {"fingerprint": ..., "zip": DIR/hpnlab-<fingerprint>.zip}

The zip holds the `hpnlab` package as it would sit in site-packages; the role unpacks it
under /opt/hpnlab/lib and puts that on the system python's path. It is built from the
checkout the controller runs, in well under a second and with no package index: a wheel
would need pip's isolated build environment (setuptools fetched from an index) for no
gain, since the hosts only import the package. The fingerprint, a hash over the
package's files, decides whether a host's copy is current.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpnlab.labcode")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="zip the hpnlab package into DIR (if not there); print JSON")
    p.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(pack(args.directory)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
