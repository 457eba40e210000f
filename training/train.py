"""``hark train``: train a small CNN on cached log-Mel windows and write a run folder.

A run folder holds everything export needs and nothing it must recompute: ``checkpoint.pt`` (the
weights with the best validation accuracy and how to rebuild the module), ``config.json`` (the full
:class:`~training.config.TrainConfig`, so ``hark train --config runs/x/config.json`` reproduces it),
``metrics.jsonl`` (one line per epoch), ``reference_stats.json`` (per-band statistics of the training
features) and ``run.json`` (labels, frontend, data manifest sha256, torch version, best epoch).

Augmentation is deliberately cheap and works on feature batches (see :class:`FeatureAugmenter`): a time
shift, a gain, background noise mixed at a random SNR and SpecAugment masks.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from service.frontend import FrontendConfig, LogMel
from service.model_store import sha256_file
from training.config import AugmentConfig, TrainConfig, config_to_json, load_config
from training.features import SplitFeatures, feature_stats, load_splits
from training.losses import build_loss, build_sampler
from training.models import ARCHITECTURES, build_model, count_parameters
from training.schedules import build_scheduler, should_stop

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATS_FILE = "reference_stats.json"
RUN_FILE = "run.json"
SILENCE = "_silence_"
NOISE_KINDS = ("white", "pink", "brown", "hum", "band", "babble")
DB_TO_NEPER_POWER = math.log(10.0) / 10.0  # a power ratio of x dB is a log difference of x * this


# --------------------------------------------------------------------------------------------- seeds


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return the generator that drives shuffling and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# -------------------------------------------------------------------------------------- augmentation


def noise_bank(
    frontend: FrontendConfig, window_frames: int, seed: int, seconds: float = 4.0, per_kind: int = 3
) -> torch.Tensor:
    """Log-Mel windows of synthetic background noise, ``(n, window_frames, n_mels)``, to mix into training.

    Uses the data pipeline's generators (coloured noise, hum, band noise, babble) when they are there,
    otherwise coloured noise made here, so training never depends on a noise corpus.
    """
    rng = np.random.default_rng(seed)
    n = max(int(seconds * frontend.sample_rate), frontend.n_samples(window_frames))
    try:
        from training.noise import make_noise

        sources = [make_noise(kind, n, rng, frontend.sample_rate) for kind in NOISE_KINDS for _ in range(per_kind)]
    except ImportError:  # pragma: no cover - only before training.noise exists
        sources = [_coloured(n, exponent, rng) for exponent in (0.0, 1.0, 2.0) for _ in range(per_kind)]
    logmel = LogMel(frontend)
    frames = torch.from_numpy(np.stack([logmel.frames((0.1 * s).astype(np.float32)) for s in sources]))
    windows = frames.unfold(1, window_frames, max(1, window_frames // 10))  # (clips, n_windows, n_mels, frames)
    return windows.permute(0, 1, 3, 2).reshape(-1, window_frames, frontend.n_mels).contiguous()


def _coloured(n: int, exponent: float, rng: np.random.Generator) -> Any:
    spectrum = np.fft.rfft(rng.standard_normal(n)) * np.maximum(np.arange(n // 2 + 1), 1) ** (-exponent / 2)
    out = np.fft.irfft(spectrum, n=n)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def time_shift(x: torch.Tensor, max_frames: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each window in time by up to ``max_frames``, repeating the edge frame (usually background)."""
    if max_frames <= 0:
        return x
    b, t, f = x.shape
    shifts = torch.randint(-max_frames, max_frames + 1, (b, 1), generator=gen)
    index = (torch.arange(t).unsqueeze(0) - shifts).clamp(0, t - 1)
    return x.gather(1, index.unsqueeze(-1).expand(b, t, f))


