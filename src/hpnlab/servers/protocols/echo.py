"""Echo: every byte read is sent back unchanged; the peer decides when to stop."""
from __future__ import annotations

from . import register


class EchoHandler:
    __slots__ = ()
    takes_views = True      # returns what it is given, keeps nothing (see protocols)

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        return data, False


class Echo:
    name = "echo"
    # Echo keeps no state between reads, so all connections share one handler.
    _shared = EchoHandler()

    def new(self) -> EchoHandler:
        return self._shared


register("echo", Echo)
