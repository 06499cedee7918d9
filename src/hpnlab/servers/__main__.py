"""python -m hpnlab.servers ENGINE --port P [--host H] [--workers N] [--protocol echo]

Runs one engine until SIGTERM/SIGINT, then closes everything and exits 0.
Exit status 2: bad arguments or unknown engine; 3: the engine cannot run
here (port in use, no io_uring, ...). One line "listening ..." on stderr
says the server is ready.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys

from . import ENGINES, EngineError, Server, engine_class, listen
from .protocols import get as get_protocol
from .protocols import names as protocol_names


def raise_nofile() -> None:
    """10k connections need more than the default 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_one(cls: type[Server], host: str, port: int, protocol: str, reuseport: bool, workers: int = 1) -> int:
    listener = listen(host, port, reuseport=reuseport)
    server = cls(listener, get_protocol(protocol), workers)
    extra = f" workers={workers}" if cls.parallel else ""
    print(f"listening {host}:{port} engine={cls.name}{extra} pid={os.getpid()}", file=sys.stderr, flush=True)
    server.serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpnlab.servers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", metavar="ENGINE", help=f"one of: {', '.join(ENGINES)}")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=None,
                   help="epoll-threads/-acceptor/-procs: their N threads or processes (default: the "
                        "CPU count); other engines: N forked copies sharing the port with "
                        "SO_REUSEPORT (multi-core mode; default 1)")
    p.add_argument("--protocol", default="echo", help=f"one of: {', '.join(protocol_names())}")
    args = p.parse_args(argv)
    if args.engine not in ENGINES:
        print(f"hpnlab.servers: unknown engine {args.engine!r} (valid: {', '.join(ENGINES)})", file=sys.stderr)
        return 2
    if args.protocol not in protocol_names():
        print(f"hpnlab.servers: unknown protocol {args.protocol!r} (valid: {', '.join(protocol_names())})",
              file=sys.stderr)
        return 2
    if not 0 < args.port < 65536 or (args.workers is not None and args.workers < 1):
        print("hpnlab.servers: --port must be 1..65535 and --workers >= 1", file=sys.stderr)
        return 2
    raise_nofile()
    try:
        cls = engine_class(args.engine)
        reason = cls.unavailable()
        if reason:
            raise EngineError(f"engine {args.engine} is unavailable here: {reason}")
        if cls.parallel:
            return serve_one(cls, args.host, args.port, args.protocol, True, args.workers or os.cpu_count() or 1)
        if (args.workers or 1) == 1:
            return serve_one(cls, args.host, args.port, args.protocol, False)
        listen(args.host, args.port, reuseport=True).close()     # the port checked once, in the parent
        from ..coro.multicore import run_workers
        return run_workers(args.workers, lambda i: serve_one(cls, args.host, args.port, args.protocol, True))
    except EngineError as exc:
        print(f"hpnlab.servers: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
