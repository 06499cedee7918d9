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
from collections.abc import Callable
from pathlib import Path

from ..errors import HpnlabError
from ..topology.model import Host as HostSpec
from . import Command, CommandError, Host, Process, Result, as_shell

PROC_DIR = "/var/tmp/hpnlab/procs"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
# Who vouches for a lab VM's key: the guest prints it on its serial console at first boot
# (box/files/hpnlab-hostkeys.service) and `hpnlab up` records it from there.
CONSOLE_RECORD = "the VM's serial console, read by `hpnlab up`"


class HostKeyError(HpnlabError):
    """A host's SSH key is unknown, or not the one on record: hpnlab does not connect."""


def ssh_options(ssh_args: str | None) -> list[tuple[str, str]]:
    """(option in lower case, value) of OpenSSH command-line options, in order: `-o K=V`,
    `-oK=V`, `-o 'K V'`, and `-J JUMP` as ProxyJump. OpenSSH keeps the first value of each."""
    words = shlex.split(ssh_args or "")
    found = []
    for i, word in enumerate(words):
        option = None
        if word == "-o" and i + 1 < len(words):
            option = words[i + 1]
        elif word.startswith("-o") and len(word) > 2:
            option = word[2:]
        elif word == "-J" and i + 1 < len(words):
            option = f"ProxyJump={words[i + 1]}"
        m = re.match(r"\s*(\w+)\s*[=\s]\s*(.*)", option or "", re.S)
        if m:
            found.append((m.group(1).lower(), m.group(2).strip()))
    return found


def ssh_option(ssh_args: str | None, name: str) -> str | None:
    """The value OpenSSH takes for option `name` from `ssh_args` (the first one given)."""
    return next((value for key, value in ssh_options(ssh_args) if key == name.lower()), None)


def proxy_command(ssh_args: str | None, host: str, port: int = 22, user: str = "root") -> str | None:
    """The ProxyCommand that OpenSSH options (Ansible's ansible_ssh_common_args) give a
    host, for Fabric's `gateway=`: `-o ProxyCommand=CMD`, or `-o ProxyJump=JUMP` / `-J JUMP`
    as `ssh -W %h:%p JUMP`. Run by a shell with %h %p %r filled in, as OpenSSH does."""
    found = None
    for key, value in ssh_options(ssh_args):
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


def known_hosts_args(known_hosts: str | None) -> list[str]:
    """OpenSSH options that check host keys as SshHost does: against `known_hosts` alone, or
    (None) the user's and the system's files; an unknown or changed key is refused."""
    args = ["-o", "StrictHostKeyChecking=yes"]
    if known_hosts:
        args += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    return args


def reach_of(hostvars: dict) -> dict:
    """How to reach a host, from its Ansible connection variables (an inventory's host vars):
    address, user, port, key, ssh_args, proxy (for Fabric), become, and the known_hosts
    file its key is checked against: `hpnlab_known_hosts`, else the UserKnownHostsFile of
    `ansible_ssh_common_args`, else None (the user's and the system's files)."""
    address = str(hostvars["ansible_host"])
    user = str(hostvars.get("ansible_user") or "root")
    port = int(hostvars.get("ansible_port") or 22)
    key = hostvars.get("ansible_ssh_private_key_file")
    ssh_args = str(hostvars.get("ansible_ssh_common_args") or "")
    known = hostvars.get("hpnlab_known_hosts") or ssh_option(ssh_args, "UserKnownHostsFile")
    become = str(hostvars.get("ansible_become", "")).strip().lower() in ("1", "true", "yes", "on")
    return {"address": address, "user": user, "port": port,
            "key": str(Path(key).expanduser()) if key else None, "ssh_args": ssh_args,
            "proxy": proxy_command(ssh_args, address, port, user), "become": user != "root" and become,
            "known_hosts": str(Path(str(known).split()[0]).expanduser().absolute()) if known else None,
            "recorded_by": hostvars.get("hpnlab_host_keys_recorded_by")}


def bare_spec(name: str) -> HostSpec:
    """Enough of a host to reach it (from a state file or an inventory alone)."""
    return HostSpec(name=name, role="-", cpus=0, memory_mb=0, profile=None, sysctls={}, hugepages=0,
                    hugepage_size="2M", dpdk_network=None, nics=())


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
    def __init__(self, host: SshHost, cmd: str, name: str, pid: int, base: str):
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
        sig = int(signum)
        self.host.run(f"kill -{sig} -{self._pid} 2>/dev/null || kill -{sig} {self._pid} 2>/dev/null || true",
                      timeout=30, check=False)

    def logs(self) -> tuple[str, str]:
        out = self.host.run(f"cat {self.base}.out 2>/dev/null || true", timeout=60, check=False).stdout
        err = self.host.run(f"cat {self.base}.err 2>/dev/null || true", timeout=60, check=False).stdout
        return out, err


class _RefuseUnknown:
    """paramiko's missing-host-key policy: refuse, saying which key and how to accept it."""

    def __init__(self, host: SshHost):
        self.host = host

    def missing_host_key(self, client, hostname, key):
        raise self.host.host_key_error(key)


def proc_base(name: str) -> str:
    """Where a started process's .out/.err/.rc go on the host. The name is a label of the
    caller's: only file-name-safe characters of it go into the path, which the launch line
    and the later reads use unquoted."""
    return f"{PROC_DIR}/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{time.time_ns()}"


