"""Event-level evaluation (``hark_training.sed``): the server's postprocessing turns per-window scores into
events, and sed_eval and psds_eval score them against annotations."""

from __future__ import annotations

import numpy as np
import pytest

from hark.core.postprocess import PostprocessConfig
from hark_training.sed import Scored, detect, merge_overlaps, psds, sed_eval_metrics, tune_thresholds_scored

LABELS = ("kick", "snare")


def scored(events: list[tuple[str, float, float]], seconds: float = 10.0, hop: float = 0.04) -> Scored:
    """Scores that are 0.95 exactly while each event lasts and 0.02 elsewhere, every ``hop`` seconds."""
    centres = np.arange(hop, seconds, hop, dtype=np.float32)
    p = np.full((centres.size, len(LABELS)), 0.02, dtype=np.float32)
    for label, onset, offset in events:
        p[(centres >= onset) & (centres < offset), LABELS.index(label)] = 0.95
    return Scored(seconds, centres, p)


CONFIG = PostprocessConfig(
    labels=LABELS, background_labels=frozenset(), smoothing_windows=1, threshold=0.5, release_threshold=0.25,
    multilabel=True,
)  # fmt: skip
TRUTH = [("kick", 1.0, 1.3), ("snare", 1.2, 1.6), ("kick", 4.0, 4.2), ("snare", 7.0, 7.5)]


def test_events_come_back_with_their_onsets_and_offsets() -> None:
    found = detect(scored(TRUTH), CONFIG)
    assert [e["event_label"] for e in found] == [label for label, _, _ in TRUTH]
    for event, (_, onset, offset) in zip(found, TRUTH, strict=True):  # within one hop
        assert event["onset"] == pytest.approx(onset, abs=0.045)
        assert event["offset"] == pytest.approx(offset, abs=0.045)


def test_perfect_detection_scores_perfectly_and_misses_cost() -> None:
    reference = [{"filename": "a.wav", "event_label": c, "onset": on, "offset": off} for c, on, off in TRUTH]
    perfect = [{**e, "filename": "a.wav"} for e in detect(scored(TRUTH), CONFIG)]
    report = sed_eval_metrics(reference, perfect, ["a.wav"], list(LABELS))
    assert report["event_f1_onset"]["f1"] == 1.0
    assert report["event_f1_onset_offset"]["f1"] == 1.0
    assert report["segment_f1_1s"]["f1"] == 1.0
    half = [{**e, "filename": "a.wav"} for e in detect(scored(TRUTH[:2]), CONFIG)]
    assert sed_eval_metrics(reference, half, ["a.wav"], list(LABELS))["event_f1_onset"]["recall"] == 0.5

    good = psds(reference, {"a.wav": scored(TRUTH)}, CONFIG)
    poor = psds(reference, {"a.wav": scored([*TRUTH[:2], ("kick", 8.0, 8.5)])}, CONFIG)
    assert 0.0 <= poor < good <= 1.0
    assert good == pytest.approx(1.0, abs=0.05)


def test_overlapping_events_of_a_class_are_merged_for_psds() -> None:
    events = [
        {"filename": "a.wav", "event_label": "kick", "onset": 0.2, "offset": 0.5},
        {"filename": "a.wav", "event_label": "kick", "onset": 0.4, "offset": 0.6},
        {"filename": "a.wav", "event_label": "snare", "onset": 0.4, "offset": 0.6},
        {"filename": "b.wav", "event_label": "kick", "onset": 0.45, "offset": 0.6},
    ]
    assert [(e["filename"], e["event_label"], e["onset"], e["offset"]) for e in merge_overlaps(events)] == [
        ("a.wav", "kick", 0.2, 0.6),
        ("a.wav", "snare", 0.4, 0.6),
        ("b.wav", "kick", 0.45, 0.6),
    ]


def test_thresholds_are_tuned_per_class_for_the_best_event_f1() -> None:
    """Kick scores 0.95 on its hits and nothing elsewhere; snare scores 0.7 on its hits but 0.5 on three false
    bumps: kick takes the threshold nearest 0.5 among those that find all its hits, snare one above 0.5."""
    reference = [{"filename": "a.wav", "event_label": c, "onset": on, "offset": off} for c, on, off in TRUTH]
    s = scored(TRUTH)
    for onset in (2.0, 5.0, 8.5):  # false snare bumps
        s.probabilities[(s.centres >= onset) & (s.centres < onset + 0.2), 1] = 0.5
    s.probabilities[s.probabilities[:, 1] == 0.95, 1] = 0.7
    thresholds, f1 = tune_thresholds_scored(reference, {"a.wav": s}, CONFIG, LABELS)
    assert thresholds["kick"] == 0.5 and f1["kick"] == 1.0
    assert 0.5 < thresholds["snare"] <= 0.7 and f1["snare"] == 1.0
