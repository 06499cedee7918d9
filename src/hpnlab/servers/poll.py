"""poll: a reactor on poll(2).

poll lifts select's FD_SETSIZE limit (an array of pollfd instead of a bit
set), but every call hands the kernel the whole array and the kernel walks
every registered descriptor, so its cost grows with the number of
connections, busy or idle.
"""
from __future__ import annotations

import select

from .reactor import PollerReactor


class Poll(PollerReactor):
    name = "poll"
    IN, OUT = select.POLLIN, select.POLLOUT
    ERR = select.POLLHUP | select.POLLERR | select.POLLNVAL

    def new_poller(self):
        return select.poll()

    def wait(self):
        return self.poller.poll()


ENGINE = Poll
