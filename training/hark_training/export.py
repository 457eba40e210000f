"""``hark export RUN_DIR``: turn a training run into a verified model version in the store.

The order is what makes a published version trustworthy: export to ONNX, prove onnxruntime computes
what torch computes on real test windows (refusing otherwise), measure every reported metric on the
exported ONNX file itself (not on the torch model), verify the version in a scratch store with the
server's own :func:`hark.core.model_store.load_version`, and only then publish it into the real store
(atomically) and load it once more from there.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from torch import nn

from hark.core.frontend import FrontendConfig
from hark.core.model_store import (
    CONTROL_CSV,
    CONTROL_DIR,
    FeatureStats,
    VerificationError,
    publish_verified,
    sha256_file,
)
from hark.core.runner import create_session, sigmoid, softmax
from hark_training import backbone, ensemble
from hark_training.config import TrainConfig, load_config
from hark_training.data import ClipRecord, is_background
from hark_training.evaluate import (
    DIGITS,
    REPORT_FILES,
    classification_report,
    evaluation_summary,
    rounded,
    write_report,
)
from hark_training.features import SplitFeatures, load_splits
from hark_training.models import count_parameters
from hark_training.multilabel import choose_thresholds, multilabel_report
from hark_training.streaming import CausalTCN, export_streaming_onnx, streaming_logits, streaming_step_inputs
from hark_training.train import CHECKPOINT_FILE, CONFIG_FILE, RUN_FILE, STATS_FILE, load_checkpoint

INPUT_NAME = "features"
OUTPUT_NAME = "logits"
PARITY_TOLERANCE = 1e-4
PARITY_WINDOWS = 64
OPSET = 17
CONTROL_PER_CLASS = 3  # 36 clips for twelve classes: "a few dozen", about 1 MB beside the model

FloatArray = npt.NDArray[np.float32]
# The exported file's logits for whole windows: a windowed graph's one call, or a streaming graph's hops.
LogitsFn = Callable[[ort.InferenceSession, FloatArray], FloatArray]


class ParityError(RuntimeError):
    """onnxruntime and torch disagree on the same inputs: the exported graph is not the trained model."""


def export_onnx(model: nn.Module, path: Path, window_frames: int, n_mels: int) -> Path:
    """Write ``model`` as ONNX: input ``features [batch, frames, n_mels]``, output ``logits [batch, classes]``."""
    model.eval()
    example = torch.zeros(2, window_frames, n_mels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation on every call
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,  # the torch.export-based exporter needs onnxscript, which training does not install
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return path


def onnx_logits(session: ort.InferenceSession, x: FloatArray, batch_size: int = 256) -> FloatArray:
    outs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x[i : i + batch_size])})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32) if outs else np.empty((0, 0), dtype=np.float32)


@torch.no_grad()
def check_parity(
    model: nn.Module,
    onnx_path: Path,
    windows: FloatArray,
    tolerance: float = PARITY_TOLERANCE,
    logits_of: LogitsFn = onnx_logits,
) -> float:
    """Max |torch - onnxruntime| over the logits of ``windows``; raise :class:`ParityError` above ``tolerance``.

    For a streaming export this compares the torch windowed form with the ONNX streaming form fed hop by hop."""
    model.eval()
    expected = model(torch.from_numpy(np.ascontiguousarray(windows))).numpy()
    actual = logits_of(create_session(onnx_path, 1), windows)
    if actual.shape != expected.shape:
        raise ParityError(f"onnxruntime gave logits of shape {actual.shape}, torch {expected.shape}")
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"onnxruntime and torch differ by up to {diff:.3g} on {len(windows)} test windows "
            f"(tolerance {tolerance:g}); refusing to publish"
        )
    return diff


def inference_ms(
    onnx_path: Path, window: FloatArray, batch: int = 1, repeats: int = 300, states: Sequence[dict[str, Any]] = ()
) -> float:
    """Median milliseconds per window on one onnxruntime thread (the server's session options).

    For a streaming model (``states`` given) a window is one hop's call: what the server runs per window."""
    session = create_session(onnx_path, 1)
    if states:
        feeds = streaming_step_inputs(window, states, batch, INPUT_NAME)
    else:
        feeds = {INPUT_NAME: np.ascontiguousarray(np.repeat(window[None], batch, axis=0))}
    for _ in range(20):
        session.run([OUTPUT_NAME], feeds)
    times = []
    for _ in range(max(1, repeats // batch)):
        started = time.perf_counter()
        session.run([OUTPUT_NAME], feeds)
        times.append(time.perf_counter() - started)
    return round(1000.0 * statistics.median(times) / batch, 4)


def evaluate_onnx(
    onnx_path: Path,
    splits: dict[str, SplitFeatures],
    labels: Sequence[str],
    timing_window: FloatArray,
    report_dir: Path,
    logits_of: LogitsFn = onnx_logits,
    states: Sequence[dict[str, Any]] = (),
    **context: Any,
) -> dict[str, Any]:
    """Every metric the manifest reports, measured with onnxruntime on the exported file.

    The test split's full report (``metrics.json``, ``confusion_matrix.png``, ``roc.png``) is written into
    ``report_dir`` by the same code as ``hark eval``, with ``context`` (the data manifest) in it.
    """
    session = create_session(onnx_path, 2)
    test = write_report(
        report_dir,
        softmax(logits_of(session, splits["test"].x)),
        splits["test"].y,
        labels,
        split="test",
        **context,
    )
    val = classification_report(softmax(logits_of(session, splits["val"].x)), splits["val"].y, labels)
    return {
        "test_accuracy": rounded(test["accuracy"]),
        "per_class_accuracy": {
            label: round(c["recall"], DIGITS) for label, c in test["per_class"].items() if c["support"]
        },
        "test_confusion": test["confusion"],
        "val_accuracy": rounded(val["accuracy"]),
        "evaluation": evaluation_summary(test, split="test", **context),
        "n_test": len(splits["test"]),
        "n_val": len(splits["val"]),
        "size_bytes": onnx_path.stat().st_size,
        "inference_ms_per_window": inference_ms(onnx_path, timing_window, batch=1, states=states),
        "inference_ms_per_window_batch32": inference_ms(
            onnx_path, timing_window, batch=32, repeats=3200, states=states
        ),
        "inference_threads": 1,
    }


def evaluate_onnx_multilabel(
    onnx_path: Path,
    splits: dict[str, SplitFeatures],
    labels: Sequence[str],
    timing_window: FloatArray,
    report_dir: Path,
    **context: Any,
) -> tuple[dict[str, Any], dict[str, float]]:
    """A multi-label version's figures, measured with onnxruntime on the exported file, and its per-class
    thresholds, chosen on val for :data:`hark_training.multilabel.DEFAULT_TARGET_FPR` (test never chooses).

    The test report (per-class AP, precision, recall and F1 at the thresholds) goes to ``report_dir``.
    """
    session = create_session(onnx_path, 2)
    val_p = sigmoid(onnx_logits(session, splits["val"].x))
    thresholds = choose_thresholds(val_p, splits["val"].y, labels)
    val = multilabel_report(val_p, splits["val"].y, labels, thresholds, logits=False)
    test = multilabel_report(
        sigmoid(onnx_logits(session, splits["test"].x)), splits["test"].y, labels, thresholds, logits=False
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps({**context, "split": "test", **test}, indent=2) + "\n")
    metrics = {
        "test_map": test["map"],
        "test_micro_f1": test["micro_f1"],
        "per_class_average_precision": {k: v["average_precision"] for k, v in test["per_class"].items()},
        "val_map": val["map"],
        "evaluation": {**context, "split": "test", "n": test["n"], "map": test["map"], "micro_f1": test["micro_f1"]},
        "n_test": len(splits["test"]),
        "n_val": len(splits["val"]),
        "size_bytes": onnx_path.stat().st_size,
        "inference_ms_per_window": inference_ms(onnx_path, timing_window, batch=1),
        "inference_threads": 1,
    }
    return metrics, thresholds


def class_prior(records: Iterable[ClipRecord], labels: Sequence[str]) -> dict[str, float]:
    """The training split's share of each label: what prediction drift compares live traffic with.

    For multi-label data, the share of training clips in which each class is active."""
    train = [r for r in records if r.split == "train"]
    if any(len(r.labels) != 1 for r in train):
        if not train:
            raise ValueError("the data manifest has no training clips")
        return {label: round(sum(label in r.labels for r in train) / len(train), DIGITS) for label in labels}
    counts = Counter(r.label for r in train)
    total = sum(counts[label] for label in labels)
    if total == 0:
        raise ValueError("the data manifest has no training clips of the model's labels")
    return {label: round(counts[label] / total, DIGITS) for label in labels}


def pick_control_clips(
    records: Iterable[ClipRecord], labels: Sequence[str], per_class: int = CONTROL_PER_CLASS, seed: int = 0
) -> list[ClipRecord]:
    """``per_class`` test clips of each label (unheard voices), as many different voices as there are."""
    rng = np.random.default_rng(seed)
    picked: list[ClipRecord] = []
    test = [r for r in records if r.split == "test"]
    for label in labels:
        pool = sorted((r for r in test if r.label == label), key=lambda r: str(r.path))
        by_voice: dict[str, list[ClipRecord]] = {}
        for r in (pool[i] for i in rng.permutation(len(pool))):
            by_voice.setdefault(r.voice, []).append(r)
        rounds = zip(*by_voice.values(), strict=False) if by_voice else iter(())
        ordered = [r for group in rounds for r in group] + pool  # one per voice first, then anything
        chosen: list[ClipRecord] = []
        for r in ordered:
            if r not in chosen:
                chosen.append(r)
            if len(chosen) == per_class:
                break
        picked += chosen
    return picked


def write_control_set(clips: Sequence[ClipRecord], out_dir: Path) -> Path:
    """Copy the clips into ``out_dir`` with the ``control.csv`` the server's control check reads."""
    out_dir.mkdir(parents=True)
    with (out_dir / CONTROL_CSV).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i, clip in enumerate(clips):
            name = f"{i:03d}-{clip.label}.wav"
            shutil.copyfile(clip.path, out_dir / name)
            writer.writerow([name, clip.label])
    return out_dir


def manifest_fields(
    name: str,
    labels: Sequence[str],
    frontend: FrontendConfig,
    config: TrainConfig,
    run: dict[str, Any],
    stats: FeatureStats,
    metrics: dict[str, Any],
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every manifest field but those :func:`publish_version` fills (version, sha256, size, created_at).

    ``thresholds`` (per class) make it a multi-label version: ``output_kind`` sigmoid, one detector per class.
    Background classes are the data set's ``_named_like_this_`` ones (:func:`hark_training.data.is_background`).
    """
    return {
        "name": name,
        "labels": list(labels),
        "background_labels": [label for label in labels if is_background(label)],
        "frontend": frontend.model_dump(mode="json"),
        "window_frames": config.window_frames,
        "hop_frames": config.hop_frames,
        "input": {"name": INPUT_NAME, "shape": ["batch", config.window_frames, frontend.n_mels]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(labels)]},
        "output_kind": "logits" if thresholds is None else "sigmoid",
        **({} if thresholds is None else {"thresholds": thresholds}),
        "reference_stats": stats.model_dump(mode="json"),
        "metrics": metrics,
        "training": {
            "config": config.model_dump(mode="json"),
            "data_manifest_sha256": run["data_manifest_sha256"],
            "seed": config.seed,
            "epochs": config.epochs,
            "best_epoch": run["best_epoch"],
            "n_train": run["n_train"],
            "torch_version": run["torch_version"],
            "exported_with_torch": torch.__version__,
            "onnx_opset": OPSET,
        },
    }


def export_run(
    run_dir: Path,
    store: Path,
    name: str | None = None,
    *,
    version: int | None = None,
    data: Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    progress: bool = False,
    members: Sequence[Path] = (),
) -> Path:
    """Export, check, measure, verify and publish one run; return the new version folder.

    ``members`` (other runs of the same recipe and data set) make it an ensemble of ``run_dir`` and them
    (:mod:`hark_training.ensemble`): one graph whose probabilities are the runs' mean."""
    from hark_training.data import read_manifest

    config = load_config(run_dir / CONFIG_FILE)
    name = name or config.name
    run = json.loads((run_dir / RUN_FILE).read_text())
    stats = FeatureStats.model_validate_json((run_dir / STATS_FILE).read_text())
    model: nn.Module
    if members:
        every_run, checkpoints = ensemble.load_members([run_dir, *members])
        model, checkpoint = ensemble.Ensemble(every_run), checkpoints[0]
    else:
        model, checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    labels: list[str] = checkpoint["labels"]
    multilabel = bool(checkpoint.get("multilabel", False))
    frontend = FrontendConfig.model_validate(run["frontend"])
    manifest = data or config.data
    if sha256_file(manifest) != run["data_manifest_sha256"]:
        raise ValueError(f"{manifest} changed since {run_dir} was trained; its test split may overlap training")
    splits = load_splits(
        manifest,
        labels,
        frontend,
        config.window_frames,
        read=read_manifest,
        splits=("val", "test"),
        progress=progress,
        multilabel=multilabel,
    )
    if len(splits["test"]) == 0:
        raise ValueError(f"{manifest} has no test clips to measure the model on")
    records = read_manifest(manifest)

    with tempfile.TemporaryDirectory(prefix="hark-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        states: list[dict[str, Any]] = []
        logits_of: LogitsFn = onnx_logits
        if isinstance(model, CausalTCN):  # published in streaming form: a hop's frames and state per call
            states = export_streaming_onnx(
                model, onnx_path, config.hop_frames, frontend.n_mels, INPUT_NAME, OUTPUT_NAME, OPSET
            )

            def logits_of(session: ort.InferenceSession, x: FloatArray) -> FloatArray:
                return streaming_logits(session, states, config.hop_frames, len(labels), x, INPUT_NAME, OUTPUT_NAME)

        else:
            export_onnx(model, onnx_path, config.window_frames, frontend.n_mels)
        diff = check_parity(model, onnx_path, splits["test"].x[:PARITY_WINDOWS], tolerance, logits_of)
        report_dir = Path(tmp) / "report"
        data_context = {"data_manifest": str(manifest), "data_manifest_sha256": run["data_manifest_sha256"]}
        timing = splits["test"].x[0][-config.hop_frames :] if states else splits["test"].x[0]
        thresholds: dict[str, float] | None = None
        if multilabel:
            if states:
                raise ValueError("a streaming architecture cannot be exported multi-label yet")
            measured, thresholds = evaluate_onnx_multilabel(
                onnx_path, splits, labels, splits["test"].x[0], report_dir, **data_context
            )
        else:
            measured = evaluate_onnx(
                onnx_path, splits, labels, timing, report_dir, logits_of=logits_of, states=states, **data_context
            )
        metrics = {
            **measured,
            "parameters": count_parameters(model),
            "parity_max_abs_diff": diff,
            "class_prior": class_prior(records, labels),
        }
        fields = manifest_fields(name, labels, frontend, config, run, stats, metrics, thresholds)
        if states:
            fields |= {
                "model_kind": "streaming",
                "states": states,
                "input": {"name": INPUT_NAME, "shape": ["batch", config.hop_frames, frontend.n_mels]},
            }
        # Where the weights came from: `hark explain` needs the torch checkpoint and checks it is this one.
        fields["training"] |= {"run_dir": str(run_dir), "checkpoint_sha256": sha256_file(run_dir / CHECKPOINT_FILE)}
        if members:
            fields["training"]["ensemble"] = [
                {
                    "run_dir": str(member),
                    "seed": load_config(member / CONFIG_FILE).seed,
                    "best_epoch": json.loads((member / RUN_FILE).read_text())["best_epoch"],
                    "checkpoint_sha256": sha256_file(member / CHECKPOINT_FILE),
                }
                for member in (run_dir, *members)
            ]
        reports = {f.name: f for f in (report_dir / file_name for file_name in REPORT_FILES) if f.is_file()}
        if config.arch == "oww_transfer":  # the backbone's weights travel with the version, so its terms do too
            reports["NOTICE.md"] = backbone.NOTICE
        # A control set is single-label clips with one expected answer each; multi-label versions carry none.
        control = (
            {}
            if multilabel
            else {CONTROL_DIR: write_control_set(pick_control_clips(records, labels), Path(tmp) / CONTROL_DIR)}
        )
        return publish_verified(store, fields, onnx_path, version, reports, control)


def summary(version_dir: Path) -> str:
    manifest = json.loads((version_dir / "manifest.json").read_text())
    m = manifest["metrics"]
    if manifest.get("output_kind") == "sigmoid":
        per_class = "  ".join(f"{k} {v}" for k, v in m["per_class_average_precision"].items())
        thresholds = "  ".join(f"{k} {v}" for k, v in manifest["thresholds"].items())
        return (
            f"published {version_dir} (multi-label: one sigmoid per class)\n"
            f"  test mAP {m['test_map']} (val {m['val_map']}), micro F1 {m['test_micro_f1']} on {m['n_test']} clips\n"
            f"  average precision per class: {per_class}\n"
            f"  thresholds (val, target false-positive rate): {thresholds}\n"
            f"  {m['parameters']} parameters, {m['size_bytes']} bytes, {m['inference_ms_per_window']:.3f} ms per window"
        )
    per_class = "  ".join(f"{k} {v:.3f}" for k, v in m["per_class_accuracy"].items())
    members = manifest["training"].get("ensemble", [])
    seeds = ", ".join(str(member["seed"]) for member in members)
    return (
        f"published {version_dir}" + (f" (an ensemble of {len(members)} runs, seeds {seeds})" if members else "") + "\n"
        f"  test accuracy {m['test_accuracy']:.4f} on {m['n_test']} clips of unheard voices "
        f"(val {m['val_accuracy']:.4f})\n"
        f"  per class: {per_class}\n"
        f"  macro F1 {m['evaluation']['macro_f1']}, macro AUROC {m['evaluation']['macro_auroc']}; "
        f"{', '.join(m['evaluation']['files'])} beside the model\n"
        f"  {m['parameters']} parameters, {m['size_bytes']} bytes, "
        f"{m['inference_ms_per_window']:.3f} ms per window on one thread "
        f"({m['inference_ms_per_window_batch32']:.3f} ms in batches of 32), parity {m['parity_max_abs_diff']:.2g}"
    )


def run(args: argparse.Namespace) -> int:
    try:
        first, *members = args.run_dirs
        version_dir = export_run(
            first, args.store, args.name, version=args.version, data=args.data, progress=not args.quiet, members=members
        )
    except (ParityError, VerificationError) as e:  # nothing was published
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # a missing run folder or manifest, a changed data set
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(version_dir))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark export``."""
    parser = subparsers.add_parser(
        "export",
        help="Export a training run to ONNX and publish it as a new model version",
        description="Export a run to ONNX, check it against torch, measure it on the test split and publish it "
        "as a new version that the server's verification accepts.",
    )
    parser.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="Run folder written by `hark train`; several runs of one recipe and data set (other seeds) publish "
        "one ensemble version, the mean of their probabilities",
    )
    parser.add_argument(
        "--store", type=Path, default=Path("model_store"), help="Model store root (default model_store)"
    )
    parser.add_argument("--name", help="Model name in the store (default: the run's name, e.g. keywords)")
    parser.add_argument("--version", type=int, help="Version number to publish (default: the next free one)")
    parser.add_argument("--data", type=Path, help="Data manifest to evaluate on (default: the one the run trained on)")
    parser.add_argument("--quiet", action="store_true", help="No progress bars")
    parser.set_defaults(func=run)
