"""Bulk transfers with a running sha256, over any socket-like object (the stack's, the
kernel's, PyTCP's): what the interop suite compares end to end."""
from __future__ import annotations

import hashlib
import os
import time

CHUNK = os.urandom(1 << 16)


class Transfer:
    def __init__(self):
        self.hash, self.bytes, self.started = hashlib.sha256(), 0, time.monotonic()
        self.cpu_started = time.process_time()

    def result(self, event: str, **extra) -> dict:
        """The transfer's figures; cpu_s is the CPU time of the whole process (all its
        threads: a user-space stack's work included) while it ran."""
        secs = time.monotonic() - self.started
        return {"event": event, "bytes": self.bytes, "sha256": self.hash.hexdigest(), "secs": round(secs, 4),
                "mbps": round(self.bytes * 8 / secs / 1e6, 3) if secs > 0 else None,
                "cpu_s": round(time.process_time() - self.cpu_started, 4), **extra}


def receive_all(recv, bufsize: int = 1 << 18) -> Transfer:
    """recv(bufsize) until it returns b"" (EOF), hashing every byte."""
    t = Transfer()
    while True:
        data = recv(bufsize)
        if not data:
            return t
        t.hash.update(data)
        t.bytes += len(data)


def send_all(send, nbytes: int) -> Transfer:
    """send(chunk) -> bytes taken, until `nbytes` are taken, hashing what was taken."""
    t = Transfer()
    while t.bytes < nbytes:
        left = nbytes - t.bytes
        chunk = CHUNK[:left] if left < len(CHUNK) else CHUNK
        n = send(chunk)
        t.hash.update(chunk[:n])
        t.bytes += n
    return t
