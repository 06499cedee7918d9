"""`hpnlab exec HOST -- CMD`: run a command on a lab host; its exit status is exec's."""
from __future__ import annotations

import sys

from ._common import add_format, positive_float, print_json, provider_from

HELP = "run a command on a lab host: hpnlab exec h1 -- ss -lnt"


def add_arguments(parser) -> None:
    parser.add_argument("host")
    parser.add_argument("cmd", nargs="+", metavar="-- CMD", help="the command and its arguments")
    parser.add_argument("--timeout", type=positive_float, default=3600.0)
    add_format(parser)


def run(args) -> int:
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    host = provider_from(args).host(args.host)
    result = host.run(cmd, timeout=args.timeout, check=False)
    if args.format == "json":
        print_json("exec", {"host": host.name, "cmd": cmd, "rc": result.rc, "stdout": result.stdout,
                            "stderr": result.stderr, "seconds": round(result.seconds, 3)})
        return result.rc
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc
