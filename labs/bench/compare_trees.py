"""Server CPU per request of the same engines from two source trees, side by side.

    git worktree add /tmp/before 994c883^      # the tree before servers/loop.py
    .venv/bin/python labs/bench/compare_trees.py /tmp/before/src src select,poll,epoll-lt 5

Each round runs the old and the new engine back to back (order flipped each round),
server pinned to CPU0 and hpnlab-loadgen to CPU1, 100 connections x 64 B, 2 s window.
CPU is the server's utime+stime from /proc over the window (all threads).
"""
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TREES = {"before": os.path.abspath(sys.argv[1]), "now": os.path.abspath(sys.argv[2])}
PY = sys.executable
LOADGEN = os.path.join(REPO, "build", "hpnlab-loadgen")
ENGINES = sys.argv[3].split(",")
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 7
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
        lg = subprocess.Popen(["taskset", "-c", "1", LOADGEN, "-p", str(port), "-c", "100", "-s", "64",
                               "-t", "2", "-w", "1", "-L", "0.2"], stdout=subprocess.PIPE,
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
