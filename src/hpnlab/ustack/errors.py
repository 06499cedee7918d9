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
    """What the BSD call would have set errno to (EAGAIN, ECONNREFUSED, ...).

    Like a kernel socket's error it is also the built-in class for its errno, so code
    written for kernel sockets works unchanged: EAGAIN is a BlockingIOError,
    ECONNRESET a ConnectionResetError, ETIMEDOUT a TimeoutError, ..."""

    def __new__(cls, code: int, detail: str = ""):
        if cls is SocketError:
            cls = _BY_ERRNO.get(code, cls)
        return super().__new__(cls, code, os.strerror(code) + (f": {detail}" if detail else ""))

    def __init__(self, code: int, detail: str = ""):
        super().__init__(code, os.strerror(code) + (f": {detail}" if detail else ""))

    @property
    def name(self) -> str:
        return errno.errorcode.get(self.errno or 0, str(self.errno))


# errno -> a SocketError that is also the built-in OSError subclass Python picks for it
_BY_ERRNO: dict[int, type[SocketError]] = {}
for _code in errno.errorcode:
    _builtin = type(OSError(_code, ""))
    if _builtin is not OSError:
        _BY_ERRNO[_code] = type(f"Socket{_builtin.__name__}", (SocketError, _builtin), {})
