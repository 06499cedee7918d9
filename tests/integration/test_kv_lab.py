"""`hpnlab kv lab` on real namespaces, small: the store on h1 and redis-server on h1 measured from
h2 in one run; the report and data.json carry rps[engine][index][test][pipeline] and redis. The
ustack engine is the store on the user-space stack, here beside h1's kernel on the data LAN."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpnlab.cli import build_parser
from hpnlab.kv import lab
from hpnlab.testing import REPO, write_lab_file

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")]


def test_kv_lab_small_grid(netns_lab, tmp_path):
    args = build_parser(["kv"]).parse_args(
        ["kv", "lab", "--engines", "epoll-lt,threads,ustack", "--indexes", "hash,rbtree", "--tests", "set,get",
         "--requests", "500", "--fill-keys", "1000", "--fake-runs", "1", "--results", str(tmp_path)])
    res = lab.run(netns_lab, args, lambda m: None)
    data = json.loads((res["dir"] / "data.json").read_text())
    for engine, index in (("epoll-lt", "hash"), ("threads", "hash"), ("ustack", "hash"), ("epoll-lt", "rbtree")):
        for test in ("set", "get"):
            for p in ("1", "16"):
                assert data["rps"][engine][index][test][p] > 0
    assert data["redis"]["set"]["1"] > 0 and data["redis"]["get"]["16"] > 0
    for server in (data["latency"]["redis"], data["latency"]["epoll-lt"]["hash"], data["latency"]["fakeredis"]):
        assert server["1"]["get"]["cpu_us"] >= 0 and server["16"]["set"]["busy"] >= 0   # the server's CPU, read
    assert data["range_ms"]["rbtree"]["p50"] > 0 and "hash" not in data["range_ms"]
    assert 0 < data["bytes_per_key"]["redis-server"] < 10_000
    assert [len(data["fakeredis_runs"]["get"][p]) for p in ("1", "16")] == [1, 1]
    assert data["fakeredis"]["get"]["1"] == data["fakeredis_runs"]["get"]["1"][0] > 0
    # the stack took h1's data NIC beside its kernel, with its own address (the kernel's + 100)
    assert data["ustack"] == {"network": "data", "driver": "afpacket", "ifname": "eth1", "ip": "10.77.1.101/24",
                              "address": "10.77.1.101"}
    assert data["latency"]["ustack"]["hash"]["1"]["set"]["user_us"] > 0
    text = (res["dir"] / "report.md").read_text()
    assert "## Goals" in text and (res["dir"] / "rps_P1.png").exists()
    assert "## The store on the user-space stack (ustack)" in text and "| SET | -P 1 |" in text


def _python_without(tmp_path: Path, package: str) -> Path:
    """A venv holding everything this one has except `package` (its entries linked, the package
    left out): an interpreter on which `import package` really fails."""
    venv = tmp_path / f"venv-without-{package}"
    subprocess.run([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(package):
            (site / entry.name).symlink_to(entry)
    py = venv / "bin" / "python"
    assert subprocess.run([py, "-c", "import hpnlab.kv.serve"], check=False).returncode == 0
    assert subprocess.run([py, "-c", f"import {package}"], capture_output=True, check=False).returncode == 1
    return py


def test_an_engine_whose_library_is_missing_is_reported_and_the_rest_runs(netns_lab, tmp_path):
    """h1's python lacks uvloop (really: a venv without it, as the agent python): `hpnlab kv lab`
    still measures epoll-lt and redis-server, writes the report with the missing engine on top
    (why, and the fix) and exits non-zero."""
    py = _python_without(tmp_path, "uvloop")
    lab_file = write_lab_file(tmp_path / "lab.yml", netns_lab.lab.name)
    env = dict(os.environ, HPNLAB_STATE_DIR=str(netns_lab.state.dir.parent), HPNLAB_AGENT_PYTHON=str(py))
    proc = subprocess.run([sys.executable, "-m", "hpnlab.cli", "--lab", str(lab_file), "kv", "lab",
                           "--engines", "epoll-lt,uvloop", "--indexes", "hash", "--tests", "set,get",
                           "--requests", "2000", "--fill-keys", "200", "--fake-runs", "0",
                           "--results", str(tmp_path / "results")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 of 3 requested servers did not run" in proc.stderr and "uvloop/hash not run" in proc.stderr, proc.stderr
    run, = (tmp_path / "results" / "kv").iterdir()
    data = json.loads((run / "data.json").read_text())
    assert list(data["not_run"]) == ["uvloop/hash"] and "uvloop" not in data["rps"]
    reason = data["not_run"]["uvloop/hash"]["reason"]
    assert reason.startswith("on h1: uvloop is not installed") and f"{py.parent}/pip install uvloop" in reason
    assert data["rps"]["epoll-lt"]["hash"]["get"]["1"] > 0 and data["redis"]["set"]["16"] > 0
    text = (run / "report.md").read_text()
    top = text.split("## Requests per second")[0]
    assert "**INCOMPLETE RUN: 1 of 3 requested servers did not run" in top and "**uvloop/hash not run**" in top
    assert "| epoll-lt/hash | 1 |" in text and "| **redis-server** | 1 |" in text
    # fakeredis left out as asked: said so where its goal rows would be, no placeholder
    assert data["skipped"] == {"fakeredis": "not measured (asked: --fake-runs 0)"}
    assert text.index("## Goals") < text.index("\n- fakeredis: not measured (asked: --fake-runs 0)\n")


@pytest.mark.skipif(subprocess.run(["/usr/bin/python3", "-c", "import fakeredis"], capture_output=True).returncode == 0,
                    reason="the system python has fakeredis: nothing to copy")
def test_fakeredis_is_copied_to_a_host_whose_python_lacks_it(netns_lab):
    """On a VM the lab copies this machine's fakeredis (and redis, sortedcontainers) over and runs
    its TCP server from the copy. Here: h1 with the system python, which has no fakeredis, as a
    host that does not share our file system would be; then redis-cli from h2 talks to it."""
    h1, h2 = netns_lab.host("h1"), netns_lab.host("h2")
    py = "/usr/bin/python3"
    try:
        env = lab.fakeredis_env(SimpleNamespace(shares_kernel=False), h1, py, lambda m: None)
        assert env == {"PYTHONPATH": "/tmp/hpnlab-kvlab-fakeredis"}
        ip = str(h1.address("data"))
        serve = f"from fakeredis import TcpFakeServer; TcpFakeServer(('{ip}', 46999)).serve_forever()"
        proc = h1.start([py, "-c", serve], name="test-fakeredis", env=env)
        try:
            h1.wait_for_port(46999, timeout=30)
            assert lab.cli(h2, ip, 46999, "SET", "k", "v").strip() == "OK"
            assert lab.cli(h2, ip, 46999, "GET", "k").strip() == "v"
        finally:
            proc.stop(5)
        assert "make setup" in lab.fakeredis_env(SimpleNamespace(shares_kernel=True), h1, py, lambda m: None)
    finally:
        shutil.rmtree("/tmp/hpnlab-kvlab-fakeredis", ignore_errors=True)
        Path("/tmp/hpnlab-kvlab-fakeredis.zip").unlink(missing_ok=True)
