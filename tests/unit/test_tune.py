"""Hyper-parameter search: bounded trials, per-epoch reports, the results table and a trainable best config."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import optuna
import pytest

from hark_training import kfold, lr_find, tune
from hark_training.config import TrainConfig, load_config
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.models import build_model, count_parameters
from tests.fixtures_data import write_tone_dataset

TRIALS, EPOCHS = 3, 2


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainConfig, optuna.Study]:
    manifest = write_tone_dataset(tmp_path_factory.mktemp("data"), voices_per_split=2)
    out = tmp_path_factory.mktemp("tune")
    base = TrainConfig(data=manifest, epochs=EPOCHS, threads=1, arch="dscnn", arch_options={"channels": 16})
    study = tune.tune(base, out, trials=TRIALS, labels=LABELS, read_manifest=read_data_manifest, progress=False)
    return out, base, study


def test_tune_runs_the_bounded_number_of_trials_reporting_every_epoch(
    search: tuple[Path, TrainConfig, optuna.Study],
) -> None:
    out, _, study = search
    assert len(study.trials) == TRIALS
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1))
        assert trial.value == max(trial.intermediate_values.values())
        assert (out / "trials" / f"{trial.number:03d}" / "checkpoint.pt").is_file()


def test_tune_writes_every_trial_with_its_parameters(search: tuple[Path, TrainConfig, optuna.Study]) -> None:
    out, _, study = search
    with (out / tune.TRIALS_CSV).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    for row, trial in zip(rows, study.trials, strict=True):
        assert float(row["value"]) == pytest.approx(trial.value)
        assert float(row["lr"]) == pytest.approx(trial.params["lr"]) and row["loss"] == trial.params["loss"]
    table = (out / tune.TRIALS_TABLE).read_text().splitlines()
    assert len(table) == 2 + TRIALS
    assert all(name in table[0] for name in ("value", "lr", "weight_decay", "batch_size", "width", "noise_prob"))


def test_best_config_is_the_best_trial_and_trains(search: tuple[Path, TrainConfig, optuna.Study]) -> None:
    out, base, study = search
    best = load_config(out / tune.BEST_CONFIG)
    params = study.best_params
    assert best.lr == pytest.approx(params["lr"]) and best.batch_size == params["batch_size"]
    assert best.loss == params["loss"] and best.augment.noise_prob == pytest.approx(params["noise_prob"])
    assert best.arch_options["channels"] == round(16 * params["width"])
    assert (best.data, best.epochs, best.seed) == (base.data, base.epochs, base.seed)
    trained = load_config(out / "trials" / f"{study.best_trial.number:03d}" / "config.json")
    assert trained.model_copy(update={"out": None}) == best.model_copy(update={"out": None})


def test_width_scales_every_width_option_from_the_architecture_defaults() -> None:
    assert tune.scaled_width("dscnn", {}, 0.5)["channels"] == 32  # DSCNN's default 64
    assert tune.scaled_width("cnn", {"channels": (32, 64)}, 1.5)["channels"] == [48, 96]
    narrow, wide = (build_model("dscnn", 12, 98, 40, tune.scaled_width("dscnn", {}, f)) for f in (0.5, 1.5))
    assert count_parameters(narrow) < count_parameters(wide)


@pytest.mark.parametrize("module", [tune, kfold, lr_find])
def test_commands_have_help(module: object, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="hark")
    commands = parser.add_subparsers()
    module.add_command(commands)  # type: ignore[attr-defined]
    name = next(iter(commands.choices))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--config" in text and len(commands.choices[name].description or "") > 40
