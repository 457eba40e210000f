"""``hark tune``: hyper-parameter search with Optuna around a base training config.

Each trial trains the base config with sampled values (see :func:`suggest_config`) and scores it by its best
validation accuracy. The TPE sampler is seeded with the config's seed, so a search is repeatable; the
median pruner ends a trial whose per-epoch validation accuracy falls below the median of earlier trials
at the same epoch, which spends the budget on promising settings. The search is bounded by ``--trials``
and optionally ``--timeout``.

Writes into the output folder (default ``runs/<name>-tune``): ``trials/<number>/`` (each trial's run
folder), ``trials.csv`` and ``trials.md`` (every trial: state, value, parameters, seconds) and
``best_config.json``, the best trial's full config, which ``hark train --config`` trains as it is.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from pydantic import BaseModel

from hark.core.frontend import FrontendConfig
from hark_training.config import RUNS_DIR, TrainConfig, config_to_json
from hark_training.features import SplitFeatures, load_splits
from hark_training.models import ARCHITECTURES
from hark_training.train import (
    add_config_arguments,
    architecture_frontend,
    config_for_command,
    single_label_classes,
    train,
)

TRIALS_CSV = "trials.csv"
TRIALS_TABLE = "trials.md"
BEST_CONFIG = "best_config.json"
WIDTH_OPTIONS = ("channels", "hidden")
"""Architecture options that set a layer's width; ``width`` in the search scales each one the model has."""
PRUNER_STARTUP_TRIALS = 3
"""Trials that always run to the end before the pruner compares anything against their median."""


class TrialRow(BaseModel):
    """One line of the results table."""

    number: int
    state: str
    value: float | None
    seconds: float | None
    params: dict[str, Any]


