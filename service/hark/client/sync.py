"""The synchronous client of the Hark gRPC API, used by ``hark`` and importable by applications.

It hides the protocol's mechanics: the config-first request order of a stream, real-time pacing by
wall clock, half-closing after the last chunk while still reading the server's final events, retries
(see :mod:`hark.client.channel`), and turning ``grpc.RpcError`` into :class:`HarkError` with the status
code a caller can branch on. :class:`~hark.client.aio.AsyncHarkClient` is the same client for asyncio.

Example::

    from hark.client import HarkClient, read_clip

    with HarkClient("127.0.0.1:50051") as client:
        samples = read_clip("yes.wav")                     # mono float32 at 16 kHz
        print(client.classify(samples).label)
        for item in client.stream(samples, realtime=False):
            print(item)
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import grpc
import numpy as np

from hark.client.audio import DEFAULT_SAMPLE_RATE, AudioChunk, FloatArray, Pacer, read_clip, split_chunks
from hark.client.channel import DEFAULT_MAX_ATTEMPTS, DEFAULT_SERVER, MAX_MESSAGE_BYTES, ChannelSpec
from hark.client.messages import audio_request, chunk_pcm, classify_request, config_request
from hark.client.results import (
    Classification,
    HarkError,
    ModelInfo,
    StreamDecoder,
    StreamItem,
    classification,
    model_info,
)
from hark.core.audio import BYTES_PER_SAMPLE, PCM_S16LE, encode_pcm
from hark.v1 import hark_pb2, hark_pb2_grpc

DEFAULT_CHUNK_MS: Final = 100


class HarkClient:
    """A connection to one Hark server. Thread-safe; close it (or use ``with``) to free the channel."""

    def __init__(
        self,
        target: str = DEFAULT_SERVER,
        *,
        timeout: float | None = 30.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        channel: grpc.Channel | None = None,
        tls_ca: Path | str | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        token: str | None = None,
    ) -> None:
        """``timeout`` is the deadline of each unary call in seconds; streams have none (they last as
        long as their audio). ``max_attempts`` (at most 5, 1 = no retry) bounds gRPC's retries of a call
        refused with UNAVAILABLE or RESOURCE_EXHAUSTED. Pass ``channel`` to use one you built
        (interceptors, other credentials; its own retry policy then applies).

        Any of ``tls_ca`` (the CA to trust), ``tls_cert``/``tls_key`` (a client certificate, for mutual
        TLS) makes the connection TLS; ``token`` is sent as ``authorization: Bearer <token>`` on every call.
        A bad file raises :class:`~hark.security.SecurityError`.
        """
        spec = ChannelSpec.build(
            target,
            max_message_bytes=max_message_bytes,
            max_attempts=max_attempts,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token=token,
        )
        self.target = target
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._metadata = spec.metadata
        self._channel = channel or spec.sync_channel()
        self._stub = hark_pb2_grpc.ClassifierStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> HarkClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- unary calls

    def classify(
        self,
        audio: FloatArray | Path | str,
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        model: str = "",
        version: int = 0,
        encoding: str = PCM_S16LE,
    ) -> Classification:
        """Classify a whole clip in one call: mono float samples at ``sample_rate``, or a file's path
        (any WAV/FLAC, read and resampled to ``sample_rate``).

        Raises :class:`AudioError` before sending a clip that cannot fit in one message (stream it
        instead) and :class:`HarkError` when the server refuses the call.
        """
        samples = audio if isinstance(audio, np.ndarray) else read_clip(audio, sample_rate)
        request = classify_request(
            encode_pcm(samples, encoding),
            sample_rate=sample_rate,
            model=model,
            version=version,
            encoding=encoding,
            max_message_bytes=self.max_message_bytes,
        )
        return classification(self._unary(self._stub.Classify, request))

    def models(self) -> list[ModelInfo]:
        """The models and versions the server can serve now."""
        response = self._unary(self._stub.ListModels, hark_pb2.ListModelsRequest())
        return [model_info(m) for m in response.models]

    list_models = models  # the earlier name

    def get_model(self, name: str) -> ModelInfo:
        """One model's versions; ``HarkError`` with NOT_FOUND when the server has no such model."""
        return model_info(self._unary(self._stub.GetModel, hark_pb2.GetModelRequest(name=name)))

    def health(self, service: str = "") -> str:
        """The ``grpc.health.v1`` status name of ``service`` ("" = the whole server), e.g. ``SERVING``.

        An unknown service is reported as ``SERVICE_UNKNOWN``, not raised; an unreachable server raises.
        """
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service))
        except HarkError as e:
            if e.code is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- streaming

    def stream(
        self,
        audio: FloatArray | Path | str | Iterable[AudioChunk],
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        model: str = "",
        version: int = 0,
        encoding: str = PCM_S16LE,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        realtime: bool = True,
        emit_scores: bool = False,
        timeout: float | None = None,
        class_thresholds: Mapping[str, float] | None = None,
        sensitivity: float = 0.0,
        allowed_classes: Sequence[str] = (),
        fast: bool = False,
    ) -> Generator[StreamItem, None, None]:
        """Stream audio and yield what the server answers: one :class:`StreamStarted`, then
        :class:`HopScores` (with ``emit_scores``) and :class:`Detection` events as they come.

        ``audio`` is a whole clip (a float array or a file's path, cut into ``chunk_ms`` chunks) or any
        iterable of chunks (float arrays or PCM bytes in ``encoding``), e.g. a microphone. With
        ``realtime`` the chunks are sent no faster than their audio lasts. After the last chunk the client
        half-closes and keeps yielding until the server ends the call, so the final events are not lost.
        Closing the iterator early (``break``, Ctrl-C) cancels the call. ``class_thresholds``, ``sensitivity``
        and ``allowed_classes`` change detection for this stream (``StreamConfig`` in the proto). ``fast``
        (with ``realtime=False``) declares a file, not live audio: the server serves it from its bulk budget,
        unpaced, or refuses it with ``RESOURCE_EXHAUSTED`` when that budget is full.
        """
        first = config_request(
            sample_rate=sample_rate,
            model=model,
            version=version,
            encoding=encoding,
            emit_scores=emit_scores,
            class_thresholds=class_thresholds,
            sensitivity=sensitivity,
            allowed_classes=allowed_classes,
            fast=fast,
        )
        if isinstance(audio, (str, Path)):
            audio = read_clip(audio, sample_rate)
        chunks: Iterable[AudioChunk] = (
            split_chunks(audio, sample_rate, chunk_ms) if isinstance(audio, np.ndarray) else audio
        )
        stop = threading.Event()
        pacer = Pacer(wait=stop.wait) if realtime else None
        requests = _requests(first, chunks, encoding, sample_rate, pacer, stop)
        call = self._stub.StreamClassify(requests, timeout=timeout, metadata=self._metadata)
        decoder = StreamDecoder()
        try:
            for response in call:
                if (item := decoder.item(response)) is not None:
                    yield item
        except grpc.RpcError as e:
            raise HarkError.from_rpc_error(e) from None
        finally:
            stop.set()  # wakes a request thread that is waiting for its next chunk's turn
            call.cancel()  # a no-op when the server already ended the call

    # -- internals

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise HarkError.from_rpc_error(e) from None


def _requests(
    first: hark_pb2.StreamRequest,
    chunks: Iterable[AudioChunk],
    encoding: str,
    sample_rate: int,
    pacer: Pacer | None,
    stop: threading.Event,
) -> Iterator[hark_pb2.StreamRequest]:
    """The request side of a stream, consumed by gRPC on its own thread; ends (half-closes) after the last chunk."""
    yield first
    bytes_per_second = BYTES_PER_SAMPLE[encoding] * sample_rate
    for chunk in chunks:
        if stop.is_set():
            return
        pcm = chunk_pcm(chunk, encoding)
        if pacer is not None:
            pacer.wait_turn()
            if stop.is_set():
                return
        yield audio_request(pcm)
        if pacer is not None:
            pacer.sent(len(pcm) / bytes_per_second)
