"""Where a sender's time goes on the VM lab: the generator (spinning on a full TX ring, or
sleeping there), and testpmd txonly, each at 64 and 1500 B on h1's uio-bound eth2, while
this machine samples what the emulation costs it: the CPU time of each thread of h1's QEMU
(the vCPU that runs the sender, the main loop that runs the virtio device model) and the
time each spent runnable but waiting for a CPU (/proc/PID/task/TID/schedstat), and the
frames h1's tap took from the guest (a counter outside both senders).

    flock /tmp/hpnlab-vm.lock sh -c 'make lab-up && .venv/bin/python labs/pktgen/sender_cpu.py [LAB]; make lab-down'

Writes results/pktgen-cpu/<stamp>/data.json and prints a table. Each figure is over the
sending seconds after the first (the tap counter grows from the first frame to the last).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hpnlab import report
from hpnlab.errors import HpnlabError
from hpnlab.labs.pktgen import eal_for, ensure_binding, run_agent
from hpnlab.providers import open_lab
from hpnlab.vm import virt

VARIANTS = [("hpnlab", 0), ("testpmd", 0), ("hpnlab", 50)]     # (sender, µs it sleeps on a full ring)


def thread_times(pid: int) -> dict[str, tuple[int, int]]:
    """Thread name (numbered when repeated) -> (ns on a CPU, ns runnable and waiting)."""
    out: dict[str, tuple[int, int]] = {}
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
        try:
            name = (task / "comm").read_text().strip()
            run_ns, wait_ns, _ = (int(x) for x in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        key, n = name, 1
        while key in out:
            n += 1
            key = f"{name}#{n}"
        out[key] = (run_ns, wait_ns)
    return out


class Sampler(threading.Thread):
    """(time, tap frames from the guest, thread times) every 0.25 s until stopped."""

    def __init__(self, pid: int, tap: str):
        super().__init__(daemon=True)
        self.pid, self.counter = pid, Path(f"/sys/class/net/{tap}/statistics/rx_packets")
        self.samples: list[tuple[float, int, dict]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic(), int(self.counter.read_text()), thread_times(self.pid)))
            self.done.wait(0.25)

    def steady(self) -> dict:
        """Over the sending time after its first second: the tap's rate and each thread's
        share of a CPU (on one, and waiting for one)."""
        got = self.samples
        grew = [i for i in range(1, len(got)) if got[i][1] > got[i - 1][1]]
        if len(grew) < 2:
            return {"seconds": 0.0, "tap_pps": 0.0, "threads": {}}
        last = grew[-1] - 1                  # the last sample taken while frames still came
        start = next((i for i in range(grew[0], last) if got[i][0] >= got[grew[0]][0] + 1.0), grew[0])
        (t0, c0, th0), (t1, c1, th1) = got[start], got[max(start, last)]
        span = t1 - t0
        threads = {name: {"cpu": (th1[name][0] - th0[name][0]) / 1e9 / span,
                          "waiting": (th1[name][1] - th0[name][1]) / 1e9 / span}
                   for name in th1 if name in th0}
        return {"seconds": span, "tap_pps": (c1 - c0) / span if span else 0.0,
                "threads": {k: v for k, v in threads.items() if v["cpu"] + v["waiting"] > 0.01}}


def main() -> int:
    provider = open_lab(sys.argv[1] if len(sys.argv) > 1 else "lab.yml")
    lab = provider.lab
    sender, peer = provider.host("h1"), provider.host("h2")
    net = lab.hosts["h1"].dpdk_network
    with ThreadPoolExecutor(max_workers=2) as pool:
        for job in [pool.submit(ensure_binding, provider, h) for h in (sender, peer)]:
            job.result()
    pid = next(p for p, name in virt.qemu_processes(provider.prefix).items() if name == provider.domain("h1"))
    where = provider.switch_port("h1", net)
    if where is None:
        print("h1's NIC has no tap on this machine", file=sys.stderr)
        return 2
    eal, drives = eal_for(provider, sender, net, 0)
    seconds = 4
    runs = []
    for size in ("64", "1500"):
        for rnd in range(2):
            for tool, backoff in (VARIANTS if rnd == 0 else VARIANTS[::-1]):
                sampler = Sampler(pid, where[1])
                sampler.start()
                try:
                    if tool == "hpnlab":
                        res = run_agent(sender, ["send", "--eal", eal, "--size", size, "--seconds", seconds,
                                                 "--backoff-us", backoff], 200, "generator")
                    else:
                        res = run_agent(sender, ["testpmd", "--eal", eal, "--size", size, "--seconds", seconds],
                                        200, "testpmd")
                except HpnlabError as exc:
                    print(f"{size} B {tool} backoff {backoff}: {exc}", flush=True)
                    continue
                finally:
                    time.sleep(0.5)
                    sampler.done.set()
                    sampler.join()
                row = {"size": size, "round": rnd + 1, "tool": tool, "backoff_us": backoff,
                       "steady_pps": res["steady_pps"], "samples": res["samples"], "unsent": res["unsent"],
                       "sent": res["sent"], "load": os.getloadavg()[0],
                       **sampler.steady()}
                runs.append(row)
                busiest = sorted(row["threads"].items(), key=lambda kv: -kv[1]["cpu"])[:3]
                print(f"{size:>5} B r{rnd + 1} {tool:8} backoff {backoff:3} µs: own {row['steady_pps'] / 1e3:7.1f} "
                      f"kpps, tap {row['tap_pps'] / 1e3:7.1f} kpps, unsent/sent "
                      f"{row['unsent'] / max(1, row['sent']):.2f}, load {row['load']:.1f}; "
                      + ", ".join(f"{k} cpu {v['cpu']:.2f} wait {v['waiting']:.2f}" for k, v in busiest), flush=True)
    out = report.results_dir("pktgen-cpu", None)
    (out / "data.json").write_text(json.dumps({"device": drives, "eal": eal, "seconds": seconds, "runs": runs},
                                              indent=1))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
