"""Sans-I/O protocol handlers: bytes in -> bytes out (+ close?).

Every server engine moves bytes; what the bytes mean lives here, so one
engine serves echo today and the KV store later without knowing either.

A protocol is a factory: `protocol.new()` returns the handler of one
connection. A handler has one method:

    feed(data: bytes) -> tuple[bytes, bool]

`data` is whatever the transport read (any split of the stream: partial
messages, several messages at once). The result is the bytes to send back
(possibly b"") and whether the connection should be closed once they are
sent. Stateless protocols (echo) may return one shared handler for every
connection, which keeps the memory cost of a connection down to what the
engine itself needs.

A handler whose class sets `takes_views = True` may be given a memoryview
instead of bytes, valid only during the call (an engine that reads into
buffers of its own - uring's provided buffers - then copies nothing); it may
return that same view, meaning "send these bytes back", and keeps no
reference to it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as _Protocol


class Handler(_Protocol):
    def feed(self, data: bytes) -> tuple[bytes, bool]: ...


class ProtocolFactory(_Protocol):
    name: str

    def new(self) -> Handler: ...


_REGISTRY: dict[str, Callable[[], ProtocolFactory]] = {}


def register(name: str, factory: Callable[[], ProtocolFactory]) -> None:
    _REGISTRY[name] = factory


def get(name: str) -> ProtocolFactory:
    if name not in _REGISTRY:
        raise ValueError(f"unknown protocol {name!r} (valid: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]()


def names() -> list[str]:
    return sorted(_REGISTRY)


from . import echo  # noqa: E402, F401 - registers itself, with register() defined above
