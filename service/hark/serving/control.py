"""Control-set checks: labelled clips shipped with a model version, run through the server's live path.

A version may carry ``control/control.csv`` (columns ``path,label``; paths relative to ``control/``)
beside its ``model.onnx``. A check streams every clip through exactly what a client's stream goes
through in this process: a :class:`~hark.serving.pipeline.StreamPipeline` fed 100 ms PCM chunks (the
energy gate included), the version's shared batcher (so the same onnxruntime session and batching), then
postprocessing into events. A clip's prediction
is what a client would conclude: the label of its strongest event or, when nothing fired, the most
likely background class (``_silence_``, ``_unknown_``) over the clip. Accuracy is exported as
``hark_control_accuracy{model,version}`` with the time of the check.

Why in the server rather than offline: the check is only worth something if it exercises the process
that serves: its loaded model object, its batcher, its frontend and postprocessing settings. A check
that loads the store afresh in the CLI would pass while the server's copy is broken. The features of
control clips are kept out of the drift and traffic metrics, which describe client traffic; only the
batcher's queue and inference timings include them, because they did use the batcher.

Checks run every ``control_interval_s`` (0 = never on a schedule) and on demand through
``POST /control-check`` on the metrics port (loopback only), which ``hark control-check`` calls. The
proto has no admin RPC and is not ours to change, and the metrics port is already the operator's port.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hark.core.audio import PCM_S16LE, AudioError, encode_pcm, read_audio
from hark.core.model_store import (
    CONTROL_CSV,
    CONTROL_DIR,
    InvalidModelName,
    LoadedModel,
    ModelNotFound,
    validate_model_name,
)
from hark.logging import get_logger
from hark.serving.metrics import ControlHandler
from hark.serving.pipeline import DataPlane, StreamOptions

FloatArray = npt.NDArray[np.float32]

CHUNK_S = 0.1  # what a microphone client sends
MAX_CLIPS = 1000

log = get_logger("hark.control")


class ControlSetError(Exception):
    """A control set that cannot be run (unreadable CSV or clip, unknown label); the message says which."""


@dataclass(frozen=True)
class ControlClip:
    path: Path
    label: str


@dataclass(frozen=True)
class Miss:
    path: str
    label: str
    predicted: str


@dataclass
class ControlResult:
    """One version's check. ``error`` set: the set could not be run and the gauges were left alone."""

    model: str
    version: int
    clips: int = 0
    correct: int = 0
    accuracy: float | None = None
    duration_s: float = 0.0
    misses: list[Miss] = field(default_factory=list)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def control_csv(version_dir: Path) -> Path:
    return version_dir / CONTROL_DIR / CONTROL_CSV


def has_control_set(model: LoadedModel) -> bool:
    return control_csv(model.path).is_file()


def load_control_set(model: LoadedModel) -> list[ControlClip]:
    """Read and validate ``control/control.csv``: every path inside ``control/``, every label a label."""
    csv_path = control_csv(model.path)
    root = csv_path.parent.resolve()
    labels = set(model.manifest.labels)
    try:
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ControlSetError(f"cannot read {csv_path}: {e}") from e
    if not rows:
        raise ControlSetError(f"{csv_path} lists no clips")
    if len(rows) > MAX_CLIPS:
        raise ControlSetError(f"{csv_path} lists {len(rows)} clips; a control set holds at most {MAX_CLIPS}")
    clips = []
    for line, row in enumerate(rows, start=2):
        path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not path or not label:
            raise ControlSetError(f"{csv_path}:{line}: needs the columns path,label")
        if label not in labels:
            raise ControlSetError(f"{csv_path}:{line}: label {label!r} is not one of the model's labels")
        resolved = (root / path).resolve()
        if not resolved.is_relative_to(root):
            raise ControlSetError(f"{csv_path}:{line}: {path} is outside {root}")
        clips.append(ControlClip(resolved, label))
    return clips


def predicted_label(model: LoadedModel, events: Sequence[tuple[str, float]], mean_scores: FloatArray) -> str:
    """What a client concludes from a clip: its strongest event, else its most likely background class."""
    if events:
        return max(events, key=lambda e: e[1])[0]
    m = model.manifest
    background = [i for i, label in enumerate(m.labels) if label in set(m.background_labels)]
    if not background:
        return ""
    return m.labels[max(background, key=lambda i: float(mean_scores[i]))]


async def _classify_clip(plane: DataPlane, model: LoadedModel, clip: ControlClip) -> str:
    """Stream one clip through the live pipeline as 100 ms s16 chunks, as a microphone client would."""
    rate = model.manifest.frontend.sample_rate
    try:
        samples = await asyncio.to_thread(read_audio, clip.path, rate)
    except AudioError as e:
        raise ControlSetError(str(e)) from e
    options = StreamOptions(model=model.name, version=model.version, sample_rate_hz=rate, encoding=PCM_S16LE)
    step = max(1, round(CHUNK_S * rate))
    results = []
    with plane.open_stream(options, "control", observed=False) as pipeline:
        for start in range(0, samples.size, step):
            results += await pipeline.feed(encode_pcm(samples[start : start + step], PCM_S16LE))
        results += await pipeline.finish()
    if not results:
        raise ControlSetError(f"{clip.path} is too short to make a window")
    events = [(e.label, e.score) for scored in results for e in scored.events]
    return predicted_label(model, events, np.mean([scored.scores for scored in results], axis=0))


