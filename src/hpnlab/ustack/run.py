"""Run the stack with one app in this network namespace (what `hpnlab ustack serve`
and the lab's agents run on a host): open the driver, bring the stack up, announce it
(gratuitous ARP), run the app, and on exit (its end, --duration, SIGTERM or SIGINT)
write the stack's counters and connection traces to --stats.

Every event is a JSON line on stdout; the first is {"event": "ready", ...}.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..servers.protocols import names as protocol_names
from . import apps, checksum
from .drivers import DRIVERS, open_driver
from .loop import Loop
from .proto.ether import mac_bytes, mac_str
from .sockets import Net
from .stack import Stack

APPS = ["echo", "reactor", "thread-echo", "discard", "sink", "source", "http", "udp-echo", "ping", "connect"]


def add_nic_arguments(p, required: bool = True) -> None:
    """The options that open the stack on a NIC (open_net reads them); also `kv serve --engine ustack`'s."""
    p.add_argument("--driver", choices=DRIVERS, default="afpacket",
                   help="afpacket: a TPACKET_V2 ring (a frame at a time); afpacket-v3: a TPACKET_V3 ring "
                        "(blocks of frames, up to a block timeout of latency); tap: a TAP device")
    p.add_argument("--ifname", required=required, help="the NIC to take (afpacket) or the TAP device to make")
    p.add_argument("--ip", required=required, metavar="ADDR/LEN",
                   help="the stack's own address, e.g. 10.77.2.101/24")
    p.add_argument("--mac", help="the stack's MAC (default: a random locally administered one)")
    p.add_argument("--gateway", help="next hop for addresses off the subnet")
    p.add_argument("--tap-kernel-ip", metavar="ADDR/LEN",
                   help="tap: give the kernel's side of the device this address and bring it up")
    p.add_argument("--offload", action="store_true",
                   help="leave TCP checksums and segmentation to the kernel (virtio-net header: TSO)")
    p.add_argument("--impair", metavar="loss=PCT,delay=MS,jitter=MS",
                   help="impair the stack's own egress (netem's knobs; jitter reorders)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_nic_arguments(p)
    p.add_argument("--app", choices=APPS, default="echo",
                   help="reactor: hpnlab.servers' epoll-lt engine, unchanged, on the stack's epoll; "
                        "thread-echo: a thread per connection on blocking sockets")
    p.add_argument("--port", type=int, default=7, help="server port (default 7)")
    p.add_argument("--protocol", default="echo", choices=protocol_names(),
                   help="reactor: the hpnlab.servers protocol handler to serve (default echo)")
    p.add_argument("--backlog", type=int, default=128)
    p.add_argument("--interest", choices=["rbtree", "dict"], default="rbtree", help="epoll's interest set")
    p.add_argument("--once", type=int, default=0, metavar="N", help="server: exit after N connections")
    p.add_argument("--connect", metavar="IP:PORT", help="client: connect here (apps source, sink, connect)")
    p.add_argument("--bind-port", type=int, default=0, help="client: local port (simultaneous open)")
    p.add_argument("--start-at", type=float, default=0.0, help="client: connect at this time.time()")
    p.add_argument("--close-at", type=float, default=0.0, help="client (--app connect): close at this time.time()")
    p.add_argument("--bytes", type=int, default=1 << 20, help="source: bytes to send")
    p.add_argument("--ping", metavar="IP", help="ping: whom")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=30.0, help="client: seconds a blocking call may take")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: never)")
    p.add_argument("--trace", action="store_true", help="record cwnd/ssthresh/RTT/flight of bulk connections")
    p.add_argument("--stats", metavar="FILE", help="write counters and connection traces here at exit")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="run the app under cProfile and put its N costliest functions (own time) in the stats")


def _report(obj: dict) -> None:
    print(json.dumps(obj, default=str), flush=True)


def open_net(args) -> tuple[Net, Any]:
    try:
        if "/" not in args.ip:
            raise ValueError
        iface = ipaddress.IPv4Interface(args.ip)
    except ValueError:
        raise SystemExit(f"--ip {args.ip!r}: an address with a prefix length, e.g. 10.77.2.101/24") from None
    try:
        mac = mac_bytes(args.mac) if args.mac else None
    except ValueError as exc:
        raise SystemExit(f"--mac: {exc}") from None
    impair = _impair_spec(args.impair) if args.impair else None
    try:
        driver = open_driver(args.driver, args.ifname, mac, offload=args.offload)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--driver {args.driver} --ifname {args.ifname}: {exc.strerror or exc}"
                         if isinstance(exc, OSError) else f"--driver {args.driver}: {exc}") from None
    if impair:
        from .drivers.impair import ImpairedDriver
        driver = ImpairedDriver(driver, **impair)
    if args.driver == "tap" and args.tap_kernel_ip:
        subprocess.run(["ip", "addr", "add", args.tap_kernel_ip, "dev", args.ifname], check=True)
        subprocess.run(["ip", "link", "set", args.ifname, "up"], check=True)
    stack = Stack(driver.mac, str(iface.ip), iface.network.prefixlen, driver.mtu, args.gateway)
    return Net(Loop(driver, stack)), driver


