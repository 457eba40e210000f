"""From per-window class probabilities to debounced events: one spoken word, one event.

A word spans several overlapping windows, so raw per-window scores would fire many times. Each class
goes through three gates, in order:

1. **Smoothing**: the moving average of the last ``smoothing_windows`` windows (fewer at the start of
   a stream: the average of the windows seen so far), which irons out single-window spikes.
2. **Threshold with hysteresis**: a class fires when its smoothed score reaches ``threshold`` while
   *armed*; firing disarms it, and it re-arms only once the smoothed score drops below
   ``release_threshold``. A word that stays above the threshold for many hops fires once.
3. **Refractory period**: after an event a class stays quiet for ``refractory_s`` seconds of stream
   audio even if it re-arms, so a score that wobbles around the release level cannot fire twice for one
   word. A crossing inside the refractory period is absorbed (the class disarms without firing).
4. **Hold-off across classes**: until the last event's class falls below ``release_threshold``, and for
   ``holdoff_s`` after, no other class fires. As a word slides out of the window its tail can look
   like another word ("stop" ends in something like "up"); this absorbs that echo. One event per window,
   the strongest.

Background classes (silence, unknown words) are smoothed and reported but never fire. Pure: no I/O,
no clocks; time is the caller's stream time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hark.config import Settings
from hark.core.model_store import Manifest

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PostprocessConfig:
    labels: tuple[str, ...]
    background_labels: frozenset[str]
    smoothing_windows: int = 3
    threshold: float = 0.6
    release_threshold: float = 0.3
    refractory_s: float = 1.0
    holdoff_s: float = 0.3

    def __post_init__(self) -> None:
        if self.smoothing_windows < 1:
            raise ValueError("smoothing_windows must be at least 1")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if self.release_threshold > self.threshold:
            raise ValueError(
                f"release_threshold {self.release_threshold} exceeds threshold {self.threshold}; "
                "a class would re-arm while still above the level that fires it"
            )
        if self.refractory_s < 0 or self.holdoff_s < 0:
            raise ValueError("refractory_s and holdoff_s must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings, manifest: Manifest) -> PostprocessConfig:
        return cls(
            labels=tuple(manifest.labels),
            background_labels=frozenset(manifest.background_labels),
            smoothing_windows=settings.smoothing_windows,
            threshold=settings.threshold,
            # A release level above the threshold is a misconfiguration that would disable hysteresis;
            # clamp rather than refuse to serve.
            release_threshold=min(settings.release_threshold, settings.threshold),
            refractory_s=settings.refractory_s,
            holdoff_s=settings.holdoff_s,
        )


@dataclass(frozen=True)
class Detection:
    """One event: ``time_s`` is the centre of the window that triggered it, in stream seconds."""

    label: str
    score: float
    time_s: float


class Postprocessor:
    """The per-stream state of smoothing, hysteresis and refractory periods. Feed windows in order."""

    def __init__(self, config: PostprocessConfig) -> None:
        self.config = config
        n = len(config.labels)
        self._history = np.zeros((config.smoothing_windows, n), dtype=np.float64)
        self._seen = 0
        self._armed = np.ones(n, dtype=bool)
        self._last_event = np.full(n, -math.inf, dtype=np.float64)
        self._can_fire = np.array([label not in config.background_labels for label in config.labels], dtype=bool)
        self._holding: int | None = None  # the class of the last event, until it falls below release
        self._quiet_until = -math.inf  # no other class fires before this stream time

    def update(self, probabilities: Sequence[float] | FloatArray, time_s: float) -> tuple[FloatArray, list[Detection]]:
        """Add one window's probabilities (centred at ``time_s``); return the smoothed scores and events."""
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if p.shape[0] != self._history.shape[1]:
            raise ValueError(f"expected {self._history.shape[1]} class scores, got {p.shape[0]}")
        # The window is a handful of rows: averaging it afresh costs less than keeping a running sum
        # exact over an hour-long stream.
        self._history[self._seen % self.config.smoothing_windows] = p
        self._seen += 1
        smoothed = self._history[: min(self._seen, self.config.smoothing_windows)].mean(axis=0)
        return smoothed.astype(np.float32), self._detect(smoothed, time_s)

    def _detect(self, smoothed: npt.NDArray[np.float64], time_s: float) -> list[Detection]:
        c = self.config
        self._armed |= smoothed < c.release_threshold
        if self._holding is not None and smoothed[self._holding] < c.release_threshold:
            self._quiet_until = time_s + c.holdoff_s
            self._holding = None
        held = self._holding is not None or time_s < self._quiet_until
        above = (smoothed >= c.threshold) & self._armed & self._can_fire
        events: list[Detection] = []
        for i in sorted(np.flatnonzero(above), key=lambda k: -smoothed[k]):
            self._armed[i] = False  # fire or absorb: either way the class must fall below release first
            if not held and time_s - self._last_event[i] >= c.refractory_s:
                self._last_event[i] = time_s
                self._holding = int(i)
                held = True  # one event per window: the strongest crossing is a word, the rest its echo
                events.append(Detection(label=c.labels[i], score=float(smoothed[i]), time_s=time_s))
        return events

    @property
    def windows_seen(self) -> int:
        return self._seen


def aggregate_clip(probabilities: FloatArray, labels: Sequence[str], background_labels: Iterable[str]) -> FloatArray:
    """One distribution for a whole clip from its windows' ``(n, n_classes)`` probabilities.

    A word occupies a fraction of a long clip, so averaging would drown it in silence: when any window's
    most likely class is a foreground one, the answer is the window most confident in its foreground
    class. When none is, the clip is background and the mean of the windows is the fairest summary.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] != len(labels):
        raise ValueError(f"expected (n >= 1, {len(labels)}) probabilities, got {p.shape}")
    background = set(background_labels)
    foreground = np.array([label not in background for label in labels], dtype=bool)
    best = p.argmax(axis=1)
    candidates = np.flatnonzero(foreground[best])
    if candidates.size == 0:
        mean: FloatArray = p.mean(axis=0).astype(np.float32)
        return mean
    confidence = p[candidates, best[candidates]]
    chosen: FloatArray = p[candidates[int(confidence.argmax())]]
    return chosen
