"""hpnlab.uring's provided buffers lent to sends (Ring.send_buf), on a real io_uring.

The engine-level behaviour (echo integrity, backpressure, a thousand clients) is in
test_servers.py; here the ring itself, with a socket pair whose sends are stalled.
"""
from __future__ import annotations

import errno
import socket
import threading

import pytest

from hpnlab import uring

pytestmark = pytest.mark.skipif(bool(uring.unavailable()), reason=str(uring.unavailable()))

RECV = 2


def fill(sock: socket.socket) -> bytes:
    """Write into `sock` until its buffers are full: a send queued after this stalls."""
    sock.setblocking(False)
    filler = bytearray()
    chunk = b"f" * 65536
    while True:
        try:
            filler += chunk[:sock.send(chunk)]
        except BlockingIOError:
            return bytes(filler)


def read_exactly(sock: socket.socket, n: int, out: list[bytes]) -> None:
    got = bytearray()
    while len(got) < n:
        part = sock.recv(min(1 << 20, n - len(got)))
        if not part:
            break
        got += part
    out.append(bytes(got))


def test_stalled_sends_never_take_the_buffers_recvs_need() -> None:
    """Every message read into a provided buffer is echoed with send_buf while the
    socket cannot send: at most half of the 8 buffers stay lent, the rest are copied,
    so 40 recvs all find a buffer (no ENOBUFS); once the peer reads, the bytes come
    back whole and in order - a lent buffer is not reused before its send is done."""
    a, b = socket.socketpair()
    with uring.Ring(entries=64, nbufs=8, bufsize=16) as ring:
        filler = fill(a)
        ring.prep_recv(a.fileno(), a.fileno() << 3 | RECV)
        msgs = [bytes([65 + i % 26]) * 16 for i in range(40)]
        for msg in msgs:            # one at a time: a burst would need more buffers at once
            b.sendall(msg)
            received = 0
            while received < len(msg):
                for _ud, res, flags in zip(*ring.wait()):
                    assert res > 0, f"recv failed: {errno.errorcode.get(-res, res)}"
                    ring.send_buf(a.fileno(), flags >> ring.BUFFER_SHIFT, res)
                    received += res
        assert ring.lib.hp_ring_lent(ring.r) == 4
        echoed: list[bytes] = []
        reader = threading.Thread(target=read_exactly, args=(b, len(filler) + 16 * 40, echoed))
        reader.start()
        assert ring.send_notify(a.fileno(), 0) > 0
        uds, results, _ = ring.wait()
        assert uds == [a.fileno() << 3 | ring.DRAIN_TAG] and results == [0]
        reader.join(30)
        assert ring.lib.hp_ring_lent(ring.r) == 0
    a.close()
    b.close()
    assert echoed == [filler + b"".join(msgs)]


def test_send_buf_rejects_a_buffer_that_is_not_the_rings() -> None:
    a, b = socket.socketpair()
    with uring.Ring(entries=8, nbufs=4, bufsize=16) as ring:
        with pytest.raises(OSError, match="buffer 4") as exc:
            ring.send_buf(a.fileno(), 4, 8)
        assert exc.value.errno == errno.EINVAL
        with pytest.raises(OSError, match="buffer 0"):
            ring.send_buf(a.fileno(), 0, 17)
    a.close()
    b.close()


def test_send_back_echoes_each_buffer_and_reports_queues_past_the_high_water() -> None:
    """wait(back) and send_back() send each listed buffer back on the connection its
    data came from; a send that leaves more than the high-water mark queued is reported
    (the engine pauses that connection on it); the bytes come back whole and in order."""
    a, b = socket.socketpair()
    with uring.Ring(entries=64, nbufs=8, bufsize=16) as ring:
        ring.set_high_water(40)
        filler = fill(a)
        ring.prep_recv(a.fileno(), a.fileno() << 3 | RECV)
        msgs = [bytes([97 + i]) * 16 for i in range(5)]
        back: list[int] = []
        reports: list[tuple[int, int]] = []
        for msg in msgs:
            b.sendall(msg)
            received = 0
            while received < len(msg):
                for ud, res, flags in zip(*ring.wait(back)):
                    if ud & 7 == ring.SEND_TAG:
                        reports.append((ud >> 3, res))
                        continue
                    assert res > 0, f"recv failed: {errno.errorcode.get(-res, res)}"
                    back.append(flags >> ring.BUFFER_SHIFT)
                    received += res
        reports += ring.send_back(back)
        assert back == []
        # 16 bytes more queued with each message: 48, 64 and 80 are past the mark of 40
        assert reports == [(a.fileno(), 48), (a.fileno(), 64), (a.fileno(), 80)]
        echoed: list[bytes] = []
        reader = threading.Thread(target=read_exactly, args=(b, len(filler) + 80, echoed))
        reader.start()
        assert ring.send_notify(a.fileno(), 0) == 80
        assert ring.wait()[0] == [a.fileno() << 3 | ring.DRAIN_TAG]
        reader.join(30)
        assert ring.lib.hp_ring_lent(ring.r) == 0
    a.close()
    b.close()
    assert echoed == [filler + b"".join(msgs)]
