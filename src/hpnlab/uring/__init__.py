"""hpnlab.uring - a small cffi binding to Debian's liburing (course §2.5).

io_uring is a *proactor*: instead of asking "which sockets are ready?"
(reactor: epoll) the program hands the kernel whole operations - accept,
recv, send - on a submission queue, and collects their results from a
completion queue. One io_uring_enter() both submits a batch and waits, so
syscalls per request drop well below one.

    ring = Ring(entries=4096, nbufs=512, bufsize=4096)
    ring.prep_accept(listen_fd, ud=1, multishot=True)
    for ud, res, flags in ring.wait(): ...

The compiled part (_build.MODULE, built from _build.py) is made by
`make setup`; if it is missing, the first import builds it, and says
clearly what is missing when it cannot (no gcc, no liburing-dev).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..cbuild import BuildError, load_or_build
from ..errors import HpnlabError


class UringUnavailable(HpnlabError, RuntimeError):
    """io_uring cannot be used here; the message says why."""


def _load():
    from . import _build
    try:
        mod = load_or_build(__name__, _build.MODULE, _build.build)
    except BuildError as exc:
        raise UringUnavailable(f"the liburing binding is not built and cannot be built: {exc}") from None
    return mod.ffi, mod.lib


def unavailable() -> str | None:
    """None if io_uring works on this machine, else the reason."""
    disabled = Path("/proc/sys/kernel/io_uring_disabled")
    if disabled.exists() and disabled.read_text().strip() == "2":
        return "io_uring is disabled by sysctl kernel.io_uring_disabled=2"
    try:
        Ring(entries=8, nbufs=0).close()
    except UringUnavailable as exc:
        return str(exc)
    return None


class Ring:
    """One io_uring with (optionally) one provided-buffer ring of `nbufs` x `bufsize`."""

    BATCH = 1024

    def __init__(self, entries: int = 4096, nbufs: int = 512, bufsize: int = 4096, bgid: int = 0):
        self.ffi, self.lib = ffi, lib = _load()
        err = ffi.new("int *")
        # Newest flags first: a single task submits and reaps, so the kernel may
        # defer completion work to our io_uring_enter (less IPI/interrupt work).
        attempts = [lib.IORING_SETUP_SINGLE_ISSUER | lib.IORING_SETUP_DEFER_TASKRUN,
                    lib.IORING_SETUP_COOP_TASKRUN, 0]
        self.r = ffi.NULL
        for flags in attempts:
            self.r = lib.hp_ring_new(entries, flags, err)
            if self.r != ffi.NULL:
                break
            if err[0] != -errno.EINVAL:
                break
        if self.r == ffi.NULL:
            code = -err[0]
            raise UringUnavailable(f"io_uring_setup failed: {os.strerror(code)} (errno {code})"
                                   + (" - io_uring is disabled or not built into this kernel"
                                      if code in (errno.ENOSYS, errno.EPERM) else ""))
        self.nbufs, self.bufsize = nbufs, bufsize
        self.bufs: memoryview | None = None
        if nbufs:
            ret = lib.hp_bufring_setup(self.r, nbufs, bufsize, bgid)
            if ret < 0:
                lib.hp_ring_free(self.r)
                self.r = ffi.NULL
                raise UringUnavailable(f"provided-buffer ring setup failed: {os.strerror(-ret)}"
                                       " (needs Linux >= 5.19)")
            # One memoryview over all buffers: slicing it copies a CQE's data
            # out in pure Python, without a cffi call per buffer.
            self.bufs = memoryview(ffi.buffer(lib.hp_buf_base(self.r), nbufs * bufsize))
        self._ud = ffi.new("unsigned long long[]", self.BATCH)
        self._res = ffi.new("int[]", self.BATCH)
        self._flags = ffi.new("unsigned[]", self.BATCH)
        self._rep_ud = ffi.new("unsigned long long[]", self.BATCH)
        self._rep_res = ffi.new("int[]", self.BATCH)
        self._ud_mv = memoryview(ffi.buffer(self._ud)).cast("Q")
        self._res_mv = memoryview(ffi.buffer(self._res)).cast("i")
        self._flags_mv = memoryview(ffi.buffer(self._flags)).cast("I")
        self.TAG_BITS, self.SEND_TAG, self.DRAIN_TAG = lib.HP_TAG_BITS, lib.HP_SEND_TAG, lib.HP_DRAIN_TAG
        self.F_MORE = lib.IORING_CQE_F_MORE
        self.F_BUFFER = lib.IORING_CQE_F_BUFFER
        self.BUFFER_SHIFT = lib.IORING_CQE_BUFFER_SHIFT

    @property
    def setup_flags(self) -> int:
        return self.lib.hp_ring_flags(self.r)

    def wait(self, back: list[int] | None = None) -> tuple[list[int], list[int], list[int]]:
        """Send `back` (see send_back; the list is emptied) - its reports come first -,
        submit queued SQEs, wait for >= 1 completion; (user_data, res, flags) lists.

        Raises InterruptedError on a signal, after Python ran its handler.
        """
        if back:
            if len(back) > self.BATCH:
                raise ValueError(f"{len(back)} buffers to send back, more than one batch ({self.BATCH})")
            n = self.lib.hp_wait_harvest(self.r, self._ud, self._res, self._flags, self.BATCH, back, len(back))
            back.clear()
        else:
            n = self.lib.hp_wait_harvest(self.r, self._ud, self._res, self._flags, self.BATCH, self.ffi.NULL, 0)
        if n < 0:
            if n == -errno.EINTR:
                raise InterruptedError()
            raise OSError(-n, f"io_uring_enter: {os.strerror(-n)}")
        return self._ud_mv[:n].tolist(), self._res_mv[:n].tolist(), self._flags_mv[:n].tolist()

    def take(self, bid: int, n: int) -> bytes:
        """Copy `n` bytes out of provided buffer `bid`. A buffer a completion handed
        out goes back to the kernel at the next wait(): copy it before that."""
        off = bid * self.bufsize
        return self.bufs[off:off + n].tobytes()       # type: ignore[index]

    def _check(self, ret: int, what: str) -> None:
        if ret < 0:
            raise OSError(-ret, f"{what}: {os.strerror(-ret)}")

    def prep_accept(self, fd: int, ud: int, multishot: bool = True) -> None:
        self._check(self.lib.hp_prep_accept(self.r, fd, ud, int(multishot)), "prep accept")

    def prep_recv(self, fd: int, ud: int, multishot: bool = True) -> None:
        self._check(self.lib.hp_prep_recv(self.r, fd, ud, int(multishot)), "prep recv")

    def send(self, fd: int, data: bytes) -> int:
        """Queue a copy of `data` on fd's send queue (kept in C, one send in flight
        per fd); the bytes now queued for fd. Successful sends post no completion;
        a failed one posts SEND_TAG with res < 0, after which send() raises."""
        n = self.lib.hp_send(self.r, fd, data, len(data))
        if n < 0:
            raise OSError(-n, f"send on fd {fd}: {os.strerror(-n)}")
        return n

    def send_buf(self, fd: int, bid: int, n: int) -> int:
        """Like send() of the first `n` bytes of provided buffer `bid` (handed out by
        the last wait()), sent from the buffer itself: it goes back to the kernel when
        the send is done. While half of the buffers are lent to sends, the bytes are
        copied instead, so that stalled sends never take the buffers recvs need."""
        queued = self.lib.hp_send_buf(self.r, fd, bid, n)
        if queued < 0:
            raise OSError(-queued, f"send of buffer {bid} on fd {fd}: {os.strerror(-queued)}")
        return queued

    def send_back(self, bids: list[int]) -> list[tuple[int, int]]:
        """send_buf() of each buffer the last wait() handed out in `bids`, on the
        connection its data came from (an echo of a batch of recvs in one call; wait()
        takes the list too). The list is emptied. Returns (fd, queued) for each send
        that failed (queued < 0) or left more than set_high_water()'s mark queued."""
        if len(bids) > self.BATCH:
            raise ValueError(f"{len(bids)} buffers to send back, more than one batch ({self.BATCH})")
        k = self.lib.hp_send_back(self.r, bids, len(bids), self._rep_ud, self._rep_res)
        bids.clear()
        return [(self._rep_ud[i] >> self.TAG_BITS, self._rep_res[i]) for i in range(k)]

    def set_high_water(self, mark: int) -> None:
        """send_back() and wait() report a connection whose queue passes `mark` bytes
        (by default none is reported but a failed send)."""
        self.lib.hp_set_high_water(self.r, mark)

    def send_notify(self, fd: int, mark: int) -> int:
        """Post one DRAIN_TAG completion once fd's queue is <= mark bytes; the bytes
        queued now (if already <= mark, none will come)."""
        return self.lib.hp_send_notify(self.r, fd, mark)

    def send_forget(self, fd: int) -> None:
        """Drop fd's send queue (it is closed, and nothing of it is in flight)."""
        self.lib.hp_send_forget(self.r, fd)

    def prep_cancel(self, target_ud: int, ud: int) -> None:
        self._check(self.lib.hp_prep_cancel(self.r, target_ud, ud), "prep cancel")

    def prep_nop(self, ud: int) -> None:
        self._check(self.lib.hp_prep_nop(self.r, ud), "prep nop")

    def prep_poll(self, fd: int, ud: int) -> None:
        """One completion (res: the poll events) once fd is readable."""
        self._check(self.lib.hp_prep_poll(self.r, fd, ud), "prep poll")

    def submit(self) -> int:
        return self.lib.hp_submit(self.r)

    def close(self) -> None:
        if self.r != self.ffi.NULL:
            self.bufs = None
            self.lib.hp_ring_free(self.r)
            self.r = self.ffi.NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
