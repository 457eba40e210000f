"""Does energy gating cost accuracy on the test set? Every test clip streamed with the gate on and off.

    python loadtest/gating_accuracy.py                         # the bundled model, data/keywords test split
    python loadtest/gating_accuracy.py --store model_store --data data/keywords/manifest.csv

Each test clip of the data set is fed to the live :class:`hark.serving.pipeline.StreamPipeline` in 100 ms
chunks, as a client's stream is, once with the default gate (``gate_dbfs``) and once with it off. Windows
the gate holds back get the session's gated scores; the others go through the version's batcher and
runner. The clip's answer is the top class of its first window (the window that covers the clip).
Reported: windows gated, clips whose answer differs between gate on and off, and test accuracy both ways.
Needs the data set (``hark data build``); not part of the suite or of ``make bench``. Writes
``loadtest/results/gating-accuracy-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hark.config import Settings
from hark.core.audio import PCM_F32LE, encode_pcm, read_audio
from hark.core.model_store import ModelStore
from hark.serving.batcher import BatcherPool
from hark.serving.metrics import HarkMetrics
from hark.serving.pipeline import DataPlane, StreamOptions
from loadtest.bench import REPO, RESULTS, find_version, save_result

CHUNK_S = 0.1


async def first_window_answer(plane: DataPlane, samples: np.ndarray, rate: int) -> tuple[int, bool]:
    """The top class of the clip's first stream window through the live pipeline, and whether it was gated."""
    options = StreamOptions(sample_rate_hz=rate, encoding=PCM_F32LE, emit_scores=True)
    step = round(CHUNK_S * rate)
    results = []
    with plane.open_stream(options, "gating", observed=False) as pipeline:
        for i in range(0, samples.size, step):
            results += await pipeline.feed(encode_pcm(samples[i : i + step], PCM_F32LE))
        results += await pipeline.finish()
    first = results[0]  # its answer before smoothing: the model's, or the gate's stand-in when gated
    assert first.probabilities is not None
    return int(np.argmax(first.probabilities)), first.window.gated


async def measure(version_dir: Path, manifest_csv: Path) -> dict[str, Any]:
    on, off = Settings(), Settings(gate_dbfs=None)
    planes = []
    for settings in (on, off):
        store = ModelStore(version_dir.parent.parent, default_model=version_dir.parent.name)
        store.refresh()
        planes.append(DataPlane(settings, store, BatcherPool(settings), HarkMetrics()))
    model = planes[0].resolve("", int(version_dir.name))
    labels = list(model.manifest.labels)
    rate = model.manifest.frontend.sample_rate
    with manifest_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    clips = gated = differ = right_on = right_off = 0
    for row in rows:
        samples = read_audio(manifest_csv.parent / row["path"], rate)
        truth = labels.index(row["label"])
        answer_on, was_gated = await first_window_answer(planes[0], samples, rate)
        answer_off, _ = await first_window_answer(planes[1], samples, rate)
        clips += 1
        gated += was_gated
        differ += answer_on != answer_off
        right_on += answer_on == truth
        right_off += answer_off == truth
    for plane in planes:
        await plane.pool.close()
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
    result = asyncio.run(measure(find_version(args.store), args.data))
    print(json.dumps(result, indent=2))
    print(f"written to {save_result(args.out, 'gating-accuracy', result)}")


if __name__ == "__main__":
    main()
