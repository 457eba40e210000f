"""The keyword data set: spoken words synthesised with espeak-ng, mixed with generated noise, split by voice.

``hark data build`` writes ``<out>/<label>/<index>_<voice>.wav`` (16 kHz mono 16-bit PCM, exactly 1.0 s) and
``<out>/manifest.csv`` whose first columns are ``path,label,split,voice,source``. The labels are the twelve
classes of the Speech Commands benchmark (:data:`LABELS`).

Why it is built this way:

* Only espeak-ng's own formant voices speak (the ``gmw/en*`` accents combined with the ``+variant`` files in
  ``espeak-ng-data/voices/!v``); MBROLA voices and every other synthesizer are kept out, so the data holds no
  third-party voice recordings.
* Splits are by *variant*: a variant heard in validation or test is never heard in training with any accent,
  so the held-out figures measure generalisation to unheard voices rather than memorised timbre.
* ``_unknown_`` holds other words, near-misses among them ("yet", "note", "top"...), so the model learns the
  boundary; words that espeak-ng pronounces exactly like a keyword ("know", "write") are dropped, as they
  would teach contradictory labels. ``_silence_`` clips are pure generated noise; their ``voice`` is
  ``noise-<split>`` and their ``source`` is ``noise``.
* Everything random is drawn from ``--seed``: the plan in the parent process, each clip's noise and placement
  from ``(seed, index)`` in whichever worker renders it, so the output does not depend on ``--workers``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt
import soundfile as sf
from tqdm import tqdm

from hark.core.audio import resample
from hark.core.preprocess import normalize_peak, trim_silence
from hark_training.engines import NON_COMMERCIAL
from hark_training.features import clip_labels
from hark_training.noise import NOISE_KINDS, make_noise, mix_at_snr, power

FloatArray = npt.NDArray[np.float64]

KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
LABELS: tuple[str, ...] = (*KEYWORDS, SILENCE, UNKNOWN)
SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # exactly 1.0 s
MAX_WORD_SAMPLES = int(0.95 * SAMPLE_RATE)
DEFAULT_OUT = Path("data/keywords")
DEFAULT_PER_CLASS = 1000
"""About 12,500 clips: each training voice says each keyword about once more, under new prosody and noise."""
UNKNOWN_RATIO = 1.5
"""``_unknown_`` clips per keyword clip: enough variety of other words without drowning the keywords."""

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "split", "voice", "source")
EXTRA_COLUMNS: tuple[str, ...] = (
    "text",
    "accent",
    "variant",
    "speed",
    "pitch",
    "pitch_range",
    "emphasis",
    "start_s",
    "end_s",
    "noise",
    "snr_db",
    "gain_db",
)
SOURCE_SPEECH = "espeak-ng"
SOURCE_NOISE = "noise"

ACCENTS: dict[str, str] = {
    "en": "gmw/en",
    "en-us": "gmw/en-US",
    "en-gb-scotland": "gmw/en-GB-scotland",
    "en-gb-x-gbclan": "gmw/en-GB-x-gbclan",
    "en-gb-x-rp": "gmw/en-GB-x-rp",
    "en-gb-x-gbcwmd": "gmw/en-GB-x-gbcwmd",
    "en-029": "gmw/en-029",
    "en-us-nyc": "gmw/en-US-nyc",
}
"""Accent -> espeak-ng's own voice file. Synthesis names the file, never the language: a language name may
resolve to an MBROLA voice, and some (``en-gb+m3``) silently drop the variant."""

SPEECH_COMMANDS_OTHER_WORDS: tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
    "backward", "forward", "follow", "learn", "visual",
)  # fmt: skip
NEAR_MISS_WORDS: tuple[str, ...] = (
    "yet", "yell", "yellow", "yeah", "less", "guess", "yesterday",
    "note", "nose", "now", "snow", "nope", "noon", "nobody",
    "cup", "pup", "us", "hop", "upper",
    "town", "brown", "clown", "dawn", "done", "downtown",
    "light", "lift", "leaf", "lefty", "loft",
    "ride", "rice", "bright", "night", "white", "rate",
    "own", "of", "in", "an", "only",
    "oft", "cough", "often", "offer",
    "stock", "top", "shop", "step", "stuck", "spot",
    "goat", "ago", "goal", "code", "grow", "glow", "gopher",
)  # fmt: skip
OTHER_WORDS: tuple[str, ...] = (
    "hello", "water", "music", "table", "paper", "orange", "window", "coffee", "morning", "thank",
    "please", "lamp", "open", "close", "play", "pause", "next", "back", "turn", "call",
    "help", "wait", "start", "more", "fine", "good", "time", "day", "way", "car",
)  # fmt: skip
UNKNOWN_WORDS: tuple[str, ...] = tuple(dict.fromkeys((*SPEECH_COMMANDS_OTHER_WORDS, *NEAR_MISS_WORDS, *OTHER_WORDS)))
"""Words for ``_unknown_``; deliberately without "know" and "write", which espeak says as "no" and "right"."""

TEXT_ENDINGS: tuple[str, ...] = ("", ".", "!", "?", ",")
"""Punctuation changes espeak-ng's intonation (statement, exclamation, question, continuation)."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9+._-]+")


