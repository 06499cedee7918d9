"""The static provider end to end, against "real machines" made here: the hosts of a netns
lab, each running a real OpenSSH sshd inside its namespace (on 127.0.0.1:22 there), reached
with a ProxyCommand `ip netns exec NS nc 127.0.0.1 22` — the jump-host path of real labs.
Nothing is routed from the machine, so no lab traffic can leak. Their host keys are checked
against a known_hosts file the inventory names (`hpnlab_known_hosts`): the test accepts each
one with the command hpnlab prints for an unknown key, and later changes one machine's key.

Each fake machine's sshd has a view of its own of the parts of the file system that
provisioning writes (/etc, /opt, /root, /usr/local, /var: overlays with their upper layer in
tmp_path; /run: a tmpfs; a hugetlbfs on /mnt as systemd gives a real machine on
/dev/hugepages), so provisioning a "machine" changes nothing on this one but the hugepage
pool, which the kernel has only one of: the test puts it back as it found it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from hpnlab import machine
from hpnlab.providers import open_lab
from hpnlab.testing import REPO, unique_lab_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SSHD = "/usr/sbin/sshd"
POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")

# Runs as `ip netns exec NS sh fake-machine.sh DIR`: ip gave it a mount namespace of its own
# (a slave of the machine's), so these mounts are the fake machine's alone.
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
mount -t hugetlbfs -o pagesize=2M hugetlbfs /mnt
# a login that is not root, for the "missing sudo" case (this machine has no sudo at all);
# its home is under /var, which is this fake machine's own
useradd -M -d /var/tmp/labuser -s /bin/sh -p "*" labuser   # "*": no password, yet not locked (sshd refuses "!")
mkdir -p /var/tmp/labuser/.ssh
cp "$dir/authorized_keys" /var/tmp/labuser/.ssh/authorized_keys
chown -R labuser /var/tmp/labuser
exec /usr/sbin/sshd -D -e -f "$dir/sshd_config"
"""

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


def _lab_text(name: str, provider: str, hugepages: int) -> str:
    # DPDK binds a PCI NIC; a veth has none, so these machines give DPDK no NIC: no host says
    # `dpdk:` (the dpdk network stays a kernel LAN, and verify's "dpdk NIC" check says "-").
    text = (REPO / "lab.yml").read_text()
    text = re.sub(r"(?m)^\s+dpdk: dpdk\b.*\n", "", text)
    # Machine-wide sysctls (net.core.rmem_max, ...) are the kernel's, i.e. this machine's: from
    # inside a namespace a write of a larger value does not take, so these machines set none.
    text = re.sub(r"(?ms)^machine:.*?\n\n", "", text)
    text = re.sub(r"(?m)^name:.*$", f"name: {name}", text, count=1)
    text = re.sub(r"(?m)^provider:.*$", f"provider: {provider}", text, count=1)
    return re.sub(r"(?m)^(\s+hugepages:) \d+", rf"\1 {hugepages}", text)


def _machine_has_dpdk_packages() -> None:
    """The fake machines share this machine's /usr and reach no mirror, so the dpdk role's
    packages, which a real machine's apt would fetch during provisioning, come from here."""
    import yaml

    from hpnlab.vm import apt
    wanted = yaml.safe_load((REPO / "ansible/roles/dpdk/defaults/main.yml").read_text())["dpdk_packages"]
    query = _sh("dpkg-query", "-W", "-f=${db:Status-Status} ${Package}\n", *wanted, check=False)
    installed = {line.split()[1] for line in query.stdout.splitlines() if line.startswith("installed ")}
    missing = [p for p in wanted if p not in installed]
    if missing:
        apt.install(missing, print, apt.LOG_DIR / "apt-test-static.log")


def _sh(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, **kw)


@contextmanager
def _fake_machine(ns: str, dir: Path, client_pub: str):
    """sshd inside namespace `ns`; ended by its PID."""
    dir.mkdir(parents=True)
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(dir / "host_key"))
    (dir / "authorized_keys").write_text(client_pub)
    (dir / "sshd_config").write_text(SSHD_CONFIG.format(dir=dir))
    (dir / "fake-machine.sh").write_text(FAKE_MACHINE)
    log = open(dir / "sshd.log", "w")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "sh", str(dir / "fake-machine.sh"), str(dir)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_listening(ns, proc, dir)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_listening(ns: str, sshd: subprocess.Popen, dir: Path) -> None:
    deadline = time.monotonic() + 20
    while _sh("ip", "netns", "exec", ns, "nc", "-z", "-w", "1", "127.0.0.1", "22", check=False).returncode:
        assert sshd.poll() is None, f"sshd in {ns} exited: {(dir / 'sshd.log').read_text()}"
        assert time.monotonic() < deadline, f"sshd in {ns} does not listen"
        time.sleep(0.1)


