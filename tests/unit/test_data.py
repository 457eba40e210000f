"""The keyword data set: its manifest contract, its voice-disjoint splits, its noise and its signal helpers."""

from __future__ import annotations

import argparse
import csv
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark_training import data
from hark_training.data import (
    KEYWORDS,
    LABELS,
    MANIFEST_COLUMNS,
    SPLITS,
    build_dataset,
    clip_counts,
    is_background,
    is_multilabel,
    manifest_labels,
    normalize_peak,
    place,
    read_manifest,
    split_sequence,
    split_variants,
    trim_silence,
)
from hark_training.noise import NOISE_KINDS, colored_noise, make_noise, mix_at_snr, noise_gain_for_snr, power

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

RATE = 16_000


# --- a tiny data set, built once ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data set of two clips per keyword, built with a process pool."""
    return build_dataset(tmp_path_factory.mktemp("tiny"), per_class=2, seed=7, workers=2, progress=False)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_starts_with_the_contract_columns_in_order(tiny: Path) -> None:
    with tiny.open(newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header[: len(MANIFEST_COLUMNS)]) == ("path", "label", "split", "voice", "source")


def test_labels_are_the_twelve_speech_commands_classes_in_order() -> None:
    assert LABELS == ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_", "_unknown_")


def test_every_label_is_present_with_its_planned_count(tiny: Path) -> None:
    counts: defaultdict[str, int] = defaultdict(int)
    for row in _rows(tiny):
        counts[row["label"]] += 1
    assert dict(counts) == clip_counts(2)


def test_every_clip_is_one_second_of_16_khz_mono_16_bit_pcm(tiny: Path) -> None:
    for record in read_manifest(tiny):
        info = sf.info(record.path)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (RATE, 1, RATE, "PCM_16"), record


def test_paths_are_relative_in_the_file_and_absolute_when_read(tiny: Path) -> None:
    rows, records = _rows(tiny), read_manifest(tiny)
    assert all(not Path(r["path"]).is_absolute() and r["path"].startswith(r["label"] + "/") for r in rows)
    assert all(r.path.is_absolute() and r.path.is_file() for r in records)


