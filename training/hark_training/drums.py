"""``hark data drums``: a multi-label sound-event data set from real recordings of drum kits.

Debian's ``hydrogen-drumkits`` package holds 14 drum kits recorded or sampled by their authors (about 670
one-shot samples of kicks, snares, hi-hats, cymbals, toms, claps and hand percussion), each described by a
``drumkit.xml`` that names its instruments. Two more packages train beside them as a kit each: the one-shots of
``lmms-common`` (acoustic and electronic drums) and ``sonic-pi-samples`` (CC0 recordings: drums, tabla, bells as
distractors), classified by file name (:data:`EXTRA_SOURCES`). From them this module builds what sound-event
detection needs:

* **Scenes**: a few seconds of one kit playing: hits at random times (overlapping freely) at random
  levels over generated room noise, with the other instruments of the kit (cowbell, stick, tambourine,
  congas, djembes...) as unlabelled distractors. Every labelled hit is annotated ``label, onset, offset``,
  the offset being where the hit has decayed 30 dB below its peak.
* **Clips**: windows cut from the scenes (half centred near a hit, half anywhere), each labelled with the
  classes *sounding at its centre* (within half a hop, a strong label such as ``kick;hihat``), so a model
  trained on them is active exactly while a sound lasts and the server's onsets and offsets fall where the
  sound begins and ends (a model that pools its window globally cannot tell where a hit is: the percussion
  recipe reads the centre, ``pool = "centre"``).

Splits are by **kit**: the test kits and the validation kit are never heard in training, so the figures
measure generalisation to a drum kit nobody trained on. ``scenes/<split>/events.csv`` holds the annotations
of the val and test scenes for event-level evaluation (``hark_training.sed``).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from hark.core.audio import resample
from hark_training.data import MANIFEST_NAME, SAMPLE_RATE, SPLITS, to_int16, write_manifest
from hark_training.noise import make_noise

FloatArray = npt.NDArray[np.float64]

KITS_DIR = Path("/usr/share/hydrogen/data/drumkits")
LMMS_DIR = Path("/usr/share/lmms/samples")
SONIC_PI_DIR = Path("/usr/share/sonic-pi/samples")
DEFAULT_OUT = Path("data/drums")
CLASSES: tuple[str, ...] = ("kick", "snare", "hihat", "cymbal", "tom", "clap")
# First match wins: "Kick Stomp" is a kick, "Crash/Ride Bell" a cymbal, "Sabian Hat Closed" a hi-hat.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hihat", re.compile(r"hi-?hat|\bhh\b|\bhat\b|\bohh\b")),
    ("cymbal", re.compile(r"crash|ride|cymbal|china|splash")),
    ("clap", re.compile(r"clap|snap")),
    ("kick", re.compile(r"kick|bass ?drum|bassdrum|\bbd\b")),
    ("tom", re.compile(r"tom")),
    ("snare", re.compile(r"snare|rimshot")),
)
SPLIT_OF_KIT: dict[str, str] = {
    "The Black Pearl 1.0": "test",
    "rumpf_kit_z01_h2": "test",
    "HardElectro1": "test",
    "Millo_MultiLayered2": "val",
    "VariBreaks": "val",
}
"""Held-out kits; every other kit trains. Test: an acoustic kit, a sampled kit and an electronic one."""

OTHER = ""  # an instrument of none of the classes: a distractor
UNNAMED = re.compile(r"^(sample:.*|\d+|none|[a-g]#?\d\s*-\s*)$")
"""Instruments left out: drum loops ("Sample: beats_01-39.flac", which hold unlabelled kicks and snares) and
slots with no name or a bare number (no way to tell what they are)."""

SCENE_SECONDS = 6.0
CLIP_SECONDS = 0.5
CENTRE_SECONDS = 0.02  # a class is in a clip's label when it sounds within this of the clip's centre: half a hop
MAX_HIT_SECONDS = 2.0
DECAY_DB = 30.0
SCENES: dict[str, int] = {"train": 1000, "val": 40, "test": 60}
CLIPS_PER_SCENE = 12
COLUMNS = ("path", "label", "split", "voice", "source")


@dataclass(frozen=True)
class Sample:
    """One recorded hit: its kit, its class (``""`` for a distractor) and its instrument name."""

    kit: str
    label: str
    instrument: str
    path: Path


@dataclass(frozen=True)
class Event:
    label: str
    onset: float
    offset: float


@dataclass(frozen=True)
class SampleSource:
    """A folder of one-shot samples from a Debian package other than hydrogen-drumkits, read as one more
    training kit. Its files have no ``drumkit.xml``, so each file's name (lowercased, ``_`` read as a space)
    is matched against ``rules``: the first match gives its class (:data:`OTHER` makes it a distractor); a file
    no rule matches is left out (drum loops, basses, anything that may hold a voice)."""

    name: str
    package: str
    root: Path
    rules: tuple[tuple[str, re.Pattern[str]], ...]

    def samples(self) -> list[Sample]:
        out = []
        for path in sorted(self.root.rglob("*")):
            if path.suffix.lower() not in (".ogg", ".flac", ".wav") or not path.is_file():
                continue
            rel = path.relative_to(self.root).with_suffix("").as_posix().lower().replace("_", " ")
            label = next((lab for lab, pattern in self.rules if pattern.fullmatch(rel)), None)
            if label is None:
                continue
            try:
                sf.info(str(path))
            except (RuntimeError, sf.LibsndfileError) as e:  # lmms-common ships a few malformed files
                print(f"skipped {path}: unreadable ({e})", file=sys.stderr)
                continue
            out.append(Sample(self.name, label, path.relative_to(self.root).with_suffix("").as_posix(), path))
        return out


def _rules(*pairs: tuple[str, str]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((label, re.compile(pattern)) for label, pattern in pairs)


EXTRA_SOURCES: tuple[SampleSource, ...] = (
    # lmms-common: 72 one-shots of acoustic and electronic kits, and a few effects as distractors.
    SampleSource(
        "lmms-drums",
        "lmms-common",
        LMMS_DIR,
        _rules(
            ("kick", r"drums/(bassdrum|kick).*"),
            ("snare", r"drums/(nasty )?snare.*"),
            ("hihat", r"drums/hihat.*"),
            ("cymbal", r"drums/(crash|ride).*"),
            ("tom", r"drums/tom.*"),
            ("clap", r"drums/clap.*"),
            (OTHER, r"drums/(clav|rim|nasty rim|sidestick|shaker|wood|zap).*"),
            (OTHER, r"misc/(dong|metalish dong|metronome|electric ping).*|effects/(scratch|wind chimes).*"),
        ),
    ),
    # sonic-pi-samples (CC0 recordings from freesound.org): acoustic and electronic drums, tabla, bells.
    SampleSource(
        "sonic-pi",
        "sonic-pi-samples",
        SONIC_PI_DIR,
        _rules(
            ("kick", r"bd .*|drum bass .*|drum heavy kick|elec (hollow|soft) kick"),
            ("snare", r"sn .*|drum snare .*|elec (filt |hi |lo |mid )?snare"),
            ("hihat", r"drum cymbal (closed|open|pedal)"),
            ("cymbal", r"drum cymbal (hard|soft)|drum splash .*|elec cymbal"),
            ("tom", r"drum tom .*|elec fuzz tom"),
            ("clap", r"perc snap2?"),
            (OTHER, r"drum cowbell|elec (beep|bell|blip2?|blup|bong|chime|ping|plip|pop|tick|triangle|twang|twip)"),
            (OTHER, r"elec wood|perc (bell2?|door|impact[12]|till)|tabla .*|glitch perc\d"),
        ),
    ),
)
"""Training-only sources besides the hydrogen kits: every held-out (val, test) kit stays a hydrogen kit, so the
figures of versions trained with and without them are measured on the same kits."""


def classify_instrument(name: str) -> str:
    """The class of an instrument name from a ``drumkit.xml``, or :data:`OTHER`."""
    lowered = name.lower()
    return next((label for label, pattern in PATTERNS if pattern.search(lowered)), OTHER)


def read_kit(kit_dir: Path) -> list[Sample]:
    """Every sample file a kit's ``drumkit.xml`` names, with its instrument's class."""
    root = ET.parse(kit_dir / "drumkit.xml").getroot()
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    samples = []
    for instrument in root.iter(f"{ns}instrument"):
        name = (instrument.findtext(f"{ns}name") or "").strip()
        if not name or UNNAMED.match(name.lower()):
            continue
        for filename in instrument.iter(f"{ns}filename"):
            path = kit_dir / (filename.text or "")
            if filename.text and path.is_file():
                samples.append(Sample(kit_dir.name, classify_instrument(name), name, path))
    return samples


def find_kits(kits_dir: Path = KITS_DIR, extra: Sequence[SampleSource] = ()) -> dict[str, list[Sample]]:
    """The hydrogen kits in ``kits_dir`` and each source of ``extra`` as one more kit, by name."""
    if not kits_dir.is_dir():
        raise RuntimeError(f"{kits_dir} is missing; on Debian: apt-get install hydrogen-drumkits")
    kits = {d.name: read_kit(d) for d in sorted(kits_dir.iterdir()) if (d / "drumkit.xml").is_file()}
    for source in extra:
        if not source.root.is_dir():
            raise RuntimeError(f"{source.root} is missing; on Debian: apt-get install {source.package}")
        if SPLIT_OF_KIT.get(source.name, "train") != "train":
            raise RuntimeError(f"{source.name} is a held-out kit's name; an extra source only trains")
        kits[source.name] = source.samples()
    return kits


def load_hit(path: Path) -> FloatArray:
    """A sample as mono float at 16 kHz, at most :data:`MAX_HIT_SECONDS` (faded out), peak 1."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = resample(np.ascontiguousarray(data.mean(axis=1)), int(rate), SAMPLE_RATE).astype(np.float64)
    mono = mono[: round(MAX_HIT_SECONDS * SAMPLE_RATE)]
    fade = min(mono.size, SAMPLE_RATE // 20)
    mono[mono.size - fade :] *= np.linspace(1.0, 0.0, fade)
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    return mono / peak if peak > 0 else mono


def sounding(hit: FloatArray) -> tuple[float, float]:
    """When a hit sounds, in seconds from the start of its sample: from the first 10 ms frame within
    :data:`DECAY_DB` of its loudest to the last such frame."""
    frame = SAMPLE_RATE // 100
    n = max(1, hit.size // frame)
    energy = np.array([np.mean(hit[i * frame : (i + 1) * frame] ** 2) for i in range(n)]) + 1e-12
    loud = np.flatnonzero(10 * np.log10(energy / energy.max()) > -DECAY_DB)
    return float(loud[0] * frame / SAMPLE_RATE), float((loud[-1] + 1) * frame / SAMPLE_RATE)


def render_scene(
    samples: Sequence[Sample], hits: dict[Path, FloatArray], rng: np.random.Generator, seconds: float = SCENE_SECONDS
) -> tuple[FloatArray, list[Event]]:
    """One kit playing for ``seconds``: about 2.5 hits a second of classes drawn alike (a quarter of the hits
    distractors when the kit has any) at -20 to 0 dB over room noise at -60 to -35 dBFS; returns the audio
    and the labelled events."""
    n = round(seconds * SAMPLE_RATE)
    kind = str(rng.choice(["white", "pink", "brown", "hum", "band"]))
    scene = make_noise(kind, n, rng, SAMPLE_RATE) * 10 ** (rng.uniform(-60.0, -35.0) / 20)
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    classes = sorted(label for label in by_class if label)
    events: list[Event] = []
    for _ in range(rng.poisson(2.5 * seconds)):
        # A class first, then one of its samples: a kit with 30 cymbal samples and one kick still kicks.
        label = OTHER if OTHER in by_class and rng.random() < 0.25 else classes[int(rng.integers(len(classes)))]
        pool = by_class[label]
        sample = pool[int(rng.integers(len(pool)))]
        hit = hits[sample.path] * 10 ** (rng.uniform(-20.0, 0.0) / 20) * 0.5
        start = int(rng.integers(0, n - SAMPLE_RATE // 10))
        piece = hit[: n - start]
        scene[start : start + piece.size] += piece
        if sample.label:
            begin, end = sounding(hits[sample.path])
            onset = start / SAMPLE_RATE + begin
            events.append(Event(sample.label, round(onset, 3), round(min(seconds, start / SAMPLE_RATE + end), 3)))
    peak = float(np.max(np.abs(scene)))
    if peak > 0.99:  # many loud hits at once: turn the whole scene down rather than clip it
        scene *= 0.99 / peak
    return scene, sorted(events, key=lambda e: e.onset)


def labels_at(events: Sequence[Event], centre: float, half: float = CENTRE_SECONDS) -> tuple[str, ...]:
    """The classes sounding within ``half`` seconds of ``centre``, in :data:`CLASSES` order."""
    active = {e.label for e in events if e.onset <= centre + half and e.offset >= centre - half}
    return tuple(label for label in CLASSES if label in active)


def clip_centres(events: Sequence[Event], rng: np.random.Generator, k: int, seconds: float) -> list[float]:
    """``k`` clip centres: half just after a hit's onset (where onsets must be caught), half anywhere."""
    half = CLIP_SECONDS / 2
    centres = []
    for i in range(k):
        if i % 2 == 0 and events:
            e = events[int(rng.integers(len(events)))]
            centre = e.onset + rng.uniform(-0.1, min(0.4, e.offset - e.onset))
        else:
            centre = rng.uniform(half, seconds - half)
        centres.append(float(np.clip(centre, half, seconds - half)))
    return centres


def build(
    out: Path,
    kits_dir: Path = KITS_DIR,
    seed: int = 0,
    scenes: dict[str, int] | None = None,
    extra: Sequence[SampleSource] = EXTRA_SOURCES,
) -> Path:
    """Write scenes, clips and ``manifest.csv`` into ``out``; return the manifest's path.

    Each split draws from a random generator of its own (``seed`` and the split), so the val and test scenes
    do not change when training sources or training scenes are added: versions stay comparable."""
    kits = find_kits(kits_dir, extra)
    counts = scenes or SCENES
    hits = {s.path: load_hit(s.path) for samples in kits.values() for s in samples}
    package = {source.name: source.package for source in extra}
    rows: list[dict[str, str]] = []
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_index])
        split_kits = [k for k in kits if SPLIT_OF_KIT.get(k, "train") == split and any(s.label for s in kits[k])]
        scene_dir = out / "scenes" / split
        clip_dir = out / "clips" / split
        scene_dir.mkdir(parents=True, exist_ok=True)
        clip_dir.mkdir(parents=True, exist_ok=True)
        annotations: list[list[str]] = []
        for i in range(counts[split]):
            kit = split_kits[i % len(split_kits)]
            audio, events = render_scene(kits[kit], hits, rng)
            scene_name = f"{i:04d}.wav"
            if split != "train":
                sf.write(scene_dir / scene_name, to_int16(audio), SAMPLE_RATE, subtype="PCM_16")
                annotations += [[scene_name, e.label, f"{e.onset:.3f}", f"{e.offset:.3f}", kit] for e in events]
            half = round(CLIP_SECONDS * SAMPLE_RATE) // 2
            for j, centre in enumerate(clip_centres(events, rng, CLIPS_PER_SCENE, SCENE_SECONDS)):
                c = round(centre * SAMPLE_RATE)
                name = f"clips/{split}/{i:04d}_{j:02d}.wav"
                sf.write(out / name, to_int16(audio[c - half : c + half]), SAMPLE_RATE, subtype="PCM_16")
                label = ";".join(labels_at(events, centre))
                rows.append(
                    {"path": name, "label": label, "split": split, "voice": kit,
                     "source": package.get(kit, "hydrogen-drumkits")}
                )  # fmt: skip
        if split != "train":
            with (scene_dir / "events.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["filename", "event_label", "onset", "offset", "kit"])
                writer.writerows(annotations)
    manifest = out / MANIFEST_NAME
    write_manifest(rows, manifest)
    return manifest


def summarize(manifest: Path) -> str:
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    counts = Counter(
        (label, r["split"]) for r in rows for label in (r["label"].split(";") if r["label"] else ["(none)"])
    )
    lines = [f"{'class':<10}" + "".join(f"{s:>8}" for s in SPLITS)]
    for label in (*CLASSES, "(none)"):
        lines.append(f"{label:<10}" + "".join(f"{counts[label, s]:>8}" for s in SPLITS))
    kits = {s: sorted({r["voice"] for r in rows if r["split"] == s}) for s in SPLITS}
    lines += [f"{s} kits: {', '.join(kits[s])}" for s in SPLITS]
    return "\n".join(lines)


def _cmd_drums(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        manifest = build(args.out, args.kits, args.seed, extra=() if args.hydrogen_only else EXTRA_SOURCES)
    except (RuntimeError, OSError) as e:
        print(f"cannot build the drum data set: {e}", file=sys.stderr)
        return 1
    print(summarize(manifest))
    print(f"wrote {manifest} and test scenes in {args.out / 'scenes'} in {time.perf_counter() - started:.0f} s")
    return 0


def add_drums_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``hark data drums`` under ``hark data``."""
    parser = commands.add_parser(
        "drums",
        help="build the multi-label drum sound-event data set from Debian's hydrogen-drumkits",
        description="Mix real drum-kit recordings (hydrogen-drumkits) into scenes with overlapping hits over "
        "room noise, cut labelled clips (the classes sounding at each clip's centre) and split by kit.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="output (default %(default)s)")
    parser.add_argument("--kits", type=Path, default=KITS_DIR, metavar="DIR", help="drum kits (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default %(default)s)")
    parser.add_argument(
        "--hydrogen-only",
        action="store_true",
        help="train on the hydrogen kits alone, without the lmms-common and sonic-pi-samples one-shots",
    )
    parser.set_defaults(func=_cmd_drums)
