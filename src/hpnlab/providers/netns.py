"""The netns provider: lab hosts as named network namespaces.

    /run/netns/<lab>-<host>   one per host: lo, eth1.. (veth), its own sysctls
    /run/netns/<lab>.switch   one per lab with LANs: a bridge per LAN, named
                              after it, with a port <host>-<lan> per member

Nothing lab-made sits in the root namespace: veth pairs are created directly
inside the namespaces, so deleting a lab's namespaces deletes all of it. Each
namespace carries a marker (the alias of its `lo`), which is how `cleanup`
recognises hpnlab's namespaces without a state file and never touches others.

Interfaces are configured with `ip -batch`, one process per namespace: on
the dev machines that wires 10 hosts in ~0.22 s where pyroute2's NetNS
(which forks a helper per namespace) took ~0.95 s (`make bench-substrate`).

Provisioning may take machine-wide resources for the lab (hugepages,
hugetlbfs, vm.* sysctls; see hpnlab.machine): `down` and `cleanup` give
them back, since the namespaces' hosts share the machine's kernel.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .. import machine
from ..hosts.netns import NetnsHost, netns_argv
from ..state import unregister_live
from ..topology import Lab, sysctls
from . import Progress, Provider, ProviderError, _quiet

MARKER = "hpnlab"
IFNAMSIZ = 15          # usable characters in a Linux interface name
NETNS_DIR = Path("/run/netns")


class CmdFailed(ProviderError):
    pass


def _run(argv: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise CmdFailed(f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _batch(netns: str, lines: list[str]) -> None:
    if lines:
        _run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n")


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def marker_of(netns: str) -> str | None:
    """The lo alias hpnlab set in a namespace, or None if it is not ours."""
    proc = _run(["ip", "-n", netns, "-o", "link", "show", "lo"], check=False)
    if proc.returncode != 0:
        return None
    words = proc.stdout.split()
    if "alias" in words:
        alias = " ".join(words[words.index("alias") + 1:])
        if alias.startswith(MARKER + " "):
            return alias
    return None


def netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()]


def kill_netns_processes(netns: str, grace: float = 2.0) -> int:
    """End every process inside the namespace (all of them are the lab's)."""
    pids = netns_pids(netns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.02)
        if not pids:
            break
    return len(pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def delete_netns(netns: str) -> None:
    kill_netns_processes(netns)
    _run(["ip", "netns", "del", netns], check=False)
    # `ip netns del` of a name whose mount is gone leaves the file; remove it
    try:
        (NETNS_DIR / netns).unlink()
    except (FileNotFoundError, IsADirectoryError, OSError):
        pass


class NetnsProvider(Provider):
    name = "netns"
    shares_kernel = True
    dpdk_takes_nic = False          # an af_packet vdev over the veth: the NIC stays the kernel's
    ansible_mitogen = False         # the connection plugin runs the controller's own Python

    @classmethod
    def validate(cls, lab: Lab) -> list[tuple[int, str, str]]:
        """Sysctls against this machine's kernel (the one the namespaces share; a host's own
        must be per namespace), and each LAN port's name (<host>-<network>, in the switch
        namespace) within Linux's interface name length."""
        problems = sysctls.lab_problems(lab, namespaces=True)
        for host in lab.hosts.values():
            for nic in host.nics:
                port = f"{host.name}-{nic.network}"
                if lab.networks[nic.network].kind == "lan" and len(port) > IFNAMSIZ:
                    problems.append((host.line, f"hosts.{host.name}",
                                     f"interface name {port!r} (host-network) is {len(port)} characters; "
                                     f"Linux allows {IFNAMSIZ}: shorten the host or network name"))
        return problems

    def ansible_connection(self, host: str) -> dict:
        return {"ansible_connection": "hpnlab_netns", "hpnlab_netns": self.host_ns(host),
                "ansible_python_interpreter": "/usr/bin/python3"}

    def release_machine(self, progress: Progress = _quiet) -> list[str]:
        return _released(self.lab.name, progress)

    def switch_port(self, host: str, network: str) -> tuple[str | None, str] | None:
        return (self.switch_ns, f"{host}-{network}") if self.lab.networks[network].kind == "lan" else None

    # -- names -------------------------------------------------------------
    def host_ns(self, host: str) -> str:
        return f"{self.lab.name}-{host}"

    @property
    def switch_ns(self) -> str:
        return f"{self.lab.name}.switch"

    def namespaces(self) -> list[str]:
        names = [self.host_ns(h) for h in self.lab.hosts]
        if any(n.kind == "lan" for n in self.lab.networks.values()):
            names.append(self.switch_ns)
        return names

    # -- lifecycle -----------------------------------------------------------
    def is_up(self) -> bool:
        state = self.state.read()
        return bool(state and state.get("phase") == "up"
                    and all(ns in list_netns() for ns in state.get("namespaces", [])))

    def up(self, progress: Progress = _quiet) -> bool:
        _require_root()
        with self.state.lock():
            if self.is_up():
                progress(f"lab {self.lab.name} is already up: nothing changed")
                return False
            if self.state.read() or any(marker_of(ns) for ns in self.namespaces() if ns in list_netns()):
                progress("removing leftovers of an earlier, unfinished run")
                self._teardown(progress)
            clash = [ns for ns in self.namespaces() if ns in list_netns()]
            if clash:
                raise ProviderError(f"namespace(s) {', '.join(clash)} exist and were not made by hpnlab; "
                                    f"rename the lab (name: in {self.lab.source or 'lab.yml'})")
            self._bring_up(progress, namespaces=[])
        return True

    def _teardown(self, progress: Progress) -> None:
        state = self.state.read() or {}
        names = set(state.get("namespaces", [])) | {ns for ns in self.namespaces()
                                                       if ns in list_netns() and marker_of(ns) == self._marker(ns)}
        for ns in sorted(names):
            progress(f"deleting namespace {ns}")
            delete_netns(ns)
        _release_machine(self.lab.name, progress)
        unregister_live(self.name, self.lab.name)
        self.state.remove()
        _remove_tree(self.state.logdir)

    @classmethod
    def cleanup(cls, progress: Progress = _quiet, lab: str | None = None) -> list[str]:
        _require_root()
        removed = []
        # Without --only, labs that are up or coming up (whatever their state directory) are
        # not leftovers: they stay. A lab named with --only goes whatever its state.
        live, states = cls._leftovers(lab, progress)
        for ns in list_netns():
            marker = marker_of(ns)
            if marker is None or (lab is not None and f" lab={lab} " not in marker + " "):
                continue
            if any(f" lab={name} " in marker + " " for name in live):
                continue
            progress(f"removing leftover namespace {ns}")
            delete_netns(ns)
            removed.append(ns)
        # namespaces recorded (write-ahead) but never marked: a kill -9 between `add` and alias
        for st in states:
            for ns in (st.read() or {}).get("namespaces", []):
                if ns in list_netns():
                    progress(f"removing recorded namespace {ns}")
                    delete_netns(ns)
                    removed.append(ns)
            st.remove()
            _remove_tree(st.logdir)
            st.discard()
        cls._forget_dead(lab, live)
        if lab is not None:
            removed += _release_machine(lab, progress)
        else:
            removed += machine.release_orphans()
        return removed

    def _marker(self, ns: str) -> str:
        role = "switch" if ns == self.switch_ns else "host"
        return f"{MARKER} lab={self.lab.name} role={role}"

    # -- creation ------------------------------------------------------------
    def _create(self, state: dict, progress: Progress) -> None:
        lab = self.lab
        for ns in self.namespaces():
            state["namespaces"].append(ns)     # write-ahead: recorded before it exists
            self.state.write(state)
            _run(["ip", "netns", "add", ns])
            _batch(ns, [f"link set lo alias \"{self._marker(ns)}\"", "link set lo up"])
        progress(f"created {len(self.namespaces())} namespaces")

        lans = [n for n in lab.networks.values() if n.kind == "lan"]
        _batch(self.switch_ns, [
            line for n in lans for line in (
                f"link add name {n.name} type bridge",
                f"link set {n.name} mtu {n.mtu} up")])

        order = list(lab.hosts)
        for hname in order:
            host = lab.hosts[hname]
            ns = self.host_ns(hname)
            lines = []
            for nic in host.nics:
                net = lab.networks[nic.network]
                if net.kind == "lan":
                    lines.append(f"link add {nic.ifname} address {nic.mac} mtu {nic.mtu} type veth "
                                 f"peer name {hname}-{net.name} mtu {nic.mtu} netns {self.switch_ns}")
                else:
                    other = next(m for m in net.members if m != hname)
                    if order.index(other) > order.index(hname):   # the first member creates the pair
                        peer = lab.hosts[other].nic(net.name)
                        lines.append(f"link add {nic.ifname} address {nic.mac} mtu {nic.mtu} type veth "
                                     f"peer name {peer.ifname} address {peer.mac} mtu {peer.mtu} "
                                     f"netns {self.host_ns(other)}")
                lines += [f"addr add {nic.address} dev {nic.ifname}", f"link set {nic.ifname} up"]
            _batch(ns, lines)
        _batch(self.switch_ns, [f"link set {h}-{n.name} master {n.name} up" for n in lans for h in n.members])
        progress(f"wired {len(lab.networks)} networks")

        for hname, host in lab.hosts.items():
            if host.sysctls:
                self._apply_sysctls(hname, host.sysctls)
        progress("applied and read back sysctls")

        self._impair(self._hosts_during_up(state), state, progress)

    def _apply_sysctls(self, hname: str, sysctls: dict[str, str]) -> None:
        ns = self.host_ns(hname)
        _run(netns_argv(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())]))
        got = _run(netns_argv(ns, ["sysctl", "-n", *sysctls])).stdout.split("\n")
        for (key, want), have in zip(sysctls.items(), got):
            if " ".join(have.split()) != " ".join(want.split()):
                raise ProviderError(f"host {hname}: sysctl {key} reads back {have!r}, wanted {want!r}")

    # -- using the lab -------------------------------------------------------
    def _make_hosts(self, state: dict, record) -> dict:
        return {name: NetnsHost(spec, self.host_ns(name), self.state.logdir / name, record)
                for name, spec in self.lab.hosts.items()}

    def shell_argv(self, host: str) -> list[str]:
        self.host(host)
        return netns_argv(self.host_ns(host), ["env", f"PS1=({self.lab.name}:{host}) \\w# ",
                                               f"HPNLAB_HOST={host}", "bash", "--norc", "-i"])

    def capture_argv(self, target: str, extra: list[str]) -> list[str]:
        ns, ifname = self._capture_point(target)
        return netns_argv(ns, ["tcpdump", "-i", ifname, "-n", *extra])

    def _capture_point(self, target: str) -> tuple[str, str]:
        if ":" in target:
            hname, wanted = target.split(":", 1)
            return self.host_ns(hname), self.nic_of(hname, wanted).ifname
        net = self.lab.networks.get(target)
        if net is None:
            raise ProviderError(f"no network {target!r} (networks: {', '.join(self.lab.networks)}; "
                                f"or give HOST:NIC)")
        if net.kind == "lan":
            return self.switch_ns, net.name
        first = net.members[0]
        return self.host_ns(first), self.lab.hosts[first].nic(net.name).ifname

    def _where(self, host: str, state: dict) -> str:
        return f"netns {self.host_ns(host)}"

    def _live_processes(self, state: dict) -> list[dict]:
        return [p for p in state.get("processes", []) if _alive(p["pid"])]


def _release_machine(lab: str, progress: Progress) -> list[str]:
    """Give back the hugepages, hugetlbfs mounts and machine sysctls that provisioning took
    for the lab: its hosts shared the machine's kernel, so these outlive the namespaces."""
    try:
        return _released(lab, progress)
    except machine.MachineError as exc:
        raise ProviderError(f"lab {lab}: namespaces removed, but {exc}") from exc


def _released(lab: str, progress: Progress) -> list[str]:
    done = machine.release(lab)
    for what in done:
        progress(what)
    return done


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise ProviderError("the netns provider needs root (network namespaces, veth, bridges): "
                            "run as root or with sudo")


PROVIDER = NetnsProvider
