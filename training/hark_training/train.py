"""``hark train``: train a small CNN on cached log-Mel windows and write a run folder.

A run folder holds everything export needs and nothing it must recompute: ``checkpoint.pt`` (the
weights with the best validation accuracy and how to rebuild the module), ``config.json`` (the full
:class:`~hark_training.config.TrainConfig`, so ``hark train --config runs/x/config.json`` reproduces it),
``metrics.jsonl`` (one line per epoch), ``reference_stats.json`` (per-band statistics of the training
features) and ``run.json`` (labels, frontend, data manifest sha256, torch version, best epoch).

Batches come from the cached windows, augmented in the feature domain (cheap), or, when any waveform
augmentation is on, from the clips' audio held in memory, augmented and put through the frontend by
DataLoader workers while the model trains (see :mod:`hark_training.augment`). Every epoch's metrics row says
where its time went: ``augment_seconds``, ``data_wait_seconds`` and ``model_seconds``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader
from tqdm import tqdm

from hark.core.audio import read_audio
from hark.core.frontend import FrontendConfig
from hark.core.model_store import sha256_file
from hark_training.augment import AugmentedWindows, FeatureAugmenter, WaveformAugmenter, noise_bank
from hark_training.config import TrainConfig, config_to_json, load_config
from hark_training.distill import plan_seams, seam_windows, soft_targets, teacher_probabilities
from hark_training.evaluate import plot_training_curves, write_report
from hark_training.features import SplitFeatures, feature_stats, load_splits
from hark_training.losses import build_loss, build_sampler
from hark_training.models import ARCHITECTURES, build_model, count_parameters
from hark_training.schedules import build_scheduler, should_stop

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATS_FILE = "reference_stats.json"
RUN_FILE = "run.json"
CURVES_FILE = "training_curves.png"
VAL_REPORT_DIR = "val"
SILENCE = "_silence_"


# --------------------------------------------------------------------------------------------- seeds


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return the generator that drives shuffling and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- batches

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Raw windows ``(b, frames, n_mels)``, their labels ``(b,)`` and the seconds spent making each ``(b,)``."""


def cached_batches(
    x: np.ndarray[Any, Any], targets: np.ndarray[Any, Any], index_batches: Iterable[list[int]]
) -> Iterator[Batch]:
    """Batches of cached windows and their targets; taking them costs nothing worth timing."""
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(targets)
    for index in index_batches:
        yield x_all[index], y_all[index], torch.zeros(len(index))


class TimedBatches:
    """One epoch's raw batches as ``(x, y)``, timing how long the training loop waits for each.

    ``make_seconds`` adds up the time spent making the windows (in worker processes, so it may exceed
    the wait when the workers keep ahead of the model).
    """

    def __init__(self, batches: Iterable[Batch], n_batches: int) -> None:
        self.batches, self.n_batches = batches, n_batches
        self.wait_seconds = self.make_seconds = 0.0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.batches)
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            self.wait_seconds += time.perf_counter() - started
            if batch is None:
                return
            x, y, seconds = batch
            self.make_seconds += float(seconds.sum())
            yield x, y


@dataclass
class TimedAugment:
    """A feature augmenter that adds up the seconds it runs."""

    augment: Callable[[torch.Tensor], torch.Tensor]
    seconds: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        out = self.augment(x)
        self.seconds += time.perf_counter() - started
        return out


def waveform_windows(
    config: TrainConfig, records: Sequence[Any], labels: Sequence[str], frontend: FrontendConfig, progress: bool
) -> AugmentedWindows:
    """The train split's clips, read once into memory, as windows augmented on the fly (``hark_training.augment``).

    The clips are in manifest order, as the cached train split's windows are, so one sampler serves both.
    """
    rows = [r for r in records if r.split == "train"]
    bar = tqdm(rows, desc="audio", unit="clip", disable=not progress, leave=False, file=sys.stderr)
    audio = [read_audio(r.path, frontend.sample_rate) for r in bar]
    background = [a for a, r in zip(audio, rows, strict=True) if r.label == SILENCE]
    augmenter = WaveformAugmenter(config.augment.waveform, frontend.sample_rate, background)
    augmenter.warm_up()
    y = [labels.index(r.label) for r in rows]
    return AugmentedWindows(audio, y, augmenter, frontend, config.window_frames, config.seed)


