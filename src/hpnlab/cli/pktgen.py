"""`hpnlab pktgen [options]` — the DPDK packet generator lab (the same as `hpnlab lab pktgen`)."""
from __future__ import annotations

from ..labs import pktgen
from . import lab
from ._common import add_format, add_up_option

HELP = "DPDK packet generator vs dpdk-testpmd txonly on the lab's hosts; receiver loss, reordering, latency"


def add_arguments(parser) -> None:
    add_up_option(parser)
    parser.add_argument("--results", metavar="DIR", help="results root (default: results/)")
    pktgen.add_arguments(parser)
    add_format(parser)


def run(args) -> int:
    args.lab_name = "pktgen"
    return lab.run(args)
