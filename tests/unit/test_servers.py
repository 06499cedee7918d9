"""The shared correctness suite: every I/O-model engine must pass all of it.

Each engine runs as a real server process (python -m hpnlab.servers) on
loopback; the clients here are plain sockets driven by selectors.
"""
from __future__ import annotations

import os
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpnlab.servers import ENGINES, engine_class, unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def process_states(pid: int) -> list[str]:
    """`pid` and its children: state, kernel wait channel and command (why a stop hangs)."""
    def one(p: str) -> str:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            wchan = Path(f"/proc/{p}/wchan").read_text()
            return f"{p} {stat[stat.rindex(')') + 2]} wchan={wchan} {Path(f'/proc/{p}/cmdline').read_bytes()[:120]!r}"
        except OSError as exc:
            return f"{p}: {exc}"
    try:
        kids = children(pid)
    except OSError:
        kids = []
    return [one(str(pid)), *(one(str(c)) for c in kids)]


class ServerProc:
    def __init__(self, engine: str, *extra: str):
        self.engine = engine
        self.port = free_port()
        self.err = Path(f"/tmp/hpnlab-test-{engine}-{self.port}.err")
        with open(self.err, "wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "hpnlab.servers", engine, "--host", "127.0.0.1",
                 "--port", str(self.port), *extra],
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 15
        while "listening" not in self.err.read_text():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{engine} did not start: {self.err.read_text()}")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def nfds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                print(f"{self.engine} did not stop in 10 s:", *process_states(self.pid),
                      f"stderr: {self.err.read_text(errors='replace')[-2000:]}", sep="\n  ")
                os.killpg(self.pid, signal.SIGKILL)      # its session: workers too, none left serving
                self.popen.wait(5)
        self.err.unlink(missing_ok=True)
        return self.popen.returncode


def engine_params():
    for name in ENGINES:
        why = unavailable(name)
        yield pytest.param(name, marks=pytest.mark.skip(reason=why)) if why else name


@pytest.fixture(scope="module", params=list(engine_params()))
def server(request):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srv = ServerProc(request.param)
    yield srv
    srv.stop()


def connect(port: int, bufsize: int | None = None) -> socket.socket:
    s = socket.socket()
    if bufsize:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, bufsize)
    s.connect(("127.0.0.1", port))
    return s


def echo_roundtrip(port: int, payload: bytes, timeout: float = 10) -> bytes:
    with connect(port) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return bytes(got)


def test_echo_integrity_under_partial_reads_and_writes(server):
    """Writes in random small pieces, reads in random small pieces, interleaved."""
    rng = random.Random(5)
    payload = os.urandom(200_000)
    s = connect(server.port)
    s.setblocking(False)
    sent, got = 0, bytearray()
    deadline = time.monotonic() + 20
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    while len(got) < len(payload):
        assert time.monotonic() < deadline, f"only {len(got)} of {len(payload)} bytes came back"
        for _key, ev in sel.select(1):
            if ev & selectors.EVENT_WRITE and sent < len(payload):
                try:
                    sent += s.send(payload[sent:sent + rng.randint(1, 997)])
                except BlockingIOError:
                    pass
            if ev & selectors.EVENT_READ:
                try:
                    chunk = s.recv(rng.randint(1, 1500))
                except BlockingIOError:
                    continue
                assert chunk, "server closed early"
                got += chunk
        if sent == len(payload):
            sel.modify(s, selectors.EVENT_READ)
    sel.close()
    s.close()
    assert bytes(got) == payload


