"""The labs: each one changes a knob, measures the effect on the real kernel
(pcaps, `ss`, `nstat`, the TCP state tracepoint) and writes a report.

    p2p      TCP simultaneous open between two hosts (course §2.2.1, homework)
    nat      NAT traversal through five RFC 4787 NAT kinds: hole punching, port prediction,
             birthday punching and a relay; UDP, then TCP simultaneous open
    backlog  SYN queue (半连接队列) and accept queue (全连接队列)
    epoll    level- vs edge-triggered epoll (水平触发/边缘触发)
    close    active/passive/simultaneous close, half-close, RST, TIME_WAIT
    pktgen   a DPDK packet generator against dpdk-testpmd txonly; receiver accounting
    rudp     reliable UDP: hpnlab's KCP-format ARQ vs C ikcp vs TCP under loss (§2.2.2)

A lab module defines HELP, add_arguments(parser) and
run(provider, args, step) -> dict (with "report": the report's path, "dir": its directory), and
usually an agent (`python -m hpnlab.labs.<name> ...`) that runs on hosts.
"""
from __future__ import annotations

import importlib

LABS = ("p2p", "nat", "backlog", "epoll", "close", "pktgen", "rudp")


def lab_module(name: str):
    if name not in LABS:
        raise KeyError(f"no lab {name!r} (labs: {', '.join(LABS)})")
    return importlib.import_module(f"{__name__}.{name}")
