"""Audio in and out: PCM bytes <-> float samples, audio files, resampling, level preprocessing.

Shared by the server (decoding stream chunks), the client (reading any WAV) and the data pipeline.
Samples inside Hark are always mono float32 in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

FloatArray = npt.NDArray[np.float32]

PCM_S16LE = "pcm_s16le"
PCM_F32LE = "pcm_f32le"
BYTES_PER_SAMPLE = {PCM_S16LE: 2, PCM_F32LE: 4}
SUPPORTED_SAMPLE_RATES = (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)


class AudioError(ValueError):
    """Audio that cannot be used, with a message a person can act on."""


def decode_pcm(data: bytes, encoding: str) -> FloatArray:
    """Little-endian PCM bytes to float32 samples in [-1, 1]. Rejects partial samples and non-finite floats."""
    width = BYTES_PER_SAMPLE.get(encoding)
    if width is None:
        raise AudioError(f"unsupported encoding {encoding!r}; use one of {sorted(BYTES_PER_SAMPLE)}")
    if len(data) % width:
        raise AudioError(f"{len(data)} bytes is not a whole number of {width}-byte {encoding} samples")
    if encoding == PCM_S16LE:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise AudioError("float audio contains NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)


MAX_CHANNELS = 8


def check_channels(channels: int) -> int:
    """The channel count of interleaved PCM: 0 (unset) means mono; more than :data:`MAX_CHANNELS` is refused."""
    if channels == 0:
        return 1
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{channels} channels are not supported; send 1 to {MAX_CHANNELS} interleaved channels")
    return channels


def mix_down(samples: FloatArray, channels: int) -> FloatArray:
    """Interleaved samples of ``channels`` channels to mono (their mean), so stereo sent as such is heard
    as one signal instead of as mono at twice the rate (hostile clients: wrong answers, no error)."""
    if channels == 1:
        return samples
    if samples.size % channels:
        raise AudioError(f"{samples.size} samples is not a whole number of frames of {channels} interleaved channels")
    mono: FloatArray = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return mono


def encode_pcm(samples: npt.ArrayLike, encoding: str = PCM_S16LE) -> bytes:
    """Float samples in [-1, 1] to little-endian PCM bytes (clipping, rounding to nearest for int16)."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    if encoding == PCM_S16LE:
        return np.round(x * 32767).astype("<i2").tobytes()
    if encoding == PCM_F32LE:
        return x.astype("<f4").tobytes()
    raise AudioError(f"unsupported encoding {encoding!r}")


def check_sample_rate(rate: int) -> int:
    if rate not in SUPPORTED_SAMPLE_RATES:
        raise AudioError(
            f"sample rate {rate} Hz is not supported; use one of {', '.join(map(str, SUPPORTED_SAMPLE_RATES))}"
        )
    return rate


def resample(samples: FloatArray, rate_in: int, rate_out: int) -> FloatArray:
    """High-quality resampling (soxr); a no-op when the rates match."""
    if rate_in == rate_out:
        return samples
    return np.asarray(soxr.resample(samples, rate_in, rate_out, quality="HQ"), dtype=np.float32)


class StreamResampler:
    """Resamples a stream chunk by chunk with soxr's streaming state, so chunk edges leave no clicks."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.passthrough = rate_in == rate_out
        self._stream = None if self.passthrough else soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32")

    def process(self, samples: FloatArray, last: bool = False) -> FloatArray:
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples, last=last), dtype=np.float32)


def read_audio(path: Path | str, target_rate: int) -> FloatArray:
    """Read any file libsndfile can (WAV 8/16/24/32-bit int or float, FLAC, ...), mix to mono, resample.

    Raises :class:`AudioError` for a file that is missing, truncated or not audio.
    """
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"cannot read {path} as audio: {e}") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path} contains NaN or infinite samples")
    return resample(np.ascontiguousarray(mono), int(rate), target_rate)


def rms_dbfs(samples: FloatArray) -> float:
    """Root-mean-square level in dB relative to full scale; -inf dB is reported as -120."""
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(-120.0, 20.0 * np.log10(rms)) if rms > 0 else -120.0
