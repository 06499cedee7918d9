"""The commands, one module per data type (plus connection/server and keys), each
registering itself in core.COMMANDS with @command. Redis's documentation (and a
real redis-server, in the tests) is the spec for replies and error texts."""
from __future__ import annotations

from . import hashes, keys, lists, server, sets, strings, zsets  # noqa: F401  (register)
