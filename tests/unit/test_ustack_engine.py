"""hpnlab.servers' Reactor (the epoll-lt engine) on the user-space stack's epoll, through
the shared event loop, unchanged: two stacks in one process joined by a kernel
socketpair (a wire), the servers' echo protocol on one, blocking stack sockets on the
other. Also the socket API's kernel-like errors and descriptors it relies on."""
from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import threading

import pytest

from hpnlab.servers import protocols
from hpnlab.ustack.drivers import send_frames
from hpnlab.ustack.engine import StackReactor
from hpnlab.ustack.epoll import EPOLLIN, Epoll
from hpnlab.ustack.errors import SocketError
from hpnlab.ustack.loop import Loop
from hpnlab.ustack.sockets import Net
from hpnlab.ustack.stack import Stack


class PairDriver:
    """One end of an AF_UNIX SOCK_SEQPACKET socketpair: every frame crosses the kernel
    as one message, as on a point-to-point wire."""

    name, mtu = "pair", 1500

    def __init__(self, sock: socket.socket, mac: bytes):
        self.sock, self.mac = sock, mac
        sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def rx_burst(self, n: int = 64):
        out = []
        for _ in range(n):
            try:
                out.append((self.sock.recv(65536), False))
            except BlockingIOError:
                break
        return out

    def tx_burst(self, frames) -> int:
        return send_frames(self.sock.send, frames, False)

    def close(self) -> None:
        self.sock.close()


class PollModeDriver(PairDriver):
    """The same wire with no descriptor to sleep on, as a DPDK port has none."""

    def fileno(self):
        return None


@pytest.fixture(params=[PairDriver, PollModeDriver], ids=["fd", "poll-mode"])
def two_nets(request):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    nets = []
    for sock, mac, ip, kind in ((a, b"\x02\0\0\0\0\x01", "10.0.0.1", PairDriver),
                                (b, b"\x02\0\0\0\0\x02", "10.0.0.2", request.param)):     # the server's
        drv = kind(sock, mac)
        nets.append(Net(Loop(drv, Stack(mac, ip, 24, drv.mtu))))
    yield nets
    for n in nets:
        n.stop_thread()
        n.loop.driver.close()


def _serve(net, port: int):
    ls = net.socket()
    ls.bind(("", port))
    ls.listen(64)
    engine = StackReactor(net, ls, protocols.get("echo"))
    thread = threading.Thread(target=engine.serve_forever, daemon=True)
    thread.start()
    return engine, thread


def test_servers_reactor_echoes_on_the_stacks_epoll(two_nets):
    client_net, server_net = two_nets
    engine, thread = _serve(server_net, 7)
    client_net.start_thread()
    socks = []
    for _ in range(20):                       # 20 connections, 25 round trips each
        s = client_net.socket()
        s.settimeout(10)
        s.connect(("10.0.0.2", 7))
        socks.append(s)
    for rnd in range(25):
        for i, s in enumerate(socks):
            msg = b"%d:%d " % (i, rnd) + os.urandom(50)
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(4096)
            assert got == msg
    # 4 MiB one way while reading the echo on another thread: the Transport's write queue,
    # sendmsg and backpressure (pause/resume reading) on the stack's sockets
    big = random.randbytes(4 << 20)
    s = socks[0]
    got = bytearray()

    def reader():
        while len(got) < len(big):
            got.extend(s.recv(1 << 16))
    r = threading.Thread(target=reader)
    r.start()
    s.sendall(big)
    r.join(60)
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
    assert len(engine.transports) == 20
    for s in socks:
        s.close()
    # stopping from another thread: the loop's eventfd, nested in the stack's epoll, wakes it
    engine.loop.call_soon_threadsafe(engine.loop.stop)
    thread.join(10)
    assert not thread.is_alive()
    engine.close()


def test_socket_errors_and_descriptors_are_kernel_like(two_nets):
    net = two_nets[0]
    s = net.socket()
    s.setblocking(False)
    s.bind(("", 9))
    s.listen(4)
    with pytest.raises(BlockingIOError) as e:                 # what servers' code catches
        s.accept()
    assert isinstance(e.value, SocketError) and e.value.errno == errno.EAGAIN
    # the stack's descriptor is a number the kernel reserved: no kernel fd can have it
    assert os.fstat(s.fileno()).st_rdev == os.stat(os.devnull).st_rdev
    ep = Epoll(net)
    r, w = os.pipe()
    ep.register(r, EPOLLIN)                                   # a kernel fd, nested
    ep.register(s.fileno(), EPOLLIN)
    assert ep.wait(8, 0) == []
    os.write(w, b"x")
    assert ep.wait(8, 0.5) == [(r, EPOLLIN)]
    with pytest.raises(FileExistsError):
        ep.register(r, EPOLLIN)
    ep.close()
    fd = s.fileno()
    s.close()
    with pytest.raises(OSError):
        os.fstat(fd)                                          # given back to the kernel
    os.close(r)
    os.close(w)


def test_out_of_descriptors_is_emfile(two_nets):
    import resource
    net = two_nets[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))   # no number left for a new one
    made = []
    try:
        with pytest.raises(SocketError) as e:
            for _ in range(highest + 2):                   # the free numbers below, then none
                made.append(net.socket())
        assert e.value.errno == errno.EMFILE and len(made) <= highest
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for sock in made:
            sock.close()