@pytest.mark.slow
def test_a_thousand_concurrent_clients(server):
    n = 1000
    sel = selectors.DefaultSelector()
    socks = []
    want: dict[socket.socket, bytes] = {}
    got: dict[socket.socket, bytearray] = {}
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", server.port))
        socks.append(s)
        want[s] = f"client {i:04d} ".encode() * 8
        got[s] = bytearray()
        sel.register(s, selectors.EVENT_WRITE)
    pending_write = set(socks)
    done = 0
    deadline = time.monotonic() + 60
    while done < n:
        assert time.monotonic() < deadline, f"{done}/{n} clients got their echo"
        for key, ev in sel.select(1):
            s = key.fileobj
            if ev & selectors.EVENT_WRITE and s in pending_write:
                s.sendall(want[s])          # 96 bytes: fits the empty send buffer at once
                pending_write.discard(s)
                sel.modify(s, selectors.EVENT_READ)
            elif ev & selectors.EVENT_READ:
                chunk = s.recv(4096)
                assert chunk, "server closed a client early"
                got[s] += chunk
                if len(got[s]) >= len(want[s]):
                    sel.unregister(s)
                    done += 1
    sel.close()
    assert all(bytes(got[s]) == want[s] for s in socks)
    for s in socks:
        s.close()


def test_clients_that_disconnect_mid_message(server):
    base = server.nfds()
    for i in range(40):
        s = connect(server.port)
        s.sendall(os.urandom(3000))          # half of a "message" the server will echo
        if i % 2:
            # RST instead of FIN: SO_LINGER with a zero timeout
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    assert echo_roundtrip(server.port, b"still alive") == b"still alive"
    deadline = time.monotonic() + 5
    while server.nfds() > base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.nfds() <= base, "the server leaks descriptors of clients that left"


def test_slowloris_does_not_block_others(server):
    slow = connect(server.port)
    slow.settimeout(5)
    fast = connect(server.port)
    fast.settimeout(5)
    start = time.monotonic()
    trickled = b""
    worst = 0.0
    for i in range(100):
        if i % 10 == 0:                        # one byte every ~10 round trips
            slow.send(b"x")
            trickled += b"x"
        t = time.monotonic()
        fast.sendall(b"ping %03d" % i)
        assert fast.recv(64) == b"ping %03d" % i
        worst = max(worst, time.monotonic() - t)
    assert worst < 1.0, f"a fast client waited {worst:.2f}s behind a slow one"
    got = b""
    while len(got) < len(trickled):
        got += slow.recv(64)
    assert got == trickled
    assert time.monotonic() - start < 10
    slow.close()
    fast.close()


@pytest.mark.slow
def test_larger_than_socket_buffers_with_bounded_memory(server):
    """A client that sends without reading: the server must stop reading (backpressure)
    instead of buffering everything; then everything must still come back intact."""
    total = 48 * 1024 * 1024
    pattern = os.urandom(1 << 20)
    s = connect(server.port, bufsize=64 * 1024)
    s.setblocking(False)
    rss0 = server.rss_kib()
    sent = 0
    stalled_since = None
    # Phase 1: write only, until the pipe is full for 0.5 s.
    while sent < total:
        try:
            off = sent % len(pattern)
            sent += s.send(pattern[off:off + 256 * 1024])
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.5:
                break
            time.sleep(0.005)
    growth = server.rss_kib() - rss0
    assert sent < total, "the server swallowed 48 MiB without the client reading: no backpressure"
    assert growth < 16 * 1024, f"server RSS grew {growth} KiB while the client did not read"
    # Phase 2: read everything back while sending the rest; verify the stream.
    received = 0
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + 60
    while received < total:
        assert time.monotonic() < deadline, f"got {received} of {total} bytes back"
        for _key, ev in sel.select(1):
            if ev & selectors.EVENT_WRITE and sent < total:
                off = sent % len(pattern)
                try:
                    sent += s.send(pattern[off:off + min(256 * 1024, total - sent)])
                except BlockingIOError:
                    pass
                if sent == total:
                    sel.modify(s, selectors.EVENT_READ)
            if ev & selectors.EVENT_READ:
                try:
                    chunk = s.recv(1 << 20)
                except BlockingIOError:
                    continue
                assert chunk, "server closed early"
                off = received % len(pattern)
                expect = (pattern[off:] + pattern)[:len(chunk)]
                assert chunk == expect, f"corrupted stream at byte {received}"
                received += len(chunk)
    sel.close()
    s.close()


