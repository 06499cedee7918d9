"""`hpnlab kv serve`: the store on one of hpnlab.servers' I/O engines, in the foreground.

The store is one Server; the engine drives one Client (the sans-I/O handler)
per connection. Engines that run Python on several threads (threads,
epoll-threads, epoll-acceptor) share the one store under one lock; epoll-procs
(N processes) and --workers on the others would be N separate stores, so they
are refused.

--engine ustack serves on the user-space TCP/IP stack (hpnlab.ustack) instead of the
kernel's: the stack takes a NIC (--ifname, with its own --ip and MAC) and the epoll-lt
engine's Reactor runs on the stack's epoll (ustack.engine.StackReactor), one thread.
"""
from __future__ import annotations

import os
import sys

from ..errors import HpnlabError
from ..servers import BACKLOG, ENGINES, EngineError, engine_class, listen
from . import commands  # noqa: F401  (registers the commands)
from .core import Client, Server
from .index import INDEXES

THREADED = {"threads", "epoll-threads", "epoll-acceptor"}
SEPARATE_PROCESSES = {"epoll-procs"}
STACK = "ustack"      # not a kernel engine: the user-space stack under the epoll-lt Reactor


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
    if engine not in ENGINES and engine != STACK:
        raise KVError(f"--engine {engine!r} is not an engine (valid: {', '.join([*ENGINES, STACK])})")
    if engine in SEPARATE_PROCESSES:
        raise KVError(f"--engine {engine} runs N processes that share no memory: that would be N "
                      f"separate stores (use epoll-threads for one store on N threads)")
    if index not in INDEXES:
        raise KVError(f"--index {index!r} is not an index (valid: {', '.join(INDEXES)})")
    if workers is not None and workers > 1 and (engine == STACK or not engine_class(engine).parallel):
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


def serve(config: dict, workers: int | None = None, nic=None) -> int:
    """Serve until SIGTERM/SIGINT. `nic`: the stack's options (ustack.run.add_nic_arguments)
    for --engine ustack."""
    engine = config["engine"]
    check(engine, config["index"], workers)
    if engine == STACK:
        return serve_on_stack(config, nic)
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
    _run(server, srv)
    return 0


def _run(server, srv: Server) -> None:
    try:
        server.serve()
    finally:
        if srv.aof is not None:
            srv.aof.close()


def serve_on_stack(config: dict, nic) -> int:
    """The store on the user-space stack: the stack opens the NIC, announces its address
    (gratuitous ARP) and serves the port on its own sockets; at the end its closing
    connections get their FINs out before the NIC is let go, as the stack's own apps do."""
    from ..ustack.engine import StackReactor
    from ..ustack.errors import SocketError
    from ..ustack.run import open_net
    try:
        net, driver = open_net(nic)
    except SystemExit as exc:           # the stack's refusal of an option, naming it
        raise KVError(str(exc.code), exit_code=3) from None
    try:
        srv = build(config)
        net.stack.gratuitous_arp()
        net.loop.flush()
        listener = net.socket()
        try:
            listener.bind(("", config["port"]))
            listener.listen(BACKLOG)
        except SocketError as exc:
            raise KVError(f"--port {config['port']} on the stack: {exc}", exit_code=3) from None
        server = StackReactor(net, listener, KVProtocol(srv))
        print(f"listening {nic.ip.split('/')[0]}:{config['port']} engine={STACK} ({nic.driver} on {nic.ifname}) "
              f"index={config['index']} pid={os.getpid()}", file=sys.stderr, flush=True)
        _run(server, srv)
        tcp = net.stack.tcp
        net.wait(lambda: all(c.state == "TIME_WAIT" for c in tcp.conns.values()), 5)
    finally:
        driver.close()
    return 0
