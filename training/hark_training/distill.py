"""Knowledge distillation: a trained teacher's softened scores become part of a student's training targets.

The teacher is any earlier run folder (typically ``oww_transfer``, whose backbone was pretrained on real human
speech). Its scores are computed once, on the clean (not augmented) training windows in the teacher's own
frontend, and mixed into the student's targets:

    target = (1 - weight) * one_hot(label) + weight * softmax(teacher_logits / temperature)

The student then trains with the usual cross-entropy on these probability targets while its own windows are
augmented, so it learns the teacher's similarities between classes ("stop" half-heard as "up") as well as the
labels. Why offline and clean: the teacher costs several times the student per window, and running it once
keeps a distilled run about as fast as a plain one.

**Seams** (``seams = N``): N more windows, each the end of one training clip followed by the start of another
(the cut anywhere in the middle three fifths), whose only targets are the teacher's scores. A stream shows a model
such windows all the time, half a word beside the next, and no clip's label says what they are; the teacher,
whose backbone heard people talk, does. Both frontends hop 10 ms, so a seam is cut at the same frame in the
teacher's features and the student's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from hark.core.frontend import FrontendConfig
from hark_training.config import DistillConfig
from hark_training.features import Clip, load_split

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Seams:
    """Which windows to join: window ``i`` is clip ``first[i]`` from frame ``cut[i]`` on, then clip ``second[i]``'s
    first ``cut[i]`` frames (indices into the train split)."""

    first: IntArray
    second: IntArray
    cut: IntArray

    def __len__(self) -> int:
        return len(self.cut)


def plan_seams(count: int, n_clips: int, window_frames: int, seed: int) -> Seams:
    """``count`` random pairs of training clips and where to join them (the middle three fifths of a window)."""
    rng = np.random.default_rng([seed, 0x5EA3])
    low, high = window_frames // 5, window_frames - window_frames // 5
    return Seams(
        rng.integers(n_clips, size=count), rng.integers(n_clips, size=count), rng.integers(low, high + 1, size=count)
    )


def seam_windows(x: FloatArray, seams: Seams) -> FloatArray:
    """The seam windows of ``x`` ``(clips, frames, features)``: each the end of one clip, then the next's start."""
    frames = x.shape[1]
    out = np.empty((len(seams), frames, x.shape[2]), dtype=x.dtype)
    for i, (a, b, k) in enumerate(zip(seams.first, seams.second, seams.cut, strict=True)):
        out[i, : frames - k] = x[a, k:]
        out[i, frames - k :] = x[b, :k]
    return out


@dataclass(frozen=True)
class TeacherScores:
    """The teacher's softened probabilities on the train split's windows, and on the seam windows (if any)."""

    clips: FloatArray
    seams: FloatArray


def soft_targets(y: npt.NDArray[np.int64], teacher_probs: FloatArray, weight: float) -> FloatArray:
    """Probability targets: the one-hot labels mixed with the teacher's probabilities by ``weight`` (the loss
    applies the run's label smoothing on top, as it does to hard labels)."""
    if teacher_probs.shape[0] != len(y):
        raise ValueError(f"the teacher scored {teacher_probs.shape[0]} windows, the student has {len(y)}")
    hard = np.zeros_like(teacher_probs)
    hard[np.arange(len(y)), y] = 1.0
    return ((1.0 - weight) * hard + weight * teacher_probs).astype(np.float32)


def softmax(logits: FloatArray, temperature: float) -> FloatArray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    probs: FloatArray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def teacher_probabilities(
    config: DistillConfig,
    manifest: Path,
    labels: Sequence[str],
    window_frames: int,
    read: Callable[[Path], Sequence[Clip]],
    progress: bool = False,
    seams: Seams | None = None,
) -> TeacherScores:
    """The teacher run's softened probabilities on the manifest's train split, in manifest order, and on the
    ``seams`` of that split's windows.

    Refuses a teacher trained on other classes (or in another order): its scores would be mixed into the
    wrong targets.
    """
    from hark_training.train import CHECKPOINT_FILE, RUN_FILE, load_checkpoint, predict

    run = config.teacher
    if not (run / CHECKPOINT_FILE).is_file():
        raise ValueError(f"distill.teacher {run} is not a run folder (no {CHECKPOINT_FILE}); train the teacher first")
    summary: dict[str, Any] = json.loads((run / RUN_FILE).read_text())
    if list(summary["labels"]) != list(labels):
        raise ValueError(f"the teacher {run} has classes {summary['labels']}, the data set {list(labels)}")
    frontend = FrontendConfig.model_validate(summary["frontend"])
    model, _ = load_checkpoint(run / CHECKPOINT_FILE)
    records = read(manifest)
    train = load_split(manifest, records, "train", labels, frontend, window_frames, progress=progress)
    joined = seam_windows(train.x, seams) if seams is not None else train.x[:0]
    with torch.inference_mode():
        logits = predict(model, train.x, batch_size=256)
        seam_logits = predict(model, joined, batch_size=256) if len(joined) else logits[:0]
    return TeacherScores(softmax(logits, config.temperature), softmax(seam_logits, config.temperature))
