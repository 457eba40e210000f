"""Postprocessing: smoothing, threshold, hysteresis and refractory period make one word one event."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hark.core.postprocess import Detection, PostprocessConfig, Postprocessor, aggregate_clip

LABELS = ("yes", "no", "_silence_")
HOP_S = 0.1


def config(**overrides: float) -> PostprocessConfig:
    values: dict[str, float] = {
        "smoothing_windows": 3,
        "threshold": 0.6,
        "release_threshold": 0.3,
        "refractory_s": 1.0,
        "holdoff_s": 0.0,
        **overrides,
    }
    return PostprocessConfig(
        labels=LABELS,
        background_labels=frozenset({"_silence_"}),
        smoothing_windows=int(values["smoothing_windows"]),
        threshold=values["threshold"],
        release_threshold=values["release_threshold"],
        refractory_s=values["refractory_s"],
        holdoff_s=values["holdoff_s"],
    )


def silence(n: int) -> list[list[float]]:
    return [[0.0, 0.0, 1.0]] * n


def word(n: int, label: int = 0, score: float = 0.95) -> list[list[float]]:
    row = [0.0, 0.0, 1.0 - score]
    row[label] = score
    return [row] * n


def run(windows: list[list[float]], post: Postprocessor | None = None) -> list[Detection]:
    post = post or Postprocessor(config())
    events = []
    for i, p in enumerate(windows):
        events += post.update(p, time_s=0.5 + i * HOP_S)[1]
    return events


def test_one_sustained_word_is_one_event() -> None:
    events = run(silence(10) + word(8) + silence(10))
    assert [e.label for e in events] == ["yes"]
    # Smoothed over 3 windows, 0.95 * 2/3 = 0.63 crosses 0.6 on the word's second window (index 11).
    assert events[0].time_s == pytest.approx(0.5 + 11 * HOP_S)
    assert events[0].score == pytest.approx(0.95 * 2 / 3)


def test_a_long_word_does_not_fire_again_after_the_refractory_period() -> None:
    # Hysteresis: the class stays disarmed until its score drops below the release level.
    assert len(run(silence(5) + word(40) + silence(5))) == 1


def test_a_wobbling_score_within_one_word_fires_once() -> None:
    # Without smoothing the score dips below release (re-arming) and rises again inside the refractory period.
    post = Postprocessor(config(smoothing_windows=1))
    wobble = (word(2) + silence(1)) * 3
    assert len(run(silence(3) + wobble + silence(3), post)) == 1


def test_two_words_further_apart_than_the_refractory_period_are_two_events() -> None:
    events = run(silence(5) + word(5) + silence(12) + word(5) + silence(5))
    assert [e.label for e in events] == ["yes", "yes"]
    assert events[1].time_s - events[0].time_s >= 1.0


def test_two_words_inside_the_refractory_period_are_one_event() -> None:
    assert len(run(silence(5) + word(3) + silence(3) + word(3) + silence(5))) == 1


def test_the_refractory_period_is_per_class() -> None:
    events = run(silence(5) + word(5, label=0) + silence(3) + word(5, label=1) + silence(5))
    assert [e.label for e in events] == ["yes", "no"]


def test_background_never_fires() -> None:
    assert run(silence(50)) == []
    assert run([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]] * 20) == []


def test_smoothing_averages_the_windows_seen_so_far_then_the_last_n() -> None:
    post = Postprocessor(config(smoothing_windows=3))
    inputs = [[0.9, 0.0, 0.1], [0.0, 0.3, 0.7], [0.3, 0.3, 0.4], [0.6, 0.0, 0.4]]
    outputs = [post.update(p, time_s=i)[0] for i, p in enumerate(inputs)]
    a = np.array(inputs)
    np.testing.assert_allclose(outputs[0], a[0], atol=1e-6)
    np.testing.assert_allclose(outputs[1], a[:2].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(outputs[2], a[:3].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(outputs[3], a[1:4].mean(axis=0), atol=1e-6)


def test_a_single_window_spike_is_smoothed_away() -> None:
    assert run(silence(5) + word(1) + silence(5)) == []


def test_release_above_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="release_threshold"):
        config(threshold=0.5, release_threshold=0.7)


def test_wrong_number_of_scores_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 3"):
        Postprocessor(config()).update([0.5, 0.5], time_s=0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0.0, 1.0)), min_size=1, max_size=120))
def test_events_of_a_class_are_never_closer_than_the_refractory_period(steps: list[tuple[int, float]]) -> None:
    rows = []
    for label, score in steps:
        row = [(1.0 - score) / 2] * 3
        row[label] = score
        rows.append(row)
    events = run(rows, Postprocessor(config(smoothing_windows=2)))
    assert all(e.label != "_silence_" for e in events)
    for label in ("yes", "no"):
        times = [e.time_s for e in events if e.label == label]
        assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))


def test_clip_answer_is_the_most_confident_foreground_window() -> None:
    p = np.array([[0.1, 0.0, 0.9], [0.7, 0.1, 0.2], [0.2, 0.6, 0.2], [0.45, 0.0, 0.55]], dtype=np.float32)
    np.testing.assert_array_equal(aggregate_clip(p, LABELS, {"_silence_"}), p[1])


def test_clip_of_only_background_is_the_mean() -> None:
    p = np.array([[0.1, 0.0, 0.9], [0.3, 0.1, 0.6]], dtype=np.float32)
    np.testing.assert_allclose(aggregate_clip(p, LABELS, {"_silence_"}), p.mean(axis=0))


def _fired(post: Postprocessor, rows: list[list[float]]) -> list[tuple[str, float]]:
    return [(e.label, round(e.time_s, 1)) for k, p in enumerate(rows) for e in post.update(p, k * HOP_S)[1]]


def test_the_tail_of_a_word_read_as_another_word_is_absorbed() -> None:
    """'yes' sliding out of the window reads as 'no' for a few hops, right as 'yes' releases."""
    post = Postprocessor(config(smoothing_windows=1, holdoff_s=0.3))
    rows = [[0.0, 0.0, 1.0], [0.9, 0.0, 0.1], [0.9, 0.0, 0.1], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.0, 0.0, 1.0]]
    assert _fired(post, rows) == [("yes", 0.1)]


def test_another_word_after_the_hold_off_fires() -> None:
    post = Postprocessor(config(smoothing_windows=1, holdoff_s=0.3))
    rows = [[0.9, 0.0, 0.1], [0.1, 0.0, 0.9], *silence(3), [0.0, 0.9, 0.1]]
    assert _fired(post, rows) == [("yes", 0.0), ("no", 0.5)]


def test_a_second_word_inside_the_hold_off_is_absorbed() -> None:
    post = Postprocessor(config(smoothing_windows=1, holdoff_s=0.3))
    rows = [[0.9, 0.0, 0.1], [0.1, 0.0, 0.9], [0.0, 0.9, 0.1]]
    assert _fired(post, rows) == [("yes", 0.0)]
