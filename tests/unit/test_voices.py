"""Other speech engines as data: reserved voices stay out, whole engines are held out, running speech is cut
where the keyword is, and the manifest says where every clip came from and under what licence."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from hark_training import voices
from hark_training.channel import ChannelConfig, degrade, telephone, vocal_tract
from hark_training.data import CLIP_SAMPLES, KEYWORDS, build_dataset, read_manifest
from hark_training.engines import (
    RESERVED_VOICES,
    EngineError,
    EngineVoice,
    Prosody,
    check_allowed,
    installed_voices,
    speak,
)


@pytest.mark.parametrize("engine,voice", [*sorted(RESERVED_VOICES), ("flite", "kal"), ("festival", "ked")])
def test_reserved_evaluation_voices_are_never_synthesised(engine: str, voice: str) -> None:
    reserved = EngineVoice(engine, voice, "any")
    with pytest.raises(EngineError, match="reserved"):
        check_allowed(reserved)
    with pytest.raises(EngineError, match="reserved"):
        speak(reserved, "yes")


def test_no_installed_voice_is_reserved_and_every_one_has_a_licence() -> None:
    for v in installed_voices():
        assert (v.engine, v.voice) not in RESERVED_VOICES
        assert v.licence


def test_non_commercial_licences_are_recognised() -> None:
    assert EngineVoice("rhvoice", "lyubov", "CC BY-NC-ND 4.0 (non-commercial)").non_commercial
    assert not EngineVoice("pico", "en-US", "Apache-2.0").non_commercial


@pytest.mark.parametrize("engine", ["mbrola", "rhvoice", "pico", "piper"])
def test_each_installed_engine_says_a_keyword(engine: str) -> None:
    found = installed_voices((engine,))
    if not found:
        pytest.skip(f"{engine} is not installed (make system-deps-voices)")
    audio = speak(found[0], "stop", Prosody(rate=1.1, pitch=0.9))
    assert 0.15 < audio.size / 16_000 < 2.0
    assert np.abs(audio).max() > 0.05


def test_a_keyword_sentence_holds_the_keyword_once_and_free_speech_holds_none() -> None:
    rng = np.random.default_rng(3)
    for keyword in KEYWORDS:
        pieces, at = voices.keyword_sentence(keyword, rng)
        assert pieces[at].rstrip(",.!?") == keyword
        assert all(keyword not in p.split() for i, p in enumerate(pieces) if i != at)
    for _ in range(200):
        words = {w.strip(",.!?") for w in voices.free_sentence(rng).split()}
        assert not words & set(KEYWORDS)


def test_a_running_speech_window_holds_the_whole_keyword() -> None:
    rng = np.random.default_rng(0)
    spec = voices.Spec(0, "sentence", "train", EngineVoice("pico", "en-US", "x"), "yes", ("a", "yes", "b"), 0, False)
    audio = np.zeros(3 * CLIP_SAMPLES)
    start, end = 20_000, 27_000
    audio[start:end] = 1.0
    for _ in range(50):
        window = voices._window(spec, audio, start, end, rng)
        assert window is not None and window.size == CLIP_SAMPLES
        assert window.sum() == end - start


def test_engines_are_held_out_whole() -> None:
    config = voices.VoicesConfig(words_per_engine=20, sentences_per_engine=10, stream_minutes=1)
    specs = voices.plan(config, ("mbrola", "rhvoice", "pico"), seed=0)
    splits = {(s.voice.engine, s.split) for s in specs}
    if not specs:
        pytest.skip("no engine installed")
    for engine, split in splits:
        assert split == voices.split_of_engine(engine, config)
    assert all(s.split != "train" for s in specs if s.kind.startswith("stream"))


def test_commercial_only_leaves_out_non_commercial_voices() -> None:
    config = voices.VoicesConfig(words_per_engine=20, sentences_per_engine=10, stream_minutes=0, commercial_only=True)
    specs = voices.plan(config, ("mbrola", "rhvoice", "pico"), seed=0)
    assert not any(s.voice.non_commercial for s in specs)


def test_the_merged_manifest_still_reads_and_records_engine_and_licence(tmp_path: Path) -> None:
    if not shutil.which("espeak-ng") or not shutil.which("pico2wave"):
        pytest.skip("needs espeak-ng and pico2wave")
    build_dataset(tmp_path, per_class=2, progress=False)
    config = voices.VoicesConfig(
        words_per_engine=10, sentences_per_engine=4, stream_minutes=0.5, stream_s=15, val_engines=("pico",)
    )
    clips, streams = voices.build_voices(tmp_path, ("pico",), config, workers=1, progress=False)
    assert clips > 0 and streams == 2
    records = read_manifest(tmp_path / "manifest.csv")
    with (tmp_path / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(records) == len(rows)
    pico = [r for r in rows if r["engine"] == "pico"]
    assert {r["split"] for r in pico} == {"val"}
    assert {r["licence"] for r in pico} == {"Apache-2.0"}
    assert {r["kind"] for r in pico} == {"word", "sentence", "free"}
    assert {r["engine"] for r in rows} >= {"espeak-ng", "noise", "pico"}
    kinds = {r["kind"]: r for r in voices.streams_of(tmp_path)}
    assert set(kinds) == {"keywords", "keyword-free"}
    assert voices.parse_events(kinds["keywords"]["events"])
    assert kinds["keyword-free"]["events"] == ""


def test_channel_variety_changes_the_sound_and_records_what_it_did() -> None:
    rng = np.random.default_rng(1)
    audio = np.random.default_rng(0).standard_normal(CLIP_SAMPLES)
    out, description = degrade(audio, rng, ChannelConfig(tract_prob=1.0, room_prob=1.0, eq_prob=1.0))
    assert np.isfinite(out).all() and description.startswith("vtlp") and "room" in description
    assert vocal_tract(audio, 1.25).size == round(audio.size / 1.25)
    spectrum = np.abs(np.fft.rfft(telephone(audio))) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / 16_000)
    assert spectrum[freqs > 4500].sum() < 1e-3 * spectrum[(freqs > 500) & (freqs < 3000)].sum()
