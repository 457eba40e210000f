"""Augmentation: each waveform and feature augmentation does what its name says, off means identity,
a seed fixes the result, and training runs with every augmentation on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch.utils.data import DataLoader

from hark.core.frontend import FrontendConfig, LogMel
from hark_training.augment import (
    AugmentedWindows,
    WaveformAugmenter,
    add_noise,
    change_speed,
    fit_length,
    pitch_shift,
    shift,
    spec_masks,
    time_stretch,
)
from hark_training.config import AugmentConfig, TrainConfig, WaveformAugmentConfig, load_config
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.features import clip_window
from hark_training.train import METRICS_FILE, train
from tests.fixtures_data import write_tone_dataset

SR = 16_000
FloatArray = npt.NDArray[np.float32]


def tone(freq: float, seconds: float = 1.0, level: float = 0.3) -> FloatArray:
    t = np.arange(int(seconds * SR)) / SR
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: FloatArray) -> float:
    """The frequency of the strongest spectral peak, refined by parabolic interpolation."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    k = int(spectrum[1:-1].argmax()) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / x.size)


def word_in_silence(rng: np.random.Generator) -> FloatArray:
    """A 0.4 s noise burst (10 ms frames 40 to 79) in a one-second clip: where the energy is, is known."""
    clip = np.zeros(SR, np.float32)
    clip[6_400:12_800] = rng.normal(0.0, 0.1, 6_400)
    return clip


ALL_ON = WaveformAugmentConfig.model_validate(
    {
        "speed": {"prob": 1.0},
        "time_stretch": {"prob": 1.0},
        "pitch_shift": {"prob": 1.0},
        "shift": {"prob": 1.0},
        "noise": {"prob": 1.0},
        "gain": {"prob": 1.0},
        "workers": 1,
    }
)


# --- single augmentations -------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.2])
def test_speed_changes_duration_and_pitch_together(factor: float) -> None:
    x = tone(500.0)
    faster = change_speed(x, factor, SR)
    assert faster.size == pytest.approx(x.size / factor, abs=2)
    assert peak_hz(faster) == pytest.approx(500.0 * factor, rel=0.005)


@pytest.mark.parametrize("rate", [0.8, 1.2])
def test_time_stretch_changes_duration_not_pitch(rate: float) -> None:
    x = tone(500.0)
    stretched = time_stretch(x, rate)
    assert stretched.size == pytest.approx(x.size / rate, abs=2)
    assert peak_hz(stretched) == pytest.approx(500.0, rel=0.01)


@pytest.mark.parametrize("semitones", [-3.0, 2.0, 12.0])
def test_pitch_shift_moves_the_peak_by_the_ratio_and_keeps_the_duration(semitones: float) -> None:
    x = tone(400.0)
    shifted = pitch_shift(x, semitones, SR)
    assert shifted.size == x.size
    assert peak_hz(shifted) == pytest.approx(400.0 * 2 ** (semitones / 12), rel=0.01)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_noise_is_mixed_at_the_requested_snr_of_the_active_part(snr_db: float) -> None:
    rng = np.random.default_rng(0)
    x = word_in_silence(rng)
    noise = rng.normal(0.0, 1.0, SR).astype(np.float32)
    mixed = add_noise(x, noise, snr_db, SR)
    added = mixed.astype(np.float64) - x
    word_power = np.mean(np.square(x[6_400:12_800], dtype=np.float64))
    assert 10 * np.log10(word_power / np.mean(np.square(added))) == pytest.approx(snr_db, abs=0.2)


def test_fit_length_keeps_the_loudest_stretch_or_centres_a_short_clip() -> None:
    x = word_in_silence(np.random.default_rng(1))
    for longer in (np.concatenate([np.zeros(5_000, np.float32), x]), np.concatenate([x, np.zeros(5_000, np.float32)])):
        kept = fit_length(longer, SR)
        assert kept.size == SR and np.sum(np.square(kept)) == np.sum(np.square(x))  # the whole burst
    short = np.ones(100, np.float32)
    centred = fit_length(short, 300)
    assert centred.size == 300 and centred[100:200].all() and not centred[:100].any() and not centred[200:].any()


def test_shift_moves_the_audio_and_fills_with_silence() -> None:
    x = np.arange(1, 11, dtype=np.float32)
    assert shift(x, 3).tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert shift(x, -2).tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 0, 0]
    assert shift(x, 0).tolist() == x.tolist()


def test_gain_scales_by_the_drawn_decibels() -> None:
    config = WaveformAugmentConfig.model_validate({"gain": {"prob": 1.0, "db": (6.0, 6.0)}})
    x = tone(300.0)
    out = WaveformAugmenter(config, SR)(x, np.random.default_rng(0))
    np.testing.assert_allclose(out, x * 10 ** (6 / 20), rtol=1e-6)


def test_background_noise_comes_from_the_background_clips() -> None:
    config = WaveformAugmentConfig.model_validate({"noise": {"prob": 1.0, "kinds": ["background"]}})
    x = word_in_silence(np.random.default_rng(2))
    hum = tone(1_000.0, seconds=2.0)
    out = WaveformAugmenter(config, SR, background=[hum])(x, np.random.default_rng(0))
    added = out - x
    assert added[:6_400].any() and peak_hz(added) == pytest.approx(1_000.0, rel=0.01)
    # Without background clips there is no noise of that kind to add: the clip is left alone.
    np.testing.assert_array_equal(WaveformAugmenter(config, SR)(x, np.random.default_rng(0)), x)


