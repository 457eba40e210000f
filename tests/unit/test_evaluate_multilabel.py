"""hark eval on a multi-label (sigmoid) version: per-class AP, mAP, and per-class F1 at the version's own
thresholds, measured as served, from clips whose labels name several classes or none."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark.core.model_store import load_version, publish_version, read_manifest
from hark_training import evaluate as evaluate_mod
from hark_training.evaluate import METRICS_FILE, evaluate_version
from tests.fixtures_models import SAMPLE_RATE, manifest_fields, tiny_onnx

# The tiny model's "yes" rises with loudness; "no" has a constant logit of 0 (probability 0.5), which its
# threshold of 0.9 never reaches.
THRESHOLDS = {"yes": 0.5, "no": 0.9}
CLIPS = [("loud", "yes")] * 4 + [("loud", "yes;no")] * 2 + [("quiet", "")] * 4


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i, (kind, label) in enumerate(CLIPS):
        audio = rng.uniform(-0.3, 0.3, SAMPLE_RATE) if kind == "loud" else rng.normal(0, 1e-4, SAMPLE_RATE)
        sf.write(tmp_path / f"{i}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"path": f"{i}.wav", "label": label, "split": "test", "voice": "v", "source": "test"})
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", "voice", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    fields = manifest_fields("drums", output_kind="sigmoid", background_labels=[], thresholds=THRESHOLDS)
    return publish_version(tmp_path / "store", fields, tiny_onnx(tmp_path / "model.onnx"))


def test_a_multilabel_version_gets_per_class_ap_map_and_f1_at_its_thresholds(version_dir: Path, data: Path) -> None:
    report = evaluate_version(version_dir, data, "test")
    yes, no = report["per_class"]["yes"], report["per_class"]["no"]
    assert yes["average_precision"] == 1.0 and yes["f1"] == 1.0 and yes["support"] == 6
    assert yes["threshold"] == 0.5
    # "no" scores 0.5 on every clip: its AP is its prevalence, and at 0.9 it never fires.
    assert no["average_precision"] == pytest.approx(0.2) and no["recall"] == 0.0 and no["support"] == 2
    assert no["threshold"] == 0.9
    assert report["per_class"]["up"]["average_precision"] is None  # a class that never occurs
    assert report["map"] == pytest.approx(0.6)  # over the classes that occur
    assert report["n"] == len(CLIPS)
    assert json.loads((version_dir / METRICS_FILE).read_text()) == report
    evaluation = read_manifest(version_dir).metrics["evaluation"]
    assert evaluation["map"] == report["map"] and evaluation["split"] == "test"
    load_version(version_dir)  # still verifies


def test_the_command_prints_the_multilabel_table(
    version_dir: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    evaluate_mod.add_command(parser.add_subparsers())
    manifest_bytes = (version_dir / "manifest.json").read_bytes()
    args = parser.parse_args(["eval", str(version_dir), "--data", str(data), "--out", str(tmp_path / "r"), "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "AP" in out and "threshold" in out and "mAP 0.600" in out
    assert (tmp_path / "r" / METRICS_FILE).is_file()
    assert (version_dir / "manifest.json").read_bytes() == manifest_bytes  # --out leaves the version alone


def test_a_class_the_version_does_not_know_is_refused(
    version_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sf.write(tmp_path / "x.wav", np.zeros(SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split,voice,source\nx.wav,yes;whistle,test,v,t\n")
    parser = argparse.ArgumentParser()
    evaluate_mod.add_command(parser.add_subparsers())
    args = parser.parse_args(["eval", str(version_dir), "--data", str(bad), "--quiet"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "whistle" in err and "Traceback" not in err


def test_tune_detection_writes_smoothing_release_and_thresholds_into_the_manifest(
    version_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    rng = np.random.default_rng(1)
    rows = ["filename,event_label,onset,offset"]
    for i in range(2):  # 8 s of near silence with a loud 2-s burst: a "yes" event
        audio = rng.normal(0, 1e-4, 8 * SAMPLE_RATE)
        audio[3 * SAMPLE_RATE : 5 * SAMPLE_RATE] = rng.uniform(-0.3, 0.3, 2 * SAMPLE_RATE)
        sf.write(scenes / f"{i}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append(f"{i}.wav,yes,3.0,5.0")
    (scenes / "events.csv").write_text("\n".join(rows) + "\n")
    parser = argparse.ArgumentParser()
    evaluate_mod.add_command(parser.add_subparsers())

    args = parser.parse_args(["eval", str(version_dir), "--events", str(scenes), "--tune-detection", "--quiet"])
    assert args.func(args) == 0
    assert "PSDS1" in capsys.readouterr().out
    m = read_manifest(version_dir)
    assert m.smoothing_windows in (1, 2, 3) and m.release_ratio in (0.25, 0.5, 0.75)
    assert m.thresholds["no"] == THRESHOLDS["no"]  # no "no" event to tune it on: it keeps its own
    assert m.metrics["detection"]["thresholds"].keys() == {"yes"}
    assert m.metrics["detection"]["chosen_on"] == str(scenes)
    load_version(version_dir)  # still verifies

    args = parser.parse_args(["eval", str(version_dir), "--tune-detection", "--quiet"])
    assert args.func(args) == 2
    assert "--events" in capsys.readouterr().err
