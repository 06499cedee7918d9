"""hpnlab.dpdk on Debian's DPDK 22.11, for real: EAL with --no-huge and virtual devices
(net_null), each case in its own process (EAL runs once per process). Errors a user can
make come back as DpdkError with the fix, never as a crash or a hang."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpnlab import dpdk

NULL_EAL = dpdk.eal_args(vdevs=["net_null0"], memory_mb=128, extra=["--log-level=warning"])


def run_py(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_net_null_port_link_stats_xstats_rx_tx_and_generator_count():
    proc = run_py(f"""
        import json
        from hpnlab import dpdk
        from hpnlab.pktgen.engine import Generator
        from hpnlab.pktgen.templates import Traffic
        n = dpdk.init({NULL_EAL!r})
        pool = dpdk.Pool("t", 4095)
        port = dpdk.Port(0, pool)
        link = port.link()
        sent = port.tx([bytes(60)] * 100)
        rx = port.rx(32)
        stats1 = port.stats()
        port.reset_stats()
        gen = Generator(port, Traffic(sizes=[64], flows=4), port.mac, b"\\x02" * 6)
        res = gen.run(count=100000, seconds=30)
        print(json.dumps(dict(n=n, name=port.name, driver=port.driver, up=link.up, speed=link.speed_mbps,
                              sent=sent, rx=[len(f) for f in rx], stats1=stats1, gen=res,
                              stats2=port.stats(), xstats=port.xstats(), avail=pool.available())))
        port.close()
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = last_json(proc)
    assert (out["n"], out["name"], out["driver"], out["up"]) == (1, "net_null0", "net_null", True)
    assert out["sent"] == 100 and out["stats1"]["opackets"] == 100
    assert out["rx"] and all(n == 64 for n in out["rx"])           # net_null hands out 64-byte frames
    assert out["gen"]["sent"] == 100000 and out["stats2"]["opackets"] == 100000
    assert out["xstats"]["tx_good_packets"] == 100000
    # prebuilt mbufs: a frame is written into an mbuf once (counted since the generator
    # started, writes stay with the mbufs); later only the bytes a flow changes
    assert 0 < out["gen"]["frame_writes"] <= 4095
    assert out["gen"]["frame_writes"] + out["gen"]["flow_patches"] <= 100000
    assert out["avail"] == 4095                                    # every mbuf came back


def test_generator_paces_to_the_asked_rate():
    proc = run_py(f"""
        import json
        from hpnlab import dpdk
        from hpnlab.pktgen.engine import Generator
        from hpnlab.pktgen.templates import Traffic
        dpdk.init({NULL_EAL!r})
        port = dpdk.Port(0, dpdk.Pool("t", 4095))
        res = Generator(port, Traffic(sizes=[128]), port.mac, b"\\x02" * 6).run(pps=50000, seconds=1.0)
        print(json.dumps(res))
    """)
    res = last_json(proc)
    assert 45000 <= res["sent"] <= 52000, res


def test_generator_counts_and_times_the_frames_that_come_back_to_its_port():
    """net_ring loops what a port sends back into its RX queue: the round trip of the lab
    without a peer. Only frames sent to the asked MAC count (an af_packet port also shows
    the frames it sent itself)."""
    ring = dpdk.eal_args(vdevs=["net_ring0"], memory_mb=128, extra=["--log-level=warning"])
    back = {}
    for mac in ("02:68:6e:70:6c:02", "02:00:00:00:00:99"):      # the frames' destination, another one
        proc = subprocess.run([sys.executable, "-m", "hpnlab.pktgen.agent", "send", "--eal", " ".join(ring),
                               "--count", "5000", "--rate", "100kpps", "--seconds", "5", "--echo",
                               "--echo-wait", "0.3", "--src-mac", mac], capture_output=True, text=True, timeout=60)
        back[mac] = last_json(proc)["echo"]
    ok, other = back.values()
    assert (ok["unique"], ok["lost"], ok["duplicates"]) == (5000, 0, 0)
    assert sum(ok["histogram"].values()) == 5000 and 0 < ok["latency_ns"]["p50"] <= ok["latency_ns"]["max"]
    assert other["frames"] == 5000 and (other["unique"], other["lost"]) == (0, 5000)


def test_bad_eal_argument_is_an_error_naming_the_arguments():
    proc = run_py("""
        from hpnlab import dpdk
        try:
            dpdk.init(["--no-huge", "--no-shconf", "--no-pci", "--this-is-no-eal-option"])
        except dpdk.DpdkError as exc:
            print("ERR", exc, "|", exc.hint)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERR rte_eal_init failed" in proc.stdout and "--this-is-no-eal-option" in proc.stdout
    assert "EAL argument is wrong" in proc.stdout


def test_a_vdev_on_a_missing_interface_is_no_port_not_a_crash():
    proc = run_py("""
        from hpnlab import dpdk
        try:
            dpdk.init(dpdk.eal_args(vdevs=["net_af_packet0,iface=hpnlabnone0"], memory_mb=128))
        except dpdk.DpdkError as exc:
            print("ERR", exc, "|", exc.hint)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERR" in proc.stdout and ("no port" in proc.stdout or "rte_eal_init failed" in proc.stdout)


def test_eal_runs_once_per_process():
    proc = run_py(f"""
        from hpnlab import dpdk
        dpdk.init({NULL_EAL!r})
        assert dpdk.init({NULL_EAL!r}) == 1
        try:
            dpdk.init(["--no-huge"])
        except dpdk.DpdkError as exc:
            print("ERR", exc)
    """)
    assert "ERR DPDK's EAL is initialised once per process" in proc.stdout, proc.stderr[-2000:]


def test_no_hugepages_without_no_huge_names_the_fix():
    assert dpdk.hugepages_reserved("MemTotal: 1 kB\nHugePages_Total:      64\n") == 64
    with pytest.raises(dpdk.DpdkError) as err:
        dpdk.check_eal_args(["--vdev=net_null0"], meminfo="MemTotal: 1 kB\nHugePages_Total:       0\n")
    assert "no hugepages" in str(err.value) and "--no-huge" in (err.value.hint or "")
    dpdk.check_eal_args(["--no-huge", "--vdev=net_null0"], meminfo="HugePages_Total: 0\n")


def kernel_owned_pci_nic() -> tuple[str, str, str]:
    for dev in sorted(Path("/sys/class/net").glob("*/device")):
        p = dev.resolve()
        while p.name and not (len(p.name) == 12 and p.name[4] == ":"):
            p = p.parent
        driver = p / "driver"
        if p.name and driver.exists() and driver.resolve().name not in dpdk.DPDK_PCI_DRIVERS:
            return p.name, driver.resolve().name, dev.parent.name
    raise AssertionError("this machine has no PCI NIC owned by a kernel driver to test with")


def test_a_nic_owned_by_the_kernel_is_refused_before_eal_touches_it():
    addr, driver, ifname = kernel_owned_pci_nic()
    with pytest.raises(dpdk.DpdkError) as err:
        dpdk.check_eal_args(["--no-huge", f"--allow={addr}"])
    assert addr in str(err.value) and driver in str(err.value) and ifname in str(err.value)
    assert "uio_pci_generic" in (err.value.hint or "")
    with pytest.raises(dpdk.DpdkError, match="no PCI device 0000:7f:1f.7"):
        dpdk.check_eal_args(["--no-huge", "-a", "0000:7f:1f.7"])
