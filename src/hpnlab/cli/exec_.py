from __future__ import annotations

import sys

from ._common import provider_from

HELP = "run a command on a lab host: hpnlab exec h1 -- ss -lnt"


def add_arguments(parser) -> None:
    parser.add_argument("host")
    parser.add_argument("cmd", nargs="+", metavar="-- CMD", help="the command and its arguments")
    parser.add_argument("--timeout", type=float, default=3600.0)


def run(args) -> int:
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    host = provider_from(args).host(args.host)
    result = host.run(cmd, timeout=args.timeout, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc
