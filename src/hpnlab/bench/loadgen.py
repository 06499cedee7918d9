"""Build and locate hpnlab-loadgen (loadgen.c beside this file).

`make setup` builds it (mk/bench.mk runs `python -m hpnlab.bench.loadgen
--build`); the runner also builds it on first use if it is missing or older
than its source, and says clearly what is missing when it cannot.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import HpnlabError
from ..labcode import installed_prefix

SOURCE = Path(__file__).with_name("loadgen.c")
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-std=gnu11"]


class LoadgenError(HpnlabError, RuntimeError):
    pass


def _build_dir() -> Path:
    # In a checkout (editable install) build into <repo>/build, which git ignores; the
    # copy the labcode role installs on a lab host into <prefix>/build; any other installed
    # package into the user's cache.
    repo = SOURCE.parents[3]
    if (repo / "pyproject.toml").exists() and os.access(repo, os.W_OK):
        return repo / "build"
    prefix = installed_prefix()
    if prefix:
        return prefix / "build"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpnlab"


def binary_path() -> Path:
    return _build_dir() / "hpnlab-loadgen"


def _recipe() -> str:
    """What the binary is built from: a fresh copy of the same source (the labcode role
    unpacks a new mtime on every install) needs no rebuild."""
    return hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()


def is_current() -> bool:
    out = binary_path()
    stamp = out.with_name(out.name + ".recipe")
    return out.exists() and stamp.exists() and stamp.read_text() == _recipe()


def build(force: bool = False) -> Path:
    out = binary_path()
    if not force and is_current():
        return out
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if not cc:
        raise LoadgenError("cannot build hpnlab-loadgen: no C compiler (gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build to a temporary name and rename, so parallel builds never see half a file.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".loadgen-")
    os.close(fd)
    proc = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, check=False, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise LoadgenError(f"building hpnlab-loadgen failed:\n{proc.stderr}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    out.with_name(out.name + ".recipe").write_text(_recipe())
    return out


def argv(binary: str, host: str, port: int, conns: int, size: int, depth: int = 1,
         duration: float = 5.0, warmup: float = 1.0, connect_timeout: float = 30.0,
         linger: float = 0.5) -> list[str]:
    return [binary, "-H", host, "-p", str(port), "-c", str(conns), "-s", str(size),
            "-d", str(depth), "-t", f"{duration:g}", "-w", f"{warmup:g}", "-T", f"{connect_timeout:g}",
            "-L", f"{linger:g}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--build", action="store_true", help="(re)build the binary and print its path")
    args = p.parse_args()
    try:
        print(build(force=args.build))
    except LoadgenError as exc:
        print(f"hpnlab-loadgen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
