"""Event-level figures of a multi-label version on annotated recordings, measured as it is served.

Each recording goes through what a stream goes through in the server, minus the network: the version's
own :class:`~hark.serving.session.StreamSession` (resampler, incremental frontend, windows every hop) and
its onnxruntime runner (sigmoid), then the postprocessor with the version's thresholds, which turns scores
into onset and offset events. Those events are compared with the annotations by the field's libraries:

* **event-based F1** (``sed_eval``, Mesaros et al. 2016): an event is found when its class matches and its
  onset is within 200 ms (and, for the onset+offset figure, its offset within 200 ms or 20 % of its length);
* **segment-based F1** (``sed_eval``): per 1-s segment, which classes are active;
* **PSDS** (``psds_eval``, Bilen et al. 2020): the polyphonic sound detection score, the area under the
  ROC-like curve of detection against false positives per hour, over thresholds from 0.05 to 0.95 (the
  scenario-1 parameters of DCASE: dtc = gtc = 0.7, cttc = 0.3, no cross-trigger penalty, max eFPR 100/h).

The annotations are a CSV ``filename,event_label,onset,offset`` beside the recordings (``hark data drums``
writes ``scenes/<split>/events.csv``).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hark.config import Settings
from hark.core.audio import read_audio
from hark.core.model_store import LoadedModel
from hark.core.postprocess import OFFSET, DetectionOverrides, PostprocessConfig, Postprocessor
from hark.serving.session import StreamSession

FloatArray = npt.NDArray[np.float32]
EVENTS_FILE = "events.csv"
METRICS_FILE = "event_metrics.json"
PSDS_THRESHOLDS = tuple(round(float(t), 2) for t in np.linspace(0.05, 0.95, 19))
DIGITS = 4


@dataclass(frozen=True)
class Scored:
    """One recording's window centres and per-window class probabilities, as the server computed them."""

    duration_s: float
    centres: FloatArray
    probabilities: FloatArray


def score_recording(loaded: LoadedModel, audio: FloatArray, rate: int, settings: Settings) -> Scored:
    """Stream ``audio`` through the version's session and runner in 100 ms chunks, as a client would."""
    session = StreamSession(loaded, sample_rate=rate, encoding="pcm_f32le", settings=settings)
    step = rate // 10
    windows = []
    for i in range(0, audio.size, step):
        windows += session.feed(audio[i : i + step].astype(np.float32))
    windows += session.finish()
    n = len(loaded.manifest.labels)
    if not windows:
        return Scored(audio.size / rate, np.zeros(0, np.float32), np.zeros((0, n), np.float32))
    probabilities = loaded.runner.run(np.stack([w.features for w in windows]))
    centres = np.array([w.centre_s for w in windows], dtype=np.float32)
    return Scored(audio.size / rate, centres, probabilities)


def detect(scored: Scored, config: PostprocessConfig) -> list[dict[str, Any]]:
    """The events the server would send for a scored recording, as ``event_label, onset, offset`` rows."""
    post = Postprocessor(config)
    found = []
    for centre, p in zip(scored.centres, scored.probabilities, strict=True):
        found += post.update(p, float(centre))[1]
    found += post.close(scored.duration_s)
    return [
        {"event_label": d.label, "onset": float(d.onset_s or 0.0), "offset": float(d.time_s)}
        for d in found
        if d.kind == OFFSET
    ]


