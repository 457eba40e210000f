"""Sounds of one's own, generated: tones, chirps and click trains, single or mixed, for the import and
sound-event tests. Each class is easy to tell from the others and from background noise, so a small model
learns it in a few epochs; everything is drawn from a seed."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

SR = 16_000
FloatArray = npt.NDArray[np.float64]


def sound(kind: str, seconds: float, rng: np.random.Generator) -> FloatArray:
    """One sound of ``kind``: ``tone`` (a steady 600-900 Hz sine), ``chirp`` (a 300 Hz -> 3 kHz sweep),
    ``clicks`` (a 20-40 Hz train of short broadband clicks), ``warble`` (a 1 kHz tone wobbling 8 times a
    second), ``buzz`` (a 110-150 Hz square wave)."""
    n = round(seconds * SR)
    t = np.arange(n) / SR
    if kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(600, 900) * t)
    elif kind == "chirp":
        f0, f1 = 300.0, 3000.0
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(seconds, 1e-3))))
    elif kind == "clicks":
        x = np.zeros(n)
        period = round(SR / rng.uniform(20, 40))
        for start in range(int(rng.integers(0, period)), n, period):
            x[start : start + 40] = rng.standard_normal(min(40, n - start))
    elif kind == "warble":
        x = np.sin(2 * np.pi * (rng.uniform(900, 1100) * t + 25 * np.sin(2 * np.pi * 8 * t)))
    elif kind == "buzz":
        x = 0.6 * np.sign(np.sin(2 * np.pi * rng.uniform(110, 150) * t))
    else:
        raise ValueError(kind)
    fade = min(n // 4, SR // 100)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    return x * rng.uniform(0.2, 0.5) / max(1e-9, float(np.max(np.abs(x))))


def room(seconds: float, rng: np.random.Generator, level: float = 0.003) -> FloatArray:
    """Quiet room noise, not digital silence."""
    return rng.standard_normal(round(seconds * SR)) * level


def write_class_folders(root: Path, classes: Sequence[str], per_class: int, seed: int = 0) -> Path:
    """``root/<class>/<i>.wav``: ``per_class`` recordings of each class, 0.7-1.0 s long, over room noise."""
    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            seconds = float(rng.uniform(0.7, 1.0))
            x = sound(kind, seconds * float(rng.uniform(0.6, 0.9)), rng)
            clip = room(seconds, rng)
            start = int(rng.integers(0, clip.size - x.size + 1))
            clip[start : start + x.size] += x
            sf.write(root / kind / f"{i:02d}.wav", clip, SR, subtype="PCM_16")
    return root


def write_multilabel_csv(root: Path, classes: Sequence[str], n: int, seed: int = 0) -> Path:
    """``n`` one-second clips, each with none, one or two of ``classes`` sounding for most of it, listed in
    ``root/labels.csv`` as ``path,label,group`` (labels joined with ``;``; ten groups)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = i % (len(classes) + 2)  # none, each alone, then pairs
        present = [] if k == 0 else [classes[k - 1]] if k <= len(classes) else list(rng.choice(classes, 2, False))
        clip = room(1.0, rng)
        for kind in present:
            x = sound(kind, float(rng.uniform(0.6, 0.9)), rng)
            start = int(rng.integers(0, clip.size - x.size + 1))
            clip[start : start + x.size] += x
        name = f"clip{i:03d}.wav"
        sf.write(root / name, clip, SR, subtype="PCM_16")
        rows.append([name, ";".join(sorted(present)), f"session{i % 10}"])
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "group"])
        writer.writerows(rows)
    return root / "labels.csv"
