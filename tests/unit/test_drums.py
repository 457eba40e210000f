"""``hark data drums``: instrument names to classes, strong labels at a clip's centre, and a tiny kit built end
to end (a kit of generated hits in the hydrogen layout, so the test needs no Debian package)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark_training.data import read_manifest
from hark_training.drums import EXTRA_SOURCES, Event, SampleSource, build, classify_instrument, labels_at, sounding

SR = 16_000


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("Kick Stomp", "kick"),
        ("BassDrum", "kick"),
        ("c3 - bass drum 1", "kick"),
        ("Sabian Hat Closed", "hihat"),
        ("Closed HH", "hihat"),
        ('Crash/Ride Bell (Paiste Rude Crash/Ride 18")', "cymbal"),
        ("Floor Tom", "tom"),
        ("tomhi2", "tom"),
        ("Snare Rimshot", "snare"),
        ("Hand Clap", "clap"),
        ("Cowbell", ""),
        ("Djembe1 Slap", ""),
    ],
)
def test_instrument_names_map_to_classes(name: str, label: str) -> None:
    assert classify_instrument(name) == label


def test_a_clip_is_labelled_with_what_sounds_at_its_centre() -> None:
    events = [Event("kick", 1.0, 1.2), Event("cymbal", 1.1, 2.5)]
    assert labels_at(events, 1.15) == ("kick", "cymbal")
    assert labels_at(events, 2.0) == ("cymbal",)
    assert labels_at(events, 0.5) == ()


def test_a_hit_sounds_until_it_has_decayed_30_db() -> None:
    t = np.arange(SR) / SR
    hit = np.sin(2 * np.pi * 200 * t) * np.exp(-t / 0.05)  # -30 dB after about 0.17 s
    begin, end = sounding(hit)
    assert begin == 0.0 and 0.14 <= end <= 0.2


def _kit(root: Path, name: str, rng: np.random.Generator) -> None:
    kit = root / name
    kit.mkdir(parents=True)
    instruments = []
    for i, (instrument, freq) in enumerate([("Kick", 60), ("Snare", 400), ("Closed HH", 6000), ("Cowbell", 800)]):
        t = np.arange(SR // 4) / SR
        sf.write(kit / f"{i}.wav", np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.04) * rng.uniform(0.5, 1), SR)
        instruments.append(
            f"<instrument><name>{instrument}</name><layer><filename>{i}.wav</filename></layer></instrument>"
        )
    (kit / "drumkit.xml").write_text(
        '<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><instrumentList>'
        + "".join(instruments)
        + "</instrumentList></drumkit_info>"
    )


def test_a_data_set_from_kits_is_split_by_kit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    kits = tmp_path / "kits"
    for name in ("A", "B", "HardElectro1", "VariBreaks"):  # HardElectro1 is a test kit, VariBreaks a val kit
        _kit(kits, name, rng)
    manifest = build(tmp_path / "out", kits, seed=1, scenes={"train": 4, "val": 2, "test": 2}, extra=())

    records = read_manifest(manifest)
    assert {r.voice for r in records if r.split == "train"} == {"A", "B"}
    assert {r.voice for r in records if r.split == "test"} == {"HardElectro1"}
    assert {label for r in records for label in r.labels} <= {"kick", "snare", "hihat"}  # no cowbell class
    assert any(len(r.labels) != 1 for r in records)  # mixtures and silences: a multi-label set
    events = (tmp_path / "out" / "scenes" / "test" / "events.csv").read_text().splitlines()
    assert events[0] == "filename,event_label,onset,offset,kit" and len(events) > 1


def _hit(path: Path, freq: float) -> None:
    t = np.arange(SR // 8) / SR
    sf.write(path, np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.03), SR)


def test_a_folder_of_one_shots_is_read_by_its_file_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lmms = next(s for s in EXTRA_SOURCES if s.package == "lmms-common")
    source = SampleSource("lmms-drums", "lmms-common", tmp_path, lmms.rules)
    (tmp_path / "drums").mkdir()
    (tmp_path / "misc").mkdir()
    for name, freq in [("kick_hard01", 60), ("snare_rim01", 400), ("hihat_opened01", 6000), ("shaker01", 3000)]:
        _hit(tmp_path / "drums" / f"{name}.wav", freq)
    _hit(tmp_path / "misc" / "applause01.wav", 1000)  # matches no rule: left out
    (tmp_path / "drums" / "crash01.ogg").write_bytes(b"RIFF broken")  # named like a class, unreadable

    samples = {s.instrument: s.label for s in source.samples()}
    assert samples == {"drums/kick_hard01": "kick", "drums/snare_rim01": "snare", "drums/hihat_opened01": "hihat",
                       "drums/shaker01": ""}  # fmt: skip
    assert "skipped" in capsys.readouterr().err  # said, not silently dropped


@pytest.mark.parametrize(
    ("name", "label"),
    [("bd_808", "kick"), ("drum_bass_soft", "kick"), ("sn_dub", "snare"), ("drum_cymbal_closed", "hihat"),
     ("drum_cymbal_hard", "cymbal"), ("drum_tom_lo_soft", "tom"), ("perc_snap2", "clap"), ("tabla_na", ""),
     ("ambi_choir", None), ("loop_amen", None)],
)  # fmt: skip
def test_sonic_pi_sample_names_map_to_classes_distractors_or_nothing(name: str, label: str | None) -> None:
    rules = next(s for s in EXTRA_SOURCES if s.package == "sonic-pi-samples").rules
    lowered = name.replace("_", " ")
    assert next((lab for lab, pattern in rules if pattern.fullmatch(lowered)), None) == label


def test_extra_sources_train_only_and_keep_the_held_out_scenes_as_they_were(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    kits = tmp_path / "kits"
    for name in ("A", "HardElectro1", "VariBreaks"):
        _kit(kits, name, rng)
    shots = tmp_path / "shots"
    shots.mkdir()
    for name, freq in [("kick1", 70), ("snare1", 500)]:
        _hit(shots / f"{name}.wav", freq)
    extra = SampleSource(
        "shots", "test-shots", shots, (("kick", re.compile(r"kick\d")), ("snare", re.compile(r"snare\d")))
    )
    scenes = {"train": 4, "val": 2, "test": 2}
    without = read_manifest(build(tmp_path / "without", kits, seed=1, scenes=scenes, extra=()))
    with_extra = read_manifest(build(tmp_path / "with", kits, seed=1, scenes=scenes, extra=[extra]))

    assert {r.voice for r in with_extra if r.split == "train"} == {"A", "shots"}
    assert {r.source for r in with_extra if r.voice == "shots"} == {"test-shots"}
    for split in ("val", "test"):  # the same held-out scenes, clip for clip
        assert [(r.path.name, r.label) for r in without if r.split == split] == [
            (r.path.name, r.label) for r in with_extra if r.split == split
        ]
    same = (tmp_path / "without/scenes/test/events.csv").read_text() == (
        tmp_path / "with/scenes/test/events.csv"
    ).read_text()
    assert same
