"""Synthetic background noise, and mixing it under speech at a chosen signal-to-noise ratio.

No noise corpus can be downloaded where the data set is built, so every background is generated here:
coloured noise (white, pink, brown) shaped in the frequency domain, mains hum with harmonics, band-limited
noise and a babble-like mix of pseudo-talkers. Every generator returns float64 samples of unit RMS, so the
level is set in exactly one place (:func:`mix_at_snr` or the caller's peak normalisation).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

NOISE_KINDS: tuple[str, ...] = ("white", "pink", "brown", "hum", "band", "babble")
"""Every kind :func:`make_noise` knows, in a fixed order (the data plan draws from it by index)."""

HIGHPASS_HZ = 20.0
"""Energy below the frontend's lowest Mel band would count towards the SNR yet be invisible to the model."""

_EPS = 1e-12


def power(x: npt.ArrayLike) -> float:
    """Mean square of the samples; 0 for an empty array."""
    a = np.asarray(x, dtype=np.float64)
    return float(np.mean(np.square(a))) if a.size else 0.0


def unit_rms(x: FloatArray) -> FloatArray:
    """Scale to RMS 1; an all-zero signal stays all-zero instead of turning into NaN."""
    rms = math.sqrt(power(x))
    return x / rms if rms > _EPS else np.zeros_like(x)


def _spectral_shape(white: FloatArray, gain: FloatArray) -> FloatArray:
    """Multiply the spectrum of ``white`` by ``gain`` (one value per rFFT bin) and return unit-RMS audio."""
    spectrum = np.fft.rfft(white) * gain
    return unit_rms(np.fft.irfft(spectrum, n=white.size))


def colored_noise(
    n: int, exponent: float, rng: np.random.Generator, sample_rate: int = 16_000, highpass_hz: float = HIGHPASS_HZ
) -> FloatArray:
    """Noise whose power spectral density falls as ``1/f**exponent``: 0 white, 1 pink, 2 brown.

    Shaped by FFT so the slope is exact over the whole band; bins below ``highpass_hz`` are removed.
    """
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    gain = np.zeros_like(freqs)
    audible = freqs >= max(highpass_hz, _EPS)
    gain[audible] = freqs[audible] ** (-exponent / 2.0)
    return _spectral_shape(rng.standard_normal(n), gain)


def band_noise(n: int, rng: np.random.Generator, sample_rate: int = 16_000) -> FloatArray:
    """White noise kept only within one random band (a fan, a road, a hiss), with soft band edges."""
    nyquist = sample_rate / 2
    low = float(rng.uniform(80.0, 2_000.0))
    high = min(low * float(rng.uniform(1.5, 8.0)), nyquist * 0.98)
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    width = 0.15 * (high - low) + 1.0
    gain = 1.0 / (1.0 + np.exp(-(freqs - low) / width)) / (1.0 + np.exp((freqs - high) / width))
    return _spectral_shape(rng.standard_normal(n), gain)


def hum_noise(n: int, rng: np.random.Generator, sample_rate: int = 16_000) -> FloatArray:
    """Mains hum: 50 or 60 Hz and its harmonics with random levels and a slight drift, over a faint hiss."""
    t = np.arange(n) / sample_rate
    mains = float(rng.choice([50.0, 60.0])) * (1.0 + float(rng.uniform(-0.005, 0.005)))
    hum = np.zeros(n)
    for harmonic in range(1, int(rng.integers(3, 11))):
        level = float(rng.uniform(0.2, 1.0)) / harmonic ** float(rng.uniform(0.3, 1.5))
        hum += level * np.sin(2 * np.pi * mains * harmonic * t + float(rng.uniform(0, 2 * np.pi)))
    hiss = colored_noise(n, float(rng.uniform(0.0, 1.0)), rng, sample_rate)
    return unit_rms(unit_rms(hum) + hiss * 10 ** (float(rng.uniform(-40.0, -15.0)) / 20))


