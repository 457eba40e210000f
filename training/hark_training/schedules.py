"""Learning-rate schedules and early stopping, both stepped by the training loop in :mod:`hark_training.train`.

Both schedules are torch's own and advance once per batch over the whole run: ``onecycle`` warms up to
``lr`` and anneals far below it (fast, robust to the choice of lr); ``cosine`` starts at ``lr`` and
anneals to zero (no warm-up, for fine-tuning or an lr already found with ``hark lr-find``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, lr: float, total_steps: int) -> LRScheduler:
    """The schedule ``name`` over ``total_steps`` optimizer steps, peaking at (one-cycle) or starting from ``lr``.

    A parameter group's ``lr_scale`` (default 1) scales its rate throughout, e.g. a pretrained backbone's.
    """
    steps = max(total_steps, 1)
    rates = [lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    if name == "onecycle":
        return OneCycleLR(optimizer, max_lr=rates, total_steps=steps)
    if name == "cosine":
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        return CosineAnnealingLR(optimizer, T_max=steps)
    raise ValueError(f"unknown schedule {name!r}; choose onecycle or cosine")


def should_stop(val_scores: Sequence[float], patience: int | None) -> bool:
    """True once the best validation score (higher is better) is ``patience`` epochs old.

    Never stops without a patience or while the score is undefined (no validation windows).
    """
    if patience is None or not val_scores or any(math.isnan(s) for s in val_scores):
        return False
    best_epoch = max(range(len(val_scores)), key=lambda i: val_scores[i])  # the first of equal bests
    return len(val_scores) - 1 - best_epoch >= patience
