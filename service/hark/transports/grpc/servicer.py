"""The ``hark.v1.Classifier`` servicer: a thin adapter from gRPC calls to the data plane.

Read → ``pipeline.feed`` → convert → write. What it owns is what only gRPC has: reading with an idle
timeout and writing under flow control (one :class:`StreamDeadline` per stream for both), call
cancellation and deadlines, and the one mapping from refusals to status codes (:meth:`ClassifierService._abort`).

Status codes:

* ``INVALID_ARGUMENT``: audio before the config, a second config, an empty request, an unsupported
  sample rate or encoding, a partial sample or a non-finite float, a chunk over ``max_chunk_bytes``, an
  invalid model name, an empty or over-long ``Classify`` clip. Empty audio chunks are allowed and ignored.
* ``NOT_FOUND``: no such model or version (the message lists what is available).
* ``RESOURCE_EXHAUSTED``: more than ``max_streams`` concurrent streams and clips, ``max_clip_calls`` clips,
  ``max_fast_streams`` fast streams, or ``max_streams_per_client`` for one connection or token; the
  in-flight audio budget full; a stream longer than ``max_stream_s``; a message over the receive limit
  (refused by gRPC itself).
* ``DEADLINE_EXCEEDED``: no audio on a stream for ``idle_timeout_s`` (empty chunks do not count); a
  ``Classify`` request not arrived whole within ``request_timeout_s``.
* ``UNAVAILABLE``: the server is shutting down.
* ``INTERNAL``: inference failed for the batch a window was in (other streams carry on).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from hark.core.audio import check_sample_rate
from hark.log_sampling import LogSampler
from hark.logging import get_logger
from hark.serving.admission import Admission
from hark.serving.errors import REFUSALS, Refusal, refusal_of
from hark.serving.pipeline import DataPlane, StreamPipeline
from hark.serving.session import Scored
from hark.transports.grpc import convert
from hark.transports.grpc.deadline import StreamDeadline
from hark.transports.grpc.security import client_keys_of
from hark.transports.grpc.whole import read_whole
from hark.v1 import hark_pb2, hark_pb2_grpc

SERVICE_NAME = hark_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name

log = get_logger("hark.server")


class _CallEnded(Exception):
    """The call is over on the client's side (cancelled, deadline passed): nobody is left to answer."""


class _ClientStalled(Exception):
    """The client stopped reading responses: flow control has parked a write for ``idle_timeout_s``."""


def status_code(refusal: Refusal) -> grpc.StatusCode:
    return grpc.StatusCode[refusal.code]


