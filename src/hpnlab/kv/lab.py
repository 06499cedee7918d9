"""The KV lab (`hpnlab kv lab`, `make lab-kv`): the store on h1, redis-benchmark on h2 across
the lab's data LAN, against the store on each engine and index and against Debian's
redis-server (and fakeredis's TCP server where h1 has it) on h1, all in the same run.

    rps[engine][index][test][pipeline]    redis-benchmark -c 50 -P 1 / -P 16
    redis[test][pipeline]                 the same against redis-server
    range_ms[index]                       RANGE over 100 keys, one client, p50 / p99 (keys: redis-benchmark -r)
    bytes_per_key[server]                 INFO memory's used_memory growth per key filled

Every figure is measured in this run; the report's reading is computed from them.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .. import report
from ..labs._kit import LabError, agent_python, host_pair, need_tools

PORT = 46379
TESTS = ("set", "get", "incr", "lpush", "lrange_100", "zadd")
GOAL_P1, GOAL_P16, GOAL_FAKE = 0.6, 0.4, 10.0
NOISE = 0.15       # ratios closer to 1 than this are read as "the same" (shared cores, one run each)


def bench(client, ip: str, port: int, tests: tuple[str, ...], requests: int, pipeline: int,
          clients: int = 50) -> dict[str, dict[str, float]]:
    """{TEST: {rps, p50_ms, p99_ms}} from one redis-benchmark run (its --csv)."""
    res = client.run(["redis-benchmark", "-h", ip, "-p", str(port), "-c", str(clients), "-n", str(requests),
                      "-P", str(pipeline), "-t", ",".join(tests), "--csv", "-q"],
                     timeout=max(120, requests / 200), check=False)
    if res.rc != 0:
        raise LabError(f"[{client.name}] redis-benchmark against {ip}:{port} failed: {res.stderr.strip()[-400:]}")
    return parse_csv(res.stdout)


def parse_csv(text: str) -> dict[str, dict[str, float]]:
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        # "LRANGE_100 (first 100 elements)" -> lrange_100, the -t name
        out[row["test"].split()[0].lower()] = {"rps": float(row["rps"]), "p50_ms": float(row["p50_latency_ms"]),
                                    "p99_ms": float(row["p99_latency_ms"])}
    return out


def cli(client, ip: str, port: int, *args: str) -> str:
    res = client.run(["redis-cli", "-h", ip, "-p", str(port), *args], timeout=60, check=False)
    if res.rc != 0 or res.stdout.startswith("ERR"):
        raise LabError(f"[{client.name}] redis-cli {' '.join(args)}: {res.stdout.strip()} {res.stderr.strip()}")
    return res.stdout


def used_memory(client, ip: str, port: int) -> int:
    for line in cli(client, ip, port, "INFO", "memory").splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise LabError(f"INFO memory of {ip}:{port} has no used_memory")


def measure(server_host, client, ip: str, port: int, argv: list[str], name: str, tests, requests: int,
            pipelines: tuple[int, ...], ordered: bool, fill: int, step) -> dict[str, Any]:
    """Start one server on h1; fill it (memory per key, RANGE), empty it, run the benchmarks from h2; stop it."""
    proc = server_host.start(argv, name=f"kvlab-{name}".replace("/", "-"))
    try:
        try:
            server_host.wait_for_port(port, timeout=30)
        except TimeoutError:
            raise LabError(f"[{server_host.name}] {name} did not listen on {port}: {proc.logs()[1][-600:]}") from None
        cell: dict[str, Any] = {"rps": {}, "latency": {}}
        # Memory per key first, on the fresh process: after the benchmarks the store's RSS
        # (its used_memory) holds arenas their keys freed, and a fill reuses them unseen.
        before = used_memory(client, ip, port)
        client.run(["redis-benchmark", "-h", ip, "-p", str(port), "-c", "50", "-P", "16", "-n", str(fill * 3),
                    "-r", str(fill), "-t", "set", "-q"], timeout=300)
        keys = int(cli(client, ip, port, "DBSIZE").strip())
        cell["keys_filled"] = keys
        cell["bytes_per_key"] = (used_memory(client, ip, port) - before) / max(1, keys)
        if ordered:
            step(f"{name}: RANGE of 100 keys, one client")
            res = client.run(["redis-benchmark", "-h", ip, "-p", str(port), "-c", "1", "-n", "2000", "--csv",
                              "RANGE", f"key:{fill // 2:012d}", f"key:{fill:012d}", "LIMIT", "100"],
                             timeout=300)
            row = next(iter(parse_csv(res.stdout).values()))
            cell["range_ms"] = {"p50": row["p50_ms"], "p99": row["p99_ms"], "rps": row["rps"]}
        cli(client, ip, port, "FLUSHALL")
        for p in pipelines:
            step(f"{name}: {','.join(tests)} -P {p}")
            got = bench(client, ip, port, tests, requests * (4 if p > 1 else 1), p)
            cell["rps"][p] = {t: v["rps"] for t, v in got.items()}
            cell["latency"][p] = got
        return cell
    finally:
        proc.stop(5)


def run(provider, args, step) -> dict:
    server_host, client, net = host_pair(provider, args.hosts, "server,client", args.network)
    need_tools("redis-benchmark", "redis-cli", hosts=[client])
    try:
        need_tools("redis-server", hosts=[server_host])
    except LabError as exc:
        raise LabError(f"{exc} - the peer of this lab; netns hosts get it from `make setup`, VMs from the box "
                       "(box/packages.txt: a box built before redis-server was added needs `make box`)") from None
    ip = str(server_host.address(net))
    out = report.results_dir("kv", getattr(args, "results", None))
    env = report.fingerprint(provider, [], {server_host.name: server_host, client.name: client})
    py = agent_python(server_host)
    tests = tuple(args.tests.split(","))
    pipelines = (1, 16)
    grid = [(e, args.indexes.split(",")[0]) for e in args.engines.split(",")]
    grid += [(args.engines.split(",")[0], i) for i in args.indexes.split(",")[1:]]
    data: dict[str, Any] = {"rps": {}, "redis": {}, "fakeredis": {}, "latency": {}, "range_ms": {},
                            "bytes_per_key": {}, "tests": tests, "requests": args.requests,
                            "server": server_host.name, "client": client.name, "address": ip, "skipped": {}}
    load_before = server_host.run(["cat", "/proc/loadavg"], timeout=10).stdout.split()[:3]
    port = PORT
    for engine, index in grid:
        port += 1
        argv = [py, "-m", "hpnlab.cli", "kv", "serve", "--bind", ip, "--port", str(port),
                "--engine", engine, "--index", index]
        cell = measure(server_host, client, ip, port, argv, f"kv {engine}/{index}", tests, args.requests,
                       pipelines, index != "hash", args.fill_keys, step)
        data["rps"].setdefault(engine, {})[index] = {t: {str(p): cell["rps"][p].get(t) for p in pipelines}
                                                    for t in tests}
        data["latency"].setdefault(engine, {})[index] = cell["latency"]
        data["bytes_per_key"][f"kv {engine}/{index}"] = cell["bytes_per_key"]
        if "range_ms" in cell:
            data["range_ms"][index] = {**cell["range_ms"], "keys": cell["keys_filled"]}
    port += 1
    argv = ["redis-server", "--bind", ip, "--port", str(port), "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--daemonize", "no", "--logfile", ""]
    cell = measure(server_host, client, ip, port, argv, "redis-server", tests, args.requests, pipelines, False,
                   args.fill_keys, step)
    data["redis"] = {t: {str(p): cell["rps"][p].get(t) for p in pipelines} for t in tests}
    data["latency"]["redis"] = cell["latency"]
    data["bytes_per_key"]["redis-server"] = cell["bytes_per_key"]
    has_fake = server_host.run([py, "-c", "import fakeredis; fakeredis.TcpFakeServer"], timeout=30, check=False)
    if has_fake.rc == 0:
        port += 1
        argv = [py, "-c", f"from fakeredis import TcpFakeServer; TcpFakeServer(('{ip}', {port}), "
                          "server_type='redis').serve_forever()"]
        proc = server_host.start(argv, name="kvlab-fakeredis")
        try:
            server_host.wait_for_port(port, timeout=30)
            for p in pipelines:
                step(f"fakeredis TcpFakeServer: set,get -P {p}")
                got = bench(client, ip, port, ("set", "get"), max(1000, args.requests // 10), p)
                for t in ("set", "get"):
                    data["fakeredis"].setdefault(t, {})[str(p)] = got[t]["rps"]
        finally:
            proc.stop(5)
    else:
        data["skipped"]["fakeredis"] = f"fakeredis is not importable by {py} on {server_host.name}"
    data["load_before"] = load_before
    data["load_after"] = server_host.run(["cat", "/proc/loadavg"], timeout=10).stdout.split()[:3]
    data["environment"] = env
    pngs = plot(data, out)
    md = render(data, pngs, args)
    path = report.write_report(out, md, data)
    return {"report": path, "dir": out, "data": data}


def best(data: dict, test: str, p: str) -> tuple[str, float]:
    """The best engine/index and its rps for a test at a pipeline depth."""
    cands = [(f"{e}/{i}", v[test][p]) for e, idx in data["rps"].items() for i, v in idx.items()
             if v.get(test, {}).get(p)]
    return max(cands, key=lambda c: c[1]) if cands else ("-", 0.0)


def goals(data: dict) -> list[list[Any]]:
    rows = []
    for test in ("set", "get"):
        for p, goal in (("1", GOAL_P1), ("16", GOAL_P16)):
            name, rps = best(data, test, p)
            peer = data["redis"].get(test, {}).get(p) or 0
            ratio = rps / peer if peer else None
            rows.append([test.upper(), f"-P {p}", name, f"{rps:.0f}", f"{peer:.0f}",
                         f"{ratio:.2f}×" if ratio else "-", f"≥ {goal}×",
                         "met" if ratio and ratio >= goal else "NOT met"])
        for p in ("1", "16"):
            fake = data["fakeredis"].get(test, {}).get(p)
            if fake:
                name, rps = best(data, test, p)
                rows.append([test.upper(), f"-P {p}", name, f"{rps:.0f}", f"fakeredis {fake:.0f}",
                             f"{rps / fake:.1f}×", f"≥ {GOAL_FAKE:g}×",
                             "met" if rps / fake >= GOAL_FAKE else "NOT met"])
    return rows


def fake_bound(data: dict) -> list[str]:
    """redis-server's own ratio to fakeredis beside ours: where even redis-server is below
    GOAL_FAKE, the client and the round trip bound the ratio, not the store."""
    rows, bound = [], []
    for test in ("set", "get"):
        for p in ("1", "16"):
            fake, peer = data["fakeredis"].get(test, {}).get(p), data["redis"].get(test, {}).get(p)
            if not fake or not peer:
                continue
            name, rps = best(data, test, p)
            rows.append([test.upper(), f"-P {p}", f"{fake:.0f}", f"{rps / fake:.1f}× ({name})", f"{peer / fake:.1f}×"])
            if peer / fake < GOAL_FAKE:
                bound.append(f"{test.upper()} -P {p}")
    if not rows:
        return []
    L = ["## fakeredis: our ratio beside redis-server's", "",
         report.md_table(["test", "pipeline", "fakeredis rps", "best of ours / fakeredis",
                          "redis-server / fakeredis"], rows), ""]
    if bound:
        L += [f"At {', '.join(bound)} redis-server itself is under {GOAL_FAKE:g}× fakeredis: there one "
              "benchmark client and the LAN round trip bound every server, so that ratio cannot tell the "
              "stores apart.", ""]
    return L


def plot(data: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [f"{e}/{i}" for e, idx in data["rps"].items() for i in idx] + ["redis-server"]
    files = []
    for p in ("1", "16"):
        fig, ax = plt.subplots(figsize=(11, 4.8))
        tests = list(data["tests"])
        w = 0.8 / len(names)
        for k, n in enumerate(names):
            if n == "redis-server":
                vals = [data["redis"].get(t, {}).get(p) or 0 for t in tests]
            else:
                e, i = n.split("/")
                vals = [data["rps"][e][i].get(t, {}).get(p) or 0 for t in tests]
            ax.bar([x + k * w for x in range(len(tests))], vals, w, label=n)
        ax.set_xticks([x + 0.4 - w / 2 for x in range(len(tests))], [t.upper() for t in tests])
        ax.set_ylabel("requests/s")
        ax.set_title(f"redis-benchmark -c 50 -P {p}: hpnlab kv (engine/index) vs redis-server")
        ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        fig.tight_layout()
        name = f"rps_P{p}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def render(data: dict, pngs: list[str], args) -> str:
    tests = list(data["tests"])
    rows = []
    for e, idx in data["rps"].items():
        for i, v in idx.items():
            for p in ("1", "16"):
                rows.append([f"{e}/{i}", p] + [f"{v[t][p]:.0f}" if v[t].get(p) else "-" for t in tests])
    for p in ("1", "16"):
        rows.append(["**redis-server**", p] + [f"{data['redis'][t][p]:.0f}" if data["redis"][t].get(p) else "-"
                                              for t in tests])
    L = ["# KV lab: hpnlab kv vs redis-server", "",
         f"The store runs on `{data['server']}` ({data['address']}), `redis-benchmark -c 50` runs on "
         f"`{data['client']}` across the lab's data LAN; redis-server runs on the same host in the same run. "
         f"{data['requests']} requests per test at -P 1, 4× that at -P 16. Each cell is one run; the "
         f"machine's load average was {data['load_before'][0]} before and {data['load_after'][0]} after on "
         f"{data['environment']['machine']['cpus']} CPUs, so differences within ±{NOISE:.0%} between "
         "cells (more, on a loaded machine) are not meaningful.", "",
         "## Requests per second", "",
         report.md_table(["server (engine/index)", "-P"] + [t.upper() for t in tests], rows), ""]
    L += [f"![rps]({png})" for png in pngs] + [""]
    L += ["## Goals (ratios in this run)", "",
          report.md_table(["test", "pipeline", "best engine/index", "rps", "peer rps", "ratio", "goal", ""],
                          goals(data)), ""]
    L += fake_bound(data)
    if data["skipped"]:
        L += [f"- skipped: {k}: {v}" for k, v in data["skipped"].items()] + [""]
    if data["range_ms"]:
        L += ["## Range queries by index structure (RANGE of 100 keys, one client)", "",
              report.md_table(["index", "keys in the store", "p50 ms", "p99 ms", "rps"],
                              [[i, v["keys"], v["p50"], v["p99"], f"{v['rps']:.0f}"]
                               for i, v in data["range_ms"].items()]),
              "", "The hash index cannot answer RANGE (no key order): the store refuses it with an error.", ""]
    L += ["## Memory per key (INFO memory used_memory growth / keys, 16-byte keys, 3-byte values, filled into "
          "each server as it starts, before its benchmarks)", "",
          report.md_table(["server", "bytes/key"], [[k, f"{v:.0f}"] for k, v in data["bytes_per_key"].items()]),
          "", "hpnlab kv reports its RSS as used_memory (Python objects: key bytes, value bytes, "
          "the index's node), redis-server its allocator's count.", ""]
    L += reading(data)
    L += [report.environment_md(data["environment"]), "",
          f"Load average (the machine's, shared by every netns host) before/after: "
          f"{' '.join(data['load_before'])} / {' '.join(data['load_after'])}", "",
          report.rerun_md(None, "lab-kv")]
    return "\n".join(L)


def reading(data: dict) -> list[str]:
    """What the numbers say, computed from them."""
    L = ["## Reading", ""]
    by_engine: dict[str, float] = {}
    first_index = {e: next(iter(idx)) for e, idx in data["rps"].items()}
    for e, i in first_index.items():
        v = data["rps"][e][i]
        if v.get("get", {}).get("1"):
            by_engine[e] = v["get"]["1"]
    if by_engine:
        order = sorted(by_engine.items(), key=lambda kv: -kv[1])
        L.append("- GET at -P 1 by engine: " + ", ".join(f"{e} {r:.0f}" for e, r in order) + ".")
        threaded = [e for e in by_engine if e in ("threads", "epoll-threads", "epoll-acceptor")]
        single = [e for e in by_engine if e not in threaded]
        if threaded and single:
            bt = max(threaded, key=lambda e: by_engine[e])
            bs = max(single, key=lambda e: by_engine[e])
            ratio = by_engine[bt] / by_engine[bs]
            if abs(ratio - 1) <= NOISE:
                verdict = (f"within this run's ±{NOISE:.0%} of each other: threads bought nothing measurable "
                           "(one lock serializes every command, the GIL all the Python around it)")
            elif ratio > 1:
                verdict = ("more, although the commands themselves cannot run in parallel under the one lock "
                           "and the GIL: the difference is in the I/O around them (more threads waiting in "
                           "the kernel), or noise from the machine's other load")
            else:
                verdict = "less: the lock and GIL hand-offs cost more than the threads give"
            L.append(f"- §9.1 单线程 vs 多线程: the best threaded engine ({bt}, one store under one lock) served "
                     f"{ratio:.2f}× the best single-threaded one ({bs}) - {verdict}.")
    e0 = next(iter(data["rps"]), None)
    if e0 and len(data["rps"][e0]) > 1:
        idx = data["rps"][e0]
        sets = {i: v["set"]["1"] for i, v in idx.items() if v.get("set", {}).get("1")}
        if sets:
            L.append(f"- SET at -P 1 on {e0} by index: " +
                     ", ".join(f"{i} {r:.0f}" for i, r in sorted(sets.items(), key=lambda kv: -kv[1])) +
                     " (one key is rewritten, so this is mostly the request path; the index shows in "
                     "memory per key and in RANGE).")
    if data["range_ms"]:
        fastest = min(data["range_ms"].items(), key=lambda kv: kv[1]["p50"])
        L.append(f"- RANGE p50 was lowest on {fastest[0]} ({fastest[1]['p50']:.3f} ms).")
    return L + [""]
