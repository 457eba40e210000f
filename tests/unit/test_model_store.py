"""The model store serves only verified versions, and a bad version never displaces a good one."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hark.core.model_store import (
    MANIFEST_FILE,
    MODEL_FILE,
    InvalidModelName,
    ModelNotFound,
    ModelStore,
    VerificationError,
    load_version,
    publish_version,
    validate_model_name,
)
from tests.fixtures_models import LABELS, manifest_fields, publish_tiny, tiny_onnx


def _edit_manifest(version_dir: Path, **changes: object) -> None:
    path = version_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_a_published_version_verifies_and_scores(tmp_path: Path) -> None:
    loaded = load_version(publish_tiny(tmp_path))
    assert (loaded.name, loaded.version) == ("tiny", 1)
    assert loaded.manifest.labels == LABELS
    assert loaded.manifest.window_s == pytest.approx(0.995)  # 98 frames of 25 ms, 10 ms apart
    assert loaded.manifest.hop_s == pytest.approx(0.1)


def test_publishing_numbers_versions_and_never_overwrites(tmp_path: Path) -> None:
    assert publish_tiny(tmp_path).name == "1"
    assert publish_tiny(tmp_path).name == "2"
    with pytest.raises(FileExistsError):
        publish_tiny(tmp_path, version=2)
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".")], "staging left behind"


def test_publishing_refuses_a_manifest_that_does_not_fit_the_model(tmp_path: Path) -> None:
    onnx_file = tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="output shape"):
        publish_version(tmp_path / "store", manifest_fields(labels=[*LABELS, "extra"]), onnx_file)


def _truncate(v: Path) -> None:
    data = (v / MODEL_FILE).read_bytes()
    (v / MODEL_FILE).write_bytes(data[: len(data) // 2])


def _not_onnx(v: Path) -> None:
    (v / MODEL_FILE).write_bytes(b"this is not a model")


BROKEN = {
    "truncated model file": (_truncate, "sha256"),
    "not ONNX at all": (_not_onnx, "sha256"),
    "wrong checksum": (lambda v: _edit_manifest(v, sha256="0" * 64), "sha256"),
    "wrong input shape": (
        lambda v: _edit_manifest(v, window_frames=50, input={"name": "features", "shape": ["batch", 50, 40]}),
        "input shape",
    ),
    "wrong input name": (
        lambda v: _edit_manifest(v, input={"name": "audio", "shape": ["batch", 98, 40]}),
        "no input 'audio'",
    ),
    "frontend it cannot reproduce": (
        lambda v: _edit_manifest(v, frontend={"kind": "mfcc", "sample_rate": 16000}),
        "not a valid manifest",
    ),
    "manifest missing": (lambda v: (v / MANIFEST_FILE).unlink(), "missing"),
    "manifest for another version": (lambda v: _edit_manifest(v, version=7), "must match"),
}


@pytest.mark.parametrize("breakage", BROKEN, ids=list(BROKEN))
def test_a_broken_version_is_refused_with_its_reason(tmp_path: Path, breakage: str) -> None:
    break_it, reason = BROKEN[breakage]
    version_dir = publish_tiny(tmp_path)
    break_it(version_dir)
    with pytest.raises(VerificationError, match=reason):
        load_version(version_dir)


def test_a_version_that_cannot_run_the_servers_largest_batch_is_refused_at_load(tmp_path: Path) -> None:
    # The server warms a version up at its max_batch, so a model with a fixed batch of 2 is refused when it
    # loads, with the reason, rather than failing streams once batches of another size arrive.
    version_dir = publish_tiny(tmp_path, "brittle", brittle=True)
    assert load_version(version_dir, warmup_batch=2).runner.run(np.zeros((2, 98, 40), np.float32)).shape == (2, 12)
    with pytest.raises(VerificationError, match="warm-up inference of 4 windows failed"):
        load_version(version_dir, warmup_batch=4)
    store = ModelStore(tmp_path, warmup_batch=4)
    assert "warm-up inference of 4 windows failed" in store.refresh().refused[str(version_dir)]


def test_a_checksum_matching_file_that_is_not_onnx_is_refused_by_onnxruntime(tmp_path: Path) -> None:
    version_dir = publish_tiny(tmp_path)
    _not_onnx(version_dir)
    _edit_manifest(version_dir, sha256=hashlib.sha256(b"this is not a model").hexdigest())
    with pytest.raises(VerificationError, match="onnxruntime cannot load"):
        load_version(version_dir)


@pytest.mark.parametrize("breakage", BROKEN, ids=list(BROKEN))
def test_the_store_keeps_serving_the_previous_version_beside_a_broken_one(tmp_path: Path, breakage: str) -> None:
    store = ModelStore(tmp_path)
    publish_tiny(tmp_path)
    store.refresh()
    broken = publish_tiny(tmp_path)
    BROKEN[breakage][0](broken)

    report = store.refresh()

    assert str(broken) in report.refused
    assert store.resolve("tiny").version == 1
    assert store.refresh().refused == {}, "a refused version is reported once, not on every scan"


def test_a_serving_version_rewritten_badly_keeps_serving_as_loaded(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    version_dir = publish_tiny(tmp_path)
    store.refresh()
    before = store.resolve("tiny", 1)
    _truncate(version_dir)
    report = store.refresh()
    assert str(version_dir) in report.refused
    assert store.resolve("tiny", 1) is before


def test_resolve_gives_the_newest_valid_version_unless_pinned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    publish_tiny(tmp_path)
    publish_tiny(tmp_path)
    store.refresh()
    assert store.resolve().version == 2
    assert store.resolve("tiny", 1).version == 1
    with pytest.raises(ModelNotFound, match="available: 1, 2"):
        store.resolve("tiny", 3)
    with pytest.raises(ModelNotFound, match="available: tiny"):
        store.resolve("other")


def test_a_removed_version_stops_serving_but_its_holders_keep_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    publish_tiny(tmp_path)
    v2 = publish_tiny(tmp_path)
    store.refresh()
    held = store.resolve()
    shutil.rmtree(v2)
    report = store.refresh()
    assert report.removed == [("tiny", 2)]
    assert store.resolve().version == 1
    assert held.runner.run(np.zeros((1, 98, 40), np.float32)).shape == (1, 12)


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", ".hidden", "UPPER", "", "x" * 65, "a\\b"])
def test_model_names_that_could_escape_the_store_are_invalid(name: str) -> None:
    with pytest.raises(InvalidModelName):
        validate_model_name(name)


def test_only_version_folders_under_valid_names_are_scanned(tmp_path: Path) -> None:
    publish_tiny(tmp_path)
    (tmp_path / "tiny" / "latest").mkdir()
    (tmp_path / "Bad Name" / "1").mkdir(parents=True)
    (tmp_path / "tiny" / "3").symlink_to(tmp_path / "tiny" / "1")
    store = ModelStore(tmp_path)
    report = store.refresh()
    assert report.loaded == [("tiny", 1)]
    assert report.refused == {}
