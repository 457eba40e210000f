"""One idle deadline per stream, moved by a float per message instead of a timer per read and per write.

``async with asyncio.timeout(...)`` around every read and every write schedules a timer on the event loop
and cancels it again: two timer-heap operations per message, for a deadline that almost never fires. A
:class:`StreamDeadline` keeps one timer per stream. Reading and writing only move ``expires`` (an attribute
write); the timer, when it wakes, finds the deadline moved on and sleeps again until then, so it wakes about
once per ``timeout_s`` of a healthy stream. When the deadline has passed it cancels the stream's task, and
:meth:`StreamDeadline.expired` tells the handler which wait ran out (a read without audio, or a write the
client does not read), so it answers with the right status rather than a plain cancellation.
"""

from __future__ import annotations

import asyncio
import math
from typing import Literal

Wait = Literal["idle", "stalled"]
"""``idle``: no audio arrived in time; ``stalled``: a response was not read in time."""


class StreamDeadline:
    """The deadline of the stream handled by the current task; :meth:`close` it when the stream ends."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a StreamDeadline belongs to a task")
        self._task = task
        self._wait: Wait = "idle"
        self._expires = math.inf
        self._wake = math.inf  # when the timer is set to wake; inf: no timer
        self._handle: asyncio.TimerHandle | None = None
        self._fired: Wait | None = None

    def idle_from(self, since: float) -> None:
        """Audio must arrive within ``timeout_s`` of ``since`` (the loop's clock, ``now()``)."""
        self._arm("idle", since + self.timeout_s)

    def writing(self) -> None:
        """A response is being written: the client must take it within ``timeout_s``."""
        self._arm("stalled", self._loop.time() + self.timeout_s)

    def pause(self) -> None:
        """No deadline while the server itself works (inference, pacing)."""
        self._expires = math.inf

    def now(self) -> float:
        return self._loop.time()

    def expired(self) -> Wait | None:
        """Which wait ran out, once the deadline has cancelled the task (then the cancellation is taken back,
        so the handler can still answer); None for any other cancellation."""
        fired, self._fired = self._fired, None
        if fired is not None:
            self._task.uncancel()
        return fired

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._expires = self._wake = math.inf

    def _arm(self, wait: Wait, expires: float) -> None:
        self._wait, self._expires = wait, expires
        if expires < self._wake:  # no timer, or one set too late for this deadline
            self._schedule(expires)

    def _schedule(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._wake = when
        self._handle = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._handle, self._wake = None, math.inf
        if self._expires == math.inf:
            return  # paused: the next _arm sets a timer
        if self._loop.time() < self._expires:
            self._schedule(self._expires)
            return
        self._fired = self._wait
        self._expires = math.inf
        self._task.cancel()
