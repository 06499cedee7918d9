"""hpnlab.servers.loop and .transport: backends, LT vs ET, timers, hooks, water marks, partial sends.

Real sockets (socketpairs) and the real kernel demultiplexers, no mocks.
"""
from __future__ import annotations

import signal
import socket
import sys
import threading
import time

import pytest

from hpnlab.servers import Shutdown
from hpnlab.servers.loop import BACKENDS, Loop, StopHandler
from hpnlab.servers.transport import Transport

ALL = list(BACKENDS)
LEVEL = [b for b in ALL if not BACKENDS[b].edge_triggered]


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def turns(loop: Loop, n: int, block: bool = False) -> None:
    for _ in range(n):
        loop.run_once(block=block)


@pytest.mark.parametrize("backend", ALL)
def test_reader_and_writer_are_called_on_readiness(backend, pair):
    a, b = pair
    loop = Loop(backend)
    got, wrote = [], []

    def on_read():
        try:
            got.append(a.recv(100))
        except BlockingIOError:
            pass

    loop.add_reader(a.fileno(), on_read)
    loop.add_writer(b.fileno(), lambda: wrote.append(1))
    turns(loop, 2)
    assert wrote, "a fresh socket is writable"
    assert got == [], "nothing to read yet"
    b.send(b"hello")
    loop.remove_writer(b.fileno())
    wrote.clear()
    loop.run_once(block=True)
    assert b"".join(got) == b"hello"
    turns(loop, 3)
    assert len(wrote) <= 1, "a removed writer is not called again (at most the turn that narrows it)"
    loop.close()


@pytest.mark.parametrize("backend", LEVEL)
def test_level_triggered_calls_again_while_data_is_left(backend, pair):
    a, b = pair
    loop = Loop(backend)
    got = []
    loop.add_reader(a.fileno(), lambda: got.append(a.recv(1)))
    b.send(b"xyz")
    turns(loop, 3, block=True)
    assert got == [b"x", b"y", b"z"]
    loop.close()


def test_edge_triggered_reports_a_change_once(pair):
    a, b = pair
    loop = Loop("epoll-et")
    got, calls = [], []

    def read_one():
        calls.append(1)
        try:
            got.append(a.recv(1))
        except BlockingIOError:
            pass

    loop.add_reader(a.fileno(), read_one)
    turns(loop, 1)
    assert calls == [1], "an added reader is called once (no edge lost)"
    b.send(b"xyz")
    loop.run_once(block=True)
    turns(loop, 3)
    assert got == [b"x"], "one edge, one call: the rest is never reported until new data comes"
    b.send(b"!")
    loop.run_once(block=True)
    assert got == [b"x", b"y"]
    loop.close()


def test_edge_triggered_added_reader_gets_a_first_call(pair):
    a, b = pair
    loop = Loop("epoll-et")
    loop.add_reader(a.fileno(), lambda: None)
    loop.remove_reader(a.fileno())
    b.send(b"data")              # the edge happens while nobody listens
    turns(loop, 1)
    got = []
    loop.add_reader(a.fileno(), lambda: got.append(a.recv(100)))
    turns(loop, 1)
    assert got == [b"data"]
    loop.close()


def test_timers_run_in_deadline_order_and_cancel():
    loop = Loop()
    out = []
    loop.call_later(0.03, out.append, "c")
    loop.call_later(0.01, out.append, "a")
    loop.call_later(0.01, out.append, "b")        # equal deadline: FIFO
    loop.call_later(0.02, out.append, "x").cancel()
    loop.call_later(0.04, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert out == ["a", "b", "c"]
    assert 0.035 < time.monotonic() - t0 < 1.0, "the loop slept until the timers, not forever nor busy"
    loop.close()


def test_before_sleep_hook_runs_every_turn_before_waiting():
    loop = Loop()
    seen = []
    loop.before_sleep.append(lambda: seen.append(len(loop.ready)))
    loop.call_soon(lambda: None)
    turns(loop, 3)
    assert seen == [1, 0, 0]
    loop.close()


def test_call_soon_threadsafe_wakes_a_waiting_loop():
    loop = Loop()
    done = []
    threading.Timer(0.05, loop.call_soon_threadsafe, (lambda: (done.append(1), loop.stop()),)).start()
    loop.call_later(3, loop.stop)       # a bound, should the wake-up not work
    t0 = time.monotonic()
    loop.run_forever()                  # nothing else to wake it before the 3 s timer
    assert done == [1] and time.monotonic() - t0 < 2
    loop.close()


def test_forget_lets_a_reused_fd_number_be_watched(pair):
    a, _ = pair
    loop = Loop()
    loop.add_reader(a.fileno(), lambda: None)
    fd = a.fileno()
    loop.forget(fd)
    a.close()
    c, d = socket.socketpair()
    try:
        assert fd in (c.fileno(), d.fileno())
        mine = c if c.fileno() == fd else d
        other = d if mine is c else c
        got = []
        loop.add_reader(fd, lambda: got.append(mine.recv(10)))
        other.send(b"new")
        loop.run_once(block=True)
        assert got == [b"new"]
    finally:
        c.close()
        d.close()
    loop.close()


def test_select_refuses_descriptors_past_fd_setsize():
    loop = Loop("select")
    with pytest.raises(ValueError, match="FD_SETSIZE"):
        loop.add_reader(2000, lambda: None)
    loop.close()


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="kqueue"):
        Loop("kqueue")


class Echo:
    def feed(self, data):
        return data, False


class Sink:
    def __init__(self):
        self.replies = []

    def feed(self, data):
        return self.replies.pop(0) if self.replies else b"", False


def small_buffers(*socks):
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


