"""Argument types and options the subcommands share, with the standard library only: the
agents' commands (`hpnlab kv serve` on a lab VM) build their parsers on hosts where hpnlab
is installed without its dependencies (no rich there), so nothing here may import them."""
from __future__ import annotations

import argparse
import math


# Argument types for numbers with a range: argparse reports a value out of it as
# `argument --x: must be ...`, with the command's usage, before anything runs.
def _number(kind: type, low: float, low_ok: bool, high: float = math.inf, what: str = ""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if not math.isfinite(value) or value < low or (value == low and not low_ok) or value > high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what
    return parse


positive_int = _number(int, 0, False, what="an integer > 0")
positive_float = _number(float, 0, False, what="a number > 0")
non_negative = _number(float, 0, True, what="a number >= 0")
tcp_port = _number(int, 1, True, 65535, what="a port 1 to 65535")


def positive_int_list(text: str) -> str:
    """A comma list of integers > 0, checked (the command splits it itself)."""
    for word in text.split(","):
        positive_int(word.strip())
    return text


def add_up_option(parser: argparse.ArgumentParser) -> None:
    """--up, which _common.ensure_up() acts on."""
    parser.add_argument("--up", action="store_true",
                        help="bring the lab up and provision it first if it is not up (what `make lab-up` does)")
