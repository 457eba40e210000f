"""Your own sounds, end to end, as a user does it: recordings of classes nobody trained for (tones, chirps,
clicks, buzzes), ``hark data import``, ``hark train`` with no config, ``hark export``, then a real server
on 127.0.0.1 that classifies and streams clips the model never saw.

The models are tiny and train for a few epochs, so the bars are what such a model reaches on these easy
classes with room to spare, not what a real data set would give.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from hark import cli
from hark.core.audio import encode_pcm, read_audio
from hark.core.model_store import ModelStore
from hark.core.model_store import read_manifest as read_version_manifest
from hark.v1 import hark_pb2
from hark_training.data import read_manifest
from tests.fixtures_sounds import SR, room, sound, write_class_folders, write_multilabel_csv
from tests.integration.conftest import Hark, StartHark

CLASSES = ["warble", "chirp", "clicks"]
# Each test trains a model: about a minute alone on two cores, several when the machine is busy.
pytestmark = pytest.mark.timeout(900)


def _requests(samples: np.ndarray, model: str, **detection: Any) -> list[hark_pb2.StreamRequest]:
    config = hark_pb2.StreamConfig(model=model, sample_rate_hz=SR, encoding=hark_pb2.PCM_S16LE, **detection)
    step = SR // 10
    chunks = [encode_pcm(samples[i : i + step].astype(np.float32)) for i in range(0, samples.size, step)]
    return [hark_pb2.StreamRequest(config=config)] + [
        hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=c)) for c in chunks
    ]


async def _events(hark: Hark, samples: np.ndarray, model: str, **detection: Any) -> list[hark_pb2.Event]:
    call = hark.stub.StreamClassify(iter(_requests(samples, model, **detection)))
    return [r.event async for r in call if r.WhichOneof("response") == "event"]


async def _classify(hark: Hark, samples: np.ndarray, model: str) -> hark_pb2.ClassifyResponse:
    request = hark_pb2.ClassifyRequest(
        model=model, sample_rate_hz=SR, encoding=hark_pb2.PCM_S16LE, pcm=encode_pcm(samples.astype(np.float32))
    )
    reply: hark_pb2.ClassifyResponse = await hark.stub.Classify(request)
    return reply


async def test_a_folder_per_class_becomes_a_served_model(tmp_path: Path, start_hark: StartHark) -> None:
    src = write_class_folders(tmp_path / "recordings", CLASSES, per_class=16)
    data, run, store = tmp_path / "data", tmp_path / "run", tmp_path / "store"

    assert cli.main(["data", "import", str(src), "--out", str(data)]) == 0
    assert (
        cli.main(["train", "--data", str(data / "manifest.csv"), "--out", str(run), "--epochs", "30", "--quiet"]) == 0
    )
    assert cli.main(["export", str(run), "--store", str(store), "--name", "mine", "--quiet"]) == 0

    loaded = ModelStore(store)
    loaded.refresh()
    manifest = loaded.resolve("mine").manifest
    assert manifest.labels == [*sorted(CLASSES), "_silence_"]  # from the data, plus the generated background
    assert manifest.background_labels == ["_silence_"]
    assert manifest.output_kind == "logits"

    hark = await start_hark(store)
    test = [r for r in read_manifest(data / "manifest.csv") if r.split == "test" and r.label in CLASSES]
    assert test
    answers = [(r.label, (await _classify(hark, read_audio(r.path, SR), "mine")).label) for r in test]
    right = sum(truth == got for truth, got in answers)
    assert right / len(answers) >= 0.8, answers

    rng = np.random.default_rng(123)  # sounds the model never heard, in a stream with room noise between
    parts = [room(1.0, rng)]
    for kind in ("chirp", "clicks"):
        parts += [sound(kind, 0.6, rng) + room(0.6, rng), room(1.5, rng)]
    events = await _events(hark, np.concatenate(parts), "mine")
    assert [e.label for e in events] == ["chirp", "clicks"]
    assert all(e.kind == hark_pb2.Event.ONSET for e in events)


async def test_a_multilabel_csv_gives_onsets_and_offsets(tmp_path: Path, start_hark: StartHark) -> None:
    labels_csv = write_multilabel_csv(tmp_path / "recordings", ["tone", "buzz"], n=120)
    data, run, store = tmp_path / "data", tmp_path / "run", tmp_path / "store"
    config = tmp_path / "small.toml"
    config.write_text(
        f'name = "events"\ndata = "{data / "manifest.csv"}"\nloss = "bce"\nlabel_smoothing = 0.0\n'
        'epochs = 20\nbatch_size = 8\nwindow_frames = 98\nhop_frames = 5\nkeep = "last"\n'
        '[arch_options]\nnorm = "none"\n'
    )

    assert cli.main(["data", "import", "--csv", str(labels_csv), "--out", str(data)]) == 0
    records = read_manifest(data / "manifest.csv")
    assert {r.label for r in records} == {"", "buzz", "tone", "buzz;tone"}
    assert cli.main(["train", "--config", str(config), "--out", str(run), "--quiet"]) == 0
    assert cli.main(["export", str(run), "--store", str(store), "--quiet"]) == 0

    loaded = ModelStore(store)
    loaded.refresh()
    manifest = loaded.resolve("events").manifest
    assert manifest.output_kind == "sigmoid"
    assert set(manifest.thresholds) == {"buzz", "tone"}
    assert manifest.metrics["test_map"] >= 0.8

    hark = await start_hark(store)
    rng = np.random.default_rng(7)
    both = room(1.0, rng)
    both += sound("tone", 1.0, rng) + sound("buzz", 1.0, rng)
    reply = await _classify(hark, both, "events")
    assert {a.label for a in reply.active} == {"buzz", "tone"}
    assert list((await _classify(hark, room(1.0, rng), "events")).active) == []

    # tone from 1.0 to 3.0 s, buzz from 2.0 to 4.0 s (overlapping), then quiet until 6.0 s
    stream = room(6.0, rng)
    stream[SR : 3 * SR] += sound("tone", 2.0, rng)
    stream[2 * SR : 4 * SR] += sound("buzz", 2.0, rng)
    events = await _events(hark, stream, "events")
    by = {(e.label, e.kind): e for e in events}
    assert sorted(by) == [
        ("buzz", hark_pb2.Event.ONSET),
        ("buzz", hark_pb2.Event.OFFSET),
        ("tone", hark_pb2.Event.ONSET),
        ("tone", hark_pb2.Event.OFFSET),
    ], [(e.label, e.kind, round(e.time_s, 2)) for e in events]
    for label, onset, offset in (("tone", 1.0, 3.0), ("buzz", 2.0, 4.0)):
        assert abs(by[label, hark_pb2.Event.ONSET].time_s - onset) <= 0.6
        assert abs(by[label, hark_pb2.Event.OFFSET].time_s - offset) <= 0.6
        assert by[label, hark_pb2.Event.OFFSET].onset_s == by[label, hark_pb2.Event.ONSET].time_s

    # Per-stream settings: only buzz may fire.
    only_buzz = await _events(hark, stream, "events", allowed_classes=["buzz"])
    assert {e.label for e in only_buzz} == {"buzz"}

    # Event-level evaluation of the version as served: sed_eval's F1 and PSDS on annotated recordings.
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    rows = ["filename,event_label,onset,offset"]
    for i in range(3):
        sf.write(scenes / f"{i}.wav", stream, SR, subtype="PCM_16")
        rows += [f"{i}.wav,tone,1.0,3.0", f"{i}.wav,buzz,2.0,4.0"]
    (scenes / "events.csv").write_text("\n".join(rows) + "\n")
    assert cli.main(["eval", str(store / "events" / "1"), "--events", str(scenes)]) == 0
    report = json.loads((store / "events" / "1" / "event_metrics.json").read_text())
    assert report["reference_events"] == 6
    # This model's 1-s windows are labelled with what sounds anywhere in them, so its onsets come up to half a
    # window early: outside sed_eval's 200 ms collar, inside PSDS's intersection criteria and 1-s segments.
    assert 0.0 <= report["event_f1_onset"]["f1"] <= 1.0
    assert report["segment_f1_1s"]["f1"] >= 0.5 and report["psds1"] >= 0.5
    assert ModelStore(store).refresh() is not None  # the version still verifies with its figures added
    assert read_version_manifest(store / "events" / "1").metrics["events"]["psds1"] == report["psds1"]
