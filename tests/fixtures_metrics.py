"""Shared by the metrics tests: a tiny model version with drift reference and control set, and clients.

``publish_observed_tiny`` publishes the tiny loudness model (``tests/fixtures_models.py``) with what
the observability features need and the plain fixture lacks: ``reference_stats`` computed from
:func:`normal_audio` (so normal traffic has near-zero drift), a ``class_prior`` and a control set of
noise bursts labelled with the model's word and quiet clips labelled ``_silence_``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import soundfile as sf

from hark.core.frontend import LogMel
from hark.core.model_store import publish_version
from hark.v1 import hark_pb2, hark_pb2_grpc
from tests.fixtures_models import LABELS, SAMPLE_RATE, manifest_fields, noise, pcm_chunks, quiet, tiny_onnx


def normal_audio(seconds: float = 3.3, seed: int = 1) -> np.ndarray:
    """Traffic like the reference: quiet, a word-like noise burst, quiet."""
    one = np.concatenate([quiet(1.0), noise(0.8, seed=seed), quiet(1.5)])
    reps = max(1, round(seconds / 3.3))
    return np.concatenate([one] * reps)


def shifted_audio(seconds: float = 3.3, gain_db: float = 60.0) -> np.ndarray:
    """The same traffic 60 dB louder (a gain stage gone wrong): every band's log-Mel mean moves."""
    return (normal_audio(seconds) * 10 ** (gain_db / 20)).clip(-1, 1).astype(np.float32)


def reference_stats(samples: np.ndarray) -> dict[str, Any]:
    frames = LogMel().frames(samples).astype(np.float64)
    return {"mean": frames.mean(axis=0).tolist(), "std": frames.std(axis=0).tolist(), "n_frames": frames.shape[0]}


def write_control_set(version_dir: Path, *, wrong: int = 0, per_class: int = 4) -> int:
    """``per_class`` noise bursts labelled ``yes`` and quiet clips labelled ``_silence_``; ``wrong`` of the
    bursts mislabelled ``no`` (the model will say ``yes``). Returns the number of clips."""
    control = version_dir / "control"
    (control / "clips").mkdir(parents=True)
    rows = ["path,label"]
    for i in range(per_class):
        burst = np.concatenate([quiet(0.2), noise(1.0, seed=10 + i), quiet(0.2)])
        sf.write(control / "clips" / f"word_{i}.wav", burst, SAMPLE_RATE, subtype="PCM_16")
        rows.append(f"clips/word_{i}.wav,{'no' if i < wrong else 'yes'}")
        sf.write(control / "clips" / f"quiet_{i}.wav", quiet(1.0), SAMPLE_RATE, subtype="PCM_16")
        rows.append(f"clips/quiet_{i}.wav,_silence_")
    (control / "control.csv").write_text("\n".join(rows) + "\n")
    return 2 * per_class


def publish_observed_tiny(
    root: Path, name: str = "tiny", version: int | None = None, *, control: bool = True, wrong: int = 0
) -> Path:
    prior = {label: 0.0 for label in LABELS}
    prior.update({"yes": 0.25, "_silence_": 0.75})
    fields = manifest_fields(name, reference_stats=reference_stats(normal_audio(6.6)))
    fields["metrics"] = {**fields["metrics"], "class_prior": prior}
    with tempfile.TemporaryDirectory() as tmp:
        version_dir = publish_version(root, fields, tiny_onnx(Path(tmp) / "model.onnx"), version=version)
    if control:
        write_control_set(version_dir, wrong=wrong)
    return version_dir


# Clients -------------------------------------------------------------------------------------------


async def stream_audio(
    stub: hark_pb2_grpc.ClassifierStub,
    samples: np.ndarray,
    *,
    chunk_s: float = 0.1,
    model: str = "",
    pause_s: float = 0.0,
) -> list[hark_pb2.StreamResponse]:
    """One StreamClassify call, at full speed or with ``pause_s`` between chunks; returns its responses
    (raises on a non-OK status).

    Audio follows the server's ``started`` answer, as a careful client's does: a grpc.aio client still
    writing when the server refuses the config can report INTERNAL instead of the server's status
    (grpc/grpc#36066), which would make the refusal counted here look like another error.
    """
    call = stub.StreamClassify()
    config = hark_pb2.StreamConfig(sample_rate_hz=SAMPLE_RATE, encoding=hark_pb2.PCM_S16LE, model=model)
    await call.write(hark_pb2.StreamRequest(config=config))
    responses = [await call.read()]  # `started`, or the refusal raised as AioRpcError
    for chunk in pcm_chunks(samples, chunk_s=chunk_s):
        await call.write(hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=chunk)))
        if pause_s:
            await asyncio.sleep(pause_s)
    await call.done_writing()
    while (response := await call.read()) is not grpc.aio.EOF:
        responses.append(response)
    return responses


async def failing_call(stub: hark_pb2_grpc.ClassifierStub) -> grpc.StatusCode:
    """A request for a model that does not exist: NOT_FOUND, so the errors counter has a series."""
    try:
        await stream_audio(stub, quiet(0.2), model="no-such-model")
    except grpc.aio.AioRpcError as e:
        return e.code()
    raise AssertionError("expected NOT_FOUND")


def _request(url: str, method: str, timeout: float) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


async def http(url: str, method: str = "GET", timeout: float = 30.0) -> tuple[int, bytes, dict[str, str]]:
    """A plain HTTP request off the event loop (the server under test runs on it)."""
    return await asyncio.to_thread(_request, url, method, timeout)


async def http_json(url: str, method: str = "GET", timeout: float = 30.0) -> tuple[int, Any]:
    status, body, _ = await http(url, method, timeout)
    return status, json.loads(body)


def samples_of(text: str, name: str, labels: dict[str, str] | None = None) -> list[float]:
    """Values of ``name`` in a text exposition whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    want = labels or {}
    return [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in want.items())
    ]


def label_sets(text: str) -> Iterable[tuple[str, dict[str, str]]]:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield s.name, s.labels