@contextmanager
def _hugepage_pool():
    """Provisioning a real machine sets vm.nr_hugepages (one pool per kernel, here the
    machine's). Hold hpnlab's machine ledger so no netns lab provisions meanwhile, and put
    the pool back as it was. Yields the pool size before."""
    with machine._ledger():
        before = int(POOL.read_text())
        try:
            yield before
        finally:
            POOL.write_text(f"{before}\n")
    assert int(POOL.read_text()) == before


def _cli(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", "lab.yml", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"hpnlab {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _inventory(machines: dict[str, str], key: Path, sshless: str | None = None,
               sudoless: str | None = None) -> str:
    hosts = {}
    for i, (host, ns) in enumerate(sorted(machines.items()), start=1):
        target = "nc 127.0.0.1 2222" if host == sshless else "nc 127.0.0.1 22"
        hosts[host] = {
            # never dialled (the ProxyCommand carries the connection), but distinct: SSH
            # connection sharing (ControlPath) tells machines apart by host/port/user; and
            # the names of the machines' keys in known_hosts
            "ansible_host": f"127.0.0.{10 + i}",
            "ansible_ssh_common_args": f'-o ProxyCommand="ip netns exec {ns} {target}"',
            "hpnlab_ifnames": {"data": "lan0"},
        }
        if host == sudoless:        # a login that must become root, on a machine without sudo
            hosts[host] |= {"ansible_user": "labuser", "ansible_become": True}
    # the machines' host keys: a file of the test's, not ~/.ssh/known_hosts
    return json.dumps({"all": {"vars": {"ansible_user": "root", "ansible_ssh_private_key_file": str(key),
                                         "ansible_python_interpreter": "/usr/bin/python3",
                                         "hpnlab_known_hosts": str(key.parent / "known_hosts")},
                               "hosts": hosts}})


def _refused_key(proc: subprocess.CompletedProcess, host: str, why: str, command: str) -> str:
    """The command (starting `command`) that hpnlab's hint gives, after checking that it
    refused `host` for `why`."""
    assert proc.returncode == 1 and f"[{host}]" in proc.stderr and why in proc.stderr, proc.stderr
    hint = " ".join(proc.stderr.split("hint: ", 1)[1].split())      # unwrapped
    return hint[hint.index(command):]


def _link(ns: str, ifname: str) -> dict:
    return json.loads(_sh("ip", "-n", ns, "-j", "addr", "show", "dev", ifname).stdout)[0]


def _addrs(link: dict) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]


def test_static_provider_on_namespace_machines(leaves_nothing, lab_factory, tmp_path, monkeypatch):
    if not (os.path.exists(SSHD) and _sh("which", "nc", check=False).returncode == 0):
        pytest.fail("openssh-server and netcat-openbsd are needed: `make setup` installs them")
    _machine_has_dpdk_packages()
    machines_lab = lab_factory(_lab_text("x", "netns", 64))
    machines = {h: machines_lab.host_ns(h) for h in machines_lab.lab.hosts}
    ns1, ns2 = machines["h1"], machines["h2"]
    # The machines as one finds them: the data NIC has a name of its own (lan0, named in the
    # inventory), h2's has no address yet and h1's dpdk NIC another MTU: `up` gives both, `down`
    # takes back only those.
    for ns in machines.values():
        _sh("ip", "-n", ns, "link", "set", "eth1", "down")
        _sh("ip", "-n", ns, "link", "set", "eth1", "name", "lan0")
        _sh("ip", "-n", ns, "link", "set", "lan0", "up")
    _sh("ip", "-n", ns2, "addr", "flush", "dev", "lan0")
    _sh("ip", "-n", ns1, "link", "set", "eth2", "mtu", "1400")
    _sh("ip", "netns", "exec", ns1, "sysctl", "-q", "-w", "net.core.somaxconn=128")   # the profile wants 4096

    key = tmp_path / "id_ed25519"
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    name = unique_lab_name("st")
    work = tmp_path / "work"
    work.mkdir()
    static = tmp_path / "static.yml"
    env = dict(os.environ, HPNLAB_STATE_DIR=str(tmp_path / "state"), HPNLAB_STATIC_INVENTORY=str(static),
               PYTHONPATH=str(REPO / "src"))
    monkeypatch.setenv("HPNLAB_STATE_DIR", env["HPNLAB_STATE_DIR"])
    monkeypatch.setenv("HPNLAB_STATIC_INVENTORY", str(static))

    with _fake_machine(ns1, tmp_path / "h1", key.with_suffix(".pub").read_text()) as sshd1, \
         _fake_machine(ns2, tmp_path / "h2", key.with_suffix(".pub").read_text()) as sshd2, \
         _hugepage_pool() as pool:
        (work / "lab.yml").write_text(_lab_text(name, "static", pool + 64))

        # Host keys nobody accepted yet: refused, one machine at a time, with the fingerprint
        # and the command that accepts it (run here as a person would, once they checked it)
        static.write_text(_inventory(machines, key))
        known_hosts = tmp_path / "known_hosts"
        for host in sorted(machines):
            proc = _cli(["up"], work, dict(env, COLUMNS="500"), check=False)
            fingerprint = _sh("ssh-keygen", "-lf", str(tmp_path / host / "host_key.pub")).stdout.split()[1]
            assert fingerprint in proc.stderr, proc.stderr
            accept = _refused_key(proc, host, "unknown SSH host key", "ssh -o StrictHostKeyChecking=accept-new")
            assert not (tmp_path / "state" / name / "state.json").exists()
            assert "10.77.1.2/24" not in _addrs(_link(ns2, "lan0"))
            _sh("sh", "-c", accept)
            assert _sh("ssh-keygen", "-F", f"127.0.0.{10 + sorted(machines).index(host) + 1}",
                       "-f", str(known_hosts)).stdout.strip()

        # a machine that does not answer: a clear error naming it, and nothing left up or changed
        static.write_text(_inventory(machines, key, sshless="h2"))
        proc = _cli(["up"], work, env, check=False)
        assert proc.returncode == 1 and "[h2] no SSH to root@127.0.0.12:22 via proxy" in proc.stderr, proc.stderr
        assert not (tmp_path / "state" / name / "state.json").exists()
        assert "10.77.1.2/24" not in _addrs(_link(ns2, "lan0"))

        static.write_text(_inventory(machines, key))
        _cli(["up"], work, env)
        assert "already up" in _cli(["up"], work, env).stderr
        status = json.loads(_cli(["status", "--json"], work, env).stdout)
        assert status["up"] and status["provider"] == "static"
        for host in status["hosts"]:
            assert host["where"].startswith("ssh root@127.0.0.1") and host["where"].endswith("via proxy")
            lan0 = next(n for n in host["nics"] if n["network"] == "data")
            assert lan0["ifname"] == "lan0" and lan0["address"] in lan0["addrs"], host
        assert "10.77.1.2/24" in _addrs(_link(ns2, "lan0"))
        assert _link(ns1, "eth2")["mtu"] == 1500
        assert _sh("ip", "netns", "exec", ns1, "sysctl", "-n", "net.core.somaxconn").stdout.strip() == "4096"

        assert _cli(["exec", "h1", "--", "hostname"], work, env).stdout.strip()
        assert "10.77.1.1/24" in _cli(["exec", "h1", "--", "ip", "-br", "addr"], work, env).stdout

        provider = open_lab(work / "lab.yml")
        h1, h2 = provider.host("h1"), provider.host("h2")
        h1.run(["ping", "-c", "2", "-W", "2", "-I", "lan0", str(h2.address("data"))], timeout=30)
        sleeper = h2.start(["sleep", "600"], name="sleeper")
        assert sleeper.alive() and str(sleeper.pid) in _sh("ip", "netns", "pids", ns2).stdout.split()

        proc = _cli(["provision"], work, env, check=False)
        log = tmp_path / "state" / name / "provision.log"
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{log.read_text()[-3000:] if log.exists() else ''}"
        assert int(POOL.read_text()) == pool + 64
        proc = _cli(["verify", "--format", "json"], work, env, check=False)
        report = json.loads(proc.stdout)
        assert report["ok"] and proc.returncode == 0, json.dumps(report, indent=1) + proc.stderr
        assert (report["kind"], report["version"], report["provider"], report["hosts"]) == (
            "hpnlab/verify", 1, "static", ["h1", "h2"])
        checks = {(c["host"], c["check"]): c["status"] for c in report["checks"]}
        for host in ("h1", "h2"):
            assert checks[(host, "hugepages reserved")] == "passed"
            assert checks[(host, "lan0 address " + ("10.77.1.1/24" if host == "h1" else "10.77.1.2/24"))] == "passed"
            assert checks[(host, "ping " + ("h2" if host == "h1" else "h1") + " over data")] == "passed"
            assert checks[(host, "dpdk NIC")] == "skipped"      # no PCI NIC here (see _lab_text)

        proc = _cli(["down"], work, env)
        # ended; allow the machine's init a moment to reap it (kill -0 answers for a zombie)
        deadline = time.monotonic() + 10
        while sleeper.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not sleeper.alive(), proc.stderr
        assert "10.77.1.2/24" not in _addrs(_link(ns2, "lan0"))      # up gave it: gone
        assert "10.77.1.1/24" in _addrs(_link(ns1, "lan0"))          # the machine had it: kept
        assert _link(ns1, "eth2")["mtu"] == 1400
        # up set the profile's somaxconn (provisioning persisted the same value): down puts
        # back what up found, since the value is still the one up set
        assert _sh("ip", "netns", "exec", ns1, "sysctl", "-n", "net.core.somaxconn").stdout.strip() == "128"
        assert not (tmp_path / "state" / name / "state.json").exists()
        assert not (work / "inventory" / f"{name}.yml").exists()
        h1.close()
        h2.close()

        # bad input, each named with its host and reason: a login without sudo (h2) stops
        # `up` before it changes anything anywhere ...
        static.write_text(_inventory(machines, key, sudoless="h2"))
        proc = _cli(["up"], work, env, check=False)
        assert proc.returncode == 1 and "[h2]" in proc.stderr and "sudo" in proc.stderr, proc.stderr
        assert not (tmp_path / "state" / name / "state.json").exists()
        assert "10.77.1.2/24" not in _addrs(_link(ns2, "lan0"))
        # ... and fails provisioning there, while h1 is given a NIC DPDK cannot take (a veth
        # has no PCI address to bind): each host's failure names it and why
        (work / "lab.yml").write_text(re.sub(r"(?m)^(  h1:\n)", r"\1    dpdk: data\n",
                                             _lab_text(name, "static", pool + 64)))
        proc = _cli(["provision"], work, dict(env, COLUMNS="500"), check=False)     # no wrapped lines
        failed = {line.split(":")[0].removeprefix("FAILED host "): line
                  for line in proc.stderr.splitlines() if line.startswith("FAILED host ")}
        assert proc.returncode != 0 and set(failed) == {"h1", "h2"}, proc.stderr
        assert "DPDK" in failed["h1"] or "PCI" in failed["h1"], failed["h1"]
        assert "sudo" in failed["h2"], failed["h2"]
        for proc in (sshd1, sshd2):
            assert proc.poll() is None

        # h1 changes its host key (sshd reloads its keys on SIGHUP): hpnlab's SSH (Fabric),
        # testinfra (verify) and Ansible (provision) all refuse it, and say what to do
        static.write_text(_inventory(machines, key))
        (work / "lab.yml").write_text(_lab_text(name, "static", pool + 64))
        for old in (tmp_path / "h1").glob("host_key*"):
            old.unlink()
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "h1" / "host_key"))
        sshd1.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        _wait_listening(ns1, sshd1, tmp_path / "h1")
        proc = _cli(["up"], work, dict(env, COLUMNS="500"), check=False)
        fix = _refused_key(proc, "h1", "the SSH host key CHANGED", "ssh-keygen -f ")
        assert fix.startswith(f"ssh-keygen -f {known_hosts} -R 127.0.0.11 && ssh "), fix
        assert not (tmp_path / "state" / name / "state.json").exists()
        proc = _cli(["verify", "--json", "--host", "h1"], work, env, check=False)
        report = json.loads(proc.stdout)
        assert proc.returncode == 1 and "CHANGED" in report["errors"].get("h1", ""), proc.stdout
        proc = _cli(["provision", "--limit", "h1"], work, dict(env, COLUMNS="500"), check=False)
        assert proc.returncode != 0 and "host key" in proc.stderr.lower(), proc.stderr



@pytest.fixture
def leaves_nothing(tmp_path):
    """Asked for before lab_factory, so this checks after the machines' namespaces are gone
    (their end ends the SSH sessions, and with them Ansible's persistent connections)."""
    pool = int(POOL.read_text())
    user_known_hosts = Path("~/.ssh/known_hosts").expanduser()
    known_before = user_known_hosts.read_bytes() if user_known_hosts.exists() else None
    yield
    deadline = time.monotonic() + 15
    while _sh("pgrep", "-f", str(tmp_path), check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _sh("pgrep", "-a", "-f", str(tmp_path), check=False).stdout.strip()
    assert not left, f"processes of the test remain: {left}"
    known_after = user_known_hosts.read_bytes() if user_known_hosts.exists() else None
    assert known_after == known_before, "the machines' keys went to ~/.ssh/known_hosts, not the lab's file"
    assert int(POOL.read_text()) == pool, "the hugepage pool is not what it was"
