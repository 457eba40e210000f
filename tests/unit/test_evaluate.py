"""hark eval: the metrics on hand-checkable cases, the report files, and evaluating a published version as served."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from hark.core.model_store import (
    MANIFEST_FILE,
    MODEL_FILE,
    ModelStore,
    VerificationError,
    load_version,
    read_manifest,
    sha256_file,
    update_metrics,
)
from hark_training import evaluate as evaluate_mod
from hark_training.config import AugmentConfig, TrainConfig
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.evaluate import (
    CONFUSION_FILE,
    METRICS_FILE,
    REPORT_FILES,
    ROC_FILE,
    classification_report,
    evaluate_version,
    format_table,
    resolve_version,
    write_report,
)
from hark_training.export import export_run
from hark_training.train import train
from tests.fixtures_data import write_tone_dataset

PER_SPLIT = {"train": 8, "val": 2, "test": 3}
QUIET = AugmentConfig(gain_db=0.0, noise_prob=0.0, time_masks=0, freq_masks=0)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone_dataset(tmp_path_factory.mktemp("data"), PER_SPLIT)


@pytest.fixture(scope="module")
def run_dir(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed CNN learns the tones in three epochs (test accuracy near 0.9, chance is 1/12)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "tones"
    config = TrainConfig(data=manifest, out=out, arch="cnn", epochs=3, batch_size=16, threads=1, augment=QUIET)
    return train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)


@pytest.fixture(scope="module")
def published(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("store"), "tones")


@pytest.fixture
def version_dir(published: Path, tmp_path: Path) -> Path:
    """A fresh copy of the published version, so each test may change it."""
    copy = tmp_path / "store" / "tones" / published.name
    shutil.copytree(published, copy)
    return copy


def one_hot(indices: list[int], k: int, confidence: float = 0.9) -> np.ndarray:
    scores = np.full((len(indices), k), (1.0 - confidence) / (k - 1), dtype=np.float32)
    scores[np.arange(len(indices)), indices] = confidence
    return scores


def assert_png(path: Path, min_side: int = 300) -> None:
    image = imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert min(image.shape[:2]) >= min_side, image.shape
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas


# ------------------------------------------------------------------------------------------------ metrics


def test_a_perfect_classifier_scores_one_everywhere() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    report = classification_report(one_hot(list(y), 3), y, ["a", "b", "c"])
    assert report["n"] == 6
    assert report["accuracy"] == report["macro_f1"] == report["macro_auroc"] == 1.0
    assert report["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert all(c["precision"] == c["recall"] == c["auroc"] == 1.0 for c in report["per_class"].values())


def test_a_known_confusion_matrix() -> None:
    """Truth a a a b b c, predicted a a b b b a: every figure below follows by hand."""
    y = np.array([0, 0, 0, 1, 1, 2])
    scores = one_hot([0, 0, 1, 1, 1, 0], 3)
    # Column c: the one true c (clip 5) scores 0.3, above four of the five other clips, so its AUROC is 4/5.
    scores[:, 2] = [0.1, 0.2, 0.4, 0.05, 0.05, 0.3]
    report = classification_report(scores, y, ["a", "b", "c"])
    assert report["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"], b["support"]) == (pytest.approx(2 / 3), 1.0, 2)
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)  # never predicted: 0, not NaN
    assert b["f1"] == pytest.approx(0.8)
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert c["auroc"] == pytest.approx(0.8)


def test_absent_classes_leave_the_macro_figures_and_nothing_is_nan() -> None:
    y = np.array([0, 0, 1, 1])
    report = classification_report(one_hot([0, 1, 1, 1], 3), y, ["a", "b", "c"])
    assert report["per_class"]["c"]["auroc"] is None and report["per_class"]["c"]["support"] == 0
    assert report["macro_recall"] == pytest.approx((0.5 + 1.0) / 2)  # over a and b only
    json.dumps(report, allow_nan=False)
    empty = classification_report(np.empty((0, 3), np.float32), np.empty(0, np.int64), ["a", "b", "c"])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["macro_auroc"] is None


def test_scores_must_fit_the_labels() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        classification_report(one_hot([0, 1], 3), np.array([0, 1]), ["a", "b"])


def test_the_report_files_and_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(LABELS), 200)
    scores = np.abs(rng.normal(0, 0.3, (200, len(LABELS)))).astype(np.float32)
    scores[np.arange(200), y] += 0.6  # a decent classifier: most argmaxes right
    report = write_report(tmp_path, scores, y, LABELS, split="test")
    assert_png(tmp_path / CONFUSION_FILE)
    assert_png(tmp_path / ROC_FILE)
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == report
    assert report["split"] == "test" and 0.5 < report["accuracy"] < 1.0
    table = format_table(report)
    assert all(label in table for label in LABELS) and f"{report['macro_f1']:.3f}" in table


# --------------------------------------------------------------------------------------------- a version


def test_export_writes_the_report_beside_the_model(published: Path, manifest: Path) -> None:
    m = read_manifest(published)
    assert all((published / name).is_file() for name in REPORT_FILES)
    metrics = json.loads((published / METRICS_FILE).read_text())
    assert metrics["n"] == m.metrics["n_test"] == PER_SPLIT["test"] * len(LABELS)
    assert m.metrics["evaluation"]["accuracy"] == round(metrics["accuracy"], 4) == m.metrics["test_accuracy"]
    assert m.metrics["per_class_accuracy"] == {k: round(c["recall"], 4) for k, c in metrics["per_class"].items()}
    assert metrics["data_manifest_sha256"] == sha256_file(manifest)


def test_eval_measures_what_is_served_and_records_it(version_dir: Path, manifest: Path) -> None:
    before = read_manifest(version_dir)
    exported = json.loads((version_dir / METRICS_FILE).read_text())
    (version_dir / METRICS_FILE).unlink()
    report = evaluate_version(version_dir, manifest, "test")
    # From the audio, through the served runner: the same figures export measured on cached features.
    assert report["accuracy"] == pytest.approx(exported["accuracy"]) and report["accuracy"] > 0.75
    assert report["confusion"] == exported["confusion"]
    assert report["macro_auroc"] == pytest.approx(exported["macro_auroc"], abs=1e-6)
    assert json.loads((version_dir / METRICS_FILE).read_text()) == report
    after = read_manifest(version_dir)
    assert after.metrics["evaluation"]["accuracy"] == round(report["accuracy"], 4)
    assert after.metrics["evaluation"]["split"] == "test" and after.metrics["evaluation"]["n"] == report["n"]
    assert after.model_dump(exclude={"metrics"}) == before.model_dump(exclude={"metrics"})
    assert after.metrics["test_accuracy"] == before.metrics["test_accuracy"]  # export's figure stays
    load_version(version_dir)  # still verifies
    assert not [p for p in version_dir.iterdir() if p.name.startswith(".")]


def test_a_serving_store_reloads_an_evaluated_version(version_dir: Path, manifest: Path) -> None:
    store = ModelStore(version_dir.parent.parent)
    assert store.refresh().loaded == [("tones", 1)]
    update_metrics(version_dir, {"evaluation": {"accuracy": 0.5}})
    report = store.refresh()
    assert report.loaded == [("tones", 1)] and not report.refused  # re-verified after the change, and serving
    assert store.resolve("tones", 1).manifest.metrics["evaluation"] == {"accuracy": 0.5}


def test_metrics_are_never_attached_to_other_bytes(version_dir: Path) -> None:
    manifest_bytes = (version_dir / MANIFEST_FILE).read_bytes()
    with (version_dir / MODEL_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(VerificationError, match="sha256"):
        update_metrics(version_dir, {"evaluation": {}})
    assert (version_dir / MANIFEST_FILE).read_bytes() == manifest_bytes


def test_eval_with_out_leaves_the_version_alone(version_dir: Path, manifest: Path, tmp_path: Path) -> None:
    manifest_bytes = (version_dir / MANIFEST_FILE).read_bytes()
    report = evaluate_version(version_dir, manifest, "val", out_dir=tmp_path / "report")
    assert report["n"] == PER_SPLIT["val"] * len(LABELS) and report["split"] == "val"
    assert all((tmp_path / "report" / name).is_file() for name in REPORT_FILES)
    assert (version_dir / MANIFEST_FILE).read_bytes() == manifest_bytes


def test_versions_are_named_by_folder_or_by_name(version_dir: Path) -> None:
    store = version_dir.parent.parent
    shutil.copytree(version_dir, store / "tones" / "2")
    assert resolve_version(str(version_dir), Path("elsewhere")) == version_dir
    assert resolve_version("tones", store) == store / "tones" / "2"
    assert resolve_version("tones:1", store) == store / "tones" / "1"
    with pytest.raises(FileNotFoundError):
        resolve_version("tones:7", store)
    with pytest.raises(FileNotFoundError):
        resolve_version("other", store)


def test_the_command(version_dir: Path, manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    evaluate_mod.add_command(subparsers)
    store = str(version_dir.parent.parent)
    args = parser.parse_args(["eval", "tones:1", "--store", store, "--data", str(manifest), "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "macro" in out and all(label in out for label in LABELS)
    args = parser.parse_args(["eval", "tones:9", "--store", store, "--quiet"])
    assert args.func(args) == 2
    assert "does not exist" in capsys.readouterr().err
    for action in subparsers.choices["eval"]._actions:
        assert action.help, f"option {action.dest} has no help text"
