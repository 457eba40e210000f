"""Clip preprocessing: resampling, energy trimming and level normalisation, safe on any clip.

The same functions make the data set's clips (``hark data``) and prepare a file for ``hark classify``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hark import cli
from hark.core.preprocess import (
    DEFAULT_PEAK_DBFS,
    PreprocessConfig,
    normalize_peak,
    normalize_rms,
    preprocess,
    trim_silence,
)

RATE = 16_000


def tone(seconds: float, level: float = 0.5, freq: float = 440.0, rate: int = RATE) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dbfs(x: float) -> float:
    return float(20 * np.log10(x))


def rms(x: npt.NDArray[np.floating]) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# Any clip: silent, clipped (rails at +-1), very short (0 to 40 samples) or ordinary, in float32 or float64.
samples = st.floats(-1.0, 1.0, width=32, allow_subnormal=False)
clips = st.one_of(
    hnp.arrays(st.sampled_from([np.float32, np.float64]), st.integers(0, 2_000), elements=samples),
    st.integers(0, 3_000).map(lambda n: np.zeros(n, dtype=np.float32)),
    st.integers(1, 3_000).map(lambda n: np.where(np.arange(n) % 7 < 3, 1.0, -1.0).astype(np.float32)),
    hnp.arrays(np.float32, st.integers(0, 40), elements=samples),
)


# --- trimming --------------------------------------------------------------------------------------------------


def test_trim_cuts_silence_on_both_sides_and_keeps_the_sound() -> None:
    word = tone(0.3)
    clip = np.concatenate([np.zeros(4_000, np.float32), word, np.zeros(6_000, np.float32)])
    trimmed = trim_silence(clip, RATE, pad_ms=0.0)
    assert abs(trimmed.size - word.size) <= RATE // 100  # within one 10 ms frame
    assert np.max(np.abs(trimmed)) == pytest.approx(0.5, rel=1e-3)
    assert trimmed.dtype == np.float32


def test_trim_threshold_is_relative_to_the_loudest_frame() -> None:
    """A faint background 50 dB under the word is cut; at 30 dB under it, it is kept (threshold -40 dB)."""
    word = tone(0.2)
    for below_db, kept in ((50.0, False), (30.0, True)):
        hiss = np.full(8_000, 0.5 * 10 ** (-below_db / 20) / np.sqrt(2), np.float32)
        trimmed = trim_silence(np.concatenate([hiss, word, hiss]), RATE, pad_ms=0.0)
        assert (trimmed.size > word.size + 8_000) is kept
    quiet = np.concatenate([np.zeros(4_000, np.float32), tone(0.3, level=1e-4), np.zeros(4_000, np.float32)])
    assert abs(trim_silence(quiet, RATE, pad_ms=0.0).size - int(0.3 * RATE)) <= RATE // 100


def test_trim_of_silence_is_empty() -> None:
    assert trim_silence(np.zeros(RATE), RATE).size == 0
    assert trim_silence(np.zeros(0), RATE).size == 0


@settings(max_examples=200, deadline=None)
@given(x=clips)
def test_trim_returns_one_contiguous_slice_of_the_clip(x: npt.NDArray[np.floating]) -> None:
    trimmed = trim_silence(x, RATE)
    assert trimmed.dtype == x.dtype and trimmed.size <= x.size
    if trimmed.size:
        starts = [i for i in range(x.size - trimmed.size + 1) if np.array_equal(x[i : i + trimmed.size], trimmed)]
        assert starts
    else:
        assert rms(x) < 1e-6 if x.size else True


# --- normalisation ---------------------------------------------------------------------------------------------


def test_peak_normalisation_reaches_the_level() -> None:
    out = normalize_peak(tone(0.5, level=0.01), -6.0)
    assert dbfs(float(np.max(np.abs(out)))) == pytest.approx(-6.0, abs=1e-4)


def test_rms_normalisation_reaches_the_level() -> None:
    out = normalize_rms(tone(0.5, level=0.01), -20.0)
    assert dbfs(rms(out)) == pytest.approx(-20.0, abs=1e-3)


def test_rms_normalisation_never_clips() -> None:
    """A click in a long silence has a tiny RMS; raising it to -10 dBFS RMS would need a peak far above 0 dBFS."""
    click = np.zeros(RATE, np.float32)
    click[100] = 0.01
    out = normalize_rms(click, -10.0)
    assert float(np.max(np.abs(out))) == pytest.approx(1.0, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(x=clips, level=st.floats(-60.0, 0.0))
def test_normalisation_is_finite_and_never_divides_by_zero(x: npt.NDArray[np.floating], level: float) -> None:
    with np.errstate(divide="raise", invalid="raise", over="raise"):  # underflow to 0 is harmless
        peak, by_rms = normalize_peak(x, level), normalize_rms(x, level)
    for out in (peak, by_rms):
        assert out.dtype == x.dtype and out.shape == x.shape and np.all(np.isfinite(out))
        assert float(np.max(np.abs(out), initial=0.0)) <= 1.0 + 1e-6
    if float(np.max(np.abs(x), initial=0.0)) <= 1e-9:
        assert not peak.any() and not by_rms.any()  # silence stays silence
    else:
        assert dbfs(float(np.max(np.abs(peak)))) == pytest.approx(level, abs=1e-3)
        assert dbfs(rms(by_rms)) <= level + 1e-3


# --- the whole preparation -------------------------------------------------------------------------------------


def test_preprocess_resamples_trims_and_normalises() -> None:
    rate_in = 44_100
    word = tone(0.4, level=0.02, rate=rate_in)
    clip = np.concatenate([np.zeros(rate_in, np.float32), word, np.zeros(rate_in, np.float32)])
    out = preprocess(clip, rate_in, RATE, PreprocessConfig())
    assert out.dtype == np.float32
    assert abs(out.size - int(0.4 * RATE)) <= 2 * RATE // 100  # the word and its 5 ms pads
    assert dbfs(float(np.max(np.abs(out)))) == pytest.approx(DEFAULT_PEAK_DBFS, abs=1e-3)


def test_preprocess_off_is_only_resampling() -> None:
    clip = np.concatenate([np.zeros(RATE, np.float32), tone(0.4, level=0.02)])
    off = PreprocessConfig(trim=False, normalize="none")
    np.testing.assert_array_equal(preprocess(clip, RATE, RATE, off), clip)


@settings(max_examples=100, deadline=None)
@given(x=clips.map(lambda a: a.astype(np.float32)))
def test_preprocess_never_empties_a_clip(x: npt.NDArray[np.float32]) -> None:
    """Digital silence trims to nothing, but it is still a clip to classify: it is sent whole."""
    out = preprocess(x, RATE, RATE, PreprocessConfig())
    assert (out.size > 0) == (x.size > 0) and np.all(np.isfinite(out))


def test_classify_options_default_to_the_training_recipe() -> None:
    args = cli.build_parser([]).parse_args(["classify", "a.wav"])
    assert PreprocessConfig(trim=args.trim, normalize=args.normalize, level_dbfs=args.level_dbfs) == PreprocessConfig()
    args = cli.build_parser([]).parse_args(["classify", "--no-trim", "--normalize", "rms", "--level-dbfs", "-20", "a"])
    assert (args.trim, args.normalize, args.level_dbfs) == (False, "rms", -20.0)
    with pytest.raises(SystemExit):
        cli.build_parser([]).parse_args(["classify", "--level-dbfs", "3", "a.wav"])
