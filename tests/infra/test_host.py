"""What a provisioned lab host must look like. Each check records a `check`
property (the name `hpnlab verify` prints) and fails with what it found."""
from __future__ import annotations

import json
import os

import pytest


def _norm(value) -> str:
    return " ".join(str(value).split())


def _netns(spec) -> bool:
    return spec["hpnlab_provider"] == "netns"


def test_sysctl(host, spec, sysctl, record_property):
    key, want = sysctl
    record_property("check", f"sysctl {key}")
    have = _norm(host.check_output(f"sysctl -n {key}"))
    assert have == _norm(want), f"{key} is {have!r}, the {spec['hpnlab_profile']} profile wants {_norm(want)!r}"


def test_machine_sysctl(host, spec, machine_sysctl, record_property):
    key, want = machine_sysctl
    record_property("check", f"machine sysctl {key}")
    # netns hosts share the machine's kernel: read the key in the machine's own namespace
    # (`hpnlab verify` names a process of its own there: HPNLAB_MACHINE_PID)
    machine = os.environ.get("HPNLAB_MACHINE_PID", "1")
    cmd = f"nsenter -t {machine} -n sysctl -n {key}" if _netns(spec) else f"sysctl -n {key}"
    have = _norm(host.check_output(cmd))
    assert have == _norm(want), f"{key} is {have!r}, machine.sysctls wants {_norm(want)!r}"


def test_nofile_limit(host, spec, record_property):
    record_property("check", "nofile limit")
    if _netns(spec):
        pytest.skip("netns hosts inherit the caller's limits")
    assert host.file("/etc/security/limits.d/60-hpnlab.conf").contains("nofile")


def test_hugepages_reserved(host, spec, record_property):
    record_property("check", "hugepages reserved")
    want = int(spec["hpnlab_hugepages"])
    if not want:
        pytest.skip("the lab asks no hugepages for this host")
    kb = 2048 if spec["hpnlab_hugepage_size"] == "2M" else 1048576
    total = int(host.check_output(f"cat /sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages"))
    assert total >= want, f"{total} {spec['hpnlab_hugepage_size']} hugepages in the pool, the host needs {want}"


def test_hugetlbfs_mounted(host, spec, record_property):
    record_property("check", "hugetlbfs mounted")
    if not int(spec["hpnlab_hugepages"]):
        pytest.skip("the lab asks no hugepages for this host")
    if _netns(spec):
        path = f"/run/hpnlab/hugetlbfs/{spec['hpnlab_lab']}/{spec['hpnlab_host']}"
        mount = host.mount_point(path)
        assert mount.exists, f"no hugetlbfs at {path}"
        assert mount.filesystem == "hugetlbfs", f"{path} is {mount.filesystem}, not hugetlbfs"
    else:
        out = host.check_output("findmnt -n -t hugetlbfs -o TARGET")
        assert out.strip(), "no hugetlbfs is mounted"


def test_testpmd_present(host, spec, record_property):
    record_property("check", "dpdk-testpmd present")
    assert host.exists("dpdk-testpmd"), "dpdk-testpmd is not installed (Debian package dpdk)"


