"""Where the bench's server and client run: this machine (pinned) or a lab host.

A Side starts processes and reads the server's /proc. Loopback mode uses
two LocalSides pinned to different CPUs; lab mode wraps the Host API
(server on h1, client on h2). Netns hosts share this machine's PID space
and file system, so their /proc is read directly; other hosts via `cat`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
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
        super().__init__(SimpleNamespace(name="local"),  # type: ignore[arg-type]  # no Host: this machine
                         shlex.join([str(a) for a in argv]), name)
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
        # the interpreter its servers run with: $HPNLAB_AGENT_PYTHON if set (as for the labs'
        # agents), else the host's own (this venv on netns hosts, the system python3 on VMs
        # and machines, where the labcode role installed hpnlab)
        self.python = os.environ.get("HPNLAB_AGENT_PYTHON") or (host.python if host is not None else sys.executable)
        self.loadgen = ""                # the load generator's path there (from probe())
        self.syscall_tool: str | None = None   # perf or strace there (from probe())
        self.vm_pid: int | None = None   # the QEMU process of its host when that is a VM on this machine
        # how often to look at its processes' output: on a host of its own a look is a line to its
        # look agent, which takes a little of the CPU the processes being watched need
        self.poll_interval = 0.005 if local_proc else 0.05
        self.logdir = logdir or Path(tempfile.mkdtemp(prefix=f"hpnlab-bench-{name}-"))
        self._n = 0
        self._looker: tuple | None = None     # (its stdin, its stdout, the local Popen or None)

    def cleanup(self) -> None:
        """End the look agent; remove the processes' log files (they were read as the runs went)."""
        self.cleanup_looker()
        shutil.rmtree(self.logdir, ignore_errors=True)

    def cleanup_looker(self) -> None:
        """End the look agent, if one runs: at the end of its input it returns."""
        if self._looker is None:
            return
        stdin, _stdout, popen = self._looker
        self._looker = None
        try:
            stdin.close()
        except OSError:               # the connection is gone already, and the agent with it
            pass
        if popen is not None:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    def terminate(self, handles: list[Process]) -> None:
        """SIGTERM to the process groups of processes this side started, in one command on a
        host of its own (not one SSH session each)."""
        if self.host is None:
            for handle in handles:
                handle.signal(signal.SIGTERM)
        elif handles:
            # `-PID` without `--`: dash (sh on Debian) reads `--` as a PID
            self.run(["sh", "-c", " ".join(f"kill -TERM -{h.pid} 2>/dev/null;" for h in handles) + " true"],
                     timeout=30)

    def output(self, handle: Process) -> tuple[str, str, bool]:
        """(stdout, stderr, alive) of a process this side started; `alive` was read first, so the
        output of one that ended is whole. On a host of its own the look agent reads them: one
        line on its channel, where handle.alive() and handle.logs() open three SSH sessions."""
        base = getattr(handle, "base", None)       # where an SshProcess's output goes on its host
        if self.host is None or base is None:
            alive = handle.alive()
            return (*handle.logs(), alive)
        _alive, out, err = self.look(f"read {handle.pid} {base}.out {base}.err").split("@file", 2)
        return out.strip("\n"), err.strip("\n"), _alive.split()[1] == "1"

    def look(self, request: str) -> str:
        """The look agent's answer to `request` (hpnlab.bench.procstat, started on this side's host
        at the first look and kept: one line over one SSH channel per look, no new session)."""
        if self._looker is None:
            agent = f"{shlex.quote(self.python)} -m hpnlab.bench.procstat"
            argv = ["sh", "-c", f"chrt -f 1 true 2>/dev/null && exec chrt -f 1 {agent} || exec {agent}"]
            if self.host is not None:
                stdin, stdout, _ = self.host.attach(argv, timeout=60)
                self._looker = (stdin, stdout, None)
            else:
                popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         start_new_session=True)
                self._looker = (popen.stdin, popen.stdout, popen)
        stdin, stdout, _ = self._looker
        lines: list[str] = []
        try:
            stdin.write(request + "\n")
            stdin.flush()
            while (line := stdout.readline()) and line.rstrip("\n") != "@end":
                lines.append(line)
        except OSError as exc:        # a timeout or a lost connection: its next answer would not be ours
            line = ""
            lines.append(str(exc))
        if not line:
            self.cleanup_looker()     # the next look starts a new one
            raise RuntimeError(f"the look agent (`{self.python} -m hpnlab.bench.procstat`) on "
                               f"{self.host.name if self.host else 'this machine'} ended: "
                               + ("".join(lines).strip().splitlines() or ["no answer"])[-1])
        return "".join(lines)

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
            # a session of its own, as a command over SSH has: a look at /proc leaves out its own
            # session's processes, which here would otherwise be the bench's and its callers'
            p = subprocess.run([str(a) for a in argv], capture_output=True, check=False, text=True, timeout=timeout,
                               start_new_session=True)
            return p.returncode, p.stdout, p.stderr
        r = self.host.run([str(a) for a in argv], timeout=timeout, check=False)
        return r.rc, r.stdout, r.stderr

    def probe(self, engines: list[str]) -> dict:
        """What this side's host can run (hpnlab.bench.probe, run there with the servers' python)."""
        try:
            rc, out, err = self.run([self.python, "-m", "hpnlab.bench.probe", *engines],
                                    timeout=max(120.0, getattr(self.host, "start_timeout", 0)))
        except OSError as exc:
            rc, out, err = 127, "", str(exc)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if rc != 0 or not lines:
            where = f"host {self.host.name}" if self.host else "this machine"
            hint = " (is hpnlab installed there? `make lab-provision` installs it)" if self.host else ""
            raise RuntimeError(f"cannot run `{self.python} -m hpnlab.bench.probe` on {where}{hint}: "
                               + ((err or out).strip().splitlines() or [f"exit status {rc}"])[-1])
        return json.loads(lines[-1])

    def server_pids(self, handle: Process) -> list[int]:
        """The pids a server announced ("listening ... pid=N", one line per process): on a
        remote host the handle's pid is the shell that started it, not the server."""
        pids = [int(m) for m in re.findall(r"(?m)^listening .*\bpid=(\d+)", self.output(handle)[1])]
        return list(dict.fromkeys(pids)) or [handle.pid]

    def wait_listening(self, handle: Process, port: int) -> str | None:
        """None once the server said it listens, else why it did not (its own message)."""
        timeout = self.host.start_timeout if self.host else 15.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, err, alive = self.output(handle)
            if "listening" in err:
                return None
            if not alive:
                msg = [ln for ln in err.strip().splitlines() if ln.strip()]
                return msg[-1] if msg else f"server exited with status {handle.wait(1)}"
            time.sleep(self.poll_interval)
        return f"server did not report listening on port {port} within {timeout:g}s"
