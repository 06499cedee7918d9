"""Hosts reached over SSH (VMs of the vagrant provider, static machines), with Fabric.

One Fabric connection per host object, opened on first use and kept. A
background process runs as `setsid sh -c CMD` on the host: its PID is its
process group, its output goes to files beside an exit-status file, so
`wait`, `logs` and `signal` work from any later connection too.
"""
from __future__ import annotations

import io
import re
import shlex
import time
from pathlib import Path
from typing import Callable

from . import Command, CommandError, Host, Process, Result, as_shell

PROC_DIR = "/var/tmp/hpnlab/procs"


def proxy_command(ssh_args: str | None, host: str, port: int = 22, user: str = "root") -> str | None:
    """The ProxyCommand that OpenSSH options (Ansible's ansible_ssh_common_args) give a
    host, for Fabric's `gateway=`: `-o ProxyCommand=CMD`, or `-o ProxyJump=JUMP` / `-J JUMP`
    as `ssh -W %h:%p JUMP`. Run by a shell with %h %p %r filled in, as OpenSSH does."""
    words = shlex.split(ssh_args or "")
    found = None
    for i, word in enumerate(words):
        option = None
        if word == "-o" and i + 1 < len(words):
            option = words[i + 1]
        elif word.startswith("-o") and len(word) > 2:
            option = word[2:]
        elif word == "-J" and i + 1 < len(words):
            option = f"ProxyJump={words[i + 1]}"
        if not option:
            continue
        m = re.match(r"\s*(\w+)\s*[=\s]\s*(.*)", option, re.S)
        key, value = (m.group(1).lower(), m.group(2).strip()) if m else ("", "")
        if key == "proxycommand" and value.lower() != "none":
            found = value
        elif key == "proxyjump" and value.lower() != "none":
            found = _jump_command(value)
        if found:
            break       # OpenSSH too keeps the first value it is given
    if not found:
        return None
    tokens = {"%": "%", "h": host, "p": str(port), "r": user}
    command = re.sub(r"%([%hpr])", lambda m: tokens[m.group(1)], found)
    return shlex.join(["sh", "-c", f"exec {command}"])


def _jump_command(jumps: str) -> str:
    """ProxyJump [user@]host[:port][,...] as the command OpenSSH makes of it."""
    *earlier, last = jumps.split(",")
    m = re.fullmatch(r"(?:(?P<user>[^@]+)@)?(?P<host>\[[^]]+\]|[^:]+)(?::(?P<port>\d+))?", last.strip())
    if not m:
        raise ValueError(f"cannot read ProxyJump {jumps!r}")
    argv = ["ssh"] + (["-J", ",".join(earlier)] if earlier else [])
    argv += (["-l", m["user"]] if m["user"] else []) + (["-p", m["port"]] if m["port"] else [])
    return shlex.join([*argv, "-W", "%h:%p", m["host"].strip("[]")]).replace("'%h:%p'", "%h:%p")


def _env_prefix(env: dict | None) -> str:
    if not env:
        return ""
    return "export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()) + "; "


class SshProcess(Process):
    def __init__(self, host: "SshHost", cmd: str, name: str, pid: int, base: str):
        super().__init__(host, cmd, name)
        self._pid, self.base = pid, base
        self._rc: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    def _probe(self) -> tuple[bool, int | None]:
        """(alive, exit status if it wrote one)."""
        r = self.host.run(f"kill -0 {self._pid} 2>/dev/null && echo alive; cat {self.base}.rc 2>/dev/null || true",
                          timeout=30, check=False)
        words = r.stdout.split()
        alive = "alive" in words
        rc = next((int(w) for w in words if w.lstrip("-").isdigit()), None)
        return alive, rc

    def alive(self) -> bool:
        if self._rc is not None:
            return False
        alive, rc = self._probe()
        if not alive:
            self._rc = rc if rc is not None else -1
        return alive

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.05
        while self.alive():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self!r} still running after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        return self._rc if self._rc is not None else -1

    def signal(self, signum: int) -> None:
        # the whole process group (setsid made the shell its leader)
        # `-PID` without `--`: dash (sh on Debian) reads `--` as a PID
        self.host.run(f"kill -{int(signum)} -{self._pid} 2>/dev/null || kill -{int(signum)} {self._pid} 2>/dev/null || true",
                      timeout=30, check=False)

    def logs(self) -> tuple[str, str]:
        out = self.host.run(f"cat {self.base}.out 2>/dev/null || true", timeout=60, check=False).stdout
        err = self.host.run(f"cat {self.base}.err 2>/dev/null || true", timeout=60, check=False).stdout
        return out, err


