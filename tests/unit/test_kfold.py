"""K-fold cross-validation over voices: disjoint voices, stratified labels, mean ± std of every metric."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hark_training.config import TrainConfig
from hark_training.data import LABELS, ClipRecord
from hark_training.data import read_manifest as read_data_manifest
from hark_training.kfold import (
    REPORT_FILE,
    TABLE_FILE,
    KFoldReport,
    cross_validate,
    fold_group,
    summarize,
    voice_folds,
)
from hark_training.train import METRICS_FILE, RUN_FILE
from tests.fixtures_data import write_tone_dataset

K = 3


def skewed_voices(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """30 voices of 20 clips each; each voice favours one of three labels, the labels 60/30/10 % overall."""
    rng = np.random.default_rng(seed)
    favourite = np.repeat([0, 1, 2], [18, 9, 3])
    y = np.concatenate([np.where(rng.random(20) < 0.8, f, rng.integers(0, 3, 20)) for f in favourite])
    voices = [f"v{i}" for i in range(30) for _ in range(20)]
    return y.astype(np.int64), voices


def test_folds_never_share_a_voice_and_cover_every_clip_once() -> None:
    y, voices = skewed_voices()
    folds = voice_folds(y, voices, K, seed=0)
    held = [set(h.tolist()) for _, h in folds]
    assert sorted(i for h in held for i in h) == list(range(len(y)))
    held_voices = [{voices[i] for i in h} for h in held]
    for a in range(K):
        for b in range(a + 1, K):
            assert not held_voices[a] & held_voices[b]
    for train_idx, held_idx in folds:
        assert not {voices[i] for i in train_idx} & {voices[i] for i in held_idx}


def test_folds_are_stratified() -> None:
    """Each held-out fold's label mix is close to the whole's (within 5 points here, whole voices moving)."""
    y, voices = skewed_voices()
    overall = np.bincount(y) / len(y)
    for _, held in voice_folds(y, voices, K, seed=0):
        assert np.abs(np.bincount(y[held], minlength=3) / len(held) - overall).max() < 0.05


def test_generated_noise_spreads_over_the_folds_while_speech_stays_by_voice() -> None:
    """Silence clips share a placeholder voice but no speaker: each is its own group, so every fold gets some."""
    speech = [ClipRecord(Path(f"yes/{i}.wav"), "yes", "train", f"v{i % 6}", "espeak-ng") for i in range(60)]
    noise = [ClipRecord(Path(f"_silence_/{i}.wav"), "_silence_", "train", "noise-train", "noise") for i in range(30)]
    records = speech + noise
    groups = [fold_group(r) for r in records]
    assert len(set(groups[60:])) == 30 and set(groups[:60]) == {f"v{i}" for i in range(6)}
    y = np.array([0] * 60 + [1] * 30)
    for train_idx, held_idx in voice_folds(y, groups, K, seed=0):
        assert 5 <= int((y[held_idx] == 1).sum()) <= 15
        assert not {records[i].voice for i in train_idx[y[train_idx] == 0]} & {
            records[i].voice for i in held_idx[y[held_idx] == 0]
        }


def test_too_few_voices_for_the_folds_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 3 voices"):
        voice_folds(np.array([0, 1, 0, 1]), ["a", "a", "b", "b"], 3, seed=0)


def test_summary_is_mean_and_std_over_defined_folds() -> None:
    summary = summarize([{"accuracy": 0.5, "recall/x": None}, {"accuracy": 0.7, "recall/x": 0.4}])
    assert summary["accuracy"].mean == pytest.approx(0.6) and summary["accuracy"].std == pytest.approx(0.1)
    assert summary["recall/x"].mean == pytest.approx(0.4) and summary["recall/x"].std == 0.0
    assert summary["recall/x"].folds == [None, 0.4]


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, KFoldReport]:
    manifest = write_tone_dataset(
        tmp_path_factory.mktemp("data"), {"train": 6, "val": 3, "test": 2}, voices_per_split=3
    )
    out = tmp_path_factory.mktemp("kfold")
    config = TrainConfig(data=manifest, epochs=2, batch_size=16, threads=1, patience=1, arch_options={"channels": 16})
    report = cross_validate(config, K, out, labels=LABELS, read_manifest=read_data_manifest, progress=False)
    return manifest, out, report


def test_kfold_uses_train_and_val_voices_never_test(kfold_run: tuple[Path, Path, KFoldReport]) -> None:
    manifest, _, report = kfold_run
    records = read_data_manifest(manifest)
    pooled = Counter(r.voice for r in records if r.split in ("train", "val"))
    held = [v for fold in report.folds for v in fold.voices]
    assert sorted(held) == sorted(pooled)  # every train/val voice held out exactly once, no test voice
    assert sum(f.n_heldout for f in report.folds) == sum(pooled.values())
    assert all(f.n_train + f.n_heldout == sum(pooled.values()) for f in report.folds)


def test_kfold_writes_mean_and_std_of_every_metric(kfold_run: tuple[Path, Path, KFoldReport]) -> None:
    _, out, report = kfold_run
    assert KFoldReport.model_validate_json((out / REPORT_FILE).read_text()) == report
    expected = {"accuracy", "macro_f1", "macro_auroc", *(f"recall/{label}" for label in LABELS)}
    assert expected <= set(report.metrics)
    for metric in report.metrics.values():
        assert len(metric.folds) == K
        defined = [v for v in metric.folds if v is not None]
        assert metric.mean == pytest.approx(np.mean(defined)) and metric.std == pytest.approx(np.std(defined))
    table = (out / TABLE_FILE).read_text()
    accuracy = report.metrics["accuracy"]
    assert f"| accuracy | {accuracy.mean:.4f} ± {accuracy.std:.4f} |" in table
    assert all(f"| recall/{label} |" in table for label in LABELS)


def test_each_fold_keeps_its_last_epoch_and_scores_it(kfold_run: tuple[Path, Path, KFoldReport]) -> None:
    """The held-out fold never chooses the model: the last epoch is kept, and its accuracy is the fold's score."""
    _, out, report = kfold_run
    for i in range(K):
        run = json.loads((out / f"fold-{i + 1}" / RUN_FILE).read_text())
        last = json.loads((out / f"fold-{i + 1}" / METRICS_FILE).read_text().splitlines()[-1])
        assert run["best_epoch"] == run["epochs_run"] == run["epochs"]
        assert report.metrics["accuracy"].folds[i] == pytest.approx(last["val_accuracy"], abs=1e-5)