def test_dpdk_nic(host, spec, record_property):
    ifname = spec["hpnlab_dpdk_ifname"]
    if not ifname:
        record_property("check", "dpdk NIC")
        pytest.skip("no DPDK NIC for this host")
    if _netns(spec):
        record_property("check", f"dpdk vdev on {ifname} starts")
        offloads = host.check_output(f"ethtool -k {ifname}")
        assert "tx-checksumming: off" in offloads, f"{ifname}: TX checksum offload is on (AF_PACKET needs it off)"
        pages = int(spec["hpnlab_hugepages"])
        mem = ["--no-huge", "-m", "64"] if not pages else [
            f"--huge-dir=/run/hpnlab/hugetlbfs/{spec['hpnlab_lab']}/{spec['hpnlab_host']}", "--huge-unlink",
            "-m", str(min(64, pages * (2 if spec["hpnlab_hugepage_size"] == "2M" else 1024)))]
        # start testpmd, wait (≤ 15 s, the machine may be busy) until it reports the port, stop it
        testpmd = ("timeout -s INT 15 dpdk-testpmd --lcores 0@0,1@0 --no-pci --no-telemetry "
                   f"--vdev=net_af_packet0,iface={ifname} --file-prefix={spec['hpnlab_netns']}-verify "
                   + " ".join(mem) + " -- --forward-mode=rxonly --stats-period 1 --total-num-mbufs=2048")
        cmd = (f'log=$(mktemp); {testpmd} </dev/null >"$log" 2>&1 & pid=$!; '
               'i=0; while [ $i -lt 150 ] && kill -0 $pid 2>/dev/null && ! grep -q "Port 0: " "$log"; '
               'do sleep 0.1; i=$((i+1)); done; kill -INT $pid 2>/dev/null; wait $pid; cat "$log"; rm -f "$log"')
        out = host.run(cmd)
        text = out.stdout + out.stderr
        mac = spec["hpnlab_dpdk_mac"].upper()
        assert f"Port 0: {mac}" in text, f"testpmd did not start the af_packet vdev on {ifname}: " + \
            " / ".join(text.strip().splitlines()[-4:])
    else:
        record_property("check", f"dpdk NIC {ifname} bound")
        pci = host.file("/var/lib/hpnlab/dpdk-nic")
        assert pci.exists, "no NIC was given to DPDK (/var/lib/hpnlab/dpdk-nic is missing)"
        addr = pci.content_string.strip()
        want = spec.get("hpnlab_dpdk_driver", "uio_pci_generic")
        drv = host.check_output(f"basename $(readlink -f /sys/bus/pci/devices/{addr}/driver) 2>/dev/null || echo none")
        assert drv == want, f"{addr} is bound to {drv}, not {want}"


def test_nic_address(host, spec, nic, record_property):
    record_property("check", f"{nic['ifname']} address {nic['address']}")
    links = json.loads(host.check_output(f"ip -j addr show dev {nic['ifname']}") or "[]")
    assert links, f"no NIC {nic['ifname']}"
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in links[0].get("addr_info", []) if a.get("family") == "inet"]
    assert nic["address"] in addrs, f"{nic['ifname']} has {', '.join(addrs) or 'no address'}, not {nic['address']}"


def test_nic_mtu(host, spec, nic, record_property):
    record_property("check", f"{nic['ifname']} mtu {nic['mtu']}")
    mtu = int(host.check_output(f"cat /sys/class/net/{nic['ifname']}/mtu"))
    assert mtu == int(nic["mtu"]), f"{nic['ifname']} has MTU {mtu}, the topology says {nic['mtu']}"


def test_ping_peer(host, spec, peer, record_property):
    record_property("check", f"ping {peer['host']} over {peer['network']}")
    out = host.run(f"ping -c 1 -W 2 -I {peer['via']} {peer['ip']}")
    assert out.rc == 0, f"no ping reply from {peer['host']} ({peer['ip']}) via {peer['via']}"


def test_tcp_peer(host, spec, peer, record_property):
    port = int(os.environ.get("HPNLAB_VERIFY_PORT") or 0)
    record_property("check", f"tcp {peer['host']} over {peer['network']}")
    if not port:
        pytest.skip("no verify listener (HPNLAB_VERIFY_PORT unset)")
    out = host.run(f"python3 -c 'import socket; socket.create_connection((\"{peer['ip']}\", {port}), 3).close()'")
    assert out.rc == 0, f"no TCP connection to {peer['host']} {peer['ip']}:{port}: {out.stderr.strip()[-200:]}"


def test_service_listens(host, spec, service, record_property):
    proto = service.get("proto", "tcp")
    record_property("check", f"{service.get('name', 'service')} listens on {proto}/{service['port']}")
    flag = "-lnt" if proto == "tcp" else "-lnu"
    out = host.check_output(f"ss -H {flag} 'sport = :{service['port']}'")
    assert out.strip(), f"nothing listens on {proto}/{service['port']} ({service.get('name', 'service')})"