def test_no_voice_and_no_variant_is_heard_in_two_splits(tiny: Path) -> None:
    splits_of_voice, splits_of_variant = defaultdict(set), defaultdict(set)
    for row in _rows(tiny):
        splits_of_voice[row["voice"]].add(row["split"])
        if row["source"] == "espeak-ng":
            splits_of_variant[row["variant"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of_voice.values())
    assert all(len(s) == 1 for s in splits_of_variant.values())


def test_every_split_has_speech_from_some_voice(tiny: Path) -> None:
    speech_splits = {r.split for r in read_manifest(tiny) if r.source == "espeak-ng"}
    assert speech_splits == set(SPLITS)


def test_silence_is_noise_and_everything_else_is_espeak_speech(tiny: Path) -> None:
    for record in read_manifest(tiny):
        assert record.source == ("noise" if record.label == "_silence_" else "espeak-ng"), record


def test_speakers_are_espeak_formant_voices_never_mbrola(tiny: Path) -> None:
    for row in _rows(tiny):
        if row["source"] == "espeak-ng":
            assert row["accent"] in data.ACCENTS and row["voice"] == f"{row['accent']}+{row['variant']}"
            assert "mb" not in row["accent"].split("-")


def test_the_word_lies_entirely_inside_the_clip(tiny: Path) -> None:
    for row in _rows(tiny):
        if row["source"] == "espeak-ng":
            assert 0.0 <= float(row["start_s"]) < float(row["end_s"]) <= 1.0


def test_same_seed_gives_identical_files_whatever_the_worker_count(tiny: Path, tmp_path: Path) -> None:
    again = build_dataset(tmp_path, per_class=2, seed=7, workers=1, progress=False)
    assert again.read_bytes() == tiny.read_bytes()
    for row in _rows(tiny):
        assert (tmp_path / row["path"]).read_bytes() == (tiny.parent / row["path"]).read_bytes(), row["path"]


def test_another_seed_gives_another_data_set(tiny: Path, tmp_path: Path) -> None:
    other = build_dataset(tmp_path, per_class=2, seed=8, workers=1, progress=False)
    assert other.read_bytes() != tiny.read_bytes()


def test_rebuilding_removes_clips_of_the_previous_build(tmp_path: Path) -> None:
    stale = tmp_path / "yes" / "stale.wav"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    build_dataset(tmp_path, per_class=1, seed=0, workers=1, progress=False)
    assert not stale.exists()


def test_read_manifest_rejects_a_file_without_the_contract_columns(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.csv"
    bad.write_text("label,path\nyes,yes/1.wav\n")
    with pytest.raises(ValueError, match="columns"):
        read_manifest(bad)


def test_read_manifest_takes_the_classes_from_the_data(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label,split,voice,source\n"
        "w/1.wav,whistle,train,a,import\nc/1.wav,clap,train,a,import\nm/1.wav,whistle;clap,val,b,import\n"
    )
    records = read_manifest(manifest)
    assert manifest_labels(records) == ("whistle", "clap")  # order of first appearance
    assert records[2].labels == ("whistle", "clap")
    assert is_multilabel(records)
    assert not is_multilabel(records[:2])


def test_a_run_can_leave_engines_or_non_commercial_material_out_of_training_only(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label,split,voice,source,engine,licence\n"
        "a.wav,yes,train,x,espeak-ng,espeak-ng,GPL-3.0\n"
        "b.wav,yes,train,de4,espeak-ng,mbrola,MBROLA voice licence (non-commercial)\n"
        "c.wav,no,train,paul,dectalk,dectalk,Unlicense (non-commercial)\n"
        "d.wav,no,val,de4,espeak-ng,mbrola,MBROLA voice licence (non-commercial)\n"
        "e.wav,go,test,bdl,rhvoice,rhvoice,LGPL-2.1\n"
    )
    kept = lambda selection: [r.path.name for r in data.training_selection(read_manifest, selection)(manifest)]  # noqa: E731
    assert kept(data.TrainingSelection()) == ["a.wav", "b.wav", "c.wav", "d.wav", "e.wav"]
    assert kept(data.TrainingSelection(exclude_engines=("mbrola",))) == ["a.wav", "c.wav", "d.wav", "e.wav"]
    # val and test keep every engine's clips: runs that train on less are measured on the same clips
    assert kept(data.TrainingSelection(commercial_only=True)) == ["a.wav", "d.wav", "e.wav"]


def test_a_run_can_leave_kinds_of_clip_out_of_training_only(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label,split,voice,source,engine,licence,kind\n"
        "a.wav,yes,train,x,espeak-ng,espeak-ng,GPL-3.0,word\n"
        "b.wav,yes,train,x,espeak-ng,espeak-ng,GPL-3.0,sentence\n"
        "c.wav,_unknown_,train,x,espeak-ng,espeak-ng,GPL-3.0,free\n"
        "d.wav,_unknown_,val,x,espeak-ng,espeak-ng,GPL-3.0,free\n"
    )
    assert read_manifest(manifest)[1].kind == "sentence"
    without_running_speech = data.training_selection(
        read_manifest, data.TrainingSelection(exclude_kinds=("sentence", "free"))
    )
    assert [r.path.name for r in without_running_speech(manifest)] == ["a.wav", "d.wav"]


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (data.TrainingSelection(exclude_engines=("mbrolla",)), "no engines mbrolla to leave out .it has: espeak-ng"),
        (data.TrainingSelection(exclude_kinds=("sentences",)), "no kinds sentences to leave out .it has: free, word"),
    ],
)
def test_a_run_refuses_to_leave_out_what_the_data_set_does_not_have(
    tmp_path: Path, selection: data.TrainingSelection, message: str
) -> None:
    """A misspelt engine or kind would leave nothing out: the run would pass for a leave-one-out run."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label,split,voice,source,engine,licence,kind\n"
        "a.wav,yes,train,x,espeak-ng,espeak-ng,GPL-3.0,word\n"
        "c.wav,_unknown_,train,x,espeak-ng,espeak-ng,GPL-3.0,free\n"
    )
    with pytest.raises(ValueError, match=message):
        data.training_selection(read_manifest, selection)(manifest)


def test_read_manifest_rejects_an_unknown_split(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.csv"
    bad.write_text("path,label,split,voice,source\nmaybe/1.wav,maybe,training,en+m3,espeak-ng\n")
    with pytest.raises(ValueError, match="training"):
        read_manifest(bad)


def test_background_classes_are_named_like_this() -> None:
    assert is_background("_silence_") and is_background("_noise_")
    assert not is_background("whistle") and not is_background("_") and not is_background("snake_case")


# --- the plan -------------------------------------------------------------------------------------------------------


def test_variants_split_about_70_15_15_without_overlap() -> None:
    variants = [f"v{i}" for i in range(100)]
    split_of = split_variants(variants, seed=0)
    assert set(split_of) == set(variants)
    sizes = {s: sum(1 for v in split_of.values() if v == s) for s in SPLITS}
    assert sizes == {"train": 70, "val": 15, "test": 15}


def test_variant_split_is_deterministic_and_depends_on_the_seed() -> None:
    variants = [f"v{i}" for i in range(100)]
    assert split_variants(variants, seed=3) == split_variants(list(reversed(variants)), seed=3)
    assert split_variants(variants, seed=3) != split_variants(variants, seed=4)


def test_split_sequence_keeps_the_proportions_and_interleaves() -> None:
    splits = split_sequence(1000, phase=0.0)
    assert abs(splits.count("train") - 700) <= 3
    assert abs(splits.count("val") - 150) <= 3
    assert {*splits[:10]} == set(SPLITS)


def test_unknown_is_about_one_and_a_half_keyword_classes_and_silence_one() -> None:
    counts = clip_counts(600)
    assert [counts[k] for k in KEYWORDS] == [600] * len(KEYWORDS)
    assert counts["_silence_"] == 600 and counts["_unknown_"] == 900


def test_unknown_words_include_near_misses_but_no_keyword_or_homophone_of_one() -> None:
    assert not set(data.UNKNOWN_WORDS) & set(KEYWORDS)
    assert {"yet", "yellow", "note", "cup", "town", "light", "own", "stock", "top", "goat", "ago"} <= set(
        data.UNKNOWN_WORDS
    )
    accents = data.list_accents()
    assert data.drop_homophones(data.UNKNOWN_WORDS, KEYWORDS, accents) == data.UNKNOWN_WORDS


def test_homophones_of_keywords_are_dropped() -> None:
    assert data.drop_homophones(("know", "write", "cat"), KEYWORDS, ("en-us",)) == ("cat",)


def test_accents_are_espeak_formant_voice_files_never_mbrola() -> None:
    assert all(file.startswith("gmw/en") for file in data.ACCENTS.values())
    assert {"en", "en-us"} <= set(data.list_accents())


def test_the_variant_changes_the_voice_in_every_accent() -> None:
    for accent in data.list_accents():
        m3 = data.synthesize("yes", data.Voice(accent, "m3"), speed=175, pitch=50)
        f2 = data.synthesize("yes", data.Voice(accent, "f2"), speed=175, pitch=50)
        assert m3.shape != f2.shape or not np.allclose(m3, f2), accent


# --- signal helpers -------------------------------------------------------------------------------------------------


def _tone(seconds: float, hz: float = 440.0, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return level * np.sin(2 * np.pi * hz * t)


def test_trim_removes_leading_and_trailing_silence_but_keeps_the_sound() -> None:
    word = _tone(0.3)
    trimmed = trim_silence(np.concatenate([np.zeros(4000), word, np.zeros(6000)]), RATE, pad_ms=0.0)
    assert abs(trimmed.size - word.size) <= 160  # within one 10-ms frame
    assert np.max(np.abs(trimmed)) == pytest.approx(0.5, rel=1e-3)


def test_trim_of_a_silent_clip_is_empty() -> None:
    assert trim_silence(np.zeros(RATE), RATE).size == 0
    assert trim_silence(np.zeros(0), RATE).size == 0


def test_normalize_peak_reaches_the_target_level() -> None:
    out = normalize_peak(_tone(0.5, level=0.01), peak_dbfs=-6.0)
    assert 20 * np.log10(np.max(np.abs(out))) == pytest.approx(-6.0, abs=1e-6)


def test_normalize_peak_of_silence_stays_silent_without_dividing_by_zero() -> None:
    with np.errstate(all="raise"):
        out = normalize_peak(np.zeros(RATE), peak_dbfs=-1.0)
    assert np.all(out == 0.0)


def test_place_puts_the_word_at_the_offset_and_refuses_one_that_does_not_fit() -> None:
    clip = place(np.ones(100), offset=50, n=200)
    assert clip.size == 200 and clip[50:150].sum() == 100 and clip.sum() == 100
    with pytest.raises(ValueError):
        place(np.ones(100), offset=150, n=200)


# --- noise ----------------------------------------------------------------------------------------------------------


def _spectral_slope(x: np.ndarray, low_hz: float = 100.0, high_hz: float = 6_000.0) -> float:
    """Slope of log10 power against log10 frequency, fitted over ``low_hz``..``high_hz``."""
    psd = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, d=1.0 / RATE)
    band = (freqs >= low_hz) & (freqs <= high_hz)
    return float(np.polyfit(np.log10(freqs[band]), np.log10(psd[band]), 1)[0])


@pytest.mark.parametrize(("exponent", "kind"), [(0.0, "white"), (1.0, "pink"), (2.0, "brown")])
def test_colored_noise_has_the_spectral_slope_of_its_colour(exponent: float, kind: str) -> None:
    x = make_noise(kind, 4 * RATE, np.random.default_rng(0), RATE)
    assert _spectral_slope(x) == pytest.approx(-exponent, abs=0.1)


def test_colored_noise_has_no_energy_below_the_highpass() -> None:
    x = colored_noise(RATE, 2.0, np.random.default_rng(0), RATE, highpass_hz=20.0)
    assert np.all(np.abs(np.fft.rfft(x))[:20] < 1e-9)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_every_noise_kind_is_finite_unit_rms_and_reproducible(kind: str) -> None:
    x = make_noise(kind, RATE, np.random.default_rng(5), RATE)
    assert x.shape == (RATE,) and np.all(np.isfinite(x))
    assert power(x) == pytest.approx(1.0, rel=1e-6)
    assert np.array_equal(x, make_noise(kind, RATE, np.random.default_rng(5), RATE))


def test_unknown_noise_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="noise kind"):
        make_noise("rain", RATE, np.random.default_rng(0))


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("snr_db", [0.0, 5.0, 17.5, 40.0])
def test_mixing_achieves_the_requested_snr(kind: str, snr_db: float) -> None:
    clip = place(_tone(0.4, level=0.3), offset=3000)
    word_power = power(_tone(0.4, level=0.3))
    noise = make_noise(kind, RATE, np.random.default_rng(1), RATE)
    mixed = mix_at_snr(clip, noise, snr_db, signal_power=word_power)
    assert 10 * np.log10(word_power / power(mixed - clip)) == pytest.approx(snr_db, abs=0.5)


def test_mixing_with_silence_on_either_side_adds_nothing() -> None:
    assert noise_gain_for_snr(0.0, 1.0, 10.0) == 0.0
    assert noise_gain_for_snr(1.0, 0.0, 10.0) == 0.0


# --- command line ---------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hark")
    data.add_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_data_build_parses_its_options() -> None:
    args = _parser().parse_args(["data", "build", "--out", "x", "--per-class", "5", "--seed", "3", "--workers", "4"])
    assert (args.out, args.per_class, args.seed, args.workers) == (Path("x"), 5, 3, 4)
    assert callable(args.func)


def test_data_build_refuses_a_per_class_of_zero() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["data", "build", "--per-class", "0"])


def test_data_stats_prints_counts_per_label_and_split(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["data", "stats", "--manifest", str(tiny.parent)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "train" in out and "test" in out
    assert all(label in out for label in LABELS)


def test_data_stats_fails_cleanly_on_a_missing_manifest(tmp_path: Path) -> None:
    args = _parser().parse_args(["data", "stats", "--manifest", str(tmp_path / "nope.csv")])
    assert args.func(args) == 1


def test_variants_that_sound_identical_count_as_one_voice() -> None:
    kept = data.distinct_variants(("klatt", "klatt6", "m3"))
    assert len(kept) == 2 and "m3" in kept
