"""Clip preprocessing shared by the data builder (``hark data``) and the client (``hark classify``).

Resampling to the model rate, trimming leading and trailing silence by an energy threshold, and peak or
RMS normalisation. The data set's words are trimmed and peak-normalised with these very functions, so a
client that prepares its clips the same way sends the model what it was trained on. Every function is
safe on silent, clipped and very short clips: nothing divides by zero and nothing returns NaN.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from hark.core.audio import resample

F = TypeVar("F", bound=np.floating[Any])

MODEL_SAMPLE_RATE = 16_000
"""The rate of every Hark model so far (``FrontendConfig.sample_rate``'s default)."""
SILENT_RMS = 1e-7
"""A frame (or clip) quieter than this (-140 dBFS) has no energy: trimming drops it, normalising leaves it."""
SILENT_PEAK = 1e-9
TRIM_THRESHOLD_DB = -40.0
DEFAULT_PEAK_DBFS = -15.0
"""Where ``hark classify`` puts a clip's peak: the middle of the data set's clip peaks (-30 to -1 dBFS)."""


class PreprocessConfig(BaseModel):
    """How a whole clip is prepared before it is classified (the options of ``hark classify``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trim: bool = Field(True, description="Cut leading and trailing silence, as the data set's words were.")
    trim_threshold_db: float = Field(
        TRIM_THRESHOLD_DB, le=0.0, description="Frames this far below the loudest frame count as silence."
    )
    normalize: Literal["none", "peak", "rms"] = Field("peak", description="Which level to set.")
    level_dbfs: float = Field(DEFAULT_PEAK_DBFS, le=0.0, description="Target peak or RMS level, dB full scale.")


def frame_rms(x: npt.NDArray[np.floating[Any]], frame: int) -> npt.NDArray[np.float64]:
    """RMS of consecutive ``frame``-sample frames; the last, partial frame is zero-padded."""
    n_frames = -(-x.size // frame)
    padded = np.zeros(n_frames * frame)
    padded[: x.size] = x
    rms: npt.NDArray[np.float64] = np.sqrt(np.mean(np.square(padded.reshape(n_frames, frame)), axis=1))
    return rms


def trim_silence(
    x: npt.NDArray[F],
    sample_rate: int = MODEL_SAMPLE_RATE,
    threshold_db: float = TRIM_THRESHOLD_DB,
    frame_ms: float = 10.0,
    pad_ms: float = 5.0,
) -> npt.NDArray[F]:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the loudest frame.

    The threshold is relative, so a quiet recording trims like a loud one. A clip with no energy at all
    trims to nothing (the caller decides what an empty clip means).
    """
    frame = max(1, int(sample_rate * frame_ms / 1000))
    if x.size == 0:
        return x[:0]
    rms = frame_rms(x, frame)
    loudest = float(rms.max())
    if not loudest > SILENT_RMS:
        return x[:0]
    active = np.flatnonzero(rms >= loudest * 10 ** (threshold_db / 20))
    pad = int(sample_rate * pad_ms / 1000)
    start = max(0, int(active[0]) * frame - pad)
    stop = min(x.size, (int(active[-1]) + 1) * frame + pad)
    return x[start:stop]


def normalize_peak(x: npt.NDArray[F], peak_dbfs: float) -> npt.NDArray[F]:
    """Scale so the largest sample sits at ``peak_dbfs``; a silent clip comes back as zeros."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not peak > SILENT_PEAK:
        return np.zeros_like(x)
    return (x * (10 ** (peak_dbfs / 20) / peak)).astype(x.dtype, copy=False)


def normalize_rms(x: npt.NDArray[F], rms_dbfs: float) -> npt.NDArray[F]:
    """Scale to an RMS of ``rms_dbfs``, but never past a peak of 0 dBFS; a silent clip comes back as zeros.

    A clip with a high crest factor (a click, a short word in a long pause) would otherwise be pushed
    into clipping, and clipped audio is not what the model was trained on.
    """
    rms = math.sqrt(float(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not rms > SILENT_RMS or not peak > SILENT_PEAK:
        return np.zeros_like(x)
    gain = min(10 ** (rms_dbfs / 20) / rms, 1.0 / peak)
    return (x * gain).astype(x.dtype, copy=False)


def preprocess(
    samples: npt.NDArray[np.float32], rate_in: int, rate_out: int, config: PreprocessConfig
) -> npt.NDArray[np.float32]:
    """Resample to ``rate_out``, trim and normalise as ``config`` says.

    A clip that trims to nothing (pure digital silence) is kept whole: silence is a valid clip to classify.
    """
    x = resample(samples, rate_in, rate_out)
    if config.trim:
        trimmed = trim_silence(x, rate_out, config.trim_threshold_db)
        x = trimmed if trimmed.size else x
    if config.normalize == "peak":
        return normalize_peak(x, config.level_dbfs)
    if config.normalize == "rms":
        return normalize_rms(x, config.level_dbfs)
    return x
