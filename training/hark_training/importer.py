"""``hark data import``: a user's own recordings as a data set that ``hark train`` takes.

Two ways to say what the recordings are:

* a folder per class, ``SRC/<label>/*.wav|flac|ogg|mp3`` (sub-folders of a class folder are searched too);
* ``--csv FILE`` with columns ``path,label[,group]`` (paths relative to the CSV's folder): ``label`` may hold
  several classes separated by ``;`` (a multi-label clip) or none (a clip in which no class sounds);
  ``group`` is what must never be split between training and test (a speaker, a recording session, a
  device, a drum kit).

Every file is read, mixed down to mono, resampled to 16 kHz and cut or padded to the clip length
(``--clip-seconds``, by default the median duration of the input, between 0.5 and 4 s): a shorter file is
centred in silence, a longer one is cut into consecutive clips (the last padded), all in the file's group.
The clips go to ``OUT/<class>/`` as 16-bit WAV named by the source's content hash, so a second import of
the same folder reuses them (the cache), and ``OUT/manifest.csv`` is the same manifest as ``hark data
build``'s. Splits (train 70 %, val 15 %, test 15 %) are by group (each file is its own group when none is
given), so no group is in two splits, and every class has clips in each split.

Nothing is dropped silently. Each file that cannot be used gets one line saying why and what was done,
and the summary counts every file found: unreadable or empty files, unknown extensions, files outside a
class folder, the same content under two classes (both copies skipped: a clip cannot teach two answers)
or twice in one class (the copy skipped), classes with too few groups to fill three splits. Sample rates,
channel counts and durations are converted and counted in the summary.

``--background noise`` (the default for single-label data) adds a generated ``_silence_`` class (white,
pink, brown, hum, band and babble noise at random levels) so a served model has an answer for "nothing
of mine"; for multi-label data the background clips have no label. ``--background none`` adds nothing.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from hark.core.audio import resample
from hark_training.data import MANIFEST_COLUMNS, MANIFEST_NAME, SAMPLE_RATE, SPLITS, to_int16
from hark_training.features import LABEL_SEPARATOR, clip_labels
from hark_training.noise import NOISE_KINDS, make_noise

FloatArray = npt.NDArray[np.float32]

EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")
SOURCE = "import"
BACKGROUND = "_silence_"
SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
CLIP_SECONDS_RANGE = (0.5, 4.0)
IMPORT_COLUMNS: tuple[str, ...] = (*MANIFEST_COLUMNS, "original", "offset_s", "note")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")


class ImportFailed(Exception):
    """The import as a whole cannot go on (no source, no usable class): one line for the user."""


@dataclass(frozen=True)
class Source:
    """One input file and what the user says it is."""

    path: Path
    shown: str  # as the user named it (relative to SRC or the CSV)
    labels: tuple[str, ...]
    group: str


@dataclass
class Report:
    """Every file's fate: problems (one line each, the file skipped), notes (converted) and counts."""

    found: int = 0
    problems: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    converted: Counter[str] = field(default_factory=Counter)
    imported: int = 0
    clips: int = 0

    def skip(self, shown: str, reason: str, message: str) -> None:
        self.problems.append(f"{shown}: {message}")
        self.skipped[reason] += 1

    def summary(
        self, classes: Sequence[str], counts: Counter[tuple[str, str]], background: int, background_label: str
    ) -> str:
        lines = [
            f"{self.found} files found: {self.imported} imported as {self.clips} clips, "
            f"{sum(self.skipped.values())} skipped"
        ]
        lines += [f"  skipped, {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        lines += [f"  converted, {what}: {n}" for what, n in sorted(self.converted.items())]
        if background:
            lines.append(f"  generated background clips ({background_label or 'no class'}): {background}")
        width = max([len(c) for c in classes] + [5]) + 2
        lines.append(f"{'class':<{width}}" + "".join(f"{s:>8}" for s in SPLITS))
        for c in classes:
            lines.append(f"{c:<{width}}" + "".join(f"{counts[c, s]:>8}" for s in SPLITS))
        return "\n".join(lines)


@dataclass(frozen=True)
class Clip:
    """One clip to write: a piece of a source file."""

    source: Source
    audio: FloatArray
    offset_s: float
    digest: str
    piece: int
    note: str


# ------------------------------------------------------------------------------------------------ sources


def folder_sources(src: Path, report: Report) -> list[Source]:
    """``SRC/<label>/**/*``: every file below SRC is counted; those outside a class folder are problems."""
    sources = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src)
        report.found += 1
        if len(rel.parts) < 2:
            report.skip(str(rel), "not in a class folder", f"not in a class folder: put it in {src}/<class>/")
            continue
        sources.append(Source(path, str(rel), (rel.parts[0],), str(rel)))
    return sources


