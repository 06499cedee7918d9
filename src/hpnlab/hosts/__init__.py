"""The Host API: one small interface that every provider's hosts implement.

    host.run("ss -lnt", timeout=10)       -> Result (raises CommandError on failure)
    host.start(["iperf3", "-s"], name="iperf")  -> Process (stop/wait/logs)
    host.put(local, remote) / host.get(remote, local)
    host.nics, host.address("data")

Labs, testinfra and Ansible glue talk to hosts only through this, so they do
not care whether a host is a network namespace, a VM or a real server.
"""
from __future__ import annotations

import json
import shlex
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from ..errors import HpnlabError
from ..interrupts import deferred_interrupts
from ..topology.model import Host as HostSpec
from ..topology.model import Nic

Command = str | Sequence[str]


def as_shell(cmd: Command) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(str(c) for c in cmd)


@dataclass
class Result:
    host: str
    cmd: str
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True)
class Link:
    """One interface as the kernel reports it."""
    ifname: str
    state: str                  # operstate: UP, DOWN, UNKNOWN, ...
    mtu: int | None
    mac: str                    # lower case
    flags: tuple[str, ...]
    inet: tuple[str, ...]       # IPv4 addresses with their prefix length, "10.0.0.1/24"

    @classmethod
    def from_ip_json(cls, d: dict) -> Link:
        return cls(ifname=d["ifname"], state=d.get("operstate", "?"), mtu=d.get("mtu"),
                   mac=str(d.get("address", "")).lower(), flags=tuple(d.get("flags", ())),
                   inet=tuple(f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", ())
                              if a.get("family") == "inet"))


class CommandError(HpnlabError, RuntimeError):
    hint = "run it by hand on the host: hpnlab exec HOST -- COMMAND"

    def __init__(self, result: Result, reason: str | None = None):
        self.result = result
        why = reason or f"exit status {result.rc}"
        err = result.stderr.strip() or result.stdout.strip()[-2000:]
        super().__init__(f"[{result.host}] `{result.cmd}` failed ({why})" + (f": {err}" if err else ""))


class Process(ABC):
    """A background process on a host. Every one is recorded so that `down`
    and `cleanup` can end it even if the program that started it died."""

    def __init__(self, host: Host, cmd: str, name: str):
        self.host, self.cmd, self.name = host, cmd, name

    @property
    @abstractmethod
    def pid(self) -> int: ...

    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int:
        """Exit status; raises TimeoutError if still running after `timeout`."""

    @abstractmethod
    def signal(self, signum: int) -> None: ...

    @abstractmethod
    def logs(self) -> tuple[str, str]:
        """(stdout, stderr) so far."""

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        import signal
        if self.alive():
            self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            return self.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with deferred_interrupts():     # a Ctrl-C meanwhile leaves no process behind
            self.stop()

    def __repr__(self):
        return f"<{type(self).__name__} {self.host.name}:{self.name} pid={self.pid}>"


class Host(ABC):
    """One lab host. `spec` is its entry in the topology model."""

    # the interpreter that runs hpnlab's code on the host (lab agents): the system python3,
    # where provisioning (the labcode role) installs hpnlab on VMs and machines
    python: str = "python3"
    # how long a program may take to start listening: Python's start-up alone takes seconds
    # on an emulated (TCG) guest of a busy machine
    start_timeout: float = 60.0

    def __init__(self, spec: HostSpec):
        self.spec = spec
        self.name = spec.name

    # -- commands ---------------------------------------------------------
    @abstractmethod
    def _exec(self, cmd: Command, timeout: float, input: str | None, env: dict | None) -> Result: ...

    def run(self, cmd: Command, timeout: float = 60.0, check: bool = True,
            input: str | None = None, env: dict | None = None) -> Result:
        result = self._exec(cmd, timeout, input, env)
        if check and not result.ok:
            raise CommandError(result)
        return result

    @abstractmethod
    def start(self, cmd: Command, name: str | None = None, env: dict | None = None) -> Process: ...

    # -- files --------------------------------------------------------------
    @abstractmethod
    def put(self, local: str | Path, remote: str) -> None: ...

    @abstractmethod
    def get(self, remote: str, local: str | Path) -> None: ...

    # -- addressing ---------------------------------------------------------
    @property
    def nics(self) -> tuple[Nic, ...]:
        return self.spec.nics

    def nic(self, network: str) -> Nic:
        return self.spec.nic(network)

    def address(self, network: str | None = None) -> IPv4Address:
        return (self.spec.nic(network) if network else self.spec.nics[0]).ip

    # -- conveniences built on run() ---------------------------------------
    def links(self, timeout: float = 30.0) -> dict[str, Link]:
        """The host's interfaces as its kernel has them now (`ip -j addr`), by name."""
        out = self.run(["ip", "-j", "addr", "show"], timeout=timeout).stdout
        return {d["ifname"]: Link.from_ip_json(d) for d in json.loads(out or "[]")}

    def sysctl(self, key: str) -> str:
        return self.run(["sysctl", "-n", key], timeout=10).stdout.strip()

    def wait_for_port(self, port: int, timeout: float | None = None, proto: str = "tcp") -> None:
        """Wait until something listens on `port` on this host (default: the host's start_timeout)."""
        flag = "-lnt" if proto == "tcp" else "-lnu"
        timeout = timeout or self.start_timeout
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(["ss", "-H", flag, f"sport = :{port}"], timeout=max(5.0, timeout / 2)).stdout
            if out.strip():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"[{self.name}] nothing listens on {proto}/{port} after {timeout:g}s")
            time.sleep(0.02)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"
