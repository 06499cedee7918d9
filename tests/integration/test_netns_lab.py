"""The default lab on real namespaces: reachability, TCP, per-host sysctls."""
from __future__ import annotations

import subprocess

import pytest

pytestmark = pytest.mark.integration


def test_hosts_ping_each_other_over_the_data_nic(netns_lab):
    h1, h2 = netns_lab.host("h1"), netns_lab.host("h2")
    out = h1.run(["ping", "-c", "3", "-i", "0.05", "-W", "1", str(h2.address("data"))]).stdout
    assert " 0% packet loss" in out
    out = h2.run(["ping", "-c", "1", "-W", "1", str(h1.address("data"))]).stdout
    assert " 0% packet loss" in out


def test_tcp_connection_between_hosts(netns_lab):
    h1, h2 = netns_lab.host("h1"), netns_lab.host("h2")
    server = h1.start(["python3", "-c", (
        "import socket;s=socket.create_server(('0.0.0.0',7001));c,_=s.accept();"
        "c.sendall(c.recv(100).upper());c.close()")], name="upper")
    try:
        h1.wait_for_port(7001)
        reply = h2.run(["python3", "-c", (
            f"import socket;c=socket.create_connection(('{h1.address('data')}',7001),timeout=5);"
            "c.sendall(b'hello');print(c.recv(100).decode())")], timeout=10).stdout
        assert reply.strip() == "HELLO"
    finally:
        server.stop()


def test_sysctl_from_lab_yml_reads_back_and_differs_from_root(netns_lab):
    h1 = netns_lab.host("h1")
    want = netns_lab.lab.hosts["h1"].sysctls["net.ipv4.tcp_max_syn_backlog"]
    assert h1.sysctl("net.ipv4.tcp_max_syn_backlog") == want
    root = subprocess.run(["sysctl", "-n", "net.ipv4.tcp_max_syn_backlog"], capture_output=True, text=True).stdout
    assert root.strip() != want


def test_nothing_lab_made_in_root_namespace(netns_lab):
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert netns_lab.lab.name not in links
    assert "eth1@" not in links
    # the lab subnet is not routed anywhere from the root namespace, so nothing can leak
    route = subprocess.run(["ip", "route", "show", str(netns_lab.lab.networks["data"].subnet)],
                           capture_output=True, text=True).stdout
    assert route.strip() == ""


def test_hosts_have_no_route_to_the_uplink(netns_lab):
    h1 = netns_lab.host("h1")
    assert "default" not in h1.run(["ip", "route"]).stdout
    assert h1.run(["ip", "route", "get", "192.0.2.1"], check=False).rc != 0


def test_up_twice_changes_nothing(netns_lab):
    before = netns_lab.state.read()
    assert netns_lab.up() is False
    assert netns_lab.state.read() == before