def _impair_spec(text: str) -> dict:
    names = {"loss": "loss_pct", "delay": "delay_ms", "jitter": "jitter_ms"}
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in names:
            raise SystemExit(f"--impair: {key.strip()!r} is not one of loss, delay, jitter")
        try:
            out[names[key.strip()]] = float(value.rstrip("%ms"))
        except ValueError:
            raise SystemExit(f"--impair: {part!r}: a number expected after '='") from None
    return out


def stats(net: Net, driver) -> dict:
    stack = net.stack
    return {"counters": dict(sorted(stack.counters.items())), "timers_fired": dict(stack.timers.fired),
            "checksum": checksum.IMPL,    # where segments' checksums were summed: C (the helper) or Python
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "loop": net.loop.stats,
            "driver": getattr(driver, "counters", {}),
            "tcp_states": stack.tcp.states(), "last_error": stack.last_error}


def top_functions(profiler, n: int) -> dict:
    """The n functions with the most own time (tottime) in a cProfile run, and the run's
    total: where the stack's time goes (C calls such as os.write are their own rows)."""
    import pstats
    st = pstats.Stats(profiler)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])     # type: ignore[attr-defined]
    total = sum(v[2] for _, v in rows)
    return {"total_s": round(total, 4), "top": [
        {"function": f"{_short(f)}:{line}({name})" if f != "~" else name, "calls": v[1],
         "own_s": round(v[2], 4), "share": round(v[2] / total, 4) if total else None}
        for (f, line, name), v in rows[:n]]}


def _short(path: str) -> str:
    """proto/tcp/connection.py -> connection.py; a package's __init__.py keeps its package."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "__init__.py" else p.name


def main(args) -> int:
    stopping = {"flag": False}

    def on_signal(_sig, _frame):
        stopping["flag"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))     # a descriptor per stack socket, as a kernel's
    net, driver = open_net(args)
    deadline = time.monotonic() + args.duration if args.duration else None

    def stop() -> bool:
        return stopping["flag"] or (deadline is not None and time.monotonic() > deadline)
    rc = 0
    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        net.stack.gratuitous_arp()
        net.loop.flush()
        _report({"event": "ready", "mac": mac_str(driver.mac), "ip": args.ip, "driver": args.driver,
                 "ifname": args.ifname, "mtu": driver.mtu, "checksum": checksum.IMPL})
        if args.app == "udp-echo":
            apps.udp_echo(net, args, _report, stop)
        elif args.app == "reactor":
            apps.reactor(net, args, _report, stop)
        elif args.app == "thread-echo":
            apps.thread_echo(net, args, _report, stop)
        elif args.app == "ping":
            if not args.ping:
                raise SystemExit("--app ping needs --ping IP")
            apps.ping(net, args, _report, stop)
        elif args.connect:
            apps.client(net, args, _report, stop)
        elif args.app == "connect":
            raise SystemExit("--app connect needs --connect IP:PORT")
        else:
            apps.serve(net, args, _report, stop)
        # keep answering (ACKs, ARP, ping) until told to stop when a server was asked to linger
        if args.duration and not stop():
            net.wait(stop, None)
        # closing connections still owe FINs and ACKs (lost ones are retransmitted): as a
        # kernel does after close(), finish them before the stack goes away
        tcp = net.stack.tcp
        net.wait(lambda: stopping["flag"] or all(c.state == "TIME_WAIT" for c in tcp.conns.values()), 30)
    except OSError as exc:
        _report({"event": "error", "error": str(exc)})
        rc = 1
    finally:
        net.stop_thread()
        if profiler is not None:
            profiler.disable()
        inner = getattr(driver, "inner", driver)
        if hasattr(inner, "ring_stats"):
            inner.ring_stats()
        data = stats(net, driver)
        if args.stats:
            with open(args.stats, "w") as f:
                json.dump(data, f, default=str)
        _report({"event": "stats", **{k: data[k] for k in ("counters", "tcp_states", "last_error", "driver",
                                                           "maxrss_kb", "checksum")},
                 **({"profile": top_functions(profiler, args.profile)} if profiler is not None else {})})
        driver.close()
    return rc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m hpnlab.ustack.run", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
