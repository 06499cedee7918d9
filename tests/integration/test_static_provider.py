"""The static provider end to end, against "real machines" made here by hpnlab.static_machines:
the hosts of a netns lab, each running a real OpenSSH sshd inside its namespace, reached with a
ProxyCommand `ip netns exec NS nc 127.0.0.1 22` — the jump-host path of real labs. Their host
keys are checked against a known_hosts file the inventory names (`hpnlab_known_hosts`): the test
accepts each one with the command hpnlab prints for an unknown key, and later changes one
machine's key. A lab (close) runs on them end to end, as `make lab-close PROVIDER=static` does.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpnlab import machine
from hpnlab.labcode import outdated_hosts
from hpnlab.providers import open_lab
from hpnlab.state import registered
from hpnlab.static_machines import Machines
from hpnlab.testing import REPO, unique_lab_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def _unheld_pages() -> int:
    """This machine's 2 MiB pages beyond those the labs hold (which other labs may take and
    give back meanwhile: hpnlab's machine ledger)."""
    with machine._ledger() as data:
        return int(POOL.read_text()) - sum(data["hugepages"].get("2M", {}).values())


def _sh(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, **kw)


def _cli(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", "lab.yml", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"hpnlab {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _inventory(machines: Machines, sshless: str | None = None, sudoless: str | None = None) -> dict:
    """The machines' inventory, `sshless`'s ProxyCommand to a port nothing listens on,
    `sudoless` reached as a login that must become root on a machine without sudo."""
    data = machines.inventory({"data": "lan0"})
    hosts = data["all"]["hosts"]
    if sshless:
        hosts[sshless]["ansible_ssh_common_args"] = hosts[sshless]["ansible_ssh_common_args"].replace(
            "127.0.0.1 22", "127.0.0.1 2222")
    if sudoless:
        hosts[sudoless] |= {"ansible_user": "labuser", "ansible_become": True}
    return data


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


@pytest.fixture
def machines(leaves_nothing, tmp_path):
    """Machines for lab.yml's hosts whose data NIC is called lan0 (named in the inventory), and
    whose host keys nobody accepted yet."""
    made = Machines(tmp_path / "machines")
    try:
        yield made.up(REPO / "lab.yml", name=unique_lab_name("st"), accept_keys=False, ifnames={"data": "lan0"})
        record = made.read()
    finally:
        made.down()
    assert not set(record["namespaces"].values()) & set(_sh("ip", "netns", "list").stdout.split())
    assert record["machines_lab"] not in machine.holders()
    assert not made.dir.exists()


def test_static_provider_on_namespace_machines(machines, tmp_path, monkeypatch, request):
    hosts = sorted(machines.read()["namespaces"])
    ns1, ns2 = machines.namespace("h1"), machines.namespace("h2")
    # The machines as one finds them: h2's data NIC has no address yet and h1's dpdk NIC another
    # MTU: `up` gives both, `down` takes back only those.
    _sh("ip", "-n", ns2, "addr", "flush", "dev", "lan0")
    _sh("ip", "-n", ns1, "link", "set", "eth2", "mtu", "1400")
    _sh("ip", "netns", "exec", ns1, "sysctl", "-q", "-w", "net.core.somaxconn=128")   # the profile wants 4096

    name = machines.read()["lab"]
    work = tmp_path / "work"
    work.mkdir()
    lab_text = machines.lab_path.read_text()
    (work / "lab.yml").write_text(lab_text)
    static = machines.inventory_path
    env = dict(os.environ, HPNLAB_STATE_DIR=str(tmp_path / "state"), HPNLAB_STATIC_INVENTORY=str(static),
               PYTHONPATH=str(REPO / "src"))
    monkeypatch.setenv("HPNLAB_STATE_DIR", env["HPNLAB_STATE_DIR"])
    monkeypatch.setenv("HPNLAB_STATIC_INVENTORY", str(static))
    unheld = _unheld_pages()        # the machines' pages are held for them by their netns lab

    def down_if_left_up():          # a failure half-way leaves no static lab registered as live
        if (tmp_path / "state" / name / "state.json").exists():
            _cli(["down"], work, env, check=False)
    request.addfinalizer(down_if_left_up)
    # Host keys nobody accepted yet: refused, one machine at a time, with the fingerprint
    # and the command that accepts it (run here as a person would, once they checked it)
    machines.write_inventory(_inventory(machines))
    known_hosts = machines.known_hosts
    for host in hosts:
        proc = _cli(["up"], work, dict(env, COLUMNS="500"), check=False)
        fingerprint = _sh("ssh-keygen", "-lf", str(machines.dir / host / "host_key.pub")).stdout.split()[1]
        assert fingerprint in proc.stderr, proc.stderr
        accept = _refused_key(proc, host, "unknown SSH host key", "ssh -o StrictHostKeyChecking=accept-new")
        assert not (tmp_path / "state" / name / "state.json").exists()
        assert "10.77.1.2/24" not in _addrs(_link(ns2, "lan0"))
        _sh("sh", "-c", accept)
        assert _sh("ssh-keygen", "-F", f"127.0.0.{10 + hosts.index(host) + 1}",
                   "-f", str(known_hosts)).stdout.strip()

    # a machine that does not answer: a clear error naming it, and nothing left up or changed
    machines.write_inventory(_inventory(machines, sshless="h2"))
    proc = _cli(["up"], work, env, check=False)
    assert proc.returncode == 1 and "[h2] no SSH to root@127.0.0.12:22 via proxy" in proc.stderr, proc.stderr
    assert not (tmp_path / "state" / name / "state.json").exists()
    assert "10.77.1.2/24" not in _addrs(_link(ns2, "lan0"))

    machines.write_inventory(_inventory(machines))
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
    # each machine's own vm.nr_hugepages is what provisioning set there; this machine's pool
    # is untouched by it (the machines' pages were held for them before)
    assert machines.pool("h1") == machines.pool("h2") == 64
    assert _unheld_pages() == unheld
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
        assert checks[(host, "dpdk NIC")] == "skipped"      # no PCI NIC here (hpnlab.static_machines)

    # h2's copy of hpnlab is made older than this checkout (as after an edit or a `git pull`
    # since provisioning), without the lab's agent: the lab command brings it up to date first
    h2.run(["sh", "-c", "rm /opt/hpnlab/lib/hpnlab/labs/p2p.py && echo 0123456789abcdef > /opt/hpnlab/FINGERPRINT"])
    assert outdated_hosts(provider) == {"h2": "0123456789abcdef"}
    # a lab end to end (as `make lab-p2p-lan PROVIDER=static` runs it): its pcaps come back over
    # SSH and classify every handshake, and no tcpdump is left on the machines
    _cli(["lab", "--results", str(tmp_path / "results"), "p2p", "--tries", "3"], work, env)
    assert outdated_hosts(provider) == {}
    run, = (tmp_path / "results" / "p2p").iterdir()
    data = json.loads((run / "data.json").read_text())
    assert data["environment"]["provider"] == "static" and (run / "report.md").exists()
    tries = data["analysis"]["tries"]
    assert len(tries) == 3 and all(t["ok"] and t["opening"] and t["kind"] != "failed" for t in tries), tries
    for host in hosts:
        assert (run / f"{host}.pcap").stat().st_size > 0
        left = [Path(f"/proc/{pid}/comm").read_text().strip()
                for pid in _sh("ip", "netns", "pids", machines.namespace(host)).stdout.split()]
        assert "tcpdump" not in left, left

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
    assert name not in registered("static")
    h1.close()
    h2.close()

    # bad input, each named with its host and reason: a login without sudo (h2) stops
    # `up` before it changes anything anywhere ...
    machines.write_inventory(_inventory(machines, sudoless="h2"))
    proc = _cli(["up"], work, env, check=False)
    assert proc.returncode == 1 and "[h2]" in proc.stderr and "sudo" in proc.stderr, proc.stderr
    assert not (tmp_path / "state" / name / "state.json").exists()
    assert "10.77.1.2/24" not in _addrs(_link(ns2, "lan0"))
    # ... and fails provisioning there, while h1 is given a NIC DPDK cannot take (a veth
    # has no PCI address to bind): each host's failure names it and why
    (work / "lab.yml").write_text(re.sub(r"(?m)^(  h1:\n)", r"\1    dpdk: data\n",
                                         lab_text))
    proc = _cli(["provision"], work, dict(env, COLUMNS="500"), check=False)     # no wrapped lines
    failed = {line.split(":")[0].removeprefix("FAILED host "): line
              for line in proc.stderr.splitlines() if line.startswith("FAILED host ")}
    assert proc.returncode != 0 and set(failed) == {"h1", "h2"}, proc.stderr
    assert "DPDK" in failed["h1"] or "PCI" in failed["h1"], failed["h1"]
    assert "sudo" in failed["h2"], failed["h2"]
    for host in hosts:
        assert Path(f"/proc/{machines.sshd_pid(host)}").exists()

    # h1 changes its host key (sshd reloads its keys on SIGHUP): hpnlab's SSH (Fabric),
    # testinfra (verify) and Ansible (provision) all refuse it, and say what to do
    machines.write_inventory(_inventory(machines))
    (work / "lab.yml").write_text(lab_text)
    for old in (machines.dir / "h1").glob("host_key*"):
        old.unlink()
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(machines.dir / "h1" / "host_key"))
    os.kill(machines.sshd_pid("h1"), signal.SIGHUP)
    time.sleep(0.5)
    machines.wait_listening("h1", ns1, machines.sshd_pid("h1"))
    proc = _cli(["up"], work, dict(env, COLUMNS="500"), check=False)
    fix = _refused_key(proc, "h1", "the SSH host key CHANGED", "ssh-keygen -f ")
    assert fix.startswith(f"ssh-keygen -f {known_hosts} -R 127.0.0.11 && ssh "), fix
    assert not (tmp_path / "state" / name / "state.json").exists()
    proc = _cli(["verify", "--json", "--host", "h1"], work, env, check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and "CHANGED" in report["errors"].get("h1", ""), proc.stdout
    proc = _cli(["provision", "--limit", "h1"], work, dict(env, COLUMNS="500"), check=False)
    assert proc.returncode != 0 and "host key" in proc.stderr.lower(), proc.stderr
    assert name not in registered("static")         # the refused `up`s registered nothing either



@pytest.fixture
def leaves_nothing(tmp_path):
    """Asked for before the machines, so this checks after they are gone
    (their end ends the SSH sessions, and with them Ansible's persistent connections)."""
    unheld = _unheld_pages()
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
    assert _unheld_pages() == unheld, "the hugepage pool is not what it was (beside what labs hold)"
