"""``hark kfold``: stratified k-fold cross-validation over voices, with mean ± std of every metric.

The folds partition the voices of the manifest's train and val splits (the test voices are never used)
with scikit-learn's ``StratifiedGroupKFold``: no voice is in two folds, so every score is on unheard
voices, and each fold's label mix is as close to the whole's as whole voices allow. Generated noise
clips (``_silence_``) have no speaker, only a per-split placeholder voice, so each is a group of its own and
silence spreads over the folds like any other label. Fold i's model
trains on the other folds for the config's epochs and is scored on fold i. The held-out fold is
watched (its per-epoch accuracy is in the fold's ``metrics.jsonl``) but never chooses the model: the
last epoch is kept and early stopping is off, so the scores are not tuned to the folds they report.

Writes into the output folder (default ``runs/<name>-kfold``): ``fold-<i>/`` (each fold's run folder),
``kfold.json`` (each fold's voices and every metric per fold with its mean and std) and ``kfold.md``
(the same as a table). Metrics come from :func:`hark_training.evaluate.classification_report`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from hark.core.frontend import FrontendConfig
from hark_training.config import RUNS_DIR, TrainConfig
from hark_training.data import SOURCE_NOISE, ClipRecord
from hark_training.evaluate import classification_report
from hark_training.features import SplitFeatures, load_splits
from hark_training.train import (
    CHECKPOINT_FILE,
    add_config_arguments,
    architecture_frontend,
    config_for_command,
    load_checkpoint,
    predict,
    single_label_classes,
    train,
)

REPORT_FILE = "kfold.json"
TABLE_FILE = "kfold.md"
POOLED_SPLITS = ("train", "val")


class MetricSummary(BaseModel):
    """One metric over the folds: its mean and (population) standard deviation, and each fold's value.

    Folds where the metric is undefined (None, e.g. the recall of a class the fold lacks) are left out
    of the mean and std.
    """

    mean: float | None
    std: float | None
    folds: list[float | None]


class FoldInfo(BaseModel):
    """A held-out fold: its clips' voices (a noise placeholder voice may be in several folds) and sizes."""

    voices: list[str]
    n_train: int
    n_heldout: int


class KFoldReport(BaseModel):
    k: int
    seed: int
    data_manifest: str
    folds: list[FoldInfo]
    metrics: dict[str, MetricSummary]


def fold_group(record: ClipRecord) -> str:
    """What must stay within one fold: the clip's voice, or the clip itself for generated noise (no speaker)."""
    return f"{record.voice}/{record.path.name}" if record.source == SOURCE_NOISE else record.voice


