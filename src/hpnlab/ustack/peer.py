"""The Linux side of the interop suite: small kernel-socket tools run on the peer host
(`python -m hpnlab.ustack.peer MODE ...`), each printing one JSON line.

    sink PORT                 accept one connection, read to EOF, report bytes + sha256
    source IP PORT BYTES      connect, send BYTES, shut down, report sha256
    fetch IP PORT             connect, read to EOF (the stack's source), report sha256
    echo IP PORT N SIZE       N round trips of SIZE bytes, report whether every echo matched
    udp IP PORT N             N datagrams to a UDP echo, count the answers
    refused IP PORT           connect to a closed port: expect ECONNREFUSED (an RST)
    simopen IP PORT LPORT QUEUE  hold the peer's SYN to LPORT (NFQUEUE QUEUE), connect from LPORT to
                              PORT: the SYNs cross; say hello, read to EOF; report Linux's states
    simclose PORT QUEUE       accept one connection, hold the peer's FIN (NFQUEUE QUEUE) until Linux
                              has closed too: the FINs cross; report Linux's states (CLOSING, TIME-WAIT)
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


def simopen(ip: str, port: int, lport: int, queue: int) -> None:
    """A simultaneous open that does not hang on timing: the peer connects from `port` to
    LPORT first, and its SYN and everything after it are held in NFQUEUE `queue` (a rule
    hands LPORT's inbound segments there) before Linux's TCP sees them. Linux then
    connects from LPORT to the peer's `port`: its SYN meets a peer in SYN_SENT (which
    answers with a SYN-ACK, held too). The peer's SYN alone is let in (Linux: SYN_SENT ->
    SYN_RECV, its SYN-ACK), then the rest (Linux: ESTABLISHED). Then Linux says hello,
    closes its side and reads the peer's data to its FIN. Reports Linux's states."""
    hold = Hold(queue, SYN)
    states = States(lport, hold)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", lport))
    s.setblocking(False)
    _out({"event": "ready", "port": lport})
    err: int | None = errno.ETIMEDOUT
    got = b""
    try:
        if states.until(lambda _st: hold.first is not None, 120):        # the peer's SYN is held
            states.peer = (ip, port)
            s.connect_ex((ip, port))            # Linux's SYN leaves: SYN_SENT
            states.until(lambda st: st == "SYN_SENT", 5)
            hold.release_first()                # the peer's SYN alone: SYN_RECV
            states.until(lambda st: st == "SYN_RECV", 10)
            hold.release_all()                  # the rest (the peer's SYN-ACK): ESTABLISHED
            states.until(lambda st: st not in ("SYN_SENT", "SYN_RECV"), 10)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not err and states.seen[-1:] != ["ESTABLISHED"]:
                err = errno.ETIMEDOUT
        hold.close()                            # nothing reads the queue from here on
        if not err:
            s.setblocking(True)
            s.settimeout(15)
            s.sendall(b"hello from linux")
            s.shutdown(socket.SHUT_WR)
            while True:
                try:
                    data = s.recv(4096)
                except OSError:
                    break
                if not data:
                    break
                got += data
    finally:
        s.close()
        hold.close()
    _out({"event": "simopen", "error": errno.errorcode.get(err, str(err)) if err else None,
          "peer_syn_held": hold.first is not None, "held": hold.held, "states": states.seen,
          "received": got.decode(errors="replace") if not err else None})


# /proc/net/tcp's state numbers (include/net/tcp_states.h)
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 11: "CLOSING"}


def tcp_state(port: int, peer: tuple[str, int], text: str | None = None) -> str | None:
    """The state of the kernel's connection from local `port` to `peer`, from
    /proc/net/tcp: a closed socket stays listed there through FIN_WAIT1, CLOSING and
    TIME_WAIT, and reading it costs no process (ss under TCG costs ~0.1 s)."""
    # addresses as the kernel prints them: the 32-bit word in host order (x86: reversed)
    remote = f"{socket.inet_aton(peer[0])[::-1].hex().upper()}:{peer[1]:04X}"
    for line in (text if text is not None else Path("/proc/net/tcp").read_text()).splitlines()[1:]:
        f = line.split()
        if len(f) > 3 and f[1].endswith(f":{port:04X}") and f[2] == remote:
            st = int(f[3], 16)
            return TCP_STATES.get(st, str(st))
    return None


FIN, SYN = 0x01, 0x02


def tcp_flags(packet: bytes) -> int:
    """The TCP flags of an IPv4 packet (an NFQUEUE copy from the IP header on); 0 if it
    is not TCP or too short to say."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
        return 0
    ihl = (packet[0] & 0x0F) * 4
    return packet[ihl + 13] if len(packet) > ihl + 13 else 0


