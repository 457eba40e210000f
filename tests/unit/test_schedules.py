"""Learning-rate schedules, early stopping and the LR range test."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from hark_training.config import TrainConfig
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.lr_find import PLOT_FILE, RESULT_FILE, LrFindResult, find_lr
from hark_training.schedules import build_scheduler, should_stop
from hark_training.train import METRICS_FILE, RUN_FILE, train
from tests.fixtures_data import write_tone_dataset

LR, STEPS = 0.01, 100


def lr_curve(name: str) -> list[float]:
    """The learning rate each of ``STEPS`` optimizer steps uses under schedule ``name``."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=123.0)
    scheduler = build_scheduler(name, optimizer, LR, STEPS)
    lrs = []
    for _ in range(STEPS):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_cosine_schedule_anneals_from_lr_to_zero_along_a_half_cosine() -> None:
    lrs = lr_curve("cosine")
    assert lrs[0] == pytest.approx(LR)
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    for step in (25, 50, 75, 99):
        assert lrs[step] == pytest.approx(LR * (1 + math.cos(math.pi * step / STEPS)) / 2, rel=1e-6)


def test_one_cycle_warms_up_to_lr_then_anneals_far_below() -> None:
    lrs = lr_curve("onecycle")
    peak = max(range(STEPS), key=lambda i: lrs[i])
    assert lrs[peak] == pytest.approx(LR, rel=1e-3) and 0.2 * STEPS < peak < 0.4 * STEPS
    assert lrs[0] < LR / 10 and lrs[-1] < LR / 1000


def test_unknown_schedule_is_refused() -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    with pytest.raises(ValueError, match="onecycle or cosine"):
        build_scheduler("step", optimizer, LR, STEPS)


def test_should_stop_once_the_best_score_is_patience_epochs_old() -> None:
    assert not should_stop([0.5, 0.6, 0.6], patience=2)
    assert should_stop([0.5, 0.6, 0.6, 0.55], patience=2)
    assert not should_stop([0.5, 0.6, 0.6, 0.7], patience=2)
    assert not should_stop([0.5, 0.4, 0.3, 0.2], patience=None)
    assert not should_stop([float("nan")] * 5, patience=1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone_dataset(tmp_path_factory.mktemp("data"), voices_per_split=2)


def test_early_stopping_ends_training_when_val_accuracy_stalls(manifest: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data=manifest,
        out=tmp_path / "run",
        epochs=12,
        batch_size=16,
        threads=1,
        patience=2,
        schedule="cosine",
        arch_options={"channels": 16},
    )
    run_dir = train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)
    history = [json.loads(line)["val_accuracy"] for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    summary = json.loads((run_dir / RUN_FILE).read_text())
    assert summary["epochs_run"] == len(history) < config.epochs
    assert should_stop(history, 2) and not should_stop(history[:-1], 2)
    assert summary["best_val_accuracy"] == pytest.approx(max(history), abs=1e-5)


def test_lr_finder_writes_its_plot_and_suggestion(manifest: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=manifest, batch_size=16, threads=1)
    result = find_lr(
        config, tmp_path, labels=LABELS, read_manifest=read_data_manifest, start_lr=1e-5, end_lr=1.0, steps=30
    )
    assert 1e-5 <= result.suggested_lr <= 1.0 and result.suggested_lr in result.lr
    assert result.lr == sorted(result.lr) and len(result.lr) == len(result.loss) <= 30
    ratios = [b / a for a, b in itertools.pairwise(result.lr)]
    assert ratios == pytest.approx([ratios[0]] * len(ratios)) and ratios[0] > 1.4  # exponential: 1e-5 to 1 in 30
    assert LrFindResult.model_validate_json((tmp_path / RESULT_FILE).read_text()) == result
    with Image.open(tmp_path / PLOT_FILE) as image:
        assert image.format == "PNG" and image.width > 100
