"""Live statistics of what one model version hears and says, against what it was trained on.

One :class:`DriftMonitor` per served model version pools every stream (and ``Classify`` clip) on that
version. The hot path only adds to running sums; the drift scores are computed when Prometheus scrapes
(:meth:`DriftMonitor.snapshot`), so a hop costs a few vector additions over ``n_mels`` numbers.

**The live window** is exponentially time-decayed: every sum is multiplied by ``exp(-dt / window_s)``
before new data is added, ``dt`` being wall-clock seconds since the last update. Weighting by wall time
(not by frame count) keeps the window the same length however many streams share the version, needs
no ring of past windows, and lets an idle version's support fade (exported as
``hark_feature_drift_frames``) while its last estimate stays readable.

**Feature drift: standardised mean shift.** For each log-Mel band ``b``,
``d_b = |mu_live_b - mu_ref_b| / sigma_ref_b`` against the manifest's ``reference_stats`` (per-band
mean and std over the training frames), and overall ``D = sqrt(mean_b d_b^2)``, the diagonal
Mahalanobis distance of the live mean scaled per band. Chosen over PSI because the manifest carries
mean, std and a frame count per band, not histograms: PSI would need bin edges the reference cannot
supply, whereas the mean shift needs only running sums, which add across streams and cost O(n_mels) per
hop. It reads in units anyone can reason about (a gain change of ``g`` dB moves every band by
``g * ln(10) / 10`` nats). Its blind spot is a change of spread at an unchanged mean; the level,
clipping and silence figures below cover the common causes of that (gain, saturation, dead input).
The overall score is RMS rather than mean so that band-limited interference, which moves a few bands a
lot, is not averaged away. Each window contributes only its newest ``hop_frames`` frames, so a frame is
counted once per stream although windows overlap.

**Input level** is measured on the decoded samples of each chunk, at the client's rate: RMS level in
dBFS (0 dBFS = a full-scale square wave), the share of samples at full scale (clipping) and the share
of 20 ms blocks below -60 dBFS (silence).

**Prediction drift** is the total variation distance ``0.5 * sum_c |share_c - prior_c|`` between the
live share of each class as the argmax of a window's probabilities and the training prior. TVD rather
than KL: it is bounded in [0, 1], symmetric, and defined when a class has no live windows at all. The
prior is ``manifest.metrics['class_prior']`` (or class counts) when training recorded one, else uniform
over the labels. Live traffic is mostly silence, so expect this to sit well above zero against a
balanced training prior; its trend matters more than its level.

**Multi-label models** (``output_kind: sigmoid``: overlapping sound events) have no single class per window:
several classes, or none, are active at once, and the argmax would report a class for every window of
silence. A window counts each class whose probability reaches its threshold (the manifest's ``thresholds``,
the server's ``threshold`` for a class without one): what the server itself calls active. Each class's live
share is then the share of windows in which it is active, compared with the share of training clips in which
it was (``class_prior``, not normalised: the shares of overlapping classes need not add up to one), and the
prediction drift is the mean over classes of ``|share_c - prior_c|``: the total variation distance of each
class's active/inactive distribution, averaged; still in [0, 1], and 0 when every class fires as often as in
training.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hark.core.model_store import Manifest

FloatArray = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Clock = Callable[[], float]

# A sample at or above this magnitude is at full scale: int16 peaks decode to 32767/32768 = 0.99997.
CLIP_LEVEL = 0.999
# A 20 ms block quieter than this is silence (as mean square: -60 dB relative to a full-scale square).
SILENCE_DBFS = -60.0
_SILENCE_POWER = 10.0 ** (SILENCE_DBFS / 10.0)
BLOCK_S = 0.02
# dBFS reported for digital silence, where the logarithm has no value.
FLOOR_DBFS = -120.0
# A reference band whose std is (near) zero would make any shift infinite; this floor keeps it finite.
MIN_REFERENCE_STD = 1e-3
# Feature drift is not reported until the live window holds this many frames (about a second).
MIN_FRAMES = 100.0


# Pure functions: the math, testable without a monitor ---------------------------------------------


def standardised_mean_shift(live_mean: F64, ref_mean: F64, ref_std: F64) -> tuple[F64, float]:
    """Per-band ``|mu_live - mu_ref| / sigma_ref`` and the overall RMS over bands."""
    bands: F64 = np.abs(live_mean - ref_mean) / np.maximum(ref_std, MIN_REFERENCE_STD)
    return bands, float(np.sqrt(np.mean(bands * bands)))


def total_variation(p: F64, q: F64) -> float:
    """Total variation distance of two distributions over the same classes, in [0, 1]."""
    return float(0.5 * np.abs(p - q).sum())


def is_multilabel(manifest: Manifest) -> bool:
    """True for a version whose classes are independent detectors (one sigmoid each)."""
    return manifest.output_kind == "sigmoid"


def multilabel_drift(share: F64, prior: F64) -> float:
    """Mean over classes of ``|share_c - prior_c|``: each class's active/inactive total variation, averaged."""
    return float(np.mean(np.abs(share - prior))) if share.size else 0.0


