"""Losses and class imbalance: focal loss, binary cross-entropy, the weighted sampler, the registry."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from hark_training.config import TrainConfig
from hark_training.losses import (
    BinaryCrossEntropy,
    FocalLoss,
    build_loss,
    build_sampler,
    class_weight_tensor,
)

N_CLASSES = 5


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(32, N_CLASSES, generator=gen) * 3, torch.randint(0, N_CLASSES, (32,), generator=gen)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_loss_at_gamma_zero_is_cross_entropy(
    batch: tuple[torch.Tensor, torch.Tensor], smoothing: float, weighted: bool
) -> None:
    logits, y = batch
    weight = torch.linspace(0.5, 2.0, N_CLASSES) if weighted else None
    expected = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)(logits, y)
    torch.testing.assert_close(FocalLoss(0.0, weight=weight, label_smoothing=smoothing)(logits, y), expected)


def test_focal_loss_down_weights_easy_examples() -> None:
    """A confidently right window loses almost all of its loss; a wrong one keeps most of it."""
    y = torch.tensor([0])
    easy, hard = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[0.0, 4.0, 0.0]])
    ce, focal = nn.CrossEntropyLoss(), FocalLoss(2.0)
    easy_ratio, hard_ratio = float(focal(easy, y) / ce(easy, y)), float(focal(hard, y) / ce(hard, y))
    p_easy = float(easy.softmax(1)[0, 0])
    assert easy_ratio == pytest.approx((1 - p_easy) ** 2, rel=1e-5)
    assert easy_ratio < 0.01 and hard_ratio > 0.9


def test_focal_loss_trains(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, y = batch
    logits = logits.clone().requires_grad_(True)
    FocalLoss(2.0)(logits, y).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bce_on_multi_hot_targets() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, N_CLASSES, generator=gen)
    targets = (torch.rand(8, N_CLASSES, generator=gen) < 0.4).float()
    targets[0] = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])  # at least one row with several labels
    p = logits.sigmoid()
    by_hand = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    torch.testing.assert_close(BinaryCrossEntropy()(logits, targets), by_hand)


def test_bce_takes_class_indices_as_one_hot_and_weights_labels() -> None:
    logits, y = torch.randn(6, N_CLASSES), torch.tensor([0, 1, 2, 3, 4, 0])
    one_hot = nn.functional.one_hot(y, N_CLASSES).float()
    torch.testing.assert_close(BinaryCrossEntropy()(logits, y), BinaryCrossEntropy()(logits, one_hot))
    weight = torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0])
    expected = nn.BCEWithLogitsLoss(weight=weight)(logits, one_hot)
    torch.testing.assert_close(BinaryCrossEntropy(weight=weight)(logits, y), expected)


def test_bce_label_smoothing_pulls_targets_to_half() -> None:
    logits = torch.tensor([[1.0, -2.0]])
    smoothed = BinaryCrossEntropy(label_smoothing=0.2)(logits, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(smoothed, BinaryCrossEntropy()(logits, torch.tensor([[0.9, 0.1]])))


def test_weighted_sampler_balances_a_skewed_label_set() -> None:
    y = np.repeat([0, 1, 2], [900, 90, 10])
    drawn = Counter(y[i] for i in build_sampler("weighted", y, torch.Generator().manual_seed(0)))
    assert sum(drawn.values()) == len(y)
    for label in (0, 1, 2):
        assert drawn[label] / len(y) == pytest.approx(1 / 3, abs=0.05)


def test_shuffle_sampler_is_a_seeded_permutation() -> None:
    y = np.repeat([0, 1, 2], [900, 90, 10])
    first = list(build_sampler("shuffle", y, torch.Generator().manual_seed(0)))
    assert sorted(first) == list(range(len(y))) and first != sorted(first)
    assert first == list(build_sampler("shuffle", y, torch.Generator().manual_seed(0)))


def test_registry_builds_the_named_loss_with_the_config() -> None:
    labels = ["a", "b", "c"]
    focal = build_loss(TrainConfig(loss="focal", focal_gamma=1.5, class_weights={"b": 3.0}), labels)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    assert focal.weight is not None and focal.weight.tolist() == [1.0, 3.0, 1.0]
    assert isinstance(build_loss(TrainConfig(loss="bce"), labels), BinaryCrossEntropy)
    assert isinstance(build_loss(TrainConfig(loss="ce"), labels), nn.CrossEntropyLoss)
    with pytest.raises(ValueError, match="not labels"):
        class_weight_tensor({"z": 2.0}, labels)
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="hinge")
