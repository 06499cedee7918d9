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

