"""Other speech engines as data: reserved voices stay out, whole engines are held out, running speech is cut
where the keyword is, and the manifest says where every clip came from and under what licence."""

from __future__ import annotations

import csv
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hark import cli
from hark_training import engines, voices
from hark_training.channel import ChannelConfig, degrade, telephone, vocal_tract
from hark_training.data import CLIP_SAMPLES, KEYWORDS, build_dataset, read_manifest
from hark_training.engines import (
    DECTALK_LICENCE,
    GNUSPEECH_LICENCE,
    KOKORO_LICENCE,
    RESERVED_VOICES,
    EngineError,
    EngineVoice,
    Prosody,
    check_allowed,
    installed_voices,
    kokoro_phonemes,
    kokoro_style,
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


ALL_ENGINES = ["mbrola", "rhvoice", "pico", "piper", "dectalk", "gnuspeech", "kokoro"]
NEW_ENGINES = ["dectalk", "gnuspeech", "kokoro"]


def _voices_of(engine: str) -> list[EngineVoice]:
    found = installed_voices((engine,))
    if not found:
        pytest.skip(f"{engine} is not installed (make system-deps-voices; pip install -e '.[voices]')")
    return found


def _spoken_seconds(audio: np.ndarray) -> float:
    """Seconds between the first and last sample above -34 dBFS: how long the word itself lasts."""
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return float(loud[-1] - loud[0]) / 16_000 if loud.size else 0.0


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_each_installed_engine_says_a_keyword(engine: str) -> None:
    audio = speak(_voices_of(engine)[0], "stop", Prosody(rate=1.1, pitch=0.9))
    assert 0.15 < audio.size / 16_000 < 2.0
    assert np.abs(audio).max() > 0.05


def _sounds_like_a_word(audio: np.ndarray, what: str) -> None:
    assert np.isfinite(audio).all(), what
    assert 0.15 < _spoken_seconds(audio) < 1.0, what
    assert np.sqrt(np.mean(audio**2)) > 0.01, what


@pytest.mark.parametrize("engine", NEW_ENGINES)
def test_every_voice_of_the_new_engines_says_a_keyword_and_each_is_a_different_speaker(engine: str) -> None:
    voices_ = _voices_of(engine)
    for word in ("yes", "stop"):
        _sounds_like_a_word(speak(voices_[0], word, Prosody()), f"{voices_[0].name} {word}")
    said = {v.voice: speak(v, "left", Prosody()) for v in voices_}
    for name, audio in said.items():
        _sounds_like_a_word(audio, f"{name} left")
    first = said[voices_[0].voice]
    for name, audio in list(said.items())[1:]:
        assert audio.size != first.size or not np.allclose(audio, first, atol=1e-3), name


@pytest.mark.parametrize("engine", NEW_ENGINES)
def test_rate_changes_how_long_a_new_engine_speaks(engine: str) -> None:
    voice = _voices_of(engine)[0]
    text = "the house over there was quiet"
    slow, fast = speak(voice, text, Prosody(rate=0.75)), speak(voice, text, Prosody(rate=1.3))
    assert _spoken_seconds(fast) < 0.9 * _spoken_seconds(slow)


def test_new_engines_record_their_licences_and_dectalk_is_not_for_commercial_use() -> None:
    assert EngineVoice("dectalk", "paul", DECTALK_LICENCE).non_commercial
    assert not EngineVoice("gnuspeech", "male", GNUSPEECH_LICENCE).non_commercial
    assert not EngineVoice("kokoro", "jm_kumo", KOKORO_LICENCE).non_commercial
    for engine in NEW_ENGINES:
        for v in installed_voices((engine,)):
            assert v.licence == {"dectalk": DECTALK_LICENCE, "gnuspeech": GNUSPEECH_LICENCE}.get(engine, KOKORO_LICENCE)


def test_a_gnuspeech_failure_is_an_engine_error_and_the_engine_keeps_working() -> None:
    voice = _voices_of("gnuspeech")[0]
    with pytest.raises(EngineError):
        speak(EngineVoice("gnuspeech", "robot", GNUSPEECH_LICENCE), "yes")
    assert speak(voice, "yes").size > 0


def test_gnuspeech_says_a_text_the_same_way_whatever_it_said_before() -> None:
    """Its random intonation is seeded from the request, not the system's entropy: a data set renders the same
    speech on every run and whichever worker's server speaks which text in which order."""
    voice = _voices_of("gnuspeech")[0]
    first = speak(voice, "yes", Prosody(rate=1.1))
    speak(voice, "stop the music", Prosody())
    again = speak(voice, "yes", Prosody(rate=1.1))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, speak(voice, "yes", Prosody(rate=1.1, pitch=1.05)))