@dataclass(frozen=True)
class ClipRecord:
    """One manifest row as the trainer needs it.

    ``label`` is the column as written: one class, several joined by ``;`` (a multi-label clip), or empty
    (a multi-label clip in which no class is active).
    """

    path: Path
    label: str
    split: str
    voice: str
    source: str
    engine: str = ""
    licence: str = ""
    kind: str = ""

    @property
    def labels(self) -> tuple[str, ...]:
        """The clip's classes (none for an empty label)."""
        return clip_labels(self.label)


@dataclass(frozen=True)
class TrainingSelection:
    """What a run leaves out of the train split: whole engines, kinds of clip (the manifest's ``kind``: ``word``,
    ``sentence``, ``free``, ``noise``) and, with ``commercial_only``, non-commercial material. Val and test keep
    every clip, so runs that differ only in what they train on are measured on the same clips."""

    exclude_engines: tuple[str, ...] = ()
    commercial_only: bool = False
    exclude_kinds: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        """Whether the selection leaves anything out."""
        return bool(self.exclude_engines or self.commercial_only or self.exclude_kinds)

    def keeps(self, split: str, engine: str, licence: str, kind: str = "") -> bool:
        if split != "train":
            return True
        return (
            engine not in self.exclude_engines
            and kind not in self.exclude_kinds
            and not (self.commercial_only and NON_COMMERCIAL in licence)
        )

    def check(self, records: Sequence[ClipRecord]) -> None:
        """Refuses engines or kinds the data set does not have: a misspelt name would leave nothing out and the
        run would pass for a leave-one-out run."""
        for what, names, present in (
            ("engines", self.exclude_engines, {r.engine for r in records}),
            ("kinds", self.exclude_kinds, {r.kind for r in records}),
        ):
            if missing := sorted(set(names) - present):
                has = ", ".join(sorted(present - {""})) or "none named"
                raise ValueError(f"the data set has no {what} {', '.join(missing)} to leave out (it has: {has})")


EVERY_CLIP = TrainingSelection()


def training_selection(
    read: Callable[[Path], Sequence[ClipRecord]], selection: TrainingSelection
) -> Callable[[Path], list[ClipRecord]]:
    """``read`` less the training clips ``selection`` leaves out (after checking it names what the data has)."""

    def selected(path: Path) -> list[ClipRecord]:
        records = read(path)
        selection.check(records)
        return [r for r in records if selection.keeps(r.split, r.engine, r.licence, r.kind)]

    return selected


def is_background(label: str) -> bool:
    """Background classes are named ``_like_this_`` (``_silence_``, ``_unknown_``, ``_noise_``): they are
    learned and scored but never raise events. A data set chooses them by naming its classes."""
    return len(label) > 2 and label.startswith("_") and label.endswith("_")


