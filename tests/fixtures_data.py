"""A tiny labelled data set: one tone per label, which the seed CNN and the TCN learn in a few epochs.

(The DS-CNN of the bundled recipe stays near chance on it for ten epochs: tests that need a model that
has learned something train a TCN or a CNN; tests of the machinery accept any accuracy.)

Shared by the training-pipeline tests, so that every part (training, k-fold, tuning, evaluation,
explanation, quantization) runs end to end in seconds on two cores. Same manifest format as
``hark data build`` (path, label, split, voice, source); voices are distinct per split, and each split has
several voices so that voice-grouped folds can be formed.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from hark_training.data import LABELS

SR = 16_000
PER_SPLIT: Mapping[str, int] = {"train": 5, "val": 2, "test": 2}


def tone_clip(label_index: int, rng: np.random.Generator, labels: Sequence[str] = LABELS) -> npt.NDArray[np.float64]:
    """A one-second clip: a tone whose pitch names the label, at a random onset, over faint noise."""
    t = np.arange(SR) / SR
    noise = rng.normal(0.0, 0.01, SR)
    if labels[label_index] == "_silence_":
        return noise
    freq = 200.0 * (label_index + 1) * rng.uniform(0.97, 1.03)
    onset = int(rng.integers(0, SR // 4))
    tone = np.where((t * SR >= onset) & (t * SR < onset + SR // 2), 0.3 * np.sin(2 * np.pi * freq * t), 0.0)
    return tone + noise


def write_tone_dataset(
    root: Path,
    per_split: Mapping[str, int] = PER_SPLIT,
    voices_per_split: int = 1,
    labels: Sequence[str] = LABELS,
    seed: int = 0,
) -> Path:
    """Write WAVs and ``manifest.csv`` under ``root``; return the manifest path.

    Clip k of a split belongs to voice ``<split>-<k % voices_per_split>``, so every voice has every label.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i, label in enumerate(labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for split, n in per_split.items():
            for k in range(n):
                rel = f"{label}/{split}_{k}.wav"
                sf.write(root / rel, np.clip(tone_clip(i, rng, labels), -1, 1), SR, subtype="PCM_16")
                voice = f"v-{split}" if voices_per_split == 1 else f"{split}-{k % voices_per_split}"
                rows.append({"path": rel, "label": label, "split": split, "voice": voice, "source": "test"})
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", "voice", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return path
