"""The real server over real gRPC: the Classifier contract, health, reflection, reloads and shutdown.

Every test talks to ``start_server`` on 127.0.0.1 (ephemeral port) through a grpc.aio channel, with a
tiny but real ONNX model run by onnxruntime. Nothing of ours is mocked. Streams the server ends while the
client may still be writing use the blocking client (``refusal_status``): grpc.aio can report INTERNAL
instead of the server's status then (grpc/grpc#36066).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hark.config import Settings
from hark.core.audio import encode_pcm, resample
from hark.core.model_store import MODEL_FILE
from hark.server import StartupError, start_server
from hark.v1 import hark_pb2, hark_pb2_grpc
from loadtest.soak import audio, config, expired_stream_status, refusal_status
from tests.fixtures_models import noise, pcm_chunks, publish_tiny, quiet, utterance
from tests.integration.conftest import Hark, StartHark

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# Client helpers ---------------------------------------------------------------------------------------


def audio_requests(
    samples: np.ndarray, rate: int = 16_000, encoding: str = "pcm_s16le"
) -> list[hark_pb2.StreamRequest]:
    return [audio(c) for c in pcm_chunks(samples, rate=rate, encoding=encoding)]


@dataclass
class StreamResult:
    responses: list[hark_pb2.StreamResponse]
    code: grpc.StatusCode
    details: str

    def of(self, kind: str) -> list[object]:
        return [getattr(r, kind) for r in self.responses if r.WhichOneof("response") == kind]

    @property
    def started(self) -> hark_pb2.StreamStarted:
        (started,) = self.of("started")
        assert isinstance(started, hark_pb2.StreamStarted)
        return started

    @property
    def scores(self) -> list[hark_pb2.WindowScores]:
        return self.of("scores")  # type: ignore[return-value]

    @property
    def events(self) -> list[hark_pb2.Event]:
        return self.of("event")  # type: ignore[return-value]


async def _paced(requests: Iterable[hark_pb2.StreamRequest], pace_s: float) -> AsyncIterator[hark_pb2.StreamRequest]:
    for request in requests:
        yield request
        if pace_s:
            await asyncio.sleep(pace_s)


async def run_stream(
    stub: hark_pb2_grpc.ClassifierStub, requests: Iterable[hark_pb2.StreamRequest], pace_s: float = 0.0
) -> StreamResult:
    call = stub.StreamClassify(_paced(requests, pace_s))
    responses = []
    try:
        async for response in call:
            responses.append(response)
    except grpc.aio.AioRpcError:
        pass
    return StreamResult(responses, await call.code(), await call.details() or "")


class LiveStream:
    """A stream the test drives message by message (for reloads and shutdowns in the middle)."""

    def __init__(self, stub: hark_pb2_grpc.ClassifierStub) -> None:
        self._queue: asyncio.Queue[hark_pb2.StreamRequest | None] = asyncio.Queue()
        self.call = stub.StreamClassify(self._requests())
        self.responses: list[hark_pb2.StreamResponse] = []

    async def _requests(self) -> AsyncIterator[hark_pb2.StreamRequest]:
        while (request := await self._queue.get()) is not None:
            yield request

    def send(self, *requests: hark_pb2.StreamRequest) -> None:
        for request in requests:
            self._queue.put_nowait(request)

    async def receive(self, kind: str) -> hark_pb2.StreamResponse:
        """Read responses until one of ``kind`` arrives."""
        while True:
            response = await asyncio.wait_for(self.call.read(), 10)
            assert response is not grpc.aio.EOF, "stream ended early"
            self.responses.append(response)
            if response.WhichOneof("response") == kind:
                return response

    async def finish(self) -> StreamResult:
        self._queue.put_nowait(None)
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                self.responses.append(response)
        except grpc.aio.AioRpcError:
            pass
        return StreamResult(self.responses, await self.call.code(), await self.call.details() or "")


def expected_windows(n_samples: int) -> int:
    """Windows for a 16 kHz stream of ``n_samples``: one per hop once 98 frames exist, plus the tail."""
    frames = 1 + (n_samples - 400) // 160
    windows = 1 + (frames - 98) // 10
    last_end = 400 + (98 + (windows - 1) * 10 - 1) * 160
    return windows + (1 if n_samples > last_end else 0)


# Health and reflection ----------------------------------------------------------------------------------


async def test_health_is_serving(hark: Hark) -> None:
    stub = health_pb2_grpc.HealthStub(hark.channel)
    for service in ("", "hark.v1.Classifier"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_the_classifier(hark: Hark) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(hark.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="hark.v1.Classifier"),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    services = {s.name for s in responses[0].list_services_response.service}
    assert {"hark.v1.Classifier", "grpc.health.v1.Health"} <= services
    assert responses[1].file_descriptor_response.file_descriptor_proto  # what grpcurl needs to build requests


# StreamClassify -----------------------------------------------------------------------------------------


async def test_stream_reports_its_model_then_scores_every_hop(hark: Hark) -> None:
    samples = noise(2.0)
    result = await run_stream(hark.stub, [config(emit_scores=True), *audio_requests(samples)])
    assert result.code == OK, result.details
    assert result.responses[0].WhichOneof("response") == "started"
    started = result.started
    assert (started.model, started.version) == ("tiny", 1)
    assert started.labels[0] == "yes" and len(started.labels) == 12
    assert started.window_s == pytest.approx(0.995)
    assert started.hop_s == pytest.approx(0.1)
    scores = result.scores
    assert len(scores) == expected_windows(samples.size) == 12
    for k, s in enumerate(scores):
        assert s.start_s == pytest.approx(k * 0.1)
        assert s.end_s == pytest.approx(k * 0.1 + 0.995)
        assert len(s.scores) == 12
        assert sum(s.scores) == pytest.approx(1.0, abs=1e-4)
    assert scores[3].scores[0] > 0.9  # loud noise throughout: the tiny model hears its word


async def test_one_word_is_one_event_at_its_time(hark: Hark) -> None:
    result = await run_stream(hark.stub, [config(), *audio_requests(utterance(1.0, 0.8, 1.5))])
    assert result.code == OK, result.details
    assert result.scores == []  # not asked for
    assert [(e.label, 1.0 <= e.time_s <= 1.8) for e in result.events] == [("yes", True)]
    assert result.events[0].score >= 0.6


@pytest.mark.parametrize(
    ("rate", "encoding"), [(48_000, "pcm_s16le"), (8_000, "pcm_s16le"), (44_100, "pcm_f32le"), (16_000, "pcm_f32le")]
)
async def test_any_supported_rate_and_encoding_gives_the_same_stream(hark: Hark, rate: int, encoding: str) -> None:
    samples16 = utterance(1.0, 0.8, 1.2)
    samples = resample(samples16, 16_000, rate)
    proto_encoding = hark_pb2.PCM_S16LE if encoding == "pcm_s16le" else hark_pb2.PCM_F32LE
    requests = [config(sample_rate_hz=rate, encoding=proto_encoding, emit_scores=True)]
    result = await run_stream(hark.stub, requests + audio_requests(samples, rate, encoding))
    assert result.code == OK, result.details
    assert len(result.scores) == expected_windows(samples16.size)
    loudest = max(result.scores, key=lambda s: s.scores[0])
    assert 1.0 <= (loudest.start_s + loudest.end_s) / 2 <= 1.8  # the word is where it was sent
    if rate >= 16_000:  # at 8 kHz the noise burst loses its top half, too quiet for the tiny model's word
        assert [(e.label, 1.0 <= e.time_s <= 1.8) for e in result.events] == [("yes", True)]


async def test_empty_chunks_are_ignored(hark: Hark) -> None:
    samples = noise(1.2)
    requests = [config(emit_scores=True), audio(b""), *audio_requests(samples), audio(b"")]
    result = await run_stream(hark.stub, requests)
    assert result.code == OK, result.details
    assert len(result.scores) == expected_windows(samples.size)


async def test_a_stream_without_audio_ends_cleanly(hark: Hark) -> None:
    result = await run_stream(hark.stub, [config(emit_scores=True)])
    assert result.code == OK
    assert result.scores == [] and result.started.model == "tiny"


BAD_STREAMS = {
    "audio first": ([audio(b"\x00\x00")], INVALID, "send a StreamConfig first"),
    "second config": ([config(), audio(b"\x00\x00"), config()], INVALID, "second StreamConfig"),
    "empty request": ([config(), hark_pb2.StreamRequest()], INVALID, "set config or audio"),
    "no config at all": ([], INVALID, "before a StreamConfig"),
    "unsupported rate": ([config(sample_rate_hz=12_345)], INVALID, "use one of 8000, 11025, 16000"),
    "zero rate": ([config(sample_rate_hz=0)], INVALID, "16000"),
    "unspecified encoding": ([config(encoding=0)], INVALID, "set encoding to PCM_S16LE or PCM_F32LE"),
    "unknown encoding": ([config(encoding=7)], INVALID, "PCM_S16LE or PCM_F32LE"),
    "odd byte count": ([config(), audio(b"\x00\x01\x02")], INVALID, "3 bytes is not a whole number of 2-byte"),
    "NaN floats": (
        [config(encoding=hark_pb2.PCM_F32LE), audio(np.array([0.1, np.nan], "<f4").tobytes())],
        INVALID,
        "NaN",
    ),
    "oversized chunk": ([config(), audio(bytes(64_002))], INVALID, "exceeds the limit of 64000 bytes"),
    "path in model name": ([config(model="../tiny")], INVALID, "is not valid"),
    "slash in model name": ([config(model="a/b")], INVALID, "is not valid"),
    "unknown model": ([config(model="nope")], grpc.StatusCode.NOT_FOUND, "available: tiny"),
    "unknown version": ([config(version=7)], grpc.StatusCode.NOT_FOUND, "no valid version 7 (available: 1)"),
}


async def test_bad_streams_get_a_clear_status_and_a_good_stream_is_unaffected(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    h = await start_hark(tiny_model_store, max_chunk_bytes=64_000)
    samples = noise(2.0)
    good = asyncio.ensure_future(run_stream(h.stub, [config(emit_scores=True), *audio_requests(samples)], pace_s=0.01))
    bad = await asyncio.gather(*(run_stream(h.stub, requests) for requests, _, _ in BAD_STREAMS.values()))
    for name, (result, (_, code, message)) in zip(
        BAD_STREAMS, zip(bad, BAD_STREAMS.values(), strict=True), strict=True
    ):
        assert (result.code, message in result.details) == (code, True), f"{name}: {result.code} {result.details!r}"
    good_result = await good
    assert good_result.code == OK, good_result.details
    assert len(good_result.scores) == expected_windows(samples.size)
    assert h.running.servicer.active_streams == 0


async def test_more_streams_than_max_streams_are_refused(start_hark: StartHark, tiny_model_store: Path) -> None:
    h = await start_hark(tiny_model_store, max_streams=1)
    first = LiveStream(h.stub)
    first.send(config())
    await first.receive("started")
    second = await run_stream(h.stub, [config()])
    assert second.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1 concurrent streams" in second.details
    assert (await first.finish()).code == OK
    assert (await run_stream(h.stub, [config()])).code == OK  # the slot is free again


async def test_a_silent_client_is_ended(start_hark: StartHark, tiny_model_store: Path) -> None:
    """A client sends its config, then neither audio nor a close: the server ends it, never before the timeout.

    The idle clock runs from the call's start, config included: the channel is connected first and the timeout
    is a whole second, so that a loaded machine's delay in sending the config cannot use it up (0.3 s could).
    """
    h = await start_hark(tiny_model_store, idle_timeout_s=1.0)
    await asyncio.wait_for(h.channel.channel_ready(), 10)
    stream = LiveStream(h.stub)
    began = time.monotonic()
    stream.send(config())
    await stream.receive("started")
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while await asyncio.wait_for(stream.call.read(), 10) is not grpc.aio.EOF:
            pass
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no audio for 1 s" in (ended.value.details() or "")
    assert time.monotonic() - began >= 1.0


async def test_a_cancelled_or_expired_stream_frees_its_slot(hark: Hark) -> None:
    cancelled = LiveStream(hark.stub)
    cancelled.send(config(), *audio_requests(noise(1.2)))
    await cancelled.receive("started")
    cancelled.call.cancel()
    expired = await asyncio.to_thread(expired_stream_status, hark.address, 0.3)
    assert expired == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):
        if hark.running.servicer.active_calls == 0:
            break
        await asyncio.sleep(0.02)
    assert (hark.running.servicer.active_streams, hark.running.servicer.active_calls) == (0, 0)


async def test_a_stream_longer_than_max_stream_s_is_ended(start_hark: StartHark, tiny_model_store: Path) -> None:
    h = await start_hark(tiny_model_store, max_stream_s=1.0)
    # The blocking client: the refusal comes at 1.1 s of the 1.5 s sent at once, and a grpc.aio client still
    # writing the rest can report INTERNAL instead of the server's status (grpc/grpc#36066).
    code, details, _ = await asyncio.to_thread(refusal_status, h.address, [config(), *audio_requests(noise(1.5))])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 1 s of audio" in details


async def test_an_inference_failure_is_internal_for_that_model_only(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    # "brittle" passes the store's warm-up (a batch of 2 when max_batch is 1) and fails on any other batch size.
    publish_tiny(tiny_model_store, "brittle", brittle=True)
    h = await start_hark(tiny_model_store, max_batch=1)
    samples = noise(1.5)
    # The blocking client for the failing stream: it fails at its first window, with later chunks perhaps
    # still on their way, and a grpc.aio client still writing can report INTERNAL "Internal error from Core"
    # instead of the server's details (grpc/grpc#36066).
    (code, details, _), good = await asyncio.gather(
        asyncio.to_thread(refusal_status, h.address, [config(model="brittle"), *audio_requests(samples)]),
        run_stream(h.stub, [config(model="tiny", emit_scores=True), *audio_requests(samples)], pace_s=0.005),
    )
    assert code == grpc.StatusCode.INTERNAL
    assert details == "inference failed for brittle/1 (Fail); see the server log"
    assert good.code == OK and len(good.scores) == expected_windows(samples.size)
    # The server goes on: the next stream on the good model is served.
    assert (await run_stream(h.stub, [config(model="tiny"), *audio_requests(samples)])).code == OK


async def test_oversized_messages_are_refused_by_the_transport(start_hark: StartHark, tiny_model_store: Path) -> None:
    h = await start_hark(tiny_model_store, max_message_bytes=64 * 1024)
    request = hark_pb2.ClassifyRequest(sample_rate_hz=16_000, encoding=hark_pb2.PCM_S16LE, pcm=bytes(100_000))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await h.stub.Classify(request)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# Classify -----------------------------------------------------------------------------------------------


def classify_request(
    samples: np.ndarray, rate: int = 16_000, encoding: str = "pcm_s16le", **fields: object
) -> hark_pb2.ClassifyRequest:
    proto_encoding = hark_pb2.PCM_S16LE if encoding == "pcm_s16le" else hark_pb2.PCM_F32LE
    return hark_pb2.ClassifyRequest(
        sample_rate_hz=rate,
        encoding=proto_encoding,
        pcm=encode_pcm(samples, encoding),
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("name", "samples", "label"),
    [
        ("a word in a long clip", utterance(1.0, 0.8, 2.0), "yes"),
        ("a clip shorter than a window", noise(0.8), "yes"),
        ("silence", quiet(2.0), "_silence_"),
    ],
)
async def test_classify_a_clip(hark: Hark, name: str, samples: np.ndarray, label: str) -> None:
    response = await hark.stub.Classify(classify_request(samples))
    assert (response.model, response.version, response.label) == ("tiny", 1, label)
    assert [s.label for s in response.scores] == list(hark.running.store.resolve().manifest.labels)
    assert response.score == pytest.approx(max(s.score for s in response.scores))
    assert response.score > 0.5


async def test_classify_resamples_float_audio(hark: Hark) -> None:
    clip = resample(utterance(0.5, 0.8, 0.5), 16_000, 44_100)
    response = await hark.stub.Classify(classify_request(clip, 44_100, "pcm_f32le"))
    assert response.label == "yes"


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"pcm": b""}, INVALID, "pcm is empty"),
        ({"pcm": b"\x00"}, INVALID, "whole number"),
        ({"sample_rate_hz": 1_000}, INVALID, "use one of"),
        ({"encoding": 0}, INVALID, "PCM_S16LE or PCM_F32LE"),
        ({"model": "../x"}, INVALID, "is not valid"),
        ({"model": "other"}, grpc.StatusCode.NOT_FOUND, "available: tiny"),
        ({"version": 3}, grpc.StatusCode.NOT_FOUND, "available: 1"),
    ],
)
async def test_classify_refuses_bad_requests(
    hark: Hark, request_fields: dict[str, object], code: grpc.StatusCode, message: str
) -> None:
    request = classify_request(noise(0.5))
    for key, value in request_fields.items():
        setattr(request, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await hark.stub.Classify(request)
    assert error.value.code() == code
    assert message in (error.value.details() or "")


# Models -------------------------------------------------------------------------------------------------


async def test_list_and_get_models(hark: Hark) -> None:
    publish_tiny(hark.store_root, "tiny")
    publish_tiny(hark.store_root, "other")
    await hark.running.reload()
    listed = await hark.stub.ListModels(hark_pb2.ListModelsRequest())
    assert [(m.name, m.default_version, [v.version for v in m.versions]) for m in listed.models] == [
        ("other", 1, [1]),
        ("tiny", 2, [1, 2]),
    ]
    info = await hark.stub.GetModel(hark_pb2.GetModelRequest(name="tiny"))
    v1 = info.versions[0]
    assert v1.labels[-2:] == ["_silence_", "_unknown_"]
    assert (v1.window_s, v1.hop_s, v1.sample_rate_hz) == (pytest.approx(0.995), pytest.approx(0.1), 16_000)
    assert v1.test_accuracy == pytest.approx(0.875)
    assert len(v1.sha256) == 64 and v1.created_at.startswith("20")
    default = await hark.stub.GetModel(hark_pb2.GetModelRequest(name=""))
    assert default.name == "other"  # the default model is the first by name


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [("missing", grpc.StatusCode.NOT_FOUND, "available: tiny"), ("../etc", INVALID, "is not valid")],
)
async def test_get_model_refuses(hark: Hark, name: str, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await hark.stub.GetModel(hark_pb2.GetModelRequest(name=name))
    assert error.value.code() == code
    assert message in (error.value.details() or "")


# The store changing under a running server ---------------------------------------------------------------


async def test_a_broken_version_is_refused_and_the_good_one_keeps_serving(hark: Hark) -> None:
    v2 = publish_tiny(hark.store_root, "tiny")
    with (v2 / MODEL_FILE).open("ab") as f:
        f.write(b"tampered")
    report = await hark.running.reload()
    assert report.loaded == []
    assert "sha256" in report.refused[str(v2)]
    info = await hark.stub.GetModel(hark_pb2.GetModelRequest(name="tiny"))
    assert (info.default_version, [v.version for v in info.versions]) == (1, [1])
    result = await run_stream(hark.stub, [config(), *audio_requests(noise(1.0))])
    assert (result.code, result.started.version) == (OK, 1)


async def test_a_stream_keeps_its_version_when_a_new_one_arrives(hark: Hark) -> None:
    stream = LiveStream(hark.stub)
    stream.send(config(emit_scores=True), *audio_requests(quiet(1.0)))
    started = (await stream.receive("started")).started
    assert started.version == 1
    await stream.receive("scores")

    # Version 2 hears every noise burst as "no", and version 1 vanishes from disk.
    publish_tiny(hark.store_root, "tiny", word="no")
    shutil.rmtree(hark.store_root / "tiny" / "1")
    report = await hark.running.reload()
    assert (report.loaded, report.removed) == ([("tiny", 2)], [("tiny", 1)])

    stream.send(*audio_requests(np.concatenate([noise(0.8), quiet(1.5)])))
    result = await stream.finish()
    assert result.code == OK, result.details
    assert [e.label for e in result.events] == ["yes"]  # still version 1's answer
    assert hark.running.pool.names == []  # v1's batcher closed with its last stream

    fresh = await run_stream(hark.stub, [config(), *audio_requests(utterance(0.5, 0.8, 1.0))])
    assert fresh.started.version == 2
    assert [e.label for e in fresh.events] == ["no"]


async def test_the_server_refuses_to_start_without_a_valid_model(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="empty or missing"):
        await start_server(Settings(model_store=tmp_path / "nothing", port=0, reload_interval_s=0))
    broken = publish_tiny(tmp_path / "store", "tiny")
    (broken / MODEL_FILE).write_bytes(b"not onnx")
    with pytest.raises(StartupError, match="sha256"):
        await start_server(Settings(model_store=tmp_path / "store", port=0, reload_interval_s=0))


async def test_a_taken_port_is_a_startup_error(hark: Hark) -> None:
    with pytest.raises(StartupError, match="cannot listen"):
        await start_server(Settings(model_store=hark.store_root, port=hark.running.port, reload_interval_s=0))


async def test_the_store_is_rescanned_on_a_timer(start_hark: StartHark, tiny_model_store: Path) -> None:
    h = await start_hark(tiny_model_store, reload_interval_s=0.1)
    publish_tiny(tiny_model_store, "tiny")
    for _ in range(50):
        await asyncio.sleep(0.1)
        info = await h.stub.GetModel(hark_pb2.GetModelRequest(name="tiny"))
        if info.default_version == 2:
            break
    assert info.default_version == 2


# Shutdown -----------------------------------------------------------------------------------------------


async def test_graceful_stop_lets_a_running_stream_finish(hark: Hark) -> None:
    health = health_pb2_grpc.HealthStub(hark.channel)
    stream = LiveStream(hark.stub)
    stream.send(config(emit_scores=True), *audio_requests(noise(1.0)))
    await stream.receive("scores")

    started = time.monotonic()
    stopping = asyncio.ensure_future(hark.running.stop(grace=10))
    await asyncio.sleep(0.1)
    status = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
    refused = await run_stream(hark.stub, [config()])
    assert refused.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.details

    stream.send(*audio_requests(noise(1.0, seed=3)))
    result = await stream.finish()
    assert result.code == OK, result.details
    assert len(result.scores) == expected_windows(32_000)
    await stopping
    assert time.monotonic() - started < 5  # it stopped as soon as the stream ended, not after the grace


async def test_a_stream_that_outlives_the_grace_period_is_cut(hark: Hark) -> None:
    stream = LiveStream(hark.stub)
    stream.send(config())
    await stream.receive("started")
    started = time.monotonic()
    await hark.running.stop(grace=0.3)
    assert time.monotonic() - started < 3
    result = await stream.finish()
    assert result.code != OK


async def test_sigterm_drains_and_exits_zero(tiny_model_store: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARK_")}
    env.update(
        HARK_MODEL_STORE=str(tiny_model_store),
        HARK_PORT="0",
        HARK_METRICS_PORT="0",  # whatever else on this machine holds the default port
        HARK_LOG_FORMAT="json",
        HARK_RELOAD_INTERVAL_S="0",
        HARK_SHUTDOWN_GRACE_S="20",
        PYTHONPATH=os.pathsep.join([str(REPO / "service"), str(REPO)]),  # this checkout's hark
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hark.server", cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[dict[str, object]] = []
    try:
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "server exited before listening"
            lines.append(json.loads(line))
            if str(lines[-1]["event"]).startswith("listening on "):
                break
        address = str(lines[-1]["address"])
        async with grpc.aio.insecure_channel(address) as channel:
            stub = hark_pb2_grpc.ClassifierStub(channel)
            stream = LiveStream(stub)
            stream.send(config(emit_scores=True), *audio_requests(noise(1.0)))
            await stream.receive("scores")
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            stream.send(*audio_requests(noise(1.0, seed=4)))
            result = await stream.finish()
            assert result.code == OK, result.details
            assert len(result.scores) == expected_windows(32_000)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rest = [json.loads(line) for line in (await proc.stderr.read()).splitlines() if line.strip()]
    stream_lines = [entry for entry in lines + rest if entry.get("stream_id")]
    assert any(entry["event"] == "stream finished" for entry in stream_lines)
    assert all((entry["model"], entry["version"]) == ("tiny", 1) for entry in stream_lines)  # bound to every line