@pytest.mark.parametrize("engine", list(engine_params()))
def test_clean_shutdown_on_sigterm(engine):
    srv = ServerProc(engine)
    clients = [connect(srv.port) for _ in range(20)]
    for i, c in enumerate(clients[:10]):
        c.sendall(b"half a mess" * (i + 1))
    assert echo_roundtrip(srv.port, b"hello") == b"hello"
    t0 = time.monotonic()
    srv.popen.send_signal(signal.SIGTERM)
    rc = srv.popen.wait(10)
    assert time.monotonic() - t0 < 5
    assert rc == 0, srv.err.read_text()
    for c in clients:
        c.settimeout(5)
        try:
            while c.recv(65536):
                pass                                # the echo, then EOF
        except ConnectionResetError:
            pass
        c.close()
    with pytest.raises(ConnectionRefusedError):
        connect(srv.port)
    srv.stop()


# Every engine as it is benchmarked (the parallel ones with 2 threads/processes) and
# coro --workers 2 (forked copies of a single-threaded engine).
EVERY_ENGINE = [[e, *(["--workers", "2"] if engine_class(e).parallel else [])]
                for e in ENGINES if not unavailable(e)] + [["coro", "--workers", "2"]]


def forks(case: list[str]) -> bool:
    return case[0] == "epoll-procs" or "--workers" in case and not engine_class(case[0]).parallel


class ScriptedServers:
    """Every engine at once, each server started by `python -c script ENGINE...` (a script
    that sets a trap, then runs hpnlab.servers' main); `stop_all(send)` signals them and
    says which did not stop, or stopped badly, within 5 s."""

    def __init__(self, script: str, tag: str):
        self.procs = []
        for case in EVERY_ENGINE:
            port = free_port()
            err = Path(f"/tmp/hpnlab-test-{tag}-{port}.err")
            with open(err, "wb") as f:
                self.procs.append((case, err, subprocess.Popen(
                    [sys.executable, "-c", script, *case, "--host", "127.0.0.1", "--port", str(port)],
                    stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)))
        deadline = time.monotonic() + 30
        for case, err, p in self.procs:
            # a forking server says "listening" from its first worker: wait for the second too
            while "listening" not in err.read_text() or forks(case) and len(children(p.pid)) < 2:
                assert p.poll() is None and time.monotonic() < deadline, f"{case}: {err.read_text()}"
                time.sleep(0.02)

    def stop_all(self, send) -> list[str]:
        """send(case, pid) for each server; the failures: hung, non-zero exit, or a
        traceback on stderr."""
        for case, _err, p in self.procs:
            send(case, p.pid)
        failed, deadline = [], time.monotonic() + 5
        for case, err, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                failed.append(f"{' '.join(case)}: still running 5 s after SIGTERM")
                continue
            said = err.read_text()
            if p.returncode != 0 or "Traceback" in said or "Exception ignored" in said:
                failed.append(f"{' '.join(case)}: exit {p.returncode}\n{said}")
        return failed

    def close(self) -> None:
        for _case, err, p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            err.unlink(missing_ok=True)


# The server with SIGTERM/SIGINT blocked on its main thread and a helper thread that takes
# them: the C-level handler runs (CPython's flag is set) while the main thread sleeps in its
# wait and gets no EINTR - the state of a signal that lands just before the wait's syscall,
# made certain instead of 1 in 10.
SIGNAL_ON_ANOTHER_THREAD = """
import signal, sys, threading
threading.Thread(target=threading.Event().wait, daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
from hpnlab.servers.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_that_misses_the_wait_still_stops_every_engine():
    servers = ScriptedServers(SIGNAL_ON_ANOTHER_THREAD, "missed-signal")
    try:
        time.sleep(0.2)                      # every main thread asleep in its wait
        failed = servers.stop_all(lambda case, pid: os.kill(pid, signal.SIGTERM))
    finally:
        servers.close()
    assert not failed, "\n".join(failed)


# The server with a SIGUSR1 handler that makes and drops an object whose finalizer raises
# SIGTERM: the SIGTERM handler then runs inside __del__, where CPython loses what it
# raises ("Exception ignored") - as when a stop lands while a finished connection's task
# is freed, made certain instead of rare.
LOSE_THE_STOP_IN_A_FINALIZER = """
import signal, sys