def epoch_batches(
    train_set: SplitFeatures,
    targets: np.ndarray[Any, Any],
    windows: AugmentedWindows | None,
    sampler: Iterable[int],
    batch_size: int,
    epoch: int,
    workers: int,
) -> TimedBatches:
    """One epoch's batches in the sampler's order: cached windows with ``targets`` (their labels, or a distilled
    run's probability rows), or ``windows`` made from audio by workers."""
    index_batches = BatchSampler(sampler, batch_size, drop_last=False)
    if windows is None:
        return TimedBatches(cached_batches(train_set.x, targets, index_batches), len(index_batches))
    windows.epoch = epoch
    loader = DataLoader(windows, batch_sampler=index_batches, num_workers=workers)
    return TimedBatches(loader, len(loader))


def epoch_times(batches: TimedBatches, augment: TimedAugment, train_seconds: float) -> dict[str, float]:
    """Where an epoch's training time went: making and augmenting windows, waiting for them, the model."""
    return {
        "augment_seconds": round(batches.make_seconds + augment.seconds, 3),
        "data_wait_seconds": round(batches.wait_seconds, 3),
        "model_seconds": round(train_seconds - batches.wait_seconds - augment.seconds, 3),
    }


# ------------------------------------------------------------------------------------------ training


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray[Any, Any], batch_size: int = 512) -> np.ndarray[Any, Any]:
    """Logits of the model in eval mode for windows ``x`` (numpy in, numpy out)."""
    model.eval()
    outs = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.empty((0, 0), dtype=np.float32)


