"""UDP 并发 (the course's question "UDP 并发如何做？"): three ways one UDP echo service serves
many peers, and a closed-loop load of many clients to measure them.

    single      one socket, one loop: recvfrom / sendto; every peer's datagrams queue on it
    reuseport   N processes, each its own SO_REUSEPORT socket on the same port; the kernel
                hashes each datagram's 4-tuple to one of them (a peer sticks to one worker)
    connected   one unconnected socket takes a new peer's first datagram; then a socket
                bound to the same port and connect()ed to that peer, which the kernel's
                lookup prefers (it matches more of the 4-tuple): per-peer sockets, one epoll

`serve()` runs one of them for some seconds and returns what each socket/worker answered
and the server's CPU time; `load()` runs C clients (one socket each, one request in
flight each) and returns replies, the request rate and latency percentiles.
"""
from __future__ import annotations

import os
import resource
import select
import socket
import struct
import time

VARIANTS = ("single", "reuseport", "connected")
REQ = struct.Struct("<IQ")          # client index, send time (ns)


def _udp(port: int, reuseport: bool = False, reuseaddr: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if reuseaddr:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    return s


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _echo_loop(socks: list[socket.socket], seconds: float, listener: socket.socket | None = None,
               port: int = 0, idle: float = 0.5) -> tuple[list[int], float]:
    """Echo on `socks` until `seconds` pass or, once datagrams came, none has for `idle` s;
    with a `listener`, each new peer's first datagram there gets its own connected socket.
    Returns the datagrams answered per socket, and the seconds from the first to the last."""
    ep = select.epoll()
    by_fd: dict[int, int] = {}
    counts: list[int] = []

    def add(s: socket.socket) -> None:
        s.setblocking(False)
        by_fd[s.fileno()] = len(counts)
        counts.append(0)
        ep.register(s.fileno(), select.EPOLLIN)
    for s in socks:
        add(s)
    if listener is not None:
        add(listener)
    fds = {s.fileno(): s for s in [*socks, *([listener] if listener else [])]}
    peers: set[tuple[str, int]] = set()
    deadline = time.monotonic() + seconds
    first = last = 0.0
    while (left := deadline - time.monotonic()) > 0:
        events = ep.poll(min(left, 0.2))
        if events:
            last = time.monotonic()
            first = first or last
        elif last and time.monotonic() - last > idle:       # the load is over
            break
        for fd, _ in events:
            s = fds[fd]
            for _ in range(64):                  # a batch per wake-up, then let others in
                try:
                    data, peer = s.recvfrom(2048)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:   # a connected peer has gone (ICMP): not an error
                    continue
                if s is listener and peer not in peers:
                    peers.add(peer)
                    c = _udp(port, reuseaddr=True)
                    c.connect(peer)
                    add(c)
                    fds[c.fileno()] = c
                    c.send(data)
                    counts[by_fd[c.fileno()]] += 1
                    continue
                s.sendto(data, peer)
                counts[by_fd[fd]] += 1
    for s in fds.values():
        s.close()
    ep.close()
    return counts, last - first


def serve(variant: str, port: int, seconds: float, workers: int = 2) -> dict:
    """Run the echo service `variant` for at most `seconds`, until its load has been over for
    half a second; {per_socket, answered, cpu_s, sockets, active_s (first datagram to last)}."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: one of {', '.join(VARIANTS)}")
    cpu0 = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)
    if variant == "single":
        per, active = _echo_loop([_udp(port)], seconds)
    elif variant == "connected":
        listener = _udp(port, reuseaddr=True)
        per, active = _echo_loop([], seconds, listener, port)
    else:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        socks = [_udp(port, reuseport=True) for _ in range(workers)]   # all bound before any runs
        pipes, pids = [], []
        for s in socks:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:                     # the worker: its own socket, its own loop
                os.close(r)
                for other in socks:
                    if other is not s:
                        other.close()
                counts, busy = _echo_loop([s], seconds)
                os.write(w, f"{counts[0]} {busy}".encode())
                os._exit(0)
            os.close(w)
            s.close()
            pipes.append(r)
            pids.append(pid)
        per, active = [], 0.0
        for r, pid in zip(pipes, pids):
            with os.fdopen(r) as f:
                n, took = (f.read() or "0 0").split()
            per.append(int(n))
            active = max(active, float(took))
            os.waitpid(pid, 0)
    cpu = _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN) - cpu0
    return {"variant": variant, "per_socket": per, "answered": sum(per), "sockets": len(per),
            "cpu_s": round(cpu, 3), "active_s": round(active, 3)}


def load(host: str, port: int, clients: int, seconds: float, warmup: float = 0.3) -> dict:
    """`clients` sockets, each one request in flight, for `seconds` (after `warmup`)."""
    if clients < 1:
        raise ValueError(f"clients must be at least 1, not {clients}")
    ep = select.epoll()
    socks = []
    for _ in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        socks.append(s)
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    lat_us: list[int] = []
    replies = lost = 0
    sent_at = [0] * clients
    def send(i: int, t_ns: int) -> None:
        sent_at[i] = t_ns
        try:
            socks[i].send(REQ.pack(i, t_ns))
        except (BlockingIOError, ConnectionRefusedError):   # dropped: resent once it is stale
            pass
    for i in range(clients):
        send(i, time.monotonic_ns())
    start = time.monotonic() + warmup
    end = start + seconds
    next_check = time.monotonic() + 0.1
    while (now := time.monotonic()) < end:
        events = ep.poll(0.05)
        t_ns = time.monotonic_ns()
        for fd, _ in events:
            i = by_fd[fd]
            s = socks[i]
            try:
                data = s.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            _, ts = REQ.unpack_from(data)
            if now >= start:
                replies += 1
                lat_us.append((t_ns - ts) // 1000)
            send(i, time.monotonic_ns())
        if now >= next_check:               # a request or reply was dropped: resend the stale
            next_check = now + 0.1
            t_ns = time.monotonic_ns()
            for i in range(clients):
                if t_ns - sent_at[i] > 200_000_000:
                    lost += 1
                    send(i, t_ns)
    for s in socks:
        s.close()
    ep.close()
    lat_us.sort()
    n = len(lat_us)
    return {"clients": clients, "replies": replies, "rate": round(replies / seconds), "resent": lost,
            "p50_us": lat_us[n // 2] if n else None, "p99_us": lat_us[min(n - 1, n * 99 // 100)] if n else None}
