"""Hosts that are named network namespaces on this machine (`ip netns exec`).

They share the file system with the machine, so put/get are copies, and a
process started here is an ordinary child process inside the namespace.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import Command, Host, Process, Result, as_shell


def netns_argv(netns: str, cmd: Command) -> list[str]:
    # `ip netns exec` also remounts /sys for the namespace, so /sys/class/net
    # shows the host's own NICs (ethtool, dpdk-devbind and testinfra read it).
    inner = ["sh", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]
    return ["ip", "netns", "exec", netns, *inner]


class NetnsProcess(Process):
    def __init__(self, host: NetnsHost, cmd: str, name: str, popen: subprocess.Popen,
                 out: Path, err: Path):
        super().__init__(host, cmd, name)
        self._popen, self.out_path, self.err_path = popen, out, err

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self!r} still running after {timeout}s") from None

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.killpg(self._popen.pid, signum)   # the whole process group: sh -c and its children
            except ProcessLookupError:
                pass

    def logs(self) -> tuple[str, str]:
        return (self.out_path.read_text(errors="replace"), self.err_path.read_text(errors="replace"))


class NetnsHost(Host):
    python = sys.executable        # a namespace shares this machine's file system and venv
    start_timeout = 10.0

    def __init__(self, spec, netns: str, logdir: Path,
                 record: Callable[[dict], None] | None = None):
        super().__init__(spec)
        self.netns = netns
        self.logdir = logdir
        self._record = record

    def _exec(self, cmd: Command, timeout: float, input: str | None, env: dict | None) -> Result:
        started = time.monotonic()
        try:
            proc = subprocess.run(netns_argv(self.netns, cmd), capture_output=True, text=True, errors="replace",
                                  timeout=timeout, input=input, env=_env(env),
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            result = Result(self.name, as_shell(cmd), -9, out, f"timed out after {timeout:g}s",
                            time.monotonic() - started)
            from . import CommandError
            raise CommandError(result, f"timed out after {timeout:g}s") from None
        return Result(self.name, as_shell(cmd), proc.returncode, proc.stdout, proc.stderr,
                      time.monotonic() - started)

    def start(self, cmd: Command, name: str | None = None, env: dict | None = None) -> Process:
        base = name or Path(str(cmd if isinstance(cmd, str) else cmd[0]).split()[0]).name
        self.logdir.mkdir(parents=True, exist_ok=True)
        name, n = base, 1
        while (self.logdir / f"{name}.out").exists():   # Host objects come and go; logs must not clash
            n += 1
            name = f"{base}-{n}"
        out, err = self.logdir / f"{name}.out", self.logdir / f"{name}.err"
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            popen = subprocess.Popen(netns_argv(self.netns, cmd), stdout=fout, stderr=ferr,
                                     stdin=subprocess.DEVNULL, env=_env(env), start_new_session=True)
        if self._record:
            self._record({"host": self.name, "name": name, "pid": popen.pid, "cmd": as_shell(cmd),
                          "started": time.time(), "stdout": str(out), "stderr": str(err)})
        return NetnsProcess(self, as_shell(cmd), name, popen, out, err)

    def put(self, local: str | Path, remote: str) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, remote)

    def get(self, remote: str, local: str | Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)


def _env(extra: dict | None) -> dict | None:
    if not extra:
        return None
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env
