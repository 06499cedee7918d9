"""poll: a reactor on poll(2).

poll lifts select's FD_SETSIZE limit (an array of pollfd instead of a bit
set), but every call hands the kernel the whole array and the kernel walks
every registered descriptor, so its cost grows with the number of
connections, busy or idle.
"""
from __future__ import annotations

from .reactor import Reactor


class Poll(Reactor):
    name = "poll"
    backend = "poll"


ENGINE = Poll
