"""Per-engine evaluation of a published version, and per-class thresholds for a false-alarm budget.

``hark engines eval VERSION --data DIR`` measures, for every engine in the data set's held-out splits:

* **clip accuracy**: top-1 on its 1-s clips (isolated words and windows of running speech), as ``hark eval``;
* **event F1** on its keyword streams: each stream goes through the version's frontend, runner and the
  server's own :class:`~hark.core.postprocess.Postprocessor` (default settings) window by window, and an event
  counts when its label matches a keyword said between 0.3 s before and 1.2 s after the event;
* **false alarms per hour** on its keyword-free streams: every event there is one.

``hark engines thresholds VERSION --data DIR --budget F`` picks, per class, the lowest threshold whose false
alarms on the validation engines' keyword-free streams stay within ``F`` per hour split over the classes, and
writes them into the version's manifest as ``thresholds``. ``--allocate recall`` spends the budget where it keeps
most keywords instead: the thresholds that keep the most keyword events of the validation keyword streams while the
keywords' false alarms together stay within ``F``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import stat
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hark.config import Settings
from hark.core.audio import read_audio
from hark.core.frontend import LogMel
from hark.core.model_store import (
    MANIFEST_FILE,
    LoadedModel,
    Manifest,
    VerificationError,
    load_version,
    read_manifest,
)
from hark.core.postprocess import DetectionOverrides, PostprocessConfig, Postprocessor
from hark_training.data import EVERY_CLIP, TrainingSelection
from hark_training.features import extract
from hark_training.voices import engine_list, parse_events, streams_of

FloatArray = npt.NDArray[np.float64]
EARLY_S, LATE_S = 0.3, 1.2
"""An event matches a keyword said from ``EARLY_S`` before to ``LATE_S`` after it (window centre + smoothing lag)."""
THRESHOLD_GRID: tuple[float, ...] = tuple(round(x, 2) for x in np.arange(0.40, 0.99, 0.02))
DEFAULT_FLOOR = 0.7
"""The lowest threshold ``hark engines thresholds`` gives a keyword: a few minutes of one validation engine's
keyword-free speech cannot show that a lower one holds on other voices (measured: tuned from 0.40 on Pico, the
held-out RHVoice streams got 52 false alarms per hour; from 0.70, 29)."""


# --- streams ----------------------------------------------------------------------------------------------------


def stream_probabilities(loaded: LoadedModel, audio: npt.NDArray[np.floating[Any]]) -> tuple[FloatArray, FloatArray]:
    """Window centre times and class probabilities of a whole stream, windows where the server makes them."""
    m = loaded.manifest
    c = m.frontend
    frames = LogMel(c).frames(audio)
    if frames.shape[0] < m.window_frames:
        return np.zeros(0), np.zeros((0, len(m.labels)))
    starts = np.arange(0, frames.shape[0] - m.window_frames + 1, m.hop_frames)
    view = np.lib.stride_tricks.sliding_window_view(frames, m.window_frames, axis=0)[starts].transpose(0, 2, 1)
    x = np.ascontiguousarray(view, dtype=np.float32)
    probs = np.concatenate([loaded.runner.run_windows(x[i : i + 256]) for i in range(0, len(x), 256)]).astype(
        np.float64
    )
    centres = (starts * c.hop_length + c.n_samples(m.window_frames) / 2) / c.sample_rate
    return centres, probs


def detect(
    manifest: Manifest,
    times: FloatArray,
    probs: FloatArray,
    thresholds: Mapping[str, float] | None = None,
    settings: Settings | None = None,
) -> list[tuple[str, float]]:
    """The events the server's postprocessor raises, with per-class thresholds when given (in place of the
    manifest's, exactly as a stream's ``class_thresholds`` would set them)."""
    overrides = DetectionOverrides(thresholds=tuple(sorted((thresholds or {}).items())))
    post = Postprocessor(PostprocessConfig.from_settings(settings or Settings(), manifest, overrides))
    events: list[tuple[str, float]] = []
    for t, p in zip(times, probs, strict=True):
        events += [(d.label, d.time_s) for d in post.update(p, float(t))[1]]
    return events


def match(
    events: Sequence[tuple[str, float]], truth: Sequence[tuple[str, float, float]]
) -> tuple[int, int, int, list[tuple[str, float]]]:
    """True positives, false positives, misses, and the false events themselves."""
    used = [False] * len(truth)
    tp, false = 0, []
    for label, t in events:
        hit = next(
            (
                i
                for i, (lab, s, e) in enumerate(truth)
                if not used[i] and lab == label and s - EARLY_S <= t <= e + LATE_S
            ),
            None,
        )
        if hit is None:
            false.append((label, t))
        else:
            used[hit] = True
            tp += 1
    return tp, len(false), used.count(False), false


ScoredStream = tuple[dict[str, str], FloatArray, FloatArray]
"""A ``streams.csv`` row with its window times and class probabilities: scored once, detected on many times."""


def score_streams(
    loaded: LoadedModel, data_dir: Path, splits: Sequence[str], engines: Sequence[str] | None = None
) -> list[ScoredStream]:
    """The streams of ``splits`` (of every engine or of ``engines``), scored."""
    rows = [r for r in streams_of(data_dir) if r["split"] in splits and (engines is None or r["engine"] in engines)]
    return score_rows(loaded, data_dir, rows)


def score_rows(loaded: LoadedModel, data_dir: Path, rows: Sequence[dict[str, str]]) -> list[ScoredStream]:
    """These ``streams.csv`` rows, each read and run through the version's frontend and model."""
    rate = loaded.manifest.frontend.sample_rate
    return [(r, *stream_probabilities(loaded, read_audio(Path(data_dir) / r["path"], rate))) for r in rows]


