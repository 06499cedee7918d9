"""Errors: a frame that fails a layer's checks, and errno-style socket errors."""
from __future__ import annotations

import errno
import os


class ParseError(ValueError):
    """A frame failed a check. `reason` names the check (and so the counter bumped);
    the message names the field or byte."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.counter = f"drop.{reason}"     # the stack prefixes the layer: "ipv4.drop.bad_checksum"


class SocketError(OSError):
    """What the BSD call would have set errno to (EAGAIN, ECONNREFUSED, ...)."""

    def __init__(self, code: int, detail: str = ""):
        text = os.strerror(code) + (f": {detail}" if detail else "")
        super().__init__(code, text)

    @property
    def name(self) -> str:
        return errno.errorcode.get(self.errno, str(self.errno))