def _syllable(n: int, rng: np.random.Generator, sample_rate: int) -> FloatArray:
    """One vowel-like syllable: a gliding glottal sawtooth, shaped by three random formants, faded in and out."""
    t = np.arange(n) / sample_rate
    f0 = float(rng.uniform(85.0, 260.0)) * (1.0 + float(rng.uniform(-0.15, 0.15)) * t / max(t[-1], _EPS))
    source = 2.0 * ((np.cumsum(f0) / sample_rate + float(rng.uniform(0.0, 1.0))) % 1.0) - 1.0
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    formants = (rng.uniform(300, 900), rng.uniform(900, 2_400), rng.uniform(2_300, 3_300))
    gain = np.sum([np.exp(-0.5 * ((freqs - f) / (0.1 * f)) ** 2) for f in formants], axis=0) + 0.01
    gain[freqs < HIGHPASS_HZ] = 0.0
    return unit_rms(np.fft.irfft(np.fft.rfft(source) * gain, n=n)) * np.hanning(n)


def _pseudo_talker(n: int, rng: np.random.Generator, sample_rate: int) -> FloatArray:
    """One voice-like stream: syllables of 80-300 ms with short gaps and the occasional pause."""
    out = np.zeros(n)
    cursor = -int(rng.integers(0, sample_rate // 2))
    while cursor < n:
        length = int(rng.uniform(0.08, 0.3) * sample_rate)
        syllable = _syllable(length, rng, sample_rate) * float(rng.uniform(0.4, 1.0))
        lo, hi = max(cursor, 0), min(cursor + length, n)
        if hi > lo:
            out[lo:hi] += syllable[lo - cursor : hi - cursor]
        pause = rng.uniform(0.2, 0.6) if rng.random() < 0.15 else rng.uniform(0.0, 0.08)
        cursor += length + int(pause * sample_rate)
    return unit_rms(out)


def babble_noise(n: int, rng: np.random.Generator, sample_rate: int = 16_000) -> FloatArray:
    """A crowd-like murmur: several pseudo-talkers at random levels (speech-shaped, never real words)."""
    talkers = [
        _pseudo_talker(n, rng, sample_rate) * float(rng.uniform(0.3, 1.0)) for _ in range(int(rng.integers(3, 8)))
    ]
    return unit_rms(np.sum(talkers, axis=0))


def make_noise(kind: str, n: int, rng: np.random.Generator, sample_rate: int = 16_000) -> FloatArray:
    """``n`` samples of unit-RMS noise of the named kind (one of :data:`NOISE_KINDS`)."""
    if kind == "white":
        return colored_noise(n, 0.0, rng, sample_rate)
    if kind == "pink":
        return colored_noise(n, 1.0, rng, sample_rate)
    if kind == "brown":
        return colored_noise(n, 2.0, rng, sample_rate)
    if kind == "hum":
        return hum_noise(n, rng, sample_rate)
    if kind == "band":
        return band_noise(n, rng, sample_rate)
    if kind == "babble":
        return babble_noise(n, rng, sample_rate)
    raise ValueError(f"unknown noise kind {kind!r}; use one of {', '.join(NOISE_KINDS)}")


def noise_gain_for_snr(signal_power: float, noise_power: float, snr_db: float) -> float:
    """The factor on the noise that puts it ``snr_db`` below the signal; 0 when either side is silent."""
    if signal_power <= _EPS or noise_power <= _EPS:
        return 0.0
    return math.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))


def mix_at_snr(signal: FloatArray, noise: FloatArray, snr_db: float, signal_power: float | None = None) -> FloatArray:
    """Add ``noise`` under ``signal`` so that ``10*log10(signal_power / noise_power) == snr_db``.

    ``signal_power`` defaults to the power of the whole signal; pass the power of the spoken part alone
    when the signal is mostly padding, so the SNR describes the word and not the clip length.
    """
    if signal.shape != noise.shape:
        raise ValueError(f"signal {signal.shape} and noise {noise.shape} differ in shape")
    p_signal = power(signal) if signal_power is None else signal_power
    return signal + noise * noise_gain_for_snr(p_signal, power(noise), snr_db)