def voice_folds(
    y: npt.NDArray[np.int64], voices: Sequence[str], k: int, seed: int
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """``k`` (train indices, held-out indices) pairs; each voice (group) is held out in exactly one fold."""
    if len(set(voices)) < k:
        raise ValueError(f"{k} folds need at least {k} voices; the train and val splits have {len(set(voices))}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(a.astype(np.int64), b.astype(np.int64)) for a, b in splitter.split(np.zeros(len(y)), y, groups=voices)]


def flat_metrics(report: Mapping[str, Any]) -> dict[str, float | None]:
    """A classification report as flat ``name -> value``: the overall figures, then ``<figure>/<label>``."""
    flat: dict[str, float | None] = {
        name: report[name] for name in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auroc")
    }
    for figure in ("recall", "precision", "f1"):
        for label, per_class in report["per_class"].items():
            flat[f"{figure}/{label}"] = per_class[figure] if per_class["support"] else None
    return flat


def summarize(per_fold: Sequence[Mapping[str, float | None]]) -> dict[str, MetricSummary]:
    """Mean ± std of every metric over the folds (population std, as ``numpy.std``)."""
    summary = {}
    for name in per_fold[0]:
        values = [fold[name] for fold in per_fold]
        defined = [v for v in values if v is not None]
        summary[name] = MetricSummary(
            mean=float(np.mean(defined)) if defined else None,
            std=float(np.std(defined)) if defined else None,
            folds=values,
        )
    return summary


def markdown_table(report: KFoldReport) -> str:
    """One row per metric: mean ± std, then each fold's value."""

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    header = ["metric", "mean ± std", *(f"fold {i + 1}" for i in range(report.k))]
    rows = [
        [name, f"{cell(m.mean)} ± {cell(m.std)}", *(cell(v) for v in m.folds)] for name, m in report.metrics.items()
    ]
    lines = [header, ["---"] * len(header), *rows]
    title = f"# {report.k}-fold cross-validation over voices ({report.data_manifest}, seed {report.seed})\n\n"
    return title + "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def pooled_features(
    config: TrainConfig,
    labels: Sequence[str],
    read_manifest: Callable[[Path], Sequence[ClipRecord]],
    frontend: FrontendConfig,
    progress: bool,
) -> tuple[SplitFeatures, list[ClipRecord]]:
    """The train and val splits' windows together, with each window's clip (manifest order, as the cache)."""
    records = read_manifest(config.data)
    splits = load_splits(
        config.data, labels, frontend, config.window_frames, read=read_manifest, splits=POOLED_SPLITS, progress=progress
    )
    x = np.concatenate([splits[s].x for s in POOLED_SPLITS])
    y = np.concatenate([splits[s].y for s in POOLED_SPLITS])
    return SplitFeatures(x=x, y=y), [r for s in POOLED_SPLITS for r in records if r.split == s]


def cross_validate(
    config: TrainConfig,
    k: int,
    out_dir: Path,
    *,
    labels: Sequence[str],
    read_manifest: Callable[[Path], Sequence[ClipRecord]],
    frontend: FrontendConfig | None = None,
    progress: bool = True,
) -> KFoldReport:
    """Train and score one model per fold; write ``kfold.json`` and ``kfold.md`` into ``out_dir``."""
    frontend = frontend or architecture_frontend(config.arch)
    pooled, clips = pooled_features(config, labels, read_manifest, frontend, progress)
    folds = voice_folds(pooled.y, [fold_group(c) for c in clips], k, config.seed)
    infos, per_fold = [], []
    for i, (train_idx, held_idx) in enumerate(tqdm(folds, desc="folds", unit="fold", disable=not progress)):
        fold_config = config.model_copy(update={"out": out_dir / f"fold-{i + 1}", "keep": "last", "patience": None})
        features = {
            "train": SplitFeatures(x=pooled.x[train_idx], y=pooled.y[train_idx]),
            "val": SplitFeatures(x=pooled.x[held_idx], y=pooled.y[held_idx]),
        }
        run_dir = train(
            fold_config,
            labels=labels,
            read_manifest=read_manifest,
            frontend=frontend,
            progress=progress,
            features=features,
        )
        model, _ = load_checkpoint(run_dir / CHECKPOINT_FILE)
        scores = torch.from_numpy(predict(model, features["val"].x)).softmax(dim=1).numpy()
        per_fold.append(flat_metrics(classification_report(scores, features["val"].y, labels)))
        infos.append(
            FoldInfo(voices=sorted({clips[j].voice for j in held_idx}), n_train=len(train_idx), n_heldout=len(held_idx))
        )
    report = KFoldReport(
        k=k, seed=config.seed, data_manifest=str(config.data), folds=infos, metrics=summarize(per_fold)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n")
    (out_dir / TABLE_FILE).write_text(markdown_table(report))
    return report


def run(args: argparse.Namespace) -> int:
    from hark_training import data

    if (config := config_for_command(args)) is None:
        return 2
    out_dir = args.out or RUNS_DIR / f"{config.name}-kfold"
    try:
        report = cross_validate(
            config,
            args.folds,
            out_dir,
            labels=single_label_classes(config.data, "kfold"),
            read_manifest=data.read_manifest,
            progress=not args.quiet,
        )
    except ValueError as e:  # too few voices for the folds, or waveform augmentation (needs the clips)
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in ("accuracy", "macro_f1"):
        m = report.metrics[name]
        print(f"{name}: {m.mean:.4f} ± {m.std:.4f} over {args.folds} folds")
    print(f"-> {out_dir / TABLE_FILE}")
    return 0


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 folds, got {value}")
    return value


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark kfold``."""
    parser = subparsers.add_parser(
        "kfold",
        help="Stratified k-fold cross-validation over voices: mean ± std of every metric",
        description="Split the train and val voices into K folds (no voice in two folds, label mix "
        "stratified), train one model per fold on the others and score it on its fold; write "
        f"{REPORT_FILE} and {TABLE_FILE} (every metric per fold, mean ± std). The test voices are never used.",
    )
    add_config_arguments(parser, out_help="Output folder (default runs/<name>-kfold)")
    parser.add_argument("--folds", type=_at_least_two, default=5, help="Number of folds K (default 5)")
    parser.add_argument("--quiet", action="store_true", help="No progress bars")
    parser.set_defaults(func=run)
