"""The user-space stack on real namespaces against h2's Linux kernel: every interop case
of the suite (ARP both ways, ping incl. 1472-byte and fragmented 4000-byte, ping -f,
UDP echo and port unreachable, TCP both directions, 8 MiB each way with matching
sha256, RST on a closed port, simultaneous open and close, HTTP/1.1, hpnlab.servers' reactor on the
stack's epoll, a SYN flood with a client still connecting, 1000 concurrent connections,
a zero window held and reopened, the TPACKET_V3 ring, the TAP driver, and a second stack
on h2 as the peer)."""
from __future__ import annotations

import time

import pytest

from hpnlab.testing import REPO
from hpnlab.ustack.interop import Suite, _ping, impair_args

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _lab(tmp_path_factory, name: str):
    """labs/ustack/<name> up under a unique name for this module, and down after it."""
    from hpnlab.testing import _Factory, _needs_root
    _needs_root()
    factory = _Factory(tmp_path_factory.mktemp("state"))
    try:
        yield factory(REPO / "labs/ustack" / name)
    finally:
        factory.teardown()


@pytest.fixture(scope="module")
def ustack_lab(tmp_path_factory):
    yield from _lab(tmp_path_factory, "lab.yml")


def test_interop_suite(ustack_lab):
    suite = Suite(ustack_lab, bulk_bytes=8 << 20)
    results = suite.run_all()
    failed = [r for r in results if not r["ok"]]
    # a str, not the rows themselves: pytest cuts a non-str message's repr at 240 characters
    assert not failed, "\n".join(f"{r['name']} ({r['secs']} s): {r['detail']}" for r in failed)
    names = {r["name"] for r in results}
    assert any("simultaneous open" in n for n in names) and any("stack -> linux" in n for n in names)
    assert "SYN_RECEIVED" in suite.data["simultaneous_open"]["stack_path"]
    assert "CLOSING" in suite.data["simultaneous_close"]["stack_path"]
    assert suite.data["zero_window"]["probes"] > 0 and suite.data["concurrent"]["matched"] == 1000
    assert suite.data["thread_per_connection"]["matched"] == 200
    assert suite.data["fuzz"]["internal_errors"] == 0 and suite.data["fuzz"]["parser_drops"] > 0
    flood = suite.data["syn_flood"]
    assert flood["half_open_at_end"] <= 128 and flood["syncookies_sent"] > 0 and flood["matched"] == 20
    assert flood["syncookies_accepted"] >= 1, flood     # the client's SYN met a full queue: in by a cookie
    s2s = suite.data["stack_to_stack"]
    assert s2s["sink"]["sha256"] == s2s["source"]["sha256"]


def test_segmentation_offload(ustack_lab):
    """--offload: the kernel checksums and cuts the stack's 63 KiB segments (virtio-net
    header), on AF_PACKET and on TAP; every byte still arrives."""
    suite = Suite(ustack_lab, bulk_bytes=8 << 20, stack_extra=("--offload",))
    suite.bulk()
    suite.tap_cases(8 << 20, offload=True)
    assert all(r["ok"] for r in suite.results), suite.results
    sent = suite.data["bulk"]["stack_to_linux"]["stack"]["conn"]["stats"]
    assert sent["segs_out"] < (8 << 20) // 1448 / 4      # big segments left the stack
    # the stack's own counters saw the transfers: no frame raised out of its loop
    for direction in ("linux_to_stack", "stack_to_linux"):
        assert suite.data["bulk"][direction]["peer"]["bytes"] == 8 << 20


def test_host_kernel_stays_out(ustack_lab):
    """h1's kernel must not answer for the stack's address: no ARP reply, no RST."""
    h1 = ustack_lab.host("h1")
    suite = Suite(ustack_lab)
    # with no stack running, nobody owns the address: h2's connect times out or finds no host
    res = ustack_lab.host("h2").run(["python3", "-c", f"import socket;s=socket.socket();s.settimeout(3);"
                                     f"print(s.connect_ex(('{suite.addr}', 7)))"], check=False, timeout=30)
    assert res.stdout.strip() in ("11", "113", "110"), res.stdout     # EAGAIN (timeout), EHOSTUNREACH, ETIMEDOUT
    assert suite.addr not in h1.run(["ip", "-4", "addr"]).stdout


