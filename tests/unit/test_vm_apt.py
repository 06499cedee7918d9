"""hpnlab.vm.apt: one line per apt phase (count, elapsed), the full output in the log, and a
failure that names the log. Fed a real `apt-get install` transcript (recorded here) through
the same reader, so no package is installed by the test."""
from __future__ import annotations

import re

import pytest

from hpnlab.vm import VmError, apt

TRANSCRIPT = """\
Reading package lists...
0 upgraded, 2 newly installed, 0 to remove and 129 not upgraded.
Get:1 http://deb.debian.org/debian bookworm/main amd64 hello amd64 2.10-3 [53.1 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 sl amd64 5.02-1+b1 [12.1 kB]
Fetched 65.2 kB in 0s (2590 kB/s)
Selecting previously unselected package hello.
(Reading database ... 127246 files and directories currently installed.)
Preparing to unpack .../hello_2.10-3_amd64.deb ...
Unpacking hello (2.10-3) ...
Selecting previously unselected package sl.
Preparing to unpack .../sl_5.02-1+b1_amd64.deb ...
Unpacking sl (5.02-1+b1) ...
Setting up hello (2.10-3) ...
Setting up sl (5.02-1+b1) ...
Processing triggers for man-db (2.11.2-2) ...
"""


def _feed(tmp_path, exit_code: int):
    out = tmp_path / "apt-out.txt"
    out.write_text(TRANSCRIPT)
    log, lines = tmp_path / "apt.log", []
    apt._apt(["sh", "-c", f"cat {out}; exit {exit_code}"], apt.INSTALL, lines.append, log, timeout=60)
    return log, lines


def test_one_line_per_phase_and_the_full_log(tmp_path):
    log, lines = _feed(tmp_path, 0)
    assert [re.sub(r"[\d.]+ s$", "T s", line) for line in lines] == [
        "apt: download: 2 packages in T s", "apt: unpack: 2 packages in T s",
        "apt: configure: 2 packages in T s"]
    assert TRANSCRIPT in log.read_text()


def test_a_failure_names_the_log(tmp_path):
    with pytest.raises(VmError) as err:
        _feed(tmp_path, 100)
    assert f"full log: {tmp_path / 'apt.log'}" in str(err.value) and "exit 100" in str(err.value)
