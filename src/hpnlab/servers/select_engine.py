"""select: a reactor on select(2), the oldest demultiplexer.

select takes bit sets of descriptors that the kernel rewrites on return, so
every call copies and scans them all; and the sets have FD_SETSIZE = 1024
bits, so a descriptor number >= 1024 cannot be watched at all. This engine
closes such connections at once: select cannot serve ~1000+ connections.
(The module is not called select.py so that it never shadows the stdlib's.)
"""
from __future__ import annotations

from .reactor import Reactor


class Select(Reactor):
    name = "select"
    backend = "select"


ENGINE = Select
