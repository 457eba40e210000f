"""Debug capture: the one place audio may be written out of the server.

Opt-in (``debug_capture_dir``), bounded per stream (``debug_capture_max_bytes``) and in total, written
with owner-only permissions. The stream pipeline feeds it; no transport touches audio files.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

from hark.config import Settings
from hark.core.audio import PCM_F32LE, PCM_S16LE


class AudioCapture:
    """Writes the first ``max_bytes`` of each stream's PCM to ``<dir>/<stream_id>.wav``, for debugging.

    Off unless ``debug_capture_dir`` is set. Bounded twice: per stream by ``max_bytes``, and in total by
    ``max_files`` (the oldest stays; new streams stop being captured), so a busy server cannot fill its
    disk. Files are written once, when the stream ends, with owner-only permissions.
    """

    def __init__(self, directory: Path, max_bytes: int, max_files: int = 100) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._written = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioCapture | None:
        if settings.debug_capture_dir is None or settings.debug_capture_max_bytes <= 0:
            return None
        directory = settings.debug_capture_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(directory, settings.debug_capture_max_bytes)

    def stream(self, stream_id: str, sample_rate: int, encoding: str) -> StreamCapture:
        return StreamCapture(self, stream_id, sample_rate, encoding)

    def _claim(self) -> bool:
        with self._lock:
            if self._written >= self.max_files:
                return False
            self._written += 1
            return True


class StreamCapture:
    """One stream's captured bytes; :meth:`write` saves them (call it off the event loop)."""

    def __init__(self, owner: AudioCapture, stream_id: str, sample_rate: int, encoding: str) -> None:
        self._owner = owner
        self.path = owner.directory / f"{re.sub(r'[^0-9a-zA-Z_-]', '_', stream_id)}.wav"
        self.sample_rate = sample_rate
        self.encoding = encoding
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, pcm: bytes) -> None:
        room = self._owner.max_bytes - self._size
        if room > 0 and pcm:
            piece = pcm[:room]
            self._chunks.append(piece)
            self._size += len(piece)

    def write(self) -> Path | None:
        """Save the captured audio as WAV; None when there is none or the capture budget is spent."""
        data = b"".join(self._chunks)
        width = 2 if self.encoding == PCM_S16LE else 4
        data = data[: len(data) - len(data) % width]
        if not data or not self._owner._claim():
            return None
        if self.encoding == PCM_F32LE:
            samples, subtype = np.frombuffer(data, dtype="<f4"), "FLOAT"
        else:
            samples, subtype = np.frombuffer(data, dtype="<i2"), "PCM_16"
        partial = self.path.with_name(self.path.name + ".part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            sf.write(f, samples, self.sample_rate, subtype=subtype, format="WAV")
        os.replace(partial, self.path)  # whoever lists the folder sees whole files only
        return self.path
