"""The `hpnlab` commands as a user types them, against a real netns lab."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hpnlab.testing import unique_lab_name, write_lab_file

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(tmp_path):
    name = unique_lab_name("cli")
    lab_file = write_lab_file(tmp_path / "lab.yml", name)
    env = dict(os.environ, HPNLAB_STATE_DIR=str(tmp_path / "state"))

    def hpnlab(*args, check=True, **kw):
        proc = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", str(lab_file), *args],
                              capture_output=True, text=True, env=env, timeout=60, **kw)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc
    hpnlab.name, hpnlab.env, hpnlab.tmp = name, env, tmp_path
    yield hpnlab
    hpnlab("down", check=False)


def test_up_status_exec_capture_graph_down(cli):
    up = json.loads(cli("up", "--format", "json").stdout)
    assert (up["kind"], up["version"], up["created"], up["up"]) == ("hpnlab/up", 1, True, True)
    again = cli("up")
    assert "already up" in again.stderr and "hosts" in again.stdout        # the status tables

    status = json.loads(cli("status", "--format", "json").stdout)
    assert (status["kind"], status["version"], status["lab"], status["provider"]) == ("hpnlab/status", 1,
                                                                                      cli.name, "netns")
    assert status["up"] and [h["name"] for h in status["hosts"]] == ["h1", "h2"]
    assert [h["name"] for h in up["hosts"]] == ["h1", "h2"]
    nic = status["hosts"][0]["nics"][0]
    assert nic["ifname"] == "eth1" and nic["addrs"] == ["10.77.1.1/24"] and nic["state"] == "UP"
    assert status["hosts"][0]["sysctls"]["net.core.somaxconn"] == "4096"
    assert {n["name"] for n in status["networks"]} >= {"data"} and status["other_labs_up"] is not None

    ss = cli("exec", "h1", "--", "ss", "-lnt")
    assert "State" in ss.stdout
    failed = cli("exec", "h2", "--", "sh", "-c", "echo oops >&2; exit 7", check=False)
    assert failed.returncode == 7 and "oops" in failed.stderr
    failed = cli("exec", "--format", "json", "h2", "--", "sh", "-c", "echo out; echo oops >&2; exit 7", check=False)
    assert failed.returncode == 7 and failed.stderr == "", failed.stderr
    assert {k: v for k, v in json.loads(failed.stdout).items() if k != "seconds"} == {
        "kind": "hpnlab/exec", "version": 1, "host": "h2", "cmd": ["sh", "-c", "echo out; echo oops >&2; exit 7"],
        "rc": 7, "stdout": "out\n", "stderr": "oops\n"}

    shell = cli("shell", "h2", input="echo on=$HPNLAB_HOST; ip -br addr show eth1\nexit\n")
    assert "on=h2" in shell.stdout and "10.77.1.2/24" in shell.stdout

    state_dir = cli.tmp / "state" / cli.name
    assert (state_dir / "state.json").stat().st_mode & 0o777 == 0o600
    assert state_dir.stat().st_mode & 0o777 == 0o700

    pcap = cli.tmp / "data.pcap"
    capture = subprocess.Popen([sys.executable, "-m", "hpnlab.cli", "--lab", str(cli.tmp / "lab.yml"),
                                "capture", "data", "-w", str(pcap), "-c", "4", "icmp"],
                               env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while capture.poll() is None and time.monotonic() < deadline:
        cli("exec", "h1", "--", "ping", "-c", "1", "-W", "1", "10.77.1.2", check=False)
    assert capture.wait(5) == 0, capture.stderr.read()
    assert pcap.stat().st_size > 24                      # a pcap header and packets

    png = cli.tmp / "topo.png"
    cli("graph", "-o", str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"

    cli("down")
    assert json.loads(cli("status", "--json").stdout)["up"] is False       # --json: --format json
    assert not (cli.tmp / "state" / cli.name).exists()


def test_bad_arguments_get_clear_errors(cli):
    cli("up")
    unknown = cli("exec", "h9", "--", "true", check=False)
    assert unknown.returncode == 1 and "no host 'h9'" in unknown.stderr and "h1, h2" in unknown.stderr
    nic = cli("capture", "h1:eth7", "-c", "1", check=False)
    assert nic.returncode == 1 and "has no NIC 'eth7'" in nic.stderr
    net = cli("capture", "nowhere", check=False)
    assert net.returncode == 1 and "no network 'nowhere'" in net.stderr
    provider = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--provider", "docker", "status"],
                              capture_output=True, text=True)
    assert provider.returncode == 2 and "invalid choice: 'docker'" in provider.stderr


def test_every_subcommand_loads():
    from hpnlab.cli import build_parser
    help_text = build_parser().format_help()
    assert "(broken" not in help_text, help_text


def test_exec_on_a_lab_that_is_down(cli):
    proc = cli("exec", "h1", "--", "true", check=False)
    assert proc.returncode == 1 and "is not up" in proc.stderr
    for command in (["lab", "epoll"], ["kv", "lab"], ["ustack", "lab"]):
        proc = cli(*command, check=False)
        assert proc.returncode == 1 and "is not up" in proc.stderr and "or pass --up" in proc.stderr, proc.stderr
        assert not (cli.tmp / "state" / cli.name).exists()


def test_substrate_benchmark_writes_a_sane_report(tmp_path):
    env = dict(os.environ, HPNLAB_RESULTS=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "hpnlab.bench.substrate", "--repeat", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "substrate").iterdir()
    data = json.loads((run / "data.json").read_text())
    two, fifty = data["labs"]
    assert two["hosts"] == 2 and 0 < two["up_median_s"] < 10 and 0 < two["down_median_s"] < 10
    assert fifty["hosts"] == 50 and 0 < fifty["up_median_s"] < 60
    assert set(data["netlink_10_hosts"]) == {"ip -batch", "pyroute2"}
    assert "## Environment" in (run / "report.md").read_text()


def test_capture_on_a_lab_that_is_down(cli):
    proc = cli("capture", "data", "-c", "1", check=False)
    assert proc.returncode == 1 and "is not up" in proc.stderr and "hint: " in proc.stderr
    assert "Traceback" not in proc.stderr
