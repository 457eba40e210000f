"""``hark lr-find``: the learning-rate range test (Smith 2017) with torch-lr-finder.

From the config's freshly initialised model, train for ``steps`` batches while the learning rate grows
exponentially from ``start_lr`` to ``end_lr``, stop once the loss diverges, and suggest the lr where the
smoothed loss falls fastest. A good ``lr`` for the one-cycle schedule is usually a few times that
suggestion, below where the loss turns up. The windows are not augmented: the test asks how fast the
model can learn, and augmentation would only add noise to the curve.

Writes ``lr_find.png`` (loss against lr, the suggestion marked) and ``lr_find.json`` (the suggestion and
the curve) into the output folder (default ``runs/<name>-lr-find``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from pydantic import BaseModel
from torch.utils.data import DataLoader, TensorDataset
from torch_lr_finder import LRFinder

from hark.core.frontend import FrontendConfig
from hark_training.config import RUNS_DIR, TrainConfig
from hark_training.features import load_splits
from hark_training.losses import build_loss, build_sampler
from hark_training.models import build_model
from hark_training.train import (
    add_config_arguments,
    architecture_frontend,
    config_for_command,
    seed_everything,
    single_label_classes,
)

PLOT_FILE = "lr_find.png"
RESULT_FILE = "lr_find.json"


class LrFindResult(BaseModel):
    """The suggestion and the (smoothed) loss curve it was read from."""

    suggested_lr: float
    start_lr: float
    end_lr: float
    lr: list[float]
    loss: list[float]


def default_out(config: TrainConfig) -> Path:
    return RUNS_DIR / f"{config.name}-lr-find"


def find_lr(
    config: TrainConfig,
    out_dir: Path,
    *,
    labels: Sequence[str],
    read_manifest: Callable[[Path], Sequence[Any]],
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    steps: int = 100,
    frontend: FrontendConfig | None = None,
    progress: bool = True,
) -> LrFindResult:
    """Run the range test on the manifest's train split with the config's model, loss, sampler and optimizer."""
    frontend = frontend or architecture_frontend(config.arch)
    torch.set_num_threads(config.threads)
    gen = seed_everything(config.seed)
    train_set = load_splits(
        config.data, labels, frontend, config.window_frames, read=read_manifest, splits=("train",), progress=progress
    )["train"]
    if len(train_set) < 2:
        raise ValueError(f"{config.data} has fewer than two clips in the train split")
    loader = DataLoader(
        TensorDataset(torch.from_numpy(train_set.x), torch.from_numpy(train_set.y)),
        batch_size=min(config.batch_size, len(train_set)),
        sampler=build_sampler(config.sampler, train_set.y, gen),
        drop_last=True,  # batch norm needs two windows in every batch
    )
    model = build_model(config.arch, len(labels), config.window_frames, frontend.n_mels, config.arch_options)
    optimizer = torch.optim.AdamW(model.parameters(), lr=start_lr, weight_decay=config.weight_decay)
    finder = LRFinder(model, optimizer, build_loss(config, labels), device="cpu")
    with contextlib.redirect_stdout(sys.stderr):  # the library prints its notes; stdout is for results
        finder.range_test(loader, start_lr=start_lr, end_lr=end_lr, num_iter=steps, step_mode="exp")
        figure = Figure(figsize=(6, 4), layout="tight")
        axes = figure.subplots()
        _, suggested = finder.plot(ax=axes, suggest_lr=True)
    axes.set_title(f"LR range test: {config.arch}, batch {config.batch_size}, suggested {suggested:.2e}")
    out_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_dir / PLOT_FILE, dpi=100)
    result = LrFindResult(
        suggested_lr=float(suggested),
        start_lr=start_lr,
        end_lr=end_lr,
        lr=[float(v) for v in finder.history["lr"]],
        loss=[float(v) for v in finder.history["loss"]],
    )
    (out_dir / RESULT_FILE).write_text(result.model_dump_json(indent=2) + "\n")
    return result


def run(args: argparse.Namespace) -> int:
    from hark_training import data

    if (config := config_for_command(args)) is None:
        return 2
    out_dir = args.out or default_out(config)
    try:
        result = find_lr(
            config,
            out_dir,
            labels=single_label_classes(config.data, "lr-find"),
            read_manifest=data.read_manifest,
            start_lr=args.start_lr,
            end_lr=args.end_lr,
            steps=args.steps,
            progress=not args.quiet,
        )
    except ValueError as e:  # too few points before divergence to suggest anything
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"suggested lr {result.suggested_lr:.3g} (steepest loss descent) -> {out_dir / PLOT_FILE}")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark lr-find``."""
    parser = subparsers.add_parser(
        "lr-find",
        help="Learning-rate range test: plot loss against an exponentially growing lr, suggest one",
        description="Train the config's model for a few batches while the learning rate grows exponentially; "
        f"write {PLOT_FILE} (loss vs lr) and {RESULT_FILE} (the suggested lr and the curve).",
    )
    add_config_arguments(parser, out_help="Output folder (default runs/<name>-lr-find)")
    parser.add_argument("--start-lr", type=float, default=1e-6, help="First learning rate of the sweep")
    parser.add_argument("--end-lr", type=float, default=1.0, help="Last learning rate of the sweep")
    parser.add_argument("--steps", type=int, default=100, help="Batches in the sweep (the data repeats if needed)")
    parser.add_argument("--quiet", action="store_true", help="No feature-extraction progress bar")
    parser.set_defaults(func=run)
