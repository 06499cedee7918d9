"""What a provisioned lab host must look like. Each check records a `check`
property (the name `hpnlab verify` prints) and fails with what it found.

Values from the inventory (a user may write it: NIC names, PCI addresses, sysctl
keys, addresses) are checked first and reach the host's shell as quoted
arguments (`host.run("cmd %s", value)`), never as shell text."""
from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from hpnlab.topology.sysctls import key_problem

IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")     # a Linux interface name (IFNAMSIZ), no '/', ':' or spaces
PCI = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
KERNEL_TUNING = Path(__file__).resolve().parents[2] / "ansible/roles/kernel_tuning/defaults/main.yml"


def _norm(value) -> str:
    return " ".join(str(value).split())


def _ifname(name) -> str:
    assert isinstance(name, str) and IFNAME.fullmatch(name) and name not in (".", ".."), \
        f"{name!r} is not an interface name (check hpnlab_ifnames in the inventory)"
    return name


def _key(key) -> str:
    problem = key_problem(key)
    assert not problem, problem
    return key


def _ip(value) -> str:
    return str(ipaddress.ip_address(str(value)))


def _shares_kernel(spec) -> bool:
    return bool(spec["hpnlab_shares_kernel"])       # (a namespace host: the machine's kernel)


def test_sysctl(host, spec, sysctl, record_property):
    key, want = sysctl
    record_property("check", f"sysctl {key}")
    have = _norm(host.check_output("sysctl -n %s", _key(key)))
    assert have == _norm(want), f"{key} is {have!r}, the {spec['hpnlab_profile']} profile wants {_norm(want)!r}"


def test_machine_sysctl(host, spec, machine_sysctl, record_property):
    key, want = machine_sysctl
    record_property("check", f"machine sysctl {key}")
    # netns hosts share the machine's kernel: read the key in the machine's own namespace
    # (`hpnlab verify` names a process of its own there: HPNLAB_MACHINE_PID)
    machine = str(int(os.environ.get("HPNLAB_MACHINE_PID", "1")))
    have = _norm(host.check_output("nsenter -t %s -n sysctl -n %s", machine, _key(key)) if _shares_kernel(spec)
                 else host.check_output("sysctl -n %s", _key(key)))
    assert have == _norm(want), f"{key} is {have!r}, machine.sysctls wants {_norm(want)!r}"


def test_nofile_limit(host, spec, record_property):
    record_property("check", "nofile limit")
    if _shares_kernel(spec):
        pytest.skip("netns hosts inherit the caller's limits")
    role = yaml.safe_load(KERNEL_TUNING.read_text())
    want, path = int(role["kernel_tuning_nofile"]), role["kernel_tuning_limits_file"]
    limits = host.file(path)
    assert limits.exists, f"no {path}"
    have = {}
    for line in limits.content_string.splitlines():
        fields = line.split("#")[0].split()
        if len(fields) == 4 and fields[2] == "nofile":
            have[(fields[0], fields[1])] = fields[3]
    for domain in ("*", "root"):          # pam_limits' `*` does not cover root: both are needed
        for kind in ("soft", "hard"):
            assert have.get((domain, kind)) == str(want), \
                f"{path}: {domain} {kind} nofile is {have.get((domain, kind))}, the kernel_tuning role sets {want}"
    nr_open = int(host.check_output("cat /proc/sys/fs/nr_open"))
    assert want <= nr_open, f"nofile {want} exceeds fs.nr_open {nr_open}: pam_limits cannot apply it"


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
    if _shares_kernel(spec):
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
    if _shares_kernel(spec):
        record_property("check", f"dpdk vdev on {ifname} starts")
        ifname = _ifname(ifname)
        offloads = host.check_output("ethtool -k %s", ifname)
        assert "tx-checksumming: off" in offloads, f"{ifname}: TX checksum offload is on (AF_PACKET needs it off)"
        pages = int(spec["hpnlab_hugepages"])
        mem = ["--no-huge", "-m", "64"] if not pages else [
            f"--huge-dir=/run/hpnlab/hugetlbfs/{spec['hpnlab_lab']}/{spec['hpnlab_host']}", "--huge-unlink",
            "-m", str(min(64, pages * (2 if spec["hpnlab_hugepage_size"] == "2M" else 1024)))]
        # start testpmd, wait (≤ 15 s, the machine may be busy) until it reports the port, stop it
        testpmd = ["timeout", "-s", "INT", "15", "dpdk-testpmd", "--lcores", "0@0,1@0", "--no-pci", "--no-telemetry",
                   f"--vdev=net_af_packet0,iface={ifname}", f"--file-prefix={spec['hpnlab_netns']}-verify", *mem,
                   "--", "--forward-mode=rxonly", "--stats-period", "1", "--total-num-mbufs=2048"]
        script = ('log=$(mktemp); "$@" </dev/null >"$log" 2>&1 & pid=$!; '
                  'i=0; while [ $i -lt 150 ] && kill -0 $pid 2>/dev/null && ! grep -q "Port 0: " "$log"; '
                  'do sleep 0.1; i=$((i+1)); done; kill -INT $pid 2>/dev/null; wait $pid; cat "$log"; rm -f "$log"')
        out = host.run("sh -c %s testpmd" + " %s" * len(testpmd), script, *testpmd)
        text = out.stdout + out.stderr
        mac = spec["hpnlab_dpdk_mac"].upper()
        assert f"Port 0: {mac}" in text, f"testpmd did not start the af_packet vdev on {ifname}: " + \
            " / ".join(text.strip().splitlines()[-4:])
    else:
        record_property("check", f"dpdk NIC {ifname} bound")
        pci = host.file("/var/lib/hpnlab/dpdk-nic")
        assert pci.exists, "no NIC was given to DPDK (/var/lib/hpnlab/dpdk-nic is missing)"
        addr = pci.content_string.strip()
        assert PCI.fullmatch(addr), f"/var/lib/hpnlab/dpdk-nic holds {addr!r}, not a PCI address"
        want = spec.get("hpnlab_dpdk_driver", "uio_pci_generic")
        driver = host.file(f"/sys/bus/pci/devices/{addr}/driver")
        drv = Path(driver.linked_to).name if driver.is_symlink else "none"
        assert drv == want, f"{addr} is bound to {drv}, not {want}"