def accuracy(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """Single-label: the share of windows whose top class is right. Multi-label (``y`` multi-hot): the share
    of windows whose every class is right at probability 0.5 (logit 0)."""
    if not len(y):
        return float("nan")
    if y.ndim == 2:
        return float(((logits > 0) == (y > 0)).all(axis=1).mean())
    return float((logits.argmax(axis=1) == y).mean())


@torch.no_grad()
def validation_loss(loss_fn: nn.Module, logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """The training loss on val (NaN for an empty val split)."""
    if not len(y):
        return math.nan
    return float(loss_fn(torch.from_numpy(logits), torch.from_numpy(y)))


def selection_score(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """What picks the best epoch on val: accuracy, or for multi-label data mAP (mean per-class average
    precision, threshold-free, so the thresholds chosen at export do not bias which epoch is kept)."""
    if y.ndim == 2:
        from hark_training.multilabel import mean_average_precision

        return mean_average_precision(logits, y)
    return accuracy(logits, y)


def train_epoch(
    model: nn.Module,
    batches: TimedBatches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    augment: Callable[[torch.Tensor], torch.Tensor],
    progress: bool,
    desc: str,
) -> tuple[float, float]:
    """One pass over an epoch's raw ``batches``; returns (mean loss, accuracy on the augmented batches)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False, file=sys.stderr)
    for raw, y in bar:
        if len(y) < 2:  # batch norm needs two samples
            continue
        x = augment(raw)
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        if y.is_floating_point():  # distillation's probability targets: the top class is the label's
            correct += int((logits.argmax(1) == y.argmax(1)).sum())
        elif y.dim() == 2:  # multi-label: every class right at logit 0
            correct += int(((logits > 0) == (y > 0)).all(dim=1).sum())
        else:
            correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


def save_checkpoint(
    path: Path, model: nn.Module, config: TrainConfig, labels: Sequence[str], n_mels: int, multilabel: bool = False
) -> None:
    torch.save(
        {
            "arch": config.arch,
            "arch_options": dict(config.arch_options),
            "labels": list(labels),
            "multilabel": multilabel,
            "n_frames": config.window_frames,
            "n_mels": n_mels,
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the module a run saved, in eval mode, and return it with the checkpoint's metadata."""
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(
        checkpoint["arch"],
        len(checkpoint["labels"]),
        checkpoint["n_frames"],
        checkpoint["n_mels"],
        checkpoint["arch_options"],
    )
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, checkpoint


# ------------------------------------------------------------------- what an architecture may ask for


@runtime_checkable
class Staged(Protocol):
    """A model that stages its own training (a pretrained backbone, ``hark_training.backbone``): optimizer groups
    whose ``lr_scale`` multiplies the run's learning rate, and which parameters learn in each epoch."""

    def param_groups(self) -> list[dict[str, Any]]: ...

    def start_epoch(self, epoch: int) -> None: ...


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The model's own optimizer groups when it is :class:`Staged`, else one group of every parameter."""
    return model.param_groups() if isinstance(model, Staged) else [{"params": list(model.parameters())}]


def architecture_frontend(arch: str) -> FrontendConfig:
    """The features an architecture is trained on: its class's ``frontend`` (a backbone's input), else the default."""
    frontend = getattr(ARCHITECTURES.get(arch), "frontend", None)
    return frontend if isinstance(frontend, FrontendConfig) else FrontendConfig()


def log_power_augmenter(
    config: TrainConfig, noise: torch.Tensor, gen: torch.Generator, frontend: FrontendConfig
) -> Callable[[torch.Tensor], torch.Tensor]:
    """:class:`FeatureAugmenter` on features of any log kind.

    Its gain and noise mixing take features to be ln(power); features of another kind (a backbone's scaled
    dB) are mapped there and back through ``frontend.log_power_affine``, then floored as the frontend does.
    """
    a, b = frontend.log_power_affine
    if (a, b) == (1.0, 0.0):
        return FeatureAugmenter(config.augment, noise, gen)
    inner = FeatureAugmenter(config.augment, (noise - b) / a, gen)
    floor = frontend.feature_floor
    return lambda x: torch.clamp_min(inner((x - b) / a) * a + b, floor)


def train(
    config: TrainConfig,
    *,
    labels: Sequence[str],
    read_manifest: Callable[[Path], Sequence[Any]],
    frontend: FrontendConfig | None = None,
    progress: bool = True,
    features: Mapping[str, SplitFeatures] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    multilabel: bool = False,
) -> Path:
    """Train ``config`` on the manifest's train split, keep the best (or last) epoch on val, write the run folder.

    ``labels`` are the data set's classes (:func:`hark_training.data.manifest_labels`); ``multilabel`` trains
    one sigmoid per class on multi-hot targets (the epoch kept is the one with the best val mAP).
    ``features`` replaces the manifest's ``train`` and ``val`` splits (k-fold passes each fold's windows);
    ``on_epoch`` sees every epoch's metrics row and may raise to end the run (a tuning trial's pruning).
    """
    frontend = frontend or architecture_frontend(config.arch)
    from hark_training.data import TrainingSelection, training_selection

    if selection := TrainingSelection(config.exclude_engines, config.commercial_only, config.exclude_kinds):
        read_manifest = training_selection(read_manifest, selection)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    gen = seed_everything(config.seed)
    (run_dir / CONFIG_FILE).write_text(config_to_json(config))

    splits = features or load_splits(
        config.data,
        labels,
        frontend,
        config.window_frames,
        read=read_manifest,
        splits=("train", "val"),
        progress=progress,
        multilabel=multilabel,
    )
    train_set, val_set = splits["train"], splits["val"]
    if len(train_set) == 0:
        raise ValueError(f"{config.data} has no clips in the train split")
    (run_dir / STATS_FILE).write_text(feature_stats(train_set.x).model_dump_json(indent=2) + "\n")

    noise = noise_bank(frontend, config.window_frames, config.seed)
    if SILENCE in labels and not multilabel:  # the data set's own background windows are noise too
        noise = torch.cat([noise, torch.from_numpy(train_set.x[train_set.y == labels.index(SILENCE)])])
    augment = log_power_augmenter(config, noise, gen, frontend)
    windows = None
    if config.augment.waveform.enabled:
        if features is not None:
            raise ValueError("waveform augmentation needs the manifest's clips; it cannot train on given features")
        if multilabel:
            raise ValueError("waveform augmentation takes one class per clip; turn it off for a multi-label data set")
        windows = waveform_windows(config, read_manifest(config.data), labels, frontend, progress)

    targets: np.ndarray[Any, Any] = train_set.y
    n_clips = len(train_set)
    if config.distill is not None:
        if multilabel or windows is not None or config.loss != "ce":
            raise ValueError(
                "distillation takes one class per clip, loss ce and cached windows (no waveform augmentation)"
            )
        seams = plan_seams(config.distill.seams, len(train_set), config.window_frames, config.seed)
        teacher = teacher_probabilities(
            config.distill, config.data, labels, config.window_frames, read_manifest, progress, seams
        )
        targets = np.concatenate([soft_targets(train_set.y, teacher.clips, config.distill.weight), teacher.seams])
        train_set = SplitFeatures(
            np.concatenate([train_set.x, seam_windows(train_set.x, seams)]),
            np.concatenate([train_set.y, teacher.seams.argmax(axis=1)]),  # for the sampler and the train accuracy
        )

    model = build_model(config.arch, len(labels), config.window_frames, frontend.n_mels, config.arch_options)
    optimizer = torch.optim.AdamW(param_groups(model), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(train_set) / config.batch_size)
    scheduler = build_scheduler(config.schedule, optimizer, config.lr, steps)
    loss_fn = build_loss(config, labels, multilabel)
    sampler = build_sampler(config.sampler, train_set.y, gen)

    best_acc, best_epoch, best_loss = -1.0, 0, math.inf
    val_history: list[float] = []
    metrics_path = run_dir / METRICS_FILE
    metrics_path.write_text("")
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        desc = f"epoch {epoch}/{config.epochs}"
        if isinstance(model, Staged):
            model.start_epoch(epoch)
        workers = config.augment.waveform.workers
        batches = epoch_batches(train_set, targets, windows, sampler, config.batch_size, epoch, workers)
        timed_augment = TimedAugment(augment)
        loss, train_acc = train_epoch(model, batches, optimizer, scheduler, loss_fn, timed_augment, progress, desc)
        times = epoch_times(batches, timed_augment, time.perf_counter() - started)
        val_logits = predict(model, val_set.x)
        val_acc = selection_score(val_logits, val_set.y)
        row = {
            "epoch": epoch,
            "train_loss": round(loss, 5),
            "train_accuracy": round(train_acc, 5),
            **({"val_map": round(val_acc, 5)} if multilabel else {}),
            "val_accuracy": round(accuracy(val_logits, val_set.y) if multilabel else val_acc, 5),
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - started, 2),
            **times,
        }
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if progress:
            what = "val mAP" if multilabel else "val acc"
            tqdm.write(f"{desc}: loss {loss:.4f}  train acc {train_acc:.4f}  {what} {val_acc:.4f}", file=sys.stderr)
        # A tie on the val score goes to the lower val loss: a small val set saturates its accuracy early, and
        # the first epoch to reach it is rarely the most confident one.
        val_loss = validation_loss(loss_fn, val_logits, val_set.y)
        tie = val_acc == best_acc and val_loss < best_loss
        if val_acc > best_acc or tie or math.isnan(val_acc) or config.keep == "last":
            best_acc, best_epoch, best_loss = val_acc, epoch, val_loss
            save_checkpoint(run_dir / CHECKPOINT_FILE, model, config, labels, frontend.n_mels, multilabel)
        if on_epoch is not None:
            on_epoch(row)
        val_history.append(val_acc)
        if should_stop(val_history, config.patience):
            if progress:
                tqdm.write(f"early stop: no better val accuracy for {config.patience} epochs", file=sys.stderr)
            break

    summary = {
        "labels": list(labels),
        "multilabel": multilabel,
        "frontend": frontend.model_dump(mode="json"),
        "window_frames": config.window_frames,
        "hop_frames": config.hop_frames,
        "data_manifest": str(config.data),
        "data_manifest_sha256": sha256_file(config.data),
        "n_train": n_clips,
        "n_seams": len(train_set) - n_clips,
        "n_val": len(val_set),
        "seed": config.seed,
        "epochs": config.epochs,
        "epochs_run": len(val_history),
        "best_epoch": best_epoch,
        "best_val_accuracy": best_acc,  # mAP for a multi-label run (see selection_score)
        "parameters": count_parameters(model),
        "torch_version": torch.__version__,
    }
    (run_dir / RUN_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    write_plots(run_dir, val_set, labels)
    return run_dir


def write_plots(run_dir: Path, val_set: SplitFeatures, labels: Sequence[str]) -> None:
    """``training_curves.png`` and the kept checkpoint's val report (see :func:`write_single_label_plots`)."""
    if val_set.y.ndim == 2:
        from hark_training.multilabel import multilabel_report

        rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line]
        plot_training_curves(rows, run_dir / CURVES_FILE)
        model, _ = load_checkpoint(run_dir / CHECKPOINT_FILE)
        report = multilabel_report(predict(model, val_set.x), val_set.y, labels)
        (run_dir / VAL_REPORT_DIR).mkdir(exist_ok=True)
        (run_dir / VAL_REPORT_DIR / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        return
    write_single_label_plots(run_dir, val_set, labels)


def write_single_label_plots(run_dir: Path, val_set: SplitFeatures, labels: Sequence[str]) -> None:
    """``training_curves.png`` from ``metrics.jsonl``, and the kept checkpoint's report on val under ``val/``.

    The test split is left to ``hark export`` and ``hark eval``, which measure the exported ONNX file itself.
    """
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line]
    plot_training_curves(rows, run_dir / CURVES_FILE)
    if len(val_set):
        model, _ = load_checkpoint(run_dir / CHECKPOINT_FILE)
        scores = torch.softmax(torch.from_numpy(predict(model, val_set.x)), dim=1).numpy()
        write_report(run_dir / VAL_REPORT_DIR, scores, val_set.y, labels, split="val")


# ---------------------------------------------------------------------------------------------- CLI


@dataclass(frozen=True)
class DataSet:
    """What training needs to know of a data manifest: its classes, in manifest order, and whether a clip
    may hold several (or none) of them."""

    labels: tuple[str, ...]
    multilabel: bool


def read_dataset(manifest: Path) -> DataSet:
    """The classes of a data manifest, from the data itself (``hark_training.data.manifest_labels``)."""
    from hark_training import data

    records = data.read_manifest(manifest)
    labels = data.manifest_labels(records)
    if len(labels) < 2:
        raise ValueError(f"{manifest} has {len(labels)} class(es) ({', '.join(labels) or 'none'}); a model needs two")
    return DataSet(labels, data.is_multilabel(records))


def single_label_classes(manifest: Path, command: str) -> tuple[str, ...]:
    """The classes of a single-label data set, for the commands that score by accuracy (kfold, tune, lr-find)."""
    dataset = read_dataset(manifest)
    if dataset.multilabel:
        raise ValueError(f"hark {command} takes a single-label data set; {manifest} is multi-label (train it)")
    return dataset.labels


def default_recipe(manifest: Path, dataset: DataSet) -> TrainConfig:
    """A sensible recipe for a data set nobody has tuned for: the window is the data's clip length (median,
    between 0.5 and 4 s), the hop a tenth of it; a small DS-CNN without per-window normalisation, batches of
    a tenth of the training clips (8 to 64) for about 400 steps (20 to 60 epochs),
    stopping early after 10 epochs without progress;
    the loss that fits the targets (``bce`` without label smoothing for multi-label data, ``ce`` otherwise)."""
    import soundfile as sf

    from hark_training import data

    frontend = architecture_frontend("dscnn")
    train_rows = [r for r in data.read_manifest(manifest) if r.split == "train"][:200]
    seconds = sorted(sf.info(str(r.path)).duration for r in train_rows) or [1.0]
    clip_s = min(4.0, max(0.5, seconds[len(seconds) // 2]))
    window_frames = frontend.n_frames(round(clip_s * frontend.sample_rate))
    n_train = sum(1 for r in data.read_manifest(manifest) if r.split == "train")
    batch_size = int(np.clip(n_train // 10, 8, 64))  # a small data set still gets several steps an epoch
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    fields: dict[str, Any] = {
        "name": re.sub(r"[^a-z0-9_-]+", "-", manifest.resolve().parent.name.lower()).strip("-_") or "model",
        "data": manifest,
        # No per-window normalisation: in sounds other than speech, the level (a noise vs the room, a soft vs
        # a hard hit) and steady spectra (a tone) are what tells classes apart.
        "arch_options": {"norm": "none"},
        "epochs": int(np.clip(math.ceil(400 / steps_per_epoch), 20, 60)),  # about 400 steps or more
        "batch_size": batch_size,
        "patience": 10,
        "window_frames": window_frames,
        "hop_frames": max(1, window_frames // 10),
    }
    if dataset.multilabel:
        fields |= {"loss": "bce", "label_smoothing": 0.0}
    return TrainConfig.model_validate(fields)


def resolve_config(args: argparse.Namespace, dataset: DataSet | None = None) -> TrainConfig:
    """The config file (or the defaults) with the command-line options that were given on top.

    Without ``--config`` and given the data set, the defaults are :func:`default_recipe`'s."""
    if args.config:
        base = load_config(args.config)
    elif dataset is not None and args.data is not None:
        base = default_recipe(args.data, dataset)
    else:
        base = TrainConfig()
    overrides = {
        key: value
        for key, value in {
            "data": args.data,
            "out": args.out,
            "name": args.name,
            "epochs": args.epochs,
            "seed": args.seed,
            "arch": args.arch,
            # hark train's own: what the run leaves out of the train split
            "exclude_engines": getattr(args, "exclude_engines", None),
            "commercial_only": getattr(args, "commercial_only", None),
            "exclude_kinds": getattr(args, "exclude_kinds", None),
        }.items()
        if value is not None
    }
    return TrainConfig.model_validate({**base.model_dump(), **overrides})


def config_for_command(args: argparse.Namespace) -> TrainConfig | None:
    """The command's config, with its data manifest present; else print why and return None (exit status 2).

    For the commands that train on an existing data set (kfold, tune, lr-find); ``hark train`` can build one.
    """
    try:
        config = resolve_config(args)
    except (OSError, ValueError) as e:  # a missing or invalid config file (pydantic errors are ValueErrors)
        print(f"error: {e}", file=sys.stderr)
        return None
    if not config.data.is_file():
        print(f"error: {config.data} does not exist; build it with `hark data build`", file=sys.stderr)
        return None
    return config


def run(args: argparse.Namespace) -> int:
    from hark_training import data

    try:
        dataset = read_dataset(args.data) if args.data is not None and args.data.is_file() else None
        config = resolve_config(args, dataset)
    except (OSError, ValueError) as e:  # a missing or invalid config or manifest (pydantic errors are ValueErrors)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not config.data.is_file():
        if not args.build_data:
            print(
                f"error: {config.data} does not exist; build it with `hark data build` or pass --build-data",
                file=sys.stderr,
            )
            return 2
        sizes = {} if config.per_class is None else {"per_class": config.per_class}
        built = data.build_dataset(config.data.parent, seed=config.seed, progress=not args.quiet, **sizes)
        config = config.model_copy(update={"data": Path(built)})
    try:
        dataset = read_dataset(config.data)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.config is None:
        print(
            f"no --config: the default recipe for this data set, saved as {config.run_dir / CONFIG_FILE}: "
            f"arch {config.arch}, loss {config.loss}, {config.epochs} epochs (patience {config.patience}), "
            f"batch {config.batch_size}, lr {config.lr:g}, window {config.window_frames} frames, "
            f"hop {config.hop_frames} frames"
        )
    kind = "multi-label" if dataset.multilabel else "single-label"
    print(f"{len(dataset.labels)} classes ({kind}): {', '.join(dataset.labels)}")
    started = time.perf_counter()
    try:
        run_dir = train(
            config,
            labels=dataset.labels,
            read_manifest=data.read_manifest,
            progress=not args.quiet,
            multilabel=dataset.multilabel,
        )
    except ValueError as e:  # a split without clips, a loss that does not fit the targets
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = json.loads((run_dir / RUN_FILE).read_text())
    what = "val mAP" if dataset.multilabel else "val accuracy"
    print(
        f"trained {config.arch} ({summary['parameters']} parameters) in {time.perf_counter() - started:.0f} s: "
        f"best {what} {summary['best_val_accuracy']:.4f} at epoch {summary['best_epoch']} -> {run_dir}"
    )
    return 0


def add_config_arguments(parser: argparse.ArgumentParser, out_help: str = "Run folder (default runs/<name>)") -> None:
    """The options :func:`resolve_config` reads, shared by every command that trains (train, kfold, tune, lr-find)."""
    parser.add_argument("--config", type=Path, help="Training config (TOML or JSON); a run's config.json reproduces it")
    parser.add_argument("--data", type=Path, help="Data manifest CSV (default data/keywords/manifest.csv)")
    parser.add_argument("--out", type=Path, help=out_help)
    parser.add_argument("--name", help="Run name (default keywords)")
    parser.add_argument("--epochs", type=int, help="Number of epochs")
    parser.add_argument("--seed", type=int, help="Seed for initialisation, shuffling and augmentation")
    parser.add_argument(
        "--arch", choices=sorted(ARCHITECTURES), help="Architecture in hark_training.models.ARCHITECTURES"
    )


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark train``."""
    parser = subparsers.add_parser(
        "train",
        help="Train a keyword model on the data set",
        description="Train a small CNN on the data set's log-Mel windows and write a run folder "
        "(checkpoint, config, per-epoch metrics, reference feature statistics).",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--build-data",
        action="store_true",
        help="Build the data set first (hark_training.data) if the manifest is missing",
    )
    parser.add_argument(
        "--exclude-engines",
        type=lambda text: tuple(e for e in text.split(",") if e),
        metavar="E1,E2",
        help="Leave these engines' clips out of the train split (leave-one-engine-out; val and test keep theirs)",
    )
    parser.add_argument(
        "--commercial-only",
        action="store_true",
        default=None,
        help="Leave training clips under a non-commercial licence out (the manifest's licence column)",
    )
    parser.add_argument(
        "--exclude-kinds",
        type=lambda text: tuple(k for k in text.split(",") if k),
        metavar="K1,K2",
        help="Leave training clips of these kinds out (the manifest's kind column: word, sentence, free, noise); "
        "--exclude-kinds sentence,free trains without running speech",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bars")
    parser.set_defaults(func=run)
