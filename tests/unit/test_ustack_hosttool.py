"""HostTool.wait, with the interleaving that failed on the VM lab forced: the tool prints
its last event and exits between wait's read of its output and its look at whether it
is alive (over SSH each is a round trip, so the window is wide). The event must be found,
not reported missing."""
from __future__ import annotations

import pytest

from hpnlab.labs._kit import LabError
from hpnlab.ustack.interop import HostTool


class ExitsBetweenLooks:
    """A process that has printed nothing at the first read of its logs, then prints
    `line` and exits before anyone asks whether it is alive."""

    def __init__(self, line: str):
        self.line, self.reads, self.done = line, 0, False

    def logs(self) -> tuple[str, str]:
        self.reads += 1
        out = self.line if self.done else ""
        self.done = True                        # it reports and exits right after this read
        return out, ""

    def alive(self) -> bool:
        return not self.done


def tool(proc) -> HostTool:
    t = HostTool.__new__(HostTool)
    t.host, t.module, t.proc = type("H", (), {"name": "h1"})(), "hpnlab.ustack.run", proc
    return t


def test_an_event_printed_just_before_exit_is_found():
    proc = ExitsBetweenLooks('{"event": "stats", "counters": {}}\n')
    assert tool(proc).wait("stats", 5)["event"] == "stats"


def test_a_tool_that_exits_without_the_event_is_an_error_saying_so():
    proc = ExitsBetweenLooks('{"event": "ready"}\n')
    with pytest.raises(LabError, match="did not report 'stats' before it exited"):
        tool(proc).wait("stats", 5)


class ClockAhead:
    """A host whose clock is `ahead` seconds ahead and whose `date` answers come back
    after uneven delays (an SSH round trip to an emulated VM)."""

    def __init__(self, ahead: float, delays: list[float]):
        self.ahead, self.delays = ahead, list(delays)

    def run(self, cmd, timeout: float = 60.0):
        import time
        from types import SimpleNamespace
        delay = self.delays.pop(0)
        time.sleep(delay * 0.8)                     # most of the trip on the way back
        stamp = time.time() + self.ahead
        time.sleep(delay * 0.2)
        return SimpleNamespace(stdout=f"{stamp:.9f}\n")


def test_clock_offset_keeps_the_sample_with_the_shortest_round_trip():
    from hpnlab.ustack.interop import clock_offset
    off = clock_offset(ClockAhead(3.0, [0.2, 0.01, 0.3, 0.15, 0.25]))
    assert abs(off - 3.0) < 0.01, off        # the 10 ms sample: error at most 5 ms (+ scheduling)