class Hold:
    """One port's inbound segments from an NFQUEUE: let through at once until the first
    one with `flag` (a SYN, a FIN), which is held with everything after it until
    released: the first alone, then the rest."""

    def __init__(self, queue: int, flag: int):
        from ..impair.delayq import Queue
        self.q = Queue(queue, copy_range=64)
        self.flag = flag
        self.first: int | None = None       # the held segment's packet id
        self.last: int | None = None
        self.holding, self.held = True, 0

    def poll(self, timeout: float) -> None:
        import select
        if not select.select([self.q.sock], [], [], timeout)[0]:
            return
        for pid, packet in self.q.packets(self.q.sock.recv(1 << 16)):
            self.last = pid
            if self.holding and self.first is None and tcp_flags(packet) & self.flag:
                self.first = pid
            if self.holding and self.first is not None:
                self.held += 1
            else:
                self.q.accept_through(pid)

    def release_first(self) -> None:
        if self.first is not None:
            self.q.accept_through(self.first)   # every id before it went through already

    def release_all(self) -> None:
        self.holding = False
        if self.last is not None:
            self.q.accept_through(self.last)

    def close(self) -> None:
        """Let everything through and leave the queue: the rule's bypass then lets the
        port's segments straight in (a packet queued in between is dropped as the queue
        goes, and retransmitted)."""
        if self.q.sock.fileno() < 0:
            return
        self.release_all()
        self.poll(0)
        self.q.sock.close()


class States:
    """The states the kernel's connection from `port` to a peer goes through, looked at
    while a Hold runs."""

    def __init__(self, port: int, hold: Hold):
        self.port, self.hold = port, hold
        self.peer: tuple[str, int] | None = None
        self.seen: list[str] = []

    def until(self, done, secs: float) -> bool:
        end = time.monotonic() + secs
        while True:
            st = tcp_state(self.port, self.peer) if self.peer else None
            if st and (not self.seen or self.seen[-1] != st):
                self.seen.append(st)
            if done(st) or time.monotonic() >= end:
                return done(st)
            self.hold.poll(0.01)


def simclose(port: int, queue: int) -> None:
    """A simultaneous close that does not hang on timing: accept one connection on PORT;
    the peer closes first, and its FIN and everything after it are held in NFQUEUE
    `queue` (a rule hands this port's inbound segments there) before Linux's TCP sees
    them. Linux then closes: its FIN leaves while the peer's is in flight, so each FIN
    meets a peer in FIN_WAIT_1 and neither acknowledges the other. The peer's FIN alone
    is let in (Linux: CLOSING, its own FIN not yet acknowledged), then the rest (Linux:
    TIME_WAIT). Reports the states Linux went through, from /proc/net/tcp."""
    hold = Hold(queue, FIN)
    states = States(port, hold)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("", port))
    ls.listen(1)
    ls.setblocking(False)
    _out({"event": "listening", "port": port})
    conn = None
    t0 = time.monotonic()

    def connected_and_fin(_st) -> bool:
        nonlocal conn
        if conn is None:
            try:
                conn, states.peer = ls.accept()
            except BlockingIOError:
                pass
        return conn is not None and hold.first is not None

    try:
        if states.until(connected_and_fin, 120) and conn is not None:    # the peer's FIN is held
            conn.close()                        # Linux's FIN leaves: FIN_WAIT1
            states.until(lambda st: st == "FIN_WAIT1", 5)
            hold.release_first()                # the peer's FIN alone: CLOSING
            states.until(lambda st: st == "CLOSING", 10)
            hold.release_all()                  # the rest (the peer's ACK of Linux's FIN): TIME_WAIT
            states.until(lambda st: st == "TIME_WAIT", 10)
    finally:
        if conn is not None:
            conn.close()
        ls.close()
        hold.close()
    _out({"event": "simclose", "connected": conn is not None, "peer_fin_held": hold.first is not None,
          "held": hold.held, "states": states.seen, "secs": round(time.monotonic() - t0, 3)})


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
    "simopen": (simopen, str, int, int, int), "simclose": (simclose, int, int),
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
