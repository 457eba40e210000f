"""The training configuration: one pydantic model, loadable from TOML or JSON, saved into every run.

A run folder's ``config.json`` is the complete recipe, so ``hark train --config runs/x/config.json``
reproduces the run. Command-line options override single fields on top of a file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MANIFEST = Path("data/keywords/manifest.csv")
RUNS_DIR = Path("runs")


class AugmentConfig(BaseModel):
    """Cheap augmentation applied to batches of cached log-Mel windows (see :mod:`training.train`).

    Everything happens in the feature domain, where gain is an additive constant and mixing noise is a
    log-add-exp, so augmenting costs a few tensor operations per batch instead of re-running the frontend.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_shift_frames: int = Field(10, ge=0, description="Shift each window by up to this many frames (10 ms each).")
    gain_db: float = Field(10.0, ge=0.0, description="Random gain in [-gain_db, +gain_db] dB.")
    noise_prob: float = Field(0.8, ge=0.0, le=1.0, description="Probability of mixing in background noise.")
    snr_db: tuple[float, float] = Field((0.0, 30.0), description="Range of signal-to-noise ratios for mixed noise.")
    time_masks: int = Field(2, ge=0, description="SpecAugment: number of time masks per window.")
    time_mask_frames: int = Field(10, ge=0, description="SpecAugment: longest time mask, frames.")
    freq_masks: int = Field(2, ge=0, description="SpecAugment: number of frequency masks per window.")
    freq_mask_bands: int = Field(5, ge=0, description="SpecAugment: widest frequency mask, Mel bands.")

    @model_validator(mode="after")
    def _ordered(self) -> AugmentConfig:
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db must be (low, high), got {self.snr_db}")
        return self


class TrainConfig(BaseModel):
    """Everything that determines a training run (with the data manifest it names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("keywords", description="Run name; the default run folder is runs/<name>.")
    data: Path = Field(DEFAULT_MANIFEST, description="Data manifest (CSV) written by training.data.")
    out: Path | None = Field(None, description="Run folder; default runs/<name>.")
    arch: str = Field("dscnn", description="Architecture name in training.models.ARCHITECTURES.")
    arch_options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the architecture.")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0.0, description="Peak learning rate of the one-cycle schedule.")
    weight_decay: float = Field(1e-2, ge=0.0)
    label_smoothing: float = Field(0.05, ge=0.0, lt=1.0)
    class_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Loss weight per label (default 1), e.g. to trade keyword recall for fewer false alarms.",
    )
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
    window_frames: int = Field(98, ge=1, description="Frames per window: 1.0 s at the default frontend.")
    hop_frames: int = Field(10, ge=1, description="Serving hop written into the manifest (100 ms).")
    per_class: int | None = Field(
        None, ge=1, description="Clips per class when --build-data builds the data set (default: training.data's)."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @property
    def run_dir(self) -> Path:
        return self.out if self.out is not None else RUNS_DIR / self.name


def load_config(path: Path) -> TrainConfig:
    """Read a config from ``.toml`` or ``.json`` (by suffix); unknown keys are an error, not ignored."""
    text = path.read_text()
    data: dict[str, Any] = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    return TrainConfig.model_validate(data)


def config_to_json(config: TrainConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2) + "\n"
