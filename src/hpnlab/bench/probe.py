"""What one host can run for the bench: which engines, the load generator, a syscall counter.

    python -m hpnlab.bench.probe ENGINE...   → one JSON document on stdout

The bench runs this with the interpreter the servers will run with, on the host they
will run on (the controller's venv on netns hosts and loopback, the system python3
where the labcode role installed hpnlab), so an engine's verdict is the host's, not
the controller's. Every "cannot" carries how to fix it on that kind of host.
Standard library and hpnlab only: it runs on lab hosts.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from ..labcode import installed_prefix


def in_venv() -> bool:
    return sys.prefix != sys.base_prefix


def fix_hint(reason: str) -> str:
    """How to give this host what `reason` says it lacks."""
    missing = re.match(r"(\S+) is not installed", reason)
    if in_venv():
        where = f"the venv {sys.prefix}"
        if missing:
            return f"`{sys.prefix}/bin/pip install {missing[1]}` (`make setup` installs it into {where})"
        return "`make setup` (it installs gcc, liburing-dev and the venv's libraries, and builds the binding)"
    if missing:
        return (f"install Debian's python3-{missing[1]} on this host (the hpnlab box carries it; a "
                "machine of your own: `apt-get install python3-" + missing[1] + "`), then `make lab-provision`")
    return ("install gcc, libc6-dev, python3-dev, python3-cffi and liburing-dev on this host (the hpnlab "
            "box carries them), then `make lab-provision`: the labcode role builds the binding")


def engines(names: list[str]) -> dict[str, str | None]:
    """Why each engine cannot run here (None: it can), with the fix."""
    from ..servers import unavailable
    out: dict[str, str | None] = {}
    for name in names:
        why = unavailable(name)
        out[name] = f"{why.rstrip('.')}. Fix: {fix_hint(why)}" if why else None
    return out


def parallel(names: list[str]) -> list[str]:
    """The engines that run N threads or processes of their own (`--workers N`)."""
    from ..servers import EngineError, engine_class
    out = []
    for name in names:
        try:
            if getattr(engine_class(name), "parallel", False):
                out.append(name)
        except EngineError:
            pass
    return out


def load_generator() -> dict:
    from .loadgen import LoadgenError, build
    try:
        return {"path": str(build())}
    except (LoadgenError, OSError) as exc:
        fix = ("`make lab-provision` (the labcode role builds it; the host needs gcc and libc6-dev)"
               if installed_prefix() else "`make setup`")
        return {"error": f"hpnlab-loadgen is missing and cannot be built here: {exc}. Fix: {fix}"}


def emulated_cpu() -> bool:
    """Whether QEMU emulates this CPU in software (TCG, as on the default VM lab where KVM
    fails): then each guest instruction costs many host ones."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "QEMU TCG CPU" in cpuinfo or "QEMU Virtual CPU" in cpuinfo


def versions() -> dict:
    import platform
    import subprocess
    v: dict[str, str | None] = {"python": platform.python_version()}
    for mod in ("uvloop", "greenlet", "cffi"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:       # noqa: BLE001 - a version is informational
            v[mod] = None
    try:
        v["liburing"] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "liburing-dev"],
                                       capture_output=True, check=False, text=True).stdout or None
    except OSError:
        v["liburing"] = None
    return v


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    tool = "perf" if shutil.which("perf") else "strace" if shutil.which("strace") else None
    print(json.dumps({"python": sys.executable, "cpus": os.cpu_count() or 1, "engines": engines(names),
                      "parallel": parallel(names), "loadgen": load_generator(), "syscall_tool": tool,
                      "emulated": emulated_cpu(), "versions": versions()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
