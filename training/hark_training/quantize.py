"""``hark quantize VERSION_DIR``: an int8 copy of a published float version, measured against it, published anew.

Two modes, both with :mod:`onnxruntime.quantization`:

- ``dynamic``: weights stored as int8, activations quantized on the fly per call (``quantize_dynamic``).
  Needs no data, but runs convolutions as ``ConvInteger`` and computes ranges on every call: measured
  3 to 21 times slower than float on our conv nets, so it is the smaller file, not the faster model.
- ``static``: weights and activations int8 in QDQ format, the activation ranges calibrated on training
  windows from the run's feature cache (``quantize_static``), per-channel weights where the op allows.

Both start from the float version as published (already checked against torch and verified by the
server's own loader), so quantizing needs no checkpoint and no torch. Accuracy, size and per-window
latency of the float and the int8 model are measured in the same process on the same test windows and
written into the int8 version's manifest; an int8 model that is slower or less accurate is published
all the same, with the numbers that say so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import accuracy_score, recall_score
from tqdm import tqdm

from hark.core.model_store import (
    MODEL_FILE,
    VerificationError,
    load_version,
    publish_verified,
    read_manifest,
    sha256_file,
)
from hark.core.runner import create_session
from hark_training.export import INPUT_NAME, inference_ms, onnx_logits
from hark_training.features import SplitFeatures, load_splits

Mode = Literal["dynamic", "static"]
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

DIGITS = 4
ACTIVATION_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
COMPARED = ("test_accuracy", "val_accuracy", "size_bytes", "inference_ms_per_window", "inference_ms_per_window_batch32")
"""Float metrics copied next to the int8 ones in the int8 version's manifest."""


