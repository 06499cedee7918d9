"""The static provider: real machines that already exist, reached over SSH.

    inventory/static.yml   how to reach each host (ansible_host, ansible_user, ansible_port,
                           ansible_ssh_private_key_file, ansible_become; a jump host as
                           ansible_ssh_common_args: -o ProxyCommand=... or -o ProxyJump=...)
                           and what its NICs are called (hpnlab_ifnames: network → NIC)
    up     every host answers over SSH and has every data NIC named → each NIC gets the
           topology's address, MTU and link state where it lacks them → the host's sysctls
           (machine + profile) are set and read back → state phase up
    down   the processes labs started, what their impairments left, then exactly what `up`
           changed, undone

The machines are not hpnlab's: `up` records each change in state.json before it makes
it, so `down`, a rolled-back `up` and `cleanup` undo those changes and touch nothing
else. A machine without a state file is never touched. Provisioning (`hpnlab provision`)
is what a real machine keeps: `down` does not undo it.

A lab run that is killed (kill -9: no undo runs) leaves its processes and impairments
(qdiscs, nftables tables and rules, delay lines) on the machines. Each run holds the lab's
run lock while it lives; the next run that gets it, `cleanup` and `down` end the processes
the state recorded and remove what hpnlab's impairments left (by the marks hpnlab.impair
gives them), nothing else.
"""
from __future__ import annotations

import fcntl
import os
import shlex
from dataclasses import replace
from pathlib import Path

from .. import impair, inventory
from ..hosts import Host, Link
from ..hosts.ssh import HostKeyError, SshHost, bare_spec, known_hosts_args, reach_of
from ..state import LabState, registered, unregister_live
from ..topology import Lab
from . import Progress, Provider, ProviderError, _quiet, is_lab_nft_table

CONNECTION_VARS = ("ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
                   "ansible_become", "ansible_become_method", "ansible_become_user",
                   "ansible_become_password", "ansible_ssh_common_args", "ansible_python_interpreter",
                   "ansible_connection", "ansible_password")

SSH_TIMEOUT = 30.0
RUN_LOCK = "run.lock"       # in the lab's state directory: held by the live lab run, if any


