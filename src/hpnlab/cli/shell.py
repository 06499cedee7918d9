from __future__ import annotations

import os

from ._common import provider_from

HELP = "open an interactive shell on a lab host"


def add_arguments(parser) -> None:
    parser.add_argument("host")


def run(args) -> int:
    argv = provider_from(args).shell_argv(args.host)
    os.execvp(argv[0], argv)
