"""Several runs of one recipe as one model: the mean of their class probabilities.

Runs that differ only in their seed make different mistakes: on the same data set two seeds of the bundled recipe
raised 17 and 58 false alarms an hour on one unheard engine. Averaging their probabilities keeps what they
agree on. The ensemble is one ONNX graph (the members side by side on the same input), so the server, its
thresholds and every tool that reads a version see one model whose ``logits`` are the log of the mean
probability: the server's softmax of them is exactly that mean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hark_training.streaming import CausalTCN
from hark_training.train import CHECKPOINT_FILE, RUN_FILE, load_checkpoint

SAME_IN_EVERY_MEMBER: tuple[str, ...] = ("labels", "n_frames", "n_mels")
"""Checkpoint fields the members must share: the same classes in the same order, read from the same window."""
SAME_IN_EVERY_RUN: tuple[str, ...] = ("frontend", "data_manifest_sha256")
"""Run fields the members must share: the same features, and the same data set (so one test split is unheard)."""


class Ensemble(nn.Module):
    """``log(mean_i softmax(member_i(x)))``: logits whose softmax is the members' mean probability."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([member(x).log_softmax(dim=-1) for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def check_compatible(runs: Sequence[Path], checkpoints: Sequence[dict[str, Any]]) -> None:
    """Refuse members that would not make one model: other classes, windows, features or data set."""
    infos = [json.loads((run / RUN_FILE).read_text()) for run in runs]
    first_run, first_checkpoint = runs[0], checkpoints[0]
    for run, checkpoint, info in zip(runs[1:], checkpoints[1:], infos[1:], strict=True):
        for key in SAME_IN_EVERY_MEMBER:
            if checkpoint[key] != first_checkpoint[key]:
                raise ValueError(f"{run} and {first_run} differ in {key}: they cannot form one ensemble")
        for key in SAME_IN_EVERY_RUN:
            if info.get(key) != infos[0].get(key):
                raise ValueError(f"{run} and {first_run} differ in {key}: they cannot form one ensemble")
        if checkpoint.get("multilabel", False) or first_checkpoint.get("multilabel", False):
            raise ValueError(f"{run}: multi-label runs cannot form an ensemble yet")


def load_members(runs: Sequence[Path]) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    """Every run's model and checkpoint metadata, checked to be members of one ensemble."""
    loaded = [load_checkpoint(run / CHECKPOINT_FILE) for run in runs]
    models, checkpoints = [m for m, _ in loaded], [c for _, c in loaded]
    check_compatible(runs, checkpoints)
    if any(isinstance(m, CausalTCN) for m in models):  # a streaming export carries one model's state, not several
        raise ValueError("streaming runs cannot form an ensemble yet: export them one at a time")
    return models, checkpoints