def class_prior(manifest: Manifest) -> F64:
    """The class distribution the version was trained on, in label order; uniform when none is recorded.

    Read defensively, since training may or may not record it: ``class_prior`` then ``class_counts`` or
    ``label_counts``, in ``metrics`` then ``training``, each either ``{label: value}`` or a list in label
    order. Anything malformed (wrong length, negative, non-finite, all zero) is skipped.

    A multi-label version's ``class_prior`` is each class's share of active training clips, read as it is
    (only a value in [0, 1] per class is accepted); its counts are not a distribution and are skipped.
    """
    labels = manifest.labels
    if is_multilabel(manifest):
        for section in (manifest.metrics, manifest.training):
            rates = _distribution(section.get("class_prior"), labels, normalise=False)
            if rates is not None and np.all(rates <= 1.0):
                return rates
        return np.full(len(labels), 1.0 / len(labels))
    for section in (manifest.metrics, manifest.training):
        for key in ("class_prior", "class_counts", "label_counts"):
            prior = _distribution(section.get(key), labels)
            if prior is not None:
                return prior
    return np.full(len(labels), 1.0 / len(labels))


def _distribution(value: Any, labels: Sequence[str], *, normalise: bool = True) -> F64 | None:
    try:
        if isinstance(value, Mapping):
            if not set(value) <= set(labels):
                return None
            raw = [float(value.get(label, 0.0)) for label in labels]
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes) and len(value) == len(labels):
            raw = [float(v) for v in value]
        else:
            return None
    except (TypeError, ValueError):
        return None
    p = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        return None
    normalised: F64 = p / p.sum() if normalise else p
    return normalised


def reference_of(manifest: Manifest) -> tuple[F64, F64] | None:
    """The manifest's per-band reference (mean, std), or None when it is missing or does not fit."""
    stats = manifest.reference_stats
    n = manifest.frontend.n_mels
    if stats is None or len(stats.mean) != n or len(stats.std) != n or stats.n_frames <= 0:
        return None
    mean = np.asarray(stats.mean, dtype=np.float64)
    std = np.asarray(stats.std, dtype=np.float64)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
        return None
    return mean, std


@dataclass(frozen=True)
class AudioStats:
    """One chunk's level figures: what :meth:`DriftMonitor.observe_audio` adds to the window."""

    samples: int
    clipped: int
    blocks: int
    silent_blocks: int
    level_dbfs: float


