"""Per-stream fairness on the live path: how fast a stream may send audio.

A stream is live audio: it arrives about as fast as it lasts. One that sends much faster (a file pushed
as fast as the wire allows) is served too, but it must not take the model from the streams that are
live: after a burst of ``realtime_burst_s`` seconds of audio it is held to ``max_realtime_factor`` times
real time. Holding means not reading its next chunk yet, so HTTP/2 flow control pushes back on the
client; nothing is buffered and nothing is refused.
"""

from __future__ import annotations

import asyncio
import time


class RealTimePacer:
    """Tells a stream how long to wait before its next chunk so it stays under ``factor`` x real time.

    Audio up to ``burst_s`` seconds is free; after that, ``audio_s`` seconds of audio may not arrive
    sooner than ``(audio_s - burst_s) / factor`` seconds after the stream started. ``factor`` 0 = no limit.
    """

    def __init__(self, factor: float, burst_s: float, clock: float | None = None) -> None:
        self.factor = factor
        self.burst_s = burst_s
        self.started = time.monotonic() if clock is None else clock
        self.audio_s = 0.0
        self.waited_s = 0.0

    def delay(self, audio_s: float, now: float | None = None) -> float:
        """Record ``audio_s`` more seconds of audio; the seconds to wait before reading more."""
        self.audio_s += audio_s
        if self.factor <= 0 or self.audio_s <= self.burst_s:
            return 0.0
        now = time.monotonic() if now is None else now
        due = self.started + (self.audio_s - self.burst_s) / self.factor
        return max(0.0, due - now)

    async def pace(self, audio_s: float) -> None:
        """Record ``audio_s`` seconds of audio and wait as long as :meth:`delay` says."""
        if (wait := self.delay(audio_s)) > 0:
            self.waited_s += wait
            await asyncio.sleep(wait)