def scaled_width(arch: str, options: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """``options`` with every width of the architecture (given, or its default) multiplied by ``factor``."""
    defaults = inspect.signature(ARCHITECTURES[arch]).parameters
    scaled = dict(options)
    for name in WIDTH_OPTIONS:
        if name not in defaults:
            continue
        base = options.get(name, defaults[name].default)
        if isinstance(base, list | tuple):
            scaled[name] = [max(1, round(c * factor)) for c in base]
        else:
            scaled[name] = max(1, round(base * factor))
    return scaled


def suggest_config(trial: optuna.trial.BaseTrial, base: TrainConfig) -> TrainConfig:
    """The base config with the search space's values for this trial (the space is defined here, and only here)."""
    loss = trial.suggest_categorical("loss", ["ce", "focal"])
    focal_gamma = trial.suggest_float("focal_gamma", 0.5, 4.0) if loss == "focal" else base.focal_gamma
    width = trial.suggest_categorical("width", [0.5, 1.0, 1.5])
    augment = {
        "noise_prob": trial.suggest_float("noise_prob", 0.0, 0.9),
        "gain_db": trial.suggest_float("gain_db", 0.0, 12.0),
        "time_shift_frames": trial.suggest_int("time_shift_frames", 0, 15),
        "time_masks": trial.suggest_int("time_masks", 0, 2),
        "freq_masks": trial.suggest_int("freq_masks", 0, 2),
    }
    update = {
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 1e-1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "loss": loss,
        "focal_gamma": focal_gamma,
        "arch_options": scaled_width(base.arch, base.arch_options, width),
        "augment": {**base.augment.model_dump(), **augment},
    }
    return TrainConfig.model_validate({**base.model_dump(), **update})


def objective(
    base: TrainConfig,
    out_dir: Path,
    train_run: Callable[..., Path],
) -> Callable[[optuna.Trial], float]:
    """A trial: train the suggested config into ``trials/<number>``, reporting each epoch's val accuracy."""

    def run_trial(trial: optuna.Trial) -> float:
        config = suggest_config(trial, base).model_copy(update={"out": out_dir / "trials" / f"{trial.number:03d}"})
        best = float("-inf")

        def on_epoch(row: dict[str, Any]) -> None:
            nonlocal best
            best = max(best, row["val_accuracy"])
            trial.report(row["val_accuracy"], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"val accuracy {row['val_accuracy']} at epoch {row['epoch']}")

        train_run(config, on_epoch=on_epoch)
        return best

    return run_trial


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    return [
        TrialRow(
            number=t.number,
            state=t.state.name,
            value=t.value,
            seconds=t.duration.total_seconds() if t.duration is not None else None,
            params=t.params,
        )
        for t in study.trials
    ]


def write_tables(rows: Sequence[TrialRow], out_dir: Path) -> None:
    """``trials.csv`` and ``trials.md``: one row per trial, a column per parameter any trial used."""
    names = sorted({name for row in rows for name in row.params})
    header = ["number", "state", "value", "seconds", *names]
    table = [[row.number, row.state, row.value, row.seconds, *(row.params.get(n) for n in names)] for row in rows]
    with (out_dir / TRIALS_CSV).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)

    def cell(value: Any) -> str:
        return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [header, ["---"] * len(header), *([cell(v) for v in line] for line in table)]
    (out_dir / TRIALS_TABLE).write_text("\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines) + "\n")


def tune(
    base: TrainConfig,
    out_dir: Path,
    *,
    trials: int,
    labels: Sequence[str],
    read_manifest: Callable[[Path], Sequence[Any]],
    timeout: float | None = None,
    frontend: FrontendConfig | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Run the search; write the results table and the best config into ``out_dir``; return the study."""
    frontend = frontend or architecture_frontend(base.arch)
    features: dict[str, SplitFeatures] | None = None
    if not base.augment.waveform.enabled:  # cached windows: read once, shared by every trial
        features = load_splits(
            base.data, labels, frontend, base.window_frames, read=read_manifest, splits=("train", "val")
        )
    if features is not None and len(features["val"]) == 0:
        raise ValueError(f"{base.data} has no clips in the val split; trials are scored on it")

    def train_run(config: TrainConfig, on_epoch: Callable[[dict[str, Any]], None]) -> Path:
        return train(
            config,
            labels=labels,
            read_manifest=read_manifest,
            frontend=frontend,
            progress=progress,
            features=features,
            on_epoch=on_epoch,
        )

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=1),
    )
    study.optimize(objective(base, out_dir, train_run), n_trials=trials, timeout=timeout, show_progress_bar=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tables(trial_rows(study), out_dir)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        best = suggest_config(optuna.trial.FixedTrial(study.best_params), base)
        (out_dir / BEST_CONFIG).write_text(config_to_json(best))
    return study


def run(args: argparse.Namespace) -> int:
    from hark_training import data

    if (config := config_for_command(args)) is None:
        return 2
    out_dir = args.out or RUNS_DIR / f"{config.name}-tune"
    config = config.model_copy(update={"out": None})  # --out names the search's folder, not a run's
    try:
        study = tune(
            config,
            out_dir,
            trials=args.trials,
            timeout=args.timeout,
            labels=single_label_classes(config.data, "tune"),
            read_manifest=data.read_manifest,
            progress=not args.quiet,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(study.trials)} trials -> {out_dir / TRIALS_TABLE}")
    if not (out_dir / BEST_CONFIG).is_file():
        print("error: no trial completed", file=sys.stderr)
        return 1
    print(f"best val accuracy {study.best_value:.4f} (trial {study.best_trial.number}) -> {out_dir / BEST_CONFIG}")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark tune``."""
    parser = subparsers.add_parser(
        "tune",
        help="Hyper-parameter search with Optuna (TPE, median pruning); writes a results table and the best config",
        description="Search lr, weight decay, batch size, loss and focal gamma, augmentation strengths and model "
        f"width around --config for a bounded number of trials; write {TRIALS_CSV} and {TRIALS_TABLE} (every "
        f"trial's parameters and val accuracy) and {BEST_CONFIG}, which `hark train --config` accepts.",
    )
    add_config_arguments(parser, out_help="Output folder (default runs/<name>-tune)")
    parser.add_argument("--trials", type=int, default=20, help="Number of trials (default 20)")
    parser.add_argument("--timeout", type=float, help="Stop starting new trials after this many seconds")
    parser.add_argument("--quiet", action="store_true", help="No progress bars")
    parser.set_defaults(func=run)
