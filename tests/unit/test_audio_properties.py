"""Properties of audio decoding, for any input: the edge where untrusted bytes become samples.

Whatever a client sends, decoding either refuses it with :class:`AudioError` (a clear message, mapped to
INVALID_ARGUMENT) or yields finite float32 samples in [-1, 1], never anything else; encoding and decoding
agree; chunk boundaries change nothing; and a file of any bytes is read or refused, never crashes.
"""

from __future__ import annotations

import io
import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hark.client import read_clip
from hark.core.audio import (
    BYTES_PER_SAMPLE,
    PCM_F32LE,
    PCM_S16LE,
    SUPPORTED_SAMPLE_RATES,
    AudioError,
    StreamResampler,
    check_sample_rate,
    decode_pcm,
    encode_pcm,
    read_audio,
)

ENCODINGS = st.sampled_from([PCM_S16LE, PCM_F32LE])
unit_floats = hnp.arrays(
    np.float32, st.integers(0, 2_000), elements=st.floats(-1.0, 1.0, width=32, allow_subnormal=False)
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4_096), encoding=ENCODINGS)
def test_any_bytes_decode_to_finite_unit_samples_or_a_clear_refusal(data: bytes, encoding: str) -> None:
    try:
        samples = decode_pcm(data, encoding)
    except AudioError as e:
        assert str(e)  # a message a person can act on
        return
    assert samples.dtype == np.float32
    assert samples.size == len(data) // BYTES_PER_SAMPLE[encoding]
    assert np.all(np.isfinite(samples))
    assert np.all((samples >= -1.0) & (samples <= 1.0))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1_024))
def test_only_partial_samples_or_non_finite_floats_are_refused(data: bytes) -> None:
    """s16 refuses exactly the odd byte counts; f32 refuses partial samples and NaN/Inf, nothing else."""
    assert (len(data) % 2 != 0) == _refused(data, PCM_S16LE)
    partial = len(data) % 4 != 0
    non_finite = not partial and not np.all(np.isfinite(np.frombuffer(data, "<f4")))
    assert (partial or non_finite) == _refused(data, PCM_F32LE)


def _refused(data: bytes, encoding: str) -> bool:
    try:
        decode_pcm(data, encoding)
    except AudioError:
        return True
    return False


@settings(max_examples=200, deadline=None)
@given(samples=unit_floats)
def test_int16_round_trip_is_within_one_step(samples: np.ndarray) -> None:
    decoded = decode_pcm(encode_pcm(samples, PCM_S16LE), PCM_S16LE)
    assert decoded.shape == samples.shape
    # Encoding scales by 32767 and decoding by 1/32768: half a step of rounding plus the scale mismatch.
    np.testing.assert_allclose(decoded, samples, atol=1.5 / 32767, rtol=0)


@settings(max_examples=200, deadline=None)
@given(samples=unit_floats)
def test_float32_round_trip_is_exact(samples: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_pcm(encode_pcm(samples, PCM_F32LE), PCM_F32LE), samples)


@settings(max_examples=200, deadline=None)
@given(
    samples=hnp.arrays(np.float32, st.integers(0, 500), elements=st.floats(-1e6, 1e6, width=32)),
    encoding=ENCODINGS,
)
def test_encoding_clips_to_full_scale(samples: np.ndarray, encoding: str) -> None:
    assert encode_pcm(samples, encoding) == encode_pcm(np.clip(samples, -1, 1), encoding)
    assert np.all(np.abs(decode_pcm(encode_pcm(samples, encoding), encoding)) <= 1.0)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), encoding=ENCODINGS)
def test_chunk_boundaries_change_nothing(data: st.DataObject, encoding: str) -> None:
    """Decoding chunk by chunk (cut on sample boundaries, as the server receives them) equals decoding once."""
    width = BYTES_PER_SAMPLE[encoding]
    samples = data.draw(unit_floats)
    pcm = encode_pcm(samples, encoding)
    cuts = sorted(data.draw(st.lists(st.integers(0, samples.size), max_size=8)))
    pieces = [pcm[a * width : b * width] for a, b in zip([0, *cuts], [*cuts, samples.size], strict=True)]
    joined = np.concatenate([decode_pcm(p, encoding) for p in pieces]) if pieces else np.zeros(0, np.float32)
    np.testing.assert_array_equal(joined, decode_pcm(pcm, encoding))


@settings(max_examples=300, deadline=None)
@given(rate=st.integers(0, 2**32 - 1))
def test_only_supported_rates_pass_whatever_the_uint32(rate: int) -> None:
    if rate in SUPPORTED_SAMPLE_RATES:
        assert check_sample_rate(rate) == rate
    else:
        with pytest.raises(AudioError, match=f"{rate} Hz is not supported"):
            check_sample_rate(rate)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([r for r in SUPPORTED_SAMPLE_RATES if r != 16_000]),
    n=st.integers(1_000, 8_000),
    cuts=st.lists(st.integers(1, 7_999), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_streaming_resampler_is_finite_bounded_and_independent_of_chunking(
    rate: int, n: int, cuts: list[int], seed: int
) -> None:
    samples = (np.random.default_rng(seed).standard_normal(n) * 0.3).clip(-1, 1).astype(np.float32)
    bounds = [0, *sorted(c for c in cuts if c < n), n]

    def run(pieces: list[np.ndarray]) -> np.ndarray:
        resampler = StreamResampler(rate, 16_000)
        out = [resampler.process(p) for p in pieces]
        out.append(resampler.process(np.zeros(0, np.float32), last=True))
        return np.concatenate(out)

    whole = run([samples])
    chunked = run([samples[a:b] for a, b in itertools.pairwise(bounds)])
    assert abs(whole.size - round(n * 16_000 / rate)) <= 2
    assert np.all(np.isfinite(whole)) and np.max(np.abs(whole), initial=0.0) < 2.0
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


WAV_HEADER = io.BytesIO()
sf.write(WAV_HEADER, np.zeros(16, np.int16), 16_000, format="WAV", subtype="PCM_16")


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(max_size=2_048),
    prefix=st.sampled_from([b"", WAV_HEADER.getvalue()[:44], WAV_HEADER.getvalue()[:12], b"fLaC", b"OggS"]),
)
def test_a_file_of_any_bytes_is_read_or_refused(payload: bytes, prefix: bytes) -> None:
    """What ``hark classify`` and ``hark stream`` do with any file: finite samples or an AudioError."""
    assume(prefix or payload)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        path.write_bytes(prefix + payload)
        for read in (read_clip, read_audio):
            try:
                samples = read(path, 16_000)
            except AudioError as e:
                assert str(path) in str(e)
                continue
            assert samples.dtype == np.float32 and samples.ndim == 1
            assert np.all(np.isfinite(samples))
