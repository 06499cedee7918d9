"""Applications on the stack's socket API and epoll: echo, discard, bulk sink and
source (sha256 of every byte), a small HTTP/1.1 server, UDP echo; and clients: bulk
source/sink to a listener, ping, and a connect from a fixed port at an agreed moment
(simultaneous open). Each reports JSON lines through `report`."""
from __future__ import annotations

import errno
import os
import time

from .bulk import CHUNK, Transfer, receive_all, send_all
from .epoll import EPOLLERR, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Epoll
from .errors import SocketError
from .sockets import SOCK_DGRAM, Socket


class Handler:
    """One accepted connection: bytes in, bytes out, non-blocking."""

    def __init__(self, sock, report, args):
        self.sock, self.report, self.args = sock, report, args
        self.out = bytearray()
        self.done = False

    def on_data(self, data: bytes) -> None: ...
    def on_eof(self) -> None:
        self.finish()

    def want_write(self) -> bool:
        return bool(self.out)

    def on_writable(self) -> None:
        if self.out:
            try:
                n = self.sock.send(self.out)
                del self.out[:n]
            except SocketError as exc:
                if exc.errno != errno.EAGAIN:
                    self.done = True

    def finish(self) -> None:
        if not self.out:
            self.done = True


class Echo(Handler):
    def on_data(self, data):
        self.out += data


class Discard(Handler):
    pass


class Sink(Handler):
    def __init__(self, *a):
        super().__init__(*a)
        self.t = Transfer()

    def on_data(self, data):
        self.t.hash.update(data)
        self.t.bytes += len(data)

    def finish(self):
        self.report(self.t.result("sink", peer=self.sock.getpeername()[0] if self.sock.conn else None))
        self.done = True


class Source(Handler):
    """Sends --bytes to whoever connects, then closes; reports what it sent."""

    def __init__(self, *a):
        super().__init__(*a)
        self.t = Transfer()
        self.shut = False           # shutdown(SHUT_WR) once everything is queued
        if self.sock.conn is not None and self.args.trace:
            self.sock.conn.trace = []

    @property
    def left(self) -> int:
        return self.args.bytes - self.t.bytes

    def want_write(self):
        return self.left > 0 or bool(self.out)

    def on_writable(self):
        while self.left > 0:
            chunk = CHUNK[:self.left] if self.left < len(CHUNK) else CHUNK
            try:
                n = self.sock.send(chunk)
            except SocketError as exc:          # EAGAIN: the send buffer is full, wait for EPOLLOUT
                if exc.errno != errno.EAGAIN:
                    self.done = True
                return
            self.t.hash.update(chunk[:n])
            self.t.bytes += n
        if not self.shut:
            self.shut = True
            self.sock.shutdown(1)

    def on_eof(self):
        # the peer closed after reading everything: only now is the transfer over (what
        # was queued may have waited out a zero window)
        if self.left <= 0:
            self.report(self.t.result("source", conn=_conn_summary(self.sock.conn)))
            self.done = True


