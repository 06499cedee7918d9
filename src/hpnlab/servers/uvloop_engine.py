"""uvloop: the asyncio Protocol engine on uvloop (libuv in C), the fast reference."""
from __future__ import annotations

from . import missing_module
from .asyncio_engine import AsyncioServer


class UvloopServer(AsyncioServer):
    name = "uvloop"

    @classmethod
    def unavailable(cls):
        return missing_module("uvloop")

    def new_loop(self):
        import uvloop
        return uvloop.new_event_loop()


ENGINE = UvloopServer
