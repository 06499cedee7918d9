"""How a sender's rate is measured (the same for hpnlab's generator and testpmd: its
per-second TX rates, their mean after the first second) and what the generator does with
a full TX ring (spin, as testpmd, or sleep): net_ring's ring, which nothing drains here,
fills and stays full."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from hpnlab import dpdk
from hpnlab.labs._kit import LabError
from hpnlab.labs.pktgen import fail_if_incomplete, paired, ring_reading, verdict
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


def _runs(hpnlab: list[float], testpmd: list[float]) -> dict:
    return {"hpnlab": [{"steady_pps": v} for v in hpnlab], "testpmd": [{"steady_pps": v} for v in testpmd]}


def test_the_verdict_is_the_median_of_paired_rounds_and_says_whether_it_is_beyond_the_spread():
    # the VM lab's kind of rounds: both tools' rates jump together from round to round
    swinging = paired(_runs([150, 500, 160, 480, 300], [160, 420, 260, 400, 310]), "steady_pps")
    assert swinging["ratios"] == [0.938, 1.19, 0.615, 1.2, 0.968]
    assert round(swinging["median"], 3) == 0.968 and (round(swinging["min"], 3), swinging["max"]) == (0.615, 1.2)
    assert (swinging["met_in"], swinging["faster_in"], swinging["beyond_spread"]) == (4, 2, False)
    row = {"device": "PCI 0000:00:06.0 (uio_pci_generic)", "size": "64", "paired": swinging, "ratio_per_cpu": 1.0}
    text = verdict(row)
    assert "0.97× testpmd's rate, the median of 5 round(s) [0.62–1.20]: meets the 0.9× goal" in text
    assert "inside the spread: 4 of 5 rounds reached 0.9×, 1 did not" in text
    steady = paired(_runs([95, 96, 97], [100, 100, 100]), "steady_pps")
    assert steady["beyond_spread"]
    assert "beyond the spread: every round reached 0.9×" in verdict({**row, "paired": steady})
    short = paired(_runs([50, 60], [100, 100]), "steady_pps")
    assert "misses the 0.9× goal; beyond the spread: every round fell short" in verdict({**row, "paired": short})
    one = paired(_runs([95], [100]), "steady_pps")
    assert "one round gives no spread" in verdict({**row, "paired": one})


def test_a_run_missing_a_part_it_was_asked_for_fails_naming_it(tmp_path):
    fail_if_incomplete([], tmp_path / "report.md")            # all ran: no error
    with pytest.raises(LabError) as exc:
        fail_if_incomplete(["the receiver accounting with 2 % loss injected: no place to drop h1's frames"],
                           tmp_path / "report.md")
    assert "1 part(s) asked for did not run" in str(exc.value) and "no place to drop h1's frames" in str(exc.value)
    assert str(tmp_path / "report.md") in str(exc.value)


def test_testpmds_log_is_read_on_from_where_the_last_look_ended(tmp_path):
    """Each look at the log gives the whole lines written since the last one: nothing twice
    (a re-read from the start made a long run's polling quadratic), a line not yet ended kept
    back until it is, the writer's own offset untouched."""
    from hpnlab.pktgen.agent import LogTail
    path = tmp_path / "log"
    with open(path, "ab", buffering=0) as out, open(path, "rb") as log:
        tail = LogTail(log.fileno())
        out.write(b"EAL: probe\nTx-pps: 1")
        assert (tail.lines(), tail.unended()) == ("EAL: probe", "Tx-pps: 1")
        out.write(b"0\nTx-pps: 20\n")
        assert tail.lines() == "Tx-pps: 10\nTx-pps: 20"
        assert (tail.lines(), tail.unended()) == ("", "")
        out.write(b"end\n")
        assert tail.lines() == "end" and tail.text() == "EAL: probe\nTx-pps: 10\nTx-pps: 20\nend\n"


FAKE_TESTPMD = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: (print("TX-packets: 30 TX-dropped: 0", flush=True), sys.exit(0)))
sys.stdout.write("EAL: probe\\nio packet forwarding - ports=1 - cores=1\\nTx-pps: 0\\nTx-p")
sys.stdout.flush()
for n in range(1, 100):
    time.sleep(0.5)
    sys.stdout.write(f"ps: {n}\\nTx-p")
    sys.stdout.flush()
"""


def test_testpmd_is_stopped_once_it_printed_the_rate_lines_asked_for():
    """run_testpmd counts testpmd's Tx-pps lines as they come, the ones printed with its start
    line and those split across writes, and stops it at the line that makes the count, not one later
    or earlier (a stand-in for testpmd: a line every 0.5 s, Tx-pps: 3 the fourth)."""
    from hpnlab.pktgen.agent import run_testpmd
    t0 = time.monotonic()
    text, elapsed, _cpu = run_testpmd([sys.executable, "-c", FAKE_TESTPMD], 30, rates=4)
    assert time.monotonic() - t0 < 10 and 1 < elapsed < 3, elapsed
    assert "Tx-pps: 3\n" in text and "Tx-pps: 4\n" not in text and "TX-packets: 30" in text, text
