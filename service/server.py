"""The gRPC server: the Classifier servicer, health, reflection, model reloads and graceful shutdown.

The servicer is thin on purpose: it validates requests, drives a :class:`StreamSession` per stream and
the shared :class:`BatcherPool`, and maps exceptions to status codes in one place
(:func:`status_for`). Everything that computes lives in ``session``, ``batcher`` and ``postprocess``.

Status codes:

* ``INVALID_ARGUMENT``: audio before the config, a second config, an empty request, an unsupported
  sample rate or encoding, a partial sample or a non-finite float, a chunk over ``max_chunk_bytes``, an
  invalid model name, an empty or over-long ``Classify`` clip. Empty audio chunks are allowed and ignored.
* ``NOT_FOUND``: no such model or version (the message lists what is available).
* ``RESOURCE_EXHAUSTED``: more than ``max_streams`` concurrent streams; a stream longer than ``max_stream_s``;
  a message over ``max_message_bytes`` (refused by gRPC itself).
* ``DEADLINE_EXCEEDED``: no message on a stream for ``idle_timeout_s``.
* ``UNAVAILABLE``: the server is shutting down.
* ``INTERNAL``: inference failed for the batch a window was in (other streams carry on).

Run it with ``python -m service.server`` (settings from ``HARK_*``) or through the CLI's ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import numpy as np
import uvloop
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api.hark.v1 import hark_pb2, hark_pb2_grpc
from service.audio import PCM_F32LE, PCM_S16LE, AudioError, check_sample_rate, decode_pcm, resample
from service.batcher import Batcher, BatcherPool, InferenceError
from service.config import Settings
from service.control import Controller
from service.logging import configure_logging, get_logger
from service.metrics import HarkMetrics, MetricsServer, ModelInstruments
from service.model_store import (
    InvalidModelName,
    LoadedModel,
    ModelNotFound,
    ModelStore,
    RefreshReport,
    validate_model_name,
)
from service.postprocess import aggregate_clip
from service.security import (
    AudioCapture,
    SecurityError,
    StreamCapture,
    TokenAuthInterceptor,
    server_credentials,
    server_interceptors,
    tls_mode,
)
from service.session import Scored, StreamSession, StreamTooLong, Window, clip_windows

SERVICE_NAME = hark_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
ENCODINGS: dict[int, str] = {hark_pb2.PCM_S16LE: PCM_S16LE, hark_pb2.PCM_F32LE: PCM_F32LE}

# Chunks larger than this (about 8 s of 16 kHz int16) are decoded and featurised in a worker thread.
OFFLOAD_BYTES = 256 * 1024

log = get_logger("hark.server")


class StartupError(RuntimeError):
    """The server cannot start (no valid model, port taken); the message says what to fix."""


class RpcFailure(Exception):
    """A request the servicer refuses, with the status code and a message a person can act on."""

    def __init__(
        self, code: grpc.StatusCode, message: str, trailing_metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.trailing_metadata = trailing_metadata


class _CallEnded(Exception):
    """The call is over on the client's side (cancelled, deadline passed): nobody is left to answer."""


class _ClientStalled(Exception):
    """The client stopped reading responses: flow control has parked a write for ``idle_timeout_s``."""


# Sent with RESOURCE_EXHAUSTED at the stream limit: a client with a gRPC retry policy waits this long.
RETRY_PUSHBACK_MS = 1000


# What a request can do wrong (or suffer) that maps to a status code; anything else is a bug.
_REFUSALS = (RpcFailure, AudioError, InvalidModelName, ModelNotFound, StreamTooLong, InferenceError)


