"""Many engines' voices in the keyword data set: isolated words, words inside running speech, and streams.

``hark data build --engines mbrola,rhvoice,pico,piper`` (or ``hark data voices`` on an existing build) adds to
the espeak-ng data set, under ``<out>/engines/``:

* **word clips**: each keyword and ``_unknown_`` word said alone by every voice of every engine, placed in 1 s;
* **running-speech windows**: 1-s windows cut from sentences, labelled with the keyword a window holds whole,
  or ``_unknown_`` when cut from keyword-free speech (``--free-windows`` of them per training sentence), so the
  model sees what streaming shows it: words beside other words, coarticulated phrases, no silence around the
  word;
* **streams** (``streams.csv``): minute-long recordings of sentences per voice, with or without keywords, and
  the time of every keyword, for event F1 and false alarms per hour (:mod:`hark_training.engine_eval`).

Splits hold out **whole engines**: ``--val-engines`` are only in ``val``, ``--test-engines`` only in ``test``,
every other engine only in ``train`` (espeak-ng keeps its own split by variant). Every row records the engine,
voice, variant (prosody and channel), text and licence, and ``--commercial-only`` drops voices whose licence
forbids commercial use.

A keyword inside a sentence is said on its own and joined to the phrases around it with a short gap or none:
the engines give no word timings, and this way the keyword's place is exact. Keyword-free speech is said in
one piece, so it is real running speech of each engine.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
from tqdm import tqdm

from hark.core.preprocess import normalize_peak, trim_silence
from hark_training.channel import ChannelConfig, degrade
from hark_training.data import (
    CLIP_SAMPLES,
    KEYWORDS,
    MANIFEST_NAME,
    SAMPLE_RATE,
    SPLITS,
    UNKNOWN,
    UNKNOWN_WORDS,
    place,
    positive_int,
    to_int16,
)
from hark_training.engines import (
    ENGINES,
    ESPEAK_LICENCE,
    EngineError,
    EngineVoice,
    Prosody,
    espeak_l2_voices,
    installed_voices,
    prepare,
    speak,
)
from hark_training.noise import NOISE_KINDS, make_noise, mix_at_snr, power

FloatArray = npt.NDArray[np.float64]

ENGINE_DIR = "engines"
STREAMS_FILE = "streams.csv"
BASE_MANIFEST = "manifest-espeak.csv"
VOICE_COLUMNS: tuple[str, ...] = ("engine", "licence", "kind", "channel")
"""Columns this module adds to the data manifest (after the ones :mod:`hark_training.data` writes)."""
STREAM_COLUMNS: tuple[str, ...] = (
    "path",
    "split",
    "engine",
    "voice",
    "licence",
    "kind",
    "duration_s",
    "events",
    "channel",
    "snr_db",
)

FILLER_WORDS: tuple[str, ...] = (
    "the",
    "a",
    "and",
    "then",
    "we",
    "they",
    "this",
    "that",
    "is",
    "was",
    "will",
    "can",
    "should",
    "it",
    "to",
    "for",
    "with",
    "from",
    "at",
    "by",
    "you",
    "I",
    "my",
    "your",
    "our",
    "very",
    "just",
    "really",
    "please",
    "maybe",
    "today",
    "later",
    "again",
    "here",
    "there",
    "where",
    "what",
    "when",
    "why",
    "how",
    "people",
    "house",
    "water",
    "music",
    "window",
    "kitchen",
    "morning",
    "evening",
    "weather",
    "dinner",
    "light",
    "lamp",
    "door",
    "garden",
    "table",
    "paper",
    "phone",
    "number",
    "question",
    "answer",
    "story",
    "city",
    "train",
    "ticket",
    "station",
    "coffee",
    "sugar",
    "little",
    "big",
    "green",
    "blue",
    "happy",
    "quiet",
    "loud",
    "warm",
    "cold",
    "early",
    "late",
    "first",
    "last",
    "second",
    "minute",
    "hour",
    "week",
    "think",
    "want",
    "need",
    "like",
    "make",
    "take",
    "give",
    "find",
    "tell",
    "ask",
    "work",
    "play",
    "read",
    "open",
    "close",
    "bring",
    "walk",
    "talk",
    "listen",
    "watch",
    "remember",
    "forget",
    "understand",
    "about",
    "because",
    "after",
    "before",
    "under",
    "over",
    "between",
    "around",
    "without",
    "together",
    "thank",
    "you",
    "sorry",
    "hello",
    "okay",
    "sure",
    "fine",
    "good",
    "great",
    "nice",
    "wonderful",
)
"""Carrier words for running speech: none of them is a keyword or sounds like one said alone."""
assert not set(FILLER_WORDS) & set(KEYWORDS)

ENDINGS: tuple[str, ...] = ("", ",", ".", "!", "?")
MIN_GAP_S, MAX_GAP_S = 0.0, 0.25


@dataclass(frozen=True)
class VoicesConfig:
    """How much each engine voice says; the defaults fit a 2-core build in about 10 minutes."""

    words_per_engine: int = 600
    """Isolated keyword clips per engine (spread over its voices and the ten keywords); unknown 0.5x that."""
    sentences_per_engine: int = 500
    """Keyword-in-sentence windows per engine; as many keyword-free sentences again."""
    free_windows: int = 1
    """Keyword-free windows cut from each training engine's keyword-free sentence (one per second of it at most):
    a stream shows the model ten windows a second of other speech, so more of them cost little to render and
    teach it what not to fire on. Validation and test keep one, so their clips do not change."""
    renders: int = 1
    """How many times each training engine but those of :data:`SAID_ONCE` says its share: render ``k`` is planned
    as a build of those engines alone from ``seed + k`` would be (other texts, prosody, rooms and channels; the
    same voices) and written under ``r<k>_`` names. Their voices are few, so more of what they say is cheap
    variety."""
    stream_minutes: float = 15.0
    """Minutes of streams per held-out engine: two thirds keyword-free, one third with keywords."""
    stream_s: float = 60.0
    channel: bool = True
    dry_training: bool = False
    """No channel variety on the training split alone: validation and test render exactly as with it, so a run on
    such a build is measured on the same clips and streams as one with it (what channel variety buys)."""
    val_engines: tuple[str, ...] = ("pico",)
    test_engines: tuple[str, ...] = ("rhvoice",)
    commercial_only: bool = False
    espeak_voices: int = 24
    base_train_share: float = 1.0
    """Share of the espeak-ng word build's training clips kept beside the engines' (see :func:`merge_manifest`)."""


@dataclass(frozen=True)
class Spec:
    """One thing to render: a word clip, a running-speech window or a stream."""

    index: int
    kind: str  # word | sentence | free | stream-kw | stream-free
    split: str
    voice: EngineVoice
    label: str
    texts: tuple[str, ...]
    seed: int
    channel: bool
    duration_s: float = 0.0
    keyword_at: int = -1
    """For ``sentence``: which of ``texts`` is the keyword."""
    windows: int = 1
    """For ``free``: how many windows to cut from the sentence (see :attr:`VoicesConfig.free_windows`)."""
    stream_sentences: tuple[tuple[tuple[str, ...], int], ...] = field(default=())
    render: int = 0
    """Which of :attr:`VoicesConfig.renders` this is; the first keeps the names a build with one render writes."""

    @property
    def path(self) -> str:
        who = self.voice.voice.replace("/", "_").replace("+", "_")
        folder = "streams" if self.kind.startswith("stream") else self.label
        again = f"r{self.render}_" if self.render else ""
        return f"{ENGINE_DIR}/{self.voice.engine}/{folder}/{again}{self.index:06d}_{who}.wav"


# --- text -------------------------------------------------------------------------------------------------------


def filler(rng: np.random.Generator, lo: int, hi: int) -> str:
    """``lo`` to ``hi`` carrier words (empty when zero)."""
    n = int(rng.integers(lo, hi + 1))
    return " ".join(str(w) for w in rng.choice(FILLER_WORDS, n)) if n else ""


def keyword_sentence(keyword: str, rng: np.random.Generator) -> tuple[tuple[str, ...], int]:
    """Phrases before and after a keyword; returns the pieces and the keyword's index among them."""
    before, after = filler(rng, 0, 5), filler(rng, 0, 4)
    word = keyword + str(rng.choice(ENDINGS))
    pieces = [p for p in (before, word, after) if p]
    return tuple(pieces), pieces.index(word)


