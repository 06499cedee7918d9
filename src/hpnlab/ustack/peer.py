"""The Linux side of the interop suite: small kernel-socket tools run on the peer host
(`python -m hpnlab.ustack.peer MODE ...`), each printing one JSON line.

    sink PORT                 accept one connection, read to EOF, report bytes + sha256
    source IP PORT BYTES      connect, send BYTES, shut down, report sha256
    fetch IP PORT             connect, read to EOF (the stack's source), report sha256
    echo IP PORT N SIZE       N round trips of SIZE bytes, report whether every echo matched
    udp IP PORT N             N datagrams to a UDP echo, count the answers
    refused IP PORT           connect to a closed port: expect ECONNREFUSED (an RST)
    simopen IP PORT LPORT AT  connect from LPORT to PORT at time AT (simultaneous open)
    simclose PORT AT          accept one connection, close it at time AT, report TIME-WAIT seen
    concurrent IP PORT N      N connections at once to an echo server, one message each
    zerowin IP PORT HOLD      connect to a source, read nothing for HOLD s (small buffer), then all
    echoload IP PORT N SECS   N connections, each with one 64-byte message in flight: round trips/s
    connrate IP PORT SECS     connect and close, one after another: connections/s
    flood IP SECONDS          ICMP echo as fast as answers come (64 in flight)
    synflood IP PORT N        N SYNs from made-up neighbours (a raw socket) and, once N/4 are out,
                              a real connection with 20 echoes
    fuzz IFNAME MAC IP N      N malformed frames at MAC/IP from IFNAME (AF_PACKET): cut short, bytes
                              flipped, lengths, checksums and TCP options at random
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .bulk import receive_all, send_all


def _out(obj) -> None:
    print(json.dumps(obj), flush=True)


def _accept_one(port: int) -> tuple[socket.socket, str]:
    """Listen on `port`, say so, take one connection."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("", port))
    ls.listen(1)
    _out({"event": "listening", "port": port})
    s, peer = ls.accept()
    ls.close()
    return s, peer[0]


def sink(port: int) -> None:
    s, peer = _accept_one(port)
    t = receive_all(s.recv, 1 << 20)
    s.close()
    _out(t.result("sink", peer=peer))


def source(ip: str, port: int, nbytes: int) -> None:
    s = socket.create_connection((ip, port), timeout=60)
    t = send_all(s.send, nbytes)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
    _out(t.result("source"))


def fetch(ip: str, port: int) -> None:
    s = socket.create_connection((ip, port), timeout=60)
    t = receive_all(s.recv, 1 << 20)
    s.close()
    _out(t.result("fetch"))


def echo(ip: str, port: int, n: int, size: int) -> None:
    s = socket.create_connection((ip, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ok, t0 = 0, time.monotonic()
    for _ in range(n):
        msg = os.urandom(size)
        s.sendall(msg)
        got = b""
        while len(got) < size:
            data = s.recv(size - len(got))
            if not data:
                break
            got += data
        ok += got == msg
    secs = time.monotonic() - t0
    s.close()
    _out({"event": "echo", "round_trips": n, "matched": ok, "secs": round(secs, 4),
          "rps": round(n / secs, 1) if secs else None})


def udp(ip: str, port: int, n: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    ok = 0
    for i in range(n):
        msg = b"udp %d " % i + os.urandom(32)
        s.sendto(msg, (ip, port))
        try:
            data, _ = s.recvfrom(2048)
            ok += data == msg
        except TimeoutError:
            pass
    _out({"event": "udp", "sent": n, "matched": ok})


def refused(ip: str, port: int) -> None:
    s = socket.socket()
    s.settimeout(10)
    err = s.connect_ex((ip, port))
    _out({"event": "refused", "error": errno.errorcode.get(err, str(err)) if err else None})


def simopen(ip: str, port: int, lport: int, at: float) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", lport))
    s.settimeout(15)
    time.sleep(max(0.0, at - time.time()))
    err = s.connect_ex((ip, port))
    if not err:
        s.sendall(b"hello from linux")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            try:
                data = s.recv(4096)
            except OSError:
                break
            if not data:
                break
            got += data
    _out({"event": "simopen", "error": errno.errorcode.get(err, str(err)) if err else None,
          "received": got.decode(errors="replace") if not err else None})
    s.close()


def simclose(port: int, at: float) -> None:
    s, _peer = _accept_one(port)
    time.sleep(max(0.0, at - time.time()))
    s.close()
    time.sleep(1.0)
    import subprocess
    tw = subprocess.run(["ss", "-Htan", "state", "time-wait", f"sport = :{port}"], capture_output=True,
                        text=True, check=False).stdout.strip()
    _out({"event": "simclose", "time_wait": bool(tw), "ss": tw})


def concurrent(ip: str, port: int, n: int) -> None:
    import resource
    import select
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 64)), hard))
    ep = select.epoll()
    socks: dict[int, list[Any]] = {}
    t0 = time.monotonic()
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((ip, port))
        socks[s.fileno()] = [s, b"conn %d " % i + os.urandom(16), b"", False]
        ep.register(s.fileno(), select.EPOLLOUT)
    done = matched = 0
    end = time.monotonic() + 90
    while done < n and time.monotonic() < end:
        for fd, ev in ep.poll(0.5):
            st = socks[fd]
            s, msg = st[0], st[1]
            if ev & (select.EPOLLERR | select.EPOLLHUP) and not st[3]:
                st[3] = True
                done += 1
                ep.unregister(fd)
                continue
            if ev & select.EPOLLOUT:
                s.send(msg)
                ep.modify(fd, select.EPOLLIN)
            elif ev & select.EPOLLIN:
                st[2] += s.recv(4096)
                if len(st[2]) >= len(msg):
                    matched += st[2] == msg
                    done += 1
                    st[3] = True
                    ep.unregister(fd)
    secs = time.monotonic() - t0
    for st in socks.values():
        st[0].close()
    _out({"event": "concurrent", "connections": n, "matched": matched, "secs": round(secs, 3)})


