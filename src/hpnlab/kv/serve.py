"""`hpnlab kv serve`: the store on one of hpnlab.servers' I/O engines, in the foreground.

The store is one Server; the engine drives one Client (the sans-I/O handler)
per connection. Engines that run Python on several threads (threads,
epoll-threads, epoll-acceptor) share the one store under one lock; epoll-procs
(N processes) and --workers on the others would be N separate stores, so they
are refused.
"""
from __future__ import annotations

import os
import sys

from ..errors import HpnlabError
from ..servers import ENGINES, EngineError, engine_class, listen
from . import commands  # noqa: F401  (registers the commands)
from .core import Client, Server
from .index import INDEXES

THREADED = {"threads", "epoll-threads", "epoll-acceptor"}
SEPARATE_PROCESSES = {"epoll-procs"}


class KVError(HpnlabError):
    exit_code = 2


class Rejected:
    """The handler of a connection over maxclients: Redis's error, then close."""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        return b"-ERR max number of clients reached\r\n", True


class KVProtocol:
    name = "kv"

    def __init__(self, server: Server):
        self.server = server

    def new(self) -> Client | Rejected:
        srv = self.server
        with srv.lock:
            srv.connections_received += 1
            if len(srv.clients) >= srv.config["maxclients"]:
                srv.rejected_connections += 1
                return Rejected()
            return srv.new_client()


def check(engine: str, index: str, workers: int | None) -> None:
    if engine not in ENGINES:
        raise KVError(f"--engine {engine!r} is not an engine (valid: {', '.join(ENGINES)})")
    if engine in SEPARATE_PROCESSES:
        raise KVError(f"--engine {engine} runs N processes that share no memory: that would be N "
                      f"separate stores (use epoll-threads for one store on N threads)")
    if index not in INDEXES:
        raise KVError(f"--index {index!r} is not an index (valid: {', '.join(INDEXES)})")
    if workers is not None and workers > 1 and not engine_class(engine).parallel:
        raise KVError(f"--workers {workers}: engine {engine} would fork {workers} separate stores; "
                      f"only epoll-threads and epoll-acceptor run N workers on one store")


def build(config: dict) -> Server:
    """The store with its persistence loaded (AOF if appendonly, else the RDB file)."""
    from .persist import aof, rdb
    srv = Server(**config)
    srv.threaded = config["engine"] in THREADED
    os.makedirs(srv.config["dir"], exist_ok=True)
    if srv.config["appendonly"] == "yes":
        aof.load(srv)
        aof.set_appendonly(srv, True)
    else:
        rdb.load(srv)
    if srv.memory is not None:
        srv.memory.recount()
    return srv


def serve(config: dict, workers: int | None = None) -> int:
    engine = config["engine"]
    check(engine, config["index"], workers)
    cls = engine_class(engine)
    reason = cls.unavailable()
    if reason:
        raise KVError(f"engine {engine} is unavailable here: {reason}", exit_code=3)
    srv = build(config)
    try:
        listener = listen(config["bind"], config["port"], reuseport=cls.parallel)
    except EngineError as exc:
        raise KVError(str(exc), exit_code=3) from None
    n = (workers or os.cpu_count() or 1) if cls.parallel else 1
    server = cls(listener, KVProtocol(srv), n)
    print(f"listening {config['bind']}:{config['port']} engine={engine} index={config['index']} "
          f"pid={os.getpid()}", file=sys.stderr, flush=True)
    try:
        server.serve()
    finally:
        if srv.aof is not None:
            srv.aof.close()
    return 0