def free_sentence(rng: np.random.Generator) -> str:
    """Keyword-free running speech: carrier words with a few of the ``_unknown_`` words among them."""
    words = [str(w) for w in rng.choice(FILLER_WORDS, int(rng.integers(4, 13)))]
    for _ in range(int(rng.integers(0, 3))):
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(UNKNOWN_WORDS)))
    return " ".join(words) + str(rng.choice((".", "!", "?", ",")))


# --- plan -------------------------------------------------------------------------------------------------------


def split_of_engine(engine: str, config: VoicesConfig) -> str:
    if engine in config.test_engines:
        return "test"
    if engine in config.val_engines:
        return "val"
    return "train"


ENGINE_SCALE: dict[str, float] = {"espeak-ng": 0.5, "piper": 0.3, "kokoro": 0.3}
"""Share of the per-engine counts: espeak-ng already fills the word data set; Piper and Kokoro (neural models on
the CPU, Kokoro about 0.8 s of CPU per word) cost 20-40x the rule-based engines per text."""
HELD_OUT_SCALE = 0.4
"""Held-out engines need enough to measure on, not to train on."""


def engine_scale(engine: str, config: VoicesConfig) -> float:
    scale = ENGINE_SCALE.get(engine, 1.0)
    return min(scale, HELD_OUT_SCALE) if split_of_engine(engine, config) != "train" else scale