class Http(Handler):
    def __init__(self, *a):
        super().__init__(*a)
        self.buf = bytearray()
        self.closing = False        # close once the reply is sent

    def on_data(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
            self.buf = bytearray(rest)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self.out += b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                self.closing = True
                return
            body = f"hello from the hpnlab user-space stack: {parts[0]} {parts[1]}\n".encode()
            close = b"connection: close" in head.lower() or parts[2] == "HTTP/1.0"
            self.out += (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                         f"Server: hpnlab-ustack\r\n{'Connection: close' if close else 'Connection: keep-alive'}"
                         f"\r\n\r\n").encode() + body
            if close:
                self.closing = True

    def on_writable(self):
        super().on_writable()
        if self.closing and not self.out:
            self.done = True


SERVERS = {"echo": Echo, "discard": Discard, "sink": Sink, "source": Source, "http": Http}


def _conn_summary(conn) -> dict | None:
    if conn is None:
        return None
    return {"stats": dict(conn.stats), "history": [(round(t, 6), s) for t, s in conn.history],
            "cwnd": conn.cc.cwnd, "ssthresh": min(conn.cc.ssthresh, 1 << 30), "srtt": conn.rto.srtt,
            "rto": conn.rto.rto, "mss": conn.mss, "snd_wscale": conn.snd_wscale, "rcv_wscale": conn.rcv_wscale,
            "ts": conn.ts_ok, "cc_events": dict(conn.cc.events),
            "trace": conn.trace}


def serve(net, args, report, stop) -> None:
    """A TCP server on the stack's epoll: accept, then feed each connection's handler."""
    cls = SERVERS[args.app]
    ep = Epoll(net, args.interest)
    lsock: Socket = net.socket()
    lsock.setblocking(False)
    lsock.bind(("", args.port))
    lsock.listen(args.backlog)
    ep.register(lsock.fd, EPOLLIN, data=lsock)
    report({"event": "listening", "port": args.port, "app": args.app})
    served = 0
    while not stop():
        for h, ev in ep.wait(256, 0.1):            # each connection's epoll data is its handler
            if h is lsock:
                while True:
                    try:
                        sock, _peer = lsock.accept()
                    except SocketError:
                        break
                    sock.setblocking(False)
                    new = cls(sock, report, args)
                    ep.register(sock.fd, EPOLLIN | EPOLLRDHUP | (EPOLLOUT if new.want_write() else 0), data=new)
                    if new.want_write():
                        new.on_writable()
                continue
            assert isinstance(h, Handler)
            if ev & EPOLLIN:
                while True:
                    try:
                        data = h.sock.recv(1 << 18)
                    except SocketError as exc:
                        if exc.errno != errno.EAGAIN:
                            h.done = True
                        break
                    if not data:
                        h.on_eof()
                        break
                    h.on_data(data)
            if h.want_write():
                h.on_writable()
            if ev & EPOLLERR:
                h.done = True
            if h.done:
                ep.unregister(h.sock.fd)
                h.sock.close()
                served += 1
                if args.once and served >= args.once:
                    return
            else:
                ep.modify(h.sock.fd, EPOLLIN | EPOLLRDHUP | (EPOLLOUT if h.want_write() else 0))


def reactor(net, args, report, stop) -> None:
    """hpnlab.servers' Reactor (the epoll-lt engine's accept loop, Transports and the
    --protocol handler) on the stack's epoll, through the shared event loop."""
    from ..servers import protocols
    from .engine import StackReactor
    lsock = net.socket()
    lsock.bind(("", args.port))
    lsock.listen(args.backlog)
    engine = StackReactor(net, lsock, protocols.get(args.protocol), args.interest)

    def check() -> None:
        if stop():
            engine.loop.stop()
        else:
            engine.loop.call_later(0.1, check)
    engine.loop.call_later(0.1, check)
    report({"event": "listening", "port": args.port, "app": f"reactor ({args.protocol})"})
    try:
        engine.serve_forever()
    finally:
        engine.close()


def thread_echo(net, args, report, stop) -> None:
    """Echo with a thread per connection and blocking calls (§2.4.4: 一请求一线程), the
    stack's loop in a thread of its own."""
    import threading
    net.start_thread()
    lsock = net.socket()
    lsock.bind(("", args.port))
    lsock.listen(args.backlog)
    lsock.settimeout(0.2)
    threads: list[threading.Thread] = []

    def serve_one(sock) -> None:
        sock.settimeout(0.2)
        try:
            while not stop():
                try:
                    data = sock.recv(1 << 16)
                except SocketError as exc:
                    if exc.errno == errno.EAGAIN:
                        continue
                    break
                if not data:
                    break
                sock.sendall(data)
        finally:
            sock.close()
    report({"event": "listening", "port": args.port, "app": "thread-echo"})
    while not stop():
        try:
            sock, _peer = lsock.accept()
        except SocketError:
            continue
        t = threading.Thread(target=serve_one, args=(sock,), daemon=True)
        t.start()
        threads.append(t)
        threads = [t for t in threads if t.is_alive()]
    report({"event": "threads", "live": sum(t.is_alive() for t in threads)})
    lsock.close()


def udp_echo(net, args, report, stop) -> None:
    sock = net.socket(type=SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("", args.port))
    ep = Epoll(net, args.interest)
    ep.register(sock.fd, EPOLLIN)
    report({"event": "listening", "port": args.port, "app": "udp-echo"})
    while not stop():
        for _fd, _ev in ep.wait(16, 0.1):
            while True:
                try:
                    data, peer = sock.recvfrom()
                except SocketError:
                    break
                sock.sendto(data, peer)


def client(net, args, report, stop) -> None:
    """--connect HOST:PORT with --app source (send --bytes) or sink (receive to EOF)."""
    host, port = args.connect.rsplit(":", 1)
    sock = net.socket()
    if args.bind_port:
        sock.bind(("", args.bind_port))
    sock.settimeout(args.timeout)
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))
    started = time.monotonic()
    err = sock.connect_ex((host, int(port)))
    if err:
        report({"event": "connect", "error": errno.errorcode.get(err, str(err)),
                "conn": _conn_summary(sock.conn)})
        return
    report({"event": "connect", "error": None, "secs": round(time.monotonic() - started, 4),
            "conn": _conn_summary(sock.conn) if args.app == "connect" else None})
    if args.trace:
        sock.conn.trace = []
    t = Transfer()
    if args.app == "source":
        t = send_all(sock.send, args.bytes)
        sock.shutdown(1)
        while sock.recv(1 << 16):      # the peer's close
            pass
    elif args.app == "sink":
        t = receive_all(sock.recv)
    elif args.app == "connect" and args.close_at:
        # simultaneous close: close at the agreed moment, then see the close through
        net.wait(lambda: stop() or time.time() >= args.close_at, None)
        sock.close()
        net.wait(lambda: stop() or sock.conn.state in ("TIME_WAIT", "CLOSED"), args.timeout)
    elif args.app == "connect":
        t = receive_all(sock.recv)      # what the peer says, to its FIN; then a clean close (no RST)
    report(t.result(args.app, conn=_conn_summary(sock.conn)))
    sock.close()
    net.wait(lambda: sock.conn.state in ("CLOSED", "TIME_WAIT"), 5)


def ping(net, args, report, stop) -> None:
    """ICMP echo from the stack (which ARPs for the peer first)."""
    import ipaddress
    dst = ipaddress.IPv4Address(args.ping).packed
    stack = net.stack
    ident = os.getpid() & 0xFFFF
    payload = bytes(range(256)) * (args.size // 256 + 1)
    sent = {}
    for seq in range(args.count):
        sent[seq] = time.monotonic()
        stack.ping(dst, ident, seq, payload[:args.size])
        net.loop.flush()
        net.wait(lambda seq=seq: any(r[3] == seq for r in stack.echo_replies) or stop(), args.interval)
    net.wait(lambda: len(stack.echo_replies) >= args.count or stop(), 2)
    rtts = [round((t - sent[s]) * 1000, 3) for t, _src, i, s, _n in stack.echo_replies if i == ident and s in sent]
    report({"event": "ping", "sent": args.count, "received": len(rtts), "rtt_ms": rtts,
            "peer_mac_learned": stack.arp.lookup(dst, time.monotonic()) is not None})
