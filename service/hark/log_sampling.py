"""Log lines that a client can cause once per call, at most so many a second.

Hostile clients: a flood of cancelled, reset or refused calls wrote a line per call (150 k resets, a line
each). A :class:`LogSampler` lets the first ``per_second`` lines of each second through and counts the rest
into the next line it lets through (``skipped=N``); metrics still count every call.
"""

from __future__ import annotations

import time


class LogSampler:
    """A log line per event, at most ``per_second`` of them a second; the rest are counted into the next one."""

    def __init__(self, per_second: float = 10.0) -> None:
        self.per_second = per_second
        self._window = 0.0
        self._count = 0
        self.suppressed = 0

    def allow(self) -> int | None:
        """None to skip this line; otherwise how many lines were skipped before it."""
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._count = now, 0
        if self._count >= self.per_second:
            self.suppressed += 1
            return None
        self._count += 1
        skipped, self.suppressed = self.suppressed, 0
        return skipped
