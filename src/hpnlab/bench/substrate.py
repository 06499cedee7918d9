"""How fast the netns provider brings labs up and down, and why it shells out.

    python -m hpnlab.bench.substrate [--repeat 5]    (make bench-substrate)

Measures `up`/`down` of the default 2-host lab and of examples/star50.yml,
and the same 10-host wiring done two ways: `ip -batch` per namespace (what
the provider does) and pyroute2 (the field's netlink library). Writes
results/substrate/<stamp>/{report.md,data.json}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from ..paths import repo_root
from ..providers import open_lab
from ..report import environment_md, fingerprint, md_table, rerun_md, results_dir
from ..topology import load_lab

REPO = repo_root()


def time_lab(path: Path, repeat: int) -> dict:
    lab = load_lab(path, provider="netns", name=f"bench{path.stem.replace('-', '')}"[:30])
    provider = open_lab(lab)
    ups, downs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        provider.up()
        t1 = time.perf_counter()
        provider.down()
        ups.append(t1 - t0)
        downs.append(time.perf_counter() - t1)
    return {"lab": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
            "hosts": len(lab.hosts), "up_s": ups, "down_s": downs,
            "up_median_s": statistics.median(ups), "down_median_s": statistics.median(downs)}


def _sh(*argv: str, input: str | None = None) -> None:
    subprocess.run(argv, check=True, input=input, text=True, capture_output=True)


def wire_with_ip(n: int, prefix: str) -> None:
    _sh("ip", "netns", "add", f"{prefix}sw")
    switch = ["link add name br0 type bridge", "link set br0 up"]
    for i in range(n):
        ns = f"{prefix}h{i}"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", ns, "-batch", "-", input="\n".join([
            f"link add eth1 type veth peer name p{i} netns {prefix}sw",
            f"addr add 10.79.0.{i + 1}/24 dev eth1", "link set eth1 up", "link set lo up"]) + "\n")
        switch.append(f"link set p{i} master br0 up")
    _sh("ip", "-n", f"{prefix}sw", "-batch", "-", input="\n".join(switch) + "\n")


def wire_with_pyroute2(n: int, prefix: str) -> None:
    from pyroute2 import NetNS, netns
    netns.create(f"{prefix}sw")
    with NetNS(f"{prefix}sw") as sw:
        sw.link("add", ifname="br0", kind="bridge")
        sw.link("set", index=sw.link_lookup(ifname="br0")[0], state="up")
    for i in range(n):
        ns = f"{prefix}h{i}"
        netns.create(ns)
        with NetNS(ns) as host:
            host.link("add", ifname="eth1", kind="veth", peer={"ifname": f"p{i}", "net_ns_fd": f"{prefix}sw"})
            idx = host.link_lookup(ifname="eth1")[0]
            host.addr("add", index=idx, address=f"10.79.0.{i + 1}", prefixlen=24)
            host.link("set", index=idx, state="up")
            host.link("set", index=host.link_lookup(ifname="lo")[0], state="up")
        with NetNS(f"{prefix}sw") as sw:
            sw.link("set", index=sw.link_lookup(ifname=f"p{i}")[0],
                    master=sw.link_lookup(ifname="br0")[0], state="up")


def _remove(prefix: str) -> None:
    for name in Path("/run/netns").iterdir() if Path("/run/netns").exists() else []:
        if name.name.startswith(prefix):
            subprocess.run(["ip", "netns", "del", name.name], capture_output=True)


def compare_netlink(n: int, repeat: int) -> dict:
    results = {}
    for label, wire in (("ip -batch", wire_with_ip), ("pyroute2", wire_with_pyroute2)):
        times = []
        for r in range(repeat):
            prefix = f"hpnbench{r}-"
            try:
                t0 = time.perf_counter()
                wire(n, prefix)
                times.append(time.perf_counter() - t0)
            finally:
                _remove(prefix)
        results[label] = {"seconds": times, "median_s": statistics.median(times)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time the netns provider")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    labs = [time_lab(REPO / "lab.yml", args.repeat), time_lab(REPO / "examples" / "star50.yml", args.repeat)]
    netlink = compare_netlink(10, max(3, args.repeat // 2))
    out = results_dir("substrate")
    env = fingerprint()
    data = {"labs": labs, "netlink_10_hosts": netlink, "environment": env}
    (out / "data.json").write_text(json.dumps(data, indent=2))
    text = ["# netns provider: bring-up and teardown times", "",
            md_table(["lab", "hosts", "up median (s)", "up max (s)", "down median (s)", "down max (s)"],
                     [[lab["lab"], lab["hosts"], round(lab["up_median_s"], 3), round(max(lab["up_s"]), 3),
                       round(lab["down_median_s"], 3), round(max(lab["down_s"]), 3)] for lab in labs]),
            "", f"Goals: 2-host up < 1 s and down < 1 s; 50-host up < 10 s. Each lab ran {args.repeat} times.",
            "", "## Wiring 10 hosts on a bridge: `ip -batch` vs pyroute2", "",
            md_table(["method", "median (s)", "runs"],
                     [[k, round(v["median_s"], 3), len(v["seconds"])] for k, v in netlink.items()]),
            "", "pyroute2's `NetNS` forks a helper process per namespace it opens, so per-namespace work "
            "costs more than one `ip -n NS -batch -` process doing all of that namespace's changes. "
            "The provider therefore uses `ip -batch`.", "", environment_md(env),
            rerun_md(["python", "-m", "hpnlab.bench.substrate", "--repeat", str(args.repeat)],
                     make_target="bench-substrate")]
    (out / "report.md").write_text("\n".join(text))
    print("\n".join(text))
    print(f"\nwrote {out}/report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
