"""Does energy gating cost accuracy on the test set? Every test clip streamed with the gate on and off.

    python loadtest/gating_accuracy.py                         # the bundled model, data/keywords test split
    python loadtest/gating_accuracy.py --store model_store --data data/keywords/manifest.csv

Each test clip of the data set is fed to a :class:`service.session.StreamSession` in 100 ms chunks, as the
server does, once with the default gate (``gate_dbfs``) and once with it off. Windows the gate holds back get
the session's gated scores; the others go through the model's runner. The clip's answer is the top class of
its first window (the window that covers the clip). Reported: windows gated, clips whose answer differs
between gate on and off, and test accuracy both ways. Needs the data set (``hark data build``); not part of
the suite or of ``make bench``. Writes ``loadtest/results/gating-accuracy-<date>.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.bench import REPO, RESULTS, find_version, save_result
from service.audio import PCM_F32LE, read_audio
from service.config import Settings
from service.model_store import LoadedModel, load_version
from service.session import StreamSession

CHUNK_S = 0.1


def first_window_answer(model: LoadedModel, samples: np.ndarray, settings: Settings) -> tuple[int, bool]:
    """The top class of the clip's first stream window, and whether the gate held that window back."""
    rate = model.manifest.frontend.sample_rate
    session = StreamSession(model, sample_rate=rate, encoding=PCM_F32LE, settings=settings)
    step = round(CHUNK_S * rate)
    windows = []
    for i in range(0, samples.size, step):
        windows += session.feed(samples[i : i + step])
    windows += session.finish()
    first = windows[0]
    gated = session.gated_probabilities() if first.gated else None
    probabilities = gated if gated is not None else model.runner.run(first.features[np.newaxis])[0]
    return int(np.argmax(probabilities)), first.gated


def measure(version_dir: Path, manifest_csv: Path) -> dict[str, Any]:
    model = load_version(version_dir)
    labels = list(model.manifest.labels)
    rate = model.manifest.frontend.sample_rate
    with manifest_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    on, off = Settings(), Settings(gate_dbfs=None)
    clips = gated = differ = right_on = right_off = 0
    for row in rows:
        samples = read_audio(manifest_csv.parent / row["path"], rate)
        truth = labels.index(row["label"])
        answer_on, was_gated = first_window_answer(model, samples, on)
        answer_off, _ = first_window_answer(model, samples, off)
        clips += 1
        gated += was_gated
        differ += answer_on != answer_off
        right_on += answer_on == truth
        right_off += answer_off == truth
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": f"{model.name}/{model.version}",
        "gate_dbfs": on.gate_dbfs,
        "test_clips": clips,
        "first_windows_gated": gated,
        "answers_that_differ": differ,
        "accuracy_gate_on": round(right_on / clips, 4),
        "accuracy_gate_off": round(right_off / clips, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=REPO / "model_store", help="model store (its first model, newest)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "keywords" / "manifest.csv", help="data manifest")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for gating-accuracy-<date>.json")
    args = p.parse_args()
    result = measure(find_version(args.store), args.data)
    print(json.dumps(result, indent=2))
    print(f"written to {save_result(args.out, 'gating-accuracy', result)}")


if __name__ == "__main__":
    main()
