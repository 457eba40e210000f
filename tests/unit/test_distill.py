"""Distillation: a student learns from a teacher run's softened scores as well as from the labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hark_training.config import DistillConfig, TrainConfig
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.distill import soft_targets, softmax, teacher_probabilities
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
    probs = teacher_probabilities(
        DistillConfig(teacher=teacher, temperature=1.0), manifest, LABELS, 98, read_data_manifest
    )

    assert probs.shape == (PER_SPLIT["train"] * len(LABELS), len(LABELS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_student_trains_on_the_teachers_targets(manifest: Path, teacher: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data=manifest,
        out=tmp_path / "student",
        epochs=1,
        batch_size=16,
        threads=2,
        distill=DistillConfig(teacher=teacher, weight=0.7),
    )
    run = train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)

    saved = json.loads((run / "config.json").read_text())
    assert saved["distill"] == {"teacher": str(teacher), "weight": 0.7, "temperature": 2.0}
    assert json.loads((run / RUN_FILE).read_text())["epochs_run"] == 1


def test_a_teacher_of_other_classes_or_no_run_is_refused(manifest: Path, teacher: Path, tmp_path: Path) -> None:
    other = list(reversed(LABELS))
    with pytest.raises(ValueError, match=r"the teacher .* has classes"):
        teacher_probabilities(DistillConfig(teacher=teacher), manifest, other, 98, read_data_manifest)
    with pytest.raises(ValueError, match="is not a run folder"):
        teacher_probabilities(DistillConfig(teacher=tmp_path), manifest, LABELS, 98, read_data_manifest)
