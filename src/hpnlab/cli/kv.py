"""`hpnlab kv serve …` — the Redis-compatible KV store (course §9.1) on an I/O engine.

    hpnlab kv serve --port 6380 --engine uvloop --index skiplist --appendonly yes --dir /tmp/kv
"""
from __future__ import annotations

HELP = "the KV store: serve RESP2/RESP3 (redis-cli, redis-benchmark, redis-py) on an I/O engine"


def add_arguments(parser) -> None:
    from ..kv.index import INDEXES
    from ..servers import ENGINES
    sub = parser.add_subparsers(dest="kv_cmd", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run the store in the foreground until SIGTERM/SIGINT")
    serve.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=6379)
    serve.add_argument("--engine", default="epoll-lt", choices=list(ENGINES), help="I/O engine (default epoll-lt)")
    serve.add_argument("--index", default="hash", choices=list(INDEXES), help="keyspace index (default hash)")
    serve.add_argument("--workers", type=int, help="epoll-threads/epoll-acceptor: threads (default: CPUs)")
    serve.add_argument("--appendonly", default="no", choices=("yes", "no"))
    serve.add_argument("--appendfsync", default="everysec", choices=("always", "everysec", "no"))
    serve.add_argument("--dir", default=".", help="directory of appendonly.aof and dump.rdb")
    serve.add_argument("--requirepass", default="", metavar="PW")
    serve.add_argument("--maxclients", type=int, default=10000)
    serve.add_argument("--maxmemory", type=int, default=0, metavar="BYTES")
    serve.add_argument("--maxmemory-policy", default="noeviction",
                       choices=("noeviction", "allkeys-random", "volatile-random", "allkeys-lru", "volatile-ttl"))


def run(args) -> int:
    from ..kv.serve import KVError, serve
    if not 0 < args.port < 65536:
        raise KVError(f"--port {args.port}: must be 1..65535")
    if args.workers is not None and args.workers < 1:
        raise KVError(f"--workers {args.workers}: must be >= 1")
    if args.maxclients < 1 or args.maxmemory < 0:
        raise KVError("--maxclients must be >= 1 and --maxmemory >= 0")
    config = {"bind": args.bind, "port": args.port, "engine": args.engine, "index": args.index,
              "appendonly": args.appendonly, "appendfsync": args.appendfsync, "dir": args.dir,
              "requirepass": args.requirepass, "maxclients": args.maxclients, "maxmemory": args.maxmemory,
              "maxmemory-policy": args.maxmemory_policy}
    from ..servers.__main__ import raise_nofile
    raise_nofile()
    return serve(config, args.workers)