class ClassifierService(hark_pb2_grpc.ClassifierServicer):
    """The ``hark.v1.Classifier`` servicer over a :class:`DataPlane` and the server's :class:`Admission`."""

    def __init__(self, plane: DataPlane, admission: Admission) -> None:
        self.plane = plane
        self.admission = admission
        self.idle_timeout_s = plane.settings.idle_timeout_s
        self.metrics = plane.metrics
        self.request_timeout_s = plane.settings.request_timeout_s
        self._detached: set[asyncio.Task[None]] = set()  # statuses still being delivered (_abort_detached)
        self._ended_log = LogSampler()  # cancellations and vanished clients: at most 10 lines a second
        self._refused_log = LogSampler(20)  # refusals (every one is still counted in hark_errors_total)

    @property
    def active_streams(self) -> int:
        return self.admission.active_streams

    @property
    def active_calls(self) -> int:
        return self.admission.active_calls

    # StreamClassify ----------------------------------------------------------------------------------

    async def StreamClassify(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        stream_id = uuid.uuid4().hex[:12]
        slog = log.bind(stream_id=stream_id)
        self.metrics.request("StreamClassify")
        try:
            try:
                with self.admission.stream(client_keys_of(context)):
                    await self._stream(context, stream_id, slog)  # refuses what goes wrong inside itself
            except Refusal as e:  # draining, or at max_streams
                await self._abort(context, slog, e)
        except grpc.aio.AbortError as e:
            raise _bare(e) from None

    async def _stream(self, context: grpc.aio.ServicerContext, stream_id: str, slog: Any) -> None:
        started = time.monotonic()
        pipeline: StreamPipeline | None = None
        deadline = StreamDeadline(self.idle_timeout_s)
        try:
            deadline.idle_from(deadline.now())
            options = convert.stream_options(await self._first_config(context, deadline))
            with (
                self.admission.fast() if options.fast else contextlib.nullcontext(),
                self.plane.open_stream(options, stream_id) as pipeline,
            ):
                session = pipeline.session
                slog = slog.bind(model=pipeline.model.name, version=pipeline.model.version)
                slog.info(
                    "stream started",
                    sample_rate_hz=session.sample_rate,
                    encoding=session.encoding,
                    emit_scores=session.emit_scores,
                    fast=options.fast,
                )
                try:
                    # Headers now (they are not flow-controlled), so a later abort never has to queue them
                    # behind a write that a non-reading client has stalled.
                    await context.send_initial_metadata(())
                    await self._write(context, deadline, convert.started(pipeline.model))
                    # Idle means no audio: the idle clock restarts only when a chunk carries samples.
                    last_audio = deadline.now()
                    while True:
                        deadline.idle_from(last_audio)
                        if (request := await self._read(context, deadline)) is None:
                            break
                        kind = request.WhichOneof("request")
                        if kind == "config":
                            raise Refusal(
                                "INVALID_ARGUMENT",
                                "a second StreamConfig was sent; the config comes once, as the first message",
                            )
                        if kind != "audio":
                            raise Refusal("INVALID_ARGUMENT", "empty StreamRequest: set config or audio")
                        await self._send(context, deadline, pipeline, await pipeline.feed(request.audio.pcm))
                        if request.audio.pcm:  # from here: time spent pacing or writing is not idle
                            last_audio = deadline.now()
                    await self._send(context, deadline, pipeline, await pipeline.finish())
                finally:
                    if pipeline.capture is not None:
                        _save_capture(pipeline, slog)
            slog.info(
                "stream finished",
                audio_s=round(session.audio_s, 3),
                windows=session.windows,
                events=session.events,
                wall_s=round(time.monotonic() - started, 3),
            )
        except REFUSALS as e:
            await self._abort(context, slog, e)
        except grpc.aio.AbortError:
            raise
        except _ClientStalled as e:
            slog.info("request refused", code="DEADLINE_EXCEEDED", error=str(e))
            await self._abort_detached(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except _CallEnded:
            if (skipped := self._ended_log.allow()) is not None:
                slog.info("stream ended by the client or its deadline", audio_s=_audio_s(pipeline), skipped=skipped)
        except Exception as e:  # a bug: say so, keep the details in the log, not on the wire
            slog.exception("stream failed")
            await self._abort(context, slog, e)
        except asyncio.CancelledError:
            if (skipped := self._ended_log.allow()) is not None:
                slog.info("stream cancelled", audio_s=_audio_s(pipeline), skipped=skipped)
            raise
        finally:
            deadline.close()

    async def _first_config(self, context: grpc.aio.ServicerContext, deadline: StreamDeadline) -> hark_pb2.StreamConfig:
        first = await self._read(context, deadline)
        if first is None:
            raise Refusal("INVALID_ARGUMENT", "stream ended before a StreamConfig was sent")
        if first.WhichOneof("request") != "config":
            raise Refusal(
                "INVALID_ARGUMENT",
                "send a StreamConfig first: the first StreamRequest must set config, then audio chunks follow",
            )
        return first.config

    async def _read(self, context: grpc.aio.ServicerContext, deadline: StreamDeadline) -> hark_pb2.StreamRequest | None:
        """The next request, or None at the client's half-close; a client that sends no audio by the
        ``deadline`` is ended. The deadline is paused once a request is in: the server's own work is not idle."""
        try:
            request = await context.read()
        except asyncio.CancelledError:
            if deadline.expired() is None:
                raise
            raise Refusal(
                "DEADLINE_EXCEEDED", f"no audio for {self.idle_timeout_s:g} s; send audio or close the stream"
            ) from None
        except DecodeError:
            raise Refusal(
                "INVALID_ARGUMENT", "a message is not a valid hark.v1.StreamRequest (malformed protobuf)"
            ) from None
        finally:
            deadline.pause()  # whatever came, the server answers it without a deadline of its own
        if request is grpc.aio.EOF:
            remaining = context.time_remaining()
            if context.done() or (remaining is not None and remaining <= 0):
                raise _CallEnded  # not a half-close: the client went away or its deadline passed
            return None
        assert isinstance(request, hark_pb2.StreamRequest)
        return request

    async def _send(
        self,
        context: grpc.aio.ServicerContext,
        deadline: StreamDeadline,
        pipeline: StreamPipeline,
        results: list[Scored],
    ) -> None:
        for scored in results:
            for response in convert.stream_responses(scored, pipeline.emit_scores):
                await self._write(context, deadline, response)

    async def _write(
        self, context: grpc.aio.ServicerContext, deadline: StreamDeadline, response: hark_pb2.StreamResponse
    ) -> None:
        """Send one response. A client that stops reading is ended after ``idle_timeout_s``: flow control
        alone would park this write, and the stream's slot and state, for as long as the client likes."""
        deadline.writing()
        try:
            await context.write(response)
        except asyncio.CancelledError:
            if deadline.expired() is None:
                raise
            raise _ClientStalled(
                f"responses were not read for {self.idle_timeout_s:g} s; read the stream while sending"
            ) from None
        except grpc.aio.AbortError:
            raise
        except grpc.aio.BaseError as e:  # the write failed in gRPC core: the client already ended the call
            raise _CallEnded from e
        finally:
            deadline.pause()

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
        """``Classify`` as the generated stubs register it (a unary handler: gRPC reads the whole body
        before it runs). :func:`add_to_server` registers :meth:`ClassifyAdmitted` instead."""
        return await self._classify(context, request)

    async def ClassifyAdmitted(self, requests: Any, context: grpc.aio.ServicerContext) -> hark_pb2.ClassifyResponse:
        """``Classify`` registered as request-streaming, so a call is admitted before its body is read.

        Hostile clients: gRPC buffers a unary request whole before any handler runs, so 200 unfinished
        4 MB requests held 1.4 GB that no limit of Hark's could see. Here a call takes its slot (``max_streams``,
        ``max_clip_calls``, the per-client limit) at the headers; until then gRPC holds only one flow-control
        window of its bytes. Admitted, it has ``request_timeout_s`` for the message to arrive whole.
        The client sees an ordinary unary call.
        """
        return await self._classify(context, requests)

    async def _classify(self, context: grpc.aio.ServicerContext, source: Any) -> hark_pb2.ClassifyResponse:
        slog = log.bind(rpc="Classify")
        self.metrics.request("Classify")
        try:
            try:
                with self.admission.clip(client_keys_of(context)):
                    request = source
                    if not isinstance(request, hark_pb2.ClassifyRequest):
                        request = await read_whole(context, hark_pb2.ClassifyRequest, self.request_timeout_s)
                    check_sample_rate(request.sample_rate_hz)
                    encoding = convert.encoding_of(request.encoding)
                    result = await self.plane.classify(
                        request.pcm,
                        sample_rate_hz=request.sample_rate_hz,
                        encoding=encoding,
                        model=request.model,
                        version=request.version,
                        channels=request.channels,
                    )
            except REFUSALS as e:
                await self._abort(context, slog, e)
            return convert.classify_response(result)
        except grpc.aio.AbortError as e:
            raise _bare(e) from None

    # Models ------------------------------------------------------------------------------------------

    async def ListModels(
        self, request: hark_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> hark_pb2.ListModelsResponse:
        models = self.plane.models()
        return hark_pb2.ListModelsResponse(models=[convert.model_info(name, models[name]) for name in sorted(models)])

    async def GetModel(
        self, request: hark_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> hark_pb2.ModelInfo:
        try:
            name, versions = self.plane.model_versions(request.name)
        except REFUSALS as e:
            await self._abort(context, log.bind(rpc="GetModel"), e)
        return convert.model_info(name, versions)

    # Errors ------------------------------------------------------------------------------------------

    async def _abort(self, context: grpc.aio.ServicerContext, slog: Any, error: Exception) -> NoReturn:
        refusal = refusal_of(error)
        self.metrics.error(refusal.code)
        if refusal.code == "INTERNAL":
            slog.error("request failed", code=refusal.code, error=refusal.message)
        elif (skipped := self._refused_log.allow()) is not None:  # a flood of refusals: 10 lines a second
            slog.info("request refused", code=refusal.code, error=refusal.message, skipped=skipped)
        trailers = (
            (("grpc-retry-pushback-ms", str(refusal.retry_after_ms)),) if refusal.retry_after_ms is not None else ()
        )
        await context.abort(status_code(refusal), refusal.message, trailers)
        raise AssertionError("context.abort returned")  # pragma: no cover


def add_to_server(servicer: ClassifierService, server: grpc.aio.Server) -> None:
    """Register the servicer like ``add_ClassifierServicer_to_server``, but with ``Classify`` as a
    request-streaming handler (:meth:`ClassifierService.ClassifyAdmitted`): same wire, same clients."""
    handlers = {
        "StreamClassify": grpc.stream_stream_rpc_method_handler(
            servicer.StreamClassify,
            request_deserializer=hark_pb2.StreamRequest.FromString,
            response_serializer=hark_pb2.StreamResponse.SerializeToString,
        ),
        "Classify": grpc.stream_unary_rpc_method_handler(
            servicer.ClassifyAdmitted,
            request_deserializer=hark_pb2.ClassifyRequest.FromString,
            response_serializer=hark_pb2.ClassifyResponse.SerializeToString,
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels,
            request_deserializer=hark_pb2.ListModelsRequest.FromString,
            response_serializer=hark_pb2.ListModelsResponse.SerializeToString,
        ),
        "GetModel": grpc.unary_unary_rpc_method_handler(
            servicer.GetModel,
            request_deserializer=hark_pb2.GetModelRequest.FromString,
            response_serializer=hark_pb2.ModelInfo.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def _audio_s(pipeline: StreamPipeline | None) -> float:
    return round(pipeline.session.audio_s, 3) if pipeline is not None else 0.0


def _bare(abort: grpc.aio.AbortError) -> grpc.aio.AbortError:
    """The abort without its traceback and context, to re-raise out of a handler.

    gRPC keeps a call's ``AbortError`` for as long as it keeps the call (until the client lets go of it);
    its traceback would pin every frame it passed through, and their locals (a stream's session, a clip's
    samples), that long. gRPC needs the same exception object back, so it is stripped, not replaced.
    """
    abort.__context__ = None
    return abort.with_traceback(None)


def _save_capture(pipeline: StreamPipeline, slog: Any) -> None:
    """Write a debug capture on a worker thread; the stream does not wait for it, even when cancelled."""
    capture = pipeline.capture
    assert capture is not None

    def write() -> None:
        try:
            if (path := capture.write()) is not None:
                slog.info("debug capture written", path=str(path))
        except Exception as e:
            slog.warning("debug capture failed", error=f"{type(e).__name__}: {e}")

    asyncio.get_running_loop().run_in_executor(None, write)
