"""Training augmentation: of the audio (before the frontend) and of log-Mel windows (after it).

Waveform augmentations change what only the audio can change: pitch shift and time stretch (librosa's
phase vocoder), speed perturbation (soxr resampling, tempo and pitch together), additive noise at a random
SNR (coloured noise from :mod:`hark_training.noise`, or the data set's own background clips), gain and time shift.
Each draws from a ``numpy`` generator seeded by (run seed, epoch, clip), so a clip's augmentation does not
depend on which worker process made it. :class:`AugmentedWindows` turns them into training windows through
the one frontend (:func:`hark_training.features.audio_window`), in DataLoader workers while the model trains.

librosa and soxr are used rather than audiomentations: both are already dependencies, they take the
generator's draws as plain arguments (audiomentations draws from the global ``random`` state), and the
background noise lives in memory rather than in a folder of files.

Feature augmentations (:class:`FeatureAugmenter`) work on batches of windows, where gain is an additive
constant and mixing noise a log-add-exp: a time shift, a gain, noise at a random SNR and SpecAugment masks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import librosa
import numpy as np
import numpy.typing as npt
import soxr
import torch
from torch.utils.data import Dataset

from hark.core.frontend import FrontendConfig, LogMel
from hark.core.preprocess import trim_silence
from hark_training.config import AugmentConfig, NoiseKind, WaveformAugmentConfig
from hark_training.features import audio_window
from hark_training.noise import make_noise, mix_at_snr, power

FloatArray = npt.NDArray[np.float32]
NOISE_KINDS = ("white", "pink", "brown", "hum", "band", "babble")
"""The kinds of synthetic noise in the feature-domain noise bank (all of :mod:`hark_training.noise`)."""
DB_TO_NEPER_POWER = math.log(10.0) / 10.0  # a power ratio of x dB is a log difference of x * this


# ------------------------------------------------------------------------------------------- waveform


def change_speed(x: FloatArray, factor: float, sample_rate: int) -> FloatArray:
    """Play ``factor`` times as fast: tempo and pitch change together (1.1: ~9% shorter, ~1.65 semitones up)."""
    return np.asarray(soxr.resample(x, sample_rate * factor, sample_rate, quality="HQ"), dtype=np.float32)


def time_stretch(x: FloatArray, rate: float) -> FloatArray:
    """Change the tempo by ``rate`` (above 1 is faster, so shorter), keeping the pitch."""
    return np.asarray(librosa.effects.time_stretch(x, rate=rate), dtype=np.float32)


def pitch_shift(x: FloatArray, semitones: float, sample_rate: int) -> FloatArray:
    """Shift the pitch by ``semitones``, keeping the duration."""
    return np.asarray(librosa.effects.pitch_shift(x, sr=sample_rate, n_steps=semitones), dtype=np.float32)


def fit_length(x: FloatArray, n: int) -> FloatArray:
    """Back to ``n`` samples after a change of duration.

    A longer clip keeps its loudest ``n``-sample stretch, so a slowed-down word is not cut off at an edge;
    a shorter one is centred in silence, as a short clip is for the frontend.
    """
    if x.size > n:
        energy = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
        start = int(np.argmax(energy[n:] - energy[:-n]))
        return x[start : start + n]
    before = (n - x.size) // 2
    return np.pad(x, (before, n - x.size - before))


def shift(x: FloatArray, samples: int) -> FloatArray:
    """Move the audio ``samples`` later (earlier when negative), keeping the length; the gap is silence."""
    out = np.zeros_like(x)
    if samples >= 0:
        out[samples:] = x[: x.size - samples]
    else:
        out[:samples] = x[-samples:]
    return out


def add_noise(x: FloatArray, noise: FloatArray, snr_db: float, sample_rate: int) -> FloatArray:
    """Mix ``noise`` in ``snr_db`` below the clip's active part (its silence-trimmed span), not the whole clip.

    A short word in a second of silence would otherwise be drowned: the SNR describes the word.
    """
    signal_power = power(trim_silence(x, sample_rate, pad_ms=0.0))
    return mix_at_snr(x.astype(np.float64), noise.astype(np.float64), snr_db, signal_power).astype(np.float32)


def random_crop(x: FloatArray, n: int, rng: np.random.Generator) -> FloatArray:
    """``n`` samples from a random place in ``x``, repeating ``x`` when it is shorter."""
    if x.size < n:
        x = np.resize(x, n)
    start = int(rng.integers(0, x.size - n + 1))
    return x[start : start + n]


def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


@dataclass(frozen=True)
class WaveformAugmenter:
    """Applies :class:`~hark_training.config.WaveformAugmentConfig` to one clip; the output has the input's length.

    Order: speed, stretch and pitch (the duration changes, then :func:`fit_length` restores it), time
    shift, noise, gain. ``background`` holds recorded background clips for the ``background`` noise kind.
    """

    config: WaveformAugmentConfig
    sample_rate: int
    background: Sequence[FloatArray] = ()

    def noise(self, n: int, rng: np.random.Generator) -> FloatArray | None:
        """``n`` samples of a noise kind drawn from the config's; None when none is available."""
        kinds: list[NoiseKind] = [k for k in self.config.noise.kinds if k != "background" or self.background]
        if not kinds:
            return None
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "background":
            return random_crop(self.background[int(rng.integers(len(self.background)))], n, rng)
        return make_noise(kind, n, rng, self.sample_rate).astype(np.float32)

    def warm_up(self) -> None:
        """Run the librosa augmentations once: librosa compiles its kernels (numba) on first use, seconds per
        process, and DataLoader workers forked afterwards inherit them instead of each compiling again."""
        x = np.random.default_rng(0).normal(0.0, 0.1, self.sample_rate // 4).astype(np.float32)
        time_stretch(x, 1.1)
        pitch_shift(x, 1.0, self.sample_rate)

    def __call__(self, x: FloatArray, rng: np.random.Generator) -> FloatArray:
        c, sr, n = self.config, self.sample_rate, x.size
        if rng.random() < c.speed.prob:
            x = change_speed(x, _draw(rng, c.speed.factor), sr)
        if rng.random() < c.time_stretch.prob:
            x = time_stretch(x, _draw(rng, c.time_stretch.rate))
        if rng.random() < c.pitch_shift.prob:
            x = pitch_shift(x, _draw(rng, c.pitch_shift.semitones), sr)
        x = fit_length(x, n)
        if rng.random() < c.shift.prob:
            most = int(c.shift.max_ms * sr / 1000)
            x = shift(x, int(rng.integers(-most, most + 1)))
        if rng.random() < c.noise.prob and (noise := self.noise(n, rng)) is not None:
            x = add_noise(x, noise, _draw(rng, c.noise.snr_db), sr)
        if rng.random() < c.gain.prob:
            x = x * np.float32(10 ** (_draw(rng, c.gain.db) / 20))
        return x.astype(np.float32, copy=False)


class AugmentedWindows(Dataset[tuple[torch.Tensor, int, float]]):
    """Training windows made on the fly: a clip's audio (held in memory), augmented, through the frontend.

    Item ``i`` is ``(window, label, seconds spent making it)``. Its randomness comes from
    ``(seed, epoch, i)``; set :attr:`epoch` before each epoch's DataLoader iterator is made (workers
    get a fresh copy of the dataset then).
    """

    def __init__(
        self,
        audio: Sequence[FloatArray],
        labels: Sequence[int],
        augmenter: WaveformAugmenter,
        frontend: FrontendConfig,
        window_frames: int,
        seed: int,
    ) -> None:
        if len(audio) != len(labels):
            raise ValueError(f"{len(audio)} clips but {len(labels)} labels")
        self.audio, self.labels = audio, labels
        self.augmenter, self.logmel, self.window_frames = augmenter, LogMel(frontend), window_frames
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, float]:
        started = time.perf_counter()
        rng = np.random.default_rng([self.seed, self.epoch, i])
        window = audio_window(self.augmenter(self.audio[i], rng), self.logmel, self.window_frames)
        return torch.from_numpy(window), int(self.labels[i]), time.perf_counter() - started


