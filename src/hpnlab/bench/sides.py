"""Where the bench's server and client run: this machine (pinned) or a lab host.

A Side starts processes and reads the server's /proc. Loopback mode uses
two LocalSides pinned to different CPUs; lab mode wraps the Host API
(server on h1, client on h2). Netns hosts share this machine's PID space
and file system, so their /proc is read directly; other hosts via `cat`.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from ..hosts import Process


class LocalProcess(Process):
    """A child process of the runner whose output goes to files, behind the Host
    API's Process interface (stop() = SIGTERM, then SIGKILL)."""

    def __init__(self, argv: Sequence[str], logdir: Path, name: str, env: dict | None):
        super().__init__(SimpleNamespace(name="local"), shlex.join([str(a) for a in argv]), name)
        self.out, self.err = logdir / f"{name}.out", logdir / f"{name}.err"
        with open(self.out, "wb") as fo, open(self.err, "wb") as fe:
            self.popen = subprocess.Popen(list(argv), stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                          env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def logs(self) -> tuple[str, str]:
        return self.out.read_text(errors="replace"), self.err.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"pid {self.pid} still running after {timeout}s") from None


class Side:
    """One end of the benchmark."""

    def __init__(self, name: str, address: str, cpu: int | None, host=None, local_proc: bool = True,
                 logdir: Path | None = None):
        self.name = name
        self.address = address
        self.bind_address = address      # what a server on this side binds to
        self.cpu = cpu
        self.host = host                 # a hpnlab.hosts.Host, or None for this machine
        self.local_proc = local_proc     # can /proc/<pid> of its processes be read here?
        self.logdir = logdir or Path(tempfile.mkdtemp(prefix=f"hpnlab-bench-{name}-"))
        self._n = 0

    def cleanup(self) -> None:
        """Remove the processes' log files (they were read as the runs went)."""
        shutil.rmtree(self.logdir, ignore_errors=True)

    def describe(self) -> str:
        where = f"lab host {self.host.name}" if self.host else "this machine"
        return f"{where} ({self.address})" + (f", pinned to CPU{self.cpu}" if self.cpu is not None else "")

    def _pinned(self, argv: Sequence[str]) -> list[str]:
        return (["taskset", "-c", str(self.cpu)] if self.cpu is not None else []) + [str(a) for a in argv]

    def start(self, argv: Sequence[str], name: str) -> Process:
        # taskset and `ip netns exec` both exec(), so the pid is the program's own.
        self._n += 1
        argv = self._pinned(argv)
        if self.host is None:
            return LocalProcess(argv, self.logdir, f"{name}-{self._n}", None)
        return self.host.start(argv, name=f"bench-{name}-{self._n}")

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> tuple[int, str, str]:
        if self.host is None:
            p = subprocess.run([str(a) for a in argv], capture_output=True, check=False, text=True, timeout=timeout)
            return p.returncode, p.stdout, p.stderr
        r = self.host.run([str(a) for a in argv], timeout=timeout, check=False)
        return r.rc, r.stdout, r.stderr

    def read(self, path: str) -> str | None:
        """A /proc file of a process on this side (None if it is gone)."""
        if self.local_proc:
            try:
                return Path(path).read_text()
            except OSError:
                return None
        rc, out, _ = self.run(["cat", path], timeout=10)
        return out if rc == 0 else None

    def listdir(self, path: str) -> list[str]:
        if self.local_proc:
            try:
                return os.listdir(path)
            except OSError:
                return []
        rc, out, _ = self.run(["ls", path], timeout=10)
        return out.split() if rc == 0 else []

    def wait_listening(self, handle: Process, port: int, timeout: float = 15.0) -> str | None:
        """None once the server said it listens, else why it did not (its own message)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, err = handle.logs()
            if "listening" in err:
                return None
            if not handle.alive():
                msg = [ln for ln in err.strip().splitlines() if ln.strip()]
                return msg[-1] if msg else f"server exited with status {handle.wait(1)}"
            time.sleep(0.02)
        return f"server did not report listening on port {port} within {timeout:g}s"
