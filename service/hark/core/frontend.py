"""The one definition of Hark's features: log-Mel frames of 16-bit PCM audio.

Training, export, evaluation and the server all compute features here, so what a model was trained on
is what it is served. Frames are "valid" frames (no centre padding): frame ``i`` covers samples
``[i*hop, i*hop + win_length)``. That makes a stream's frames independent of how its audio was chunked,
so :class:`StreamingLogMel` fed any chunking yields exactly :func:`LogMel.frames` of the whole clip.

Two log kinds: ``"ln"`` (the default, ``ln(mel + log_offset)``) and ``"db"`` (``10·log10(max(mel, log_floor))``,
librosa's ``power_to_db``), each followed by ``feature_scale · x + feature_offset``. The ``"db"`` kind with
``input_scale`` reproduces the input of pretrained speech backbones such as openWakeWord's (see
``hark_training.backbone``). Every feature is a function of its own frame alone: a level relative to the loudest
frame of the input (``top_db``) is deliberately not offered, since a stream cannot know that maximum.
"""

from __future__ import annotations

import math
from functools import cached_property, lru_cache
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
    log: Literal["ln", "db"] = "ln"
    log_offset: float = Field(1e-6, gt=0.0, description='"ln" only: ln(mel + log_offset).')
    log_floor: float = Field(1e-10, gt=0.0, description='"db" only: 10·log10(max(mel, log_floor)).')
    input_scale: float = Field(1.0, gt=0.0, description="Samples are multiplied by this first (32768: int16 units).")
    feature_scale: float = Field(1.0, gt=0.0, description="Features are feature_scale · log + feature_offset.")
    feature_offset: float = 0.0

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

    @property
    def log_power_affine(self) -> tuple[float, float]:
        """``(a, b)`` with ``feature = a·ln(P) + b`` above the floor, ``P`` the Mel power of audio in [-1, 1].

        What level arithmetic needs (a gain adds ``a·ln(gain)``, mixing adds powers): gating and feature-domain
        augmentation work on ``ln(P) = (feature - b) / a`` whatever the log kind.
        """
        input_gain = self.power * math.log(self.input_scale)
        if self.log == "ln":
            return self.feature_scale, self.feature_offset + self.feature_scale * input_gain
        a = self.feature_scale * 10.0 / math.log(10.0)
        return a, self.feature_offset + a * input_gain

    @property
    def feature_floor(self) -> float:
        """The value of a silent band: the lowest feature this frontend gives."""
        if self.log == "ln":
            return self.feature_scale * math.log(self.log_offset) + self.feature_offset
        return self.feature_scale * 10.0 * math.log10(self.log_floor) + self.feature_offset


# Shared by every LogMel of one config (one per stream): a Mel basis is 41 KB and a librosa call, so each
# stream computing its own cost memory per stream and milliseconds per stream start. Read-only, so sharing
# across streams and threads is safe.
@lru_cache(maxsize=32)
def _analysis_window(win_length: int, input_scale: float) -> FloatArray:
    window = np.hanning(win_length + 1)[:-1].astype(np.float32)  # periodic Hann
    if input_scale != 1.0:
        window = window * np.float32(input_scale)
    window.flags.writeable = False
    return window


@lru_cache(maxsize=32)
def _mel_basis_t(c: FrontendConfig) -> FloatArray:
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
    basis_t = np.ascontiguousarray(basis.T)
    basis_t.flags.writeable = False
    return basis_t


# Frames computed together by :meth:`LogMel.frames` (about 4 MB of FFT intermediates at n_fft 512).
FRAMES_PER_BLOCK = 1024


class LogMel:
    """Whole-clip log-Mel frames: ``(n_frames, n_mels)`` float32 from float audio in [-1, 1]."""

    def __init__(self, config: FrontendConfig | None = None) -> None:
        self.config = config or FrontendConfig()

    # Looked up once per instance: hashing a config on every call would cost more than it saves.
    @cached_property
    def _window(self) -> FloatArray:
        return _analysis_window(self.config.win_length, self.config.input_scale)

    @cached_property
    def _mel_basis_t(self) -> FloatArray:
        return _mel_basis_t(self.config)

    def frames(self, audio: npt.ArrayLike) -> FloatArray:
        """All whole frames of ``audio`` (mono float samples at ``config.sample_rate``)."""
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {samples.shape}")
        n = self.config.n_frames(samples.size)
        if n == 0:
            return np.empty((0, self.config.n_mels), dtype=np.float32)
        c = self.config
        # Overlapping frames as a strided view, no copy. Built with the ndarray constructor: on a 100 ms
        # chunk ``sliding_window_view`` costs about as much as the FFT itself.
        samples = np.ascontiguousarray(samples)
        step = samples.itemsize
        framed = np.ndarray((n, c.win_length), np.float32, samples, 0, (c.hop_length * step, step))
        if n <= FRAMES_PER_BLOCK:
            return self._log(self._mel(framed))
        # A long clip in blocks of frames: each frame is computed alone, so the result is the same, and the
        # FFT's complex intermediates stay a few MB instead of 14 times the clip (138 MB for 125 s).
        out = np.empty((n, c.n_mels), dtype=np.float32)
        for i in range(0, n, FRAMES_PER_BLOCK):
            out[i : i + FRAMES_PER_BLOCK] = self._log(self._mel(framed[i : i + FRAMES_PER_BLOCK]))
        return out

    def _mel(self, framed: FloatArray) -> FloatArray:
        c = self.config
        spectrum = np.abs(np.fft.rfft(framed * self._window, n=c.n_fft, axis=1))
        if c.power != 1.0:
            spectrum = spectrum**c.power
        mel: FloatArray = spectrum.astype(np.float32) @ self._mel_basis_t
        return mel

    def _log(self, mel: FloatArray) -> FloatArray:
        c = self.config
        if c.log == "ln":
            logged = np.log(mel + np.float32(c.log_offset))
        else:
            logged = librosa.power_to_db(mel, ref=1.0, amin=c.log_floor, top_db=None)
        if c.feature_scale != 1.0 or c.feature_offset != 0.0:
            logged = logged * np.float32(c.feature_scale) + np.float32(c.feature_offset)
        features: FloatArray = logged.astype(np.float32, copy=False)
        return features

    def mel_power(self, features: FloatArray) -> FloatArray:
        """Each band's Mel power of audio in [-1, 1], back from its features (exact above the floor)."""
        c = self.config
        if c.log == "ln" and c.feature_scale == 1.0 and c.feature_offset == 0.0 and c.input_scale == 1.0:
            power: FloatArray = np.exp(features) - np.float32(c.log_offset)
            return power
        a, b = c.log_power_affine
        power = np.exp((features - np.float32(b)) / np.float32(a))
        return power


class StreamingLogMel:
    """Incremental log-Mel: each ``push`` computes only the frames the new audio completes.

    It holds at most one frame's worth of pending samples plus one block in a buffer allocated once,
    so a stream's memory does not grow with its length or its chunk sizes. The default block (16 hops) takes
    a 100 ms chunk in one pass at 16 kHz and keeps the buffer at 12 KB per stream; bigger chunks are taken
    a block at a time.
    """

    def __init__(self, config: FrontendConfig | None = None, block_frames: int = 16) -> None:
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

    def mel_power(self, features: FloatArray) -> FloatArray:
        """See :meth:`LogMel.mel_power`."""
        return self._logmel.mel_power(features)

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
