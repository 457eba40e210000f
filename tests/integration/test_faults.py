"""Faults and floods against the real server: it keeps serving everyone else, loses nothing, frees what a
failed stream held, and logs no bug for what clients do.

* Connections cut mid-chunk, mid-batch and mid-response (a TCP proxy that drops the connection at a byte).
* Backpressure: a client that blasts audio while not reading is held back by flow control, a client
  that never reads is ended without holding its slot, and neither slows a normal stream down; a full
  batcher queue makes submitters wait instead of growing.
* A model version replaced under 100 live streams; broken versions published under a live stream.
* SIGTERM under load: health NOT_SERVING, new calls refused, running streams finish, exit 0.

What is already covered elsewhere is not repeated: bad inputs (``test_bad_input.py``, ``test_server.py``),
``max_streams``, idle timeout, cancel and deadline freeing the slot, ``max_stream_s`` and an inference
error failing only its model's streams (``test_server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import queue
import resource
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hark.core.audio import encode_pcm
from hark.core.model_store import MODEL_FILE, sha256_file
from hark.serving.batcher import Batcher
from hark.serving.errors import RETRY_PUSHBACK_MS
from hark.serving.session import StreamSession
from hark.v1 import hark_pb2, hark_pb2_grpc
from loadtest.soak import TINY_WINDOW, ServerProcess, audio, config, endless_audio, refusal_status
from tests.fixtures_models import noise, publish_tiny, quiet, utterance
from tests.integration.conftest import Hark, StartHark
from tests.integration.test_server import LiveStream, StreamResult, audio_requests, expected_windows, run_stream
from tests.unit.test_model_store import BROKEN, _edit_manifest, _not_onnx

pytestmark = pytest.mark.timeout(90)

OK = grpc.StatusCode.OK


def bug_lines(logs: str) -> list[str]:
    """Log lines that say the server hit a bug (or grpc logged a servicer exception) rather than a client fault."""
    markers = ('"level": "error"', "Traceback", "Unexpected [", "ExecuteBatchError", "stream failed")
    return [line for line in logs.splitlines() if any(m in line for m in markers)]


async def wait_until_idle(h: Hark, timeout: float = 5.0) -> None:
    """Until no stream or call is active: what a failed stream held is freed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (h.running.servicer.active_streams, h.running.servicer.active_calls) == (0, 0):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still active: {h.running.servicer.active_streams} streams")


# A proxy that cuts connections -----------------------------------------------------------------------------


