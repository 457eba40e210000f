"""Speaker, room and channel variety applied to synthetic speech before it is mixed with noise.

A synthesizer speaks from nowhere into nothing; a person speaks from a body of some size, in a room, into
a microphone and sometimes down a phone line. Each clip gets a random draw of:

* **vocal tract length**: resampling by a factor moves pitch and formants together, as a smaller or larger
  speaker would (VTLP in the waveform domain);
* **room**: an image-source impulse response of a random shoebox room (``pyroomacoustics``), or none;
* **microphone and channel**: a random tilt and a couple of peaking bands, a band limit, or the 300-3400 Hz
  telephone band through 8 kHz with mu-law quantisation.

:func:`degrade` returns the processed audio and a short description that the manifest records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import butter, fftconvolve, sosfilt

from hark.core.audio import resample

FloatArray = npt.NDArray[np.float64]
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class ChannelConfig:
    """How often each kind of degradation is drawn."""

    tract_prob: float = 0.6
    tract_range: tuple[float, float] = (0.88, 1.15)
    room_prob: float = 0.4
    eq_prob: float = 0.5
    telephone_prob: float = 0.1
    bandlimit_prob: float = 0.15


def vocal_tract(audio: FloatArray, factor: float) -> FloatArray:
    """Scale pitch and formants by ``factor`` (>1: a smaller speaker), changing duration by ``1/factor``."""
    n = max(1, round(audio.size / factor))
    return np.interp(np.linspace(0.0, audio.size - 1.0, n), np.arange(audio.size), audio)


def room_response(rng: np.random.Generator) -> tuple[FloatArray, str]:
    """The impulse response of a random furnished room from source to microphone, and its description."""
    import pyroomacoustics as pra

    size = np.array([rng.uniform(2.5, 8.0), rng.uniform(2.5, 6.0), rng.uniform(2.3, 3.2)])
    absorption = float(rng.uniform(0.15, 0.7))
    room = pra.ShoeBox(size, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=12)
    source = rng.uniform([0.3, 0.3, 1.0], size - [0.3, 0.3, 1.0])
    mic = rng.uniform([0.3, 0.3, 0.7], size - [0.3, 0.3, 1.0])
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    distance = float(np.linalg.norm(source - mic))
    return rir / (np.max(np.abs(rir)) + 1e-12), f"room{size[0]:.0f}x{size[1]:.0f}a{absorption:.2f}d{distance:.1f}"


def reverberate(audio: FloatArray, rir: FloatArray) -> FloatArray:
    """``audio`` heard through ``rir``, aligned on the direct path and cut to the dry length plus the tail."""
    onset = int(np.argmax(np.abs(rir)))
    wet = fftconvolve(audio, rir)[onset : onset + audio.size + rir.size // 2]
    return np.asarray(wet, dtype=np.float64)


def random_eq(audio: FloatArray, rng: np.random.Generator) -> tuple[FloatArray, str]:
    """A microphone colour: a spectral tilt plus two random peaking bands, applied in the frequency domain."""
    spectrum = np.fft.rfft(audio)
    freqs = np.fft.rfftfreq(audio.size, 1.0 / SAMPLE_RATE)
    octaves = np.log2(np.maximum(freqs, 50.0) / 1000.0)
    tilt = float(rng.uniform(-3.0, 3.0))
    gain_db = tilt * octaves
    for _ in range(2):
        centre, width, gain = rng.uniform(np.log2(0.2), np.log2(6.0)), rng.uniform(0.3, 1.5), rng.uniform(-9, 9)
        gain_db = gain_db + gain * np.exp(-0.5 * ((octaves - centre) / width) ** 2)
    out = np.fft.irfft(spectrum * 10.0 ** (gain_db / 20.0), n=audio.size)
    return np.asarray(out, dtype=np.float64), f"eq{tilt:+.0f}"


def band_limit(audio: FloatArray, low_hz: float, high_hz: float) -> FloatArray:
    sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return np.asarray(sosfilt(sos, audio), dtype=np.float64)


def telephone(audio: FloatArray) -> FloatArray:
    """300-3400 Hz, down to 8 kHz, 8-bit mu-law, and back up: a narrow-band phone call."""
    narrow = resample(band_limit(audio, 300.0, 3400.0).astype(np.float32), SAMPLE_RATE, 8000).astype(np.float64)
    peak = float(np.max(np.abs(narrow))) or 1.0
    x = np.clip(narrow / peak, -1.0, 1.0)
    mu = 255.0
    coded = np.round(np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) * 127.0) / 127.0
    decoded = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu * peak
    return resample(decoded.astype(np.float32), 8000, SAMPLE_RATE).astype(np.float64)


def degrade(
    audio: FloatArray, rng: np.random.Generator, config: ChannelConfig = ChannelConfig()
) -> tuple[FloatArray, str]:
    """``audio`` through a random speaker size, room and channel; the description lists what was applied."""
    steps: list[str] = []
    out = audio
    if out.size == 0:
        return out, "dry"
    if rng.random() < config.tract_prob:
        factor = float(rng.uniform(*config.tract_range))
        out = vocal_tract(out, factor)
        steps.append(f"vtlp{factor:.2f}")
    if rng.random() < config.room_prob:
        rir, name = room_response(rng)
        out = reverberate(out, rir)
        steps.append(name)
    roll = rng.random()
    if roll < config.telephone_prob:
        out = telephone(out)
        steps.append("telephone")
    elif roll < config.telephone_prob + config.bandlimit_prob:
        low, high = float(rng.uniform(60, 250)), float(rng.uniform(3500, 7500))
        out = band_limit(out, low, high)
        steps.append(f"band{low:.0f}-{high:.0f}")
    if rng.random() < config.eq_prob:
        out, name = random_eq(out, rng)
        steps.append(name)
    return out, "+".join(steps) or "dry"
