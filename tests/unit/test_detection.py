"""Multi-label detection: independent classes with onsets and offsets, per-class thresholds, and the per-stream
settings (threshold overrides, sensitivity, allowed classes); thresholds chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest

from hark.config import Settings
from hark.core.model_store import Manifest
from hark.core.postprocess import (
    OFFSET,
    ONSET,
    DetectionOverrides,
    PostprocessConfig,
    Postprocessor,
    active_classes,
)
from hark_training.multilabel import choose_thresholds, mean_average_precision, multilabel_report
from tests.fixtures_models import manifest_fields

LABELS = ("kick", "snare", "_noise_")


def config(**overrides: object) -> PostprocessConfig:
    fields: dict[str, object] = {
        "labels": LABELS,
        "background_labels": frozenset({"_noise_"}),
        "smoothing_windows": 1,
        "threshold": 0.6,
        "release_threshold": 0.3,
        "multilabel": True,
    }
    return PostprocessConfig(**{**fields, **overrides})  # type: ignore[arg-type]


def events(
    rows: list[list[float]], post: Postprocessor, hop: float = 0.1
) -> list[tuple[str, str, float, float | None]]:
    out = []
    for i, p in enumerate(rows):
        out += [(d.label, d.kind, round(d.time_s, 3), d.onset_s) for d in post.update(p, i * hop)[1]]
    out += [(d.label, d.kind, round(d.time_s, 3), d.onset_s) for d in post.close(len(rows) * hop)]
    return out


def test_overlapping_classes_each_get_an_onset_and_an_offset() -> None:
    rows = [[0.0, 0.0, 0.9], [0.9, 0.0, 0.9], [0.9, 0.8, 0.0], [0.1, 0.8, 0.0], [0.0, 0.2, 0.0]]
    assert events(rows, Postprocessor(config())) == [
        ("kick", ONSET, 0.1, None),
        ("snare", ONSET, 0.2, None),
        ("kick", OFFSET, 0.3, 0.1),
        ("snare", OFFSET, 0.4, 0.2),
    ]  # the background class never fires


def test_a_class_still_active_at_the_end_is_closed_at_the_end_of_the_audio() -> None:
    assert events([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]], Postprocessor(config())) == [
        ("kick", ONSET, 0.1, None),
        ("kick", OFFSET, 0.2, 0.1),
    ]


def test_hysteresis_keeps_a_wobbling_score_one_event() -> None:
    rows = [[0.7, 0, 0], [0.5, 0, 0], [0.65, 0, 0], [0.4, 0, 0], [0.2, 0, 0]]
    assert [(e[0], e[1]) for e in events(rows, Postprocessor(config()))] == [("kick", ONSET), ("kick", OFFSET)]


def test_per_class_thresholds_and_releases() -> None:
    c = config(thresholds=(0.6, 0.9, 0.5))
    assert list(c.class_releases()) == pytest.approx([0.3, 0.45, 0.25])
    got = events([[0.0, 0.8, 0.0], [0.0, 0.95, 0.0], [0.0, 0.4, 0.0]], Postprocessor(c))
    assert got == [("snare", ONSET, 0.1, None), ("snare", OFFSET, 0.2, 0.1)]


def test_a_version_may_carry_its_own_smoothing_and_release_ratio() -> None:
    fields = manifest_fields(output_kind="sigmoid", thresholds={"yes": 0.5})
    common = {"version": 1, "sha256": "0" * 64, "size_bytes": 1, "created_at": "2026-01-01T00:00:00Z"}
    settings = Settings(threshold=0.6, release_threshold=0.3, smoothing_windows=3)
    plain = PostprocessConfig.from_settings(settings, Manifest.model_validate({**fields, **common}))
    assert plain.smoothing_windows == 3 and plain.class_releases()[0] == pytest.approx(0.25)  # the server's
    own = Manifest.model_validate({**fields, **common, "smoothing_windows": 1, "release_ratio": 0.25})
    c = PostprocessConfig.from_settings(settings, own)
    assert c.smoothing_windows == 1
    releases = dict(zip(c.labels, c.class_releases(), strict=True))
    assert releases["yes"] == pytest.approx(0.125) and releases["no"] == pytest.approx(0.15)
    for bad in ({"smoothing_windows": 0}, {"release_ratio": 1.5}, {"release_ratio": 0.0}):
        with pytest.raises(ValueError):
            Manifest.model_validate({**fields, **common, **bad})


def test_stream_overrides_sensitivity_and_allowed_classes() -> None:
    fields = manifest_fields(output_kind="sigmoid", thresholds={"yes": 0.5})
    manifest = Manifest.model_validate({**fields, "version": 1, "sha256": "0" * 64, "size_bytes": 1,
                                        "created_at": "2026-01-01T00:00:00Z"})  # fmt: skip
    settings = Settings(threshold=0.6, release_threshold=0.3)
    base = PostprocessConfig.from_settings(settings, manifest)
    assert base.multilabel
    t = dict(zip(base.labels, base.class_thresholds(), strict=True))
    assert t["yes"] == 0.5 and t["no"] == 0.6  # the model's own, else the server's

    tuned = PostprocessConfig.from_settings(
        settings, manifest, DetectionOverrides(thresholds=(("no", 0.8),), sensitivity=1.0, allowed=("no",))
    )
    t = dict(zip(tuned.labels, tuned.class_thresholds(), strict=True))
    assert t["yes"] == pytest.approx(0.25) and t["no"] == pytest.approx(0.64)  # squared by sensitivity +1
    assert tuned.allowed == frozenset({"no"})
    for bad, match in (
        (DetectionOverrides(allowed=("maybe",)), "unknown class"),
        (DetectionOverrides(thresholds=(("yes", 1.5),)), r"\(0, 1\]"),
        (DetectionOverrides(sensitivity=2.0), r"\[-1, 1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            PostprocessConfig.from_settings(settings, manifest, bad)


def test_only_allowed_classes_fire() -> None:
    got = events([[0.9, 0.9, 0.0]], Postprocessor(config(allowed=frozenset({"snare"}))))
    assert {e[0] for e in got} == {"snare"}


def test_active_classes_of_a_clip() -> None:
    c = config(thresholds=(0.6, 0.5, 0.5))
    assert active_classes(np.array([0.7, 0.55, 0.99]), c) == {"kick": pytest.approx(0.7), "snare": pytest.approx(0.55)}
    assert active_classes(np.array([0.1, 0.2, 0.99]), c) == {}
    assert active_classes(np.array([0.1, 0.2, 0.7]), config(multilabel=False), only_best=True) == {}


def test_thresholds_chosen_on_validation_meet_the_false_positive_target() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((2000, 2)) < 0.3).astype(np.int64)
    p = np.clip(y * 0.5 + rng.random((2000, 2)) * 0.6, 0, 1).astype(np.float32)
    thresholds = choose_thresholds(p, y, ["a", "b"], target_fpr=0.05)
    for k, label in enumerate("ab"):
        negatives = p[y[:, k] == 0, k]
        assert (negatives >= thresholds[label]).mean() <= 0.05
        assert (negatives >= thresholds[label] - 0.05).mean() > 0.05  # and not much higher than needed
    report = multilabel_report(p, y, ["a", "b"], thresholds, logits=False)
    assert report["map"] == pytest.approx(mean_average_precision(p, y), abs=1e-4)
    assert report["per_class"]["a"]["support"] == int(y[:, 0].sum())


def test_a_manifest_refuses_thresholds_of_unknown_classes_or_out_of_range() -> None:
    base = {
        **manifest_fields(),
        "version": 1,
        "sha256": "0" * 64,
        "size_bytes": 1,
        "created_at": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(ValueError, match="not labels"):
        Manifest.model_validate({**base, "thresholds": {"maybe": 0.5}})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Manifest.model_validate({**base, "thresholds": {"yes": 0.0}})
