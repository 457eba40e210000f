"""The training configuration: one pydantic model, loadable from TOML or JSON, saved into every run.

A run folder's ``config.json`` is the complete recipe, so ``hark train --config runs/x/config.json``
reproduces the run. Command-line options override single fields on top of a file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

DEFAULT_MANIFEST = Path("data/keywords/manifest.csv")
RUNS_DIR = Path("runs")


def _ordered_range(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"a range must be (low, high), got {value}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_ordered_range)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, description="Chance that a clip gets it; 0 turns it off.")]


class PitchShiftConfig(BaseModel):
    """Shift the pitch, keeping the duration (librosa phase vocoder and resampling)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prob: Probability = 0.0
    semitones: Range = Field((-2.0, 2.0), description="Range of the shift, semitones.")


class TimeStretchConfig(BaseModel):
    """Change the tempo, keeping the pitch (librosa phase vocoder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prob: Probability = 0.0
    rate: Range = Field((0.8, 1.2), description="Range of the tempo factor; above 1 is faster (shorter).")

    @model_validator(mode="after")
    def _positive(self) -> TimeStretchConfig:
        if self.rate[0] <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        return self


class SpeedConfig(BaseModel):
    """Speed perturbation: play faster or slower, changing tempo and pitch together (soxr resampling)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prob: Probability = 0.0
    factor: Range = Field((0.9, 1.1), description="Range of the speed factor; 1.1 is 10% faster (shorter).")

    @model_validator(mode="after")
    def _positive(self) -> SpeedConfig:
        if self.factor[0] <= 0:
            raise ValueError(f"factor must be positive, got {self.factor}")
        return self


NoiseKind = Literal["white", "pink", "brown", "background"]


class WaveNoiseConfig(BaseModel):
    """Additive noise at a random SNR: coloured (hark_training.noise) or the data set's recorded background."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prob: Probability = 0.0
    snr_db: Range = Field((0.0, 30.0), description="Range of signal-to-noise ratios, dB (signal: its active part).")
    kinds: tuple[NoiseKind, ...] = Field(
        ("white", "pink", "brown", "background"),
        min_length=1,
        description="Noises drawn from with equal chance; background is the train split's _silence_ clips.",
    )


class GainConfig(BaseModel):
    """Random gain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prob: Probability = 0.0
    db: Range = Field((-10.0, 10.0), description="Range of the gain, dB.")


class ShiftConfig(BaseModel):
    """Time shift: move the clip earlier or later, filling the gap with silence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prob: Probability = 0.0
    max_ms: float = Field(100.0, ge=0.0, description="Largest shift either way, milliseconds.")


class WaveformAugmentConfig(BaseModel):
    """Augmentation of the audio itself, before the frontend (see :mod:`hark_training.augment`).

    All off by default. When any is on, training batches are made from the clips' audio, augmented and
    turned into features by worker processes while the model trains, instead of from cached features.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    time_stretch: TimeStretchConfig = Field(default_factory=TimeStretchConfig)
    pitch_shift: PitchShiftConfig = Field(default_factory=PitchShiftConfig)
    shift: ShiftConfig = Field(default_factory=ShiftConfig)
    noise: WaveNoiseConfig = Field(default_factory=WaveNoiseConfig)
    gain: GainConfig = Field(default_factory=GainConfig)
    workers: int = Field(2, ge=0, description="DataLoader worker processes that augment; 0 augments in the trainer.")

    @property
    def enabled(self) -> bool:
        parts = (self.speed, self.time_stretch, self.pitch_shift, self.shift, self.noise, self.gain)
        return any(part.prob > 0 for part in parts)


