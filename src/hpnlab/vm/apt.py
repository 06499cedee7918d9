"""apt-get with one progress line per phase (update, download, unpack, configure: its
package count and elapsed time) instead of dpkg's hundreds; the full output goes to a
log file that an error names. Runs under the system python3 (before the venv exists)."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from . import Progress, VmError

LOG_DIR = Path("/var/log/hpnlab")
# each phase: the lines that count in it (the first one opens it), and what they count
UPDATE = (("update", ("Hit:", "Get:"), "indexes"),)
INSTALL = (("download", ("Get:",), "packages"), ("unpack", ("Unpacking ",), "packages"),
           ("configure", ("Setting up ",), "packages"))


def install(packages: Sequence[str], progress: Progress, log: Path, timeout: float = 1800) -> None:
    """apt-get update, then install --no-install-recommends `packages` (non-interactive)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    _apt(["apt-get", "-q", "update"], UPDATE, progress, log, timeout)
    _apt(["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", "install", "--no-install-recommends", *packages],
         INSTALL, progress, log, timeout)


def _apt(argv: list[str], phases: tuple, progress: Progress, log: Path, timeout: float) -> None:
    """Run apt-get into `log`; a phase's line when a later phase opens (or apt ends)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    counts = [0] * len(phases)
    current, t0 = -1, time.monotonic()
    since = t0

    def close_through(last: int, now: float) -> None:
        nonlocal since
        for i in range(max(current, 0), last + 1):
            if counts[i]:
                name, _, what = phases[i]
                progress(f"apt: {name}: {counts[i]} {what} in {now - since:.1f} s")
                since = now

    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=env, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise VmError("apt-get is not installed: hpnlab installs packages on Debian/Ubuntu only") from None
        assert proc.stdout is not None      # (a pipe)
        try:
            for line in proc.stdout:
                out.write(line)
                now = time.monotonic()
                if now - t0 > timeout:
                    raise VmError(f"`{' '.join(argv)}` took more than {timeout:g} s; full log: {log}")
                i = next((i for i, (_, starts, _) in enumerate(phases) if line.startswith(starts)), None)
                if i is None or i < current:
                    continue
                if i > current:
                    close_through(i - 1, now)
                    current = i
                counts[i] += 1
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    close_through(len(phases) - 1, time.monotonic())
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-12:])
        raise VmError(f"`{' '.join(argv)}` failed (exit {rc}); full log: {log}\n{tail}")