def test_nic_address(host, spec, nic, record_property):
    record_property("check", f"{nic['ifname']} address {nic['address']}")
    links = json.loads(host.check_output("ip -j addr show dev %s", _ifname(nic["ifname"])) or "[]")
    assert links, f"no NIC {nic['ifname']}"
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in links[0].get("addr_info", []) if a.get("family") == "inet"]
    assert nic["address"] in addrs, f"{nic['ifname']} has {', '.join(addrs) or 'no address'}, not {nic['address']}"


def test_nic_mtu(host, spec, nic, record_property):
    record_property("check", f"{nic['ifname']} mtu {nic['mtu']}")
    mtu = int(host.check_output("cat %s", f"/sys/class/net/{_ifname(nic['ifname'])}/mtu"))
    assert mtu == int(nic["mtu"]), f"{nic['ifname']} has MTU {mtu}, the topology says {nic['mtu']}"


def test_ping_peer(host, spec, peer, record_property):
    record_property("check", f"ping {peer['host']} over {peer['network']}")
    out = host.run("ping -c 1 -W 2 -I %s %s", _ifname(peer["via"]), _ip(peer["ip"]))
    assert out.rc == 0, f"no ping reply from {peer['host']} ({peer['ip']}) via {peer['via']}"


def test_tcp_peer(host, spec, peer, record_property):
    port = int(os.environ.get("HPNLAB_VERIFY_PORT") or 0)
    record_property("check", f"tcp {peer['host']} over {peer['network']}")
    if not port:
        pytest.skip("no verify listener (HPNLAB_VERIFY_PORT unset)")
    out = host.run("python3 -c %s %s %s", "import socket, sys; socket.create_connection((sys.argv[1], "
                   "int(sys.argv[2])), 3).close()", _ip(peer["ip"]), str(port))
    assert out.rc == 0, f"no TCP connection to {peer['host']} {peer['ip']}:{port}: {out.stderr.strip()[-200:]}"


def _services(spec) -> list[dict]:
    """What must listen on this host: `hpnlab verify`'s own listener (it starts one on every
    host, HPNLAB_VERIFY_PORT) and whatever a running lab declares (HPNLAB_SERVICES)."""
    port = int(os.environ.get("HPNLAB_VERIFY_PORT") or 0)
    services = [{"name": "hpnlab verify listener", "port": port, "proto": "tcp"}] if port else []
    return services + [sv for sv in json.loads(os.environ.get("HPNLAB_SERVICES") or "[]")
                       if sv.get("host") == spec["hpnlab_host"]]


def test_services_listen(host, spec, record_property):
    services = _services(spec)
    record_property("check", "listening: " + (", ".join(f"{sv.get('name', 'service')} {sv.get('proto', 'tcp')}/"
                                                          f"{sv['port']}" for sv in services) or "nothing asked"))
    if not services:
        pytest.skip("no verify listener (HPNLAB_VERIFY_PORT unset) and no services declared")
    missing = []
    for sv in services:
        proto, port = sv.get("proto", "tcp"), int(sv["port"])
        assert proto in ("tcp", "udp") and 0 < port < 65536, f"bad service {sv!r}"
        out = host.check_output("ss -H %s %s", "-lnt" if proto == "tcp" else "-lnu", f"sport = :{port}")
        if not out.strip():
            missing.append(f"{sv.get('name', 'service')} ({proto}/{port})")
    assert not missing, "nothing listens for " + ", ".join(missing)