class AugmentConfig(BaseModel):
    """Augmentation of training windows (see :mod:`hark_training.augment`).

    The fields at this level act on batches of log-Mel windows, where gain is an additive constant and
    mixing noise is a log-add-exp, so they cost a few tensor operations per batch. ``waveform`` holds the
    augmentations that need the audio (pitch shift, time stretch, speed); they cost more, so they are off
    unless switched on.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_shift_frames: int = Field(10, ge=0, description="Shift each window by up to this many frames (10 ms each).")
    gain_db: float = Field(10.0, ge=0.0, description="Random gain in [-gain_db, +gain_db] dB.")
    noise_prob: float = Field(0.8, ge=0.0, le=1.0, description="Probability of mixing in background noise.")
    snr_db: Range = Field((0.0, 30.0), description="Range of signal-to-noise ratios for mixed noise.")
    time_masks: int = Field(2, ge=0, description="SpecAugment: number of time masks per window.")
    time_mask_frames: int = Field(10, ge=0, description="SpecAugment: longest time mask, frames.")
    freq_masks: int = Field(2, ge=0, description="SpecAugment: number of frequency masks per window.")
    freq_mask_bands: int = Field(5, ge=0, description="SpecAugment: widest frequency mask, Mel bands.")
    waveform: WaveformAugmentConfig = Field(default_factory=WaveformAugmentConfig)


class DistillConfig(BaseModel):
    """Learn from a trained teacher run as well as from the labels (see :mod:`hark_training.distill`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher: Path = Field(description="The teacher's run folder (any architecture, the same classes).")
    weight: float = Field(0.5, gt=0.0, le=1.0, description="Share of the teacher's probabilities in each target.")
    temperature: float = Field(
        2.0, gt=0.0, description="Softens the teacher's scores: higher shows more of its doubts."
    )
    seams: int = Field(
        0,
        ge=0,
        description="Extra training windows, each the end of one training clip followed by the start of another, "
        "with the teacher's scores as their only targets: the in-between moments a stream shows a model and no "
        "clip is labelled with.",
    )


class TrainConfig(BaseModel):
    """Everything that determines a training run (with the data manifest it names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("keywords", description="Run name; the default run folder is runs/<name>.")
    data: Path = Field(DEFAULT_MANIFEST, description="Data manifest (CSV) written by hark_training.data.")
    out: Path | None = Field(None, description="Run folder; default runs/<name>.")
    arch: str = Field("dscnn", description="Architecture name in hark_training.models.ARCHITECTURES.")
    arch_options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the architecture.")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0.0, description="Peak learning rate: the top of one-cycle, the start of cosine.")
    weight_decay: float = Field(1e-2, ge=0.0)
    label_smoothing: float = Field(0.05, ge=0.0, lt=1.0)
    class_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Loss weight per label (default 1), e.g. to trade keyword recall for fewer false alarms.",
    )
    loss: Literal["ce", "focal", "bce"] = Field(
        "ce",
        description="ce: softmax cross-entropy; focal: cross-entropy scaled by (1 - p)^focal_gamma, for hard "
        "examples; bce: per-label sigmoid binary cross-entropy, for multi-label data (see hark_training.losses).",
    )
    focal_gamma: float = Field(2.0, ge=0.0, description="Focusing exponent of the focal loss; 0 is cross-entropy.")
    sampler: Literal["shuffle", "weighted"] = Field(
        "shuffle",
        description="shuffle: every window once per epoch; weighted: drawn with replacement at inverse class "
        "frequency, so every class is seen about equally often.",
    )
    schedule: Literal["onecycle", "cosine"] = Field(
        "onecycle", description="Learning-rate schedule over all steps: one-cycle to lr, or cosine annealing from lr."
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better val accuracy; None trains every epoch."
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="Checkpoint the epoch with the best val accuracy, or the last one (k-fold: val is the "
        "held-out fold, which must not choose the model it scores).",
    )
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
    window_frames: int = Field(98, ge=1, description="Frames per window: 1.0 s at the default frontend.")
    hop_frames: int = Field(10, ge=1, description="Serving hop written into the manifest (100 ms).")
    per_class: int | None = Field(
        None, ge=1, description="Clips per class when --build-data builds the data set (default: hark_training.data's)."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    distill: DistillConfig | None = Field(None, description="A teacher run to distil from (single-label data).")
    exclude_engines: tuple[str, ...] = Field(
        (),
        description="Leave these engines' clips out of the train split (val and test keep theirs): a "
        "leave-one-engine-out run, or a recipe without an engine.",
    )
    commercial_only: bool = Field(
        False, description="Leave training clips whose licence is non-commercial out of the train split."
    )
    exclude_kinds: tuple[str, ...] = Field(
        (),
        description="Leave training clips of these kinds (the manifest's kind column: word, sentence, free, "
        "noise) out of the train split: what running speech buys is a run without sentence and free.",
    )

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
