"""The one definition of Hark's features: log-Mel frames of 16-bit PCM audio.

Training, export, evaluation and the server all compute features here, so what a model was trained on
is what it is served. Frames are "valid" frames (no centre padding): frame ``i`` covers samples
``[i*hop, i*hop + win_length)``. That makes a stream's frames independent of how its audio was chunked,
so :class:`StreamingLogMel` fed any chunking yields exactly :func:`LogMel.frames` of the whole clip.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import librosa
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

FloatArray = npt.NDArray[np.float32]


class FrontendConfig(BaseModel):
    """Every parameter that shapes a feature; written into each model version's manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["logmel"] = "logmel"
    sample_rate: int = Field(16_000, ge=8_000, le=48_000)
    n_fft: int = Field(512, ge=64, le=4096)
    win_length: int = Field(400, ge=16)
    hop_length: int = Field(160, ge=1)
    n_mels: int = Field(40, ge=1, le=256)
    fmin: float = Field(20.0, ge=0.0)
    fmax: float = 7_600.0
    mel_scale: Literal["slaney", "htk"] = "slaney"
    power: float = Field(2.0, gt=0.0)
    log_offset: float = Field(1e-6, gt=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> FrontendConfig:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if self.hop_length > self.win_length:
            raise ValueError(f"hop_length {self.hop_length} exceeds win_length {self.win_length}")
        if not self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}")
        return self

    def n_frames(self, n_samples: int) -> int:
        """How many whole frames ``n_samples`` of audio hold."""
        if n_samples < self.win_length:
            return 0
        return 1 + (n_samples - self.win_length) // self.hop_length

    def n_samples(self, n_frames: int) -> int:
        """The fewest samples that hold ``n_frames`` frames."""
        return 0 if n_frames <= 0 else self.win_length + (n_frames - 1) * self.hop_length


class LogMel:
    """Whole-clip log-Mel frames: ``(n_frames, n_mels)`` float32 from float audio in [-1, 1]."""

    def __init__(self, config: FrontendConfig | None = None) -> None:
        self.config = config or FrontendConfig()

    @cached_property
    def _window(self) -> FloatArray:
        return np.hanning(self.config.win_length + 1)[:-1].astype(np.float32)  # periodic Hann

    @cached_property
    def _mel_basis_t(self) -> FloatArray:
        c = self.config
        basis = librosa.filters.mel(
            sr=c.sample_rate,
            n_fft=c.n_fft,
            n_mels=c.n_mels,
            fmin=c.fmin,
            fmax=c.fmax,
            htk=c.mel_scale == "htk",
            norm="slaney" if c.mel_scale == "slaney" else None,
            dtype=np.float32,
        )
        return np.ascontiguousarray(basis.T)

    def frames(self, audio: npt.ArrayLike) -> FloatArray:
        """All whole frames of ``audio`` (mono float samples at ``config.sample_rate``)."""
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {samples.shape}")
        n = self.config.n_frames(samples.size)
        if n == 0:
            return np.empty((0, self.config.n_mels), dtype=np.float32)
        c = self.config
        framed = np.lib.stride_tricks.sliding_window_view(samples, c.win_length)[:: c.hop_length][:n]
        spectrum = np.abs(np.fft.rfft(framed * self._window, n=c.n_fft, axis=1))
        if c.power != 1.0:
            spectrum = spectrum**c.power
        mel = spectrum.astype(np.float32) @ self._mel_basis_t
        features: FloatArray = np.log(mel + np.float32(c.log_offset)).astype(np.float32, copy=False)
        return features


class StreamingLogMel:
    """Incremental log-Mel: each ``push`` computes only the frames the new audio completes.

    It holds at most one frame's worth of pending samples plus one block in a buffer allocated once,
    so a stream's memory does not grow with its length or its chunk sizes.
    """

    def __init__(self, config: FrontendConfig | None = None, block_frames: int = 32) -> None:
        self._logmel = LogMel(config)
        self.config = self._logmel.config
        c = self.config
        self._block = block_frames * c.hop_length
        self._buf = np.zeros(c.win_length + self._block, dtype=np.float32)
        self._fill = 0
        self.frames_emitted = 0
        self.samples_seen = 0

    def push(self, audio: npt.ArrayLike) -> FloatArray:
        """Feed mono float samples; return the ``(k, n_mels)`` frames they complete (k may be 0)."""
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        self.samples_seen += samples.size
        out: list[FloatArray] = []
        pos = 0
        while pos < samples.size:
            take = min(samples.size - pos, self._buf.size - self._fill)
            self._buf[self._fill : self._fill + take] = samples[pos : pos + take]
            self._fill += take
            pos += take
            out.append(self._drain())
        if not out:
            return np.empty((0, self.config.n_mels), dtype=np.float32)
        frames = out[0] if len(out) == 1 else np.concatenate(out)
        self.frames_emitted += frames.shape[0]
        return frames

    def _drain(self) -> FloatArray:
        n = self.config.n_frames(self._fill)
        frames = self._logmel.frames(self._buf[: self._fill])
        consumed = n * self.config.hop_length
        if consumed:
            rest = self._fill - consumed
            self._buf[:rest] = self._buf[consumed : self._fill]
            self._fill = rest
        return frames

    def reset(self) -> None:
        self._fill = 0
        self.frames_emitted = 0
        self.samples_seen = 0
