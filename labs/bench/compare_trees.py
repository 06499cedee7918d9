"""Server CPU per request of the same engines from two source trees, side by side.

    git worktree add /tmp/before 994c883^      # the tree before servers/loop.py
    .venv/bin/python labs/bench/compare_trees.py /tmp/before/src src select,poll,epoll-lt --rounds 5
    .venv/bin/python labs/bench/compare_trees.py /tmp/variant/src src uring --size 4096 --conns 100

Each round runs the old and the new engine back to back (order flipped each round),
server pinned to CPU0 and hpnlab-loadgen to CPU1, --conns connections x --size B
(default 100 x 64), 2 s window.
CPU is the server's utime+stime from /proc over the window (all threads).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("before", help="the src directory of the tree to compare against")
ap.add_argument("now", help="the src directory of the tree under test")
ap.add_argument("engines", help="comma-separated engine names")
ap.add_argument("--rounds", type=int, default=7)
ap.add_argument("--size", type=int, default=64, help="message bytes")
ap.add_argument("--conns", type=int, default=100)
ARGS = ap.parse_args()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TREES = {"before": os.path.abspath(ARGS.before), "now": os.path.abspath(ARGS.now)}
PY = sys.executable
LOADGEN = os.path.join(REPO, "build", "hpnlab-loadgen")
ENGINES = ARGS.engines.split(",")
ROUNDS = ARGS.rounds
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def one(tree, engine, port):
    env = dict(os.environ, PYTHONPATH=TREES[tree])
    srv = subprocess.Popen(["taskset", "-c", "0", PY, "-m", "hpnlab.servers", engine, "--port", str(port)],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = srv.stderr.readline()
        assert "listening" in line, line
        lg = subprocess.Popen(["taskset", "-c", "1", LOADGEN, "-p", str(port), "-c", str(ARGS.conns),
                               "-s", str(ARGS.size), "-t", "2", "-w", "1", "-L", "0.2"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        c0 = c1 = None
        for ln in lg.stderr:
            if ln.startswith("# measuring"):
                c0 = cpu(srv.pid)
            elif ln.startswith("# done"):
                c1 = cpu(srv.pid)
        res = json.loads(lg.stdout.read())
        lg.wait()
        return res["rps"], (c1 - c0) / res["requests"] * 1e6
    finally:
        srv.terminate()
        srv.wait()


out = {}
port = 7500
for engine in ENGINES:
    rows = {"before": [], "now": []}
    ratios = []
    for r in range(ROUNDS):
        order = ["before", "now"] if r % 2 == 0 else ["now", "before"]
        got = {}
        for tree in order:
            port += 1
            got[tree] = one(tree, engine, port)
            rows[tree].append(got[tree])
            time.sleep(0.3)
        ratios.append(got["now"][1] / got["before"][1])
    med = {t: statistics.median(x[1] for x in rows[t]) for t in rows}
    rps = {t: statistics.median(x[0] for x in rows[t]) for t in rows}
    out[engine] = {"us_per_req": med, "rps": rps, "paired_ratio": statistics.median(ratios),
                   "ratios": ratios, "rows": rows}
    print(f"{engine:9s} CPU us/req before {med['before']:.2f} now {med['now']:.2f} "
          f"paired now/before {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] "
          f"({sum(x <= 1.05 for x in ratios)} of {len(ratios)} rounds <= 1.05); "
          f"req/s {rps['before']:,.0f} / {rps['now']:,.0f}", flush=True)
print(json.dumps(out))