def csv_sources(csv_path: Path, report: Report) -> list[Source]:
    """The rows of a ``path,label[,group]`` CSV; paths are relative to the CSV's folder."""
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise ImportFailed(f"cannot read {csv_path}: {e}") from e
    if not rows or [c.strip() for c in rows[0][:2]] != ["path", "label"]:
        raise ImportFailed(f"{csv_path}: the first line must be the header path,label[,group]")
    has_group = len(rows[0]) > 2 and rows[0][2].strip() == "group"
    sources = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        report.found += 1
        shown = f"{csv_path.name}:{line} {row[0] if row else ''}".rstrip()
        if len(row) < 2:
            report.skip(shown, "malformed CSV row", "needs at least path and label")
            continue
        group = row[2].strip() if has_group and len(row) > 2 and row[2].strip() else row[0]
        sources.append(Source(csv_path.parent / row[0], shown, clip_labels(row[1]), group))
    return sources


# ------------------------------------------------------------------------------------------------- audio


def read_source(source: Source, report: Report) -> tuple[FloatArray, int, int] | None:
    """The file's samples as float, its rate and its channel count; None (and one problem line) when unusable."""
    if not source.path.is_file():
        report.skip(source.shown, "missing", "no such file")
        return None
    if source.path.suffix.lower() not in EXTENSIONS:
        ext = source.path.suffix or "(none)"
        report.skip(source.shown, "unknown extension", f"unknown extension {ext}; use {' '.join(EXTENSIONS)}")
        return None
    if source.path.stat().st_size == 0:
        report.skip(source.shown, "empty", "empty file (0 bytes)")
        return None
    try:
        data, rate = sf.read(str(source.path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        report.skip(source.shown, "unreadable", f"cannot read it as audio ({message})")
        return None
    if data.shape[0] == 0:
        report.skip(source.shown, "empty", "holds no samples")
        return None
    if not np.all(np.isfinite(data)):
        report.skip(source.shown, "unreadable", "holds NaN or infinite samples")
        return None
    return data, int(rate), int(data.shape[1])


def to_clips(samples: FloatArray, clip_samples: int) -> list[tuple[int, FloatArray]]:
    """Cut or pad to ``clip_samples``: a short clip centred in silence; one up to 1.5 clips long trimmed to
    its centre; a longer one cut into consecutive pieces, the last padded (a piece under a tenth of a clip
    is the file's tail and is not worth a clip)."""
    if samples.size <= clip_samples:
        left = (clip_samples - samples.size) // 2
        return [(0, np.pad(samples, (left, clip_samples - samples.size - left)))]
    if samples.size <= 1.5 * clip_samples:
        start = (samples.size - clip_samples) // 2
        return [(start, samples[start : start + clip_samples])]
    pieces: list[tuple[int, FloatArray]] = []
    for start in range(0, samples.size, clip_samples):
        piece = samples[start : start + clip_samples]
        if piece.size < clip_samples // 10 and pieces:
            break
        pieces.append((start, np.pad(piece, (0, clip_samples - piece.size))))
    return pieces


def median_seconds(sources: Sequence[Source]) -> float:
    """The median duration of the files that libsndfile can describe (their headers only)."""
    durations = []
    for s in sources:
        try:
            durations.append(sf.info(str(s.path)).duration)
        except (sf.LibsndfileError, RuntimeError, OSError):
            continue
    low, high = CLIP_SECONDS_RANGE
    return float(np.clip(round(float(np.median(durations)), 1), low, high)) if durations else 1.0


# ------------------------------------------------------------------------------------------------- splits


def assign_splits(groups_of: dict[str, set[str]], seed: int) -> dict[str, str]:
    """Every group to one split so that each class has groups in train, val and test, in about the 70/15/15
    proportions. Classes with the fewest groups choose first; a group shared by classes is placed once."""
    rng = np.random.default_rng([seed, 0x1A9])
    split_of: dict[str, str] = {}
    for label in sorted(groups_of, key=lambda c: (len(groups_of[c]), c)):
        groups = sorted(groups_of[label])
        targets = [f * len(groups) for f in SPLIT_FRACTIONS]
        have = Counter(split_of[g] for g in groups if g in split_of)
        for g in (groups[i] for i in rng.permutation(len(groups))):
            if g in split_of:
                continue
            missing = [s for s in ("val", "test", "train") if have[s] == 0]
            split = missing[0] if missing else max(SPLITS, key=lambda s: targets[SPLITS.index(s)] - have[s])
            split_of[g] = split
            have[split] += 1
    return split_of


# -------------------------------------------------------------------------------------------------- import


def import_data(
    out: Path,
    *,
    src: Path | None = None,
    csv_path: Path | None = None,
    clip_seconds: float | None = None,
    background: str = "auto",
    min_groups: int = 3,
    seed: int = 0,
    log: bool = True,
) -> tuple[Path, Report, str]:
    """Import ``src`` (a folder per class) or ``csv_path`` into ``out``; return the manifest, the report and
    its summary. Raises :class:`ImportFailed` when no data set can be made."""
    report = Report()
    if (src is None) == (csv_path is None):
        raise ImportFailed("give either SRC (a folder per class) or --csv FILE")
    if src is not None and not src.is_dir():
        raise ImportFailed(f"{src} is not a folder; give a folder with one sub-folder per class, or --csv FILE")
    if csv_path is not None and not csv_path.is_file():
        raise ImportFailed(f"{csv_path} does not exist")
    sources = folder_sources(src, report) if src is not None else csv_sources(csv_path, report)  # type: ignore[arg-type]
    kept: list[Source] = []
    for s in sources:
        if bad := [label for label in s.labels if not LABEL_PATTERN.match(label)]:
            report.skip(s.shown, "bad class name", f"class name {bad[0]!r}: use letters, digits and _ . + -")
        else:
            kept.append(s)
    sources = kept
    clip_s = clip_seconds or median_seconds(sources)
    clip_samples = round(clip_s * SAMPLE_RATE)

    # Read, convert and hash every file; the hash is of the decoded audio, so a copy in another format counts.
    clips: list[Clip] = []
    by_digest: dict[str, list[Source]] = {}
    for s in sources:
        read = read_source(s, report)
        if read is None:
            continue
        data, rate, channels = read
        mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
        notes = []
        if channels > 1:
            report.converted[f"{channels} channels mixed down to mono"] += 1
            notes.append(f"{channels} channels mixed to mono")
        if rate != SAMPLE_RATE:
            report.converted[f"resampled from {rate} Hz"] += 1
            notes.append(f"resampled from {rate} Hz")
        samples = resample(np.ascontiguousarray(mono), rate, SAMPLE_RATE)
        if samples.size < clip_samples:
            report.converted[f"shorter than {clip_s:g} s: centred in silence"] += 1
            notes.append(f"{samples.size / SAMPLE_RATE:.2f} s padded")
        elif samples.size <= 1.5 * clip_samples:
            report.converted[f"up to 1.5 x {clip_s:g} s: trimmed to the centre"] += 1
            notes.append(f"{samples.size / SAMPLE_RATE:.2f} s trimmed")
        else:
            report.converted[f"longer than 1.5 x {clip_s:g} s: cut into {clip_s:g} s clips"] += 1
            notes.append(f"{samples.size / SAMPLE_RATE:.2f} s cut")
        digest = hashlib.sha256(to_int16(samples.astype(np.float64)).tobytes()).hexdigest()[:16]
        by_digest.setdefault(digest, []).append(s)
        for piece, (start, audio) in enumerate(to_clips(samples, clip_samples)):
            clips.append(Clip(s, audio, start / SAMPLE_RATE, digest, piece, "; ".join(notes)))

    # Duplicates: the same audio under different classes teaches two answers (all copies out); the same
    # audio twice in a class would only be counted twice, or land in two splits (the later copies out).
    dropped: set[int] = set()
    for copies in by_digest.values():
        if len(copies) < 2:
            continue
        if len({copy.labels for copy in copies}) > 1:
            names = ", ".join(f"{copy.shown} ({LABEL_SEPARATOR.join(copy.labels) or 'no class'})" for copy in copies)
            for copy in copies:
                report.skip(copy.shown, "same content under two classes", f"same audio as another class: {names}")
                dropped.add(id(copy))
        else:
            for copy in copies[1:]:
                message = f"same audio as {copies[0].shown}; the copy is skipped"
                report.skip(copy.shown, "duplicate in its class", message)
                dropped.add(id(copy))
    clips = [c for c in clips if id(c.source) not in dropped]

    # Classes need groups in all three splits; a class with fewer groups is skipped whole, with its files.
    groups_of: dict[str, set[str]] = {}
    for c in clips:
        for label in c.source.labels:
            groups_of.setdefault(label, set()).add(c.source.group)
    small = {label for label, g in groups_of.items() if len(g) < min_groups}
    if small:
        for s in dict.fromkeys(c.source for c in clips if set(c.source.labels) & small):
            label = next(label for label in s.labels if label in small)
            n = len(groups_of[label])
            what = "files" if src is not None else "groups"
            report.skip(
                s.shown,
                "class too small to split",
                f"class {label} has {n} {what}; it needs {min_groups} (one each for train, val and test)",
            )
        clips = [c for c in clips if not set(c.source.labels) & small]
        for label in small:
            del groups_of[label]
    classes = sorted(groups_of)
    multilabel = any(len(c.source.labels) != 1 for c in clips)
    if len(classes) + (0 if multilabel else int(background != "none")) < 2:
        raise ImportFailed(
            f"{len(classes)} usable class(es) ({', '.join(classes) or 'none'}); a model needs at least two"
            + ("\n" + "\n".join(report.problems) if report.problems else "")
        )
    split_of = assign_splits(groups_of, seed)
    # Clips with no class (multi-label background) split by their own groups, unless a group is placed already.
    empty_groups = {c.source.group for c in clips if not c.source.labels} - set(split_of)
    split_of |= assign_splits({"": empty_groups}, seed) if len(empty_groups) >= 3 else {}
    rows: list[dict[str, str]] = []
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter[tuple[str, str]] = Counter()
    imported: set[int] = set()
    for c in clips:
        split = split_of.get(c.source.group, "train")
        folder = c.source.labels[0] if len(c.source.labels) == 1 else ("_mixed_" if c.source.labels else "_none_")
        name = f"{folder}/{Path(c.source.path).stem[:40]}-{c.digest}-{clip_samples}-{c.piece}.wav"
        target = out / name
        if not target.is_file():  # the cache: the name is the content hash, the clip length and the piece
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, to_int16(c.audio.astype(np.float64)), SAMPLE_RATE, subtype="PCM_16")
        label = LABEL_SEPARATOR.join(c.source.labels)
        rows.append(_row(name, label, split, c.source.group, c.source.shown, c.offset_s, c.note))
        for lab in c.source.labels or ("(none)",):
            counts[lab, split] += 1
        imported.add(id(c.source))
    report.imported = len(imported)
    report.clips = len(rows)

    n_background = 0
    if background == "noise" or (background == "auto" and not multilabel):
        per_split = Counter(r["split"] for r in rows)
        shares = [per_split[s] / max(1, len(rows)) for s in SPLITS]
        per_class = max(3, round(len(rows) / max(1, len(classes))))
        rng = np.random.default_rng([seed, 0xBA5E])
        (out / BACKGROUND).mkdir(exist_ok=True)
        for i in range(per_class):
            split = SPLITS[i % 3] if i < 3 else str(rng.choice(SPLITS, p=shares))
            kind = str(rng.choice(NOISE_KINDS))
            noise = make_noise(kind, clip_samples, rng, SAMPLE_RATE)
            gain = 10 ** (rng.uniform(-60.0, -10.0) / 20) / max(1e-9, float(np.max(np.abs(noise))))
            name = f"{BACKGROUND}/{i:05d}_{kind}.wav"
            sf.write(out / name, to_int16(noise * gain), SAMPLE_RATE, subtype="PCM_16")
            label = "" if multilabel else BACKGROUND
            rows.append(_row(name, label, split, f"noise-{split}", "generated", 0.0, f"{kind} noise"))
            counts[label or "(none)", split] += 1
            n_background += 1
        if not multilabel:
            classes.append(BACKGROUND)
    manifest = out / MANIFEST_NAME
    _write(rows, manifest)
    shown = list(classes) + (["(none)"] if any(not r["label"] for r in rows) else [])
    return manifest, report, report.summary(shown, counts, n_background, "" if multilabel else BACKGROUND)


def _row(path: str, label: str, split: str, group: str, original: str, offset_s: float, note: str) -> dict[str, str]:
    return {
        "path": path,
        "label": label,
        "split": split,
        "voice": group,
        "source": SOURCE,
        "original": original,
        "offset_s": f"{offset_s:.3f}",
        "note": note,
    }


def _write(rows: list[dict[str, str]], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(IMPORT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- command


def _cmd_import(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        manifest, report, summary = import_data(
            args.out,
            src=args.src,
            csv_path=args.csv,
            clip_seconds=args.clip_seconds,
            background=args.background,
            seed=args.seed,
        )
    except ImportFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report.problems:
        print(f"skipped {line}", file=sys.stderr)
    print(summary)
    print(f"wrote {manifest} in {time.perf_counter() - started:.1f} s; next: hark train --data {manifest}")
    if args.strict and report.problems:
        print(f"error: {len(report.problems)} file(s) skipped (--strict)", file=sys.stderr)
        return 1
    return 0


def _clip_seconds(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 10 seconds, got {value:g}")
    return value


def add_import_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark data import`` under ``hark data``."""
    parser = commands.add_parser(
        "import",
        help="import your own recordings (a folder per class, or a CSV) as a data set",
        description="Import recordings as a data set for `hark train`: SRC/<class>/*.wav|flac|ogg|mp3, or "
        "--csv FILE with path,label[,group] (label: one class, several separated by ';', or none). Files are "
        "mixed to mono, resampled to 16 kHz, cut or padded to the clip length and split 70/15/15 by group. "
        "Each unusable file gets one line; the summary counts every file.",
    )
    parser.add_argument("src", type=Path, nargs="?", metavar="SRC", help="folder with one sub-folder per class")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="CSV of path,label[,group] instead of SRC")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (manifest.csv in it)")
    parser.add_argument(
        "--clip-seconds",
        type=_clip_seconds,
        metavar="S",
        help="clip length in seconds (default: the median duration of the input, 0.5-4 s)",
    )
    parser.add_argument(
        "--background",
        choices=("auto", "noise", "none"),
        default="auto",
        help="add generated noise clips: as a _silence_ class for single-label data, unlabelled for "
        "multi-label data (auto: for single-label data only; default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the splits and the noise")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file was skipped")
    parser.set_defaults(func=_cmd_import)
