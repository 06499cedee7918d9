"""The ustack lab report's readings are drawn from its numbers. The ping flood: the goal met or
not, the stack's share of h1's kernel answering the same flood, and the host named as the
ceiling only where the kernel itself stays under the goal."""
from __future__ import annotations

from hpnlab.ustack.lab import _flood_reading


def test_goal_met_on_a_fast_host():
    text = _flood_reading(45211, 120000)
    assert "measured 45,211 (met)" in text and "0.38 of the kernel's rate" in text
    assert "out of reach" not in text


def test_a_host_where_the_kernel_itself_is_under_the_goal_is_named_as_the_ceiling():
    text = _flood_reading(1686, 5200)
    assert "(not met)" in text and "0.32 of the kernel's rate" in text
    assert "out of reach of the kernel itself on this lab (0.13 of it)" in text


def test_a_slow_stack_on_a_fast_host_is_not_excused():
    text = _flood_reading(9000, 120000)
    assert "(not met)" in text and "out of reach" not in text


def test_profile_rows_and_reading_come_from_the_profile():
    """run.top_functions orders a real cProfile run by own time and names C calls; the
    report section states the system calls' share and each sender's CPU use from numbers."""
    import cProfile
    import os

    from hpnlab.ustack.lab import _profile_section
    from hpnlab.ustack.run import top_functions

    def busy_python():
        return sum(i * i for i in range(200000))
    prof = cProfile.Profile()
    prof.enable()
    busy_python()
    for _ in range(50):
        os.getpid()
    prof.disable()
    top = top_functions(prof, 3)
    assert [r["own_s"] for r in top["top"]] == sorted((r["own_s"] for r in top["top"]), reverse=True)
    assert any("busy_python" in r["function"] or "genexpr" in r["function"] for r in top["top"])
    assert top["total_s"] > 0 and all(0 <= r["share"] <= 1 for r in top["top"])

    prof_data = {"bytes": 2 << 20, "secs": 4.0, "total_s": 4.0, "top": [
        {"function": "<built-in method posix.write>", "calls": 1452, "own_s": 1.0, "share": 0.25},
        {"function": "connection.py:358(output)", "calls": 900, "own_s": 0.5, "share": 0.125}]}
    text = "\n".join(_profile_section(prof_data, {"cpu_s": 1.5, "secs": 2.0}, {"cpu_s": 3.0, "secs": 12.0}))
    assert "| <built-in method posix.write> | 1452 | 1 | 25.0 % |" in text
    assert "System calls among these rows: 25 %" in text
    assert "1.50 s of CPU in 2.00 s (75 % of one CPU)" in text and "3.00 s of CPU in 12.00 s (25 %" in text
    assert "Not measured: boom" in "\n".join(_profile_section({"error": "boom"}, {}, None))


def test_a_stalled_pytcp_direction_is_tried_again_and_a_failing_one_does_not_hide_the_other():
    """PyTCP now and then stops mid-transfer: the lab runs a failed direction once more, and
    says how many runs each took; a direction failing every time is named, the other kept."""
    from hpnlab.labs._kit import LabError
    from hpnlab.ustack.lab import _each_way
    calls = {"once": 0, "never": 0}

    def fails_once() -> dict:
        calls["once"] += 1
        if calls["once"] == 1:
            raise LabError("stalled at 293 KB")
        return {"mbps": 5.0}

    def never() -> dict:
        calls["never"] += 1
        raise LabError("stalled again")
    out = _each_way({"kernel_to_pytcp": fails_once, "pytcp_to_kernel": never}, tries=2)
    assert out["kernel_to_pytcp"] == {"mbps": 5.0} and out["tries"] == {"kernel_to_pytcp": 2, "pytcp_to_kernel": 2}
    assert out["errors"] == {"pytcp_to_kernel": "stalled again"} and "error" not in out
    both = _each_way({"a": never, "b": never}, tries=1)
    assert both["tries"] == {"a": 1, "b": 1} and "a: stalled again; b: stalled again" == both["error"]


def test_a_per_size_row_is_whole_only_where_the_bulk_case_said_so(tmp_path):
    """The run's own size is the bulk case's transfer, not run again: its row's "sha256 ok" is that
    case's verdict (sha256 and byte count each way), not a sha256 comparison alone, which a
    transfer cut short at both ends (the peer sending less than asked) would pass."""
    from types import SimpleNamespace

    from hpnlab.ustack.lab import _per_size
    n = 1 << 20
    short = {"peer": {"mbps": 5.0, "sha256": "same", "bytes": n // 2}, "stack": {"sha256": "same", "bytes": n // 2}}
    whole = {"peer": {"mbps": 6.0, "sha256": "all", "bytes": n}, "stack": {"sha256": "all", "bytes": n}}
    suite = SimpleNamespace(bulk_bytes=n, driver="afpacket", network="lan", data={"bulk": {
        "linux_to_stack": {**short, "whole": False}, "stack_to_linux": {**whole, "whole": True}}})
    rows = _per_size(None, suite, [n], tmp_path / "throughput.png")
    assert rows == {n: {"stack_to_linux": 6.0, "linux_to_stack": 5.0, "ok": False}}
    suite.data["bulk"]["linux_to_stack"] = {**whole, "whole": True}
    assert _per_size(None, suite, [n], tmp_path / "throughput.png")[n]["ok"] is True
