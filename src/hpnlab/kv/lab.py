"""The KV lab (`hpnlab kv lab`, `make lab-kv`): the store on h1, redis-benchmark on h2 across
the lab's data LAN, against the store on each engine and index and against Debian's
redis-server (and fakeredis's TCP server where h1 has it) on h1, all in the same run.

    rps[engine][index][test][pipeline]    redis-benchmark -c 50 -P 1 / -P 16
    redis[test][pipeline]                 the same against redis-server
    range_ms[index]                       RANGE over 100 keys, one client, p50 / p99 (keys: redis-benchmark -r)
    bytes_per_key[server]                 INFO memory's used_memory growth per key filled
    ustack                                where the ustack engine ran: the stack's LAN, address, driver

The ustack engine is the store on the user-space TCP/IP stack (`kv serve --engine ustack`):
the stack takes h1's NIC on the lab's `stack` LAN (labs/ustack/lab.yml), or on a lab
without one sits beside h1's kernel on the data LAN with its own MAC and address (as
`hpnlab ustack lab` does); redis-benchmark on h2 reaches it through h2's kernel TCP.

Every figure is measured in this run; the report's reading is computed from them.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from .. import report
from ..labs._kit import LabError, agent_python, host_pair, need_tools, shared_network
from .serve import STACK

PORT = 46379
TESTS = ("set", "get", "incr", "lpush", "lrange_100", "zadd")
GOAL_P1, GOAL_P16, GOAL_FAKE = 0.6, 0.4, 10.0
GOAL_TESTS = ("set", "get")
NOISE = 0.15       # ratios closer to 1 than this are read as "the same" (shared cores, one run each)
# requests per test at -P 1 (4x at -P 16), keys filled, RANGE requests: the default grid, and the
# one a server host whose CPU QEMU emulates (TCG) gets instead - there each cell takes minutes
GRID = {"requests": 20000, "fill_keys": 100000, "range_requests": 2000}
EMULATED_GRID = {"requests": 3000, "fill_keys": 10000, "range_requests": 300}
# fakeredis (a Python server that threads per connection) is slow and its rate swings between
# runs: each pipeline depth is warmed up, then measured --fake-runs times (default 3) with as
# many requests as ours, or fewer if that would take longer than FAKE_SECONDS a run; the median counts
FAKE_SECONDS = 6.0
FAKE_PACKAGES = ("fakeredis", "redis", "sortedcontainers")      # fakeredis and what it imports
# redis.asyncio (which fakeredis imports, its TCP server never runs) imports async_timeout on
# Python < 3.11.3 - Debian 12's python3 is 3.11.2, this venv's may be newer and lack it: the
# copy then gets asyncio's own timeout under that name
ASYNC_TIMEOUT_SHIM = "from asyncio import timeout  # noqa: F401  (hpnlab kv lab: see kv/lab.py)\n"


def bench(client, ip: str, port: int, tests: tuple[str, ...], requests: int, pipeline: int,
          clients: int = 50) -> dict[str, dict[str, float]]:
    """{TEST: {rps, p50_ms, p99_ms}} from one redis-benchmark run (its --csv)."""
    res = client.run(["redis-benchmark", "-h", ip, "-p", str(port), "-c", str(clients), "-n", str(requests),
                      "-P", str(pipeline), "-t", ",".join(tests), "--csv", "-q"],
                     timeout=max(120, requests / 200), check=False)
    if res.rc != 0:
        raise LabError(f"[{client.name}] redis-benchmark against {ip}:{port} failed: {res.stderr.strip()[-400:]}")
    return parse_csv(res.stdout)


def cpu_seconds(host, pid: int) -> tuple[float, float]:
    """CPU time (user, system) of process `pid` on `host` and of its children: the server (a
    host that starts commands through a shell runs the server as that shell's child)."""
    res = host.run(["sh", "-c", f"cat /proc/{pid}/stat $(pgrep -P {pid} | sed 's|.*|/proc/&/stat|') 2>/dev/null"],
                   timeout=30, check=False)
    user = system = 0
    for line in res.stdout.splitlines():
        fields = line.rsplit(")", 1)[-1].split()          # after "pid (comm)": state is field 3
        user += int(fields[11])                            # utime, stime: fields 14 and 15
        system += int(fields[12])
    return user / 100, system / 100                        # USER_HZ: 100 on Linux


def timed_bench(server_host, pid: int, client, ip: str, port: int, test: str, requests: int,
                pipeline: int) -> dict[str, float]:
    """One redis-benchmark test with the server's CPU time over it: {rps, p50_ms, p99_ms,
    cpu_us (per request; user_us + sys_us), busy (the server's CPU share of the run's duration)}."""
    user0, sys0 = cpu_seconds(server_host, pid)
    row = bench(client, ip, port, (test,), requests, pipeline)[test]
    user1, sys1 = cpu_seconds(server_host, pid)
    user, system = user1 - user0, sys1 - sys0
    return {**row, "cpu_us": (user + system) / requests * 1e6, "user_us": user / requests * 1e6,
            "sys_us": system / requests * 1e6, "busy": (user + system) / (requests / row["rps"])}


def parse_csv(text: str) -> dict[str, dict[str, float]]:
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        # "LRANGE_100 (first 100 elements)" -> lrange_100, the -t name
        test, rps = row["test"].split()[0].lower(), float(row["rps"])
        # redis-benchmark divides by its elapsed whole milliseconds: a run shorter than one gives inf
        if not math.isfinite(rps) or rps <= 0:
            why = "the run ended within its 1 ms clock" if math.isinf(rps) else "no request was timed"
            raise LabError(f"redis-benchmark gave {test.upper()} no rate (rps {row['rps']}): {why} - raise --requests")
        out[test] = {"rps": rps, "p50_ms": float(row["p50_latency_ms"]), "p99_ms": float(row["p99_latency_ms"])}
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


def answers(client, ip: str, port: int, timeout: float) -> bool:
    """Whether a server answers PING at ip:port from `client` within `timeout` s (a server on
    the user-space stack listens where the host's `ss` cannot see it)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = client.run(["redis-cli", "-h", ip, "-p", str(port), "PING"], timeout=30, check=False)
        if res.rc == 0 and res.stdout.strip() == "PONG":
            return True
        time.sleep(0.2)
    return False


def measure(server_host, client, ip: str, port: int, argv: list[str], name: str, tests, requests: int,
            pipelines: tuple[int, ...], ordered: bool, fill: int, range_requests: int, step,
            kernel: bool = True) -> dict[str, Any]:
    """Start one server on h1; fill it (memory per key, RANGE), empty it, run the benchmarks from h2; stop it.
    kernel=False: the server listens on the user-space stack (waited for by PING from h2)."""
    # a name for the log files without blanks: an SSH host puts it unquoted in a shell command
    proc = server_host.start(argv, name=f"kvlab-{name}".replace("/", "-").replace(" ", "-"))
    try:
        try:
            if kernel:
                server_host.wait_for_port(port, timeout=30)
            elif not answers(client, ip, port, 30):
                raise TimeoutError
        except TimeoutError:
            raise LabError(f"[{server_host.name}] {name} did not listen on {ip}:{port}: "
                           f"{proc.logs()[1][-600:]}") from None
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
            res = client.run(["redis-benchmark", "-h", ip, "-p", str(port), "-c", "1", "-n", str(range_requests),
                              "--csv",
                              "RANGE", f"key:{fill // 2:012d}", f"key:{fill:012d}", "LIMIT", "100"],
                             timeout=300)
            row = next(iter(parse_csv(res.stdout).values()))
            cell["range_ms"] = {"p50": row["p50_ms"], "p99": row["p99_ms"], "rps": row["rps"]}
        cli(client, ip, port, "FLUSHALL")
        for p in pipelines:
            step(f"{name}: {','.join(tests)} -P {p}")
            n = requests * (4 if p > 1 else 1)
            # the goals' tests each on their own, with the server's CPU time over them
            got = {t: timed_bench(server_host, proc.pid, client, ip, port, t, n, p) for t in GOAL_TESTS if t in tests}
            rest = [t for t in tests if t not in got]
            if rest:
                got.update(bench(client, ip, port, tuple(rest), n, p))
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
    emulated, unable = probe(server_host, py, [e for e, _ in grid if e != STACK])
    sizes, grid_note = sizing(args, emulated)
    requests, fill = sizes["requests"], sizes["fill_keys"]
    data: dict[str, Any] = {"rps": {}, "redis": {}, "fakeredis": {}, "latency": {}, "range_ms": {},
                            "bytes_per_key": {}, "tests": tests, "requests": requests, "fill_keys": fill,
                            "range_requests": sizes["range_requests"], "server_emulated": emulated,
                            "grid_note": grid_note,
                            "server": server_host.name, "client": client.name, "address": ip, "skipped": {},
                            "not_run": {}, "requested": len(grid) + 1 + (1 if args.fake_runs else 0)}
    load_before = server_host.run(["cat", "/proc/loadavg"], timeout=10).stdout.split()[:3]
    port = PORT

    def not_run(name: str, status: str, reason: str) -> None:
        # a requested cell that did not run: the report says so on top and the command exits non-zero
        step(f"{name}: {status}: {reason}")
        data["not_run"][name] = {"status": status, "reason": reason}

    for engine, index in grid:
        port += 1
        name = f"{engine}/{index}"
        if engine in unable:
            not_run(name, "not run", unable[engine])
            continue
        argv = [py, "-m", "hpnlab.cli", "kv", "serve", "--port", str(port), "--engine", engine, "--index", index]
        try:
            addr = ip
            if engine == STACK:
                data["ustack"] = stack_place(provider, server_host, client, args)
                addr = data["ustack"]["address"]
                argv += ["--driver", data["ustack"]["driver"], "--ifname", data["ustack"]["ifname"],
                         "--ip", data["ustack"]["ip"]]
            else:
                argv += ["--bind", ip]
            cell = measure(server_host, client, addr, port, argv, f"kv {name}", tests, requests,
                           pipelines, index != "hash", fill, sizes["range_requests"], step, kernel=engine != STACK)
        except LabError as exc:       # this cell failed: the others still run
            not_run(name, "failed", str(exc))
            continue
        data["rps"].setdefault(engine, {})[index] = {t: {str(p): cell["rps"][p].get(t) for p in pipelines}
                                                    for t in tests}
        data["latency"].setdefault(engine, {})[index] = cell["latency"]
        data["bytes_per_key"][f"kv {name}"] = cell["bytes_per_key"]
        if "range_ms" in cell:
            data["range_ms"][index] = {**cell["range_ms"], "keys": cell["keys_filled"]}
    port += 1
    argv = ["redis-server", "--bind", ip, "--port", str(port), "--save", "", "--appendonly", "no",
            "--protected-mode", "no", "--daemonize", "no", "--logfile", ""]
    try:
        cell = measure(server_host, client, ip, port, argv, "redis-server", tests, requests, pipelines, False,
                       fill, sizes["range_requests"], step)
        data["redis"] = {t: {str(p): cell["rps"][p].get(t) for p in pipelines} for t in tests}
        data["latency"]["redis"] = cell["latency"]
        data["bytes_per_key"]["redis-server"] = cell["bytes_per_key"]
    except LabError as exc:
        not_run("redis-server", "failed", str(exc))
    env_py = fakeredis_env(provider, server_host, py, step) if args.fake_runs else None
    if env_py is None:
        data["skipped"]["fakeredis"] = "not measured (asked: --fake-runs 0)"
    elif isinstance(env_py, str):
        not_run("fakeredis", "not run", env_py)
    else:
        port += 1
        argv = [py, "-c", f"from fakeredis import TcpFakeServer; TcpFakeServer(('{ip}', {port}), "
                          "server_type='redis').serve_forever()"]
        proc = server_host.start(argv, name="kvlab-fakeredis", env=env_py)
        try:
            server_host.wait_for_port(port, timeout=30)
            data["fakeredis_runs"], data["fakeredis_requests"] = {}, {}
            for p in pipelines:
                step(f"fakeredis TcpFakeServer: set,get -P {p} (warm-up, then {args.fake_runs} runs)")
                n, runs = bench_fakeredis(server_host, proc.pid, client, ip, port, requests * (4 if p > 1 else 1),
                                          p, args.fake_runs)
                data["fakeredis_requests"][str(p)] = n
                for t, rows in runs.items():
                    median = sorted(rows, key=lambda r: r["rps"])[len(rows) // 2]
                    data["fakeredis_runs"].setdefault(t, {})[str(p)] = [r["rps"] for r in rows]
                    data["fakeredis"].setdefault(t, {})[str(p)] = median["rps"]
                    data["latency"].setdefault("fakeredis", {}).setdefault(p, {})[t] = median
        except TimeoutError:
            not_run("fakeredis", "failed", f"it did not listen on {ip}:{port}: {proc.logs()[1][-600:]}")
        except LabError as exc:
            not_run("fakeredis", "failed", str(exc))
        finally:
            proc.stop(5)
    data["load_before"] = load_before
    data["load_after"] = server_host.run(["cat", "/proc/loadavg"], timeout=10).stdout.split()[:3]
    data["environment"] = env
    pngs = plot(data, out)
    md = render(data, pngs, args)
    path = report.write_report(out, md, data)
    return {"report": path, "dir": out, "data": data}


def probe(host, py: str, engines: list[str]) -> tuple[bool, dict[str, str]]:
    """Asked of the server host's own python (hpnlab.bench.probe's verdicts, as the bench asks
    them): whether QEMU emulates its CPU, and why each of `engines` cannot run there, with the
    fix ({} if all can) - an engine whose library is missing is reported, not tried."""
    code = ("import json; from hpnlab.bench.probe import emulated_cpu, engines; "
            f"print(json.dumps([emulated_cpu(), engines({sorted(set(engines))!r})]))")
    emulated, verdicts = json.loads(host.run([py, "-c", code], timeout=120).stdout.splitlines()[-1])
    return emulated, {e: f"on {host.name}: {why}" for e, why in verdicts.items() if why}


def stack_place(provider, server_host, client, args) -> dict[str, str]:
    """Where the store on the user-space stack listens: the LAN whose NIC the stack takes on the
    server host (--stack-net, else the lab's `stack` LAN, else the data LAN beside the kernel),
    its driver there (DPDK where the lab gives that NIC to DPDK, else AF_PACKET) and its own
    address (the kernel's + 100), all as `hpnlab ustack` chooses them."""
    from ..ustack.interop import NETWORK, stack_driver, stack_ip, stack_network
    default = NETWORK if NETWORK in provider.lab.networks else args.network
    net = stack_network(provider, getattr(args, "stack_net", None) or default)
    shared_network(provider, server_host.name, client.name, net)    # the client must reach it
    driver, ifname = stack_driver(provider, server_host.name, net)
    ip = stack_ip(server_host, net)
    return {"network": net, "driver": driver, "ifname": ifname, "ip": ip, "address": ip.split("/")[0]}


def sizing(args, emulated: bool) -> tuple[dict[str, int], str]:
    """Requests, keys filled and RANGE requests: what the arguments say, else the default grid -
    or the emulated one (and a note saying so) on a server host whose CPU QEMU emulates."""
    base = EMULATED_GRID if emulated else GRID
    sizes = {"requests": args.requests or base["requests"], "fill_keys": args.fill_keys or base["fill_keys"],
             "range_requests": base["range_requests"]}
    cut = [k for k in ("requests", "fill_keys") if emulated and getattr(args, k) is None]
    note = ""
    if cut:
        note = ("the server host's CPU is emulated (QEMU TCG), so the grid was cut: "
                + ", ".join(f"{k.replace('_', ' ')} {EMULATED_GRID[k]} (not {GRID[k]})" for k in cut)
                + f", RANGE requests {EMULATED_GRID['range_requests']} (not {GRID['range_requests']}) - every "
                "cell takes minutes there; give --requests/--fill-keys to choose")
    return sizes, note


def fakeredis_env(provider, host, py: str, step) -> dict[str, str] | str:
    """The environment that lets `py` on `host` import fakeredis: {} where it already does; on a
    host with its own file system (a VM, a machine) a copy of this machine's fakeredis and the
    pure-Python packages it imports, put there (lab VMs reach no package index). Else why not."""
    if host.run([py, "-c", "import fakeredis; fakeredis.TcpFakeServer"], timeout=30, check=False).rc == 0:
        return {}
    if provider.shares_kernel:
        return f"fakeredis is not importable by {py} on {host.name} (`make setup` installs it)"
    import importlib.metadata
    import importlib.util
    import tempfile
    import zipfile

    from ..labcode import zip_distribution
    step(f"fakeredis: copying this machine's {', '.join(FAKE_PACKAGES)} to {host.name}")
    remote = "/tmp/hpnlab-kvlab-fakeredis"
    with tempfile.TemporaryDirectory() as tmp:
        zpath = Path(tmp) / "fakeredis.zip"
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
            for name in FAKE_PACKAGES:        # each distribution's files, its metadata too (fakeredis reads it)
                try:
                    zip_distribution(z, importlib.metadata.distribution(name))
                except importlib.metadata.PackageNotFoundError:
                    return f"fakeredis is not importable on {host.name}, and this machine has no {name} to copy"
            if importlib.util.find_spec("async_timeout") is None:
                z.writestr("async_timeout/__init__.py", ASYNC_TIMEOUT_SHIM)
        host.put(zpath, f"{remote}.zip")
    host.run(["sh", "-c", f"rm -rf {remote} && {py} -m zipfile -e {remote}.zip {remote}"], timeout=120)
    env = {"PYTHONPATH": remote}
    probe = host.run(["env", f"PYTHONPATH={remote}", py, "-c", "import fakeredis; fakeredis.TcpFakeServer"],
                     timeout=60, check=False)
    if probe.rc != 0:
        return f"fakeredis copied to {host.name} does not import there: {probe.stderr.strip()[-300:]}"
    return env


def bench_fakeredis(server_host, pid: int, client, ip: str, port: int, requests: int, pipeline: int,
                    repeats: int) -> tuple[int, dict[str, list[dict[str, float]]]]:
    """(requests per run, {test: [rps of each run]}) for SET and GET: one warm-up run sizes the
    runs (at most `requests`, ours; no run longer than FAKE_SECONDS), then `repeats` runs."""
    warm = bench(client, ip, port, GOAL_TESTS, 500, pipeline)
    rate = min(warm[t]["rps"] for t in GOAL_TESTS)
    n = max(500, min(requests, int(rate * FAKE_SECONDS)))
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in GOAL_TESTS}
    for _ in range(repeats):
        for t in GOAL_TESTS:
            runs[t].append(timed_bench(server_host, pid, client, ip, port, t, n, pipeline))
    return n, runs


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
    L = ["## fakeredis: our ratio beside redis-server's", ""]
    if data.get("fakeredis_runs"):
        L += [f"fakeredis's TcpFakeServer ran on the same host with the same `redis-benchmark -c 50`; each "
              f"pipeline depth was warmed up, then run {len(next(iter(data['fakeredis_runs']['set'].values())))} "
              "times with "
              + ", ".join(f"{n} requests at -P {p}" for p, n in data["fakeredis_requests"].items())
              + f" (as many as ours, or fewer where a run would take over {FAKE_SECONDS:g} s); the median "
              "run counts. Its runs (rps): "
              + "; ".join(f"{t.upper()} -P {p}: " + ", ".join(f"{r:.0f}" for r in rs)
                          for t, by_p in data["fakeredis_runs"].items() for p, rs in by_p.items()) + ".", ""]
    L += [report.md_table(["test", "pipeline", "fakeredis rps", "best of ours / fakeredis",
                           "redis-server / fakeredis"], rows), ""]
    if bound:
        L += [f"At {', '.join(bound)} redis-server itself is under {GOAL_FAKE:g}× fakeredis: there one "
              "benchmark client and the LAN round trip bound every server, so that ratio cannot tell the "
              "stores apart.", ""]
    return L


def _row(data: dict, server: str, p: str, test: str) -> dict | None:
    """The latency row (with cpu_us, busy) of a server: "redis", "fakeredis" or "engine/index"."""
    by_p = data["latency"].get(server) if "/" not in server else \
        data["latency"].get(server.split("/")[0], {}).get(server.split("/")[1])
    if not by_p:
        return None
    row = (by_p.get(p) or by_p.get(int(p)) or {}).get(test)
    return row if row and "cpu_us" in row else None


def cpu_md(data: dict) -> list[str]:
    """Server CPU per request and how busy each server was: whether the server or the load
    (one redis-benchmark, the round trip) set the rate - computed from this run."""
    rows, notes = [], []
    for test in GOAL_TESTS:
        for p in ("1", "16"):
            name, _ = best(data, test, p)
            cells = {"ours": _row(data, name, p, test), "redis": _row(data, "redis", p, test),
                     "fake": _row(data, "fakeredis", p, test)}
            if not any(cells.values()):
                continue
            rows.append([test.upper(), f"-P {p}", name] +
                        [f"{c['cpu_us']:.1f} µs, {c['busy']:.0%}" if c else "-" for c in cells.values()])
            # CPU time is counted in 10 ms ticks: a run too short to be charged one says nothing
            ours, redis, fake = (c if c and c["cpu_us"] > 0 else None for c in cells.values())
            if ours and redis and redis["busy"] < 0.8:
                notes.append(f"{test.upper()} -P {p}: redis-server was busy {redis['busy']:.0%} of the run and "
                             f"ours {ours['busy']:.0%} - the load generator and the round trip, not the server, "
                             f"set the rate there; per request ours took {ours['cpu_us'] / redis['cpu_us']:.1f}× "
                             "redis-server's CPU")
            if ours and fake:
                notes.append(f"{test.upper()} -P {p}: fakeredis took {fake['cpu_us'] / ours['cpu_us']:.1f}× our CPU "
                             f"per request (busy {fake['busy']:.0%})")
            if fake and redis and fake["busy"] < 0.8 and redis["rps"] > 2 * fake["rps"]:
                notes.append(f"{test.upper()} -P {p}: fakeredis was busy {fake['busy']:.0%} of its run while the same "
                             f"load drove redis-server {redis['rps'] / fake['rps']:.0f}× as fast: neither its CPU nor "
                             "the load set its rate, but waits inside its server (a thread per connection, "
                             "one GIL)")
    if not rows:
        return []
    load, cpus = data.get("load_before"), data.get("environment", {}).get("machine", {}).get("cpus")
    if load and cpus and float(load[0]) > cpus:
        notes.append(f"the machine's load average was {load[0]} on {cpus} CPUs: a server that is not busy may "
                     "also be waiting for a CPU, so there \"the round trip\" includes the machine's other work")
    return (["## Server CPU per request (CPU µs / request, share of the run the server was busy)", "",
             report.md_table(["test", "pipeline", "best of ours", "ours", "redis-server", "fakeredis (median run)"],
                             rows), ""] + [f"- {n}." for n in notes] + [""])


KERNEL_TWIN = "epoll-lt"      # the engine whose Reactor the ustack engine runs, on the kernel's sockets


def stack_md(data: dict) -> list[str]:
    """The store on the user-space stack beside the same Reactor on the kernel's TCP (epoll-lt)
    and redis-server, and where its CPU per request goes - computed from this run."""
    if STACK not in data["rps"] or "ustack" not in data:
        return []
    place = data["ustack"]
    index = next(iter(data["rps"][STACK]))
    twin = next(iter(data["rps"].get(KERNEL_TWIN, {})), None)
    rows, notes = [], []
    for test in GOAL_TESTS:
        for p in ("1", "16"):
            ours = data["rps"][STACK][index].get(test, {}).get(p)
            kern = data["rps"][KERNEL_TWIN][twin].get(test, {}).get(p) if twin else None
            peer = data["redis"].get(test, {}).get(p)
            if not ours:
                continue
            st, kt = _row(data, f"{STACK}/{index}", p, test), _row(data, f"{KERNEL_TWIN}/{twin}", p, test) \
                if twin else None
            rows.append([test.upper(), f"-P {p}", f"{ours:.0f}", f"{kern:.0f}" if kern else "-",
                         f"{peer:.0f}" if peer else "-", f"{ours / kern:.2f}×" if kern else "-",
                         f"{ours / peer:.2f}×" if peer else "-",
                         _cpu_cell(st), _cpu_cell(kt)])
            if not (st and kt and st.get("user_us") is not None and kt.get("user_us") is not None):
                continue
            # CPU time comes in 10 ms ticks: each side's per-request figure is good to one tick's share
            fuzz = 2 * 1e4 / (data["requests"] * (4 if p != "1" else 1))
            stack_us = st["user_us"] - kt["user_us"]
            if stack_us <= 3 * fuzz:
                notes.append(f"{test.upper()} -P {p}: the stack's user time per request ({st['user_us']:.1f} µs) is "
                             f"within the 10 ms ticks' resolution (±{fuzz:.1f} µs) of the kernel twin's "
                             f"({kt['user_us']:.1f} µs): no split read; more --requests would give one")
                continue
            notes.append(
                f"{test.upper()} -P {p}: the stack's process spent {st['cpu_us']:.1f} µs of CPU per request "
                f"({st['user_us']:.1f} user, {st['sys_us']:.1f} system) where the same Reactor and store on the "
                f"kernel's TCP spent {kt['cpu_us']:.1f} µs ({kt['user_us']:.1f} user, {kt['sys_us']:.1f} system "
                f"- the kernel's TCP/IP, partly charged to the client's side). The server's own work (Reactor, "
                f"RESP, the command) is the kernel twin's {kt['user_us']:.1f} µs user time, so the stack's TCP/IP "
                f"in Python took about {stack_us:.1f} µs (±{fuzz:.1f}: 10 ms ticks), {stack_us / st['cpu_us']:.0%} "
                f"of its request. At "
                f"{st['cpu_us']:.1f} µs per request one CPU serves at most {1e6 / st['cpu_us']:.0f} requests/s"
                + (f"; the stack's process was busy {st['busy']:.0%}: its CPU set the rate" if st["busy"] >= 0.8 else
                   f"; the stack's process was busy {st['busy']:.0%} of the run, so waits (for a CPU on this "
                   "shared machine, for the round trip) held it below that"))
    load, cpus = data.get("load_before"), data.get("environment", {}).get("machine", {}).get("cpus")
    if notes and load and cpus and float(load[0]) > cpus:
        notes.append(f"the machine's load average was {load[0]} on {cpus} CPUs: a process that wants a CPU gets "
                     f"about {cpus / float(load[0]):.0%} of one, and the stack's, needing the most CPU per request, "
                     "loses the most time waiting for it")
    if not rows:
        return []
    L = [f"## The store on the user-space stack ({STACK})", "",
         f"`kv serve --engine {STACK}` on {data['server']}: the stack took {place['ifname']} on the "
         f"`{place['network']}` LAN ({place['driver']}) with its own address {place['ip']}; redis-benchmark on "
         f"{data['client']} talked to it through its kernel's TCP. Its server is the {KERNEL_TWIN} engine's Reactor "
         f"on the stack's epoll, so the {KERNEL_TWIN} row is the same code on the kernel's TCP.", "",
         report.md_table(["test", "pipeline", f"{STACK} rps", f"{KERNEL_TWIN} rps", "redis-server rps",
                          f"{STACK} / {KERNEL_TWIN}", f"{STACK} / redis-server",
                          f"{STACK} CPU µs/req (user+sys, busy)", f"{KERNEL_TWIN} CPU µs/req"], rows), ""]
    return L + [f"- {n}." for n in notes] + [""]


def _cpu_cell(row: dict | None) -> str:
    if not row:
        return "-"
    if row.get("user_us") is None:
        return f"{row['cpu_us']:.1f}, {row['busy']:.0%}"
    return f"{row['cpu_us']:.1f} ({row['user_us']:.1f}+{row['sys_us']:.1f}), {row['busy']:.0%}"


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
        rows.append(["**redis-server**", p] + [f"{data['redis'][t][p]:.0f}" if data["redis"].get(t, {}).get(p)
                                              else "-" for t in tests])
    L = ["# KV lab: hpnlab kv vs redis-server", "", *incomplete_md(data),
         f"The store runs on `{data['server']}` ({data['address']}), `redis-benchmark -c 50` runs on "
         f"`{data['client']}` across the lab's data LAN; redis-server runs on the same host in the same run. "
         f"{data['requests']} requests per test at -P 1, 4× that at -P 16. Each cell is one run; the "
         f"machine's load average was {data['load_before'][0]} before and {data['load_after'][0]} after on "
         f"{data['environment']['machine']['cpus']} CPUs, so differences within ±{NOISE:.0%} between "
         "cells (more, on a loaded machine) are not meaningful.", ""]
    if data.get("grid_note"):
        L += [f"Grid: {data['grid_note']}.", ""]
    L += ["## Requests per second", "",
         report.md_table(["server (engine/index)", "-P"] + [t.upper() for t in tests], rows), ""]
    L += [f"![rps]({png})" for png in pngs] + [""]
    L += ["## Goals (ratios in this run)", "",
          report.md_table(["test", "pipeline", "best engine/index", "rps", "peer rps", "ratio", "goal", ""],
                          goals(data)), ""]
    # a peer left out on purpose is named where its goal rows would be
    L += [f"- {k}: {v}" for k, v in data["skipped"].items()] + ([""] if data["skipped"] else [])
    L += fake_bound(data)
    L += cpu_md(data)
    L += stack_md(data)
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


def incomplete_md(data: dict) -> list[str]:
    """On top of the report: the requested cells that did not run, and why (the command exits non-zero)."""
    missed = data.get("not_run") or {}
    if not missed:
        return []
    return ([f"**INCOMPLETE RUN: {len(missed)} of {data['requested']} requested servers did not run, so "
             "`hpnlab kv lab` exited non-zero. The numbers below are the part that ran.**", ""]
            + [f"- **{name} {v['status']}**: **{v['reason']}**" for name, v in missed.items()] + [""])


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
