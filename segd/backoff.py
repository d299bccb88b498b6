"""Restart delays for `segd up`'s children: a child that keeps exiting (a worker killed by an
input, out of memory) is restarted ever more slowly instead of stopping the whole service."""

from __future__ import annotations


class Backoff:
    """1 s before the first restart, doubling with each exit that follows the previous one
    within `reset_s`, at most `max_s`; a child that ran `reset_s` without exiting starts over."""

    def __init__(self, first_s: float = 1.0, max_s: float = 60.0, reset_s: float = 300.0):
        self.first_s, self.max_s, self.reset_s = first_s, max_s, reset_s
        self._delay_s = 0.0
        self._last_exit: float | None = None

    def next_delay_s(self, now: float) -> float:
        """The delay before restarting a child that exited at `now` (monotonic seconds)."""
        if self._last_exit is None or now - self._last_exit > self.reset_s + self._delay_s:
            self._delay_s = self.first_s
        else:
            self._delay_s = min(self._delay_s * 2, self.max_s)
        self._last_exit = now
        return self._delay_s
