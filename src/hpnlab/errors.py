"""The one error contract: every error hpnlab means a user to read is an HpnlabError.

It carries the message (what went wrong, naming the field, host or file), a
hint (what to do about it) and the exit status the CLI returns. `cli.main`
catches HpnlabError once and prints `hpnlab: message` and `hint: ...`, no
traceback (HPNLAB_DEBUG=1 shows it).
"""
from __future__ import annotations


class HpnlabError(Exception):
    hint: str | None = None     # a subclass may give every instance the same hint
    exit_code: int = 1

    def __init__(self, message: str = "", hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)
