"""Losses and class imbalance: the training objective and the order windows are drawn in.

The loss is chosen by name (``TrainConfig.loss``):

* ``ce``: softmax cross-entropy with label smoothing and per-class weights (torch's own).
* ``focal``: cross-entropy scaled per window by ``(1 - p_true) ** focal_gamma`` (Lin et al. 2017), so windows
  the model already gets right count for little and the hard ones (near-miss words, loud noise) dominate.
* ``bce``: one sigmoid per label (binary cross-entropy), for multi-label data sets whose targets are
  multi-hot rows; class-index targets become one-hot rows, so it also trains on single-label data.

Imbalance is handled in the loss (``class_weights``) or in what the model sees (``sampler = "weighted"``:
windows drawn with replacement at inverse class frequency, so each class fills about the same share of an
epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

from hark_training.config import TrainConfig


class FocalLoss(nn.Module):
    """Softmax focal loss; at ``gamma = 0`` it is exactly :class:`torch.nn.CrossEntropyLoss` with the same options."""

    def __init__(self, gamma: float, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.weight = weight
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none", label_smoothing=self.label_smoothing)
        p_true = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1).exp()
        focal = (1.0 - p_true).pow(self.gamma) * ce
        # Normalise as weighted cross-entropy does (by the weights of the targets), so gamma = 0 is CE exactly.
        return focal.sum() / self.weight[target].sum() if self.weight is not None else focal.mean()


class BinaryCrossEntropy(nn.Module):
    """Sigmoid binary cross-entropy per label over multi-hot ``(n, classes)`` targets or class indices ``(n,)``.

    ``weight`` scales each label's term; label smoothing pulls targets towards 0.5 by ``label_smoothing / 2``.
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = weight
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = F.one_hot(target, logits.shape[1])
        target = target.to(logits.dtype) * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target, weight=self.weight)


class BinaryFocalLoss(nn.Module):
    """Sigmoid focal loss per label (Lin et al. 2017) over multi-hot targets: each label's binary
    cross-entropy scaled by ``(1 - p_t) ** gamma``, so the many easy negatives of sound-event data (every
    class that is silent in a window) weigh little. At ``gamma = 0`` it is :class:`BinaryCrossEntropy`."""

    def __init__(self, gamma: float, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.weight = weight
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = F.one_hot(target, logits.shape[1])
        target = target.to(logits.dtype) * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1.0 - p) * (1.0 - target)
        loss = (1.0 - p_t).pow(self.gamma) * bce
        if self.weight is not None:
            loss = loss * self.weight
        return loss.mean()


LossFactory = Callable[[torch.Tensor, TrainConfig], nn.Module]

LOSSES: dict[str, LossFactory] = {
    "ce": lambda weight, c: nn.CrossEntropyLoss(weight=weight, label_smoothing=c.label_smoothing),
    "focal": lambda weight, c: FocalLoss(c.focal_gamma, weight=weight, label_smoothing=c.label_smoothing),
    "bce": lambda weight, c: BinaryCrossEntropy(weight=weight, label_smoothing=c.label_smoothing),
}


def class_weight_tensor(class_weights: Mapping[str, float], labels: Sequence[str]) -> torch.Tensor:
    """One weight per label in label order (1 for labels not named); naming a non-label is an error."""
    if unknown := set(class_weights) - set(labels):
        raise ValueError(f"class_weights names {sorted(unknown)}, which are not labels {list(labels)}")
    return torch.tensor([class_weights.get(label, 1.0) for label in labels])


MULTILABEL_LOSSES: dict[str, LossFactory] = {
    "bce": LOSSES["bce"],
    "focal": lambda weight, c: BinaryFocalLoss(c.focal_gamma, weight=weight, label_smoothing=c.label_smoothing),
}


def build_loss(config: TrainConfig, labels: Sequence[str], multilabel: bool = False) -> nn.Module:
    """The loss ``config.loss`` names, with the config's class weights, label smoothing and focal gamma.

    A multi-label data set (multi-hot targets) needs a per-label sigmoid loss: ``bce``, or ``focal`` as its
    sigmoid form; ``ce`` (one class per clip) is refused there.
    """
    weight = class_weight_tensor(config.class_weights, labels)
    if multilabel:
        if config.loss not in MULTILABEL_LOSSES:
            raise ValueError(
                f"loss {config.loss!r} needs one class per clip; a multi-label data set takes bce or focal"
            )
        return MULTILABEL_LOSSES[config.loss](weight, config)
    return LOSSES[config.loss](weight, config)


def inverse_frequency_weights(y: np.ndarray[Any, Any]) -> list[float]:
    """Per-window sampling weight ``1 / count(class)``: each class carries the same total weight."""
    counts = np.bincount(y)
    return [float(w) for w in 1.0 / counts[y]]


def build_sampler(kind: str, y: np.ndarray[Any, Any], gen: torch.Generator) -> Sampler[int]:
    """The order of one epoch's windows (class indices ``y``): a permutation, or class-balanced draws."""
    if kind == "weighted" and y.ndim != 1:
        raise ValueError("sampler weighted needs one class per clip; a multi-label data set takes shuffle")
    if kind == "shuffle":
        return RandomSampler(range(len(y)), generator=gen)
    if kind == "weighted":
        return WeightedRandomSampler(inverse_frequency_weights(y), num_samples=len(y), replacement=True, generator=gen)
    raise ValueError(f"unknown sampler {kind!r}; choose shuffle or weighted")
