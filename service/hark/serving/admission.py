"""Admission: how many classification calls run, whether new ones may start, and waiting for them to end.

One object per server, shared by every transport, so ``max_streams`` and a drain mean the same thing
whichever wire a call came in on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from hark.serving.errors import RETRY_PUSHBACK_MS, Refusal


class Admission:
    """Counts streams (for ``max_streams``) and all classification calls (which a drain waits for)."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.active_streams = 0
        self.active_calls = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def check_open(self) -> None:
        """Refuse with UNAVAILABLE while draining."""
        if self.draining:
            raise Refusal("UNAVAILABLE", "server is shutting down")

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Hold a stream slot (and a call) for the ``with`` block; refuse when draining or at the limit."""
        self.check_open()
        if self.active_streams >= self.max_streams:
            raise Refusal(
                "RESOURCE_EXHAUSTED",
                f"server is at its limit of {self.max_streams} concurrent streams; "
                f"retry in {RETRY_PUSHBACK_MS / 1000:g} s",
                retry_after_ms=RETRY_PUSHBACK_MS,
            )
        self.active_streams += 1
        try:
            with self.call():
                yield
        finally:
            self.active_streams -= 1

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Track a classification call for the ``with`` block, so a drain waits for it."""
        self.check_open()
        self.active_calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active_calls -= 1
            if self.active_calls == 0:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new calls; wait up to ``grace`` s for running ones. True if they all ended."""
        self.draining = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
