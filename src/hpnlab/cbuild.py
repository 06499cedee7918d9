"""Building the project's cffi modules (API mode: compiled against a C library's headers,
e.g. the liburing and DPDK bindings) into their package, and loading them.

    so = compile_into(ffi, "_hpnlab_x_v1", package_dir)     # in the package's build()
    sys.exit(build_main("hpnlab.x", build))                 # python -m hpnlab.x._build (make setup)
    mod = load_or_build("hpnlab.x", "_hpnlab_x_v1", build)   # import; build first if missing
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path


class BuildError(RuntimeError):
    """The module is not built and cannot be: the message says what is missing."""


def compile_into(ffi, module: str, target: Path, verbose: bool = False) -> Path:
    """Compile `ffi` (cdef and set_source done) and put the .so in `target`; its path."""
    with tempfile.TemporaryDirectory(prefix=f"hpnlab-{module}-") as tmp:
        so = ffi.compile(tmpdir=tmp, verbose=verbose)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        out = target / f"{module}{suffix}"
        # copy then rename: a concurrent importer never sees half a file
        staged = target / f".{module}.{os.getpid()}.tmp"
        shutil.copyfile(so, staged)
        os.replace(staged, out)
    return out


def load_or_build(package: str, module: str, build: Callable[[], Path]):
    """The compiled module `package.module`, built by `build()` first if it is missing."""
    try:
        return importlib.import_module(f"{package}.{module}")
    except ImportError:
        pass
    try:
        build()
    except Exception as exc:  # noqa: BLE001 - any build failure means unavailable, and why
        raise BuildError(str(exc)) from None
    return importlib.import_module(f"{package}.{module}")


def build_main(name: str, build: Callable[..., Path]) -> int:
    """`python -m <package>._build [-v]` (a setup step): the .so's path, or what failed in one line."""
    try:
        print(build(verbose="-v" in sys.argv))
    except Exception as exc:  # noqa: BLE001 - say what failed, in one line
        print(f"{name}: build failed: {exc}", file=sys.stderr)
        return 1
    return 0
