"""hark quantize on the tone data set: int8 versions publish, verify and serve, stay close to float, are smaller."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import pytest

from hark.core.model_store import ModelStore, load_version, read_manifest, sha256_file
from hark_training import quantize as quantize_mod
from hark_training.config import TrainConfig
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.export import export_run
from hark_training.features import SplitFeatures
from hark_training.quantize import QuantizeOptions, calibration_windows, quantize_version
from hark_training.train import train
from tests.fixtures_data import write_tone_dataset

PER_SPLIT = {"train": 8, "val": 2, "test": 4}
# int8 may cost at most this much test accuracy (2 of the 48 test windows) against float.
ACCURACY_MARGIN = 2 / (PER_SPLIT["test"] * len(LABELS))


@pytest.fixture(scope="module")
def float_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    manifest = write_tone_dataset(tmp_path_factory.mktemp("data"), PER_SPLIT)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_dir = train(
        # The TCN learns the tones in three epochs (val accuracy 1.0 when measured), so int8 is compared
        # against a float model that works.
        TrainConfig(data=manifest, out=out, arch="tcn", epochs=3, batch_size=8, threads=1),
        labels=LABELS,
        read_manifest=read_data_manifest,
        progress=False,
    )
    return export_run(run_dir, tmp_path_factory.mktemp("store") / "store", "keywords")


@pytest.fixture(scope="module")
def static_version(float_version: Path) -> Path:
    return quantize_version(float_version, float_version.parents[1], QuantizeOptions(mode="static"))


def op_types(version_dir: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(version_dir / "model.onnx")).graph.node}


def test_static_int8_is_a_new_version_the_server_verifies(float_version: Path, static_version: Path) -> None:
    assert static_version == float_version.parent / "2"
    loaded = load_version(static_version)
    assert loaded.runner.run(np.zeros((5, 98, 40), dtype=np.float32)).shape == (5, len(LABELS))  # dynamic batch
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(static_version)
    source, m = read_manifest(float_version), read_manifest(static_version)
    assert m.sha256 == sha256_file(static_version / "model.onnx")
    assert (m.labels, m.frontend, m.input, m.output) == (source.labels, source.frontend, source.input, source.output)
    q = m.training["quantization"]
    assert (q["mode"], q["format"], q["per_channel"]) == ("static", "QDQ", True)
    assert q["source"] == {"name": "keywords", "version": 1, "sha256": source.sha256}
    assert q["calibration_windows_used"] == PER_SPLIT["train"] * len(LABELS)


def test_static_int8_is_accurate_smaller_and_timed(static_version: Path) -> None:
    m = read_manifest(static_version).metrics
    assert m["float"]["test_accuracy"] >= 0.9  # the tone data is learnt, so the comparison means something
    assert m["test_accuracy"] >= m["float"]["test_accuracy"] - ACCURACY_MARGIN
    assert m["size_bytes"] < m["float"]["size_bytes"]
    assert m["size_bytes"] == read_manifest(static_version).size_bytes
    assert m["inference_ms_per_window"] > 0 and m["float"]["inference_ms_per_window"] > 0
    assert m["test_agreement_with_float"] >= 1 - ACCURACY_MARGIN
    assert m["n_test"] == PER_SPLIT["test"] * len(LABELS)
    assert set(quantize_mod.COMPARED) <= set(m["float"])


def test_the_store_serves_the_int8_version_as_the_newest(float_version: Path, static_version: Path) -> None:
    store = ModelStore(float_version.parents[1])
    report = store.refresh()
    assert not report.refused
    assert store.resolve("keywords").version == int(static_version.name)
    assert store.resolve("keywords", 1).version == 1  # the float version still serves when pinned


def test_dynamic_int8_through_the_command(float_version: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    quantize_mod.add_command(parser.add_subparsers())
    store = float_version.parents[1]
    args = parser.parse_args(["quantize", str(float_version), "--mode", "dynamic", "--store", str(store), "--quiet"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "float" in printed and "int8" in printed and "ms per window" in printed
    version_dir = Path(printed.split()[1])
    load_version(version_dir)
    assert "ConvInteger" in op_types(version_dir)
    m = read_manifest(version_dir).metrics
    assert m["test_accuracy"] >= m["float"]["test_accuracy"] - ACCURACY_MARGIN
    assert m["size_bytes"] < m["float"]["size_bytes"]
    assert read_manifest(version_dir).training["quantization"]["mode"] == "dynamic"


def test_quantizing_refuses_an_int8_version_and_other_data(
    float_version: Path, static_version: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="already quantized"):
        quantize_version(static_version, tmp_path / "store", QuantizeOptions(mode="static"))
    other = write_tone_dataset(tmp_path / "other", {**PER_SPLIT, "test": 3})  # another manifest
    with pytest.raises(ValueError, match="not the data"):
        quantize_version(float_version, tmp_path / "store", QuantizeOptions(mode="dynamic"), data=other)
    assert not (tmp_path / "store").exists()


def test_calibration_windows_are_balanced_across_classes_and_seeded() -> None:
    y = np.repeat(np.arange(3), [10, 2, 30]).astype(np.int64)
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1) * np.ones((1, 2, 2), dtype=np.float32)
    data = SplitFeatures(x=x, y=y)
    chosen = calibration_windows(data, 9, seed=0)
    counts = np.bincount(y[chosen[:, 0, 0].astype(int)], minlength=3)
    assert counts.tolist() == [4, 2, 3]  # as even as the data allow: the small class gives all it has
    np.testing.assert_array_equal(chosen, calibration_windows(data, 9, seed=0))
    assert len(calibration_windows(data, 100, seed=0)) == len(y)


def test_the_command_has_help_for_every_option() -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    quantize_mod.add_command(subparsers)
    for action in subparsers.choices["quantize"]._actions:
        assert action.help, f"option {action.dest} has no help text"
    defaults = QuantizeOptions()
    args = parser.parse_args(["quantize", "model_store/keywords/1"])
    given = (args.mode, args.per_channel, args.activation_type, args.reduce_range, args.calibration_windows)
    assert given == (
        defaults.mode,
        defaults.per_channel,
        defaults.activation_type,
        defaults.reduce_range,
        defaults.calibration_windows,
    )