class SshHost(Host):
    def __init__(self, spec, address: str, user: str = "root", key: str | Path | None = None,
                 port: int = 22, record: Callable[[dict], None] | None = None,
                 connect_timeout: float = 15.0, proxy_command: str | None = None,
                 become: bool = False, known_hosts: str | Path | None = None,
                 recorded_by: str | None = None):
        super().__init__(spec)
        self.ssh_address, self.user, self.port = address, user, port
        self.key = str(key) if key else None
        self.proxy_command = proxy_command      # a jump host: Fabric's gateway= (see proxy_command())
        self.become = become                    # a non-root login: commands run through `sudo -n`
        # the host's key must be in this file (None: the user's or the system's known_hosts);
        # `recorded_by` says who put it there when hpnlab did (lab VMs), else a person accepts it
        self.known_hosts = str(known_hosts) if known_hosts else None
        self.recorded_by = recorded_by
        self.connect_timeout = connect_timeout
        self._record = record
        self._conn = None
        self._count = 0

    # -- connection -----------------------------------------------------------
    @classmethod
    def from_reach(cls, spec, reach: dict, record: Callable[[dict], None] | None = None) -> SshHost:
        """The host that a reach_of() dict (or one kept in a state file) describes."""
        return cls(spec, reach["address"], user=reach["user"], key=reach.get("key"), port=reach["port"],
                   record=record, proxy_command=reach.get("proxy"), become=reach.get("become", False),
                   known_hosts=reach.get("known_hosts"), recorded_by=reach.get("recorded_by"))

    @property
    def conn(self):
        """The open connection; the host's key checked against known_hosts first."""
        if self._conn is None:
            import paramiko
            from fabric import Config

            from .proxy import ProxiedConnection
            kwargs = {"look_for_keys": self.key is None, "allow_agent": self.key is None,
                      "banner_timeout": 30, "auth_timeout": 30}
            if self.key:
                kwargs["key_filename"] = [self.key]
            config = Config(overrides={"load_ssh_configs": False})
            conn = ProxiedConnection(self.ssh_address, user=self.user, port=self.port, config=config,
                                     connect_timeout=self.connect_timeout, connect_kwargs=kwargs,
                                     gateway=self.proxy_command or None)
            conn.client._system_host_keys = paramiko.HostKeys()
            for path in self._known_hosts_files():
                if path.exists():
                    conn.client.load_system_host_keys(str(path))
            conn.client.set_missing_host_key_policy(_RefuseUnknown(self))
            try:
                conn.open()
            except paramiko.BadHostKeyException as exc:
                conn.close()
                raise self.host_key_error(exc.key, exc.expected_key) from None
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    # -- host keys --------------------------------------------------------------
    def _known_hosts_files(self) -> list[Path]:
        if self.known_hosts:
            return [Path(self.known_hosts)]
        return [Path(USER_KNOWN_HOSTS).expanduser(), Path(SYSTEM_KNOWN_HOSTS)]

    @property
    def known_hosts_entry(self) -> str:
        """The host's name in known_hosts, as OpenSSH and paramiko look it up."""
        return self.ssh_address if self.port == 22 else f"[{self.ssh_address}]:{self.port}"

    def accept_command(self) -> str:
        """The OpenSSH command that adds the key the host offers to the known_hosts file."""
        argv = ["ssh", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self._known_hosts_files()[0]}", "-p", str(self.port)]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.proxy_command:
            argv += ["-o", f"ProxyCommand={self.proxy_command}"]
        return shlex.join([*argv, f"{self.user}@{self.ssh_address}", "true"])

    def host_key_error(self, offered, expected=None) -> HostKeyError:
        """Why the connection is refused, with what to do about it."""
        where = " or ".join(str(p) for p in self._known_hosts_files())
        who = f"[{self.name}] {self.user}@{self.ssh_address}:{self.port}"
        got = f"{offered.get_name()} {offered.fingerprint}"
        if expected is None:
            message = f"{who}: unknown SSH host key {got} (no key for {self.known_hosts_entry} in {where})"
        else:
            message = (f"{who}: the SSH host key CHANGED: it offers {got}, {where} has "
                       f"{expected.get_name()} {expected.fingerprint}; someone may be intercepting "
                       f"the connection")
        if self.recorded_by:
            hint = (f"the key on record came from {self.recorded_by}; another key means another machine "
                    f"answers at {self.ssh_address}, or the record was changed: take the lab down and "
                    f"up again (`hpnlab down && hpnlab up`) to record its VMs' keys anew")
        elif expected is None:
            kind = offered.get_name().removeprefix("ssh-").split("-")[0]
            hint = (f"check that it is the machine's key (`ssh-keygen -lf /etc/ssh/ssh_host_{kind}_key.pub` "
                    f"on it), then accept it: {self.accept_command()}")
        else:
            hint = (f"only if the machine's key really changed (reinstalled?), forget the old key and "
                    f"accept the new one: ssh-keygen -f {shlex.quote(str(self._known_hosts_files()[0]))} "
                    f"-R {shlex.quote(self.known_hosts_entry)} && {self.accept_command()}")
        return HostKeyError(message, hint=hint)

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
        except HostKeyError:        # not a command's failure: nothing may run on that host
            raise
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
        base = proc_base(name)
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

    def attach(self, cmd: Command, timeout: float | None = None):
        """Run `cmd` on a channel of this connection, tied to it: (stdin, stdout, stderr) as
        paramiko files, whose reads wait at most `timeout` seconds. Its stdin ends when the
        connection closes, and with it a program that reads stdin until then (verify's listeners)."""
        return self.conn.client.exec_command(self._as_root(as_shell(cmd)), timeout=timeout)

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
