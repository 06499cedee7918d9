"""Two (or more) "real machines" on this one, for the static provider: the hosts of a netns lab,
each running OpenSSH's sshd inside its namespace (127.0.0.1:22 there), reached with a
ProxyCommand `ip netns exec NS nc 127.0.0.1 22` — the jump-host path of real labs — and linked
by the lab's own LANs. Nothing is routed from this machine, so no lab traffic can leak.

    python -m hpnlab.static_machines up LAB [--dir DIR]    machines for LAB's hosts; writes
        DIR/lab.yml (LAB as provider static), DIR/inventory.yml, DIR/known_hosts, DIR/id_ed25519
        and prints the commands that run a lab on them
    python -m hpnlab.static_machines down [--dir DIR]      ends the sshds, removes the namespaces

Each machine's sshd has a view of its own of what provisioning writes (/etc, /opt, /root,
/usr/local, /var: overlays with their upper layer in DIR; /run: a tmpfs; a hugetlbfs on /mnt,
as systemd gives a real machine on /dev/hugepages). The kernel has one hugepage pool: the
machines' vm.nr_hugepages is a file of their own (what provisioning sets and verify reads
there), and the pages their hosts ask for are held in this machine's pool through hpnlab's
ledger for the machines' netns lab, so its `down` gives them back and no other lab's pages
are touched. The lab file loses what these machines cannot be given: its `machine:` sysctls
(from inside a namespace a larger machine-wide value does not take) and its hosts' `dpdk:`
(DPDK binds a PCI NIC; a veth has none).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import machine
from .paths import repo_root
from .providers import open_lab
from .providers.netns import NetnsProvider, _alive  # _alive: a zombie (a child of this process) is not
from .state import LabState
from .topology import load_lab
from .vm import apt

SSHD = "/usr/sbin/sshd"
DEFAULT_DIR = Path("/tmp/hpnlab-static")
POOLS = ("/proc/sys/vm/nr_hugepages", "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")

# Runs as `ip netns exec NS sh fake-machine.sh DIR`: ip gave it a mount namespace of its own
# (a slave of the machine's), so these mounts are the fake machine's alone, and go with it.
FAKE_MACHINE = r"""
set -eu
dir=$1
mount -t tmpfs -o mode=0755 fakerun /run
mkdir -p /run/sshd
for d in etc opt root usr/local var; do
  layer=$dir/overlay/$(echo "$d" | tr / _)
  mkdir -p "$layer/upper" "$layer/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$layer/upper,workdir=$layer/work" "/$d"
