"""What the labs' agents (the programs that run on lab hosts) share. Kept
free of heavy imports: an agent starts in a fresh interpreter on every run."""
from __future__ import annotations

import socket
import sys
from collections.abc import Callable


def listener(port: int, backlog: int = 16, addr: str = "0.0.0.0") -> socket.socket:
    """A listening TCP socket with SO_REUSEADDR (a lab re-runs on the same ports)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(backlog)
    return s


def dispatch(module: str, commands: dict[str, Callable[[list[str]], int]], argv: list[str] | None = None) -> int:
    """`python -m hpnlab.labs.<module> COMMAND ...`: run the agent COMMAND names."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    print(f"usage: python -m hpnlab.labs.{module} {'|'.join(commands)} ...  "
          f"(the lab itself: hpnlab lab {module})", file=sys.stderr)
    return 2