SAID_ONCE: tuple[str, ...] = ("espeak-ng", "espeak-ng-l2")
"""Engines with hundreds of voices say their share once however many :attr:`VoicesConfig.renders` there are: more
of their voices is variety enough (and espeak-ng's voice split depends on the seed)."""
L2_VARIANTS = 4
"""espeak-ng variants each ``espeak-ng-l2`` language speaks with: 12 accents x 4 is 48 speakers."""


def l2_split_voices(seed: int, split: str) -> list[tuple[EngineVoice, str]]:
    """``espeak-ng-l2``'s speakers, with variants from espeak-ng's training split only: a held-out variant's
    voice must not be heard in training under another accent."""
    from hark_training.data import discover_voices

    variants = {v.variant for v in discover_voices(seed)["train"]}
    return [(v, split) for v in espeak_l2_voices(sorted(variants), L2_VARIANTS, seed)]


def espeak_split_voices(seed: int, per_split: int) -> list[tuple[EngineVoice, str]]:
    """espeak-ng voices drawn from each split of :func:`hark_training.data.discover_voices`, so no variant
    crosses splits between the word data set and the running speech."""
    from hark_training.data import discover_voices

    rng = np.random.default_rng([seed, 0xE5])
    out: list[tuple[EngineVoice, str]] = []
    for split, voices in discover_voices(seed).items():
        n = per_split if split == "train" else max(2, per_split // 4)
        for i in rng.permutation(len(voices))[:n]:
            out.append((EngineVoice("espeak-ng", voices[int(i)].espeak_name, ESPEAK_LICENCE), split))
    return out


def plan(config: VoicesConfig, engines: Sequence[str], seed: int) -> list[Spec]:
    """Every clip, window and stream, decided before anything is rendered; with ``config.renders`` above 1, the
    training engines' further renders after them (see :attr:`VoicesConfig.renders`)."""
    specs = plan_render(config, engines, seed)
    again = [e for e in engines if e not in SAID_ONCE and split_of_engine(e, config) == "train"]
    for k in range(1, config.renders):
        specs += [replace(s, render=k) for s in plan_render(config, again, seed + k)]
    return specs


def plan_render(config: VoicesConfig, engines: Sequence[str], seed: int) -> list[Spec]:
    """One render of every engine: what each voice says, with which seed, in which split."""
    rng = np.random.default_rng([seed, 0x701CE])
    voices: list[tuple[EngineVoice, str]] = []
    for engine in engines:
        if engine == "espeak-ng":
            voices += espeak_split_voices(seed, config.espeak_voices)
        elif engine == "espeak-ng-l2":
            voices += l2_split_voices(seed, split_of_engine(engine, config))
        else:
            voices += [(v, split_of_engine(engine, config)) for v in installed_voices((engine,))]
    if config.commercial_only:
        voices = [(v, s) for v, s in voices if not v.non_commercial]
    specs: list[Spec] = []

    def add(**kw: object) -> None:
        channel = config.channel and not (config.dry_training and kw["split"] == "train")
        specs.append(Spec(index=len(specs), seed=seed, channel=channel, **kw))  # type: ignore[arg-type]

    for engine in engines:
        mine = [(v, s) for v, s in voices if v.engine == engine]
        if not mine:
            continue
        scale = engine_scale(engine, config)
        n_words = round(scale * config.words_per_engine)
        for i in range(n_words):
            v, split = mine[i % len(mine)]
            add(kind="word", split=split, voice=v, label=KEYWORDS[i % len(KEYWORDS)], texts=(KEYWORDS[i % 10],))
        for _ in range(n_words // 2):
            v, split = mine[int(rng.integers(len(mine)))]
            add(kind="word", split=split, voice=v, label=UNKNOWN, texts=(str(rng.choice(UNKNOWN_WORDS)),))
        n_sentences = round(scale * config.sentences_per_engine)
        for i in range(n_sentences):
            v, split = mine[int(rng.integers(len(mine)))]
            pieces, at = keyword_sentence(KEYWORDS[i % len(KEYWORDS)], rng)
            add(kind="sentence", split=split, voice=v, label=KEYWORDS[i % 10], texts=pieces, keyword_at=at)
        for _ in range(n_sentences):
            v, split = mine[int(rng.integers(len(mine)))]
            windows = config.free_windows if split == "train" else 1
            add(kind="free", split=split, voice=v, label=UNKNOWN, texts=(free_sentence(rng),), windows=windows)
        # Streams measure held-out speech only: the held-out engines', and espeak-ng's test variants.
        held = [(v, s) for v, s in mine if s != "train"]
        if engine == "espeak-ng":
            held = [(v, s) for v, s in mine if s == "test"]
        n_streams = round(config.stream_minutes * 60 / config.stream_s) if held else 0
        for i in range(n_streams):
            v, split = held[i % len(held)]
            kind = "stream-kw" if i % 3 == 1 else "stream-free"
            sentences = _stream_sentences(kind, config.stream_s, rng)
            add(
                kind=kind,
                split=split,
                voice=v,
                label="",
                texts=(),
                duration_s=config.stream_s,
                stream_sentences=sentences,
            )
    return specs


def _stream_sentences(kind: str, seconds: float, rng: np.random.Generator) -> tuple[tuple[tuple[str, ...], int], ...]:
    """Enough sentences for ``seconds`` of speech (about 2.5 s each); in keyword streams every other has one."""
    out: list[tuple[tuple[str, ...], int]] = []
    for i in range(int(seconds / 2.5) + 4):
        if kind == "stream-kw" and i % 2 == 0:
            out.append(keyword_sentence(str(rng.choice(KEYWORDS)), rng))
        else:
            out.append(((free_sentence(rng),), -1))
    return tuple(out)


# --- render -----------------------------------------------------------------------------------------------------


def _said(voice: EngineVoice, text: str, prosody: Prosody) -> FloatArray:
    return trim_silence(speak(voice, text, prosody), SAMPLE_RATE)


def say_pieces(
    voice: EngineVoice, pieces: Sequence[str], keyword_at: int, prosody: Prosody, rng: np.random.Generator
) -> tuple[FloatArray, int, int]:
    """The pieces joined with short gaps; returns the audio and the keyword's first and last sample."""
    parts: list[FloatArray] = []
    start = end = 0
    for i, piece in enumerate(pieces):
        if parts:
            parts.append(np.zeros(int(rng.uniform(MIN_GAP_S, MAX_GAP_S) * SAMPLE_RATE)))
        audio = _said(voice, piece, prosody)
        offset = sum(p.size for p in parts)
        if i == keyword_at:
            start, end = offset, offset + audio.size
        parts.append(audio)
    return (np.concatenate(parts) if parts else np.zeros(0)), start, end


def _noise_and_level(
    audio: FloatArray, rng: np.random.Generator, speech_power: float | None = None
) -> tuple[FloatArray, str]:
    """Background noise at a realistic SNR (none a fifth of the time) and a random level."""
    if rng.random() < 0.2:
        noisy, desc = audio, "clean"
    else:
        kind, snr = str(rng.choice(NOISE_KINDS)), float(rng.uniform(0.0, 30.0))
        noise = make_noise(kind, audio.size, rng, SAMPLE_RATE)
        noisy = mix_at_snr(audio, noise, snr, signal_power=speech_power)
        desc = f"{kind}@{snr:.0f}dB"
    return normalize_peak(noisy, float(rng.uniform(-30.0, -1.0))), desc


def render(spec: Spec, out_dir: Path) -> list[dict[str, str]]:
    """Render one spec; returns its manifest rows (none when the engine could not say it)."""
    rng = np.random.default_rng([spec.seed, spec.index, 0x5EED])
    prosody = Prosody.draw(rng)
    try:
        if spec.kind.startswith("stream"):
            return [_render_stream(spec, out_dir, rng, prosody)]
        if spec.kind == "word":
            audio, start, end = _said(spec.voice, spec.texts[0] + str(rng.choice(ENDINGS)), prosody), 0, 0
            end = audio.size
        elif spec.kind == "sentence":
            audio, start, end = say_pieces(spec.voice, spec.texts, spec.keyword_at, prosody, rng)
        else:
            audio = _said(spec.voice, spec.texts[0], prosody)
            start, end = 0, audio.size
    except EngineError:
        return []
    if audio.size == 0:
        return []
    channel = "dry"
    if spec.channel:
        before = audio.size
        audio, channel = degrade(audio, rng, ChannelConfig())
        scale = audio.size / before if "vtlp" in channel else 1.0
        start, end = int(start * scale), min(audio.size, int(end * scale))
    clip = _window(spec, audio, start, end, rng)
    if clip is None:
        return []
    rows = [_write_clip(spec, spec.path, clip, audio, prosody, channel, out_dir, rng)]
    # More windows of the same keyword-free sentence, drawn after the first so that the first is what a build
    # with one window writes: a data set with more is a superset of one without.
    for k in range(1, min(spec.windows, audio.size // CLIP_SAMPLES)):
        extra = _window(spec, audio, start, end, rng)
        if extra is not None:
            rows.append(
                _write_clip(spec, spec.path.replace(".wav", f"_w{k}.wav"), extra, audio, prosody, channel, out_dir, rng)
            )
    return rows


def _write_clip(
    spec: Spec,
    path: str,
    clip: FloatArray,
    audio: FloatArray,
    prosody: Prosody,
    channel: str,
    out_dir: Path,
    rng: np.random.Generator,
) -> dict[str, str]:
    """Noise and level on a window, written as 16-bit WAV; returns its manifest row."""
    clip, noise = _noise_and_level(clip, rng, power(audio))
    target = out_dir / path
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(target, to_int16(clip), SAMPLE_RATE, subtype="PCM_16")
    return _row(spec, path, prosody, f"{channel};{noise}", " ".join(spec.texts))


def _window(spec: Spec, audio: FloatArray, start: int, end: int, rng: np.random.Generator) -> FloatArray | None:
    """The 1-s window training sees: a word placed in silence, a keyword's window cut from its sentence
    (neighbouring words included), or any second of keyword-free speech."""
    n = CLIP_SAMPLES
    if spec.kind == "word":
        word = audio[: int(0.95 * n)] if audio.size > n else audio
        if audio.size > n:
            return None
        return place(word, int(rng.integers(0, n - word.size + 1)))
    if spec.kind == "sentence":
        if end - start > int(0.95 * n):
            return None
        padded = np.concatenate([np.zeros(n), audio, np.zeros(n)])
        s, e = start + n, end + n
        lo, hi = max(0, e - n), s
        first = int(rng.integers(lo, hi + 1))
        return padded[first : first + n]
    if audio.size <= n:
        return place(audio, int(rng.integers(0, n - audio.size + 1)))
    first = int(rng.integers(0, audio.size - n + 1))
    return audio[first : first + n]


def _render_stream(spec: Spec, out_dir: Path, rng: np.random.Generator, prosody: Prosody) -> dict[str, str]:
    """A minute of sentences with pauses; keyword times recorded as ``label@start-end`` (seconds)."""
    parts: list[FloatArray] = [np.zeros(int(0.5 * SAMPLE_RATE))]
    events: list[str] = []
    total = parts[0].size
    for pieces, at in spec.stream_sentences:
        if total >= spec.duration_s * SAMPLE_RATE:
            break
        said, s, e = say_pieces(spec.voice, pieces, at, Prosody.draw(rng), rng)
        if at >= 0:
            label = pieces[at].rstrip(",.!?")
            events.append(f"{label}@{(total + s) / SAMPLE_RATE:.3f}-{(total + e) / SAMPLE_RATE:.3f}")
        pause = np.zeros(int(rng.uniform(0.2, 1.2) * SAMPLE_RATE))
        parts += [said, pause]
        total += said.size + pause.size
    audio = np.concatenate(parts)
    channel = "dry"
    if spec.channel:
        audio, channel = degrade(audio, rng, ChannelConfig(tract_prob=0.0))  # no time change: events stay put
    audio, noise = _noise_and_level(audio, rng)
    target = out_dir / spec.path
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(target, to_int16(audio), SAMPLE_RATE, subtype="PCM_16")
    return {
        "path": spec.path,
        "split": spec.split,
        "engine": spec.voice.engine,
        "voice": spec.voice.voice,
        "licence": spec.voice.licence,
        "kind": "keywords" if spec.kind == "stream-kw" else "keyword-free",
        "duration_s": f"{audio.size / SAMPLE_RATE:.3f}",
        "events": ";".join(events),
        "channel": channel,
        "snr_db": noise,
    }


def _row(spec: Spec, path: str, prosody: Prosody, channel: str, text: str) -> dict[str, str]:
    return {
        "path": path,
        "label": spec.label,
        "split": spec.split,
        "voice": spec.voice.name,
        "source": spec.voice.engine,
        "text": text,
        "variant": prosody.describe(),
        "noise": channel.split(";")[-1],
        "engine": spec.voice.engine,
        "licence": spec.voice.licence,
        "kind": spec.kind,
        "channel": channel.split(";")[0],
    }


# --- manifests --------------------------------------------------------------------------------------------------


def merge_manifest(
    manifest: Path, rows: Sequence[dict[str, str]], base_train_share: float = 1.0, seed: int = 0
) -> None:
    """Append engine rows to the data manifest, keeping its columns first; earlier engine rows are replaced.

    The espeak-ng rows :mod:`hark_training.data` wrote get ``engine=espeak-ng`` and its licence; the manifest as
    that build wrote it is kept beside it as ``manifest-espeak.csv``, so merging again starts from it. With
    ``base_train_share`` below 1 only that share of its training rows is kept (drawn from ``seed``), so the
    other engines weigh more and an epoch costs less.
    """
    original = manifest.with_name(BASE_MANIFEST)
    with manifest.open(newline="", encoding="utf-8") as f:
        if not any(r["path"].startswith(f"{ENGINE_DIR}/") for r in csv.DictReader(f)):
            shutil.copyfile(manifest, original)
    with original.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or ())
        rng = random.Random(seed)
        base = [r for r in reader if r["split"] != "train" or base_train_share >= 1 or rng.random() < base_train_share]
    for r in base:
        speech = r.get("source") not in ("noise", "")
        r.setdefault("engine", "espeak-ng" if speech else "noise")
        r["engine"] = r["engine"] or ("espeak-ng" if speech else "noise")
        r["licence"] = r.get("licence") or (ESPEAK_LICENCE if speech else "generated")
        r["kind"] = r.get("kind") or ("word" if speech else "noise")
    for extra in (*VOICE_COLUMNS, "text", "variant", "noise"):
        if extra not in columns:
            columns.append(extra)
    tmp = manifest.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(base)
        writer.writerows(rows)
    os.replace(tmp, manifest)


def write_streams(rows: Sequence[dict[str, str]], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(STREAM_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def build_voices(
    out_dir: Path,
    engines: Sequence[str] = ENGINES,
    config: VoicesConfig = VoicesConfig(),
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    only: Sequence[str] = (),
) -> tuple[int, int]:
    """Render every engine's clips into ``out_dir`` (an espeak-ng build) and merge them into its manifest; with
    ``only``, render just those engines and keep the others' clips and streams already there.

    Returns the number of clips and streams written.
    """
    manifest = Path(out_dir) / MANIFEST_NAME
    if not manifest.is_file():
        raise RuntimeError(f"{manifest} does not exist: run hark data build first")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise RuntimeError(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    specs = plan(config, engines, seed)
    kept_clips: list[dict[str, str]] = []
    kept_streams: list[dict[str, str]] = []
    if only:
        kept_clips = rows_to_keep(manifest, specs, engines, only, config)
        kept_streams = streams_of(out_dir) if (Path(out_dir) / STREAMS_FILE).is_file() else []
        specs = [s for s in specs if s.voice.engine in only]
    prepare(tuple(only or engines))
    # Streams are the slowest: start them first so both workers stay busy to the end.
    specs.sort(key=lambda s: not s.kind.startswith("stream"))
    job = partial(render, out_dir=Path(out_dir))
    # Spawned, not forked: a fork of a process with other threads running (a server, onnxruntime, a test
    # runner) can copy a held import lock into the child, which then hangs importing pyroomacoustics.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(tqdm(pool.map(job, specs, chunksize=8), total=len(specs), disable=not progress, desc="engines"))
    rows = [r for rs in results for r in rs]
    clips = [r for r in rows if "label" in r]
    streams = [r for r in rows if "events" in r]
    merge_manifest(manifest, sorted(kept_clips + clips, key=lambda r: r["path"]), config.base_train_share, seed)
    write_streams(sorted(kept_streams + streams, key=lambda r: r["path"]), Path(out_dir) / STREAMS_FILE)
    return len(clips), len(streams)


def rows_to_keep(
    manifest: Path, specs: Sequence[Spec], engines: Sequence[str], only: Sequence[str], config: VoicesConfig
) -> list[dict[str, str]]:
    """The engine rows already in ``manifest`` that adding ``only`` keeps, after checking that rendering just
    ``only`` gives what a build of every engine would: :func:`plan` draws the engines in order, so only the
    last ones can be added without changing the others' clips, and those others must be in the manifest, each
    held out as ``config`` says."""
    if list(engines[len(engines) - len(only) :]) != list(only):
        raise RuntimeError(f"--only {','.join(only)} must be the last of --engines: the engines after it would change")
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["path"].startswith(f"{ENGINE_DIR}/")]
    present = {r["engine"] for r in rows}
    if again := sorted(present & set(only)):
        raise RuntimeError(f"{manifest} already has {', '.join(again)}'s clips")
    if missing := sorted({s.voice.engine for s in specs} - set(only) - present):
        raise RuntimeError(f"{manifest} has no clips of {', '.join(missing)}: render every engine again")
    for r in rows:
        want = split_of_engine(r["engine"], config)
        if r["engine"] != "espeak-ng" and r["split"] != want:
            raise RuntimeError(
                f"{r['engine']}'s clips are in {r['split']}, these options put them in {want}: render all again"
            )
    return rows


def summarize_engines(manifest: Path) -> str:
    """Clips per engine and split, and how many voices each engine has."""
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    counts = Counter((r.get("engine") or r["source"], r["split"]) for r in rows)
    voices: dict[str, set[str]] = {}
    for r in rows:
        voices.setdefault(r.get("engine") or r["source"], set()).add(r["voice"])
    lines = [f"{'engine':<12}" + "".join(f"{s:>8}" for s in SPLITS) + f"{'voices':>8}"]
    for engine in sorted(voices):
        lines.append(f"{engine:<12}" + "".join(f"{counts[engine, s]:>8}" for s in SPLITS) + f"{len(voices[engine]):>8}")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------------------


def engine_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(set(names) - set(ENGINES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")
    return names


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The options ``hark data build`` and ``hark data voices`` share."""
    parser.add_argument(
        "--engines",
        type=engine_list,
        default=(),
        metavar="LIST",
        help=f"also speak with these engines, comma-separated ({','.join(ENGINES)}); default: espeak-ng words only",
    )
    defaults = VoicesConfig()
    parser.add_argument(
        "--val-engines",
        type=engine_list,
        default=defaults.val_engines,
        metavar="LIST",
        help=f"engines held out whole for validation (default: {','.join(defaults.val_engines)})",
    )
    parser.add_argument(
        "--test-engines",
        type=engine_list,
        default=defaults.test_engines,
        metavar="LIST",
        help=f"engines held out whole for test (default: {','.join(defaults.test_engines)})",
    )
    parser.add_argument(
        "--words-per-engine",
        type=int,
        default=defaults.words_per_engine,
        metavar="N",
        help="isolated keyword clips per training engine (default: %(default)s)",
    )
    parser.add_argument(
        "--sentences-per-engine",
        type=int,
        default=defaults.sentences_per_engine,
        metavar="N",
        help="keyword-in-sentence windows per training engine (default: %(default)s)",
    )
    parser.add_argument(
        "--stream-minutes",
        type=float,
        default=defaults.stream_minutes,
        metavar="MIN",
        help="minutes of evaluation streams per engine (default: %(default)s)",
    )
    parser.add_argument(
        "--free-windows",
        type=positive_int,
        default=defaults.free_windows,
        metavar="N",
        help="keyword-free windows cut from each training sentence of keyword-free speech, one per second of it "
        "at most (default: %(default)s)",
    )
    parser.add_argument(
        "--renders",
        type=positive_int,
        default=defaults.renders,
        metavar="N",
        help="say each training engine's share N times, each from another seed (espeak-ng once; default: %(default)s)",
    )
    parser.add_argument(
        "--no-channel", action="store_true", help="no speaker-size, room or microphone variety on the engines' speech"
    )
    parser.add_argument(
        "--dry-training",
        action="store_true",
        help="no such variety on the training split only; validation and test render as with it",
    )
    parser.add_argument(
        "--base-train-share",
        type=float,
        default=defaults.base_train_share,
        metavar="F",
        help="keep this share of the espeak-ng word build's training clips (default: %(default)s)",
    )
    parser.add_argument(
        "--commercial-only",
        action="store_true",
        help="leave out voices whose licence forbids commercial use (MBROLA, DECtalk, two RHVoice voices)",
    )


def config_from_args(args: argparse.Namespace) -> VoicesConfig:
    return VoicesConfig(
        words_per_engine=args.words_per_engine,
        sentences_per_engine=args.sentences_per_engine,
        free_windows=args.free_windows,
        renders=args.renders,
        stream_minutes=args.stream_minutes,
        channel=not args.no_channel,
        dry_training=args.dry_training,
        val_engines=args.val_engines,
        test_engines=args.test_engines,
        commercial_only=args.commercial_only,
        base_train_share=args.base_train_share,
    )


def run_engines(args: argparse.Namespace) -> int:
    """Add the engines' speech to the build in ``args.out``; prints a summary, returns an exit status."""
    started = time.perf_counter()
    engines = args.engines or ENGINES
    try:
        clips, streams = build_voices(
            args.out,
            engines,
            config_from_args(args),
            args.seed,
            args.workers,
            progress=not args.no_progress,
            only=args.only,
        )
    except (RuntimeError, OSError) as e:
        print(f"cannot add the engines' speech: {e}", file=sys.stderr)
        return 1
    print(summarize_engines(Path(args.out) / MANIFEST_NAME))
    print(
        f"added {clips} clips and {streams} streams from {', '.join(args.only or engines)} "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark data voices`` under ``hark data``."""
    from hark_training.data import DEFAULT_OUT

    voices = commands.add_parser(
        "voices",
        help="add other speech engines' words, running speech and streams to a built data set",
        description="Speak the keywords, sentences and keyword-free running speech with MBROLA, RHVoice, "
        "SVOX Pico, Piper, DECtalk, GnuSpeech, Kokoro and espeak-ng voices (its English ones, and those of other "
        "languages saying English with their own sounds), and add them to the manifest of a "
        "data set made by 'hark data build'. Whole engines are held out for validation and test.",
    )
    voices.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="the built data set (default: %(default)s)"
    )
    voices.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: %(default)s)")
    voices.add_argument("--workers", type=int, default=2, metavar="N", help="worker processes (default: %(default)s)")
    voices.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    voices.add_argument(
        "--only",
        type=engine_list,
        default=(),
        metavar="LIST",
        help="render just these engines, the last of --engines, and keep the others' clips already in the data set "
        "(they are the same either way): add an engine without rendering the rest again",
    )
    add_engine_options(voices)
    voices.set_defaults(func=run_engines)


def streams_of(data_dir: Path) -> list[dict[str, str]]:
    """The rows of ``streams.csv`` in a data folder."""
    with (Path(data_dir) / STREAMS_FILE).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def parse_events(text: str) -> list[tuple[str, float, float]]:
    """``label@start-end;...`` back to tuples."""
    out = []
    for item in filter(None, text.split(";")):
        label, span = item.split("@")
        start, end = span.split("-")
        out.append((label, float(start), float(end)))
    return out


def dump_plan_counts(specs: Sequence[Spec]) -> str:
    return json.dumps(Counter(f"{s.voice.engine}/{s.kind}/{s.split}" for s in specs), indent=1, sort_keys=True)