def read_events(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        return [
            {"filename": r["filename"], "event_label": r["event_label"], "onset": float(r["onset"]),
             "offset": float(r["offset"])}
            for r in csv.DictReader(f)
        ]  # fmt: skip


def sed_eval_metrics(
    reference: Sequence[dict[str, Any]], estimated: Sequence[dict[str, Any]], files: Sequence[str], labels: list[str]
) -> dict[str, Any]:
    """Event-based (onset only, and onset+offset) and segment-based F1 with sed_eval, per class and overall."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dcase_util
        import sed_eval

    onset_only = sed_eval.sound_event.EventBasedMetrics(labels, t_collar=0.2, evaluate_offset=False)
    onset_offset = sed_eval.sound_event.EventBasedMetrics(labels, t_collar=0.2, percentage_of_length=0.2)
    segments = sed_eval.sound_event.SegmentBasedMetrics(labels, time_resolution=1.0)
    for name in files:
        ref = dcase_util.containers.MetaDataContainer(
            [{**e, "filename": name} for e in reference if e["filename"] == name]
        )
        est = dcase_util.containers.MetaDataContainer(
            [{**e, "filename": name} for e in estimated if e["filename"] == name]
        )
        for metric in (onset_only, onset_offset, segments):
            metric.evaluate(reference_event_list=ref, estimated_event_list=est)

    def f1(metric: Any) -> dict[str, Any]:
        overall = metric.results_overall_metrics()["f_measure"]
        per_class = metric.results_class_wise_metrics()
        return {
            "f1": round(float(overall["f_measure"]), DIGITS),
            "precision": round(float(overall["precision"]), DIGITS),
            "recall": round(float(overall["recall"]), DIGITS),
            "per_class_f1": {k: round(float(v["f_measure"]["f_measure"]), DIGITS) for k, v in per_class.items()},
        }

    return {
        "event_f1_onset": f1(onset_only),
        "event_f1_onset_offset": f1(onset_offset),
        "segment_f1_1s": f1(segments),
    }


def merge_overlaps(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events of one class in one file that overlap (two kicks 50 ms apart, the first still ringing) as one:
    psds_eval takes a class to be either active or not, and refuses overlapping ground truth."""
    merged: list[dict[str, Any]] = []
    for e in sorted(events, key=lambda e: (e["filename"], e["event_label"], e["onset"])):
        last = merged[-1] if merged else None
        same = last is not None and (last["filename"], last["event_label"]) == (e["filename"], e["event_label"])
        if last is not None and same and e["onset"] <= last["offset"]:
            last["offset"] = max(last["offset"], e["offset"])
        else:
            merged.append(dict(e))
    return merged


def psds(
    reference: Sequence[dict[str, Any]],
    scored: dict[str, Scored],
    base: PostprocessConfig,
    thresholds: Sequence[float] = PSDS_THRESHOLDS,
) -> float:
    """PSDS (scenario 1) over operating points at each of ``thresholds`` for every class."""
    import pandas as pd

    gt = pd.DataFrame(merge_overlaps(reference), columns=["filename", "event_label", "onset", "offset"])
    meta = pd.DataFrame([{"filename": k, "duration": s.duration_s} for k, s in scored.items()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = psds_evaluator()(
            dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=0.3, ground_truth=gt, metadata=meta
        )
        for t in thresholds:
            config = replace(base, thresholds=(t,) * len(base.labels))
            rows = [{**e, "filename": name} for name, s in scored.items() for e in detect(s, config)]
            evaluator.add_operating_point(pd.DataFrame(rows, columns=["filename", "event_label", "onset", "offset"]))
        return round(float(evaluator.psds(alpha_ct=0.0, alpha_st=0.0, max_efpr=100).value), DIGITS)


def psds_evaluator() -> Any:
    """``psds_eval.PSDSEval`` with its area computation made to work under numpy 2.

    psds_eval 0.5.3 (the last release) converts a 2-D ``np.argwhere`` to ``int`` when ``max_efpr`` is not one
    of the curve's points, which numpy 2 refuses; the override adds that point first (with the curve's value
    just before it, as the original does), so the original never takes that branch.
    """
    from psds_eval import PSDSEval

    class Patched(PSDSEval):  # type: ignore[misc]
        @staticmethod
        def _auc(x: Any, y: Any, max_x: float | None = None, decreasing_y: bool = False) -> Any:
            if max_x is not None and max_x not in x:
                i = int(np.searchsorted(x, max_x))
                x = np.concatenate([x[:i], [max_x], x[i:]])
                y = np.concatenate([y[:i], [y[i - 1] if i else 0.0], y[i:]])
            return PSDSEval._auc(x, y, max_x, decreasing_y)

    return Patched


def score_folder(
    loaded: LoadedModel, folder: Path, settings: Settings
) -> tuple[list[dict[str, Any]], dict[str, Scored]]:
    """The annotations of ``folder`` and each of its recordings scored as served, refusing what does not fit."""
    manifest = loaded.manifest
    if manifest.output_kind != "sigmoid":
        raise ValueError(f"{manifest.name} v{manifest.version} is not a multi-label (sigmoid) model")
    reference = read_events(folder / EVENTS_FILE)
    unknown = sorted({e["event_label"] for e in reference} - set(manifest.labels))
    if unknown:
        raise ValueError(f"{folder / EVENTS_FILE} has classes {unknown} that the model does not know")
    files = sorted(p.name for p in folder.glob("*.wav"))
    if not files:
        raise ValueError(f"{folder} holds no .wav recordings")
    rate = manifest.frontend.sample_rate
    return reference, {name: score_recording(loaded, read_audio(folder / name, rate), rate, settings) for name in files}


SMOOTHING_GRID = (1, 2, 3)
RELEASE_GRID = (0.25, 0.5, 0.75)


def tune_detection(loaded: LoadedModel, folder: Path, settings: Settings | None = None) -> dict[str, Any]:
    """A multi-label version's event postprocessing, chosen on the annotated recordings of ``folder``
    (validation scenes; test never chooses), each recording scored once as served:

    1. the smoothing (hops averaged) and release ratio (release level / threshold) of the grids above with the
       best PSDS1, which sweeps the thresholds and so judges how well events are placed in time, whatever
       the thresholds;
    2. with those, per class, the threshold with the best event F1 (:func:`tune_thresholds`).

    Returns the manifest fields (``thresholds``, ``smoothing_windows``, ``release_ratio``) and what was seen."""
    settings = settings or Settings()
    reference, scored = score_folder(loaded, folder, settings)
    manifest = loaded.manifest
    base = PostprocessConfig.from_settings(settings, manifest, DetectionOverrides())
    tried: list[tuple[int, float, float]] = []  # smoothing, release ratio, PSDS1
    for smoothing in SMOOTHING_GRID:
        for ratio in RELEASE_GRID:
            config = replace(base, smoothing_windows=smoothing, release_threshold=ratio * base.threshold)
            tried.append((smoothing, ratio, psds(reference, scored, config)))
    smoothing, ratio, best_psds = max(tried, key=lambda t: t[2])
    config = replace(base, smoothing_windows=smoothing, release_threshold=ratio * base.threshold)
    thresholds, f1 = tune_thresholds_scored(reference, scored, config, manifest.labels, manifest.background_labels)
    return {
        "thresholds": thresholds,
        "smoothing_windows": smoothing,
        "release_ratio": ratio,
        "chosen_on": str(folder),
        "val_psds1": best_psds,
        "val_event_f1_onset_per_class": f1,
        "tried": [{"smoothing_windows": s, "release_ratio": r, "psds1": p} for s, r, p in tried],
    }


def tune_thresholds_scored(
    reference: Sequence[dict[str, Any]],
    scored: dict[str, Scored],
    base: PostprocessConfig,
    labels: Sequence[str],
    background: Sequence[str] = (),
    grid: Sequence[float] = PSDS_THRESHOLDS,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per class, the threshold of ``grid`` with the best event F1 (onset within 200 ms) on scored recordings
    under ``base``'s smoothing and release ratio; returns the thresholds and each class's F1 there. Only
    the classes with annotated events in ``reference`` are tuned.

    Classes are independent detectors in a multi-label version, so one pass per threshold with every class
    at that threshold gives each class's F1 at it. A tie goes to the threshold nearer 0.5 (the less extreme)."""
    annotated = {e["event_label"] for e in reference}  # a class never annotated here has nothing to tune on
    foreground = [label for label in labels if label not in background and label in annotated]
    tuned = set(foreground)
    files = sorted(scored)
    best: dict[str, tuple[float, float]] = {}
    for t in sorted(grid, key=lambda t: abs(t - 0.5)):  # nearest 0.5 first, so it wins ties
        config = replace(base, thresholds=(t,) * len(base.labels))
        estimated = [
            {**e, "filename": name}
            for name, s in scored.items()
            for e in detect(s, config)
            if e["event_label"] in tuned
        ]
        per_class = sed_eval_metrics(reference, estimated, files, foreground)["event_f1_onset"]["per_class_f1"]
        for label in foreground:
            f1 = float(per_class.get(label, 0.0))
            if f1 == f1 and (label not in best or f1 > best[label][1]):  # f1 == f1: not NaN
                best[label] = (float(t), f1)
    return {k: v[0] for k, v in best.items()}, {k: round(v[1], DIGITS) for k, v in best.items()}


def write_detection(version_dir: Path, tuned: dict[str, Any]) -> None:
    """Store tuned postprocessing in a version's manifest (how it was chosen under ``metrics.detection``),
    atomically; the version still verifies (its model file is untouched)."""
    import json
    import os
    import tempfile

    from hark.core.model_store import MANIFEST_FILE, Manifest, read_manifest

    data = read_manifest(version_dir).model_dump(mode="json")
    data["thresholds"] = {**data["thresholds"], **tuned["thresholds"]}  # a class not tuned keeps its own
    data["smoothing_windows"] = tuned["smoothing_windows"]
    data["release_ratio"] = tuned["release_ratio"]
    data["metrics"] = {**data.get("metrics", {}), "detection": {k: v for k, v in tuned.items() if k != "tried"}}
    Manifest.model_validate(data)
    path = version_dir / MANIFEST_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_FILE}-", dir=version_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tune_thresholds(
    loaded: LoadedModel, folder: Path, settings: Settings | None = None, grid: Sequence[float] = PSDS_THRESHOLDS
) -> tuple[dict[str, float], dict[str, float]]:
    """Per class, the threshold of ``grid`` with the best event F1 on the annotated recordings of ``folder``
    under the version's own (or the server's) smoothing and release; see :func:`tune_thresholds_scored`."""
    settings = settings or Settings()
    reference, scored = score_folder(loaded, folder, settings)
    m = loaded.manifest
    base = PostprocessConfig.from_settings(settings, m, DetectionOverrides())
    return tune_thresholds_scored(reference, scored, base, m.labels, m.background_labels, grid)


def evaluate_events(loaded: LoadedModel, folder: Path, settings: Settings | None = None) -> dict[str, Any]:
    """Every event-level figure of ``loaded`` on the recordings in ``folder`` and their ``events.csv``."""
    settings = settings or Settings()
    manifest = loaded.manifest
    reference, scored = score_folder(loaded, folder, settings)
    files = sorted(scored)
    config = PostprocessConfig.from_settings(settings, manifest, DetectionOverrides())
    estimated = [{**e, "filename": name} for name, s in scored.items() for e in detect(s, config)]
    labels = [label for label in manifest.labels if label not in manifest.background_labels]
    return {
        "recordings": len(files),
        "seconds": round(sum(s.duration_s for s in scored.values()), 1),
        "reference_events": len(reference),
        "detected_events": len(estimated),
        **sed_eval_metrics(reference, estimated, files, labels),
        "psds1": psds(reference, scored, config),
    }
