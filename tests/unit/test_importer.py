"""``hark data import``: the catalogue of bad input. Each kind of bad file gets one clear line, the import goes
on with the rest, the summary counts every file, and nothing ends in a traceback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark import cli
from hark_training.data import read_manifest
from hark_training.importer import ImportFailed, import_data
from tests.fixtures_sounds import SR, write_class_folders

CLASSES = ["chirp", "clicks", "warble"]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "src", CLASSES, per_class=6)


def run_import(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["data", "import", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_a_clean_folder_imports_every_file_with_a_background_class(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_import(capsys, str(good), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "18 files found: 18 imported" in out
    records = read_manifest(tmp_path / "out" / "manifest.csv")
    assert {r.label for r in records} == {*CLASSES, "_silence_"}
    for label in CLASSES:  # every class in every split
        assert {r.split for r in records if r.label == label} == {"train", "val", "test"}
    # Every clip has the clip length (the median duration of the input, here 0.9 s).
    assert {sf.info(str(r.path)).frames for r in records} == {round(0.9 * SR)}


def test_every_bad_file_gets_one_line_and_the_summary_counts_it(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.sin(np.arange(SR) / SR * 2 * np.pi * 440) * 0.3
    (good / "chirp" / "notes.txt").write_text("not audio")  # unknown extension
    (good / "chirp" / "empty.wav").write_bytes(b"")  # empty
    (good / "clicks" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")  # unreadable
    sf.write(good / "warble" / "silent.wav", np.zeros((0, 1)), SR)  # a header, no samples
    shutil.copy(good / "clicks" / "00.wav", good / "chirp" / "stolen.wav")  # same audio, two classes
    shutil.copy(good / "warble" / "01.wav", good / "warble" / "copy.wav")  # same audio twice in a class
    (good / "tiny").mkdir()
    sf.write(good / "tiny" / "only.wav", x, SR)  # a class with one file cannot be split
    sf.write(good / "loose.wav", x, SR)  # not in a class folder
    sf.write(good / "warble" / "stereo-44k.wav", np.stack([x, x], axis=1) * 0.5, 44_100)  # converted, not skipped
    sf.write(good / "warble" / "long.ogg", np.tile(x, 4) * 0.5, SR)  # 4 s: cut into clips

    code, out, err = run_import(capsys, str(good), "--out", str(tmp_path / "out"))

    assert code == 0
    lines = err.splitlines()
    for needle in (
        "chirp/notes.txt: unknown extension .txt",
        "chirp/empty.wav: empty file",
        "clicks/broken.wav: cannot read it as audio",
        "warble/silent.wav: holds no samples",
        "chirp/stolen.wav: same audio as another class",
        "clicks/00.wav: same audio as another class",
        "warble/copy.wav: same audio as warble/01.wav",
        "tiny/only.wav: class tiny has 1 files; it needs 3",
        "loose.wav: not in a class folder",
    ):
        assert sum(needle in line for line in lines) == 1, (needle, err)
    assert all(line.startswith("skipped ") for line in lines)
    assert "28 files found: 19 imported" in out and "9 skipped" in out
    assert "converted, 2 channels mixed down to mono: 1" in out
    assert "converted, resampled from 44100 Hz: 1" in out
    assert re.search(r"longer than .* cut into [\d.]+ s clips: 1$", out, re.MULTILINE)
    records = read_manifest(tmp_path / "out" / "manifest.csv")
    originals = {r.path.name.split("-")[0] for r in records}
    assert "long" in originals and "stereo" in originals and "stolen" not in originals


def test_strict_fails_when_anything_was_skipped(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (good / "chirp" / "notes.txt").write_text("x")
    code, _, err = run_import(capsys, str(good), "--out", str(tmp_path / "out"), "--strict")
    assert code == 1 and "1 file(s) skipped (--strict)" in err


def test_fatal_problems_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_import(capsys, str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert code == 2 and err.startswith("error: ") and "is not a folder" in err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,class\na.wav,x\n")
    code, _, err = run_import(capsys, "--csv", str(bad_csv), "--out", str(tmp_path / "out"))
    assert code == 2 and "path,label[,group]" in err
    with pytest.raises(ImportFailed, match="at least two"):
        one = write_class_folders(tmp_path / "one", ["chirp"], per_class=4)
        import_data(tmp_path / "out", src=one, background="none")


def test_a_csv_splits_by_group_and_keeps_several_labels(tmp_path: Path) -> None:
    src = write_class_folders(tmp_path / "src", ["chirp", "clicks"], per_class=12)
    rows = ["path,label,group"]
    for i, path in enumerate(sorted(src.rglob("*.wav"))):
        label = path.parent.name if i % 4 else "chirp;clicks"
        rows.append(f"{path.relative_to(src)},{label},speaker{i % 6}")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")

    manifest, report, _ = import_data(tmp_path / "out", csv_path=src / "labels.csv")

    records = read_manifest(manifest)
    assert report.found == 24 and report.imported == 24 and not report.problems
    assert {r.label for r in records} == {"chirp", "clicks", "chirp;clicks"}  # multi-label: no _silence_ class
    split_of_group: dict[str, set[str]] = {}
    for r in records:
        split_of_group.setdefault(r.voice, set()).add(r.split)
    assert all(len(splits) == 1 for splits in split_of_group.values())  # no group in two splits
    assert {r.split for r in records} == {"train", "val", "test"}


def test_a_second_import_reuses_the_converted_clips(good: Path, tmp_path: Path) -> None:
    import_data(tmp_path / "out", src=good)
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("chirp/*.wav")}
    import_data(tmp_path / "out", src=good)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("chirp/*.wav")} == first