def manifest_labels(records: Iterable[ClipRecord]) -> tuple[str, ...]:
    """The data set's classes, in order of first appearance in the manifest: the labels come from the data."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record.labels))
    return tuple(seen)


def is_multilabel(records: Iterable[ClipRecord]) -> bool:
    """True when any clip has several classes or none: such a data set trains one sigmoid per class."""
    return any(len(record.labels) != 1 for record in records)


@dataclass(frozen=True, order=True)
class Voice:
    """An espeak-ng speaker: an accent (a ``gmw/en*`` language) with a ``!v`` variant."""

    accent: str
    variant: str

    @property
    def name(self) -> str:
        """The speaker's identity in the manifest, e.g. ``en-gb-scotland+m3``."""
        return f"{self.accent}+{self.variant}"

    @property
    def espeak_name(self) -> str:
        """What ``espeak-ng -v`` gets: the voice file itself, so no MBROLA voice can stand in."""
        return f"{ACCENTS[self.accent]}+{self.variant}"


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip; planned in the parent so the data set is deterministic."""

    index: int
    label: str
    split: str
    text: str
    voice: Voice | None
    speed: int
    pitch: int
    pitch_range: int
    emphasis: bool
    noise: str
    snr_db: float | None
    gain_db: float
    seed: int

    @property
    def path(self) -> str:
        who = self.voice.name if self.voice else self.noise
        return f"{self.label}/{self.index:06d}_{_FILENAME_UNSAFE.sub('_', who)}.wav"


# --- espeak-ng -------------------------------------------------------------------------------------------------


def espeak_data_dir() -> Path:
    """Where espeak-ng keeps its voices, as the program itself reports it."""
    out = _run_espeak(["--version"]).decode()
    match = re.search(r"Data at:\s*(\S+)", out)
    if match is None:
        raise RuntimeError(f"cannot find espeak-ng's data folder in {out!r}")
    return Path(match.group(1))


def list_accents(wanted: Sequence[str] = tuple(ACCENTS), data_dir: Path | None = None) -> tuple[str, ...]:
    """The wanted accents whose espeak-ng formant voice file is installed (``lang/gmw/...``)."""
    lang = (data_dir or espeak_data_dir()) / "lang"
    return tuple(a for a in wanted if (lang / ACCENTS[a]).is_file())


def list_variants(data_dir: Path | None = None) -> tuple[str, ...]:
    """The variant files in ``voices/!v`` (their file name is what ``+variant`` selects), MBROLA-free."""
    folder = (data_dir or espeak_data_dir()) / "voices" / "!v"
    names = [
        p.name
        for p in folder.iterdir()
        if p.is_file() and "mbrola" not in p.read_text(encoding="utf-8", errors="replace").lower()
    ]
    return tuple(sorted(names))


@cache
def distinct_variants(variants: tuple[str, ...], accent: str = "en-us") -> tuple[str, ...]:
    """The variants minus those that sound exactly like an earlier one (``klatt``, ``klatt6`` and ``caleb`` do).

    A duplicate under another name could land in another split and leak a training voice into test.
    """
    seen: dict[str, str] = {}
    for variant in sorted(variants):
        voice = Voice(accent, variant)
        wav = _run_espeak(["-v", voice.espeak_name, "-s", "175", "-p", "50", "--stdout", "yes, no, stop, go"])
        seen.setdefault(hashlib.sha256(wav).hexdigest(), variant)
    return tuple(sorted(seen.values()))


def phonemes(words: Sequence[str], accent: str) -> list[str]:
    """espeak-ng's phoneme string for each word, said on its own, in one call."""
    text = "".join(f"{w}.\n" for w in words).encode()
    out = _run_espeak(["-q", "-x", "-v", ACCENTS[accent], "--stdin"], stdin=text).decode()
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if len(lines) != len(words):
        raise RuntimeError(f"espeak-ng gave {len(lines)} phoneme lines for {len(words)} words")
    return lines


def drop_homophones(words: Sequence[str], keywords: Sequence[str], accents: Sequence[str]) -> tuple[str, ...]:
    """The words that no accent pronounces exactly like a keyword (those would teach contradictory labels)."""
    clashing: set[str] = set()
    for accent in accents:
        keyword_sounds = set(phonemes(keywords, accent))
        clashing.update(w for w, p in zip(words, phonemes(words, accent), strict=True) if p in keyword_sounds)
    return tuple(w for w in words if w not in clashing)


def ssml(text: str, pitch_range: int, emphasis: bool) -> str:
    """The SSML espeak-ng reads: pitch range only exists as SSML prosody, not as a command-line option."""
    body = f"<emphasis>{escape(text)}</emphasis>" if emphasis else escape(text)
    return f'<speak><prosody range="{pitch_range:+d}%">{body}</prosody></speak>'