class SignalsInItsFinalizer:
    def __del__(self):
        print("SIGTERM raised in a finalizer", file=sys.stderr, flush=True)
        signal.raise_signal(signal.SIGTERM)

signal.signal(signal.SIGUSR1, lambda signum, frame: SignalsInItsFinalizer())
from hpnlab.servers.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_stop_lost_in_a_finalizer_still_stops_every_engine():
    def lose_a_stop(case, pid):
        # a forking server's workers are the ones that serve: each loses its own stop
        for target in children(pid) if forks(case) else [pid]:
            os.kill(target, signal.SIGUSR1)
    servers = ScriptedServers(LOSE_THE_STOP_IN_A_FINALIZER, "lost-stop")
    try:
        failed = servers.stop_all(lose_a_stop)
        said = [err.read_text() for _case, err, _p in servers.procs]
    finally:
        servers.close()
    assert not failed, "\n".join(failed)
    assert all("raised in a finalizer" in s for s in said)   # the trap was sprung everywhere


def test_unknown_engine_lists_valid_ones():
    p = subprocess.run([sys.executable, "-m", "hpnlab.servers", "epoll-xx", "--port", "1"],
                       capture_output=True, check=False, text=True)
    assert p.returncode == 2
    assert "epoll-xx" in p.stderr and "epoll-lt" in p.stderr and "uring" in p.stderr


def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "hpnlab.servers", "epoll-lt", "--host", "127.0.0.1",
                            "--port", str(port)], capture_output=True, check=False, text=True, timeout=20)
    assert p.returncode == 3
    assert "in use" in p.stderr


def test_multicore_mode_serves_and_stops():
    srv = ServerProc("coro", "--workers", "2")
    try:
        # "listening" is the first worker's: on a busy machine the parent may fork the second after
        deadline = time.monotonic() + 10
        while len(workers := children(srv.pid)) < 2:
            assert time.monotonic() < deadline, workers
            time.sleep(0.01)
        assert len(workers) == 2
        for i in range(20):
            assert echo_roundtrip(srv.port, b"m%d" % i) == b"m%d" % i
    finally:
        assert srv.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def listening_sockets(port: int) -> int:
    """LISTEN entries for `port` in /proc/net/tcp (one per SO_REUSEPORT listener)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def connection_fds(pid: int) -> int:
    """Sockets a process holds, less its listener."""
    return sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
               if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")) - 1


@pytest.mark.parametrize("engine", ["epoll-threads", "epoll-acceptor", "epoll-procs"])
def test_multi_epoll_engines_run_their_workers(engine):
    """--workers 3: epoll-threads is 3 threads with 3 listeners, epoll-acceptor an
    acceptor thread and 3 epoll threads, epoll-procs 3 processes with 3 listeners
    that the kernel spreads connections over; all echo concurrently."""
    srv = ServerProc(engine, "--workers", "3")
    clients = []
    try:
        clients = [connect(srv.port) for _ in range(60)]
        for i, c in enumerate(clients):
            c.sendall(b"w%d" % i)
        for i, c in enumerate(clients):
            c.settimeout(10)
            assert c.recv(100) == b"w%d" % i
        if engine == "epoll-procs":
            workers = children(srv.pid)
            assert len(workers) == 3
            assert listening_sockets(srv.port) == 3
            assert all(connection_fds(p) > 0 for p in workers), "SO_REUSEPORT gave every worker connections"
        elif engine == "epoll-threads":
            assert thread_count(srv.pid) == 3
            assert listening_sockets(srv.port) == 3
        else:
            assert thread_count(srv.pid) == 4
            assert listening_sockets(srv.port) == 1
    finally:
        for c in clients:
            c.close()
        assert srv.stop() == 0


def test_multi_epoll_workers_default_to_the_cpu_count():
    srv = ServerProc("epoll-threads")
    try:
        assert f"workers={os.cpu_count()}" in srv.err.read_text()
        # "listening" comes before serve() starts the worker threads: on a busy machine, later
        deadline = time.monotonic() + 10
        while thread_count(srv.pid) < os.cpu_count() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread_count(srv.pid) == os.cpu_count()
    finally:
        srv.stop()