class StaticProvider(Provider):
    name = "static"

    exists_before_up = True

    def __init__(self, lab: Lab, state_root: Path | None = None):
        super().__init__(lab, state_root)
        self.declared = lab
        self._run_lock: int | None = None
        self._read_inventory(None)

    def _read_inventory(self, path: str | Path | None) -> None:
        # The hosts' NICs carry their real names (hpnlab_ifnames) everywhere: labs, status,
        # inventory. Without a static inventory the lab keeps lab.yml's names until `up` asks.
        self.static: dict[str, dict] | None = None
        try:
            self.static = inventory.load_static(path)
        except inventory.InventoryError as exc:
            self.static_error = str(exc)
        else:
            self.lab = _with_real_ifnames(self.declared, self.static)

    @classmethod
    def validate(cls, lab: Lab) -> list[tuple[int, str, str]]:
        """Real links stay as they are: an impaired network is not this provider's to make.
        (Sysctls are the machines' own: each one is set and read back there at `up`.)"""
        return [(n.line, f"networks.{n.name}.impair", "the static provider leaves real links as they are: "
                 "an impaired network needs the netns or the vagrant provider")
                for n in lab.networks.values() if n.impair]

    def using_inventory(self, path: str | Path | None) -> Provider:
        if path is not None:
            self._read_inventory(path)
        return self

    def ansible_connection(self, host: str) -> dict:
        """The connection variables the user's inventory gives the host (and its hpnlab_*
        ones), with hpnlab's host-key checking first in the SSH options."""
        if self.static is None:
            raise inventory.InventoryError(self.static_error)
        if host not in self.static:
            raise inventory.InventoryError(f"host {host}: not in the static inventory (hosts there: "
                                           f"{', '.join(sorted(self.static)) or 'none'})")
        given = self.static[host]
        if "ansible_host" not in given:
            raise inventory.InventoryError(f"host {host}: the static inventory gives no ansible_host (its address)")
        conn = {"ansible_connection": "ssh"} | {k: v for k, v in given.items() if k in CONNECTION_VARS}
        conn.update({k: v for k, v in given.items() if k.startswith("hpnlab_")})
        # Host keys are checked, by Ansible as by hpnlab, against one file: OpenSSH keeps the
        # first value of an option, so these go before the user's own.
        checking = shlex.join(known_hosts_args(reach_of(conn)["known_hosts"]))
        conn["ansible_ssh_common_args"] = f"{checking} {conn.get('ansible_ssh_common_args') or ''}".strip()
        return conn

    # -- lifecycle -----------------------------------------------------------------
    def is_up(self) -> bool:
        state = self.state.read()
        return bool(state and state.get("phase") == "up" and state.get("provider") == self.name)

    def up(self, progress: Progress = _quiet) -> bool:
        with self.state.lock():
            if self.is_up():
                progress(f"lab {self.lab.name} is already up: nothing changed")
                return False
            other = (self.state.read() or {}).get("provider", self.name)
            if other != self.name:
                raise ProviderError(f"lab {self.lab.name} has state of provider {other} ({self.state.path}): "
                                    f"`hpnlab --provider {other} down` it first, or rename the lab")
            if self.state.read():
                progress("undoing what an earlier, unfinished `up` changed")
                self._teardown(progress)
            self._bring_up(progress, hosts=self._reach(), changes={h: [] for h in self.lab.hosts})
        return True

    def _reach(self) -> dict:
        """How to reach each host, from the static inventory (kept in state.json so that
        `down` and `cleanup` reach the machines `up` changed, whatever the file says later)."""
        if self.static is None:
            raise ProviderError(self.static_error)
        reach = {}
        for name in self.lab.hosts:
            try:
                reach[name] = reach_of(self.ansible_connection(name))
            except inventory.InventoryError as exc:
                raise ProviderError(str(exc)) from None
        return reach

    def _create(self, state: dict, progress: Progress) -> None:
        hosts = self._hosts_during_up(state)
        # Look before changing anything: every host answers and has its NICs.
        links = {}
        for name, host in hosts.items():
            try:
                r = host.run("true", timeout=SSH_TIMEOUT, check=False)
            except HostKeyError as exc:
                raise ProviderError(str(exc), hint=exc.hint) from None
            if not r.ok:
                raise ProviderError(f"[{name}] no SSH to {_describe(state['hosts'][name])}: "
                                    f"{(r.stderr or r.stdout).strip() or f'exit status {r.rc}'}")
            links[name] = host.links(SSH_TIMEOUT)
            missing = [f"{n.ifname} (network {n.network})" for n in host.spec.nics if n.ifname not in links[name]]
            if missing:
                raise ProviderError(f"[{name}] no NIC {', '.join(missing)} (NICs there: "
                                    f"{', '.join(sorted(links[name]))}); name the real ones in the static "
                                    f"inventory: hpnlab_ifnames: {{network: NIC}}")
        progress(f"{len(hosts)} host(s) answer over SSH and have their NICs")
        for name, host in hosts.items():
            self._configure(host, links[name], state)
        progress("NICs given their addresses/MTUs where missing, sysctls applied and read back")

    def _configure(self, host: Host, links: dict[str, Link], state: dict) -> None:
        def change(record: dict, argv: list[str]) -> None:
            state["changes"][host.name].append(record)      # write-ahead: recorded before made
            self.state.write(state)
            host.run(argv, timeout=SSH_TIMEOUT)

        for nic in host.spec.nics:
            link = links[nic.ifname]
            if link.mtu != nic.mtu:
                change({"kind": "mtu", "ifname": nic.ifname, "was": link.mtu, "set": nic.mtu},
                       ["ip", "link", "set", "dev", nic.ifname, "mtu", str(nic.mtu)])
            if str(nic.address) not in link.inet:
                change({"kind": "addr", "ifname": nic.ifname, "addr": str(nic.address)},
                       ["ip", "addr", "replace", str(nic.address), "dev", nic.ifname])
            if "UP" not in link.flags:
                change({"kind": "link-up", "ifname": nic.ifname}, ["ip", "link", "set", "dev", nic.ifname, "up"])
        sysctls = {**self.lab.machine_sysctls, **host.spec.sysctls}
        if not sysctls:
            return
        have = _sysctls(host, sysctls)
        for key, want in sysctls.items():
            if _norm(have[key]) != _norm(want):
                change({"kind": "sysctl", "key": key, "was": have[key], "set": _norm(want)},
                       ["sysctl", "-q", "-w", f"{key}={_norm(want)}"])
        for key, got in _sysctls(host, sysctls).items():
            if _norm(got) != _norm(sysctls[key]):
                raise ProviderError(f"[{host.name}] sysctl {key} reads back {got!r}, wanted {sysctls[key]!r}")

    def _teardown(self, progress: Progress) -> None:
        state = self.state.read() or {}
        _undo(state, progress)
        unregister_live(self.name, self.lab.name)
        self.state.remove()
        if self._run_lock is None:          # (this process's own run keeps its lock until it ends)
            (self.state.dir / RUN_LOCK).unlink(missing_ok=True)

    def begin_run(self, progress: Progress = _quiet) -> None:
        """A lab run starts: it holds the lab's run lock until this process ends (the kernel lets
        go of it then, after kill -9 too). Where it got it, no other run of the lab is live, so
        the processes and impairments earlier runs left on the machines are stale: they go."""
        if self._run_lock is not None:
            return
        self._run_lock = _take_run_lock(self.state.dir)
        if self._run_lock is None:
            progress(f"another run of lab {self.lab.name} is live: what it made on the machines is left alone")
            return
        with self.state.lock():
            for what in _sweep_runs(self.state):
                progress(f"left by an earlier run that ended without cleaning up: {what}")

    @classmethod
    def cleanup(cls, progress: Progress = _quiet, lab: str | None = None) -> list[str]:
        """Undo what the recorded changes of static labs say (all not live, or `lab`): only
        machines a state file names are reached, and only what it recorded is undone."""
        live, states = cls._leftovers(lab, progress)
        removed = []
        for name in sorted(live):           # up, kept up: only what a dead run left goes
            path = registered(cls.name)[name]["state"]
            st = LabState(name, path.parent.parent) if path else None
            fd = _take_run_lock(st.dir) if st and st.dir.exists() else None
            if st is None or fd is None:
                continue                    # coming up, or a run of it is live: left alone
            try:
                with st.lock():
                    for what in _sweep_runs(st):
                        progress(f"lab {name}: left by a run that ended without cleaning up: {what}")
                        removed.append(f"{name}: {what}")
            finally:
                os.close(fd)
        for st in states:
            with st.lock():
                data = st.read()
                if not data:
                    continue
                progress(f"undoing what lab {st.dir.name} changed on its machines")
                removed += _undo(data, progress)
                st.remove()
                (st.dir / RUN_LOCK).unlink(missing_ok=True)
            st.discard()
            removed.append(f"state {st.dir}")
        cls._forget_dead(lab, live)
        return removed

    # -- using the lab -----------------------------------------------------------------
    def _make_hosts(self, state: dict, record) -> dict:
        return {name: SshHost.from_reach(spec, state["hosts"][name], record) for name, spec in self.lab.hosts.items()}

    def _reach_of(self, host: str) -> dict:
        self.host(host)
        return (self.state.read() or {})["hosts"][host]

    def ssh_argv(self, host: str) -> list[str]:
        return _ssh_argv(self._reach_of(host))

    def shell_argv(self, host: str) -> list[str]:
        return [*self.ssh_argv(host), "-t", f"HPNLAB_HOST={host} exec bash -l"]

    def capture_argv(self, target: str, extra: list[str]) -> list[str]:
        """tcpdump on the host (a network: its first member's NIC); a pcap (-w FILE) comes
        back through SSH into the local FILE (-w -: on the command's stdout). It runs while the
        command's stdin is open (a terminal, a pipe): at its end, or the connection's, it stops."""
        hname, ifname = self._capture_point(target)
        extra = list(extra)
        local = None
        if "-w" in extra:
            i = extra.index("-w")
            local, extra[i + 1] = extra[i + 1], "-"
        # sshd leaves a command without a terminal running when the connection ends: tcpdump is
        # tied to it through stdin (EOF when the connection goes), and the session ends with tcpdump.
        # TERM, not INT: an asynchronous command of sh starts with SIGINT ignored
        tcpdump = shlex.join(["tcpdump", "-i", ifname, "-n", *extra])
        remote = shlex.join(["sh", "-c", f"exec 3<&0; {tcpdump} <&- & t=$!; "
                                         f"(cat >/dev/null; kill -TERM $t 2>/dev/null) <&3 >/dev/null 2>&1 & "
                                         f"wait $t"])
        if self._reach_of(hname).get("become"):
            remote = f"sudo -n {remote}"
        argv = [*self.ssh_argv(hname), remote]
        if local in (None, "-"):
            return argv
        return ["sh", "-c", f"{shlex.join(argv)} > {shlex.quote(local)}"]

    def _capture_point(self, target: str) -> tuple[str, str]:
        if ":" in target:
            hname, wanted = target.split(":", 1)
            return hname, self.nic_of(hname, wanted).ifname
        net = self.lab.networks.get(target)
        if net is None:
            raise ProviderError(f"no network {target!r} (networks: {', '.join(self.lab.networks)}; "
                                f"or give HOST:NIC)")
        first = net.members[0]
        return first, self.lab.hosts[first].nic(net.name).ifname

    def _where(self, host: str, state: dict) -> str:
        reach = (state.get("hosts") or {}).get(host) if state.get("provider") == self.name else None
        return f"ssh {_describe(reach)}" if reach else "-"


