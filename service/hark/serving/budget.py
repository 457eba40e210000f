"""The in-flight audio budget: a byte count every chunk and clip reserves while it is decoded and scored.

Each bound on its own (chunk size, clip size, concurrent calls) allows a product that can still exceed the
memory the server has; this one caps the sum. A reservation that does not fit is refused at once with
``RESOURCE_EXHAUSTED`` and a retry hint, never queued: waiting would hold the call (and its bytes) anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hark.serving.errors import RETRY_PUSHBACK_MS, Refusal

# What one byte of PCM on the wire costs while it is processed: the bytes themselves (twice: gRPC's buffer
# and the message), float32 samples (twice the int16 bytes), the resampled copy, log-Mel frames and the FFT's
# intermediates for a block of frames (the windows are views of the frames, not copies). Measured on a 4 MB
# int16 clip at 16 kHz: about 12 bytes per byte when the windows were copied, about 8 since (server RSS
# +32 MiB at peak); the figure keeps the margin.
COST_PER_PCM_BYTE = 12


class AudioBudget:
    """Bytes of audio in flight, at most ``limit``. Single-threaded: used from the event loop only."""

    def __init__(self, limit: int, what: str = "audio in flight") -> None:
        self.limit = limit
        self.what = what
        self.used = 0
        self.refused = 0

    def cost(self, pcm_bytes: int) -> int:
        """What ``pcm_bytes`` of PCM reserve while they are processed."""
        return pcm_bytes * COST_PER_PCM_BYTE

    @contextlib.contextmanager
    def reserve(self, pcm_bytes: int) -> Iterator[None]:
        """Hold the cost of ``pcm_bytes`` for the ``with`` block; refuse when it does not fit."""
        cost = self.cost(pcm_bytes)
        if self.used + cost > self.limit and pcm_bytes > 0:
            self.refused += 1
            raise Refusal(
                "RESOURCE_EXHAUSTED",
                f"the server's memory for {self.what} ({self.limit // 2**20} MiB) is full; "
                f"send smaller chunks or retry in {RETRY_PUSHBACK_MS / 1000:g} s",
                retry_after_ms=RETRY_PUSHBACK_MS,
            )
        self.used += cost
        try:
            yield
        finally:
            self.used -= cost