def zerowin(ip: str, port: int, hold: float) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    s.settimeout(60)
    s.connect((ip, port))
    time.sleep(hold)
    t = receive_all(s.recv, 1 << 16)
    s.close()
    _out(t.result("zerowin", held_s=hold))


def echoload(ip: str, port: int, n: int, seconds: float) -> None:
    import select
    ep = select.epoll()
    msg = b"x" * 64
    socks: dict[int, list[Any]] = {}
    for _ in range(n):
        s = socket.create_connection((ip, port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks[s.fileno()] = [s, 0]
        ep.register(s.fileno(), select.EPOLLIN)
        s.send(msg)
    done, t0 = 0, time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        for fd, _ in ep.poll(0.2):
            st = socks[fd]
            try:
                st[1] += len(st[0].recv(65536))
            except BlockingIOError:
                continue
            while st[1] >= len(msg):
                st[1] -= len(msg)
                done += 1
                st[0].send(msg)
    secs = time.monotonic() - t0
    for st in socks.values():
        st[0].close()
    _out({"event": "echoload", "connections": n, "round_trips": done, "rps": round(done / secs, 1)})


def connrate(ip: str, port: int, seconds: float) -> None:
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        s = socket.create_connection((ip, port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()                # RST: no TIME_WAIT piling up on the client
        n += 1
    secs = time.monotonic() - t0
    _out({"event": "connrate", "connections": n, "per_s": round(n / secs, 1)})


def flood(ip: str, seconds: float, window: int = 64) -> None:
    """ping -f's idea with up to WINDOW echoes in flight (a raw ICMP socket): each reply
    sends the next request; an idle 0.2 s refills the window. Reports replies per second."""
    import select
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setblocking(False)
    ident = os.getpid() & 0xFFFF
    target = socket.inet_aton(ip)

    def request(seq: int) -> None:
        body = b"hpnlab flood" + bytes(44)
        head = bytes((8, 0, 0, 0)) + ident.to_bytes(2, "big") + (seq & 0xFFFF).to_bytes(2, "big")
        total = int.from_bytes(head + body, "big") % 0xFFFF
        s.sendto(head[:2] + (~total & 0xFFFF).to_bytes(2, "big") + head[4:] + body, (ip, 0))
    sent = got = lost = 0
    end = time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < end:
        while sent - got - lost < window:
            request(sent)
            sent += 1
        if not select.select([s], [], [], 0.2)[0]:
            lost = sent - got           # 0.2 s of silence: whatever is out is lost
            continue
        try:
            while True:
                pkt = s.recv(2048)
                ihl = (pkt[0] & 15) * 4
                if pkt[12:16] == target and pkt[ihl] == 0 and int.from_bytes(pkt[ihl + 4:ihl + 6], "big") == ident:
                    got += 1
        except BlockingIOError:
            pass
    secs = time.monotonic() - t0
    _out({"event": "flood", "sent": sent, "replies": got, "secs": round(secs, 3),
          "replies_per_s": round(got / secs, 1)})


def synflood(ip: str, port: int, n: int) -> None:
    """The client starts when a quarter of the flood is out (by count, not by time: 5,000
    SYNs from a raw socket take ~40 ms on an idle machine, less than any sleep one could
    choose), and the flood waits for its word before going on, so the client's SYN always
    leaves in the middle of the flood, after the half-open queue has filled."""
    import random
    import threading

    from .proto import ipv4
    from .proto.tcp import segment as tcpseg
    dst = socket.inet_aton(ip)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)     # IP_HDRINCL implied
    rng = random.Random(n)
    start_after = max(1, n // 4)
    sent, send_errors = [0], [0]
    quarter_out, client_going = threading.Event(), threading.Event()

    def flood() -> None:                                    # as fast as a raw socket goes
        for i in range(n):
            if i == start_after:
                quarter_out.set()
                client_going.wait(30)
            src = dst[:3] + bytes([200 + i % 50])           # addresses nobody on the LAN has
            seg = tcpseg.build(src, dst, rng.randrange(1024, 65536), port, rng.getrandbits(32), 0, tcpseg.SYN,
                               64240, b"", tcpseg.options(mss=1460, wscale=7, ts=(i, 0)))
            try:
                raw.sendto(ipv4.build(src, dst, ipv4.TCP, seg, i & 0xFFFF), (ip, 0))
                sent[0] += 1
            except OSError:
                send_errors[0] += 1
        quarter_out.set()                                   # n too small to reach start_after
    t = threading.Thread(target=flood)
    t.start()
    quarter_out.wait(30)
    at_start = sent[0]
    client_going.set()
    t0 = time.monotonic()
    matched, error, at_end, connect_secs = 0, None, None, None
    try:
        # 60 s a call: a slow host (an emulated VM) drops the client's segments in its ring with
        # the flood's, and TCP's backed-off retransmissions then take a while
        s = socket.create_connection((ip, port), timeout=60)
        connect_secs = time.monotonic() - t0
        at_end = sent[0]
        for i in range(20):
            msg = b"through the flood %d" % i
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                data = s.recv(100)
                if not data:
                    raise ConnectionError(f"the stack closed the connection after {matched} echoes")
                got += data
            matched += got == msg
        s.close()
    except OSError as exc:              # connect_secs says whether it got as far as connecting
        error = f"{type(exc).__name__}: {exc}"
    t.join()
    _out({"event": "synflood", "sent": sent[0], "send_errors": send_errors[0],
          "connect_secs": None if connect_secs is None else round(connect_secs, 4),
          "sent_when_connecting": at_start, "sent_when_connected": at_end, "matched": matched, "error": error})


def fuzz(ifname: str, mac: str, ip: str, n: int) -> None:
    import random

    from .fuzz import mutate
    from .proto import ether, icmp, ipv4, udp
    from .proto.tcp import segment as tcpseg
    dst_mac = bytes(int(x, 16) for x in mac.split(":"))
    src_mac = bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text().strip().replace(":", ""))
    dst = socket.inet_aton(ip)
    src = bytes(dst[:3]) + bytes([250])              # a made-up neighbour on the same subnet
    rng = random.Random(n)
    seeds = [
        ipv4.build(src, dst, ipv4.TCP, tcpseg.build(src, dst, 40000, 7, 1, 0, tcpseg.SYN, 1000, b"",
                                                    tcpseg.options(mss=1460, wscale=7, ts=(1, 0))), 1),
        ipv4.build(src, dst, ipv4.TCP, tcpseg.build(src, dst, 40001, 7, 5, 9, tcpseg.ACK, 1000, b"d" * 100), 2),
        ipv4.build(src, dst, ipv4.UDP, udp.build(src, dst, 5000, 7, b"u" * 60), 3),
        ipv4.build(src, dst, ipv4.ICMP, icmp.build(icmp.ECHO_REQUEST, 0, b"\0\1\0\1", b"p" * 56), 4),
        *ipv4.fragment(src, dst, ipv4.UDP, udp.build(src, dst, 5000, 9, b"f" * 3000), 5, 1500),
    ]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    sent = 0
    frames = [ether.build(dst_mac, src_mac, ether.TYPE_IPV4, seed) for seed in seeds]
    for i in range(n):
        f = mutate(rng.choice(frames), rng, i)
        if len(f) < 14:
            continue
        try:
            s.send(f)
            sent += 1
        except OSError:
            pass
    _out({"event": "fuzz", "sent": sent})


MODES: dict[str, tuple[Any, ...]] = {                # mode: (function, argument types)
    "sink": (sink, int), "source": (source, str, int, int), "fetch": (fetch, str, int),
    "echo": (echo, str, int, int, int), "udp": (udp, str, int, int), "refused": (refused, str, int),
    "simopen": (simopen, str, int, int, float), "simclose": (simclose, int, float),
    "concurrent": (concurrent, str, int, int), "zerowin": (zerowin, str, int, float),
    "echoload": (echoload, str, int, int, float), "connrate": (connrate, str, int, float),
    "flood": (flood, str, float), "fuzz": (fuzz, str, str, str, int), "synflood": (synflood, str, int, int),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(f"mode {argv[0] if argv else ''!r}: one of {', '.join(MODES)}; see the module's docstring",
              file=sys.stderr)
        return 2
    fn, *types = MODES[argv[0]]
    if len(argv) - 1 != len(types):
        print(f"{argv[0]} takes {len(types)} arguments, not {len(argv) - 1}", file=sys.stderr)
        return 2
    fn(*(t(a) for t, a in zip(types, argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
