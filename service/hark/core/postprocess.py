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

**Multi-label models** (``output_kind: sigmoid``: sound events that overlap) are different: each class is
an independent detector. After the same smoothing, a class raises an **onset** event when its score
reaches its threshold and an **offset** event (carrying its onset time) when the score falls below its
release level; several classes may be active at once, so there is no hold-off across classes and no
refractory period (a drum hit every 200 ms is several events, not one). At the end of a stream every
class still active gets its offset (:meth:`Postprocessor.close`).

**Detection settings**: each class's threshold is the model's (the version manifest's ``thresholds``,
chosen on validation) or the server's ``threshold``; a stream may override single classes, shift every
threshold with ``sensitivity`` and restrict the classes that may fire (:class:`DetectionOverrides`). The
release level of a class keeps the server's ratio ``release_threshold / threshold`` to its threshold.
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


ONSET = "onset"
OFFSET = "offset"


@dataclass(frozen=True)
class DetectionOverrides:
    """What one stream may change about detection (``StreamConfig`` fields 7-9).

    * ``thresholds``: per-class thresholds in (0, 1] that replace the model's for this stream;
    * ``sensitivity`` in [-1, 1]: every threshold ``t`` becomes ``t ** (2 ** sensitivity)``; +1 squares it
      (0.6 -> 0.36: more events, more false alarms), -1 takes its square root (0.6 -> 0.77), 0 changes nothing;
    * ``allowed``: only these classes may fire (empty: every foreground class).
    """

    thresholds: tuple[tuple[str, float], ...] = ()
    sensitivity: float = 0.0
    allowed: tuple[str, ...] = ()

    def check(self, labels: Sequence[str]) -> None:
        """Raise ValueError, in words a client can act on, for a class the model lacks or a value out of range."""
        known = set(labels)
        named = [label for label, _ in self.thresholds] + list(self.allowed)
        if unknown := sorted(set(named) - known):
            raise ValueError(f"unknown class(es) {', '.join(unknown)}; the model's classes are {', '.join(labels)}")
        for label, value in self.thresholds:
            if not (0.0 < value <= 1.0):
                raise ValueError(f"threshold for {label} must be in (0, 1], got {value:g}")
        if not (-1.0 <= self.sensitivity <= 1.0):
            raise ValueError(f"sensitivity must be in [-1, 1], got {self.sensitivity:g}")


