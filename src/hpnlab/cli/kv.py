"""`hpnlab kv serve …` — the Redis-compatible KV store (course §9.1) on an I/O engine.

    hpnlab kv serve --port 6380 --engine uvloop --index skiplist --appendonly yes --dir /tmp/kv
    hpnlab kv serve --engine ustack --ifname eth1 --ip 10.77.1.101/24   # on the user-space stack
"""
from __future__ import annotations

HELP = "the KV store: serve RESP2/RESP3 (redis-cli, redis-benchmark, redis-py) on an I/O engine"


def add_arguments(parser) -> None:
    from ..kv.index import INDEXES
    from ..kv.memory import POLICIES
    from ..kv.serve import STACK
    from ..servers import ENGINES
    from ..ustack.run import add_nic_arguments
    from ._args import add_up_option, positive_int, tcp_port  # not _common: guests have no rich
    sub = parser.add_subparsers(dest="kv_cmd", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run the store in the foreground until SIGTERM/SIGINT")
    serve.add_argument("--bind", help="address to listen on (default 127.0.0.1; --engine ustack: --ip)")
    serve.add_argument("--port", type=tcp_port, default=6379)
    serve.add_argument("--engine", default="epoll-lt", choices=[*ENGINES, STACK],
                       help=f"I/O engine (default epoll-lt; {STACK}: the user-space TCP/IP stack on --ifname)")
    serve.add_argument("--index", default="hash", choices=list(INDEXES), help="keyspace index (default hash)")
    serve.add_argument("--workers", type=positive_int, help="epoll-threads/epoll-acceptor: threads (default: CPUs)")
    serve.add_argument("--appendonly", default="no", choices=("yes", "no"))
    serve.add_argument("--appendfsync", default="everysec", choices=("always", "everysec", "no"))
    serve.add_argument("--dir", default=".", help="directory of appendonly.aof and dump.rdb")
    serve.add_argument("--requirepass", default="", metavar="PW")
    serve.add_argument("--maxclients", type=positive_int, default=10000)
    serve.add_argument("--maxmemory", default="0", metavar="SIZE",
                       help="limit on the dataset's estimated size (100mb, 1gb...; 0: none)")
    serve.add_argument("--maxmemory-policy", default="noeviction", choices=POLICIES)
    add_nic_arguments(serve.add_argument_group(f"--engine {STACK}: the NIC the stack takes (as `hpnlab ustack serve`)"),
                      required=False)
    lab = sub.add_parser("lab", help="the store on h1 vs redis-server, redis-benchmark from h2; into results/kv/")
    add_up_option(lab)
    lab.add_argument("--hosts", default="h1,h2", help="server,client (default h1,h2)")
    lab.add_argument("--network", default="data", help="the LAN between them (default data)")
    lab.add_argument("--engines", default=f"epoll-lt,epoll-et,uvloop,asyncio,uring,threads,epoll-threads,{STACK}",
                     help="engines to measure with the first index (default: %(default)s)")
    lab.add_argument("--stack-net", metavar="NET",
                     help=f"{STACK}: the LAN whose NIC the stack takes on the server host (default: the lab's "
                          "`stack` LAN if it has one, else the data LAN, beside the kernel with its own address)")
    lab.add_argument("--indexes", default="hash,skiplist,rbtree,array",
                     help="indexes to measure with the first engine (default: %(default)s)")
    lab.add_argument("--tests", default="set,get,incr,lpush,lrange_100,zadd", help="redis-benchmark -t tests")
    lab.add_argument("--requests", type=int,
                     help="requests per test at -P 1, 4x at -P 16 (default 20000; 3000 on an emulated server)")
    lab.add_argument("--fill-keys", type=int,
                     help="keys filled for memory per key and RANGE (default 100000; 10000 on an emulated server)")
    lab.add_argument("--fake-runs", type=int, default=3, metavar="N",
                     help="runs of fakeredis's TCP server per pipeline depth, the median counts (0: skip it)")
    lab.add_argument("--results", metavar="DIR", help="results root (default: results/)")


def run(args) -> int:
    if args.kv_cmd == "lab":
        return run_lab(args)
    from ..kv.serve import KVError, serve
    if not 0 < args.port < 65536:
        raise KVError(f"--port {args.port}: must be 1..65535")
    if args.workers is not None and args.workers < 1:
        raise KVError(f"--workers {args.workers}: must be >= 1")
    if args.maxclients < 1:
        raise KVError(f"--maxclients {args.maxclients}: must be >= 1")
    from ..kv.memory import parse_size
    maxmemory = parse_size(args.maxmemory)
    if maxmemory is None:
        raise KVError(f"--maxmemory {args.maxmemory!r}: a size such as 0, 4096, 100mb or 1gb")
    nic = stack_options(args)
    config = {"bind": args.bind or "127.0.0.1", "port": args.port, "engine": args.engine, "index": args.index,
              "appendonly": args.appendonly, "appendfsync": args.appendfsync, "dir": args.dir,
              "requirepass": args.requirepass, "maxclients": args.maxclients,
              "maxmemory": maxmemory, "maxmemory-policy": args.maxmemory_policy}
    from ..servers.__main__ import raise_nofile
    raise_nofile()
    return serve(config, args.workers, nic)


def stack_options(args):
    """--engine ustack's NIC options (ifname and ip required, --bind refused: the stack's
    address is --ip); on a kernel engine they are refused."""
    from ..kv.serve import STACK, KVError
    given = [f"--{k.replace('_', '-')}" for k in ("ifname", "ip", "mac", "gateway", "tap_kernel_ip", "impair")
             if getattr(args, k) is not None] + (["--offload"] if args.offload else [])
    if args.engine != STACK:
        if given or args.driver != "afpacket":
            raise KVError(f"{', '.join(given) or '--driver'}: only with --engine {STACK} (the stack's NIC)")
        return None
    missing = [o for o in ("--ifname", "--ip") if o not in given]
    if missing:
        raise KVError(f"--engine {STACK} needs {' and '.join(missing)} (the NIC the stack takes, its own address)")
    if args.bind is not None:
        raise KVError(f"--bind {args.bind}: --engine {STACK} listens on the stack's own address, --ip")
    return args


def run_lab(args) -> int:
    import time

    from ..kv.index import INDEXES
    from ..kv.lab import run
    from ..kv.serve import SEPARATE_PROCESSES, STACK, KVError
    from ..labs._kit import LabError
    from ..servers import ENGINES
    from ._common import console, ensure_up, progress, provider_from
    for e in args.engines.split(","):
        if (e not in ENGINES and e != STACK) or e in SEPARATE_PROCESSES:
            raise KVError(f"--engines: {e!r} is not an engine the store runs on")
    for i in args.indexes.split(","):
        if i not in INDEXES:
            raise KVError(f"--indexes: {i!r} is not an index (valid: {', '.join(INDEXES)})")
    if args.fake_runs < 0:
        raise KVError(f"--fake-runs {args.fake_runs}: must be >= 0")
    if (args.requests is not None and args.requests < 100) or (args.fill_keys is not None and args.fill_keys < 200):
        raise KVError(f"--requests {args.requests} / --fill-keys {args.fill_keys}: at least 100 / 200")
    provider = provider_from(args)
    started = time.monotonic()
    with progress(f"kv lab on {provider.lab.name} ({provider.name})") as step:
        ensure_up(provider, args, step)
        try:
            result = run(provider, args, step)
        except LabError as exc:
            raise LabError(f"kv lab: {exc}", hint=exc.hint) from exc
    console.print(f"kv lab done in {time.monotonic() - started:.1f}s; report: {result['report']}")
    missed = result["data"]["not_run"]
    if missed:
        console.print(f"[red]{len(missed)} of {result['data']['requested']} requested servers did not run[/red] "
                      "(a partial report was written):\n  "
                      + "\n  ".join(f"{name} {v['status']}: {v['reason']}" for name, v in missed.items()),
                      soft_wrap=True)
        return 1
    return 0
