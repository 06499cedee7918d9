"""The user-space stack over the DPDK driver (hpnlab.dpdk, net_af_packet on h1's eth2 of a
netns lab): the kernel of h2 talks TCP to it across the lab's bridge, and it pings h2."""
from __future__ import annotations

import json
import textwrap
import time

import pytest

from hpnlab.labs._kit import agent_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection((sys.argv[1], 7), timeout=20)
    data = bytes(range(256)) * 400
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    print(len(got), got == data)
""")


def stack(host, *args):
    return [agent_python(host), "-m", "hpnlab.ustack.run", "--driver", "dpdk", "--ifname", "eth2", *args]


def test_kernel_tcp_to_the_stack_over_dpdk_and_the_stack_pings_back(netns_lab):
    h1, h2 = netns_lab.host("h1"), netns_lab.host("h2")
    ip = ".".join(str(h1.address("dpdk")).split(".")[:3] + ["101"])
    # what the dpdk role does on netns hosts: the kernel's frames leave with their checksums
    # filled in (a veth otherwise leaves them to an offload no DPDK port sees)
    h2.run(["ethtool", "-K", "eth2", "tx", "off"], timeout=10)
    server = h1.start(stack(h1, "--ip", f"{ip}/24", "--app", "echo", "--port", "7", "--once", "1"),
                      name="ustack-dpdk-echo")
    try:
        deadline = time.monotonic() + 30
        while '"listening"' not in server.logs()[0]:
            assert server.alive() and time.monotonic() < deadline, server.logs()
            time.sleep(0.1)
        res = h2.run([agent_python(h2), "-c", CLIENT, ip], timeout=60)
        assert res.stdout.split() == ["102400", "True"]
        assert server.wait(20) == 0
        events = [json.loads(line) for line in server.logs()[0].splitlines() if line.startswith("{")]
        assert events[0]["driver"] == "dpdk"
    finally:
        server.stop(2)
    res = h1.run(stack(h1, "--ip", f"{ip}/24", "--app", "ping", "--ping", str(h2.address("dpdk")),
                       "--count", "3", "--interval", "0.05"), timeout=60)
    ping = next(json.loads(line) for line in res.stdout.splitlines() if '"ping"' in line)
    assert (ping["sent"], ping["received"]) == (3, 3)