PROVIDER = StaticProvider


# -- helpers ---------------------------------------------------------------------------

def _with_real_ifnames(lab: Lab, static: dict[str, dict]) -> Lab:
    """The lab with each host's NICs named as the static inventory's hpnlab_ifnames says."""
    hosts = {}
    for name, spec in lab.hosts.items():
        renames = (static.get(name) or {}).get("hpnlab_ifnames") or {}
        hosts[name] = replace(spec, nics=tuple(replace(n, ifname=str(renames.get(n.network, n.ifname)))
                                               for n in spec.nics))
    return replace(lab, hosts=hosts)


def _ssh_argv(reach: dict) -> list[str]:
    # ssh_args carry the host-key checking options too (ansible_connection)
    argv = ["ssh", "-p", str(reach["port"]), *shlex.split(reach.get("ssh_args") or "")]
    if reach.get("key"):
        argv += ["-i", reach["key"]]
    return [*argv, f"{reach['user']}@{reach['address']}"]


def _describe(reach: dict) -> str:
    via = " via proxy" if reach.get("proxy") else ""
    return f"{reach['user']}@{reach['address']}:{reach['port']}{via}"


def _take_run_lock(state_dir: Path) -> int | None:
    """The lab's run lock (a descriptor holding it), or None if a live run holds it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _sweep_runs(st: LabState) -> list[str]:
    """What dead runs left on the machines of a lab that is up (the caller holds its lock and
    run lock): the processes they recorded ended, their impairments removed; their records go."""
    state = st.read() or {}
    if state.get("phase") != "up":
        return []
    done = _undo(state, _quiet, changes=False)
    state["processes"] = []
    st.write(state)
    return done


def _undo(state: dict, progress: Progress, changes: bool = True) -> list[str]:
    """End the processes labs started, remove what their impairments left (hpnlab's marks) and,
    with `changes`, undo the recorded changes, newest first, on every host the state names. A
    host that cannot be reached keeps its record (the state stays) and is named in the error."""
    done, failed = [], []
    lab = state.get("lab", "")
    nics = {name: [n["ifname"] for n in h.get("nics", [])]
            for name, h in ((state.get("topology") or {}).get("hosts") or {}).items()}
    for name, reach in (state.get("hosts") or {}).items():
        host = SshHost.from_reach(bare_spec(name), reach)
        processes = [p for p in state.get("processes", []) if p.get("host") == name]
        undo = (state.get("changes") or {}).get(name, []) if changes else []
        try:
            reachable = host.run("true", timeout=SSH_TIMEOUT, check=False).ok
        except HostKeyError as exc:
            reachable, why = False, f"{exc}; {exc.hint}"
        else:
            why = _describe(reach)
        if not reachable:
            if processes or undo:       # a record to keep; else nothing of hpnlab's is known to be there
                failed.append(f"{name} ({why})")
            else:
                progress(f"{name}: not reachable ({why}): not looked at for impairments left there")
            continue
        if processes:
            still_ran = _end_processes(host, processes)
            # A process that had ended by itself (every one of a lab run that finished) only
            # loses its record and files: naming it would report a leftover that was none.
            done += [f"{name}: ended {p['name']} (pid {p['pid']})" for p in processes if p["pid"] in still_ran]
        # after the delay lines ended: their rules pass packets on (--queue-bypass) meanwhile
        done += [f"{name}: removed {what}" for what in impair.sweep(
            host, nics.get(name, []), lambda table: is_lab_nft_table(table, lab))]
        for change in reversed(undo):
            argv = _undo_argv(host, change)
            if argv:
                host.run(argv, timeout=SSH_TIMEOUT, check=False)
                done.append(f"{name}: {shlex.join(argv)}")
        host.close()
    for what in done:
        progress(what)
    if failed:
        raise ProviderError(f"cannot reach {', '.join(failed)} to undo what the lab changed there; "
                            f"its record stays: run `hpnlab down` again once SSH works")
    return done


def _end_processes(host: SshHost, processes: list[dict]) -> set[int]:
    """End the recorded processes still running on `host` and remove their files, in one SSH
    command (a bench records hundreds: one round trip each took a static `down` 25 s). Each one's
    group goes only while its exit-status file is missing: then the PID is still the lab's. They get
    up to 1 s to end on TERM (a delay line lets its held packets go). The PIDs that still ran."""
    lines = ["live="]
    for proc in processes:
        base, pid = shlex.quote(proc["stdout"].removesuffix(".out")), int(proc["pid"])
        lines.append(f"if [ ! -e {base}.rc ] && kill -0 {pid} 2>/dev/null; then echo {pid}; "
                     f"kill -TERM -{pid} 2>/dev/null; live=\"$live {pid}\"; fi; rm -f {base}.out {base}.err {base}.rc")
    lines.append('for i in 1 2 3 4 5 6 7 8 9 10; do left=; for p in $live; do kill -0 $p 2>/dev/null && left=1; done; '
                 '[ -z "$left" ] && break; sleep 0.1; done')
    lines.append("for p in $live; do kill -KILL -$p 2>/dev/null; done; true")
    ran = host.run("\n".join(lines), timeout=SSH_TIMEOUT + 2, check=False)
    return {int(word) for word in ran.stdout.split() if word.isdigit()}


def _undo_argv(host: SshHost, change: dict) -> list[str] | None:
    kind, ifname = change["kind"], str(change.get("ifname"))
    if kind == "addr":
        return ["ip", "addr", "del", change["addr"], "dev", ifname]
    if kind == "mtu" and change.get("was"):
        return ["ip", "link", "set", "dev", ifname, "mtu", str(change["was"])]
    if kind == "link-up":
        return ["ip", "link", "set", "dev", ifname, "down"]
    if kind == "sysctl":
        # only while it still holds what `up` set: a value someone set since is theirs
        now = host.run(["sysctl", "-n", change["key"]], timeout=SSH_TIMEOUT, check=False)
        if now.ok and _norm(now.stdout) == change["set"]:
            return ["sysctl", "-q", "-w", f"{change['key']}={_norm(change['was'])}"]
    return None


def _sysctls(host: Host, sysctls: dict) -> dict[str, str]:
    got = host.run(["sysctl", "-n", *sysctls], timeout=SSH_TIMEOUT).stdout.split("\n")
    return dict(zip(sysctls, got))


def _norm(value) -> str:
    return " ".join(str(value).split())
