"""testinfra checks for one lab host; `hpnlab verify` runs them once per host.

    HPNLAB_INVENTORY   the generated inventory (inventory/<lab>.yml)
    HPNLAB_HOST        which of its hosts this run checks
    HPNLAB_VERIFY_PORT a TCP port every host listens on during verify (peers connect to it)
    HPNLAB_SERVICES    JSON list of {host, port, proto, name} a running lab says should listen
    HPNLAB_VERIFY_READY a file that appears once every host listens: the checks wait for it

The `host` fixture is testinfra's host for HPNLAB_HOST (hpnlab.verify.testinfra_host):
netns hosts are checked with the local backend inside their namespace (`hpnlab verify`
runs pytest there); VMs and real machines over one SSH connection per run, the host key
checked against the known_hosts the inventory names. Without HPNLAB_INVENTORY (a plain
`pytest` of the repo) nothing here is collected.
"""
from __future__ import annotations

import json
import os
import time

import pytest
import yaml

if not os.environ.get("HPNLAB_INVENTORY"):
    collect_ignore_glob = ["test_*.py"]


def _spec() -> dict:
    doc = yaml.safe_load(open(os.environ["HPNLAB_INVENTORY"]))["all"]
    name = os.environ["HPNLAB_HOST"]
    return {**(doc.get("vars") or {}), **doc["hosts"][name]}


@pytest.fixture(scope="session")
def spec() -> dict:
    return _spec()


@pytest.fixture(scope="session")
def host(spec):
    """The host, connected (while `hpnlab verify` starts the listeners: then the checks run)."""
    from hpnlab.verify import LISTEN_TIMEOUT, testinfra_host
    host = testinfra_host(spec)
    ready = os.environ.get("HPNLAB_VERIFY_READY")
    deadline = time.monotonic() + LISTEN_TIMEOUT + 30
    while ready and not os.path.exists(ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    return host


def pytest_generate_tests(metafunc):
    if not os.environ.get("HPNLAB_INVENTORY"):
        return
    s = _spec()
    params = {
        "sysctl": [(k, str(v)) for k, v in s["hpnlab_sysctls"].items()],
        "machine_sysctl": [(k, str(v)) for k, v in s["hpnlab_machine_sysctls"].items()],
        "nic": [n for n in s["hpnlab_nics"] if n.get("kernel", True)],   # DPDK's NIC: test_dpdk_nic
        "peer": s["hpnlab_peers"],
        "service": [sv for sv in json.loads(os.environ.get("HPNLAB_SERVICES") or "[]")
                    if sv.get("host") == s["hpnlab_host"]],
    }
    ids = {
        "sysctl": lambda p: p[0], "machine_sysctl": lambda p: p[0],
        "nic": lambda n: n["ifname"], "peer": lambda p: f"{p['host']}/{p['network']}",
        "service": lambda sv: f"{sv.get('name', 'service')}:{sv['port']}",
    }
    for name, values in params.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values, ids=[ids[name](v) for v in values])