# --- the augmenter as a whole ---------------------------------------------------------------------------------


def test_waveform_augmentation_off_is_the_identity() -> None:
    x = word_in_silence(np.random.default_rng(3))
    off = WaveformAugmenter(WaveformAugmentConfig(), SR, background=[tone(100.0)])
    assert not WaveformAugmentConfig().enabled
    np.testing.assert_array_equal(off(x, np.random.default_rng(0)), x)


def test_waveform_augmentation_is_fixed_by_the_seed_and_keeps_the_length() -> None:
    x = word_in_silence(np.random.default_rng(4))
    augment = WaveformAugmenter(ALL_ON, SR, background=[tone(100.0)])
    first, again = augment(x, np.random.default_rng(7)), augment(x, np.random.default_rng(7))
    other = augment(x, np.random.default_rng(8))
    assert first.shape == x.shape and first.dtype == np.float32 and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other) and not np.array_equal(first, x)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone_dataset(tmp_path_factory.mktemp("tones"), per_split={"train": 3, "val": 1})


def windows(manifest: Path, config: WaveformAugmentConfig, seed: int = 0) -> AugmentedWindows:
    from hark.core.audio import read_audio

    rows = [r for r in read_data_manifest(manifest) if r.split == "train"]
    audio = [read_audio(r.path, SR) for r in rows]
    return AugmentedWindows(
        audio, [LABELS.index(r.label) for r in rows], WaveformAugmenter(config, SR), FrontendConfig(), 98, seed
    )


def test_windows_without_augmentation_are_the_cached_features(manifest: Path) -> None:
    """The waveform path goes through the same frontend as the feature cache, to the last bit."""
    rows = [r for r in read_data_manifest(manifest) if r.split == "train"]
    data = windows(manifest, WaveformAugmentConfig())
    logmel = LogMel(FrontendConfig())
    for i in (0, len(rows) // 2, len(rows) - 1):
        window, label, seconds = data[i]
        np.testing.assert_array_equal(window.numpy(), clip_window(rows[i].path, logmel, 98))
        assert label == LABELS.index(rows[i].label) and seconds > 0


def test_windows_do_not_depend_on_the_worker_processes(manifest: Path) -> None:
    data = windows(manifest, ALL_ON, seed=5)
    index = [[0, 7, 3], [11, 2]]
    alone = [batch[0] for batch in DataLoader(data, batch_sampler=index, num_workers=0)]
    workers = [batch[0] for batch in DataLoader(data, batch_sampler=index, num_workers=2)]
    for a, b in zip(alone, workers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    data.epoch = 1  # a new epoch draws new augmentations
    assert not torch.equal(next(iter(DataLoader(data, batch_sampler=index[:1])))[0], alone[0])


# --- SpecAugment ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("axis", "widest"), [(1, 10), (2, 5)])
def test_spec_masks_cover_one_span_no_wider_than_asked(axis: int, widest: int) -> None:
    x = torch.randn(64, 98, 40)
    masked = spec_masks(x, axis, 1, widest, torch.Generator().manual_seed(0))
    changed = (masked != x).any(dim=3 - axis)  # (batch, positions along the axis)
    mean = x.mean(dim=(1, 2))
    for b in range(x.shape[0]):
        positions = torch.nonzero(changed[b]).flatten()
        if positions.numel():
            assert positions[-1] - positions[0] + 1 == positions.numel() <= widest  # one contiguous span
            span = masked[b, positions] if axis == 1 else masked[b, :, positions]
            torch.testing.assert_close(span, torch.full_like(span, float(mean[b])))
    assert changed.any(dim=1).float().mean() > 0.5  # most windows got a mask
    torch.testing.assert_close(spec_masks(x, axis, 0, widest, torch.Generator()), x)


# --- config and training --------------------------------------------------------------------------------------


def test_waveform_augmentation_is_off_by_default_and_in_the_bundled_recipe() -> None:
    assert not AugmentConfig().waveform.enabled
    assert not load_config(Path("training/configs/keywords.toml")).augment.waveform.enabled


def test_waveform_augmentation_is_configured_in_toml(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[augment.waveform.pitch_shift]\nprob = 0.5\nsemitones = [-1.0, 3.0]\n")
    waveform = load_config(tmp_path / "c.toml").augment.waveform
    assert waveform.enabled and waveform.pitch_shift.semitones == (-1.0, 3.0)
    (tmp_path / "bad.toml").write_text("[augment.waveform.speed]\nfactor = [1.2, 0.8]\n")
    with pytest.raises(ValueError, match="range"):
        load_config(tmp_path / "bad.toml")


def test_one_epoch_with_every_augmentation_on(manifest: Path, tmp_path: Path) -> None:
    augment = AugmentConfig(waveform=ALL_ON)
    config = TrainConfig(data=manifest, out=tmp_path / "run", epochs=1, batch_size=8, threads=1, augment=augment)
    run = train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)
    (row,) = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    assert np.isfinite(row["train_loss"])
    assert row["augment_seconds"] > 0 and row["model_seconds"] > 0 and row["data_wait_seconds"] >= 0
    assert row["data_wait_seconds"] + row["model_seconds"] <= row["seconds"]  # workers' time overlaps the wait


def test_cached_path_reports_its_times_too(manifest: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=manifest, out=tmp_path / "run", epochs=1, batch_size=8, threads=1)
    run = train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)
    (row,) = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    assert row["augment_seconds"] > 0 and row["model_seconds"] > row["data_wait_seconds"] >= 0