def test_a_gnuspeech_server_that_stops_answering_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    voice = _voices_of("gnuspeech")[0]
    assert speak(voice, "yes").size > 0
    server = engines._GNUSPEECH._proc
    assert server is not None
    monkeypatch.setattr(engines, "GNUSPEECH_TIMEOUT_S", 1.0)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(EngineError, match="no answer"):
            speak(voice, "yes")
        assert server.poll() is not None  # killed and reaped, not left behind
        monkeypatch.undo()  # a new server's first answer may take over a second on a busy machine
        assert speak(voice, "stop").size > 0
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng")
def test_kokoro_hears_espeak_ng_phonemes_in_its_own_symbols() -> None:
    assert kokoro_phonemes("yes") == "jˈɛs."  # noqa: RUF001
    assert kokoro_phonemes("stop") == "stˈɑp."  # noqa: RUF001
    assert kokoro_phonemes("left") == "lˈɛft."  # noqa: RUF001
    assert kokoro_phonemes("no?").endswith("?") and kokoro_phonemes("go,").endswith(",")
    # Diphthongs and affricates are single symbols in Kokoro's set; no length marks or ties are left.
    said = kokoro_phonemes("go right, down; boy, day. church judge bird water")
    for symbol in ("O", "I", "W", "Y", "A", "ʧ", "ʤ", "ɜɹ", "T"):
        assert symbol in said, symbol
    assert not set("ː^") & set(said)  # noqa: RUF001
    if installed_voices(("kokoro",)):
        from hark_training.engines import _kokoro

        assert set(said) <= set(_kokoro().vocab)


def test_a_kokoro_blend_mixes_two_voices_style_vectors() -> None:
    styles = {"a": np.zeros((4, 1, 2), np.float32), "b": np.ones((4, 1, 2), np.float32)}
    assert np.allclose(kokoro_style("a+b@0.25", styles), 0.25)
    assert kokoro_style("b", styles) is styles["b"]
    for bad in ("c", "a+c@0.5", "a+b", "a+b@x"):
        with pytest.raises(EngineError):
            kokoro_style(bad, styles)


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
    specs = voices.plan(config, ("mbrola", "rhvoice", "pico", "dectalk", "gnuspeech", "kokoro"), seed=0)
    assert not any(s.voice.non_commercial for s in specs)
    assert not any(s.voice.engine == "dectalk" for s in specs)


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


def test_adding_the_last_engine_alone_gives_what_rendering_every_engine_does(tmp_path: Path) -> None:
    if not shutil.which("espeak-ng") or not shutil.which("pico2wave"):
        pytest.skip("needs espeak-ng and pico2wave")
    config = voices.VoicesConfig(
        words_per_engine=6, sentences_per_engine=2, stream_minutes=0.25, stream_s=15, val_engines=("pico",)
    )
    at_once, in_two = tmp_path / "at-once", tmp_path / "in-two"
    for out in (at_once, in_two):
        build_dataset(out, per_class=1, progress=False)
    voices.build_voices(at_once, ("espeak-ng", "pico"), config, workers=1, progress=False)
    voices.build_voices(in_two, ("espeak-ng",), config, workers=1, progress=False)
    clips, _ = voices.build_voices(in_two, ("espeak-ng", "pico"), config, workers=1, progress=False, only=("pico",))

    assert clips == sum(1 for r in read_manifest(in_two / "manifest.csv") if r.engine == "pico")
    assert (in_two / "manifest.csv").read_text() == (at_once / "manifest.csv").read_text()
    assert voices.streams_of(in_two) == voices.streams_of(at_once)


def test_more_keyword_free_windows_add_training_clips_and_change_nothing_else(tmp_path: Path) -> None:
    if not shutil.which("espeak-ng"):
        pytest.skip("needs espeak-ng")
    one, three = tmp_path / "one", tmp_path / "three"
    for out, windows in ((one, 1), (three, 3)):
        build_dataset(out, per_class=1, progress=False)
        config = voices.VoicesConfig(words_per_engine=4, sentences_per_engine=8, stream_minutes=0, free_windows=windows)
        voices.build_voices(out, ("espeak-ng",), config, workers=1, progress=False)
    with (one / "manifest.csv").open() as f:
        before = list(csv.DictReader(f))
    with (three / "manifest.csv").open() as f:
        after = list(csv.DictReader(f))

    extra = [r for r in after if r["path"].endswith(("_w1.wav", "_w2.wav"))]
    assert extra, "a second of keyword-free speech beyond the first gives another window"
    assert {(r["kind"], r["label"], r["split"]) for r in extra} == {("free", "_unknown_", "train")}
    assert [r for r in after if r not in extra] == before
    for r in extra:
        first = r["path"].rsplit("_w", 1)[0] + ".wav"
        assert (three / first).read_bytes() == (one / first).read_bytes()
        assert (three / r["path"]).read_bytes() != (three / first).read_bytes()