class SshHost(Host):
    provider = "ssh"

    def __init__(self, spec, address: str, user: str = "root", key: str | Path | None = None,
                 port: int = 22, record: Callable[[dict], None] | None = None,
                 connect_timeout: float = 15.0, proxy_command: str | None = None,
                 become: bool = False):
        super().__init__(spec)
        self.ssh_address, self.user, self.port = address, user, port
        self.key = str(key) if key else None
        self.proxy_command = proxy_command      # a jump host: Fabric's gateway= (see proxy_command())
        self.become = become                    # a non-root login: commands run through `sudo -n`
        self.connect_timeout = connect_timeout
        self._record = record
        self._conn = None
        self._count = 0

    # -- connection -----------------------------------------------------------
    @property
    def conn(self):
        if self._conn is None:
            import paramiko
            from fabric import Config, Connection
            kwargs = {"look_for_keys": self.key is None, "allow_agent": self.key is None,
                      "banner_timeout": 30, "auth_timeout": 30}
            if self.key:
                kwargs["key_filename"] = [self.key]
            config = Config(overrides={"load_ssh_configs": False})
            conn = Connection(self.ssh_address, user=self.user, port=self.port, config=config,
                              connect_timeout=self.connect_timeout, connect_kwargs=kwargs,
                              gateway=self.proxy_command or None)
            # Lab VMs get new host keys on every `up`, often at a reused address:
            # trust what answers on the lab's own management network, remember nothing.
            conn.client._system_host_keys = paramiko.HostKeys()
            conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- commands ---------------------------------------------------------------
    def _as_root(self, shell: str) -> str:
        return f"sudo -n -- sh -c {shlex.quote(shell)}" if self.become else shell

    def _exec(self, cmd: Command, timeout: float, input: str | None, env: dict | None) -> Result:
        from invoke.exceptions import CommandTimedOut
        shell = as_shell(cmd)
        started = time.monotonic()
        try:
            r = self.conn.run(self._as_root(_env_prefix(env) + shell), hide=True, warn=True, timeout=timeout,
                              in_stream=io.StringIO(input) if input is not None else False)
        except CommandTimedOut as exc:
            result = Result(self.name, shell, -9, exc.result.stdout, f"timed out after {timeout:g}s",
                            time.monotonic() - started)
            raise CommandError(result, f"timed out after {timeout:g}s") from None
        except Exception as exc:  # connection trouble: report it as this command's failure
            self.close()
            result = Result(self.name, shell, 255, "", f"ssh {self.user}@{self.ssh_address}: {exc}",
                            time.monotonic() - started)
            return result
        seconds = time.monotonic() - started
        if r.exited == -1:      # the channel closed with no exit status: Fabric's timeout, or a lost link
            if seconds >= timeout * 0.9:
                result = Result(self.name, shell, -9, r.stdout, f"timed out after {timeout:g}s", seconds)
                raise CommandError(result, f"timed out after {timeout:g}s")
            self.close()
            return Result(self.name, shell, 255, r.stdout, r.stderr or "ssh: no exit status (connection lost?)",
                          seconds)
        return Result(self.name, shell, r.exited, r.stdout, r.stderr, seconds)

    def start(self, cmd: Command, name: str | None = None, env: dict | None = None) -> Process:
        self._count += 1
        shell = as_shell(cmd)
        first = shell.split()[0] if shell.split() else "proc"
        name = name or f"{Path(first).name}-{self._count}"
        base = f"{PROC_DIR}/{name}-{time.time_ns()}"
        inner = f"{_env_prefix(env)}{shell}"
        # Only the setsid'd shell goes to the background (a `&` after `a && b && c`
        # would background the whole list, holding the SSH channel open until it ends).
        launch = (f"mkdir -p {PROC_DIR}; rm -f {base}.rc; "
                  f"setsid sh -c {shlex.quote(inner + '; echo $? > ' + base + '.rc')} "
                  f"> {base}.out 2> {base}.err < /dev/null & echo $!")
        r = self.run(launch, timeout=30)
        pid = int(r.stdout.split()[-1])
        if self._record:
            self._record({"host": self.name, "name": name, "pid": pid, "cmd": shell,
                          "started": time.time(), "stdout": f"{base}.out", "stderr": f"{base}.err"})
        return SshProcess(self, shell, name, pid, base)

    # -- files ------------------------------------------------------------------
    def put(self, local: str | Path, remote: str) -> None:
        parent = str(Path(remote).parent)
        self.run(["mkdir", "-p", parent], timeout=30)
        self.conn.put(str(local), remote)

    def get(self, remote: str, local: str | Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self.conn.get(remote, str(local))

    def __repr__(self):
        via = " via proxy" if self.proxy_command else ""
        return f"<SshHost {self.name} {self.user}@{self.ssh_address}{via}>"