def test_pytcp_sink_reads_to_the_end(ustack_lab):
    """PyTCP's recv() returns b"" while its session is still ESTABLISHED when data arrives
    between its semaphore and its buffer (threads switching often, as on emulated VMs,
    where every kernel -> PyTCP transfer ended early): the lab's PyTCP sink reads on to the
    peer's FIN, so the whole transfer arrives with the sender's sha256."""
    from hpnlab.labs._kit import agent_python
    from hpnlab.ustack.interop import _events, peer
    h1, n = ustack_lab.host("h1"), 1 << 20
    # the race's window held open: the app thread pauses after each semaphore it gets, as a
    # slow CPU's thread switch would pause it, while PyTCP's packet thread keeps queueing data
    racy = ("import sys, threading, time\n"
            "acquire = threading.Semaphore.acquire\n"
            "def paused(self, *a, **k):\n"
            "    got = acquire(self, *a, **k)\n"
            "    if got and threading.current_thread() is threading.main_thread():\n"
            "        time.sleep(0.002)\n"
            "    return got\n"
            "threading.Semaphore.acquire = paused\n"
            "from hpnlab.ustack.pytcp_peer import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = h1.start([agent_python(h1), "-c", racy, "sink", "pytap9", "10.77.97.2/24", "10.77.97.1/24", "9000"],
                    name="pytcp-race")
    try:
        for _ in range(300):
            if any(e.get("event") == "listening" for e in _events(proc.logs()[0])) or not proc.alive():
                break
            time.sleep(0.1)
        sent = peer(h1, "source", "10.77.97.2", 9000, n, timeout=120)
        for _ in range(300):
            got = [e for e in _events(proc.logs()[0]) if e.get("event") == "sink"]
            if got or not proc.alive():
                break
            time.sleep(0.1)
    finally:
        proc.stop(5)
    assert got, proc.logs()
    assert (got[0]["bytes"], got[0]["sha256"]) == (n, sent["sha256"]), got[0]
    assert got[0]["empty_reads_while_established"] > 0       # the race did happen


@pytest.fixture(scope="module")
def impaired_lab(tmp_path_factory):
    yield from _lab(tmp_path_factory, "impaired.yml")


def test_bulk_under_loss_delay_and_reordering(impaired_lab):
    """5 % loss and 20 ± 5 ms each way (h2: the lab's nftables/NFQUEUE; the stack: its own
    egress): both directions still deliver every byte, and the stack had to recover."""
    suite = Suite(impaired_lab, bulk_bytes=512 << 10, stack_extra=impair_args(impaired_lab))
    assert suite.stack_extra == ("--impair", "loss=5,delay=20,jitter=5")
    suite.bulk()
    assert all(r["ok"] for r in suite.results), suite.results
    sent = suite.data["bulk"]["stack_to_linux"]["stack"]["conn"]
    assert sent["stats"]["retransmits"] > 0 and sent["cc_events"]


@pytest.fixture(scope="module")
def dpdk_lab(tmp_path_factory):
    yield from _lab(tmp_path_factory, "dpdk.yml")


def test_fragmented_ping_over_dpdk_af_packet_vdev(dpdk_lab):
    """Over DPDK's af_packet vdev (netns) the kernel hands the stack a fragmented 4000-byte
    ping reassembled, as one 4042-byte frame (the PMD's fanout asks for defragmentation):
    the vdev's ring frames and the binding's mbufs hold it whole - at DPDK's 2 KiB the
    stack saw it cut (ipv4.drop.bad_total_length) - and the stack's fragmented reply
    reaches Linux."""
    suite = Suite(dpdk_lab)
    assert suite.driver == "dpdk"
    with suite.app("--app", "echo", "--port", 7) as run:
        ok, line = _ping(suite.h2, suite.addr, "-c", "3", "-i", "0.2", "-s", "4000")
        run.stop()
        stats = run.wait("stats", 10)
    assert ok, line
    counters = stats["counters"]
    assert counters.get("ipv4.drop.bad_total_length", 0) == 0, counters