def synthesize(
    text: str, voice: Voice, speed: int, pitch: int, pitch_range: int = 0, emphasis: bool = False
) -> FloatArray:
    """Speak ``text`` and return float samples at :data:`SAMPLE_RATE`."""
    wav = _run_espeak(
        [
            "-m",
            "-v",
            voice.espeak_name,
            "-s",
            str(speed),
            "-p",
            str(pitch),
            "--stdout",
            ssml(text, pitch_range, emphasis),
        ]
    )
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    mono = np.ascontiguousarray(samples[:, 0])
    return resample(mono, int(rate), SAMPLE_RATE).astype(np.float64)


def _run_espeak(args: list[str], stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["espeak-ng", *args], input=stdin, capture_output=True, check=True, timeout=60)
    except FileNotFoundError as e:
        raise RuntimeError("espeak-ng is not installed; on Debian/Ubuntu: apt-get install espeak-ng") from e
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"espeak-ng {' '.join(args)} failed: {e.stderr.decode(errors='replace')}") from e
    return done.stdout


# --- signal -------------------------------------------------------------------------------------------------------


def place(word: FloatArray, offset: int, n: int = CLIP_SAMPLES) -> FloatArray:
    """The word at ``offset`` inside ``n`` samples of silence; it must fit entirely."""
    if offset < 0 or offset + word.size > n:
        raise ValueError(f"a {word.size}-sample word does not fit at offset {offset} in {n} samples")
    clip = np.zeros(n)
    clip[offset : offset + word.size] = word
    return clip


def to_int16(x: FloatArray) -> npt.NDArray[np.int16]:
    """Float samples in [-1, 1] to 16-bit PCM, rounded like :func:`hark.core.audio.encode_pcm`."""
    return np.round(np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)


# --- plan ---------------------------------------------------------------------------------------------------------


def split_variants(
    variants: Sequence[str], seed: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> dict[str, str]:
    """Assign every variant to one split, deterministically from ``seed``; each split gets at least one."""
    if len(variants) < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} voice variants to split by voice, found {len(variants)}")
    order = sorted(variants)
    np.random.default_rng([seed, 0x5A17]).shuffle(order)
    n_val = max(1, round(fractions[1] * len(order)))
    n_test = max(1, round(fractions[2] * len(order)))
    split_of = {v: "val" for v in order[:n_val]}
    split_of.update({v: "test" for v in order[n_val : n_val + n_test]})
    split_of.update({v: "train" for v in order[n_val + n_test :]})
    return split_of


