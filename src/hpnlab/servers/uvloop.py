"""uvloop: the asyncio Protocol engine on uvloop (libuv in C), the fast reference."""
from __future__ import annotations

from .asyncio import AsyncioServer


class UvloopServer(AsyncioServer):
    name = "uvloop"

    @classmethod
    def unavailable(cls):
        try:
            import uvloop  # noqa: F401
        except ImportError as exc:
            return f"uvloop is not installed ({exc})"
        return None

    def new_loop(self):
        import uvloop
        return uvloop.new_event_loop()


ENGINE = UvloopServer