class CuttingProxy:
    """A TCP proxy in front of the server that drops every connection once ``cut_after[direction]`` bytes
    went that way ("up": client to server, "down": server to client), forwarding exactly that many: the
    connection dies inside an HTTP/2 frame, like a phone driving into a tunnel."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.sent = {"up": 0, "down": 0}
        self.cut_after: dict[str, int | None] = {"up": None, "down": None}
        self.cut_done = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.address = ""

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    def cut_at(self, direction: str, extra: int) -> None:
        """Cut once ``extra`` more bytes have gone in ``direction``."""
        self.cut_after[direction] = self.sent[direction] + extra

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()  # no FIN handshake, no flush: the connection is just gone
        self.cut_done.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer, "up"), self._pump(up_reader, writer, "down"))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(16384):
                limit = self.cut_after[direction]
                if limit is not None and self.sent[direction] + len(data) >= limit:
                    writer.write(data[: limit - self.sent[direction]])
                    self.sent[direction] = limit
                    self.cut()
                    return
                writer.write(data)
                self.sent[direction] += len(data)
                await writer.drain()


async def _through(proxy: CuttingProxy) -> tuple[grpc.aio.Channel, hark_pb2_grpc.ClassifierStub]:
    channel = grpc.aio.insecure_channel(proxy.address)
    return channel, hark_pb2_grpc.ClassifierStub(channel)


class BlockingStream:
    """One stream through the blocking client, fed from a queue and read on a worker thread.

    A cut that lands while the client writes must read as UNAVAILABLE; grpc.aio's client can name it INTERNAL
    instead (grpc/grpc#36066), the blocking client does not."""

    def __init__(self, address: str) -> None:
        self._requests: queue.Queue[hark_pb2.StreamRequest | None] = queue.Queue()
        self.started = threading.Event()
        self.code: asyncio.Future[grpc.StatusCode] = asyncio.ensure_future(asyncio.to_thread(self._run, address))

    def send(self, request: hark_pb2.StreamRequest | None) -> None:
        """Queue a request; ``None`` ends the requests."""
        self._requests.put(request)

    def _run(self, address: str) -> grpc.StatusCode:
        def requests() -> Iterator[hark_pb2.StreamRequest]:
            while (request := self._requests.get()) is not None:
                yield request

        with grpc.insecure_channel(address) as channel:
            call = hark_pb2_grpc.ClassifierStub(channel).StreamClassify(requests(), timeout=30)
            with contextlib.suppress(grpc.RpcError):
                for response in call:
                    if response.WhichOneof("response") == "started":
                        self.started.set()
            self.send(None)  # frees the request thread, which waits on the queue
            return call.code()


async def test_a_connection_cut_mid_chunk_frees_the_stream(hark: Hark, capfd: pytest.CaptureFixture[str]) -> None:
    async with CuttingProxy(hark.address) as proxy:
        stream = BlockingStream(proxy.address)
        stream.send(config(emit_scores=True))
        assert await asyncio.to_thread(stream.started.wait, 10)
        big = encode_pcm(noise(20.0))  # 640 kB in one message
        proxy.cut_at("up", len(big) // 2)  # the connection dies halfway through it
        stream.send(audio(big))
        await asyncio.wait_for(proxy.cut_done.wait(), 10)
        assert await asyncio.wait_for(stream.code, 10) == grpc.StatusCode.UNAVAILABLE  # no server status came
    await wait_until_idle(hark)
    good = await run_stream(hark.stub, [config(emit_scores=True), *audio_requests(noise(1.5))])
    assert good.code == OK and len(good.scores) == expected_windows(24_000)
    assert bug_lines("".join(capfd.readouterr())) == []


async def test_a_connection_cut_mid_batch_fails_nobody_else_in_that_batch(
    start_hark: StartHark, tiny_model_store: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Windows wait up to 400 ms for a batch: the cut lands while this stream's windows sit in the queue
    # beside another stream's.
    h = await start_hark(tiny_model_store, max_delay_ms=400, max_batch=256)
    model = h.running.store.resolve()
    samples = noise(2.0)
    async with CuttingProxy(h.address) as proxy:
        channel, stub = await _through(proxy)
        doomed = LiveStream(stub)
        doomed.send(config(emit_scores=True))
        await doomed.receive("started")
        survivor = LiveStream(h.stub)
        survivor.send(config(emit_scores=True))
        await survivor.receive("started")
        doomed.send(*audio_requests(samples))
        survivor.send(*audio_requests(samples))
        await asyncio.sleep(0.2)  # both streams' windows wait for the batch, which has not run yet
        with h.running.pool.lease(model) as batcher:
            assert batcher.windows == 0
        assert survivor.responses[-1].WhichOneof("response") == "started"  # no scores yet
        proxy.cut()
        result = await survivor.finish()
        await doomed.finish()
        await channel.close()
    assert result.code == OK, result.details
    assert len(result.scores) == expected_windows(samples.size)
    await wait_until_idle(h)
    with h.running.pool.lease(model) as batcher:
        # The cut stream's queued windows were skipped, not run: only the survivor's were scored.
        assert batcher.windows == expected_windows(samples.size)
    assert bug_lines("".join(capfd.readouterr())) == []


async def test_a_connection_cut_mid_response_frees_the_stream(hark: Hark, capfd: pytest.CaptureFixture[str]) -> None:
    async with CuttingProxy(hark.address) as proxy:
        stream = BlockingStream(proxy.address)
        stream.send(config(emit_scores=True))
        assert await asyncio.to_thread(stream.started.wait, 10)
        proxy.cut_at("down", 3_000)  # a few dozen score messages in, inside one of them
        for request in audio_requests(noise(30.0)):
            stream.send(request)
        await asyncio.wait_for(proxy.cut_done.wait(), 10)
        assert await asyncio.wait_for(stream.code, 10) == grpc.StatusCode.UNAVAILABLE  # no server status came
    await wait_until_idle(hark)
    assert (await run_stream(hark.stub, [config(), *audio_requests(noise(1.0))])).code == OK
    assert bug_lines("".join(capfd.readouterr())) == []


# Backpressure ------------------------------------------------------------------------------------------------


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_a_client_blasting_audio_without_reading_is_held_back_by_flow_control(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    """The servicer reads one message at a time and writes each response before reading on, so a client
    that does not read responses fills the transport's windows and then simply cannot send: what is
    in flight stays bounded by HTTP/2 flow control, not by server memory."""
    h = await start_hark(tiny_model_store, idle_timeout_s=30)
    sent = 0
    pcm = encode_pcm(noise(0.1))

    async def blast() -> AsyncIterator[hark_pb2.StreamRequest]:
        nonlocal sent
        yield config(emit_scores=True)
        while True:
            sent += 1
            yield audio(pcm)

    peak_before = _rss_mib()
    # A fixed 16 kB receive window (no BDP growth): a few hundred unread responses fill it.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16_384)]
    async with grpc.aio.insecure_channel(h.address, options=options) as channel:
        call = hark_pb2_grpc.ClassifierStub(channel).StreamClassify(blast())
        await asyncio.sleep(1.5)
        plateau = sent
        await asyncio.sleep(1.0)
        assert sent == plateau, "the client kept sending while nothing was read: something buffers"
        assert plateau * len(pcm) < 32 * 2**20  # what flow control let through: the windows, a few MB
        assert h.running.servicer.active_streams == 1
        # Reading resumes the stream where it stood: nothing was dropped to make room.
        received = 0
        async for _ in call:
            received += 1
            if sent > plateau + 10 or received >= 20_000:
                break
        assert sent > plateau + 10, (received, sent, plateau)
        call.cancel()
    await wait_until_idle(h)
    assert _rss_mib() - peak_before < 64


async def test_a_client_that_never_reads_is_ended_without_holding_its_slot(
    start_hark: StartHark, tiny_model_store: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    h = await start_hark(tiny_model_store, idle_timeout_s=0.5, max_streams=1)
    # The client sends audio, asks for every hop's scores and does not read for 2 s.
    stalled = asyncio.ensure_future(
        asyncio.to_thread(refusal_status, h.address, endless_audio(), options=TINY_WINDOW, read_after_s=2.0)
    )
    for _ in range(100):
        if h.running.servicer.active_streams == 1:
            break
        await asyncio.sleep(0.01)
    await wait_until_idle(h, timeout=1.5)  # ended by the server while the client still is not reading
    # The slot is free for someone else at once (max_streams is 1).
    assert (await run_stream(h.stub, [config(), *audio_requests(noise(1.0))])).code == OK
    code, details, _ = await stalled
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "responses were not read for 0.5 s" in details
    assert bug_lines("".join(capfd.readouterr())) == []


async def test_a_slow_reader_does_not_stall_other_streams(start_hark: StartHark, tiny_model_store: Path) -> None:
    h = await start_hark(tiny_model_store, idle_timeout_s=30)

    async def endless() -> AsyncIterator[hark_pb2.StreamRequest]:
        yield config(emit_scores=True)
        while True:
            yield audio(encode_pcm(noise(0.1)))

    async with grpc.aio.insecure_channel(h.address, options=TINY_WINDOW) as channel:
        stuck = hark_pb2_grpc.ClassifierStub(channel).StreamClassify(endless())
        await asyncio.sleep(0.3)
        samples = utterance(0.5, 0.8, 1.0)
        started = time.monotonic()
        result = await run_stream(h.stub, [config(emit_scores=True), *audio_requests(samples)], pace_s=0.02)
        elapsed = time.monotonic() - started
        assert result.code == OK, result.details
        assert len(result.scores) == expected_windows(samples.size)
        assert [e.label for e in result.events] == ["yes"]
        assert elapsed < 0.02 * 23 + 1.5  # its own pacing plus a little: nothing waited on the stuck stream
        stuck.cancel()
    await wait_until_idle(h)


async def test_failed_streams_leave_no_state_behind(start_hark: StartHark, tiny_model_store: Path) -> None:
    """Cancelled, expired, refused and stalled streams: afterwards no session is alive anywhere in the
    process, no status is still pending, and every batcher is idle. Memory does not grow per fault."""
    h = await start_hark(tiny_model_store, idle_timeout_s=0.5)

    async def cancelled() -> None:
        stream = LiveStream(h.stub)
        stream.send(config(emit_scores=True), *audio_requests(noise(1.5)))
        await stream.receive("scores")
        stream.call.cancel()

    async def expired() -> None:
        async def silent() -> AsyncIterator[hark_pb2.StreamRequest]:
            yield config()
            await asyncio.sleep(1)

        with contextlib.suppress(grpc.aio.AioRpcError):
            async for _ in h.stub.StreamClassify(silent(), timeout=0.1):
                pass

    async def stalled() -> None:
        async def endless() -> AsyncIterator[hark_pb2.StreamRequest]:
            yield config(emit_scores=True)
            while True:
                yield audio(encode_pcm(noise(0.1)))

        async with grpc.aio.insecure_channel(h.address, options=TINY_WINDOW) as channel:
            call = hark_pb2_grpc.ClassifierStub(channel).StreamClassify(endless())
            await asyncio.sleep(1.0)
            call.cancel()

    refused = [run_stream(h.stub, [config(), audio(b"\0")]) for _ in range(10)]
    await asyncio.gather(*(cancelled() for _ in range(10)), *(expired() for _ in range(10)), stalled(), *refused)
    await wait_until_idle(h)
    for _ in range(50):
        if not h.running.servicer._detached:
            break
        await asyncio.sleep(0.02)
    assert not h.running.servicer._detached
    # gRPC keeps a finished call's abort exception (and so its frames) until the client has let go of
    # the call; give the clients that moment, then nothing may be left.
    for _ in range(40):
        gc.collect()
        # type() rather than isinstance(): the heap may hold dead weakref proxies, which raise on isinstance
        if not (alive := [o for o in gc.get_objects() if type(o) is StreamSession]):
            break
        await asyncio.sleep(0.05)
    assert alive == []
    with h.running.pool.lease(h.running.store.resolve()) as batcher:
        assert batcher.idle


async def test_at_the_stream_limit_the_refusal_carries_a_retry_hint_a_client_can_follow(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    h = await start_hark(tiny_model_store, max_streams=1)
    holder = LiveStream(h.stub)
    holder.send(config())
    await holder.receive("started")

    code, details, trailers = await asyncio.to_thread(refusal_status, h.address, [config()])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in 1 s" in details
    assert ("grpc-retry-pushback-ms", str(RETRY_PUSHBACK_MS)) in trailers

    # A client with a gRPC retry policy waits the pushback and gets in once the slot is free.
    policy = {
        "methodConfig": [
            {
                "name": [{"service": "hark.v1.Classifier"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
                },
            }
        ]
    }
    options = [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(policy))]
    async with grpc.aio.insecure_channel(h.address, options=options) as channel:
        started = time.monotonic()
        retried = asyncio.ensure_future(
            run_stream(hark_pb2_grpc.ClassifierStub(channel), [config(), *audio_requests(noise(1.0))])
        )
        await asyncio.sleep(0.3)
        await holder.finish()  # the slot frees while the retrying client waits out its pushback
        result = await retried
        assert result.code == OK, result.details
        assert time.monotonic() - started >= RETRY_PUSHBACK_MS / 1000 * 0.9


async def test_a_full_batcher_queue_holds_submitters_back_and_drops_nothing() -> None:
    """The queue between streams and the model is bounded: when inference falls behind, submitters wait
    (and through them, gRPC flow control holds their clients); every window is still scored, in order."""
    gate = threading.Event()

    def slow_model(batch: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return batch[:, 0, :1].astype(np.float32)

    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = Batcher(slow_model, executor=executor, max_batch=2, max_delay_s=0.0, max_queue=4)
        windows = [np.full((4, 3), float(k), np.float32) for k in range(40)]
        results = asyncio.ensure_future(asyncio.gather(*(batcher.submit(w) for w in windows)))
        await asyncio.sleep(0.2)
        assert batcher.queued == 4  # full, not growing: the other submitters wait
        assert not results.done()
        gate.set()
        scores = await asyncio.wait_for(results, 10)
        await batcher.close()
    assert [float(s[0]) for s in scores] == [float(k) for k in range(40)]


async def test_a_unary_deadline_is_honoured(hark: Hark) -> None:
    request = hark_pb2.ClassifyRequest(sample_rate_hz=16_000, encoding=1, pcm=encode_pcm(noise(60.0)))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await hark.stub.Classify(request, timeout=0.01)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until_idle(hark)


# Model versions changing under live streams ------------------------------------------------------------------


async def test_a_version_replaced_under_100_live_streams(hark: Hark) -> None:
    """Zero failed streams; each finishes on the version it started with; new streams get the new one."""
    old = [LiveStream(hark.stub) for _ in range(100)]
    for stream in old:
        stream.send(config(), *audio_requests(quiet(0.6)))
    versions = await asyncio.gather(*(s.receive("started") for s in old))
    assert {r.started.version for r in versions} == {1}

    # Version 2 hears every word as "no"; version 1 leaves the disk while its streams still run.
    publish_tiny(hark.store_root, "tiny", word="no")
    shutil.rmtree(hark.store_root / "tiny" / "1")
    report = await hark.running.reload()
    assert (report.loaded, report.removed) == ([("tiny", 2)], [("tiny", 1)])

    new = [LiveStream(hark.stub) for _ in range(20)]
    for stream in new:
        stream.send(config())
    rest = audio_requests(np.concatenate([noise(0.8), quiet(1.2)]))
    for stream in old:
        stream.send(*rest)
    for stream in new:
        stream.send(*audio_requests(utterance(0.6, 0.8, 1.2)))
    results: list[StreamResult] = await asyncio.gather(*(s.finish() for s in old + new))

    failed = [(r.code, r.details) for r in results if r.code != OK]
    assert failed == []
    assert [(r.started.version, [e.label for e in r.events]) for r in results[:100]] == [(1, ["yes"])] * 100
    assert [(r.started.version, [e.label for e in r.events]) for r in results[100:]] == [(2, ["no"])] * 20
    assert hark.running.pool.names == ["tiny/2"] or hark.running.pool.names == []  # v1's batcher is gone


def _truncate(v: Path) -> None:
    data = (v / MODEL_FILE).read_bytes()
    (v / MODEL_FILE).write_bytes(data[: len(data) // 2])


def _not_onnx_with_a_matching_checksum(v: Path) -> None:
    _not_onnx(v)
    _edit_manifest(v, sha256=sha256_file(v / MODEL_FILE), size_bytes=(v / MODEL_FILE).stat().st_size)


def _symlinked(v: Path) -> None:
    (v / MODEL_FILE).rename(v.parent / "elsewhere.onnx")
    (v / MODEL_FILE).symlink_to(v.parent / "elsewhere.onnx")


SERVER_BREAKAGES = {
    "truncated file": (_truncate, "sha256"),
    "wrong checksum": (BROKEN["wrong checksum"][0], "sha256"),
    "wrong input shape": (BROKEN["wrong input shape"][0], "input shape"),
    "unreproducible frontend": (BROKEN["frontend it cannot reproduce"][0], "not a valid manifest"),
    "not ONNX": (_not_onnx_with_a_matching_checksum, "onnxruntime cannot load"),
    "symlinked model file": (_symlinked, "symlinks are refused"),
}


async def test_broken_versions_are_refused_logged_and_counted_while_a_stream_runs(
    hark: Hark, capfd: pytest.CaptureFixture[str]
) -> None:
    live = LiveStream(hark.stub)
    live.send(config(emit_scores=True), *audio_requests(quiet(0.5)))
    assert (await live.receive("started")).started.version == 1
    fed = 8_000
    for n, (name, (break_it, reason)) in enumerate(SERVER_BREAKAGES.items(), start=1):
        version_dir = publish_tiny(hark.store_root, "tiny")
        break_it(version_dir)
        report = await hark.running.reload()
        assert report.loaded == [], name
        assert reason in report.refused[str(version_dir)], (name, report.refused)
        assert len(hark.running.store.refused) == n  # counted: every refused version stays on record
        info = await hark.stub.GetModel(hark_pb2.GetModelRequest(name="tiny"))
        assert (info.default_version, [v.version for v in info.versions]) == (1, [1]), name
        fresh = await run_stream(hark.stub, [config(), *audio_requests(noise(1.0))])
        assert (fresh.code, fresh.started.version) == (OK, 1), name
        live.send(*audio_requests(noise(0.2, seed=n)))  # the live stream keeps going through every reload
        fed += 3_200
    result = await live.finish()
    assert result.code == OK, result.details
    assert len(result.scores) == expected_windows(fed)
    refusals = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "model version refused" in line]
    assert len(refusals) == len(SERVER_BREAKAGES)
    assert all(entry["level"] == "warning" and entry["reason"] for entry in refusals)


# SIGTERM under load ----------------------------------------------------------------------------------------------


async def test_sigterm_under_load_drains_every_running_stream_and_exits_zero(tiny_model_store: Path) -> None:
    server = await ServerProcess.start(tiny_model_store, shutdown_grace_s=20)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = hark_pb2_grpc.ClassifierStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            streams = [LiveStream(stub) for _ in range(16)]
            for stream in streams:
                stream.send(config(emit_scores=True), *audio_requests(noise(1.0)))
            await asyncio.gather(*(s.receive("scores") for s in streams))

            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            status = await health.Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            code, details, _ = await asyncio.to_thread(refusal_status, server.address, [config()])
            assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Classify(hark_pb2.ClassifyRequest(sample_rate_hz=16_000, encoding=1, pcm=b"\0\0"))
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE

            for k, stream in enumerate(streams):
                stream.send(*audio_requests(noise(1.0, seed=10 + k)))
            results = await asyncio.gather(*(s.finish() for s in streams))
            assert [(r.code, len(r.scores)) for r in results] == [(OK, expected_windows(32_000))] * 16
        assert await asyncio.wait_for(server.proc.wait(), 30) == 0
    finally:
        await server.stop()
    assert server.errors == []
    assert server.events["stream finished"] == 16