@pytest.mark.parametrize("backend", ALL)
def test_partial_sends_queue_views_of_the_callers_bytes(backend, pair):
    a, b = pair
    small_buffers(a, b)
    loop = Loop(backend)
    t = Transport(loop, a, Echo(), high=1 << 30, low=0)
    big = bytes(range(256)) * 4096                 # 1 MiB: far more than the socket takes
    t.write(big)
    assert t.get_write_buffer_size() > 0
    assert t.queue[0].obj is big, "the unsent rest is a view of the same bytes, not a copy"
    t.write(b"tail")
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < len(big) + 4 and time.monotonic() < deadline:
        loop.run_once(block=False)
        try:
            got += b.recv(1 << 16)
        except BlockingIOError:
            pass
    assert bytes(got) == big + b"tail"
    assert t.get_write_buffer_size() == 0 and not t.queue
    t.abort()
    loop.close()


@pytest.mark.parametrize("backend", ALL)
def test_water_marks_pause_and_resume_reading(backend, pair):
    a, b = pair
    small_buffers(a, b)
    loop = Loop(backend)
    sink = Sink()
    sink.replies = [b"r" * 300_000]
    t = Transport(loop, a, sink, high=100_000, low=10_000)
    b.send(b"go")
    for _ in range(5):
        loop.run_once(block=False)
    assert t.paused, "above the high water mark reading stops"
    b.send(b"more")                               # not read while paused
    for _ in range(3):
        loop.run_once(block=False)
    assert sink.replies == [] and t.paused
    drained = 0
    deadline = time.monotonic() + 10
    while t.paused and time.monotonic() < deadline:
        try:
            drained += len(b.recv(1 << 16))
        except BlockingIOError:
            pass
        loop.run_once(block=False)
    assert not t.paused and t.get_write_buffer_size() <= 10_000, "below the low water mark it reads again"
    assert drained >= 300_000 - 10_000 - 200_000  # (what the socket buffers hold is not ours)
    t.abort()
    loop.close()


@pytest.mark.parametrize("backend", ALL)
def test_close_flushes_then_closes_and_eof_closes(backend, pair):
    a, b = pair
    loop = Loop(backend)
    closed = []
    t = Transport(loop, a, Echo(), on_close=closed.append)
    b.send(b"ping")
    loop.run_once(block=True)
    assert b.recv(10) == b"ping"
    b.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 5
    while not closed and time.monotonic() < deadline:
        loop.run_once(block=False)
    assert closed == [t] and t.fd == -1
    loop.close()


def test_removing_a_closed_fd_touches_no_other_slot():
    """A closed transport's fd is -1: removing it must not clear the table's last slot."""
    loop = Loop()
    last = len(loop.readers) - 1
    loop.readers[last] = loop.writers[last] = print
    loop.remove_reader(-1)
    loop.remove_writer(-1)
    assert loop.readers[last] is print and loop.writers[last] is print
    loop.close()


class FastClient:
    """A handler whose peer sends its next request the moment it gets a reply (a client
    on another core): an edge-triggered read that went on until EAGAIN would find it."""

    def __init__(self, name, peer, log):
        self.name, self.peer, self.log = name, peer, log

    def feed(self, data):
        self.log.append(self.name)
        self.peer.send(b"next")
        return b"+OK\r\n", False


def test_edge_triggered_short_read_lets_other_connections_go_first(pair):
    a, b = pair
    c, d = socket.socketpair()
    loop = Loop("epoll-et")
    log = []
    ta, tc = Transport(loop, a, FastClient("a", b, log)), Transport(loop, c, FastClient("c", d, log))
    loop.run_once(block=False)                      # the first (added-reader) calls: nothing to read yet
    b.send(b"req")
    d.send(b"req")
    loop.run_once(block=True)
    assert sorted(log[:2]) == ["a", "c"], f"each connection served once before either again, not in lockstep: {log}"
    turns(loop, 2)
    assert log.count("a") >= 2 and log.count("c") >= 2, "the deferred read still finds the next request"
    ta.abort(), tc.abort()
    c.close(), d.close()
    loop.close()


def test_edge_triggered_eof_behind_a_short_read_is_seen(pair):
    """The short read ends the turn's reading, not the reading: the deferred recv finds the EOF
    that came with the data (one edge for both; no reply, so no write-space wake-up either)."""
    a, b = pair
    loop = Loop("epoll-et")
    closed = []
    t = Transport(loop, a, Sink(), on_close=closed.append)
    turns(loop, 1)
    b.sendall(b"last words")
    b.shutdown(socket.SHUT_WR)
    turns(loop, 3)
    assert closed == [t]
    loop.close()


class SignalsInItsFinalizer:
    """Dropped, it runs the SIGTERM handler inside __del__, where CPython loses whatever
    the handler raises ("Exception ignored in ...")."""

    def __del__(self):
        signal.raise_signal(signal.SIGTERM)


def test_a_stop_whose_exception_a_finalizer_swallowed_still_ends_the_loop(monkeypatch):
    lost = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: lost.append(unraisable.exc_type))
    loop = Loop("epoll")
    loop.wake_on_signals()
    timed_out = []
    loop.call_later(5, lambda: (timed_out.append(True), loop.stop()))
    loop.call_soon(SignalsInItsFinalizer)          # made and dropped by the call
    old = signal.signal(signal.SIGTERM, StopHandler(Shutdown))
    try:
        with pytest.raises(Shutdown):
            loop.run_forever()
    finally:
        signal.signal(signal.SIGTERM, old)
        loop.close()
    assert not timed_out
    assert lost == [Shutdown]                      # the first raise was indeed lost