def test_a_second_render_says_the_training_engines_again_from_the_next_seed_and_changes_nothing_else() -> None:
    engines = ("espeak-ng", "mbrola", "pico")
    config = voices.VoicesConfig(words_per_engine=6, sentences_per_engine=3, stream_minutes=0.25, stream_s=15)
    once = voices.plan(config, engines, seed=0)
    twice = voices.plan(replace(config, renders=2), engines, seed=0)
    if not any(s.voice.engine == "mbrola" for s in once):
        pytest.skip("needs MBROLA")

    assert twice[: len(once)] == once
    again = twice[len(once) :]
    assert again == [replace(s, render=1) for s in voices.plan(config, ("mbrola",), seed=1)]
    assert {(s.voice.engine, s.split) for s in again} == {("mbrola", "train")}, "espeak-ng and held-out engines once"
    assert not {s.path for s in again} & {s.path for s in once}
    assert all("/r1_" in s.path for s in again)


def test_a_dry_training_build_changes_only_the_training_clips(tmp_path: Path) -> None:
    if not shutil.which("espeak-ng"):
        pytest.skip("needs espeak-ng")
    rows = {}
    for name, dry in (("varied", False), ("dry", True)):
        out = tmp_path / name
        build_dataset(out, per_class=1, progress=False)
        config = voices.VoicesConfig(words_per_engine=6, sentences_per_engine=3, stream_minutes=0, dry_training=dry)
        voices.build_voices(out, ("espeak-ng",), config, workers=1, progress=False)
        with (out / "manifest.csv").open() as f:
            rows[name] = [r for r in csv.DictReader(f) if r["path"].startswith("engines/")]

    def held_out(rs: list[dict[str, str]]) -> list[dict[str, str]]:
        return [r for r in rs if r["split"] != "train"]

    assert held_out(rows["dry"]) == held_out(rows["varied"]) and held_out(rows["dry"])
    for r in held_out(rows["dry"]):
        assert (tmp_path / "dry" / r["path"]).read_bytes() == (tmp_path / "varied" / r["path"]).read_bytes()
    trained = [r for r in rows["dry"] if r["split"] == "train"]
    assert trained and {r["channel"] for r in trained} == {"dry"}
    assert {r["channel"] for r in rows["varied"] if r["split"] == "train"} != {"dry"}


def test_hark_data_build_renders_the_engines_and_hark_data_voices_adds_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not shutil.which("espeak-ng") or not shutil.which("pico2wave"):
        pytest.skip("needs espeak-ng and pico2wave")
    small = ["--words-per-engine", "4", "--sentences-per-engine", "1", "--stream-minutes", "0", "--no-progress"]
    build = ["data", "build", "--out", str(tmp_path), "--per-class", "1", "--workers", "1"]
    assert cli.main([*build, "--engines", "espeak-ng", *small]) == 0
    add = ["data", "voices", "--out", str(tmp_path), "--engines", "espeak-ng,pico", "--only", "pico", "--workers", "1"]
    assert cli.main([*add, *small]) == 0
    assert " streams from pico in " in capsys.readouterr().out

    engines = {r.engine for r in read_manifest(tmp_path / "manifest.csv")}
    assert {"espeak-ng", "pico"} <= engines
    assert cli.main([*add, *small]) == 1  # pico is there already


def test_only_an_engine_the_build_would_render_last_and_does_not_have_can_be_added(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split,engine\nengines/pico/a.wav,yes,val,pico\n")
    config = voices.VoicesConfig(val_engines=("pico",), test_engines=())
    with pytest.raises(RuntimeError, match="must be the last of --engines"):
        voices.rows_to_keep(manifest, [], ("pico", "rhvoice"), ("pico",), config)
    with pytest.raises(RuntimeError, match="already has pico"):
        voices.rows_to_keep(manifest, [], ("rhvoice", "pico"), ("pico",), config)
    with pytest.raises(RuntimeError, match="pico's clips are in val, these options put them in train"):
        voices.rows_to_keep(manifest, [], ("pico", "rhvoice"), ("rhvoice",), voices.VoicesConfig(val_engines=()))


def test_channel_variety_changes_the_sound_and_records_what_it_did() -> None:
    rng = np.random.default_rng(1)
    audio = np.random.default_rng(0).standard_normal(CLIP_SAMPLES)
    out, description = degrade(audio, rng, ChannelConfig(tract_prob=1.0, room_prob=1.0, eq_prob=1.0))
    assert np.isfinite(out).all() and description.startswith("vtlp") and "room" in description
    assert vocal_tract(audio, 1.25).size == round(audio.size / 1.25)
    spectrum = np.abs(np.fft.rfft(telephone(audio))) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / 16_000)
    assert spectrum[freqs > 4500].sum() < 1e-3 * spectrum[(freqs > 500) & (freqs < 3000)].sum()