done
# root's shell set up as on a fresh Debian machine (python3 is /usr/bin/python3), not as this one's
cp /etc/skel/.bashrc /etc/skel/.profile /root/
mount -t hugetlbfs -o pagesize=2M hugetlbfs /mnt
cat /proc/sys/vm/nr_hugepages > "$dir/nr_hugepages"
for pool in __POOLS__; do mount --bind "$dir/nr_hugepages" "$pool"; done
# a login that is not root, for the "missing sudo" case (this machine has no sudo at all);
# its home is under /var, which is this fake machine's own
useradd -M -d /var/tmp/labuser -s /bin/sh -p "*" labuser   # "*": no password, yet not locked (sshd refuses "!")
mkdir -p /var/tmp/labuser/.ssh
cp "$dir/authorized_keys" /var/tmp/labuser/.ssh/authorized_keys
chown -R labuser /var/tmp/labuser
exec /usr/sbin/sshd -D -e -f "$dir/sshd_config"
""".replace("__POOLS__", " ".join(POOLS))

SSHD_CONFIG = """\
ListenAddress 127.0.0.1:22
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys .ssh/authorized_keys
PidFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
"""


class MachinesError(RuntimeError):
    pass


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def static_lab_text(source: str | Path, name: str) -> str:
    """`source` as a lab of the static provider called `name`, without what these machines
    cannot be given (see the module's docstring)."""
    data = yaml.safe_load(Path(source).read_text())
    data.pop("machine", None)
    for host in (data.get("hosts") or {}).values():
        if isinstance(host, dict):
            host.pop("dpdk", None)
    data["name"], data["provider"] = name, "static"
    return yaml.safe_dump(data, sort_keys=False)


def machine_has_packages(progress=print) -> None:
    """The Debian packages provisioning installs on a real machine (the roles' package lists),
    installed here: the machines share this machine's /usr and reach no mirror."""
    roles = repo_root() / "ansible" / "roles"
    wanted = []
    for role, key in (("tools", "tools_packages"), ("tools", "tools_packages_optional"),
                      ("labcode", "labcode_packages"), ("dpdk", "dpdk_packages")):
        wanted += yaml.safe_load((roles / role / "defaults" / "main.yml").read_text())[key]
    query = _sh("dpkg-query", "-W", "-f=${db:Status-Status} ${Package}\n", *wanted, check=False)
    installed = {line.split()[1] for line in query.stdout.splitlines() if line.startswith("installed ")}
    missing = [p for p in dict.fromkeys(wanted) if p not in installed]
    if missing:
        apt.install(missing, progress, apt.LOG_DIR / "apt-static-machines.log")


class Machines:
    """The machines of `dir` (made by `up`, read back from DIR/machines.json otherwise)."""

    def __init__(self, dir: str | Path = DEFAULT_DIR):
        self.dir = Path(dir).absolute()
        self.record = self.dir / "machines.json"
        self.key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.inventory_path = self.dir / "inventory.yml"
        self.lab_path = self.dir / "lab.yml"

    # -- making them ---------------------------------------------------------------
    def up(self, lab: str | Path, name: str | None = None, accept_keys: bool = True,
           ifnames: dict[str, str] | None = None) -> Machines:
        """Machines for `lab`'s hosts, and the static lab (`name`, default the lab's own + "st")
        and inventory that reach them. `accept_keys`: their host keys go to DIR/known_hosts
        (they were made here); else a person accepts each. `ifnames`: network → the NIC name
        the machines give it (the inventory's hpnlab_ifnames), as real machines have theirs."""
        if self.record.exists():
            raise MachinesError(f"{self.dir}: machines are up there already (`down` them first)")
        for tool in (SSHD, "/usr/bin/nc"):
            if not os.path.exists(tool):
                raise MachinesError(f"{tool} is missing: `make setup` installs openssh-server and netcat-openbsd")
        spec = load_lab(lab, provider="netns")
        machine_has_packages()
        name = name or f"{spec.name}st"
        self.dir.mkdir(parents=True, exist_ok=True)
        record: dict = {"source": str(Path(lab).absolute()), "machines_lab": f"{name}m",
                        "namespaces": {}, "sshd": {}, "lab": name}
        provider = self._machines_lab(record)
        self.record.write_text(json.dumps(record))      # before anything is made: `down` finds it
        try:
            provider.up()
            for host, spec_host in provider.lab.hosts.items():
                if spec_host.hugepages:
                    machine.hold_hugepages(provider.lab.name, host, spec_host.hugepages, spec_host.hugepage_size)
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hpnlab static machines", "-f", str(self.key))
            for host in sorted(provider.lab.hosts):
                ns = provider.host_ns(host)
                record["namespaces"][host] = ns
                for network, ifname in (ifnames or {}).items():
                    old = provider.lab.hosts[host].nic(network).ifname
                    _sh("ip", "-n", ns, "link", "set", old, "down")
                    _sh("ip", "-n", ns, "link", "set", old, "name", ifname)
                    _sh("ip", "-n", ns, "link", "set", ifname, "up")
                record["sshd"][host] = self._start_sshd(host, ns)
                self.record.write_text(json.dumps(record))
            self.write_inventory(self.inventory(ifnames))
            if accept_keys:
                self.known_hosts.write_text("".join(
                    f"{vars['ansible_host']} {(self.dir / host / 'host_key.pub').read_text()}"
                    for host, vars in self.inventory(ifnames)["all"]["hosts"].items()))
            self.lab_path.write_text(static_lab_text(lab, name))
        except BaseException:
            self.down()
            raise
        return self

    def _start_sshd(self, host: str, ns: str) -> int:
        dir = self.dir / host
        dir.mkdir()
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host, "-f", str(dir / "host_key"))
        (dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        (dir / "sshd_config").write_text(SSHD_CONFIG.format(dir=dir))
        (dir / "fake-machine.sh").write_text(FAKE_MACHINE)
        with open(dir / "sshd.log", "w") as log:
            # a session of its own: it outlives `up` (ended by its PID in `down`)
            proc = subprocess.Popen(["ip", "netns", "exec", ns, "sh", str(dir / "fake-machine.sh"), str(dir)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.wait_listening(host, ns, proc.pid)
        return proc.pid

    def _machines_lab(self, record: dict) -> NetnsProvider:
        """The netns lab whose hosts are the machines (its state kept in DIR)."""
        provider = open_lab(load_lab(record["source"], provider="netns", name=record["machines_lab"]))
        assert isinstance(provider, NetnsProvider)
        provider.state = LabState(provider.lab.name, self.dir / "state")
        return provider

    def wait_listening(self, host: str, ns: str, pid: int, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while _sh("ip", "netns", "exec", ns, "nc", "-z", "-w", "1", "127.0.0.1", "22", check=False).returncode:
            if not _alive(pid):
                raise MachinesError(f"sshd of {host} ({ns}) exited: {(self.dir / host / 'sshd.log').read_text()}")
            if time.monotonic() > deadline:
                raise MachinesError(f"sshd of {host} ({ns}) does not listen after {seconds:g} s")
            time.sleep(0.1)

    # -- what reaches them ----------------------------------------------------------
    def read(self) -> dict:
        try:
            return json.loads(self.record.read_text())
        except FileNotFoundError:
            raise MachinesError(f"{self.dir}: no machines there (`up` makes them)") from None

    def inventory(self, ifnames: dict[str, str] | None = None) -> dict:
        """The static inventory of the machines (a dict to write with write_inventory)."""
        hosts: dict[str, dict] = {}
        for i, (host, ns) in enumerate(sorted(self.read()["namespaces"].items()), start=1):
            hosts[host] = {
                # never dialled (the ProxyCommand carries the connection), but distinct: SSH
                # connection sharing tells machines apart by host/port/user, and known_hosts
                # names their keys by it
                "ansible_host": f"127.0.0.{10 + i}",
                "ansible_ssh_common_args": f'-o ProxyCommand="ip netns exec {ns} nc 127.0.0.1 22"',
            }
            if ifnames:
                hosts[host]["hpnlab_ifnames"] = dict(ifnames)
        return {"all": {"vars": {"ansible_user": "root", "ansible_ssh_private_key_file": str(self.key),
                                 "ansible_python_interpreter": "/usr/bin/python3",
                                 "hpnlab_known_hosts": str(self.known_hosts)},
                        "hosts": hosts}}

    def write_inventory(self, data: dict) -> None:
        self.inventory_path.write_text(yaml.safe_dump(data, sort_keys=False))

    def sshd_pid(self, host: str) -> int:
        return self.read()["sshd"][host]

    def namespace(self, host: str) -> str:
        return self.read()["namespaces"][host]

    def pool(self, host: str) -> int:
        """The machine's own vm.nr_hugepages (what provisioning set there)."""
        return int((self.dir / host / "nr_hugepages").read_text())

    # -- ending them -------------------------------------------------------------------
    def down(self) -> None:
        """Take down the static lab on the machines if it is up (`hpnlab down`), end the sshds (and
        with them their mounts), take the machines' netns lab down (its processes, namespaces and
        held hugepages), remove DIR. Safe on a half-made `up`."""
        if not self.record.exists():
            return
        record = self.read()
        if self.lab_path.exists() and self.inventory_path.exists():
            static = open_lab(self.lab_path).using_inventory(self.inventory_path)
            if static.state.read():     # the static lab on them first, while they answer
                static.down()
        for pid in record["sshd"].values():
            _end(pid)
        provider = self._machines_lab(record)
        provider.down()         # their processes, namespaces and the hugepages held for them
        _sh("rm", "-rf", "--one-file-system", str(self.dir))

    def commands(self) -> str:
        env = f"HPNLAB_STATIC_INVENTORY={self.inventory_path}"
        return (f"export {env}\n"
                f"make lab-backlog LAB={self.lab_path} PROVIDER=static      # or any lab target\n"
                f"python -m hpnlab.static_machines down --dir {self.dir}")


def _end(pid: int, seconds: float = 10) -> None:
    """End an sshd `up` started, by its PID (only if it is still that sshd)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return
    if b"sshd" not in cmdline and b"fake-machine" not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpnlab.static_machines", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make machines for a lab's hosts")
    up.add_argument("lab", help="the lab file whose hosts the machines are (e.g. lab.yml)")
    up.add_argument("--name", help="the static lab's name (default: the lab's own + 'st')")
    down = sub.add_parser("down", help="end the machines")
    for p in (up, down):
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where they live (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            machines = Machines(args.dir).up(args.lab, name=args.name)
            print(f"machines up: {', '.join(sorted(machines.read()['sshd']))}; run a lab on them with\n"
                  f"{machines.commands()}")
        else:
            Machines(args.dir).down()
    except (MachinesError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
