"""Multi-label figures and detection thresholds: one sigmoid per class, each judged on its own.

A multi-label model (sound events that overlap) is not right or wrong per window the way a classifier is:
each class is a detector with its own trade-off between misses and false alarms. So each class gets

* its **average precision** (area under its precision-recall curve, threshold-free) and the data set its
  **mAP** (the mean over classes that occur), the field's headline figure;
* a **threshold** chosen on validation for a target false-positive rate (the share of windows without the
  class in which it would fire), written into the version's manifest, where the server reads it;
* precision, recall and F1 at that threshold.

Event-level figures (onsets and offsets in streams, PSDS) are in :mod:`hark_training.sed`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score

from hark.core.runner import sigmoid

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

DEFAULT_TARGET_FPR = 0.02
"""Per-class false-positive rate on validation windows that the exported thresholds aim for."""
THRESHOLD_RANGE = (0.05, 0.95)
"""Thresholds are kept inside this range, so a class seen rarely in validation cannot fire on nothing."""
DIGITS = 4


def average_precisions(scores: FloatArray, y: IntArray) -> list[float | None]:
    """Each class's average precision over windows; None for a class with no positive window."""
    out: list[float | None] = []
    for k in range(y.shape[1]):
        positive = y[:, k] > 0
        if not positive.any():
            out.append(None)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(float(average_precision_score(positive, scores[:, k])))
    return out


def mean_average_precision(scores: FloatArray, y: IntArray) -> float:
    """mAP: the mean of the per-class average precisions over the classes that occur (NaN if none does).

    ``scores`` may be logits or probabilities: average precision only ranks them."""
    defined = [ap for ap in average_precisions(scores, y) if ap is not None]
    return float(np.mean(defined)) if defined else float("nan")


def choose_thresholds(
    probabilities: FloatArray, y: IntArray, labels: Sequence[str], target_fpr: float = DEFAULT_TARGET_FPR
) -> dict[str, float]:
    """Per class, the lowest threshold whose false-positive rate on these (validation) windows is at most
    ``target_fpr``, clamped to :data:`THRESHOLD_RANGE`; 0.5 for a class without negative windows."""
    low, high = THRESHOLD_RANGE
    out: dict[str, float] = {}
    for k, label in enumerate(labels):
        negatives = np.sort(probabilities[y[:, k] == 0, k])[::-1]
        if negatives.size == 0:
            out[label] = 0.5
            continue
        allowed = int(np.floor(target_fpr * negatives.size))  # this many negatives may reach the threshold
        # Just above the (allowed+1)-th highest negative score: at most `allowed` negatives fire.
        edge = float(negatives[allowed]) if allowed < negatives.size else 0.0
        # Rounded up to DIGITS places, so rounding never lets the edge negative back in.
        out[label] = float(np.clip(math.ceil(np.nextafter(edge, 1.0) * 10**DIGITS) / 10**DIGITS, low, high))
    return out


def multilabel_report(
    scores: FloatArray,
    y: IntArray,
    labels: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    *,
    logits: bool = True,
) -> dict[str, Any]:
    """Every window-level figure of a multi-label model: per-class AP, support, and precision, recall and F1
    at ``thresholds`` (0.5 when none are given); mAP, micro F1 and exact-match accuracy. Plain JSON types."""
    p = sigmoid(np.asarray(scores, dtype=np.float32)) if logits else np.asarray(scores, dtype=np.float32)
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(labels):
        raise ValueError(f"scores of shape {p.shape} do not fit targets {y.shape} of {len(labels)} labels")
    t = np.array([(thresholds or {}).get(label, 0.5) for label in labels], dtype=np.float32)
    predicted = p >= t
    truth = y > 0
    aps = average_precisions(p, y)
    per_class: dict[str, dict[str, Any]] = {}
    for k, label in enumerate(labels):
        tp = int((predicted[:, k] & truth[:, k]).sum())
        fp = int((predicted[:, k] & ~truth[:, k]).sum())
        fn = int((~predicted[:, k] & truth[:, k]).sum())
        ap = aps[k]
        per_class[label] = {
            "average_precision": None if ap is None else round(ap, DIGITS),
            "threshold": round(float(t[k]), DIGITS),
            "precision": round(tp / (tp + fp), DIGITS) if tp + fp else 0.0,
            "recall": round(tp / (tp + fn), DIGITS) if tp + fn else 0.0,
            "f1": round(2 * tp / (2 * tp + fp + fn), DIGITS) if tp + fp + fn else 0.0,
            "support": int(truth[:, k].sum()),
        }
    tp, fp, fn = int((predicted & truth).sum()), int((predicted & ~truth).sum()), int((~predicted & truth).sum())
    defined = [ap for ap in aps if ap is not None]
    return {
        "n": int(p.shape[0]),
        "map": round(float(np.mean(defined)), DIGITS) if defined else None,
        "micro_f1": round(2 * tp / (2 * tp + fp + fn), DIGITS) if tp + fp + fn else None,
        "exact_match": round(float((predicted == truth).all(axis=1).mean()), DIGITS) if len(p) else None,
        "per_class": per_class,
        "labels": list(labels),
    }