def split_sequence(n: int, phase: float, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> list[str]:
    """``n`` splits in the given proportions, interleaved (a golden-ratio sequence) rather than in blocks.

    Every prefix is close to the target proportions, and different phases put a label's first clips into
    different splits, so even a tiny data set has every split populated.
    """
    edges = np.cumsum(fractions)[:-1]
    return [SPLITS[int(np.searchsorted(edges, (phase + i * _GOLDEN) % 1.0, side="right"))] for i in range(n)]


def cycle_shuffled(items: Sequence[str] | Sequence[Voice], rng: np.random.Generator) -> Iterator[int]:
    """Indices into ``items`` in endlessly repeated shuffles, so every item is used about equally often."""
    while True:
        yield from (int(i) for i in rng.permutation(len(items)))


def clip_counts(per_class: int) -> dict[str, int]:
    """Clips per label: ``per_class`` per keyword and for silence, :data:`UNKNOWN_RATIO` times that for unknown."""
    counts = dict.fromkeys(KEYWORDS, per_class)
    counts[SILENCE] = per_class
    counts[UNKNOWN] = max(1, round(UNKNOWN_RATIO * per_class))
    return counts


def plan_clips(
    per_class: int, seed: int, voices_by_split: dict[str, list[Voice]], unknown_words: Sequence[str]
) -> list[ClipSpec]:
    """Decide every clip's label, split, words, voice, prosody and noise before anything is rendered."""
    rng = np.random.default_rng(seed)
    specs: list[ClipSpec] = []
    for label_index, (label, count) in enumerate(clip_counts(per_class).items()):
        splits = split_sequence(count, phase=label_index / len(LABELS))
        voice_cycles = {s: cycle_shuffled(voices_by_split[s], rng) for s in SPLITS}
        word_cycle = cycle_shuffled(unknown_words, rng)
        for split in splits:
            index = len(specs)
            if label == SILENCE:
                near_silent = rng.random() < 0.1
                gain = rng.uniform(-90.0, -60.0) if near_silent else rng.uniform(-50.0, -6.0)
                specs.append(_noise_spec(index, split, str(rng.choice(NOISE_KINDS)), float(gain), seed))
                continue
            word = unknown_words[next(word_cycle)] if label == UNKNOWN else label
            roll = rng.random()
            noise = "none" if roll < 0.1 else str(rng.choice(NOISE_KINDS))
            snr = None if noise == "none" else float(rng.uniform(40.0, 60.0) if roll < 0.2 else rng.uniform(5.0, 40.0))
            specs.append(
                ClipSpec(
                    index=index,
                    label=label,
                    split=split,
                    text=word + str(rng.choice(TEXT_ENDINGS)),
                    voice=voices_by_split[split][next(voice_cycles[split])],
                    speed=int(rng.integers(120, 221)),
                    pitch=int(rng.integers(20, 81)),
                    pitch_range=int(rng.integers(-60, 101)),
                    emphasis=bool(rng.random() < 0.15),
                    noise=noise,
                    snr_db=snr,
                    gain_db=float(rng.uniform(-30.0, -1.0)),
                    seed=seed,
                )
            )
    return specs


def _noise_spec(index: int, split: str, kind: str, gain_db: float, seed: int) -> ClipSpec:
    return ClipSpec(index, SILENCE, split, "", None, 0, 0, 0, False, kind, None, gain_db, seed)


# --- render -------------------------------------------------------------------------------------------------------


def speak_word(spec: ClipSpec, max_samples: int = MAX_WORD_SAMPLES) -> tuple[FloatArray, int]:
    """The trimmed word and the speed it was finally said at: re-spoken faster while it is too long to fit."""
    assert spec.voice is not None
    speed = spec.speed
    for _ in range(6):
        word = trim_silence(
            synthesize(spec.text, spec.voice, speed, spec.pitch, spec.pitch_range, spec.emphasis), SAMPLE_RATE
        )
        if 0 < word.size <= max_samples:
            return word, speed
        speed = min(450, round(speed * 1.25))
    return word[:0], speed


def render_clip(spec: ClipSpec, out_dir: Path) -> dict[str, str] | None:
    """Synthesise, place, mix and write one clip; returns its manifest row, or None when it had to be skipped."""
    rng = np.random.default_rng([spec.seed, spec.index])
    start = end = 0
    speed = spec.speed
    if spec.voice is None:
        clip = make_noise(spec.noise, CLIP_SAMPLES, rng, SAMPLE_RATE)
    else:
        word, speed = speak_word(spec)
        if word.size == 0:
            return None
        start = int(rng.integers(0, CLIP_SAMPLES - word.size + 1))
        end = start + word.size
        clip = place(word, start)
        if spec.snr_db is not None:
            noise = make_noise(spec.noise, CLIP_SAMPLES, rng, SAMPLE_RATE)
            clip = mix_at_snr(clip, noise, spec.snr_db, signal_power=power(word))
    clip = normalize_peak(clip, spec.gain_db)
    target = out_dir / spec.path
    sf.write(target, to_int16(clip), SAMPLE_RATE, subtype="PCM_16")
    return _row(spec, speed, start, end)


def _row(spec: ClipSpec, speed: int, start: int, end: int) -> dict[str, str]:
    speech = spec.voice is not None
    return {
        "path": spec.path,
        "label": spec.label,
        "split": spec.split,
        "voice": spec.voice.name if spec.voice else f"noise-{spec.split}",
        "source": SOURCE_SPEECH if speech else SOURCE_NOISE,
        "text": spec.text,
        "accent": spec.voice.accent if spec.voice else "",
        "variant": spec.voice.variant if spec.voice else "",
        "speed": str(speed) if speech else "",
        "pitch": str(spec.pitch) if speech else "",
        "pitch_range": str(spec.pitch_range) if speech else "",
        "emphasis": str(int(spec.emphasis)) if speech else "",
        "start_s": f"{start / SAMPLE_RATE:.4f}" if speech else "",
        "end_s": f"{end / SAMPLE_RATE:.4f}" if speech else "",
        "noise": spec.noise,
        "snr_db": "" if spec.snr_db is None else f"{spec.snr_db:.2f}",
        "gain_db": f"{spec.gain_db:.2f}",
    }


# --- manifest -----------------------------------------------------------------------------------------------------


def write_manifest(rows: Iterable[dict[str, str]], path: Path) -> None:
    """Write the manifest atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*MANIFEST_COLUMNS, *EXTRA_COLUMNS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_manifest(path: Path) -> list[ClipRecord]:
    """The manifest's clips with absolute paths; raises ValueError on a malformed manifest.

    Any label is accepted (the data set defines its classes, :func:`manifest_labels`); the split must be one
    of :data:`SPLITS`.
    """
    path = Path(path)
    root = path.resolve().parent
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = tuple(reader.fieldnames or ())
        if header[: len(MANIFEST_COLUMNS)] != MANIFEST_COLUMNS:
            raise ValueError(f"{path}: columns must start with {','.join(MANIFEST_COLUMNS)}, found {','.join(header)}")
        records = []
        for line, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise ValueError(f"{path}:{line}: unknown split {row['split']!r}; use one of {', '.join(SPLITS)}")
            if row["path"] is None or row["label"] is None:
                raise ValueError(f"{path}:{line}: the row has fewer columns than the header")
            records.append(
                ClipRecord(
                    root / row["path"],
                    row["label"],
                    row["split"],
                    row["voice"],
                    row["source"],
                    row.get("engine") or row["source"],
                    row.get("licence") or "",
                    row.get("kind") or "",
                )
            )
    return records


# --- build --------------------------------------------------------------------------------------------------------


def discover_voices(seed: int) -> dict[str, list[Voice]]:
    """Every accent x variant, grouped by the split its variant belongs to."""
    accents = list_accents()
    if not accents:
        raise RuntimeError("espeak-ng offers none of the English formant voices; is espeak-ng-data installed?")
    split_of = split_variants(distinct_variants(list_variants()), seed)
    return {s: [Voice(a, v) for v in sorted(split_of) if split_of[v] == s for a in accents] for s in SPLITS}


def _clear_wavs(out_dir: Path) -> None:
    """Remove WAVs a previous build left in the label folders, so the folder matches the new manifest."""
    for label in LABELS:
        for old in (out_dir / label).glob("*.wav"):
            old.unlink()


def build_dataset(
    out_dir: Path, per_class: int = DEFAULT_PER_CLASS, seed: int = 0, workers: int = 2, progress: bool = True
) -> Path:
    """Build the whole data set into ``out_dir`` and return the path of its manifest."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if seed < 0:
        raise ValueError(f"seed must not be negative, got {seed}")
    out_dir = Path(out_dir)
    voices = discover_voices(seed)
    accents = sorted({v.accent for vs in voices.values() for v in vs})
    specs = plan_clips(per_class, seed, voices, drop_homophones(UNKNOWN_WORDS, KEYWORDS, accents))
    for label in LABELS:
        (out_dir / label).mkdir(parents=True, exist_ok=True)
    _clear_wavs(out_dir)
    render = partial(render_clip, out_dir=out_dir)
    bar = partial(tqdm, total=len(specs), desc="clips", unit="clip", disable=not progress)
    if workers <= 1:
        rows = list(bar(map(render, specs)))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(bar(pool.map(render, specs, chunksize=16)))
    manifest = out_dir / MANIFEST_NAME
    write_manifest((r for r in rows if r is not None), manifest)
    return manifest


def summarize(records: Sequence[ClipRecord]) -> str:
    """A table of clips per label and split, and how many distinct speakers each split holds."""
    counts = Counter((label, r.split) for r in records for label in (r.labels or ("(none)",)))
    labels = [*manifest_labels(records), *(["(none)"] if any(not r.labels for r in records) else [])]
    width = max((len(label) for label in labels), default=5) + 2
    lines = [f"{'label':<{width}}" + "".join(f"{s:>8}" for s in (*SPLITS, "total"))]
    for label in labels:
        cells = [counts[label, s] for s in SPLITS]
        lines.append(f"{label:<{width}}" + "".join(f"{c:>8}" for c in (*cells, sum(cells))))
    totals = [sum(1 for r in records if r.split == s) for s in SPLITS]
    lines.append(f"{'total':<{width}}" + "".join(f"{c:>8}" for c in (*totals, sum(totals))))
    speakers = {s: {r.voice for r in records if r.split == s and r.source == SOURCE_SPEECH} for s in SPLITS}
    variants = {s: {v.rsplit("+", 1)[-1] for v in speakers[s]} for s in SPLITS}
    lines.append(f"{'voices':<{width}}" + "".join(f"{len(speakers[s]):>8}" for s in SPLITS))
    lines.append(f"{'variants':<{width}}" + "".join(f"{len(variants[s]):>8}" for s in SPLITS))
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------------------


def _cmd_build(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        manifest = build_dataset(args.out, args.per_class, args.seed, args.workers, progress=not args.no_progress)
    except (RuntimeError, OSError) as e:
        print(f"cannot build the data set: {e}", file=sys.stderr)
        return 1
    records = read_manifest(manifest)
    planned = sum(clip_counts(args.per_class).values())
    print(summarize(records))
    if len(records) < planned:
        print(f"skipped {planned - len(records)} clips that could not be said in under 0.95 s")
    print(f"wrote {len(records)} clips and {manifest} in {time.perf_counter() - started:.1f} s")
    return run_engines(args) if args.engines else 0  # other speech engines: hark_training.voices


def _cmd_stats(args: argparse.Namespace) -> int:
    path = Path(args.manifest)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        records = read_manifest(path)
    except (OSError, ValueError) as e:
        print(f"cannot read manifest: {e}", file=sys.stderr)
        return 1
    print(summarize(records))
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark data build``, ``hark data import``, ``hark data drums`` and ``hark data stats``
    (entry point ``hark.commands``)."""
    from hark_training.drums import add_drums_command
    from hark_training.importer import add_import_command

    data = subparsers.add_parser("data", help="build, import and inspect data sets")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="{build,import,drums,stats,voices}")
    add_import_command(commands)
    add_drums_command(commands)

    build = commands.add_parser(
        "build",
        help="synthesise the labelled keyword data set with espeak-ng",
        description="Synthesise 1-s 16 kHz keyword clips with espeak-ng voices, mixed with generated noise, "
        "split by voice into train/val/test, with a CSV manifest.",
    )
    build.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="output folder (default: %(default)s)"
    )
    build.add_argument(
        "--per-class",
        type=positive_int,
        metavar="N",
        default=DEFAULT_PER_CLASS,
        help=f"clips per keyword and for _silence_; _unknown_ gets {UNKNOWN_RATIO}x (default: %(default)s)",
    )
    build.add_argument(
        "--seed", type=_non_negative_int, default=0, metavar="N", help="random seed (default: %(default)s)"
    )
    build.add_argument(
        "--workers", type=positive_int, default=2, metavar="N", help="parallel worker processes (default: %(default)s)"
    )
    build.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    add_engine_options(build)
    build.set_defaults(func=_cmd_build, only=())  # a build renders every engine; hark data voices --only adds some
    add_voices_command(commands)

    stats = commands.add_parser("stats", help="count a data set's clips per label and split")
    stats.add_argument(
        "--manifest",
        type=Path,
        metavar="PATH",
        default=DEFAULT_OUT / MANIFEST_NAME,
        help="manifest file, or the folder holding manifest.csv (default: %(default)s)",
    )
    stats.set_defaults(func=_cmd_stats)


def run_engines(args: argparse.Namespace) -> int:
    from hark_training.voices import run_engines as run

    return run(args)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    from hark_training.voices import add_engine_options as add

    add(parser)


def add_voices_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hark_training.voices import add_command as add

    add(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``data`` on its own (``python -m hark_training.data build ...``), without the ``hark`` CLI."""
    parser = argparse.ArgumentParser(prog="python -m hark_training.data")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
