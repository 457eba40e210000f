"""Client-side audio: reading a clip, cutting it into chunks, and pacing chunks at the speed of their audio."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import soundfile as sf

from hark.core.audio import AudioError, check_sample_rate, read_audio

DEFAULT_SAMPLE_RATE: Final = 16_000

FloatArray = npt.NDArray[np.float32]
AudioChunk = FloatArray | bytes

# libsndfile logs "data : <declared> (should be <actual>)" when a WAV's data chunk is cut short.
_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Writers that stream to a pipe cannot know the length and put 0 or a huge placeholder in the header.
_PLACEHOLDER_LENGTH = 0x7FFF0000


def read_clip(path: Path | str, sample_rate: int = DEFAULT_SAMPLE_RATE) -> FloatArray:
    """Read any WAV/FLAC as mono float32 at ``sample_rate``, refusing WAVs that were cut short.

    libsndfile quietly returns the part of a truncated WAV that is there; a client classifying a
    half-written recording should hear about it rather than get a confident answer for half a word.
    """
    check_sample_rate(sample_rate)
    if Path(path).is_dir():
        raise AudioError(f"{path} is a directory, not an audio file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        if not Path(path).exists():
            raise AudioError(f"{path}: no such file") from e
        raise AudioError(f"cannot read {path} as audio: {e}") from e
    if info.format in ("WAV", "WAVEX", "RF64") and (m := _SHORT_DATA.search(info.extra_info)):
        declared, actual = int(m.group(1)), int(m.group(2))
        if actual < declared < _PLACEHOLDER_LENGTH:
            raise AudioError(f"{path} is truncated: its header declares {declared} bytes of audio, it holds {actual}")
    return read_audio(path, sample_rate)


def split_chunks(samples: FloatArray, sample_rate: int, chunk_ms: float) -> Iterator[FloatArray]:
    """Cut a clip into ``chunk_ms`` pieces (the last may be shorter), as a microphone would deliver it."""
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
    step = max(1, round(sample_rate * chunk_ms / 1000))
    for start in range(0, len(samples), step):
        yield samples[start : start + step]


class Pacer:
    """Releases chunks at the pace of their audio: chunk k goes out at t0 + (audio sent before it).

    Deadlines come from the start time, not from the previous send, so time spent serialising or
    in a slow scheduler does not accumulate into drift over a long stream. :meth:`delay` says how long
    to wait (the async client sleeps it on its loop); :meth:`wait_turn` waits it with ``wait``.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] = time.sleep,
    ) -> None:
        self._clock = clock
        self._wait = wait
        self._t0: float | None = None
        self._sent_s = 0.0

    def delay(self) -> float:
        """Seconds until the next chunk is due (0 for the first, which starts the clock)."""
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        return max(0.0, self._t0 + self._sent_s - now)

    def wait_turn(self) -> None:
        """Block until the next chunk is due (the first is due at once)."""
        if (delay := self.delay()) > 0:
            self._wait(delay)

    def sent(self, duration_s: float) -> None:
        self._sent_s += duration_s
