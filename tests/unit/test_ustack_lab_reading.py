"""The ustack lab report's ping-flood reading is drawn from its numbers: the goal met or
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