class QuantizeOptions(BaseModel):
    """How to quantize; written into the int8 version's manifest (``training.quantization``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field("static", description="dynamic (weights only, no data) or static (calibrated QDQ).")
    per_channel: bool = Field(True, description="One scale per output channel of each weight tensor.")
    activation_type: Literal["int8", "uint8"] = Field(
        "uint8",
        description="Static mode: the activations' type. onnxruntime's docs start from S8S8, but U8S8 measured as fast "
        "or faster here (AVX-512 VNNI), three times as fast on the TCN, at the same accuracy.",
    )
    reduce_range: bool = Field(
        False, description="7-bit weights: avoids int16 saturation on x86 CPUs without VNNI, at some accuracy."
    )
    calibration_windows: int = Field(512, ge=1, description="Static mode: training windows to calibrate on.")
    calibration_batch: int = Field(32, ge=1, description="Windows per calibration batch.")
    seed: int = Field(0, description="Seed of the stratified choice of calibration windows.")


class WindowReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration windows to ``quantize_static`` in batches, with a progress bar."""

    def __init__(self, windows: FloatArray, batch_size: int, progress: bool = False) -> None:
        starts = range(0, len(windows), batch_size)
        self._batches = iter(
            tqdm(
                [np.ascontiguousarray(windows[i : i + batch_size]) for i in starts],
                desc="calibrate",
                unit="batch",
                disable=not progress,
                leave=False,
                file=sys.stderr,
            )
        )

    def get_next(self) -> dict[str, FloatArray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def calibration_windows(data: SplitFeatures, n: int, seed: int) -> FloatArray:
    """Up to ``n`` windows, as even across classes as the data allow, so no class's ranges go unseen."""
    rng = np.random.default_rng(seed)
    classes = np.unique(data.y)
    per_class = [rng.permutation(np.flatnonzero(data.y == c)) for c in classes]
    # Round-robin over the shuffled classes: class-balanced while any class has windows left.
    order = [idx[k] for k in range(max((len(p) for p in per_class), default=0)) for idx in per_class if k < len(idx)]
    return data.x[np.sort(np.array(order[:n], dtype=np.int64))]


def quantize_onnx(
    float_path: Path,
    out_path: Path,
    options: QuantizeOptions,
    calibration: FloatArray | None = None,
    *,
    progress: bool = False,
) -> Path:
    """Write the int8 model of ``float_path`` to ``out_path``; static mode needs ``calibration`` windows."""
    if options.mode == "static" and (calibration is None or len(calibration) == 0):
        raise ValueError("static quantization needs calibration windows")
    with tempfile.TemporaryDirectory(prefix="hark-quantize-") as tmp:
        # onnxruntime's recommended pre-processing: shape inference and graph optimisation (batch norm folded
        # into convs), so that quantization sees the graph that actually runs.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))
        if options.mode == "dynamic":
            quantize_dynamic(
                prepared,
                out_path,
                weight_type=QuantType.QInt8,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
            )
        else:
            assert calibration is not None
            quantize_static(
                prepared,
                out_path,
                WindowReader(calibration, options.calibration_batch, progress),
                quant_format=QuantFormat.QDQ,
                per_channel=options.per_channel,
                reduce_range=options.reduce_range,
                activation_type=ACTIVATION_TYPES[options.activation_type],
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    return out_path


def predict(onnx_path: Path, windows: FloatArray) -> IntArray:
    """The class onnxruntime predicts for each window."""
    predicted: IntArray = onnx_logits(create_session(onnx_path, 2), windows).argmax(axis=1).astype(np.int64)
    return predicted


def accuracy_metrics(
    predicted: dict[str, IntArray], splits: dict[str, SplitFeatures], labels: Sequence[str]
) -> dict[str, Any]:
    """Test and validation accuracy, and per-class accuracy (recall) on test, as ``hark export`` reports them."""
    test_y = splits["test"].y
    present = sorted(set(test_y.tolist()))
    recalls = recall_score(test_y, predicted["test"], labels=present, average=None, zero_division=0)
    return {
        "test_accuracy": round(float(accuracy_score(test_y, predicted["test"])), DIGITS),
        "per_class_accuracy": {labels[i]: round(float(r), DIGITS) for i, r in zip(present, recalls, strict=True)},
        "val_accuracy": round(float(accuracy_score(splits["val"].y, predicted["val"])), DIGITS)
        if len(splits["val"])
        else None,
        "n_test": len(splits["test"]),
        "n_val": len(splits["val"]),
    }


def cost_metrics(onnx_path: Path, timing_window: FloatArray) -> dict[str, Any]:
    """Size on disk and median latency per window on one onnxruntime thread (the server's session options)."""
    return {
        "size_bytes": onnx_path.stat().st_size,
        "inference_ms_per_window": inference_ms(onnx_path, timing_window, batch=1),
        "inference_ms_per_window_batch32": inference_ms(onnx_path, timing_window, batch=32, repeats=3200),
        "inference_threads": 1,
    }


def compare_metrics(
    float_path: Path, int8_path: Path, splits: dict[str, SplitFeatures], labels: Sequence[str]
) -> dict[str, Any]:
    """The int8 model's manifest metrics, with the float model's measured alongside on the same windows."""
    float_pred = {split: predict(float_path, splits[split].x) for split in ("test", "val")}
    int8_pred = {split: predict(int8_path, splits[split].x) for split in ("test", "val")}
    float_metrics = {
        **accuracy_metrics(float_pred, splits, labels),
        **cost_metrics(float_path, splits["test"].x[0]),
    }
    return {
        **accuracy_metrics(int8_pred, splits, labels),
        **cost_metrics(int8_path, splits["test"].x[0]),
        "float": {key: float_metrics[key] for key in COMPARED},
        "test_agreement_with_float": round(float(np.mean(float_pred["test"] == int8_pred["test"])), DIGITS),
    }


def quantize_version(
    version_dir: Path,
    store: Path,
    options: QuantizeOptions,
    *,
    name: str | None = None,
    version: int | None = None,
    data: Path | None = None,
    progress: bool = False,
) -> Path:
    """Quantize a published float version, measure it against the float one, verify and publish it."""
    from hark_training.data import read_manifest as read_data_manifest

    source = read_manifest(version_dir)
    load_version(version_dir)  # only a version the server would serve is worth quantizing
    if "quantization" in source.training:
        raise ValueError(f"{version_dir} is already quantized ({source.training['quantization']['mode']})")
    config = source.training.get("config", {})
    manifest = Path(data or config.get("data", ""))
    if not manifest.is_file():
        raise ValueError(f"data manifest {manifest} not found; pass --data")
    if sha256_file(manifest) != source.training.get("data_manifest_sha256"):
        raise ValueError(f"{manifest} is not the data {version_dir} was trained on; its test split may overlap")
    wanted = ("train", "val", "test") if options.mode == "static" else ("val", "test")
    splits = load_splits(
        manifest,
        source.labels,
        source.frontend,
        source.window_frames,
        read=read_data_manifest,
        splits=wanted,
        progress=progress,
    )
    if len(splits["test"]) == 0:
        raise ValueError(f"{manifest} has no test clips to measure the model on")
    calibration = (
        calibration_windows(splits["train"], options.calibration_windows, options.seed)
        if options.mode == "static"
        else None
    )

    float_path = version_dir / MODEL_FILE
    with tempfile.TemporaryDirectory(prefix="hark-int8-") as tmp:
        int8_path = quantize_onnx(float_path, Path(tmp) / "model.onnx", options, calibration, progress=progress)
        metrics = {
            **compare_metrics(float_path, int8_path, splits, source.labels),
            "parameters": source.metrics.get("parameters"),
        }
        quantization = {
            **options.model_dump(mode="json"),
            "format": "QDQ" if options.mode == "static" else "QOperator",
            "weight_type": "int8",
            "calibration_windows_used": 0 if calibration is None else len(calibration),
            "source": {"name": source.name, "version": source.version, "sha256": source.sha256},
        }
        fields = {
            **source.model_dump(mode="json", exclude={"version", "sha256", "size_bytes", "created_at"}),
            "name": name or source.name,
            "metrics": metrics,
            "training": {**source.training, "quantization": quantization},
        }
        return publish_verified(store, fields, int8_path, version)


def summary(version_dir: Path) -> str:
    """Float against int8, one row per measure."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    m, q = manifest["metrics"], manifest["training"]["quantization"]
    f = m["float"]
    source = q["source"]
    rows = [
        ("test accuracy", f"{f['test_accuracy']:.4f}", f"{m['test_accuracy']:.4f}"),
        ("val accuracy", f"{f['val_accuracy']:.4f}", f"{m['val_accuracy']:.4f}"),
        ("size, bytes", f"{f['size_bytes']}", f"{m['size_bytes']}"),
        ("ms per window, batch 1", f"{f['inference_ms_per_window']:.4f}", f"{m['inference_ms_per_window']:.4f}"),
        (
            "ms per window, batch 32",
            f"{f['inference_ms_per_window_batch32']:.4f}",
            f"{m['inference_ms_per_window_batch32']:.4f}",
        ),
    ]
    table = "\n".join(f"  {what:<24}{a:>12}{b:>12}" for what, a, b in rows)
    return (
        f"published {version_dir} ({q['mode']} int8 of {source['name']}/{source['version']}, one thread)\n"
        f"  {'':<24}{'float':>12}{'int8':>12}\n{table}\n"
        f"  int8 predicts the float model's class on {m['test_agreement_with_float']:.2%} of {m['n_test']} test windows"
    )


def run(args: argparse.Namespace) -> int:
    options = QuantizeOptions(
        mode=args.mode,
        per_channel=args.per_channel,
        activation_type=args.activation_type,
        reduce_range=args.reduce_range,
        calibration_windows=args.calibration_windows,
    )
    try:
        version_dir = quantize_version(
            args.version_dir,
            args.store,
            options,
            name=args.name,
            version=args.version,
            data=args.data,
            progress=not args.quiet,
        )
    except VerificationError as e:  # the source or the int8 model does not verify; nothing was published
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # a missing version or data manifest, a changed data set
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(version_dir))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark quantize``."""
    parser = subparsers.add_parser(
        "quantize",
        help="Quantize a published model version to int8 and publish it as a new version",
        description="Quantize a float model version with onnxruntime (dynamic, or static calibrated on training "
        "windows), measure float and int8 accuracy, size and latency on the same test split, and publish the "
        "int8 model as a new version that the server's verification accepts.",
    )
    parser.add_argument(
        "version_dir", type=Path, metavar="VERSION_DIR", help="Float version folder, e.g. model_store/keywords/1"
    )
    defaults = QuantizeOptions()
    parser.add_argument(
        "--mode", choices=["static", "dynamic"], default=defaults.mode, help="Quantization mode (default static)"
    )
    parser.add_argument(
        "--store", type=Path, default=Path("model_store"), help="Model store root to publish into (default model_store)"
    )
    parser.add_argument("--name", help="Model name for the int8 version (default: the source version's name)")
    parser.add_argument("--version", type=int, help="Version number to publish (default: the next free one)")
    parser.add_argument("--data", type=Path, help="Data manifest (default: the one the source version was trained on)")
    parser.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=defaults.per_channel,
        help="Per-channel weight scales (default on)",
    )
    parser.add_argument(
        "--activation-type",
        choices=sorted(ACTIVATION_TYPES),
        default=defaults.activation_type,
        help=f"Static mode: activation type (default {defaults.activation_type})",
    )
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights, for x86 CPUs without VNNI")
    parser.add_argument(
        "--calibration-windows",
        type=int,
        default=defaults.calibration_windows,
        help=f"Static mode: training windows to calibrate on (default {defaults.calibration_windows})",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bars")
    parser.set_defaults(func=run)