@dataclass(frozen=True)
class PostprocessConfig:
    labels: tuple[str, ...]
    background_labels: frozenset[str]
    smoothing_windows: int = 3
    threshold: float = 0.6
    release_threshold: float = 0.3
    refractory_s: float = 1.0
    holdoff_s: float = 0.3
    # Per-class thresholds in label order (None: ``threshold`` for every class); see :meth:`class_thresholds`.
    thresholds: tuple[float, ...] | None = None
    # Independent detectors with onsets and offsets (a sigmoid, multi-label model).
    multilabel: bool = False
    # The classes that may fire (None: every foreground class).
    allowed: frozenset[str] | None = None

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
        if self.thresholds is not None and len(self.thresholds) != len(self.labels):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.labels)} labels")
        if self.thresholds is not None and not all(0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError("every class threshold must be in (0, 1]")

    def class_thresholds(self) -> npt.NDArray[np.float64]:
        """Each class's firing threshold, in label order."""
        if self.thresholds is None:
            return np.full(len(self.labels), self.threshold, dtype=np.float64)
        return np.asarray(self.thresholds, dtype=np.float64)

    def class_releases(self) -> npt.NDArray[np.float64]:
        """Each class's release level: its threshold times the server's ``release_threshold / threshold``."""
        return self.class_thresholds() * (self.release_threshold / self.threshold)

    @classmethod
    def from_settings(
        cls, settings: Settings, manifest: Manifest, overrides: DetectionOverrides | None = None
    ) -> PostprocessConfig:
        """The server's settings, the version's own thresholds, output kind and (when it has them) smoothing
        and release ratio, and one stream's overrides."""
        overrides = overrides or DetectionOverrides()
        overrides.check(manifest.labels)
        per_class = {**manifest.thresholds, **dict(overrides.thresholds)}
        thresholds = None
        if per_class or overrides.sensitivity:
            exponent = 2.0**overrides.sensitivity
            thresholds = tuple(float(per_class.get(label, settings.threshold) ** exponent) for label in manifest.labels)
        release = settings.release_threshold
        if manifest.release_ratio is not None:  # the version's own release level, as a share of the threshold
            release = manifest.release_ratio * settings.threshold
        return cls(
            labels=tuple(manifest.labels),
            background_labels=frozenset(manifest.background_labels),
            smoothing_windows=manifest.smoothing_windows or settings.smoothing_windows,
            threshold=settings.threshold,
            # A release level above the threshold is a misconfiguration that would disable hysteresis;
            # clamp rather than refuse to serve.
            release_threshold=min(release, settings.threshold),
            refractory_s=settings.refractory_s,
            holdoff_s=settings.holdoff_s,
            thresholds=thresholds,
            multilabel=manifest.output_kind == "sigmoid",
            allowed=frozenset(overrides.allowed) if overrides.allowed else None,
        )


@dataclass(frozen=True)
class Detection:
    """One event: ``time_s`` is the centre of the window that triggered it, in stream seconds.

    ``kind`` is :data:`ONSET` (the class became active; every single-label event is one) or :data:`OFFSET`
    (it ended; ``onset_s`` then says when it began, and ``score`` is the smoothed score when it fell)."""

    label: str
    score: float
    time_s: float
    kind: str = ONSET
    onset_s: float | None = None


class Postprocessor:
    """The per-stream state of smoothing, hysteresis and refractory periods. Feed windows in order."""

    def __init__(self, config: PostprocessConfig) -> None:
        self.config = config
        n = len(config.labels)
        self._history = np.zeros((config.smoothing_windows, n), dtype=np.float64)
        self._seen = 0
        self._armed = np.ones(n, dtype=bool)
        self._last_event = np.full(n, -math.inf, dtype=np.float64)
        self._can_fire = np.array(
            [
                label not in config.background_labels and (config.allowed is None or label in config.allowed)
                for label in config.labels
            ],
            dtype=bool,
        )
        self._thresholds = config.class_thresholds()
        self._releases = config.class_releases()
        self._onset = np.full(n, math.nan, dtype=np.float64)  # multi-label: when each active class began
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
        detect = self._detect_multilabel if self.config.multilabel else self._detect
        return smoothed.astype(np.float32), detect(smoothed, time_s)

    def _detect_multilabel(self, smoothed: npt.NDArray[np.float64], time_s: float) -> list[Detection]:
        """Independent detectors: offsets of classes that fell below release, then onsets of those that rose."""
        events: list[Detection] = []
        active = ~np.isnan(self._onset)
        for i in np.flatnonzero(active & (smoothed < self._releases)):
            events.append(self._offset(int(i), float(smoothed[i]), time_s))
        rising = ~active & (smoothed >= self._thresholds) & self._can_fire
        for i in sorted(np.flatnonzero(rising), key=lambda k: -smoothed[k]):
            self._onset[i] = time_s
            events.append(Detection(label=self.config.labels[i], score=float(smoothed[i]), time_s=time_s))
        return events

    def _offset(self, i: int, score: float, time_s: float) -> Detection:
        onset = float(self._onset[i])
        self._onset[i] = math.nan
        return Detection(self.config.labels[i], score, time_s, kind=OFFSET, onset_s=onset)

    def close(self, time_s: float) -> list[Detection]:
        """End of stream at ``time_s``: an offset for every class still active (multi-label only)."""
        last = self._history[(self._seen - 1) % self.config.smoothing_windows] if self._seen else None
        return [
            self._offset(int(i), float(last[i]) if last is not None else 0.0, time_s)
            for i in np.flatnonzero(~np.isnan(self._onset))
        ]

    def _detect(self, smoothed: npt.NDArray[np.float64], time_s: float) -> list[Detection]:
        c = self.config
        self._armed |= smoothed < self._releases
        if self._holding is not None and smoothed[self._holding] < self._releases[self._holding]:
            self._quiet_until = time_s + c.holdoff_s
            self._holding = None
        held = self._holding is not None or time_s < self._quiet_until
        above = (smoothed >= self._thresholds) & self._armed & self._can_fire
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


def active_classes(scores: FloatArray, config: PostprocessConfig, *, only_best: bool = False) -> dict[str, float]:
    """The foreground classes a clip's ``scores`` hold, strongest first: for a multi-label model (``scores``
    the highest of each class over the clip's windows) every one at or above its threshold; with
    ``only_best`` (a single-label model) the top class alone, when it is a foreground class."""
    s = np.asarray(scores, dtype=np.float64)
    foreground = np.array([label not in config.background_labels for label in config.labels], dtype=bool)
    if only_best:
        best = int(s.argmax())
        return {config.labels[best]: float(s[best])} if foreground[best] else {}
    chosen = np.flatnonzero(foreground & (s >= config.class_thresholds()))
    return {config.labels[i]: float(s[i]) for i in sorted(chosen, key=lambda k: -s[k])}
