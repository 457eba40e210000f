"""The stream pipeline: one stream's whole path from PCM bytes to scored windows and events, no transport in it.

Every transport (gRPC, WebSocket, the Open Inference Protocol), the control-set check, the benchmarks and
the tests drive this one choreography::

    with plane.open_stream(options, stream_id) as pipeline:   # resolves the model, leases its batcher
        for pcm in chunks:
            results = await pipeline.feed(pcm)                  # decode → frontend → windows → gate → batch
        results = await pipeline.finish()                       #   → model → postprocess → Scored

A :class:`StreamPipeline` owns a :class:`~hark.serving.session.StreamSession` (the pure, synchronous
state: resampler, frontend, ring, postprocessor), a lease on the version's shared
:class:`~hark.serving.batcher.Batcher`, the version's metric instruments and an optional debug capture.
Gated (too quiet) windows never reach the model; their scores come from the session, in window order.

:class:`DataPlane` is the server's one core that transports call, in the spirit of MLServer's data plane
and sherpa-onnx's engine/stream split: it opens stream pipelines, classifies whole clips and lists models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hark.config import Settings
from hark.core.audio import PCM_S16LE, AudioError, check_channels, check_sample_rate, decode_pcm, mix_down, resample
from hark.core.model_store import LoadedModel, ModelNotFound, ModelStore, validate_model_name
from hark.core.postprocess import ONSET, DetectionOverrides, PostprocessConfig, active_classes, aggregate_clip
from hark.core.streaming import StreamingRunner, StreamState
from hark.core.text import quote
from hark.serving.batcher import Batcher, BatcherPool
from hark.serving.budget import AudioBudget
from hark.serving.capture import AudioCapture, StreamCapture
from hark.serving.errors import Refusal
from hark.serving.limits import RealTimePacer
from hark.serving.metrics import HarkMetrics, ModelInstruments
from hark.serving.session import Scored, StreamSession, Window, clip_windows

FloatArray = npt.NDArray[np.float32]

# Chunks larger than this (about 8 s of 16 kHz int16) are decoded and featurised in a worker thread, so
# other streams keep moving.
OFFLOAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class StreamOptions:
    """What a client asks for when it opens a stream: the same fields on every transport."""

    model: str = ""  # "" = the server's default model
    version: int = 0  # 0 = the newest valid version
    sample_rate_hz: int = 16000
    encoding: str = PCM_S16LE
    emit_scores: bool = False
    channels: int = 1  # interleaved channels, mixed down to mono
    # A file sent as fast as the server takes it (hostile clients): not paced to real time, served from
    # the bulk budget (max_fast_streams, the clip memory budget, the batcher's bulk queue).
    fast: bool = False
    detection: DetectionOverrides = field(default_factory=DetectionOverrides)


@dataclass(frozen=True)
class ClipResult:
    """A whole clip's answer: the model version, the winning label, every class's score, and the classes
    active in the clip (each foreground class at or above its threshold; for a single-label model, the
    winner when it is a foreground class), strongest first."""

    model: LoadedModel
    label: str
    score: float
    scores: dict[str, float]
    active: dict[str, float]


class StreamPipeline:
    """One stream, from bytes to results. Feed chunks in order; results come in window order.

    Raises what the session raises (:class:`~hark.core.audio.AudioError`,
    :class:`~hark.serving.session.StreamTooLong`) and :class:`~hark.serving.batcher.InferenceError`;
    :func:`hark.serving.errors.refusal_of` maps each to a status. Not safe for concurrent ``feed`` calls:
    a stream is one ordered sequence of chunks.
    """

    def __init__(
        self,
        session: StreamSession,
        batcher: Batcher,
        instruments: ModelInstruments | None = None,
        capture: StreamCapture | None = None,
        *,
        budget: AudioBudget | None = None,
        pacer: RealTimePacer | None = None,
        bulk: bool = False,
    ) -> None:
        self.session = session
        self.batcher = batcher
        self.instruments = instruments
        self.capture = capture
        self.budget = budget  # None: unbounded (the control check's own clips)
        self.pacer = pacer  # None: any speed
        self.bulk = bulk  # a fast stream: its windows wait for the live streams' (Batcher bulk queue)
        # A streaming version's state for this stream alone: zeros at the start of every stream.
        runner = session.model.runner
        self.state = StreamState(runner) if isinstance(runner, StreamingRunner) else None

    @property
    def model(self) -> LoadedModel:
        return self.session.model

    @property
    def emit_scores(self) -> bool:
        return self.session.emit_scores

    async def feed(self, pcm: bytes) -> list[Scored]:
        """One chunk of PCM bytes in; the windows it completed, scored and postprocessed, out."""
        arrived = time.perf_counter()
        if self.capture is not None:
            self.capture.add(pcm)
        if self.instruments is not None:
            self.instruments.chunk(len(pcm))
        session = self.session
        before = session.input_samples
        with self.budget.reserve(len(pcm)) if self.budget is not None else nullcontext():
            big = len(pcm) > OFFLOAD_BYTES
            windows = await asyncio.to_thread(session.feed_pcm, pcm) if big else session.feed_pcm(pcm)
            results = await self._score(windows, arrived)
        if self.pacer is not None:  # hostile clients: a stream past its burst is held to N x real time
            await self.pacer.pace((session.input_samples - before) / session.sample_rate)
        return results

    async def finish(self) -> list[Scored]:
        """End of audio: the tail is padded so the last audio is scored too; then the offsets of classes
        still active (multi-label models) close the stream."""
        results = await self._score(self.session.finish(), time.perf_counter())
        closing = self.session.close()
        return results if closing is None else [*results, closing]

    async def _score(self, windows: list[Window], arrived: float) -> list[Scored]:
        if not windows:
            return []
        if self.state is not None:
            probabilities = iter(await self._step(windows))
            windows = [w for w in windows if not w.warmup]
        else:
            live = [w.features for w in windows if not w.gated]
            probabilities = iter(await submit_fairly(self.batcher, live, bulk=self.bulk))
        results = []
        for window in windows:
            p = self.session.gated_probabilities() if window.gated else next(probabilities)
            scored = self.session.score(window, p)
            results.append(scored)
            if self.instruments is not None:
                self.instruments.window(
                    window.features, p, (e.label for e in scored.events if e.kind == ONSET), arrived
                )
        return results

    async def _step(self, windows: list[Window]) -> list[FloatArray]:
        """A streaming version: each hop in order through the batcher with this stream's state, gated or not
        (the state must see every frame); the scores of the windows that are scored and not gated."""
        assert self.state is not None
        hop = self.state.runner.hop_frames
        scores = []
        for window in windows:
            (out,) = await self.batcher.submit_many((self.state.load(window.features[-hop:]),), bulk=self.bulk)
            p = self.state.update(out)
            if not window.warmup and not window.gated:
                scores.append(p)
        return scores


async def submit_fairly(batcher: Batcher, windows: Sequence[FloatArray], *, bulk: bool = False) -> list[FloatArray]:
    """Score ``windows`` through the shared batcher, at most one batch of them queued at a time.

    Hostile clients: a 1 MiB chunk (32 s of audio) or a long clip completes hundreds of windows at once;
    queued together they would make every other stream's next window wait behind all of them. A slice at a
    time bounds one caller's backlog in the queue to ``max_batch`` windows, so streams take turns. ``bulk``
    (clips, fast streams): the slices go to the batcher's bulk queue, behind every live window.
    """
    step = batcher.max_batch
    if len(windows) <= step:
        return await batcher.submit_many(windows, bulk=bulk) if windows else []
    out: list[FloatArray] = []
    for i in range(0, len(windows), step):
        out += await batcher.submit_many(windows[i : i + step], bulk=bulk)
    return out


# Windows stacked at a time for a streaming version's whole-clip scoring (a few MB, not the whole clip).
CLIP_BLOCK_WINDOWS = 256


def _run_windows_in_blocks(runner: StreamingRunner, windows: Sequence[FloatArray]) -> FloatArray:
    blocks = [
        runner.run_windows(np.stack(windows[i : i + CLIP_BLOCK_WINDOWS]))
        for i in range(0, len(windows), CLIP_BLOCK_WINDOWS)
    ]
    return np.concatenate(blocks)


class DataPlane:
    """The serving core every transport calls: open stream pipelines, classify clips, describe models."""

    def __init__(
        self,
        settings: Settings,
        store: ModelStore,
        pool: BatcherPool,
        metrics: HarkMetrics,
        capture: AudioCapture | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.capture = capture
        self.budget = AudioBudget(settings.audio_budget_bytes)  # live streams
        # Classify clips and fast streams: the bulk work, apart from the live streams (hostile clients)
        self.clip_budget = AudioBudget(settings.clip_budget_bytes, "Classify clips and fast streams in flight")

    def resolve(self, name: str, version: int) -> LoadedModel:
        return self.store.resolve(name, version)

    def open_stream(
        self, options: StreamOptions, stream_id: str = "", *, observed: bool = True
    ) -> AbstractContextManager[StreamPipeline]:
        """A pipeline for one stream, for the ``with`` block. Validates the options (rate, model) first.

        ``observed=False`` keeps the stream out of traffic and drift metrics and debug capture (the control
        check's clips are not client traffic); it still goes through the version's shared batcher.
        """
        check_sample_rate(options.sample_rate_hz)
        model = self.store.resolve(options.model, options.version)
        try:
            options.detection.check(model.manifest.labels)
        except ValueError as e:
            raise Refusal("INVALID_ARGUMENT", f"detection settings: {e}") from e
        instruments = self.metrics.instruments(model) if observed else None
        session = StreamSession(
            model,
            sample_rate=options.sample_rate_hz,
            encoding=options.encoding,
            settings=self.settings,
            stream_id=stream_id,
            emit_scores=options.emit_scores,
            channels=options.channels,
            detection=options.detection,
        )
        if instruments is not None:
            session.observe_with(instruments.observe, instruments.audio)
        capture = None
        if observed and self.capture is not None:
            capture = self.capture.stream(stream_id, session.sample_rate, session.encoding)
        # Live client streams are paced and budgeted; a fast stream is budgeted as bulk work and not paced
        # (its windows queue behind the live ones instead); the control check's own streams are neither.
        pacer = None
        budget = None
        if observed:
            budget = self.clip_budget if options.fast else self.budget
            if not options.fast:
                pacer = RealTimePacer(self.settings.max_realtime_factor, self.settings.realtime_burst_s)
        return self._leased(session, instruments, capture, budget, pacer, options.fast)

    @contextmanager
    def _leased(
        self,
        session: StreamSession,
        instruments: ModelInstruments | None,
        capture: StreamCapture | None,
        budget: AudioBudget | None,
        pacer: RealTimePacer | None,
        bulk: bool,
    ) -> Iterator[StreamPipeline]:
        with self.pool.lease(session.model) as batcher:
            yield StreamPipeline(session, batcher, instruments, capture, budget=budget, pacer=pacer, bulk=bulk)

    async def classify(
        self,
        pcm: bytes | FloatArray,
        *,
        sample_rate_hz: int,
        encoding: str = PCM_S16LE,
        model: str = "",
        version: int = 0,
        channels: int = 1,
    ) -> ClipResult:
        """A whole clip's scores: PCM bytes in ``encoding`` (or float samples) at ``sample_rate_hz``,
        ``channels`` interleaved channels mixed down to mono."""
        rate = check_sample_rate(sample_rate_hz)
        channels = check_channels(channels)
        loaded = self.store.resolve(model, version)
        nbytes = pcm.nbytes if isinstance(pcm, np.ndarray) else len(pcm)
        if nbytes == 0:
            raise AudioError("pcm is empty: send the clip's samples")
        with self.clip_budget.reserve(nbytes):
            return await self._classify(pcm, nbytes, rate, encoding, loaded, channels)

    async def _classify(
        self, pcm: bytes | FloatArray, nbytes: int, rate: int, encoding: str, loaded: LoadedModel, channels: int
    ) -> ClipResult:
        samples = pcm.astype(np.float32, copy=False) if isinstance(pcm, np.ndarray) else decode_pcm(pcm, encoding)
        samples = mix_down(samples, channels)
        if samples.size / rate > self.settings.max_stream_s:
            raise Refusal(
                "INVALID_ARGUMENT",
                f"clip of {samples.size / rate:.1f} s exceeds the limit of {self.settings.max_stream_s:g} s",
            )
        target = loaded.manifest.frontend.sample_rate
        windows = await asyncio.to_thread(lambda: clip_windows(resample(samples, rate, target), loaded))
        if isinstance(loaded.runner, StreamingRunner):  # each window from a zero state, its hops as batches
            probabilities = await asyncio.to_thread(_run_windows_in_blocks, loaded.runner, windows)
        else:
            with self.pool.lease(loaded) as batcher:
                probabilities = np.stack(await submit_fairly(batcher, windows, bulk=True))
        instruments = self.metrics.instruments(loaded)
        instruments.audio(samples, rate)
        instruments.clip(nbytes, windows, probabilities)
        m = loaded.manifest
        multilabel = m.output_kind == "sigmoid"
        scores = (
            probabilities.max(axis=0) if multilabel else aggregate_clip(probabilities, m.labels, m.background_labels)
        )
        best = int(scores.argmax())
        config = PostprocessConfig.from_settings(self.settings, m)
        return ClipResult(
            model=loaded,
            label=m.labels[best],
            score=float(scores[best]),
            scores={label: float(s) for label, s in zip(m.labels, scores, strict=True)},
            active=active_classes(scores, config) if multilabel else active_classes(scores, config, only_best=True),
        )

    def models(self) -> dict[str, dict[int, LoadedModel]]:
        """Every served model's valid versions."""
        return self.store.models()

    def model_versions(self, name: str) -> tuple[str, dict[int, LoadedModel]]:
        """One model's name (the default when ``name`` is empty) and versions, or :class:`ModelNotFound`."""
        name = name or self.store.default_name()
        if not name:
            raise ModelNotFound("no model is served")
        validate_model_name(name)
        models = self.store.models()
        if name not in models:
            available = ", ".join(sorted(models)) or "none"
            raise ModelNotFound(f"model {quote(name)} is not served (available: {available})")
        return name, models[name]