def audio_stats(samples: FloatArray, rate: int) -> AudioStats:
    """Level, clipping and silence of one chunk (a chunk shorter than a block is one block).

    float32 throughout with BLAS reductions: this runs for every chunk of every stream.
    """
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    n = int(x.size)
    if n == 0:
        return AudioStats(0, 0, 0, 0, FLOOR_DBFS)
    block = max(1, round(rate * BLOCK_S))
    usable = (n // block) * block
    if usable:
        rows = x[:usable].reshape(-1, block)
        powers = np.einsum("ij,ij->i", rows, rows) / np.float32(block)
    else:
        powers = np.asarray([np.dot(x, x) / np.float32(n)])
    # A chunk of whole blocks (100 ms chunks are ten) has its mean square in the block powers already.
    mean_square = float(powers.mean()) if usable == n else float(np.dot(x, x)) / n
    level = 10.0 * math.log10(mean_square) if mean_square > 0 else FLOOR_DBFS
    # Most chunks never reach full scale: two cheap reductions (no |x| copy: 8 MB for a 4 MB clip) spare the count.
    peak = max(float(x.max()), -float(x.min()))
    clipped = int(np.count_nonzero((x >= CLIP_LEVEL) | (x <= -CLIP_LEVEL))) if peak >= CLIP_LEVEL else 0
    return AudioStats(
        samples=n,
        clipped=clipped,
        blocks=int(powers.size),
        silent_blocks=int(np.count_nonzero(powers < _SILENCE_POWER)),
        level_dbfs=max(FLOOR_DBFS, level),
    )


# The decaying window -------------------------------------------------------------------------------


class _Decaying:
    """Sums whose past weighs ``exp(-age / window_s)``: an exponentially time-weighted window."""

    def __init__(self, shape: tuple[int, ...], window_s: float) -> None:
        self.window_s = window_s
        self.weight = 0.0
        self.sums: F64 = np.zeros(shape, dtype=np.float64)
        self.last: float | None = None

    def decay_to(self, now: float) -> None:
        if self.last is not None and now > self.last:
            factor = math.exp((self.last - now) / self.window_s)
            self.weight *= factor
            self.sums *= factor
        if self.last is None or now > self.last:
            self.last = now

    def weight_at(self, now: float) -> float:
        """The window's weight as of ``now`` (ratios of sums do not need decaying, the weight does)."""
        if self.last is None:
            return 0.0
        return self.weight * math.exp(min(0.0, self.last - now) / self.window_s)


@dataclass(frozen=True)
class DriftSnapshot:
    """Everything the drift gauges show for one version, at one moment. ``None``: not enough data yet."""

    feature_frames: float
    band_drift: F64 | None
    overall_drift: float | None
    live_mean: F64 | None
    clipping_ratio: float | None
    silence_ratio: float | None
    prediction_share: F64 | None
    prediction_drift: float | None
    prior: F64


class DriftMonitor:
    """The live window of one model version. Thread-safe: big chunks are featurised on worker threads."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        window_s: float = 300.0,
        clock: Clock = time.monotonic,
        min_frames: float = MIN_FRAMES,
        default_threshold: float = 0.5,
    ) -> None:
        """``default_threshold``: a multi-label class without a threshold in the manifest is active from this
        probability on (the server's ``threshold`` setting)."""
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.labels = tuple(manifest.labels)
        self.multilabel = is_multilabel(manifest)
        self.thresholds: F64 = np.array(
            [manifest.thresholds.get(label, default_threshold) for label in self.labels], dtype=np.float64
        )
        self.n_mels = manifest.frontend.n_mels
        self.hop_frames = manifest.hop_frames
        self.reference = reference_of(manifest)
        self.prior = class_prior(manifest)
        self.min_frames = min_frames
        self._clock = clock
        self._lock = threading.Lock()
        self._features = _Decaying((self.n_mels,), window_s)  # sum of each band over the frames
        # samples, clipped samples, blocks, silent blocks: plain floats, cheaper than a 4-element array
        self._audio = [0.0, 0.0, 0.0, 0.0]
        self._audio_last = -math.inf
        self._window_s = window_s
        # Per class, the windows that predicted it: the argmax, or (multi-label) every active class.
        self._predictions = _Decaying((len(self.labels),), window_s)

    def observe_window(self, features: FloatArray, probabilities: FloatArray) -> None:
        """One stream window as the model saw it: its newest ``hop_frames`` frames and its probabilities."""
        p = np.asarray(probabilities).reshape(1, -1)
        self._add(features[-self.hop_frames :], self._predicted(p), 1.0)

    def observe_windows(self, windows: Sequence[FloatArray], probabilities: FloatArray) -> None:
        """Several ``(window_frames, n_mels)`` windows of one clip (a list, or an ``(m, window_frames, n_mels)``
        array) and their ``(m, n_classes)`` probabilities."""
        if len(windows) == 0:
            return
        frames = np.concatenate([w[-self.hop_frames :] for w in windows])
        self._add(frames, self._predicted(np.asarray(probabilities)), float(len(windows)))

    def _predicted(self, probabilities: FloatArray) -> F64:
        """How many of these ``(m, n_classes)`` windows predicted each class."""
        if self.multilabel:
            active: F64 = (probabilities >= self.thresholds).sum(axis=0).astype(np.float64)
            return active
        counts: F64 = np.bincount(np.argmax(probabilities, axis=1), minlength=len(self.labels)).astype(np.float64)
        return counts

    def _add(self, frames: FloatArray, counts: F64, n_windows: float) -> None:
        band_sums = frames.sum(axis=0, dtype=np.float64)
        with self._lock:
            now = self._clock()
            f = self._features
            f.decay_to(now)
            f.weight += frames.shape[0]
            f.sums += band_sums
            p = self._predictions
            p.decay_to(now)
            p.weight += n_windows
            p.sums += counts

    def observe_audio(self, samples: FloatArray, rate: int) -> float:
        """Add one chunk's level, clipping and silence; return its level in dBFS for the histogram."""
        stats = audio_stats(samples, rate)
        if stats.samples == 0:
            return stats.level_dbfs
        with self._lock:
            now = self._clock()
            a = self._audio
            if now > self._audio_last:
                factor = math.exp((self._audio_last - now) / self._window_s)
                for i in range(4):
                    a[i] *= factor
                self._audio_last = now
            a[0] += stats.samples
            a[1] += stats.clipped
            a[2] += stats.blocks
            a[3] += stats.silent_blocks
        return stats.level_dbfs

    def snapshot(self) -> DriftSnapshot:
        """The scores as of now; cheap enough for every scrape (O(n_mels + n_classes))."""
        with self._lock:
            now = self._clock()
            frames = self._features.weight_at(now)
            raw_frames = self._features.weight
            feature_sums = self._features.sums.copy()
            audio = list(self._audio)
            predicted = self._predictions.weight
            prediction_sums = self._predictions.sums.copy()
        band_drift: F64 | None = None
        overall: float | None = None
        live_mean: F64 | None = None
        if raw_frames > 0:
            live_mean = feature_sums / raw_frames
            if self.reference is not None and raw_frames >= self.min_frames:
                band_drift, overall = standardised_mean_shift(live_mean, *self.reference)
        share: F64 | None = prediction_sums / predicted if predicted > 0 else None
        return DriftSnapshot(
            feature_frames=frames,
            band_drift=band_drift,
            overall_drift=overall,
            live_mean=live_mean,
            clipping_ratio=float(audio[1] / audio[0]) if audio[0] > 0 else None,
            silence_ratio=float(audio[3] / audio[2]) if audio[2] > 0 else None,
            prediction_share=share,
            prediction_drift=None if share is None else self._prediction_drift(share),
            prior=self.prior,
        )

    def _prediction_drift(self, share: F64) -> float:
        if self.multilabel:
            return multilabel_drift(share, self.prior)
        return total_variation(share, self.prior)
