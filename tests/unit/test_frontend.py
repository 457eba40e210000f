"""The frontend contract: one feature definition, identical whether fed whole or in chunks."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hark.core.frontend import FrontendConfig, LogMel, StreamingLogMel

CONFIG = FrontendConfig()


def _audio(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * CONFIG.sample_rate)) / CONFIG.sample_rate
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    seconds=st.floats(0.0, 2.5),
    chunk_sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=40),
)
def test_streaming_frames_equal_whole_clip_frames_for_any_chunking(
    seed: int, seconds: float, chunk_sizes: list[int]
) -> None:
    audio = _audio(seed, seconds)
    whole = LogMel(CONFIG).frames(audio)

    stream = StreamingLogMel(CONFIG)
    parts, pos, i = [], 0, 0
    while pos < audio.size:
        size = chunk_sizes[i % len(chunk_sizes)]
        parts.append(stream.push(audio[pos : pos + size]))
        pos, i = pos + size, i + 1
    streamed = np.concatenate(parts) if parts else np.empty((0, CONFIG.n_mels), np.float32)

    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-4, rtol=0)
    assert stream.frames_emitted == whole.shape[0]


def test_frame_count_follows_valid_framing() -> None:
    assert CONFIG.n_frames(CONFIG.win_length - 1) == 0
    assert CONFIG.n_frames(CONFIG.win_length) == 1
    assert CONFIG.n_frames(16_000) == 98  # one second: the model's window
    assert CONFIG.n_samples(98) <= 16_000 < CONFIG.n_samples(99)


def test_features_match_librosa_melspectrogram_of_the_same_frames() -> None:
    """Our framing is librosa's with centre=False and the window zero-padded to n_fft."""
    audio = _audio(7, 1.0)
    ours = LogMel(CONFIG).frames(audio)
    window = np.zeros(CONFIG.n_fft, dtype=np.float32)
    window[: CONFIG.win_length] = np.hanning(CONFIG.win_length + 1)[:-1]
    mel = librosa.feature.melspectrogram(
        y=audio,
        sr=CONFIG.sample_rate,
        n_fft=CONFIG.n_fft,
        hop_length=CONFIG.hop_length,
        window=window,
        center=False,
        n_mels=CONFIG.n_mels,
        fmin=CONFIG.fmin,
        fmax=CONFIG.fmax,
        power=CONFIG.power,
    )
    reference = np.log(mel.T[: ours.shape[0]] + CONFIG.log_offset)
    # librosa frames n_fft samples, we frame win_length: same count only where both fit.
    np.testing.assert_allclose(ours[: reference.shape[0]], reference, atol=1e-3)


def test_a_louder_tone_lands_in_the_right_band_and_silence_is_the_floor() -> None:
    t = np.arange(16_000) / 16_000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    frames = LogMel(CONFIG).frames(tone)
    peak_band = int(np.argmax(frames.mean(axis=0)))
    band_hz = librosa.mel_frequencies(CONFIG.n_mels + 2, fmin=CONFIG.fmin, fmax=CONFIG.fmax)[1:-1]
    assert abs(band_hz[peak_band] - 1000) < 150
    silence = LogMel(CONFIG).frames(np.zeros(16_000, np.float32))
    np.testing.assert_allclose(silence, np.log(CONFIG.log_offset), rtol=1e-6)


def test_streaming_memory_is_bounded_by_one_block() -> None:
    stream = StreamingLogMel(CONFIG)
    capacity = stream._buf.size
    stream.push(np.zeros(10 * CONFIG.sample_rate, np.float32))
    assert stream._buf.size == capacity


@pytest.mark.parametrize(
    "change",
    [{"win_length": 1024}, {"hop_length": 500}, {"fmax": 9000.0}, {"fmin": 8000.0}, {"kind": "mfcc"}],
)
def test_inconsistent_frontend_configs_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FrontendConfig.model_validate({**CONFIG.model_dump(), **change})


def test_non_mono_audio_is_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        LogMel(CONFIG).frames(np.zeros((2, 16_000), np.float32))
