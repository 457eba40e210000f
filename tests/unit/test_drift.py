"""Drift math: standardised mean shift, total variation, priors, level figures and the decaying window."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hark.core.model_store import Manifest
from hark.serving.drift import (
    CLIP_LEVEL,
    FLOOR_DBFS,
    MIN_REFERENCE_STD,
    DriftMonitor,
    audio_stats,
    class_prior,
    reference_of,
    standardised_mean_shift,
    total_variation,
)
from tests.fixtures_models import HOP_FRAMES, LABELS, N_MELS, WINDOW_FRAMES, manifest_fields

REF_MEAN = np.linspace(-10.0, 2.0, N_MELS)
REF_STD = np.linspace(1.0, 4.0, N_MELS)


def manifest(**extra: Any) -> Manifest:
    fields: dict[str, Any] = {
        "reference_stats": {"mean": REF_MEAN.tolist(), "std": REF_STD.tolist(), "n_frames": 1000},
        **manifest_fields(),
        "version": 1,
        "sha256": "0" * 64,
        "size_bytes": 1,
        "created_at": "2026-01-01T00:00:00Z",
    }
    for key, value in extra.items():
        fields[key] = value
    return Manifest.model_validate(fields)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def windows_at(mean: np.ndarray, n: int = 1) -> np.ndarray:
    """``n`` windows whose every frame equals ``mean`` (so the live mean is exactly ``mean``)."""
    return np.broadcast_to(mean.astype(np.float32), (n, WINDOW_FRAMES, N_MELS)).copy()


ONE_HOT = np.eye(len(LABELS), dtype=np.float32)


# The math -------------------------------------------------------------------------------------------


def test_standardised_mean_shift_per_band_and_overall() -> None:
    shift = np.zeros(N_MELS)
    shift[:10] = 2.0 * REF_STD[:10]  # ten bands moved by two standard deviations
    bands, overall = standardised_mean_shift(REF_MEAN + shift, REF_MEAN, REF_STD)
    np.testing.assert_allclose(bands[:10], 2.0)
    np.testing.assert_allclose(bands[10:], 0.0)
    assert overall == pytest.approx(math.sqrt(10 * 4.0 / N_MELS))  # RMS, not mean: a few bands still count


def test_standardised_mean_shift_is_symmetric_and_survives_a_zero_std() -> None:
    std = REF_STD.copy()
    std[0] = 0.0
    up, _ = standardised_mean_shift(REF_MEAN + 1.0, REF_MEAN, std)
    down, _ = standardised_mean_shift(REF_MEAN - 1.0, REF_MEAN, std)
    np.testing.assert_allclose(up, down)
    assert up[0] == pytest.approx(1.0 / MIN_REFERENCE_STD)
    assert np.all(np.isfinite(up))


def test_total_variation() -> None:
    p = np.array([0.5, 0.5, 0.0])
    assert total_variation(p, p) == 0.0
    assert total_variation(p, np.array([0.0, 0.0, 1.0])) == pytest.approx(1.0)
    assert total_variation(p, np.array([1.0, 0.0, 0.0])) == pytest.approx(0.5)


# Priors and references, read defensively --------------------------------------------------------------


def test_prior_from_metrics_dict_list_and_counts() -> None:
    prior = class_prior(manifest(metrics={"class_prior": {"yes": 3, "_silence_": 1}}))
    assert prior[LABELS.index("yes")] == pytest.approx(0.75)
    assert prior[LABELS.index("_silence_")] == pytest.approx(0.25)
    assert prior.sum() == pytest.approx(1.0)
    as_list = [1.0] * len(LABELS)
    np.testing.assert_allclose(class_prior(manifest(metrics={"class_prior": as_list})), 1 / len(LABELS))
    counts = class_prior(manifest(training={"label_counts": dict.fromkeys(LABELS, 10) | {"go": 30}}))
    assert counts[LABELS.index("go")] == pytest.approx(30 / (10 * 11 + 30))


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "yes",
        [0.5, 0.5],  # wrong length
        {"not-a-label": 1.0},
        {"yes": -1.0, "no": 2.0},
        {"yes": float("nan")},
        {"yes": "many"},
        dict.fromkeys(LABELS, 0.0),
    ],
)
def test_malformed_prior_falls_back_to_uniform(bad: Any) -> None:
    prior = class_prior(manifest(metrics={"class_prior": bad}))
    np.testing.assert_allclose(prior, 1.0 / len(LABELS))


def test_reference_is_refused_unless_it_fits_the_frontend() -> None:
    assert reference_of(manifest()) is not None
    assert reference_of(manifest(reference_stats=None)) is None
    short = {"mean": [0.0] * 3, "std": [1.0] * 3, "n_frames": 10}
    assert reference_of(manifest(reference_stats=short)) is None
    nan = {"mean": [float("nan")] * N_MELS, "std": [1.0] * N_MELS, "n_frames": 10}
    assert reference_of(manifest(reference_stats=nan)) is None


# Level, clipping, silence ---------------------------------------------------------------------------


def test_level_of_full_scale_square_and_sine() -> None:
    square = np.tile(np.array([0.5, -0.5], dtype=np.float32), 8000)
    assert audio_stats(square, 16_000).level_dbfs == pytest.approx(20 * math.log10(0.5), abs=1e-3)
    t = np.arange(16_000) / 16_000
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    assert audio_stats(sine, 16_000).level_dbfs == pytest.approx(20 * math.log10(0.5) - 3.0103, abs=0.01)
    assert audio_stats(np.zeros(1600, dtype=np.float32), 16_000).level_dbfs == FLOOR_DBFS


def test_clipping_counts_full_scale_samples_only() -> None:
    x = np.full(1000, 0.5, dtype=np.float32)
    x[:7] = 1.0
    x[7:10] = -32768 / 32768
    x[10] = CLIP_LEVEL - 0.01
    stats = audio_stats(x, 16_000)
    assert (stats.samples, stats.clipped) == (1000, 10)
    assert audio_stats(x[10:], 16_000).clipped == 0


def test_silence_counts_quiet_20ms_blocks_at_any_rate() -> None:
    for rate in (8_000, 16_000, 48_000):
        block = rate // 50
        loud = np.full(3 * block, 0.1, dtype=np.float32)
        quiet = np.full(block, 1e-4, dtype=np.float32)  # -80 dBFS
        stats = audio_stats(np.concatenate([quiet, loud, quiet]), rate)
        assert (stats.blocks, stats.silent_blocks) == (5, 2)
    short = audio_stats(np.full(10, 1e-5, dtype=np.float32), 16_000)  # shorter than a block: one block
    assert (short.blocks, short.silent_blocks) == (1, 1)


# The monitor ----------------------------------------------------------------------------------------


def test_live_traffic_like_the_reference_does_not_drift() -> None:
    monitor = DriftMonitor(manifest(), clock=FakeClock())
    for _ in range(20):
        monitor.observe_window(windows_at(REF_MEAN)[0], ONE_HOT[0])
    s = monitor.snapshot()
    assert s.band_drift is not None and s.overall_drift == pytest.approx(0.0, abs=1e-5)
    assert s.feature_frames == pytest.approx(20 * HOP_FRAMES)


def test_gain_change_moves_every_band_by_the_same_amount() -> None:
    monitor = DriftMonitor(manifest(), clock=FakeClock())
    gain_db = 20.0
    shift = gain_db * math.log(10) / 10  # the log-Mel (natural log of power) shift of a 20 dB gain
    for _ in range(20):
        monitor.observe_window(windows_at(REF_MEAN + shift)[0], ONE_HOT[0])
    s = monitor.snapshot()
    assert s.band_drift is not None
    np.testing.assert_allclose(s.band_drift, shift / REF_STD, rtol=1e-5)
    assert s.overall_drift == pytest.approx(float(np.sqrt(np.mean((shift / REF_STD) ** 2))), rel=1e-5)


def test_only_the_newest_hop_of_each_window_counts() -> None:
    monitor = DriftMonitor(manifest(), clock=FakeClock())
    window = windows_at(REF_MEAN)[0]
    window[:-HOP_FRAMES] += 100.0  # the frames earlier windows already counted
    for _ in range(20):
        monitor.observe_window(window, ONE_HOT[0])
    assert monitor.snapshot().overall_drift == pytest.approx(0.0, abs=1e-5)


def test_no_feature_drift_before_enough_frames_or_without_reference() -> None:
    monitor = DriftMonitor(manifest(), clock=FakeClock(), min_frames=100)
    for _ in range(9):
        monitor.observe_window(windows_at(REF_MEAN)[0], ONE_HOT[0])
    assert monitor.snapshot().overall_drift is None  # 90 frames
    monitor.observe_window(windows_at(REF_MEAN)[0], ONE_HOT[0])
    assert monitor.snapshot().overall_drift is not None
    blind = DriftMonitor(manifest(reference_stats=None), clock=FakeClock())
    for _ in range(20):
        blind.observe_window(windows_at(REF_MEAN)[0], ONE_HOT[0])
    s = blind.snapshot()
    assert s.overall_drift is None and s.live_mean is not None and s.prediction_drift is not None


def test_the_window_forgets_old_traffic_exponentially_in_wall_time() -> None:
    clock = FakeClock()
    monitor = DriftMonitor(manifest(), clock=clock, window_s=10.0)
    for _ in range(50):
        monitor.observe_window(windows_at(REF_MEAN + 5.0)[0], ONE_HOT[0])
    clock.now += 10.0 * math.log(4)  # the old traffic now weighs a quarter
    for _ in range(50):
        monitor.observe_window(windows_at(REF_MEAN)[0], ONE_HOT[0])
    s = monitor.snapshot()
    assert s.live_mean is not None
    np.testing.assert_allclose(s.live_mean - REF_MEAN, 5.0 * 0.25 / 1.25, rtol=1e-4)
    # Idle: the estimate stays readable, the support behind it fades.
    before = s.feature_frames
    clock.now += 10.0
    idle = monitor.snapshot()
    assert idle.overall_drift == pytest.approx(s.overall_drift)
    assert idle.feature_frames == pytest.approx(before / math.e)


def test_prediction_shares_and_drift_against_the_prior() -> None:
    prior = {"yes": 0.5, "_silence_": 0.5}
    monitor = DriftMonitor(manifest(metrics={"class_prior": prior}), clock=FakeClock())
    yes, silence = LABELS.index("yes"), LABELS.index("_silence_")
    for i in range(40):
        monitor.observe_window(windows_at(REF_MEAN)[0], ONE_HOT[yes if i % 4 == 0 else silence])
    s = monitor.snapshot()
    assert s.prediction_share is not None
    assert s.prediction_share[yes] == pytest.approx(0.25) and s.prediction_share[silence] == pytest.approx(0.75)
    assert s.prediction_drift == pytest.approx(0.25)


def test_clip_windows_count_like_stream_windows() -> None:
    stream, clip = DriftMonitor(manifest(), clock=FakeClock()), DriftMonitor(manifest(), clock=FakeClock())
    windows = windows_at(REF_MEAN + 1.0, n=12)
    probabilities = ONE_HOT[[0, 1, 2] * 4]
    for w, p in zip(windows, probabilities, strict=True):
        stream.observe_window(w, p)
    clip.observe_windows(windows, probabilities)
    a, b = stream.snapshot(), clip.snapshot()
    assert a.overall_drift == pytest.approx(b.overall_drift)
    assert a.prediction_share is not None and b.prediction_share is not None
    np.testing.assert_allclose(a.prediction_share, b.prediction_share)
    assert a.feature_frames == b.feature_frames


def test_audio_figures_are_pooled_over_chunks() -> None:
    monitor = DriftMonitor(manifest(), clock=FakeClock())
    assert monitor.snapshot().clipping_ratio is None
    loud = np.full(1600, 1.0, dtype=np.float32)
    quiet = np.full(1600, 1e-4, dtype=np.float32)
    assert monitor.observe_audio(loud, 16_000) == pytest.approx(0.0)
    assert monitor.observe_audio(quiet, 16_000) == pytest.approx(-80.0)
    s = monitor.snapshot()
    assert s.clipping_ratio == pytest.approx(0.5)
    assert s.silence_ratio == pytest.approx(0.5)


# Multi-label versions: classes are active by their thresholds, not by the argmax --------------------------

DRUMS = ["kick", "snare", "hihat"]


def multilabel_manifest(**extra: Any) -> Manifest:
    return manifest(
        labels=DRUMS,
        background_labels=[],
        output={"name": "logits", "shape": ["batch", len(DRUMS)]},
        output_kind="sigmoid",
        thresholds={"kick": 0.3, "snare": 0.7},  # hihat has none: the server's threshold applies
        **extra,
    )


def test_a_multilabel_prior_is_each_class_active_share_not_a_distribution() -> None:
    prior = class_prior(multilabel_manifest(metrics={"class_prior": {"kick": 0.4, "snare": 0.3, "hihat": 0.5}}))
    np.testing.assert_allclose(prior, [0.4, 0.3, 0.5])  # sums to 1.2: classes overlap
    counts = class_prior(multilabel_manifest(training={"label_counts": {"kick": 40, "snare": 30, "hihat": 50}}))
    np.testing.assert_allclose(counts, 1 / 3)  # counts are no share of active clips: uniform


def test_a_multilabel_window_counts_every_class_at_or_above_its_threshold() -> None:
    monitor = DriftMonitor(multilabel_manifest(), clock=FakeClock(), default_threshold=0.6)
    # kick at its threshold (0.3), snare below its own (0.7) though it is the largest, hihat above the server's
    monitor.observe_window(windows_at(REF_MEAN)[0], np.array([0.3, 0.69, 0.6], dtype=np.float32))
    monitor.observe_window(windows_at(REF_MEAN)[0], np.array([0.1, 0.2, 0.1], dtype=np.float32))  # silence
    s = monitor.snapshot()
    assert s.prediction_share is not None
    np.testing.assert_allclose(s.prediction_share, [0.5, 0.0, 0.5])


def test_multilabel_prediction_drift_is_the_mean_per_class_difference_from_the_prior() -> None:
    prior = {"kick": 0.5, "snare": 0.25, "hihat": 0.0}
    monitor = DriftMonitor(multilabel_manifest(metrics={"class_prior": prior}), clock=FakeClock())
    for i in range(8):  # kick active in every window, snare in none, hihat in half
        monitor.observe_window(windows_at(REF_MEAN)[0], np.array([0.9, 0.1, 0.9 * (i % 2)], dtype=np.float32))
    s = monitor.snapshot()
    assert s.prediction_share is not None
    np.testing.assert_allclose(s.prediction_share, [1.0, 0.0, 0.5])
    assert s.prediction_drift == pytest.approx((0.5 + 0.25 + 0.5) / 3)


def test_multilabel_traffic_as_in_training_does_not_drift_though_silence_would_win_an_argmax() -> None:
    prior = {"kick": 0.5, "snare": 0.5, "hihat": 0.5}
    monitor = DriftMonitor(multilabel_manifest(metrics={"class_prior": prior}), clock=FakeClock())
    both = np.array([0.9, 0.9, 0.9], dtype=np.float32)
    none = np.array([0.05, 0.05, 0.05], dtype=np.float32)
    monitor.observe_windows(windows_at(REF_MEAN, n=4), np.stack([both, none, both, none]))
    assert monitor.snapshot().prediction_drift == pytest.approx(0.0)


def test_multilabel_clip_windows_count_like_stream_windows() -> None:
    stream = DriftMonitor(multilabel_manifest(), clock=FakeClock())
    clip = DriftMonitor(multilabel_manifest(), clock=FakeClock())
    windows = windows_at(REF_MEAN, n=6)
    probabilities = np.random.default_rng(0).uniform(size=(6, len(DRUMS))).astype(np.float32)
    for w, p in zip(windows, probabilities, strict=True):
        stream.observe_window(w, p)
    clip.observe_windows(windows, probabilities)
    a, b = stream.snapshot(), clip.snapshot()
    assert a.prediction_share is not None and b.prediction_share is not None
    np.testing.assert_allclose(a.prediction_share, b.prediction_share)
    assert a.prediction_drift == pytest.approx(b.prediction_drift)
