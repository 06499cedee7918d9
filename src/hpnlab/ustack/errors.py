"""Errors: a frame that fails a layer's checks, and errno-style socket errors."""
from __future__ import annotations

import errno
import os


class ParseError(ValueError):
    """A frame failed a layer's check. `reason` names the check, `counter` the stack's
    counter it bumps ("ipv4.drop.bad_checksum"); the message names the field or byte."""

    def __init__(self, layer: str, reason: str, detail: str):
        super().__init__(f"{layer}: {detail}")
        self.layer, self.reason = layer, reason
        self.counter = f"{layer}.drop.{reason}"


class SocketError(OSError):
    """What the BSD call would have set errno to (EAGAIN, ECONNREFUSED, ...)."""

    def __init__(self, code: int, detail: str = ""):
        text = os.strerror(code) + (f": {detail}" if detail else "")
        super().__init__(code, text)

    @property
    def name(self) -> str:
        return errno.errorcode.get(self.errno, str(self.errno))
