"""The asyncio client (grpc.aio): the same calls as :class:`~hark.client.HarkClient`, awaited.

``classify`` and ``models`` are coroutines; ``stream`` is an async iterator of the same items. Audio may
come from an async source (an ``AsyncIterable`` of chunks: a microphone callback feeding a queue, a
WebSocket) or a plain one. Retries, TLS and the token work as in the sync client.

Example::

    import asyncio
    from hark.client import AsyncHarkClient, Detection

    async def main() -> None:
        async with AsyncHarkClient("127.0.0.1:50051") as client:
            print((await client.classify("yes.wav")).label)
            async for item in client.stream("yes.wav", realtime=False):
                if isinstance(item, Detection):
                    print(item.label, item.time_s)

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

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
from hark.client.sync import DEFAULT_CHUNK_MS
from hark.core.audio import BYTES_PER_SAMPLE, PCM_S16LE, encode_pcm
from hark.v1 import hark_pb2, hark_pb2_grpc


class AsyncHarkClient:
    """A grpc.aio connection to one Hark server; use it on one event loop and close it (or ``async with``)."""

    def __init__(
        self,
        target: str = DEFAULT_SERVER,
        *,
        timeout: float | None = 30.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        channel: grpc.aio.Channel | None = None,
        tls_ca: Path | str | None = None,
        tls_cert: Path | str | None = None,
        tls_key: Path | str | None = None,
        token: str | None = None,
    ) -> None:
        """The options of :class:`~hark.client.HarkClient`, with ``channel`` a ``grpc.aio.Channel``."""
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
        self._channel = channel or spec.aio_channel()
        self._stub = hark_pb2_grpc.ClassifierStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> AsyncHarkClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- unary calls

    async def classify(
        self,
        audio: FloatArray | Path | str,
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        model: str = "",
        version: int = 0,
        encoding: str = PCM_S16LE,
    ) -> Classification:
        """Classify a whole clip (float samples or a file's path) in one call; see ``HarkClient.classify``."""
        if isinstance(audio, np.ndarray):
            samples = audio
        else:
            samples = await asyncio.to_thread(read_clip, audio, sample_rate)
        request = classify_request(
            encode_pcm(samples, encoding),
            sample_rate=sample_rate,
            model=model,
            version=version,
            encoding=encoding,
            max_message_bytes=self.max_message_bytes,
        )
        return classification(await self._unary(self._stub.Classify, request))

    async def models(self) -> list[ModelInfo]:
        """The models and versions the server can serve now."""
        response = await self._unary(self._stub.ListModels, hark_pb2.ListModelsRequest())
        return [model_info(m) for m in response.models]

    async def get_model(self, name: str) -> ModelInfo:
        """One model's versions; ``HarkError`` with NOT_FOUND when the server has no such model."""
        return model_info(await self._unary(self._stub.GetModel, hark_pb2.GetModelRequest(name=name)))

    # -- streaming

    async def stream(
        self,
        audio: FloatArray | Path | str | Iterable[AudioChunk] | AsyncIterable[AudioChunk],
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        model: str = "",
        version: int = 0,
        encoding: str = PCM_S16LE,
        chunk_ms: float = DEFAULT_CHUNK_MS,
        realtime: bool = True,
        emit_scores: bool = False,
        timeout: float | None = None,
        fast: bool = False,
    ) -> AsyncIterator[StreamItem]:
        """Stream audio and yield the server's answers as they come; see ``HarkClient.stream``.

        Leaving the ``async for`` early (``break``, cancellation) cancels the call.
        """
        first = config_request(
            sample_rate=sample_rate,
            model=model,
            version=version,
            encoding=encoding,
            emit_scores=emit_scores,
            fast=fast,
        )
        if isinstance(audio, (str, Path)):
            audio = await asyncio.to_thread(read_clip, audio, sample_rate)
        chunks: Iterable[AudioChunk] | AsyncIterable[AudioChunk] = (
            split_chunks(audio, sample_rate, chunk_ms) if isinstance(audio, np.ndarray) else audio
        )
        pacer = Pacer() if realtime else None
        call = self._stub.StreamClassify(timeout=timeout, metadata=self._metadata)
        writer = asyncio.ensure_future(_write(call, first, _requests(chunks, encoding, sample_rate, pacer)))
        decoder = StreamDecoder()
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                if (item := decoder.item(response)) is not None:
                    yield item
        except grpc.RpcError as e:
            if writer.done() and not writer.cancelled() and (failure := writer.exception()) is not None:
                raise failure from None  # the audio source failed, and the call was cancelled for it
            raise HarkError.from_rpc_error(e) from None
        finally:
            writer.cancel()
            call.cancel()  # a no-op when the server already ended the call

    # -- internals

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise HarkError.from_rpc_error(e) from None


async def _write(call: Any, first: hark_pb2.StreamRequest, requests: AsyncIterator[hark_pb2.StreamRequest]) -> None:
    """Send the config, wait for the server's headers, then the audio, then half-close.

    The server sends its headers once it has accepted the stream, and refuses without them (a full server,
    an unknown model). Audio written into a refused call can make grpc.aio replace the server's status with
    ``INTERNAL: Internal error from Core`` (grpc/grpc#36066), so no audio goes out before the headers. A
    call that ends later ends the writing quietly; an audio source that fails cancels the call, and its
    error is raised to the reader.
    """
    try:
        await call.write(first)
        await call.initial_metadata()
        if call.done():
            return
        async for request in requests:
            await call.write(request)
        await call.done_writing()
    except (grpc.RpcError, asyncio.InvalidStateError):
        return
    except Exception:
        call.cancel()
        raise


async def _requests(
    chunks: Iterable[AudioChunk] | AsyncIterable[AudioChunk],
    encoding: str,
    sample_rate: int,
    pacer: Pacer | None,
) -> AsyncIterator[hark_pb2.StreamRequest]:
    """The audio of a stream, paced in real time when ``pacer`` is given."""
    bytes_per_second = BYTES_PER_SAMPLE[encoding] * sample_rate
    async for chunk in _aiter(chunks):
        pcm = chunk_pcm(chunk, encoding)
        if pacer is not None and (delay := pacer.delay()) > 0:
            await asyncio.sleep(delay)
        yield audio_request(pcm)
        if pacer is not None:
            pacer.sent(len(pcm) / bytes_per_second)


async def _aiter(chunks: Iterable[AudioChunk] | AsyncIterable[AudioChunk]) -> AsyncIterator[AudioChunk]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk
