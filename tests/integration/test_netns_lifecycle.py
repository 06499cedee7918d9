"""Lifecycle of netns labs: rollback, cleanup after kill -9, cycles, isolation, impairment."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpnlab.state import LIVE_DIR
from hpnlab.testing import REPO, unique_lab_name, write_lab_file

pytestmark = pytest.mark.integration


def netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def residue(lab: str) -> list[str]:
    """Anything of `lab` left on the machine: namespaces, root links, processes."""
    left = [ns for ns in netns() if ns.startswith((f"{lab}-", f"{lab}."))]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += [f"link:{line.split(':')[1].strip()}" for line in links.splitlines() if lab in line]
    procs = subprocess.run(["pgrep", "-af", f"hpnlab.*{lab}"], capture_output=True, text=True).stdout
    left += [f"proc:{p}" for p in procs.splitlines() if "pgrep" not in p and "pytest" not in p]
    return left


def star(n: int, impaired: bool = False) -> str:
    hosts = "\n".join(f"  h{i}: {{}}" for i in range(1, n + 1))
    members = ", ".join(f"h{i}" for i in range(1, n + 1))
    impair = "\n    impair: {delay: 5ms}" if impaired else ""
    return f"hosts:\n{hosts}\nnetworks:\n  data:\n    hosts: [{members}]{impair}\n"


def hpnlab(*args, state: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, HPNLAB_STATE_DIR=str(state))
    return subprocess.Popen([sys.executable, "-m", "hpnlab.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def kill_9_halfway_up(name: str, tmp_path: Path, impaired: bool) -> None:
    """`hpnlab up` of a 30-host star, killed with -9 once some namespaces exist."""
    lab_file = tmp_path / "star.yml"
    lab_file.write_text(f"name: {name}\n" + star(30, impaired=impaired))
    proc = hpnlab("--lab", str(lab_file), "up", state=tmp_path / "st")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len([n for n in netns() if n.startswith(name)]) < 8:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert residue(name), "the kill came too late to leave anything behind"


def test_kill_9_during_up_then_cleanup_leaves_nothing(tmp_path):
    name = unique_lab_name("k")
    kill_9_halfway_up(name, tmp_path, impaired=True)
    out = hpnlab("cleanup", "--only", name, state=tmp_path / "st")   # only ours: other labs may be running
    assert out.wait(60) == 0, out.stderr.read()
    assert residue(name) == []
    assert not (tmp_path / "st" / name / "state.json").exists()


def test_global_cleanup_keeps_live_labs_and_removes_a_killed_one(lab_factory, tmp_path):
    """`hpnlab cleanup` without --only: a lab that is up stays (its state lives in another
    directory: the registry of live labs says so), a bring-up killed with -9 goes."""
    live = lab_factory()
    name = unique_lab_name("g")
    kill_9_halfway_up(name, tmp_path, impaired=False)
    out = hpnlab("--provider", "netns", "cleanup", state=tmp_path / "elsewhere")
    assert out.wait(120) == 0, out.stderr.read()
    assert f"lab {live.lab.name} is live" in out.stderr.read()
    assert residue(name) == []
    assert not list(LIVE_DIR.glob(f"netns.{name}")), "the killed lab is still registered as live"
    assert live.is_up() and live.host("h1").run(["ping", "-c1", "-W2", "10.77.1.2"]).ok


def test_cleanup_without_state_file_by_marker(lab_factory):
    lab = lab_factory(star(3, impaired=True))
    lab.state.path.unlink()                       # as if the state were lost
    from hpnlab.providers.netns import NetnsProvider
    removed = NetnsProvider.cleanup(lab=lab.lab.name)
    assert len(removed) == 4                      # 3 hosts + the switch
    assert residue(lab.lab.name) == []


def test_cleanup_never_touches_foreign_namespaces(lab_factory):
    lab = lab_factory()
    name = lab.lab.name
    foreign = f"{name}-h9"            # named like one of the lab's hosts, but not made by hpnlab
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        from hpnlab.providers.netns import NetnsProvider
        removed = NetnsProvider.cleanup(lab=name)
        assert sorted(removed) == [f"{name}-h1", f"{name}-h2", f"{name}.switch"]
        assert foreign in netns()
    finally:
        subprocess.run(["ip", "netns", "del", foreign])


def test_twenty_up_down_cycles_leave_zero_residue(lab_factory, tmp_path):
    lab = lab_factory(REPO / "lab.yml", up=False)
    for _ in range(20):
        assert lab.up() is True
        assert lab.host("h1").run(["ping", "-c1", "-W1", "10.77.1.2"]).ok
        lab.down()
        assert residue(lab.lab.name) == []
    assert not lab.state.dir.exists()


def test_two_labs_side_by_side(lab_factory):
    a, b = lab_factory(), lab_factory()           # same topology and addresses, other names
    for lab in (a, b):
        assert lab.host("h1").run(["ping", "-c1", "-W1", "10.77.1.2"]).ok
    # each h1 resolved 10.77.1.2 to the h2 of its own lab (MACs derive from the lab name)
    for lab in (a, b):
        neigh = lab.host("h1").run(["ip", "neigh", "show", "10.77.1.2"]).stdout
        assert lab.lab.hosts["h2"].nic("data").mac in neigh
    assert a.lab.hosts["h2"].nic("data").mac != b.lab.hosts["h2"].nic("data").mac
    a.down()
    assert not a.is_up() and b.is_up()
    assert b.host("h1").run(["ping", "-c1", "-W1", "10.77.1.2"]).ok


def test_failed_up_rolls_back(lab_factory, monkeypatch):
    lab = lab_factory(up=False)
    from hpnlab.providers import ProviderError
    from hpnlab.providers import netns as netns_mod
    real = netns_mod.NetnsProvider._apply_sysctls

    def broken(self, host, sysctls):
        real(self, host, sysctls)
        raise netns_mod.CmdFailed("injected failure after namespaces were made")
    monkeypatch.setattr(netns_mod.NetnsProvider, "_apply_sysctls", broken)
    with pytest.raises(ProviderError, match="injected failure"):
        lab.up()
    assert residue(lab.lab.name) == []
    assert lab.state.read() is None


IMPAIRED = """
hosts: {h1: {}, h2: {}}
networks:
  wire:
    type: link
    hosts: [h1, h2]
    impair: {delay: 20ms, loss: 10%}
  slow:
    hosts: [h1, h2]
    impair: {rate: 20mbit}
"""


def test_impaired_link_shows_delay_and_loss(lab_factory):
    lab = lab_factory(IMPAIRED)
    h1, h2 = lab.host("h1"), lab.host("h2")
    mech = lab.status()["networks"]
    assert {n["name"]: n["mechanism"] for n in mech}["wire"] in (
        "netem", "nftables numgen (loss), NFQUEUE delay line (delay)")
    out = h1.run(["ping", "-q", "-c", "300", "-i", "0.01", "-W", "1", str(h2.address("wire"))], timeout=60,
                 check=False).stdout
    loss = float(re.search(r"([\d.]+)% packet loss", out).group(1))
    rtt_min, rtt_avg = map(float, re.search(r"= ([\d.]+)/([\d.]+)/", out).groups())
    # 20 ms each way; 10% at each end's egress: a ping survives with 0.9² → 19% lost
    assert 39.0 <= rtt_min and rtt_avg < 60.0, out
    assert 9.0 <= loss <= 31.0, out


def test_rate_limit_and_tcp_under_impairment(lab_factory):
    lab = lab_factory(IMPAIRED)
    h1, h2 = lab.host("h1"), lab.host("h2")
    server = h2.start(["iperf3", "-s", "-1", "-p", "5202"], name="iperf3")
    h2.wait_for_port(5202)
    out = h1.run(["iperf3", "-c", str(h2.address("slow")), "-p", "5202", "-t", "3", "-J"], timeout=30).stdout
    server.wait(10)
    import json
    bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
    assert 12e6 < bps < 22e6, bps


def test_two_concurrent_ups_do_not_collide(tmp_path):
    name = unique_lab_name("c")
    lab_file = write_lab_file(tmp_path / "lab.yml", name)
    state = tmp_path / "st"
    try:
        procs = [hpnlab("--lab", str(lab_file), "up", state=state) for _ in range(2)]
        outputs = [(p.wait(60), p.stderr.read()) for p in procs]
        assert [rc for rc, _ in outputs] == [0, 0], outputs
        assert sum("already up" in err for _, err in outputs) == 1, outputs
        assert sorted(n for n in netns() if n.startswith(name)) == [f"{name}-h1", f"{name}-h2", f"{name}.switch"]
    finally:
        assert hpnlab("--lab", str(lab_file), "down", state=state).wait(60) == 0
    assert residue(name) == []