async def run_control_set(plane: DataPlane, model: LoadedModel) -> ControlResult:
    """Run one version's control set through the live path; errors are reported in the result."""
    started = time.perf_counter()
    result = ControlResult(model.name, model.version)
    try:
        clips = await asyncio.to_thread(load_control_set, model)
        predictions = await asyncio.gather(*(_classify_clip(plane, model, c) for c in clips))
    except ControlSetError as e:
        result.error = str(e)
        return result
    except Exception as e:  # an inference failure is a failed check, not a crash of the caller
        result.error = f"{type(e).__name__}: {e}"
        return result
    root = control_csv(model.path).parent.resolve()
    for clip, predicted in zip(clips, predictions, strict=True):
        if predicted == clip.label:
            result.correct += 1
        else:
            result.misses.append(Miss(str(clip.path.relative_to(root)), clip.label, predicted))
    result.clips = len(clips)
    result.accuracy = result.correct / result.clips
    result.duration_s = time.perf_counter() - started
    return result


class Controller:
    """Runs control sets for a server, one check at a time, and records the results as metrics."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.store = plane.store
        self.metrics = plane.metrics
        self._lock = asyncio.Lock()

    def targets(self, name: str = "", version: int = 0) -> list[LoadedModel]:
        """Served versions with a control set; a named model or version that has none is an error."""
        models = self.store.models()
        if name:
            validate_model_name(name)
            if name not in models:
                raise ModelNotFound(f"model {name!r} is not served (available: {', '.join(sorted(models)) or 'none'})")
        chosen = [
            m
            for n, versions in sorted(models.items())
            if not name or n == name
            for v, m in sorted(versions.items())
            if not version or v == version
        ]
        if version and not chosen:
            raise ModelNotFound(f"model {name or 'any'!r} has no served version {version}")
        with_sets = [m for m in chosen if has_control_set(m)]
        if not with_sets and (name or version):
            raise ControlSetError(
                f"no control set for {name or 'any model'}{f' version {version}' if version else ''}: "
                f"ship one as <version>/{CONTROL_DIR}/{CONTROL_CSV} (columns path,label)"
            )
        return with_sets

    async def check(self, name: str = "", version: int = 0) -> list[ControlResult]:
        """Check the chosen versions in turn; a second caller waits for the check in progress."""
        targets = self.targets(name, version)
        results = []
        async with self._lock:
            for model in targets:
                result = await run_control_set(self.plane, model)
                if result.error:
                    log.error("control check failed", model=model.name, version=model.version, error=result.error)
                else:
                    assert result.accuracy is not None
                    self.metrics.control_result(
                        model.name,
                        model.version,
                        accuracy=result.accuracy,
                        clips=result.clips,
                        duration_s=result.duration_s,
                    )
                    log.info(
                        "control check",
                        model=model.name,
                        version=model.version,
                        accuracy=round(result.accuracy, 4),
                        clips=result.clips,
                        duration_s=round(result.duration_s, 3),
                    )
                results.append(result)
        return results

    async def run_forever(self, interval_s: float, first_after_s: float = 10.0) -> None:
        """Check every version with a control set every ``interval_s``; the first soon after start."""
        await asyncio.sleep(min(first_after_s, interval_s))
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("scheduled control check failed")
            await asyncio.sleep(interval_s)

    def http_handler(self, loop: asyncio.AbstractEventLoop, timeout_s: float = 600.0) -> ControlHandler:
        """``POST /control-check?model=&version=`` for the metrics server's thread: runs on ``loop``."""

        def handle(query: dict[str, str]) -> tuple[int, dict[str, Any]]:
            name = query.get("model", "")
            try:
                version = int(query.get("version") or 0)
                if version < 0:
                    raise ValueError
            except ValueError:
                return 400, {"error": f"version {query.get('version')!r} is not a whole number >= 0"}
            future = asyncio.run_coroutine_threadsafe(self.check(name, version), loop)
            try:
                results = future.result(timeout_s)
            except (InvalidModelName, ValueError) as e:
                return 400, {"error": str(e)}
            except ModelNotFound as e:
                return 404, {"error": str(e)}
            except ControlSetError as e:
                return 404, {"error": str(e)}
            except FutureTimeout:
                future.cancel()
                return 504, {"error": f"the control check took longer than {timeout_s:g} s"}
            if not results:
                return 404, {"error": f"no served version has a control set ({CONTROL_DIR}/{CONTROL_CSV})"}
            status = 500 if any(r.error for r in results) else 200
            return status, {"results": [r.to_json() for r in results]}

        return handle