def mix_noise(
    x: torch.Tensor, noise: torch.Tensor, prob: float, snr_db: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """Add noise windows (same shape as ``x``'s) in the power domain, ``log(exp(x) + exp(n))``, at a random SNR."""
    b = x.shape[0]
    if prob <= 0.0 or noise.shape[0] == 0:
        return x
    chosen = noise[torch.randint(0, noise.shape[0], (b,), generator=gen)]
    log_signal = torch.logsumexp(x.flatten(1), dim=1)
    log_noise = torch.logsumexp(chosen.flatten(1), dim=1)
    snr = _uniform(b, snr_db[0], snr_db[1], gen)
    offset = (log_signal - log_noise - snr * DB_TO_NEPER_POWER).view(b, 1, 1)
    mixed = torch.logaddexp(x, chosen + offset)
    apply = (torch.rand(b, generator=gen) < prob).view(b, 1, 1)
    return torch.where(apply, mixed, x)


def spec_masks(x: torch.Tensor, axis: int, count: int, widest: int, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment: ``count`` masks up to ``widest`` wide along ``axis`` (1 time, 2 frequency), set to the mean."""
    if count <= 0 or widest <= 0:
        return x
    b, size = x.shape[0], x.shape[axis]
    positions = torch.arange(size).unsqueeze(0)
    masked = torch.zeros(b, size, dtype=torch.bool)
    for _ in range(count):
        width = torch.randint(0, min(widest, size) + 1, (b, 1), generator=gen)
        start = (torch.rand(b, 1, generator=gen) * (size - width + 1)).long()
        masked |= (positions >= start) & (positions < start + width)
    mask = masked.unsqueeze(2) if axis == 1 else masked.unsqueeze(1)
    return torch.where(mask, x.mean(dim=(1, 2), keepdim=True), x)


@dataclass
class FeatureAugmenter:
    """Applies :class:`AugmentConfig` to a batch of raw log-Mel windows ``(batch, frames, n_mels)``."""

    config: AugmentConfig
    noise: torch.Tensor
    gen: torch.Generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = time_shift(x, c.time_shift_frames, self.gen)
        if c.gain_db > 0:
            x = x + (_uniform(x.shape[0], -c.gain_db, c.gain_db, self.gen) * DB_TO_NEPER_POWER).view(-1, 1, 1)
        x = mix_noise(x, self.noise, c.noise_prob, c.snr_db, self.gen)
        x = spec_masks(x, 1, c.time_masks, c.time_mask_frames, self.gen)
        return spec_masks(x, 2, c.freq_masks, c.freq_mask_bands, self.gen)


# ------------------------------------------------------------------------------------------ training


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray[Any, Any], batch_size: int = 512) -> np.ndarray[Any, Any]:
    """Logits of the model in eval mode for windows ``x`` (numpy in, numpy out)."""
    model.eval()
    outs = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.empty((0, 0), dtype=np.float32)


def accuracy(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    return float((logits.argmax(axis=1) == y).mean()) if len(y) else float("nan")


def train_epoch(
    model: nn.Module,
    data: SplitFeatures,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    augment: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    sampler: Iterable[int],
    progress: bool,
    desc: str,
) -> tuple[float, float]:
    """One pass over the windows in ``sampler``'s order; returns (mean loss, accuracy on the augmented batches)."""
    model.train()
    order = torch.tensor(list(sampler), dtype=torch.long)
    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    total_loss, correct, seen = 0.0, 0, 0
    batches = range(0, len(order), batch_size)
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False, file=sys.stderr)
    for start in bar:
        index = order[start : start + batch_size]
        if len(index) < 2:  # batch norm needs two samples
            continue
        x, y = augment(x_all[index]), y_all[index]
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(index)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(index)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


def save_checkpoint(path: Path, model: nn.Module, config: TrainConfig, labels: Sequence[str], n_mels: int) -> None:
    torch.save(
        {
            "arch": config.arch,
            "arch_options": dict(config.arch_options),
            "labels": list(labels),
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


def train(
    config: TrainConfig,
    *,
    labels: Sequence[str],
    read_manifest: Callable[[Path], Sequence[Any]],
    frontend: FrontendConfig | None = None,
    progress: bool = True,
    features: Mapping[str, SplitFeatures] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Train ``config`` on the manifest's train split, keep the best (or last) epoch on val, write the run folder.

    ``features`` replaces the manifest's ``train`` and ``val`` splits (k-fold passes each fold's windows);
    ``on_epoch`` sees every epoch's metrics row and may raise to end the run (a tuning trial's pruning).
    """
    frontend = frontend or FrontendConfig()
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
    )
    train_set, val_set = splits["train"], splits["val"]
    if len(train_set) == 0:
        raise ValueError(f"{config.data} has no clips in the train split")
    (run_dir / STATS_FILE).write_text(feature_stats(train_set.x).model_dump_json(indent=2) + "\n")

    noise = noise_bank(frontend, config.window_frames, config.seed)
    if SILENCE in labels:  # the data set's own background windows are noise too
        noise = torch.cat([noise, torch.from_numpy(train_set.x[train_set.y == labels.index(SILENCE)])])
    augment = FeatureAugmenter(config.augment, noise, gen)

    model = build_model(config.arch, len(labels), config.window_frames, frontend.n_mels, config.arch_options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(train_set) / config.batch_size)
    scheduler = build_scheduler(config.schedule, optimizer, config.lr, steps)
    loss_fn = build_loss(config, labels)
    sampler = build_sampler(config.sampler, train_set.y, gen)

    best_acc, best_epoch = -1.0, 0
    val_history: list[float] = []
    metrics_path = run_dir / METRICS_FILE
    metrics_path.write_text("")
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        desc = f"epoch {epoch}/{config.epochs}"
        loss, train_acc = train_epoch(
            model, train_set, optimizer, scheduler, loss_fn, augment, config.batch_size, sampler, progress, desc
        )
        val_acc = accuracy(predict(model, val_set.x), val_set.y)
        row = {
            "epoch": epoch,
            "train_loss": round(loss, 5),
            "train_accuracy": round(train_acc, 5),
            "val_accuracy": round(val_acc, 5),
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.perf_counter() - started, 2),
        }
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if progress:
            tqdm.write(f"{desc}: loss {loss:.4f}  train acc {train_acc:.4f}  val acc {val_acc:.4f}", file=sys.stderr)
        if val_acc > best_acc or math.isnan(val_acc) or config.keep == "last":
            best_acc, best_epoch = val_acc, epoch
            save_checkpoint(run_dir / CHECKPOINT_FILE, model, config, labels, frontend.n_mels)
        if on_epoch is not None:
            on_epoch(row)
        val_history.append(val_acc)
        if should_stop(val_history, config.patience):
            if progress:
                tqdm.write(f"early stop: no better val accuracy for {config.patience} epochs", file=sys.stderr)
            break

    summary = {
        "labels": list(labels),
        "frontend": frontend.model_dump(mode="json"),
        "window_frames": config.window_frames,
        "hop_frames": config.hop_frames,
        "data_manifest": str(config.data),
        "data_manifest_sha256": sha256_file(config.data),
        "n_train": len(train_set),
        "n_val": len(val_set),
        "seed": config.seed,
        "epochs": config.epochs,
        "epochs_run": len(val_history),
        "best_epoch": best_epoch,
        "best_val_accuracy": best_acc,
        "parameters": count_parameters(model),
        "torch_version": torch.__version__,
    }
    (run_dir / RUN_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return run_dir


# ---------------------------------------------------------------------------------------------- CLI


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The config file (or the defaults) with the command-line options that were given on top."""
    base = load_config(args.config) if args.config else TrainConfig()
    overrides = {
        key: value
        for key, value in {
            "data": args.data,
            "out": args.out,
            "name": args.name,
            "epochs": args.epochs,
            "seed": args.seed,
            "arch": args.arch,
        }.items()
        if value is not None
    }
    return TrainConfig.model_validate({**base.model_dump(), **overrides})


def run(args: argparse.Namespace) -> int:
    from training import data

    try:
        config = resolve_config(args)
    except (OSError, ValueError) as e:  # a missing or invalid config file (pydantic errors are ValueErrors)
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
    started = time.perf_counter()
    run_dir = train(config, labels=data.LABELS, read_manifest=data.read_manifest, progress=not args.quiet)
    summary = json.loads((run_dir / RUN_FILE).read_text())
    print(
        f"trained {config.arch} ({summary['parameters']} parameters) in {time.perf_counter() - started:.0f} s: "
        f"best val accuracy {summary['best_val_accuracy']:.4f} at epoch {summary['best_epoch']} -> {run_dir}"
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
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="Architecture in training.models.ARCHITECTURES")


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
        "--build-data", action="store_true", help="Build the data set first (training.data) if the manifest is missing"
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bars")
    parser.set_defaults(func=run)
