"""``hark eval VERSION``: measure a published model version exactly as it is served, and draw the results.

What is measured is what is served: the version is opened with the server's own
:func:`hark.core.model_store.load_version` (checksum, onnxruntime load, warm-up), each clip's window is
computed from its audio with the version's own frontend parameters through :mod:`hark.core.frontend`, and the
scores are the server runner's class probabilities. The report goes next to the version: ``metrics.json``
(accuracy, per-class precision/recall/F1/AUROC/support, macro F1, macro AUROC, confusion matrix),
``confusion_matrix.png`` and ``roc.png``; its headline figures go into the manifest's
``metrics["evaluation"]`` through :func:`hark.core.model_store.update_metrics`, which keeps the version
verifiable. ``hark export`` writes the same report at export time with the same functions.

:func:`classification_report` is the one metrics implementation of the pipeline (export and k-fold use it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    RocCurveDisplay,
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from hark.core.model_store import (
    MANIFEST_FILE,
    LoadedModel,
    VerificationError,
    iter_version_dirs,
    load_version,
    sha256_file,
    update_metrics,
    validate_model_name,
)
from hark_training.config import DEFAULT_MANIFEST
from hark_training.features import extract

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
ROC_FILE = "roc.png"
REPORT_FILES = (METRICS_FILE, CONFUSION_FILE, ROC_FILE)
DIGITS = 4

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


# ------------------------------------------------------------------------------------------------ metrics


def _auroc(positive: npt.NDArray[np.bool_], score: FloatArray) -> float | None:
    """One-vs-rest area under the ROC curve; None when the class has no positives or no negatives."""
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, score))


def classification_report(scores: FloatArray, y: IntArray, labels: Sequence[str]) -> dict[str, Any]:
    """Every figure of a classifier's scores ``(n, classes)`` against true label indices ``y``.

    ``scores`` are class probabilities (the prediction is their argmax, and AUROC ranks each column).
    Returns plain JSON types: ``n``, ``accuracy``, ``per_class`` (label -> precision, recall, f1, auroc,
    support), ``macro_precision``, ``macro_recall``, ``macro_f1`` and ``macro_auroc`` (means over the classes
    present in ``y``, one-vs-rest), ``labels`` and ``confusion`` (rows: truth, columns: prediction).
    Figures that are undefined (no clips, a class absent) are None, never NaN.
    """
    k = len(labels)
    if scores.ndim != 2 or scores.shape[1] != k or scores.shape[0] != len(y):
        raise ValueError(f"scores of shape {scores.shape} do not fit {len(y)} clips of {k} labels")
    classes = list(range(k))
    predicted = scores.argmax(axis=1)
    if len(y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # zero_division=0 already says what happens
            precision, recall, f1, support = precision_recall_fscore_support(
                y, predicted, labels=classes, zero_division=0.0
            )
    else:  # scikit-learn refuses empty input; an empty split has no figures
        precision = recall = f1 = support = np.zeros(k)
    aurocs = [_auroc(y == i, scores[:, i]) for i in classes]
    present = [i for i in classes if support[i] > 0]

    def mean(values: Sequence[float | None]) -> float | None:
        defined = [v for v in values if v is not None]
        return float(np.mean(defined)) if defined else None

    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, predicted)) if len(y) else None,
        "macro_precision": mean([float(precision[i]) for i in present]),
        "macro_recall": mean([float(recall[i]) for i in present]),
        "macro_f1": mean([float(f1[i]) for i in present]),
        "macro_auroc": mean([aurocs[i] for i in present]),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "auroc": aurocs[i],
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion": confusion_matrix(y, predicted, labels=classes).tolist() if len(y) else [[0] * k] * k,
    }


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)


def evaluation_summary(report: Mapping[str, Any], **context: Any) -> dict[str, Any]:
    """The headline figures the manifest carries (the whole report lives in ``metrics.json``)."""
    return {
        **context,
        "n": report["n"],
        "accuracy": rounded(report["accuracy"]),
        "macro_f1": rounded(report["macro_f1"]),
        "macro_auroc": rounded(report["macro_auroc"]),
        "files": list(REPORT_FILES),
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# -------------------------------------------------------------------------------------------------- plots


def plot_confusion(report: Mapping[str, Any], path: Path) -> Path:
    """Confusion matrix as a heatmap normalised per true class (recall on the diagonal), counts written in."""
    counts = np.asarray(report["confusion"], dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    k = len(report["labels"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.6 + 0.55 * k), layout="constrained")
    display = ConfusionMatrixDisplay(normalised, display_labels=report["labels"])
    display.plot(ax=ax, cmap="Blues", xticks_rotation=45, colorbar=True, im_kw={"vmin": 0.0, "vmax": 1.0})
    for (i, j), text in np.ndenumerate(display.text_):
        text.set_text(str(counts[i, j]) if counts[i, j] else "")
    display.im_.colorbar.set_label("share of the true class")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    accuracy = report["accuracy"]
    ax.set_title(f"{report['n']} clips, accuracy {accuracy:.3f}" if accuracy is not None else "no clips")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(scores: FloatArray, y: IntArray, labels: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC curve of every class present with its AUROC (3 digits), on one set of axes.

    The false positive rate is on a log axis: a good keyword model differs from another only below a few percent.
    """
    fig, ax = plt.subplots(figsize=(7.5, 6.5), layout="constrained")
    colours = plt.get_cmap("tab20")
    for i, label in enumerate(labels):
        positive = y == i
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, scores[:, i])
        # matplotlib's legend skips names that start with '_'
        name = f"{label.strip('_')} (AUC {roc_auc_score(positive, scores[:, i]):.3f})"
        RocCurveDisplay(fpr=fpr, tpr=tpr, name=name).plot(ax=ax, curve_kwargs={"color": colours(i % 20)})
    ax.set_aspect("auto")  # the display squares the axes, which a log axis does not suit
    ax.set_xscale("log")
    ax.set_xlim(1.0 / max(2, len(y)), 1.0)
    ax.set_xlabel("false positive rate (log)")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, one class against the rest ({len(y)} clips)")
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Loss, train and val accuracy and learning rate per epoch (a run's ``metrics.jsonl``), best epoch marked."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(3, 1, figsize=(7.0, 7.5), sharex=True, layout="constrained")
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss")
    ax_loss.set_ylabel("loss")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in rows], marker="o", label="train (augmented)")
    ax_acc.plot(epochs, [r["val_accuracy"] for r in rows], marker="o", label="val (unheard voices)")
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    ax_acc.axvline(int(best["epoch"]), color="grey", linestyle="--", label=f"best val, epoch {best['epoch']}")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend(loc="lower right", fontsize="small")
    ax_lr.plot(epochs, [r["lr"] for r in rows], marker="o")
    ax_lr.set_ylabel("learning rate (end of epoch)")
    ax_lr.set_xlabel("epoch")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    out_dir: Path, scores: FloatArray, y: IntArray, labels: Sequence[str], **context: Any
) -> dict[str, Any]:
    """Compute the report and write ``metrics.json``, ``confusion_matrix.png`` and ``roc.png`` into ``out_dir``.

    ``context`` (split, data manifest, model) is stored in ``metrics.json`` beside the figures; the returned
    report is what that file holds.
    """
    report = {**context, **classification_report(scores, y, labels)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(report, out_dir / CONFUSION_FILE)
    plot_roc(scores, y, labels, out_dir / ROC_FILE)
    return report


def cell(value: float | None) -> str:
    """A figure in a six-character table column; ``-`` where there is none."""
    return "     -" if value is None else f"{value:6.3f}"


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a table a person reads in a terminal."""
    width = max(len(label) for label in report["labels"]) + 2
    lines = [f"{'class':<{width}} precision recall     f1  auroc  support"]
    for label, c in report["per_class"].items():
        lines.append(
            f"{label:<{width}}    {cell(c['precision'])} {cell(c['recall'])} {cell(c['f1'])} "
            f"{cell(c['auroc'])} {c['support']:8d}"
        )
    lines.append(
        f"{'macro':<{width}}    {cell(report['macro_precision'])} {cell(report['macro_recall'])} "
        f"{cell(report['macro_f1'])} {cell(report['macro_auroc'])} {report['n']:8d}"
    )
    lines.append(f"accuracy {cell(report['accuracy']).strip()} on {report['n']} clips")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ a version


def resolve_version(spec: str, store: Path) -> Path:
    """A version folder from ``spec``: a folder holding a manifest, or ``NAME[:VERSION]`` in ``store``.

    Without a version the newest numbered folder of the model is taken (it is evaluated, so a broken one
    fails loudly instead of being skipped as the server would).
    """
    path = Path(spec)
    if (path / MANIFEST_FILE).is_file():
        return path
    name, _, version = spec.partition(":")
    validate_model_name(name)
    if version:
        if not version.isdigit():
            raise ValueError(f"version {version!r} in {spec!r} is not a number")
        candidate = store / name / str(int(version))
        if not candidate.is_dir():
            raise FileNotFoundError(f"{candidate} does not exist")
        return candidate
    versions = [d for d in iter_version_dirs(store) if d.parent.name == name]
    if not versions:
        raise FileNotFoundError(f"{spec!r} is neither a version folder nor a model with versions in {store}")
    return max(versions, key=lambda d: int(d.name))


def split_windows(
    data_manifest: Path,
    split: str,
    labels: Sequence[str],
    loaded: LoadedModel,
    *,
    progress: bool = False,
) -> tuple[FloatArray, IntArray]:
    """The split's windows, computed from the audio with the version's frontend, and their label indices.

    Always from the audio, never from the training feature cache: the version's manifest, not the cache
    key, decides the frontend, and the data folder is only read.
    """
    from hark_training.data import read_manifest as read_data_manifest

    rows = [r for r in read_data_manifest(data_manifest) if r.split == split]
    if not rows:
        raise ValueError(f"{data_manifest} has no clips in the {split!r} split")
    m = loaded.manifest
    multilabel = m.output_kind == "sigmoid"
    named = {label for r in rows for label in r.labels} if multilabel else {r.label for r in rows}
    if unknown := sorted(named - set(labels)):
        raise ValueError(f"{data_manifest} has labels {unknown} that the model does not know ({list(labels)})")
    x = extract([r.path for r in rows], m.frontend, m.window_frames, progress=progress, desc=f"{split} clips")
    if multilabel:  # multi-hot rows: a clip may hold several classes, or none
        y = np.array([[label in r.labels for label in labels] for r in rows], dtype=np.int64).reshape(-1, len(labels))
    else:
        y = np.array([labels.index(r.label) for r in rows], dtype=np.int64)
    return x, y


def version_scores(loaded: LoadedModel, x: FloatArray, batch_size: int = 256) -> FloatArray:
    """Class probabilities of windows ``x`` from the version's own runner, batch by batch."""
    if len(x) == 0:
        return np.empty((0, len(loaded.manifest.labels)), dtype=np.float32)
    return np.concatenate([loaded.runner.run_windows(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate_version(
    version_dir: Path,
    data_manifest: Path | None = None,
    split: str = "test",
    *,
    out_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate one version on one split of a data manifest; write the report and summarise it.

    ``data_manifest`` defaults to the one the version was trained on. The report goes next to the version and
    its headline into the manifest; with ``out_dir`` it goes there instead and the version is left untouched.
    """
    loaded = load_version(version_dir)
    manifest = loaded.manifest
    trained_on = manifest.training.get("config", {}).get("data")
    data = data_manifest or Path(trained_on or DEFAULT_MANIFEST)
    data_sha = sha256_file(data)
    if manifest.training.get("data_manifest_sha256") not in (None, data_sha):
        print(f"warning: {data} is not the data manifest this version was trained on", file=sys.stderr)
    x, y = split_windows(data, split, manifest.labels, loaded, progress=progress)
    scores = version_scores(loaded, x)
    context = {
        "model": manifest.name,
        "version": manifest.version,
        "split": split,
        "data_manifest": str(data),
        "data_manifest_sha256": data_sha,
    }
    if manifest.output_kind == "sigmoid":
        return evaluate_multilabel(version_dir, scores, y, manifest.labels, manifest.thresholds, out_dir, **context)
    if out_dir is not None:
        return write_report(out_dir, scores, y, manifest.labels, **context)
    with tempfile.TemporaryDirectory(prefix=".eval-", dir=version_dir) as tmp:
        report = write_report(Path(tmp), scores, y, manifest.labels, **context)
        for name in REPORT_FILES:  # each file appears whole
            (Path(tmp) / name).chmod(0o644)
            (Path(tmp) / name).replace(version_dir / name)
    update_metrics(version_dir, {"evaluation": evaluation_summary(report, **context)})
    return report


def evaluate_multilabel(
    version_dir: Path,
    probabilities: FloatArray,
    y: IntArray,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    out_dir: Path | None,
    **context: Any,
) -> dict[str, Any]:
    """A multi-label (sigmoid) version's clip-level figures: per-class average precision, mAP, and per-class
    precision, recall and F1 at the thresholds the version serves with (its manifest's; 0.5 for a class
    without one), written to ``metrics.json`` (no confusion matrix or ROC: classes are not exclusive).

    As for a single-label version, the headline figures go into the manifest unless ``out_dir`` is given."""
    from hark_training.multilabel import multilabel_report

    report = {**context, **multilabel_report(probabilities, y, labels, thresholds, logits=False)}
    target = out_dir or version_dir
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=target, prefix=".eval-", suffix=".json", delete=False) as f:
        f.write(json.dumps(report, indent=2) + "\n")
    Path(f.name).chmod(0o644)
    Path(f.name).replace(target / METRICS_FILE)  # the file appears whole
    if out_dir is None:
        summary = {
            **context,
            "n": report["n"],
            "map": report["map"],
            "micro_f1": report["micro_f1"],
            "files": [METRICS_FILE],
            "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        update_metrics(version_dir, {"evaluation": summary})
    return report


def format_multilabel_table(report: Mapping[str, Any]) -> str:
    """A multi-label report as a table: per class AP, then precision, recall and F1 at its threshold."""
    width = max(len(label) for label in report["labels"]) + 2
    lines = [f"{'class':<{width}}     AP  threshold precision recall     f1  support"]
    for label, c in report["per_class"].items():
        lines.append(
            f"{label:<{width}} {cell(c['average_precision'])}     {cell(c['threshold'])}    {cell(c['precision'])} "
            f"{cell(c['recall'])} {cell(c['f1'])} {c['support']:8d}"
        )
    lines.append(
        f"mAP {cell(report['map']).strip()}, micro F1 {cell(report['micro_f1']).strip()}, exact match "
        f"{cell(report['exact_match']).strip()} on {report['n']} clips (F1 at the version's thresholds)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    try:
        version_dir = resolve_version(args.version, args.store)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tune_detection and args.events is None:
        print("error: --tune-detection needs --events DIR (annotated validation recordings)", file=sys.stderr)
        return 2
    if args.events is not None and args.tune_detection:
        return run_tune(version_dir, args.events, args.out)
    if args.events is not None:
        return run_events(version_dir, args.events, args.out)
    try:
        report = evaluate_version(version_dir, args.data, args.split, out_dir=args.out, progress=not args.quiet)
    except VerificationError as e:
        print(f"error: {version_dir} does not verify: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # a missing data manifest, an empty split, unknown labels
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = args.out or version_dir
    print(f"{version_dir} on the {args.split} split of {report['data_manifest']}")
    if "map" in report:  # a multi-label version
        print(format_multilabel_table(report))
        print(f"wrote {where / METRICS_FILE}")
        return 0
    print(format_table(report))
    from hark_training.engine_eval import per_engine_table  # a data set with several engines: accuracy per engine

    if table := per_engine_table(version_dir, Path(report["data_manifest"]), args.split):
        print(table)
    print(f"wrote {', '.join(str(where / name) for name in REPORT_FILES)}")
    return 0


def run_events(version_dir: Path, folder: Path, out: Path | None) -> int:
    """``hark eval VERSION --events DIR``: event-level figures of a multi-label version (``hark_training.sed``),
    written to ``event_metrics.json`` beside the version (or in ``out``), headline figures into its manifest."""
    from hark_training.sed import METRICS_FILE as EVENT_METRICS
    from hark_training.sed import evaluate_events

    try:
        loaded = load_version(version_dir)
        report = evaluate_events(loaded, folder)
    except VerificationError as e:
        print(f"error: {version_dir} does not verify: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"events": str(folder), **report}
    target = (out or version_dir) / EVENT_METRICS
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    if out is None:
        update_metrics(
            version_dir,
            {
                "events": {
                    "data": str(folder),
                    "event_f1_onset": report["event_f1_onset"]["f1"],
                    "event_f1_onset_offset": report["event_f1_onset_offset"]["f1"],
                    "segment_f1_1s": report["segment_f1_1s"]["f1"],
                    "psds1": report["psds1"],
                }
            },
        )
    print(
        f"{version_dir} on {report['recordings']} recordings ({report['seconds']} s, {report['reference_events']} "
        f"events) in {folder}: event F1 {report['event_f1_onset']['f1']} (onset, 200 ms), "
        f"{report['event_f1_onset_offset']['f1']} (onset and offset), segment F1 {report['segment_f1_1s']['f1']} "
        f"(1 s), PSDS1 {report['psds1']} -> {target}"
    )
    return 0


def run_tune(version_dir: Path, folder: Path, out: Path | None) -> int:
    """``hark eval VERSION --events DIR --tune-detection``: choose a multi-label version's smoothing, release
    ratio and per-class thresholds on the annotated recordings of DIR (``hark_training.sed.tune_detection``)
    and write them into its manifest (or, with ``out``, only into ``out/detection.json``)."""
    from hark_training.sed import tune_detection, write_detection

    try:
        tuned = tune_detection(load_version(version_dir), folder)
    except VerificationError as e:
        print(f"error: {version_dir} does not verify: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out is None:
        write_detection(version_dir, tuned)
        target = version_dir / MANIFEST_FILE
    else:
        out.mkdir(parents=True, exist_ok=True)
        target = out / "detection.json"
        target.write_text(json.dumps(tuned, indent=2) + "\n")
    thresholds = "  ".join(f"{k} {v:g}" for k, v in tuned["thresholds"].items())
    print(
        f"{version_dir}: on {folder}, smoothing {tuned['smoothing_windows']} hop(s) and release at "
        f"{tuned['release_ratio']:g} of the threshold give PSDS1 {tuned['val_psds1']}; thresholds for the best "
        f"event F1: {thresholds} -> {target}"
    )
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a published model version (ONNX, as served) on a data split",
        description="Run a model version through the server's own loading, frontend and onnxruntime runner on a "
        "split of a data manifest. Writes metrics.json, confusion_matrix.png and roc.png next to the version "
        "and records the headline figures in its manifest (the version still verifies).",
    )
    parser.add_argument(
        "version",
        metavar="VERSION",
        help="A version folder (model_store/keywords/3), or NAME[:VERSION] in --store (default: the newest version)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=Path("model_store"),
        help="Model store root for NAME[:VERSION] (default model_store)",
    )
    parser.add_argument("--data", type=Path, help="Data manifest CSV (default: the one the version was trained on)")
    parser.add_argument(
        "--split", choices=("train", "val", "test"), default="test", help="Which split to evaluate on (default test)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="Write the report into this folder instead, leaving the version and its manifest as they are",
    )
    parser.add_argument(
        "--events",
        type=Path,
        metavar="DIR",
        help="Multi-label versions: stream the recordings in DIR (with DIR/events.csv: filename,event_label,"
        "onset,offset) and report event-based F1, segment-based F1 (sed_eval) and PSDS (psds_eval)",
    )
    parser.add_argument(
        "--tune-detection",
        action="store_true",
        help="With --events on validation recordings (never the test ones): choose the version's smoothing and "
        "release ratio (best PSDS1) and per-class thresholds (best event F1) and write them into its manifest",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bars")
    parser.set_defaults(func=run)