def stream_report(
    loaded: LoadedModel,
    data_dir: Path,
    splits: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    engines: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Event F1 and false alarms per hour per engine (all, or ``engines``), over the streams of ``splits``."""
    return events_report(loaded.manifest, score_streams(loaded, data_dir, splits, engines), thresholds)


def events_report(
    manifest: Manifest, scored: Sequence[ScoredStream], thresholds: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Event F1 and false alarms per hour per engine of scored streams, with ``thresholds`` (or the manifest's)."""
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    fired: dict[str, Counter[str]] = defaultdict(Counter)  # which keywords the keyword-free speech set off
    voices: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    for row, times, probs in scored:
        events = detect(manifest, times, probs, thresholds)
        a = acc[row["engine"]]
        if row["kind"] == "keyword-free":
            hours = float(row["duration_s"]) / 3600
            a["free_hours"] += hours
            a["false_alarms"] += len(events)
            fired[row["engine"]].update(label for label, _ in events)
            voice = voices[row["engine"]][row["voice"]]  # the same sums, per voice of the engine
            voice["free_hours"] += hours
            voice["false_alarms"] += len(events)
        else:
            tp, fp, fn, _ = match(events, parse_events(row["events"]))
            a["tp"] += tp
            a["fp"] += fp
            a["fn"] += fn
    return {engine: _event_figures(a, fired[engine], voices[engine]) for engine, a in sorted(acc.items())}


def _event_figures(
    a: Mapping[str, float], fired: Counter[str], voices: Mapping[str, Mapping[str, float]]
) -> dict[str, Any]:
    tp, fp, fn = a.get("tp", 0.0), a.get("fp", 0.0), a.get("fn", 0.0)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    hours = a.get("free_hours", 0.0)
    return {
        "event_f1": f1,
        "event_precision": precision,
        "event_recall": recall,
        "keywords": int(tp + fn),
        "false_alarms_per_hour": a.get("false_alarms", 0.0) / hours if hours else None,
        "false_alarms_by_label": dict(fired.most_common()),
        "false_alarms_by_voice": _by_voice(voices),
        "keyword_free_minutes": round(hours * 60, 1),
    }


def _by_voice(voices: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """False alarms and their rate per voice, most first: an engine's rate can be one voice's doing."""
    figures = {
        voice: {
            "false_alarms": int(v["false_alarms"]),
            "per_hour": v["false_alarms"] / v["free_hours"],
            "keyword_free_minutes": round(v["free_hours"] * 60, 1),
        }
        for voice, v in voices.items()
        if v["free_hours"]
    }
    return dict(sorted(figures.items(), key=lambda item: (-item[1]["false_alarms"], item[0])))


# --- clips ------------------------------------------------------------------------------------------------------


def clip_rows(
    data_dir: Path, splits: Sequence[str], engines: Sequence[str] | None = None, manifest: Path | None = None
) -> list[dict[str, str]]:
    """The rows of ``splits`` in ``manifest`` (default: the data set's own), of every engine or of ``engines``."""
    with (manifest or Path(data_dir) / "manifest.csv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] in splits]
    return [r for r in rows if engines is None or (r.get("engine") or r["source"]) in engines]


def clip_report(
    loaded: LoadedModel,
    data_dir: Path,
    splits: Sequence[str],
    engines: Sequence[str] | None = None,
    manifest: Path | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy per engine (and per kind of clip) over the clips of ``splits`` (of ``manifest``, if given)."""
    rows = [r for r in clip_rows(data_dir, splits, engines, manifest) if (r.get("engine") or "") != "noise"]
    m = loaded.manifest
    x = extract([Path(data_dir) / r["path"] for r in rows], m.frontend, m.window_frames, progress=False)
    probs = np.concatenate(
        [loaded.runner.run_windows(x[i : i + 256].astype(np.float32)) for i in range(0, len(x), 256)]
    )
    predicted = [m.labels[int(i)] for i in probs.argmax(axis=1)]
    out: dict[str, Any] = {}
    groups: dict[str, list[bool]] = defaultdict(list)
    for r, p in zip(rows, predicted, strict=True):
        engine = r.get("engine") or r["source"]
        ok = p == r["label"]
        groups[engine].append(ok)
        groups[f"{engine}/{r.get('kind') or 'word'}"].append(ok)
    for name, oks in sorted(groups.items()):
        out[name] = {"accuracy": round(float(np.mean(oks)), 4), "clips": len(oks)}
    return out


def engine_report(
    loaded: LoadedModel,
    data_dir: Path,
    splits: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    engines: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Clip accuracy and stream figures per engine (all, or ``engines``), merged.

    ``engines`` with the train split measures a leave-one-engine-out run on the engine it left out."""
    clips = clip_report(loaded, data_dir, splits, engines)
    streams = stream_report(loaded, data_dir, splits, thresholds, engines)
    engines = sorted({k.split("/")[0] for k in clips} | set(streams))
    return {
        e: {
            "clip_accuracy": clips.get(e, {}).get("accuracy"),
            "clips": clips.get(e, {}).get("clips", 0),
            "by_kind": {k.split("/")[1]: v for k, v in clips.items() if k.startswith(f"{e}/")},
            **streams.get(e, {}),
        }
        for e in engines
    }


def per_engine_table(version_dir: Path, data_manifest: Path, split: str) -> str | None:
    """``hark eval``'s per-engine accuracy on the clips it measured, for a data manifest that records engines
    (else None)."""
    with data_manifest.open(newline="", encoding="utf-8") as f:
        if "engine" not in (csv.DictReader(f).fieldnames or ()):
            return None
    report = clip_report(load_version(version_dir), data_manifest.parent, [split], manifest=data_manifest)
    lines = [f"{'engine/kind':<22}{'clips':>7}{'top-1':>8}"]
    lines += [f"{name:<22}{r['clips']:>7}{r['accuracy']:>8.3f}" for name, r in report.items()]
    return "\n".join(lines)


def format_engine_table(report: Mapping[str, Any]) -> str:
    def cell(v: Any, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = [f"{'engine':<12}{'clips':>7}{'top-1':>8}{'F1':>8}{'recall':>8}{'prec':>8}{'FA/h':>8}{'free min':>10}"]
    for e, r in report.items():
        lines.append(
            f"{e:<12}{r['clips']:>7}{cell(r['clip_accuracy']):>8}{cell(r.get('event_f1')):>8}"
            f"{cell(r.get('event_recall')):>8}{cell(r.get('event_precision')):>8}"
            f"{cell(r.get('false_alarms_per_hour'), 1):>8}{cell(r.get('keyword_free_minutes'), 1):>10}"
        )
    for e, r in report.items():
        if fired := r.get("false_alarms_by_label"):
            lines.append(
                f"false alarms on {e}'s keyword-free speech: " + ", ".join(f"{k} {n}" for k, n in fired.items())
            )
            by_voice = [
                f"{v} {f['false_alarms']} ({f['per_hour']:.1f}/h)"
                for v, f in r.get("false_alarms_by_voice", {}).items()
            ]
            if by_voice:
                lines.append("  by voice: " + ", ".join(by_voice))
    return "\n".join(lines)


# --- thresholds -------------------------------------------------------------------------------------------------


ALLOCATIONS: tuple[str, ...] = ("equal", "recall")
"""How a false-alarm budget is split over the keywords: an equal share each, or where it keeps most keywords."""


def keyword_free_streams(data_dir: Path, splits: Sequence[str]) -> list[dict[str, str]]:
    """The rows of ``data_dir``'s keyword-free streams in ``splits``: the speech thresholds are tuned on."""
    free = [r for r in streams_of(data_dir) if r["split"] in splits and r["kind"] == "keyword-free"]
    if not free:
        raise ValueError(f"{data_dir} has no keyword-free streams in {list(splits)}")
    return free


def tune_thresholds(
    loaded: LoadedModel,
    data_dir: Path,
    budget_per_hour: float,
    splits: Sequence[str] = ("val",),
    floor: float = THRESHOLD_GRID[0],
    allocate: str = "equal",
) -> dict[str, float]:
    """Per keyword, a threshold of :data:`THRESHOLD_GRID` from ``floor`` up, so that the false alarms on the
    keyword-free streams of ``splits`` stay within ``budget_per_hour``: the lowest within an equal share each
    (``allocate="equal"``), or those that keep the most keyword events of the keyword streams of ``splits``
    within the whole budget (``"recall"``)."""
    return threshold_tuner(loaded, data_dir, splits, allocate)(budget_per_hour, floor)


def threshold_tuner(
    loaded: LoadedModel, data_dir: Path, splits: Sequence[str], allocate: str = "equal"
) -> Callable[[float, float], dict[str, float]]:
    """``(budget_per_hour, floor) -> thresholds`` as :func:`tune_thresholds` chooses them, with the tuning speech
    scored once and each threshold's counts kept, so many budgets (an operating curve) cost about one."""
    if allocate not in ALLOCATIONS:
        raise ValueError(f"allocate must be one of {', '.join(ALLOCATIONS)}, got {allocate!r}")
    m = loaded.manifest
    free, hours = tuning_speech(loaded, data_dir, splits)
    count = cache(partial(alarms, m, free))
    if allocate == "equal":
        return partial(thresholds_for_budget, m, count, hours)
    kept = cache(partial(events_kept, m, tuning_keywords(loaded, data_dir, splits)))
    return partial(thresholds_for_recall, m, count, kept, hours)


def tuning_speech(loaded: LoadedModel, data_dir: Path, splits: Sequence[str]) -> tuple[list[ScoredStream], float]:
    """The keyword-free streams of ``splits`` that thresholds are tuned on, scored, and how many hours they hold."""
    free = score_rows(loaded, data_dir, keyword_free_streams(data_dir, splits))
    return free, sum(float(r["duration_s"]) for r, _, _ in free) / 3600


def tuning_keywords(loaded: LoadedModel, data_dir: Path, splits: Sequence[str]) -> list[ScoredStream]:
    """The keyword streams of ``splits``, scored: what a recall allocation keeps."""
    rows = [r for r in streams_of(data_dir) if r["split"] in splits and r["kind"] == "keywords"]
    if not rows:
        raise ValueError(f"{data_dir} has no keyword streams in {list(splits)} to allocate the budget by")
    return score_rows(loaded, data_dir, rows)


def events_kept(manifest: Manifest, scored: Sequence[ScoredStream], label: str, threshold: float) -> int:
    """``label``'s events that match one of its keywords on the scored keyword streams, less those that match
    none, at ``threshold`` (others as served): what a threshold buys, net of the wrong events it raises."""
    kept = 0
    for row, times, probs in scored:
        events = [e for e in detect(manifest, times, probs, {label: threshold}) if e[0] == label]
        tp, fp, _, _ = match(events, [t for t in parse_events(row["events"]) if t[0] == label])
        kept += tp - fp
    return kept


def thresholds_for_recall(
    manifest: Manifest,
    count: Callable[[str, float], int],
    kept: Callable[[str, float], int],
    hours: float,
    budget_per_hour: float,
    floor: float,
) -> dict[str, float]:
    """Per keyword, the thresholds from ``floor`` up that keep the most events (``kept``) while the keywords'
    false alarms (``count``) together stay within ``budget_per_hour`` over ``hours``.

    An equal share spends as much on a keyword the speech never sets off as on one it often does; here the
    budget goes where it buys keywords. Exact: a knapsack over whole false alarms (a handful), ties to fewer
    alarms and then to lower thresholds (as an equal share chooses the lowest that holds). When even every
    keyword's highest threshold overspends, that is what it gets, as with an equal share.
    """
    grid = [t for t in THRESHOLD_GRID if t >= floor - 1e-9] or [THRESHOLD_GRID[-1]]
    labels = keywords_of(manifest)
    options = {label: [(count(label, t), kept(label, t), t) for t in grid] for label in labels}
    least = sum(min(cost for cost, _, _ in options[label]) for label in labels)
    allowed = max(math.floor(budget_per_hour * hours + 1e-9), least)
    best: dict[int, tuple[int, tuple[float, ...]]] = {0: (0, ())}  # alarms spent -> (events kept, thresholds)
    for label in labels:
        reached: dict[int, tuple[int, tuple[float, ...]]] = {}
        for spent, (value, chosen) in sorted(best.items()):
            for cost, gain, t in options[label]:  # lowest threshold first: it wins ties
                total = spent + cost
                if total <= allowed and (total not in reached or value + gain > reached[total][0]):
                    reached[total] = (value + gain, (*chosen, t))
        best = reached
    _, (_, chosen) = max(best.items(), key=lambda item: (item[1][0], -item[0]))
    return dict(zip(labels, chosen, strict=True))


def thresholds_for_budget(
    manifest: Manifest, count: Callable[[str, float], int], hours: float, budget_per_hour: float, floor: float
) -> dict[str, float]:
    """Per keyword, the lowest threshold from ``floor`` up at which ``count(label, threshold)`` false alarms in
    ``hours`` stay within an equal share of ``budget_per_hour`` (the grid's last when none does)."""
    grid = [t for t in THRESHOLD_GRID if t >= floor - 1e-9] or [THRESHOLD_GRID[-1]]
    share = budget_per_hour / len(keywords_of(manifest))
    return {
        label: next((t for t in grid if count(label, t) / hours <= share), grid[-1]) for label in keywords_of(manifest)
    }


def keywords_of(manifest: Manifest) -> list[str]:
    return [label for label in manifest.labels if label not in set(manifest.background_labels)]


def alarms(manifest: Manifest, scored: Sequence[ScoredStream], label: str, threshold: float) -> int:
    """How many times ``label`` fires on the scored (keyword-free) streams at ``threshold``, others as served."""
    return sum(sum(1 for lab, _ in detect(manifest, t, p, {label: threshold}) if lab == label) for _, t, p in scored)


def write_thresholds(version_dir: Path, thresholds: Mapping[str, float], note: Mapping[str, Any]) -> None:
    """Store ``thresholds`` in the version's manifest (and how they were chosen under ``metrics``), atomically."""
    data = read_manifest(version_dir).model_dump(mode="json")
    data["thresholds"] = dict(thresholds)
    data["metrics"] = {**data.get("metrics", {}), "thresholds": dict(note)}
    _rewrite_manifest(version_dir, data)


INTENDED_USE = (
    "Spotting ten English command words (yes, no, up, down, left, right, on, off, stop, go) in a stream of 16 kHz "
    "audio from one talker near a microphone; other words and silence are _unknown_ and _silence_."
)
LIMITS = (
    "Trained only on synthetic speech (the engines listed); no recorded human speech was used in training or "
    "validation, so accuracy on people is not measured here. English only. Other languages, children's voices, "
    "shouting, far-field rooms and overlapping talkers are outside what it was trained on."
)


def model_card(data_manifest: Path, selection: TrainingSelection = EVERY_CLIP) -> dict[str, Any]:
    """What the version was trained on, per engine: voices and licences, from the training rows of the manifest
    that its run's ``selection`` kept."""
    with data_manifest.open(newline="", encoding="utf-8") as f:
        every_row = list(csv.DictReader(f))
    rows: list[dict[str, str]] = []
    trimmed: set[str] = set()  # engines some of whose training clips the run left out
    for r in every_row:
        engine = r.get("engine") or r["source"]
        if selection.keeps(r["split"], engine, r.get("licence") or "", r.get("kind") or ""):
            rows.append(r)
        else:
            trimmed.add(engine)
    engines: dict[str, dict[str, Any]] = {}
    for r in rows:
        engine = r.get("engine") or r["source"]
        entry = engines.setdefault(engine, {"voices": set(), "licences": set(), "splits": set(), "clips": 0})
        entry["voices"].add(r["voice"])
        entry["licences"].add(r.get("licence") or "")
        entry["splits"].add(r["split"])
        entry["clips"] += r["split"] == "train"
    training = {e: v for e, v in engines.items() if v["clips"]}
    licences = sorted({lic for v in training.values() for lic in v["licences"] if lic})
    return {
        "training_engines": {
            e: {"voices": len(v["voices"]), "clips": v["clips"], "licences": sorted(v["licences"] - {""})}
            for e, v in sorted(training.items())
        },
        "held_out_engines": {
            e: sorted(v["splits"]) for e, v in sorted(engines.items()) if not v["clips"] and e != "noise"
        },
        "left_out_of_training": sorted(trimmed - set(training)),
        **({"left_out_kinds": sorted(selection.exclude_kinds)} if selection.exclude_kinds else {}),
        "training_licences": licences,
        "non_commercial_training_material": any("non-commercial" in lic for lic in licences),
        "intended_use": INTENDED_USE,
        "limits": LIMITS,
    }


def write_model_card(version_dir: Path, card: Mapping[str, Any]) -> None:
    """Store the model card in the version's manifest under ``training.model_card``, atomically."""
    data = read_manifest(version_dir).model_dump(mode="json")
    data["training"] = {**data.get("training", {}), "model_card": dict(card)}
    _rewrite_manifest(version_dir, data)


def _rewrite_manifest(version_dir: Path, data: dict[str, Any]) -> None:
    Manifest.model_validate(data)
    path = version_dir / MANIFEST_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_FILE}-", dir=version_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- command line -----------------------------------------------------------------------------------------------


def _cmd_eval(args: argparse.Namespace) -> int:
    try:
        loaded = load_version(args.version)
        thresholds = None
        if args.use_thresholds:
            thresholds = json.loads((args.version / MANIFEST_FILE).read_text()).get("thresholds") or None
        report = engine_report(loaded, args.data, args.splits.split(","), thresholds, args.engines or None)
    except (OSError, ValueError, RuntimeError, VerificationError) as e:
        print(f"cannot evaluate per engine: {e}", file=sys.stderr)
        return 1
    print(format_engine_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"version": str(args.version), "splits": args.splits, "engines": report}, indent=2) + "\n"
        )
        print(f"wrote {args.out}")
    return 0


def write_smoothing(version_dir: Path, smoothing_windows: int) -> None:
    """Store the version's own ``smoothing_windows`` (hops averaged before a threshold) in its manifest."""
    data = read_manifest(version_dir).model_dump(mode="json")
    data["smoothing_windows"] = smoothing_windows
    _rewrite_manifest(version_dir, data)


def _cmd_thresholds(args: argparse.Namespace) -> int:
    try:
        if args.smoothing_windows is not None:  # first: the thresholds are tuned under it
            write_smoothing(args.version, args.smoothing_windows)
        loaded = load_version(args.version)
        splits = args.splits.split(",")
        chosen = tune_thresholds(loaded, args.data, args.budget, splits, args.floor, args.allocate)
        free = keyword_free_streams(args.data, splits)
        note = {
            "budget_per_hour": args.budget,
            "allocate": args.allocate,
            "tuned_on": args.splits,
            "data": str(args.data),  # what the model card cannot say: the speech the detection settings fit
            "engines": sorted({r["engine"] for r in free}),
            "keyword_free_minutes": round(sum(float(r["duration_s"]) for r in free) / 60, 1),
            "floor": args.floor,
            "smoothing_windows": loaded.manifest.smoothing_windows,
        }
        write_thresholds(args.version, chosen, note)
    except (OSError, ValueError, RuntimeError, VerificationError) as e:
        print(f"cannot tune thresholds: {e}", file=sys.stderr)
        return 1
    print(json.dumps(chosen))
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    try:
        config = json.loads((args.version / MANIFEST_FILE).read_text()).get("training", {}).get("config", {})
        card = model_card(
            args.data if args.data.suffix == ".csv" else args.data / "manifest.csv",
            TrainingSelection(
                tuple(config.get("exclude_engines") or ()),
                bool(config.get("commercial_only")),
                tuple(config.get("exclude_kinds") or ()),
            ),
        )
        write_model_card(args.version, card)
    except (OSError, ValueError, RuntimeError, VerificationError) as e:
        print(f"cannot write the model card: {e}", file=sys.stderr)
        return 1
    print(json.dumps(card, indent=2))
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark engines eval``, ``thresholds``, ``card`` and ``curve``."""
    engines = subparsers.add_parser("engines", help="per-engine evaluation and per-class thresholds")
    commands = engines.add_subparsers(dest="engines_command", required=True, metavar="{eval,thresholds,card,curve}")
    ev = commands.add_parser(
        "eval",
        help="clip accuracy, event F1 and false alarms per hour per engine",
        description="Measure a version per speech engine on a data set built with engines.",
    )
    ev.add_argument("version", type=Path, help="a version folder, e.g. model_store/keywords/2")
    ev.add_argument("--data", type=Path, default=Path("data/keywords"), help="data folder (default: %(default)s)")
    ev.add_argument("--splits", default="val,test", help="comma-separated splits (default: %(default)s)")
    ev.add_argument(
        "--engines",
        type=engine_list,
        metavar="LIST",
        help="comma-separated engines only (with --splits train: a leave-one-engine-out run's own)",
    )
    ev.add_argument("--use-thresholds", action="store_true", help="apply the manifest's per-class thresholds")
    ev.add_argument("--out", type=Path, help="also write the report as JSON here")
    ev.set_defaults(func=_cmd_eval)
    th = commands.add_parser(
        "thresholds",
        help="per-class thresholds for a false-alarm budget, into the manifest",
        description="Choose each keyword's threshold on validation keyword-free streams.",
    )
    th.add_argument("version", type=Path, help="a version folder")
    th.add_argument("--data", type=Path, default=Path("data/keywords"), help="data folder (default: %(default)s)")
    th.add_argument(
        "--budget", type=float, default=2.0, help="false alarms per hour, all classes (default: %(default)s)"
    )
    th.add_argument("--splits", default="val", help="splits to tune on (default: %(default)s)")
    th.add_argument(
        "--floor",
        type=float,
        default=DEFAULT_FLOOR,
        help="lowest threshold a keyword may get (default: %(default)s)",
    )
    th.add_argument(
        "--allocate",
        choices=ALLOCATIONS,
        default="equal",
        help="split the budget in equal shares per keyword, or where it keeps most keyword events of the "
        "keyword streams of --splits (default: %(default)s)",
    )
    th.add_argument(
        "--smoothing-windows",
        type=int,
        choices=range(1, 51),
        metavar="N",
        help="also set the version's smoothing (hops averaged, 1-50) and tune under it (default: keep the version's)",
    )
    th.set_defaults(func=_cmd_thresholds)
    card = commands.add_parser(
        "card",
        help="write the model card (training engines, voices, licences, intended use, limits) into the manifest",
        description="Summarise the data set's training engines, voices and licences into training.model_card.",
    )
    card.add_argument("version", type=Path, help="a version folder")
    card.add_argument(
        "--data", type=Path, default=Path("data/keywords"), help="data folder or manifest (default: %(default)s)"
    )
    card.set_defaults(func=_cmd_card)
    from hark_training.curve import add_command as add_curve  # it builds on this module

    add_curve(commands)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hark_training.engine_eval")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["engines", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
