"""Clips to log-Mel windows through :mod:`hark.core.frontend`, cached as ``.npy`` next to the data manifest.

Training, evaluation and export all read features here, and here calls exactly what the server calls
(``read_audio`` then ``LogMel(config).frames``), so a model never sees features the server would not
compute. The cache key covers the manifest's bytes, the frontend config, the window and the labels,
so changing any of them recomputes instead of silently reusing stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from hark.core.audio import read_audio
from hark.core.frontend import FrontendConfig, LogMel
from hark.core.model_store import FeatureStats, sha256_file

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
SPLITS = ("train", "val", "test")
FEATURES_VERSION = 2
"""Part of the cache key: bump it whenever this module computes windows differently."""


class Clip(Protocol):
    """What features need of a manifest row (``hark_training.data.ClipRecord`` has these and more)."""

    @property
    def path(self) -> Path: ...
    @property
    def label(self) -> str: ...
    @property
    def split(self) -> str: ...


LABEL_SEPARATOR = ";"


def clip_labels(label: str) -> tuple[str, ...]:
    """A manifest ``label`` cell as classes: ``"kick;hihat"`` -> ``("kick", "hihat")``, ``""`` -> ``()``."""
    return tuple(part.strip() for part in label.split(LABEL_SEPARATOR) if part.strip())


@dataclass(frozen=True)
class SplitFeatures:
    """One split's windows ``x: (n, frames, n_mels)`` and targets ``y``: label indices ``(n,)`` for a
    single-label data set, multi-hot rows ``(n, classes)`` of 0/1 for a multi-label one."""

    x: FloatArray
    y: IntArray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def pad_to(audio: FloatArray, n_samples: int) -> FloatArray:
    """Zero-pad a short clip on both sides to ``n_samples``; longer clips are returned unchanged."""
    if audio.size >= n_samples:
        return audio
    before = (n_samples - audio.size) // 2
    return np.pad(audio, (before, n_samples - audio.size - before)).astype(np.float32, copy=False)


def clip_window(path: Path, logmel: LogMel, window_frames: int) -> FloatArray:
    """The ``(window_frames, n_mels)`` log-Mel window of one clip, computed as the server computes it.

    A 1.0 s clip holds exactly 98 frames, so its window is ``LogMel.frames`` of the whole clip. Shorter
    clips are zero-padded and longer ones give their centre frames (the data set's clips are all 1.0 s).
    """
    return audio_window(read_audio(path, logmel.config.sample_rate), logmel, window_frames)


def audio_window(audio: FloatArray, logmel: LogMel, window_frames: int) -> FloatArray:
    """The window of a clip already in memory (as :func:`clip_window` makes it; augmentation needs this)."""
    frames = logmel.frames(pad_to(audio, logmel.config.n_samples(window_frames)))
    start = (frames.shape[0] - window_frames) // 2
    return frames[start : start + window_frames]


def extract(
    paths: Sequence[Path],
    frontend: FrontendConfig,
    window_frames: int,
    *,
    workers: int = 2,
    progress: bool = False,
    desc: str = "features",
) -> FloatArray:
    """Windows of many clips, ``(n, window_frames, n_mels)``; numpy's FFT releases the GIL, so threads help."""
    logmel = LogMel(frontend)
    out = np.empty((len(paths), window_frames, frontend.n_mels), dtype=np.float32)

    def one(i: int) -> None:
        out[i] = clip_window(paths[i], logmel, window_frames)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = pool.map(one, range(len(paths)))
        for _ in tqdm(done, total=len(paths), desc=desc, unit="clip", disable=not progress, leave=False):
            pass
    return out


def cache_key(
    manifest_sha256: str,
    frontend: FrontendConfig,
    window_frames: int,
    labels: Sequence[str],
    multilabel: bool = False,
) -> str:
    blob = json.dumps(
        {
            "manifest": manifest_sha256,
            "frontend": frontend.model_dump(mode="json"),
            "window": window_frames,
            "labels": list(labels),
            **({"multilabel": True} if multilabel else {}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_atomic(path: Path, array: npt.NDArray[np.generic]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def load_split(
    manifest: Path,
    records: Sequence[Clip],
    split: str,
    labels: Sequence[str],
    frontend: FrontendConfig,
    window_frames: int,
    *,
    workers: int = 2,
    progress: bool = False,
    multilabel: bool = False,
) -> SplitFeatures:
    """One split's features, from the cache next to ``manifest`` or computed (then cached).

    ``records`` may be a selection of the manifest's clips (a run that leaves an engine out), so the cache is
    keyed by the clips themselves as well as by the manifest. ``multilabel`` makes ``y`` multi-hot rows (a
    clip's ``label`` may name several classes, or none).
    """
    rows = [r for r in records if r.split == split]
    key = cache_key(sha256_file(manifest), frontend, window_frames, labels, multilabel)
    selection = hashlib.sha256("\n".join(str(r.path) for r in rows).encode()).hexdigest()[:12]
    folder = manifest.parent / "features" / key
    x_path, y_path = folder / f"{split}-{selection}_x.npy", folder / f"{split}-{selection}_y.npy"
    if x_path.is_file() and y_path.is_file():
        return SplitFeatures(x=np.load(x_path), y=np.load(y_path))
    index = {label: i for i, label in enumerate(labels)}
    per_row = [clip_labels(r.label) if multilabel else (r.label,) for r in rows]
    if unknown := {label for names in per_row for label in names} - set(index):
        raise ValueError(f"{manifest} has labels {sorted(unknown)} that are not among {list(labels)}")
    x = extract([Path(r.path) for r in rows], frontend, window_frames, workers=workers, progress=progress, desc=split)
    if multilabel:
        y = np.zeros((len(rows), len(labels)), dtype=np.int64)
        for i, names in enumerate(per_row):
            y[i, [index[label] for label in names]] = 1
    else:
        y = np.array([index[names[0]] for names in per_row], dtype=np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomic(x_path, x)
    _save_atomic(y_path, y)
    return SplitFeatures(x=x, y=y)


def load_splits(
    manifest: Path,
    labels: Sequence[str],
    frontend: FrontendConfig,
    window_frames: int,
    *,
    read: Callable[[Path], Sequence[Clip]],
    splits: Sequence[str] = SPLITS,
    workers: int = 2,
    progress: bool = False,
    multilabel: bool = False,
) -> dict[str, SplitFeatures]:
    """Features of several splits of one manifest, read once with ``read`` (``hark_training.data.read_manifest``)."""
    records = read(manifest)
    return {
        split: load_split(
            manifest,
            records,
            split,
            labels,
            frontend,
            window_frames,
            workers=workers,
            progress=progress,
            multilabel=multilabel,
        )
        for split in splits
    }


def feature_stats(x: FloatArray) -> FeatureStats:
    """Per-band mean and standard deviation over every frame of ``x``: the drift reference of a version."""
    frames = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return FeatureStats(
        mean=[float(v) for v in frames.mean(axis=0)],
        std=[float(v) for v in frames.std(axis=0)],
        n_frames=int(frames.shape[0]),
    )