# -------------------------------------------------------------------------------------------- features


def noise_bank(
    frontend: FrontendConfig, window_frames: int, seed: int, seconds: float = 4.0, per_kind: int = 3
) -> torch.Tensor:
    """Log-Mel windows of synthetic background noise, ``(n, window_frames, n_mels)``, to mix into training."""
    rng = np.random.default_rng(seed)
    n = max(int(seconds * frontend.sample_rate), frontend.n_samples(window_frames))
    sources = [make_noise(kind, n, rng, frontend.sample_rate) for kind in NOISE_KINDS for _ in range(per_kind)]
    logmel = LogMel(frontend)
    frames = torch.from_numpy(np.stack([logmel.frames((0.1 * s).astype(np.float32)) for s in sources]))
    windows = frames.unfold(1, window_frames, max(1, window_frames // 10))  # (clips, n_windows, n_mels, frames)
    return windows.permute(0, 1, 3, 2).reshape(-1, window_frames, frontend.n_mels).contiguous()


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def time_shift(x: torch.Tensor, max_frames: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each window in time by up to ``max_frames``, repeating the edge frame (usually background)."""
    if max_frames <= 0:
        return x
    b, t, f = x.shape
    shifts = torch.randint(-max_frames, max_frames + 1, (b, 1), generator=gen)
    index = (torch.arange(t).unsqueeze(0) - shifts).clamp(0, t - 1)
    return x.gather(1, index.unsqueeze(-1).expand(b, t, f))


def mix_noise(
    x: torch.Tensor, noise: torch.Tensor, prob: float, snr_db: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """Add noise windows (same shape as ``x``'s) in the power domain, ``log(exp(x) + exp(n))``, at a random SNR."""
    b = x.shape[0]
    if prob <= 0.0 or noise.shape[0] == 0:
        return x
    chosen = noise[torch.randint(0, noise.shape[0], (b,), generator=gen)]
    log_signal = torch.logsumexp(x.flatten(1), dim=1)
    log_noise = torch.logsumexp(chosen.flatten(1), dim=1)
    snr = _uniform(b, snr_db[0], snr_db[1], gen)
    offset = (log_signal - log_noise - snr * DB_TO_NEPER_POWER).view(b, 1, 1)
    mixed = torch.logaddexp(x, chosen + offset)
    apply = (torch.rand(b, generator=gen) < prob).view(b, 1, 1)
    return torch.where(apply, mixed, x)


def spec_masks(x: torch.Tensor, axis: int, count: int, widest: int, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment: ``count`` masks up to ``widest`` wide along ``axis`` (1 time, 2 frequency), set to the mean."""
    if count <= 0 or widest <= 0:
        return x
    b, size = x.shape[0], x.shape[axis]
    positions = torch.arange(size).unsqueeze(0)
    masked = torch.zeros(b, size, dtype=torch.bool)
    for _ in range(count):
        width = torch.randint(0, min(widest, size) + 1, (b, 1), generator=gen)
        start = (torch.rand(b, 1, generator=gen) * (size - width + 1)).long()
        masked |= (positions >= start) & (positions < start + width)
    mask = masked.unsqueeze(2) if axis == 1 else masked.unsqueeze(1)
    return torch.where(mask, x.mean(dim=(1, 2), keepdim=True), x)


@dataclass
class FeatureAugmenter:
    """Applies :class:`AugmentConfig`'s feature-domain fields to a batch of windows ``(batch, frames, n_mels)``."""

    config: AugmentConfig
    noise: torch.Tensor
    gen: torch.Generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = time_shift(x, c.time_shift_frames, self.gen)
        if c.gain_db > 0:
            x = x + (_uniform(x.shape[0], -c.gain_db, c.gain_db, self.gen) * DB_TO_NEPER_POWER).view(-1, 1, 1)
        x = mix_noise(x, self.noise, c.noise_prob, c.snr_db, self.gen)
        x = spec_masks(x, 1, c.time_masks, c.time_mask_frames, self.gen)
        return spec_masks(x, 2, c.freq_masks, c.freq_mask_bands, self.gen)
