"""Distillation: a student learns from a teacher run's softened scores as well as from the labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hark_training.config import DistillConfig, TrainConfig
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.distill import plan_seams, seam_windows, soft_targets, softmax, teacher_probabilities
from hark_training.train import RUN_FILE, train
from tests.fixtures_data import PER_SPLIT, write_tone_dataset


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def teacher(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    config = TrainConfig(data=manifest, out=out, arch="cnn", epochs=1, batch_size=16, threads=2)
    return train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)


def test_targets_mix_the_labels_with_the_teachers_probabilities() -> None:
    y = np.array([0, 2])
    teacher = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]], dtype=np.float32)

    np.testing.assert_allclose(soft_targets(y, teacher, 0.25), [[0.875, 0.125, 0.0], [0.0, 0.05, 0.95]])
    np.testing.assert_allclose(soft_targets(y, teacher, 1.0), teacher)
    with pytest.raises(ValueError, match="the teacher scored 2 windows, the student has 3"):
        soft_targets(np.array([0, 1, 2]), teacher, 0.5)


def test_temperature_softens_without_changing_the_order() -> None:
    logits = np.array([[4.0, 2.0, 0.0]], dtype=np.float32)
    sharp, soft = softmax(logits, 1.0), softmax(logits, 4.0)

    np.testing.assert_allclose(sharp.sum(), 1.0, rtol=1e-6)
    assert list(np.argsort(soft[0])) == list(np.argsort(sharp[0]))
    assert soft[0, 0] < sharp[0, 0] and soft[0, 2] > sharp[0, 2]


def test_the_teacher_scores_every_training_window_in_manifest_order(manifest: Path, teacher: Path) -> None:
    scores = teacher_probabilities(
        DistillConfig(teacher=teacher, temperature=1.0), manifest, LABELS, 98, read_data_manifest
    )

    assert scores.clips.shape == (PER_SPLIT["train"] * len(LABELS), len(LABELS))
    np.testing.assert_allclose(scores.clips.sum(axis=1), 1.0, rtol=1e-5)
    assert scores.seams.shape == (0, len(LABELS))


def test_a_seam_window_is_the_end_of_one_clip_then_the_start_of_another() -> None:
    x = np.stack([np.full((10, 2), i, dtype=np.float32) for i in range(4)])
    x[:, :, 1] = np.arange(10)  # each frame's place in its own clip
    seams = plan_seams(50, n_clips=4, window_frames=10, seed=0)
    joined = seam_windows(x, seams)

    assert joined.shape == (50, 10, 2)
    assert set(seams.cut) <= set(range(2, 9))  # joined somewhere in the middle three fifths
    a, b, k = seams.first[0], seams.second[0], seams.cut[0]
    np.testing.assert_array_equal(joined[0, :, 0], [a] * (10 - k) + [b] * k)
    np.testing.assert_array_equal(joined[0, :, 1], list(range(k, 10)) + list(range(k)))
    np.testing.assert_array_equal(plan_seams(50, 4, 10, seed=0).cut, seams.cut)  # the same seams every run


def test_the_teacher_alone_labels_the_seams(manifest: Path, teacher: Path) -> None:
    n_train = PER_SPLIT["train"] * len(LABELS)
    seams = plan_seams(7, n_train, 98, seed=0)
    scores = teacher_probabilities(
        DistillConfig(teacher=teacher), manifest, LABELS, 98, read_data_manifest, False, seams
    )

    assert scores.seams.shape == (7, len(LABELS))
    np.testing.assert_allclose(scores.seams.sum(axis=1), 1.0, rtol=1e-5)


def test_a_student_trains_on_the_teachers_targets(manifest: Path, teacher: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data=manifest,
        out=tmp_path / "student",
        epochs=1,
        batch_size=16,
        threads=2,
        distill=DistillConfig(teacher=teacher, weight=0.7, seams=20),
    )
    run = train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)

    saved = json.loads((run / "config.json").read_text())
    assert saved["distill"] == {"teacher": str(teacher), "weight": 0.7, "temperature": 2.0, "seams": 20}
    summary = json.loads((run / RUN_FILE).read_text())
    assert summary["epochs_run"] == 1
    assert (summary["n_train"], summary["n_seams"]) == (PER_SPLIT["train"] * len(LABELS), 20)


def test_a_teacher_of_other_classes_or_no_run_is_refused(manifest: Path, teacher: Path, tmp_path: Path) -> None:
    other = list(reversed(LABELS))
    with pytest.raises(ValueError, match=r"the teacher .* has classes"):
        teacher_probabilities(DistillConfig(teacher=teacher), manifest, other, 98, read_data_manifest)
    with pytest.raises(ValueError, match="is not a run folder"):
        teacher_probabilities(DistillConfig(teacher=tmp_path), manifest, LABELS, 98, read_data_manifest)
