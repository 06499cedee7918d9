"""How a sender's rate is measured (the same for hpnlab's generator and testpmd: its
per-second TX rates, their mean after the first second) and what the generator does with
a full TX ring (spin, as testpmd, or sleep): net_ring's ring, which nothing drains here,
fills and stays full."""
from __future__ import annotations

import json
import subprocess
import sys

from hpnlab import dpdk
from hpnlab.labs.pktgen import ring_reading
from hpnlab.pktgen.engine import per_second, steady_pps


def test_per_second_rates_from_slice_marks():
    # a slice every 0.25 s; 100 frames a slice in the first second, 300 after
    marks, sent = [(0.0, 0)], 0
    for i in range(1, 13):
        sent += 100 if i <= 4 else 300
        marks.append((i * 0.25, sent))
    assert per_second(marks) == [400.0, 1200.0, 1200.0]
    # marks that miss the whole seconds: each second runs from the first mark at or past it
    assert per_second([(0.0, 0), (0.5, 50), (1.2, 120), (2.0, 200), (2.4, 240)]) == [100.0, 100.0]
    assert per_second([(0.0, 0), (0.5, 10)]) == []


def test_steady_rate_is_what_was_sent_after_the_first_second():
    assert steady_pps([10.0, 100.0, 100.0, 400.0]) == 200.0      # the mean: a slow second counts
    assert steady_pps([10.0, 300.0]) == 300.0
    assert steady_pps([10.0]) is None


def send_on_a_full_ring(backoff_us: int, seconds: float) -> dict:
    ring = dpdk.eal_args(vdevs=["net_ring0"], memory_mb=128, extra=["--log-level=warning"])
    proc = subprocess.run([sys.executable, "-m", "hpnlab.pktgen.agent", "send", "--eal", " ".join(ring),
                           "--seconds", str(seconds), "--backoff-us", str(backoff_us)],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_generator_sleeps_on_a_full_ring_when_asked_and_spins_otherwise():
    slept = send_on_a_full_ring(backoff_us=5000, seconds=1)
    # the ring took its fill, then nothing: every later burst was made and not taken
    assert slept["sent"] > 0 and slept["unsent"] > 0 and slept["ring_full"] > 0
    # one sleep of 5 ms a full ring: at most 1 s / 5 ms of them
    assert slept["ring_full"] <= 1 / 0.005 + 10, slept["ring_full"]
    assert len(slept["samples"]) == 1                         # one whole second
    spun = send_on_a_full_ring(backoff_us=0, seconds=0.5)        # a quarter of the time, tries without a pause
    assert spun["sent"] == slept["sent"] and spun["ring_full"] > 10 * slept["ring_full"], spun["ring_full"]


def test_the_report_reads_a_ring_both_senders_kept_full():
    row = {"device": "PCI 0000:00:07.0 (uio_pci_generic)", "unsent_per_sent": {"hpnlab": 25.6, "testpmd": 10.0}}
    assert "made 25.6 that the ring did not take, testpmd 10.0" in ring_reading(row)
    assert ring_reading({**row, "unsent_per_sent": {"hpnlab": 0.0, "testpmd": 0.0}}) is None    # netns
    assert ring_reading({**row, "unsent_per_sent": {"hpnlab": 3.0}}) is None                     # imix: no testpmd