def status_for(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The one mapping from our exceptions to gRPC status codes."""
    if isinstance(error, RpcFailure):
        return error.code, error.message
    if isinstance(error, (AudioError, InvalidModelName)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, ModelNotFound):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, StreamTooLong):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, InferenceError):
        return grpc.StatusCode.INTERNAL, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}"


def _encoding(value: int) -> str:
    if value not in ENCODINGS:
        name = hark_pb2.AudioEncoding.Name(value) if value in hark_pb2.AudioEncoding.values() else str(value)
        raise AudioError(f"encoding {name} is not supported; set encoding to PCM_S16LE or PCM_F32LE")
    return ENCODINGS[value]


def _started(model: LoadedModel) -> hark_pb2.StreamResponse:
    m = model.manifest
    return hark_pb2.StreamResponse(
        started=hark_pb2.StreamStarted(
            model=m.name, version=m.version, labels=m.labels, window_s=m.window_s, hop_s=m.hop_s
        )
    )


def _responses(scored: Scored, emit_scores: bool) -> list[hark_pb2.StreamResponse]:
    out = []
    if emit_scores:
        w = scored.window
        out.append(
            hark_pb2.StreamResponse(
                scores=hark_pb2.WindowScores(
                    start_s=w.start_s, end_s=w.end_s, scores=scored.scores.tolist(), gated=w.gated
                )
            )
        )
    for e in scored.events:
        out.append(hark_pb2.StreamResponse(event=hark_pb2.Event(label=e.label, score=e.score, time_s=e.time_s)))
    return out


def model_info(name: str, versions: dict[int, LoadedModel]) -> hark_pb2.ModelInfo:
    items = []
    for number in sorted(versions):
        m = versions[number].manifest
        try:
            accuracy = float(m.metrics.get("test_accuracy", 0) or 0)
        except (TypeError, ValueError):
            accuracy = 0.0
        items.append(
            hark_pb2.ModelVersion(
                version=m.version,
                sha256=m.sha256,
                labels=m.labels,
                window_s=m.window_s,
                hop_s=m.hop_s,
                sample_rate_hz=m.frontend.sample_rate,
                test_accuracy=accuracy,
                created_at=m.created_at.isoformat(),
            )
        )
    return hark_pb2.ModelInfo(name=name, default_version=max(versions), versions=items)


class ClassifierService(hark_pb2_grpc.ClassifierServicer):
    """The ``hark.v1.Classifier`` servicer: validation and status codes over sessions and batchers."""

    def __init__(
        self, settings: Settings, store: ModelStore, pool: BatcherPool, metrics: HarkMetrics | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.metrics = metrics if metrics is not None else HarkMetrics(store)
        self.active_streams = 0  # StreamClassify calls, for max_streams
        self.active_calls = 0  # StreamClassify and Classify calls, which a drain waits for
        self.draining = False
        self._detached: set[asyncio.Task[None]] = set()  # statuses still being delivered (_abort_detached)
        self.capture = AudioCapture.from_settings(settings)  # None unless debug_capture_dir is set
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        self.active_calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active_calls -= 1
            if self.active_calls == 0:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new classification calls; wait up to ``grace`` s for running ones. True if they all ended."""
        self.draining = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # StreamClassify ----------------------------------------------------------------------------------

    async def StreamClassify(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        stream_id = uuid.uuid4().hex[:12]
        slog = log.bind(stream_id=stream_id)
        self.metrics.request("StreamClassify")
        if self.draining:
            await self._abort(context, slog, RpcFailure(grpc.StatusCode.UNAVAILABLE, "server is shutting down"))
        if self.active_streams >= self.settings.max_streams:
            await self._abort(
                context,
                slog,
                RpcFailure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server is at its limit of {self.settings.max_streams} concurrent streams; "
                    f"retry in {RETRY_PUSHBACK_MS / 1000:g} s",
                    (("grpc-retry-pushback-ms", str(RETRY_PUSHBACK_MS)),),
                ),
            )
        self.active_streams += 1
        try:
            with self._tracked():
                await self._stream(context, stream_id, slog)
        except grpc.aio.AbortError as e:
            raise _bare(e) from None
        finally:
            self.active_streams -= 1

    async def _stream(self, context: grpc.aio.ServicerContext, stream_id: str, slog: Any) -> None:
        started = time.monotonic()
        session: StreamSession | None = None
        capture: StreamCapture | None = None
        try:
            session = await self._open(context, stream_id)
            if self.capture is not None:
                capture = self.capture.stream(stream_id, session.sample_rate, session.encoding)
            slog = slog.bind(model=session.model.name, version=session.model.version)
            instruments = self.metrics.instruments(session.model)
            slog.info(
                "stream started",
                sample_rate_hz=session.sample_rate,
                encoding=session.encoding,
                emit_scores=session.emit_scores,
            )
            with self.pool.lease(session.model) as batcher:
                # Headers now (they are not flow-controlled), so a later abort never has to queue them
                # behind a write that a non-reading client has stalled.
                await context.send_initial_metadata(())
                await self._write(context, _started(session.model))
                while (request := await self._read(context)) is not None:
                    kind = request.WhichOneof("request")
                    if kind == "config":
                        raise RpcFailure(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "a second StreamConfig was sent; the config comes once, as the first message",
                        )
                    if kind != "audio":
                        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "empty StreamRequest: set config or audio")
                    pcm = request.audio.pcm
                    if capture is not None:
                        capture.add(pcm)
                    arrived = time.perf_counter()
                    instruments.chunk(len(pcm))
                    # A big chunk (seconds of audio) is decoded off the loop so other streams keep moving.
                    windows = (
                        await asyncio.to_thread(session.feed_pcm, pcm)
                        if len(pcm) > OFFLOAD_BYTES
                        else session.feed_pcm(pcm)
                    )
                    await self._score(context, session, batcher, windows, instruments, arrived)
                await self._score(context, session, batcher, session.finish(), instruments, time.perf_counter())
            slog.info(
                "stream finished",
                audio_s=round(session.audio_s, 3),
                windows=session.windows,
                events=session.events,
                wall_s=round(time.monotonic() - started, 3),
            )
        except _REFUSALS as e:
            await self._abort(context, slog, e)
        except grpc.aio.AbortError:
            raise
        except _ClientStalled as e:
            slog.info("request refused", code="DEADLINE_EXCEEDED", error=str(e))
            await self._abort_detached(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except _CallEnded:
            slog.info(
                "stream ended by the client or its deadline", audio_s=round(session.audio_s, 3) if session else 0.0
            )
        except Exception as e:  # a bug: say so, keep the details in the log, not on the wire
            slog.exception("stream failed")
            await self._abort(context, slog, e)
        except asyncio.CancelledError:
            slog.info("stream cancelled", audio_s=round(session.audio_s, 3) if session else 0.0)
            raise
        finally:
            if capture is not None:
                _save_capture(capture, slog)

    async def _open(self, context: grpc.aio.ServicerContext, stream_id: str) -> StreamSession:
        first = await self._read(context)
        if first is None:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "stream ended before a StreamConfig was sent")
        if first.WhichOneof("request") != "config":
            raise RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                "send a StreamConfig first: the first StreamRequest must set config, then audio chunks follow",
            )
        config = first.config
        check_sample_rate(config.sample_rate_hz)
        encoding = _encoding(config.encoding)
        model = self.store.resolve(config.model, config.version)
        instruments = self.metrics.instruments(model)
        session = StreamSession(
            model,
            sample_rate=config.sample_rate_hz,
            encoding=encoding,
            settings=self.settings,
            stream_id=stream_id,
            emit_scores=config.emit_scores,
            observe=instruments.observe,
            on_audio=instruments.audio,
        )
        return session

    async def _read(self, context: grpc.aio.ServicerContext) -> hark_pb2.StreamRequest | None:
        """The next request, or None at the client's half-close; a silent client is ended."""
        try:
            async with asyncio.timeout(self.settings.idle_timeout_s):
                request = await context.read()
        except TimeoutError:
            raise RpcFailure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no message for {self.settings.idle_timeout_s:g} s; send audio or close the stream",
            ) from None
        except DecodeError:
            raise RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT, "a message is not a valid hark.v1.StreamRequest (malformed protobuf)"
            ) from None
        if request is grpc.aio.EOF:
            remaining = context.time_remaining()
            if context.done() or (remaining is not None and remaining <= 0):
                raise _CallEnded  # not a half-close: the client went away or its deadline passed
            return None
        assert isinstance(request, hark_pb2.StreamRequest)
        return request

    async def _score(
        self,
        context: grpc.aio.ServicerContext,
        session: StreamSession,
        batcher: Batcher,
        windows: list[Window],
        instruments: ModelInstruments,
        arrived: float,
    ) -> None:
        """Score the windows a chunk completed; ``arrived`` (perf_counter) times each from its chunk."""
        if not windows:
            return
        # Gated (too quiet) windows skip the model: their scores come from the session, in window order.
        live = [w.features for w in windows if not w.gated]
        probabilities = iter(await batcher.submit_many(live) if live else [])
        for window in windows:
            p = session.gated_probabilities() if window.gated else next(probabilities)
            scored = session.score(window, p)
            for response in _responses(scored, session.emit_scores):
                await self._write(context, response)
            instruments.window(window.features, p, (e.label for e in scored.events), arrived)

    async def _write(self, context: grpc.aio.ServicerContext, response: hark_pb2.StreamResponse) -> None:
        """Send one response. A client that stops reading is ended after ``idle_timeout_s``: flow control
        alone would park this write, and the stream's slot and state, for as long as the client likes."""
        try:
            async with asyncio.timeout(self.settings.idle_timeout_s):
                await context.write(response)
        except TimeoutError:
            raise _ClientStalled(
                f"responses were not read for {self.settings.idle_timeout_s:g} s; read the stream while sending"
            ) from None
        except grpc.aio.AbortError:
            raise
        except grpc.aio.BaseError as e:  # the write failed in gRPC core: the client already ended the call
            raise _CallEnded from e

    async def _abort_detached(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        """End the call with ``code`` without waiting for the status to be delivered.

        The status queues behind the write the client is not reading, so awaiting it would hold the stream
        until the client reads or goes away. Started in a task, it marks the call aborted at once; the
        handler returns, its slot and state are freed, and gRPC delivers the status when it can.
        """

        async def send() -> None:
            with contextlib.suppress(grpc.aio.BaseError):  # AbortError once sent; any error if the client left
                await context.abort(code, message)

        self.metrics.error(code.name)
        task = asyncio.get_running_loop().create_task(send())
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        await asyncio.sleep(0)  # let the task start: the call is marked aborted before this handler returns

    # Classify ----------------------------------------------------------------------------------------

    async def Classify(
        self, request: hark_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> hark_pb2.ClassifyResponse:
        slog = log.bind(rpc="Classify")
        self.metrics.request("Classify")
        if self.draining:
            await self._abort(context, slog, RpcFailure(grpc.StatusCode.UNAVAILABLE, "server is shutting down"))
        with self._tracked():
            try:
                return await self._classify(request, context, slog)
            except grpc.aio.AbortError as e:
                raise _bare(e) from None

    async def _classify(
        self, request: hark_pb2.ClassifyRequest, context: grpc.aio.ServicerContext, slog: Any
    ) -> hark_pb2.ClassifyResponse:
        try:
            rate = check_sample_rate(request.sample_rate_hz)
            encoding = _encoding(request.encoding)
            model = self.store.resolve(request.model, request.version)
            slog = slog.bind(model=model.name, version=model.version)
            if not request.pcm:
                raise AudioError("pcm is empty: send the clip's samples")
            samples = decode_pcm(request.pcm, encoding)
            if samples.size / rate > self.settings.max_stream_s:
                raise RpcFailure(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"clip of {samples.size / rate:.1f} s exceeds the limit of {self.settings.max_stream_s:g} s",
                )
            windows = await asyncio.to_thread(
                lambda: clip_windows(resample(samples, rate, model.manifest.frontend.sample_rate), model)
            )
            with self.pool.lease(model) as batcher:
                probabilities = np.stack(await batcher.submit_many(list(windows)))
            instruments = self.metrics.instruments(model)
            instruments.audio(samples, rate)
            instruments.clip(len(request.pcm), windows, probabilities)
        except _REFUSALS as e:
            await self._abort(context, slog, e)
        m = model.manifest
        scores = aggregate_clip(probabilities, m.labels, m.background_labels)
        best = int(scores.argmax())
        return hark_pb2.ClassifyResponse(
            model=m.name,
            version=m.version,
            label=m.labels[best],
            score=float(scores[best]),
            scores=[hark_pb2.ClassScore(label=lb, score=float(s)) for lb, s in zip(m.labels, scores, strict=True)],
        )

    # Models ------------------------------------------------------------------------------------------

    async def ListModels(
        self, request: hark_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> hark_pb2.ListModelsResponse:
        models = self.store.models()
        return hark_pb2.ListModelsResponse(models=[model_info(name, models[name]) for name in sorted(models)])

    async def GetModel(
        self, request: hark_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> hark_pb2.ModelInfo:
        try:
            name = request.name or self.store.default_name()
            if not name:
                raise ModelNotFound("no model is served")
            validate_model_name(name)
            models = self.store.models()
            if name not in models:
                available = ", ".join(sorted(models)) or "none"
                raise ModelNotFound(f"model {name!r} is not served (available: {available})")
        except (InvalidModelName, ModelNotFound) as e:
            await self._abort(context, log.bind(rpc="GetModel"), e)
        return model_info(name, models[name])

    # Errors ------------------------------------------------------------------------------------------

    async def _abort(self, context: grpc.aio.ServicerContext, slog: Any, error: Exception) -> NoReturn:
        code, message = status_for(error)
        self.metrics.error(code.name)
        if code == grpc.StatusCode.INTERNAL:
            slog.error("request failed", code=code.name, error=message)
        else:
            slog.info("request refused", code=code.name, error=message)
        await context.abort(code, message, getattr(error, "trailing_metadata", ()))
        raise AssertionError("context.abort returned")  # pragma: no cover


def _bare(abort: grpc.aio.AbortError) -> grpc.aio.AbortError:
    """The abort without its traceback and context, to re-raise out of a handler.

    gRPC keeps a call's ``AbortError`` for as long as it keeps the call (until the client lets go of it);
    its traceback would pin every frame it passed through, and their locals (a stream's session, a clip's
    samples), that long. gRPC needs the same exception object back, so it is stripped, not replaced.
    """
    abort.__context__ = None
    return abort.with_traceback(None)


def _save_capture(capture: StreamCapture, slog: Any) -> None:
    """Write a debug capture on a worker thread; the stream does not wait for it, even when cancelled."""

    def write() -> None:
        try:
            if (path := capture.write()) is not None:
                slog.info("debug capture written", path=str(path))
        except Exception as e:
            slog.warning("debug capture failed", error=f"{type(e).__name__}: {e}")

    asyncio.get_running_loop().run_in_executor(None, write)


@dataclass
class RunningServer:
    """A started server. ``stop`` drains it; ``reload`` rescans the store now (the timer does it too)."""

    settings: Settings
    server: grpc.aio.Server
    store: ModelStore
    pool: BatcherPool
    servicer: ClassifierService
    health: health.aio.HealthServicer
    host: str
    port: int
    metrics: HarkMetrics
    controller: Controller
    metrics_server: MetricsServer | None = None
    _reload_task: asyncio.Task[None] | None = None
    _control_task: asyncio.Task[None] | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    async def reload(self) -> RefreshReport:
        """Rescan the store in a worker thread, log what changed, retire batchers of vanished versions."""
        report = await asyncio.to_thread(self.store.refresh)
        _log_report(report)
        self.metrics.on_refresh(report)
        models = self.store.models()
        self.pool.sweep(m for versions in models.values() for m in versions.values())
        if not self._stopping:
            status = health_pb2.HealthCheckResponse.SERVING if models else health_pb2.HealthCheckResponse.NOT_SERVING
            if not models:
                log.error("no valid model left in the store", store=str(self.store.root))
            for service in ("", SERVICE_NAME):
                await self.health.set(service, status)
        return report

    async def _reload_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Exception:
                log.exception("model store refresh failed")

    async def stop(self, grace: float | None = None) -> None:
        """Health to NOT_SERVING, refuse new classification calls with UNAVAILABLE, give running ones
        ``grace`` seconds (``settings.shutdown_grace_s`` when None), then close the server."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down", grace_s=grace, streams=self.servicer.active_streams)
        # Health first, so load balancers stop sending; the server keeps answering health checks and
        # model queries while the classification calls already running finish.
        await self.health.enter_graceful_shutdown()
        for task in (self._reload_task, self._control_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not await self.servicer.drain(grace):
            log.warning("grace period over; cancelling running calls", calls=self.servicer.active_calls)
        # A short tail for calls that are not classification (health watches, reflection); 0 when the
        # grace period is already spent.
        await self.server.stop(min(1.0, grace) if self.servicer.active_calls == 0 else 0)
        await self.pool.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
        log.info("stopped")
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


def _log_report(report: RefreshReport) -> None:
    for name, version in report.loaded:
        log.info("model version loaded", model=name, version=version)
    for path, reason in report.refused.items():
        log.warning("model version refused", path=path, reason=reason)
    for name, version in report.removed:
        log.info("model version removed", model=name, version=version)


async def start_server(settings: Settings) -> RunningServer:
    """Load the store, bind, start serving; raise :class:`StartupError` when that is impossible."""
    configure_logging(settings.log_format, settings.log_level)
    store = ModelStore(
        settings.model_store,
        default_model=settings.default_model,
        intra_op_threads=settings.intra_op_threads,
        warmup_batch=settings.max_batch,
    )
    metrics = HarkMetrics(store, drift_window_s=settings.drift_window_s)
    try:  # before any model loads: a security setting that cannot work stops the start at once
        interceptors = server_interceptors(settings, on_refusal=metrics.error)
        credentials = server_credentials(settings)
    except SecurityError as e:
        raise StartupError(str(e)) from e
    report = await asyncio.to_thread(store.refresh)
    _log_report(report)
    metrics.on_refresh(report)
    models = store.models()
    if not models:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in report.refused.items())
        raise StartupError(
            f"no valid model version in {settings.model_store}"
            + (f" (refused: {reasons})" if reasons else " (the store is empty or missing)")
        )
    if settings.default_model and settings.default_model not in models:
        raise StartupError(
            f"default model {settings.default_model!r} has no valid version in {settings.model_store} "
            f"(available: {', '.join(sorted(models))})"
        )

    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
    ]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    pool = BatcherPool(settings, observers=metrics.batch_observers)
    servicer = ClassifierService(settings, store, pool, metrics)
    metrics.active_streams.set_function(lambda: servicer.active_streams)
    controller = Controller(store, pool, settings, metrics)
    hark_pb2_grpc.add_ClassifierServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    target = f"{settings.host}:{settings.port}"
    try:
        port = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    except RuntimeError as e:
        raise StartupError(f"cannot listen on {target}: {e}") from e
    if port == 0:
        raise StartupError(f"cannot listen on {target}")
    log.info(
        "transport security",
        tls=tls_mode(settings),
        token_auth=any(isinstance(i, TokenAuthInterceptor) for i in interceptors),
        debug_capture=str(settings.debug_capture_dir) if settings.debug_capture_dir else None,
    )
    metrics_server = None
    if settings.metrics_port >= 0:
        try:
            metrics_server = MetricsServer(
                metrics,
                settings.metrics_host,
                settings.metrics_port,
                controller.http_handler(asyncio.get_running_loop()),
            )
        except OSError as e:
            await server.stop(0)
            await pool.close()
            raise StartupError(
                f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {e} "
                "(set HARK_METRICS_PORT to a free port, 0 for any, -1 to disable)"
            ) from e
        metrics_server.start()
    await server.start()
    running = RunningServer(
        settings=settings,
        server=server,
        store=store,
        pool=pool,
        servicer=servicer,
        health=health_servicer,
        host=settings.host,
        port=port,
        metrics=metrics,
        controller=controller,
        metrics_server=metrics_server,
    )
    if settings.control_interval_s > 0:
        running._control_task = asyncio.get_running_loop().create_task(
            controller.run_forever(settings.control_interval_s), name="control-check"
        )
    if settings.reload_interval_s > 0:
        running._reload_task = asyncio.get_running_loop().create_task(
            running._reload_forever(settings.reload_interval_s), name="model-reload"
        )
    return running


async def _serve(settings: Settings) -> int:
    running = await start_server(settings)
    log.info(
        f"listening on {running.address}",
        address=running.address,
        models=sorted(running.store.models()),
        metrics=running.metrics_server.url + "/metrics" if running.metrics_server else None,
    )
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals_seen = 0
    forced: set[asyncio.Task[None]] = set()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("signal received", signal=sig.name)
            stop_requested.set()
        else:  # a second signal: do not wait for the grace period
            log.warning("second signal: cancelling running streams now", signal=sig.name)
            forced.add(loop.create_task(running.server.stop(0)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stop_requested.wait()
        await running.stop(settings.shutdown_grace_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def serve(settings: Settings) -> int:
    """Run the server on uvloop until SIGTERM/SIGINT; return the process exit code (0 after a clean drain)."""
    configure_logging(settings.log_format, settings.log_level)
    try:
        return uvloop.run(_serve(settings))
    except StartupError as e:
        log.error("cannot start", error=str(e))
        return 1


def main() -> int:
    """``python -m service.server``: settings from ``HARK_*`` and ``HARK_CONFIG_FILE``."""
    return serve(Settings.load())


if __name__ == "__main__":
    sys.exit(main())
