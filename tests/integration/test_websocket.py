"""The WebSocket transport against a real server: the same events as gRPC, and every bad-input, limit,
auth, TLS, idle and drain row of the README, held on this wire too.

A refusal arrives as ``{"error": {"code", "status", "message"}}`` and a close code of 4000 + its HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from hark.v1 import hark_pb2
from tests.fixtures_models import noise, pcm_chunks, quiet, utterance
from tests.integration.conftest import Hark, StartHark
from tests.integration.test_cli import hark as hark_cli
from tests.integration.test_security import OTHER_TOKEN, TOKEN, Pki, pki  # noqa: F401

pytestmark = pytest.mark.timeout(60)

CONFIG: dict[str, Any] = {"sample_rate_hz": 16000, "encoding": "PCM_S16LE"}


def url(hark: Hark, scheme: str = "ws") -> str:
    assert hark.running.websocket is not None
    return f"{scheme}://127.0.0.1:{hark.running.websocket.port}/v1/stream"


@pytest.fixture
async def hark(start_hark: StartHark, tiny_model_store: Path) -> Hark:
    return await start_hark(tiny_model_store, websocket_port=0)


async def run(
    ws: ClientConnection, chunks: list[bytes], config: dict[str, Any] | None = None, end: bool = True
) -> tuple[list[dict[str, Any]], int | None]:
    """Send a config and chunks (and the end message); every message received, and the close code."""
    await ws.send(json.dumps({"config": {**CONFIG, **(config or {})}}))
    for chunk in chunks:
        await ws.send(chunk)
    if end:
        await ws.send(json.dumps({"end": True}))
    return await collect(ws)


async def finish(ws: ClientConnection, chunks: list[bytes]) -> tuple[list[dict[str, Any]], int | None]:
    """Audio and the end message on a stream whose config is sent; what comes back."""
    for chunk in chunks:
        await ws.send(chunk)
    await ws.send(json.dumps({"end": True}))
    return await collect(ws)


async def collect(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    messages = []
    try:
        async for message in ws:
            messages.append(json.loads(message))
    except ConnectionClosed:
        pass
    return messages, ws.close_code


async def grpc_stream(hark: Hark, chunks: list[bytes], emit_scores: bool) -> list[hark_pb2.StreamResponse]:
    config = hark_pb2.StreamConfig(sample_rate_hz=16000, encoding=hark_pb2.PCM_S16LE, emit_scores=emit_scores)
    requests = [hark_pb2.StreamRequest(config=config)]
    requests += [hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=c)) for c in chunks]
    return [r async for r in hark.stub.StreamClassify(iter(requests))]


async def test_a_websocket_stream_gets_the_same_events_and_scores_as_grpc(hark: Hark, tmp_path: Path) -> None:
    audio = np.concatenate([utterance(), utterance(before_s=0.5)])
    chunks = pcm_chunks(audio)
    async with connect(url(hark)) as ws:
        messages, code = await run(ws, chunks, {"emit_scores": True})
    assert code == 1000
    assert messages[0]["started"]["model"] == "tiny" and messages[0]["started"]["version"] == 1
    expected = await grpc_stream(hark, chunks, emit_scores=True)
    events = [m["event"] for m in messages if "event" in m]
    assert [(e["label"], round(e["time_s"], 3)) for e in events] == [
        (r.event.label, round(r.event.time_s, 3)) for r in expected if r.WhichOneof("response") == "event"
    ]
    assert [e["label"] for e in events] == ["yes", "yes"]
    wav = tmp_path / "a.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    cli = await hark_cli("stream", "--fast", "--json", "--server", hark.address, wav)
    assert [(e["label"], round(e["time_s"], 3)) for e in events] == [
        (row["label"], round(row["time_s"], 3)) for row in cli.json_lines()
    ], "the events of `hark stream` on the same file"
    scores = [m["scores"] for m in messages if "scores" in m]
    grpc_scores = [r.scores for r in expected if r.WhichOneof("response") == "scores"]
    assert len(scores) == len(grpc_scores) > 10
    for ours, theirs in zip(scores, grpc_scores, strict=True):
        assert ours["end_s"] == pytest.approx(theirs.end_s)
        assert ours["gated"] == theirs.gated
        np.testing.assert_allclose(ours["scores"], list(theirs.scores), atol=1e-6)


async def test_the_browser_page_is_served(hark: Hark) -> None:
    assert hark.running.websocket is not None
    page_url = f"http://127.0.0.1:{hark.running.websocket.port}/"
    with await asyncio.to_thread(urllib.request.urlopen, page_url) as reply:
        assert reply.headers["Content-Type"].startswith("text/html")
        body = reply.read().decode()
    assert "getUserMedia" in body and "audioWorklet" in body and "/v1/stream" in body


def _nan_chunk() -> bytes:
    return np.array([0.1, np.nan], dtype="<f4").tobytes()


@pytest.mark.parametrize(
    ("first", "after", "code", "message"),
    [
        (b"\x00\x01", [], "INVALID_ARGUMENT", "send the config first"),
        ("not json", [], "INVALID_ARGUMENT", "not valid JSON"),
        ('{"end": true}', [], "INVALID_ARGUMENT", 'must be {"config"'),
        ({"sample_rate_hz": 12345}, [], "INVALID_ARGUMENT", "12345 Hz is not supported"),
        ({"sample_rate_hz": 0}, [], "INVALID_ARGUMENT", "0 Hz is not supported"),
        ({"encoding": "MP3"}, [], "INVALID_ARGUMENT", "encoding 'MP3' is not supported"),
        ({"colour": "red"}, [], "INVALID_ARGUMENT", "unknown config field(s) colour"),
        ({"version": -1}, [], "INVALID_ARGUMENT", "version must be a whole number"),
        ({"model": "../tiny"}, [], "INVALID_ARGUMENT", "is not valid"),
        ({"model": "nope"}, [], "NOT_FOUND", "available: tiny"),
        ({"version": 7}, [], "NOT_FOUND", "version 7"),
        ({}, [b"\x00\x01\x02"], "INVALID_ARGUMENT", "not a whole number of 2-byte"),
        ({"encoding": "PCM_F32LE"}, [_nan_chunk()], "INVALID_ARGUMENT", "NaN or infinite"),
        ({}, ['{"config": {}}'], "INVALID_ARGUMENT", "a second config"),
        ({}, ['{"stop": 1}'], "INVALID_ARGUMENT", 'then {"end": true}'),
        ({}, [b"\x00" * 4096], "INVALID_ARGUMENT", "exceeds the limit of 2048 bytes"),
    ],
    ids=[
        "audio first", "not json", "end first", "rate 12345", "rate 0", "encoding", "unknown field",
        "negative version", "path in model name", "unknown model", "unknown version", "odd bytes", "NaN",
        "second config", "unknown text", "chunk over the limit",
    ],
)  # fmt: skip
async def test_bad_streams_are_refused_with_a_reason_and_the_server_goes_on(
    start_hark: StartHark, tiny_model_store: Path, first: Any, after: list[Any], code: str, message: str
) -> None:
    hark = await start_hark(tiny_model_store, websocket_port=0, max_chunk_bytes=2048)
    async with connect(url(hark)) as ws:
        if isinstance(first, dict):
            await ws.send(json.dumps({"config": {**CONFIG, **first}}))
        else:
            await ws.send(first)
        for item in after:
            await ws.send(item)
        messages, close = await collect(ws)
    error = messages[-1]["error"]
    assert error["code"] == code and message in error["message"], error
    assert close == 4000 + error["status"]
    async with connect(url(hark)) as ws:  # and the next stream is served
        messages, close = await run(ws, pcm_chunks(utterance(), chunk_s=0.05))
    assert close == 1000 and [m["event"]["label"] for m in messages if "event" in m] == ["yes"]


async def test_a_frame_over_the_message_limit_closes_the_connection(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    hark = await start_hark(tiny_model_store, websocket_port=0, max_message_bytes=64 * 1024)
    async with connect(url(hark), max_size=None) as ws:
        await ws.send(json.dumps({"config": CONFIG}))
        await ws.send(b"\x00" * (65 * 1024))
        _, close = await collect(ws)
    assert close == 1009  # message too big


async def test_streams_over_max_streams_are_refused_with_a_retry_hint(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    hark = await start_hark(tiny_model_store, websocket_port=0, max_streams=1)
    async with connect(url(hark)) as held:
        await held.send(json.dumps({"config": CONFIG}))
        assert "started" in json.loads(await held.recv())
        async with connect(url(hark)) as ws:
            messages, close = await run(ws, [])
        assert messages[-1]["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert messages[-1]["error"]["retry_after_ms"] == 1000 and close == 4429
        # gRPC streams count against the same limit
        with pytest.raises(Exception, match="RESOURCE_EXHAUSTED"):
            await grpc_stream(hark, [], emit_scores=False)
        messages, close = await finish(held, pcm_chunks(utterance()))
    assert close == 1000 and [m["event"]["label"] for m in messages if "event" in m] == ["yes"]


async def test_a_silent_client_is_ended_after_the_idle_timeout(start_hark: StartHark, tiny_model_store: Path) -> None:
    hark = await start_hark(tiny_model_store, websocket_port=0, idle_timeout_s=0.5)
    async with connect(url(hark)) as ws:  # silent before the config
        messages, close = await collect(ws)
    assert messages[-1]["error"]["code"] == "DEADLINE_EXCEEDED" and close == 4408
    async with connect(url(hark)) as ws:  # silent after some audio
        messages, close = await run(ws, pcm_chunks(quiet(0.5)), end=False)
    assert "started" in messages[0]
    assert messages[-1]["error"]["code"] == "DEADLINE_EXCEEDED" and close == 4408
    assert hark.running.admission.active_streams == 0


async def test_a_client_that_stops_reading_is_ended(start_hark: StartHark, tiny_model_store: Path) -> None:
    """A client that stops reading stalls the stream through flow control (the server's writes, then its
    reads, wait); whichever wait passes ``idle_timeout_s`` ends the stream, and its slot is freed."""
    hark = await start_hark(tiny_model_store, websocket_port=0, idle_timeout_s=1.0)
    async with connect(url(hark), max_queue=1) as ws:
        await ws.send(json.dumps({"config": {**CONFIG, "emit_scores": True}}))
        chunks = pcm_chunks(noise(600.0), chunk_s=1.0)
        with pytest.raises(ConnectionClosed):
            for chunk in chunks:
                await ws.send(chunk)
            await asyncio.sleep(10)
    for _ in range(100):
        if hark.running.admission.active_streams == 0:
            break
        await asyncio.sleep(0.1)
    assert hark.running.admission.active_streams == 0


# Security -----------------------------------------------------------------------------------------------


@pytest.fixture
async def authed(start_hark: StartHark, tiny_model_store: Path) -> Hark:
    return await start_hark(tiny_model_store, websocket_port=0, auth_tokens=f"{TOKEN},{OTHER_TOKEN}")


@pytest.mark.parametrize("token", [None, "x" * 32, TOKEN[:-1]], ids=["none", "wrong", "prefix"])
async def test_a_stream_without_a_valid_token_in_its_config_is_unauthenticated(authed: Hark, token: str | None) -> None:
    async with connect(url(authed)) as ws:
        messages, close = await run(ws, pcm_chunks(utterance()), {"token": token} if token else {})
    assert [list(m) for m in messages] == [["error"]]
    assert messages[0]["error"]["code"] == "UNAUTHENTICATED" and close == 4401


@pytest.mark.parametrize(
    "header", [f"Bearer {'x' * 32}", f"Basic {TOKEN}", "Bearer "], ids=["wrong", "basic", "empty bearer"]
)
async def test_a_wrong_authorization_header_is_refused_before_the_upgrade(authed: Hark, header: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url(authed), additional_headers={"Authorization": header}):
            pass
    assert refused.value.response.status_code == 401


async def test_every_token_is_accepted_in_a_header_or_in_the_config(authed: Hark) -> None:
    for token in (TOKEN, OTHER_TOKEN):
        async with connect(url(authed), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            messages, close = await run(ws, pcm_chunks(utterance()))
        assert close == 1000 and [m["event"]["label"] for m in messages if "event" in m] == ["yes"]
        async with connect(url(authed)) as ws:
            messages, close = await run(ws, pcm_chunks(utterance()), {"token": token})
        assert close == 1000 and [m["event"]["label"] for m in messages if "event" in m] == ["yes"]


async def test_tls_serves_only_clients_that_trust_its_ca_and_mutual_tls_needs_a_client_certificate(
    start_hark: StartHark,
    tiny_model_store: Path,
    pki: Pki,  # noqa: F811
) -> None:
    hark = await start_hark(
        tiny_model_store, websocket_port=0, tls_cert_file=pki.server.cert, tls_key_file=pki.server.key
    )
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    async with connect(url(hark, "wss"), ssl=trusted) as ws:
        messages, close = await run(ws, pcm_chunks(utterance()))
    assert close == 1000 and [m["event"]["label"] for m in messages if "event" in m] == ["yes"]
    with pytest.raises(ssl.SSLError):
        async with connect(url(hark, "wss"), ssl=ssl.create_default_context(cafile=str(pki.rogue_ca))):
            pass
    with pytest.raises(InvalidMessage):  # plain text to a TLS port gets no HTTP answer
        async with connect(url(hark), open_timeout=5) as ws:
            await run(ws, [])

    mutual = await start_hark(
        tiny_model_store,
        websocket_port=0,
        tls_cert_file=pki.server.cert,
        tls_key_file=pki.server.key,
        tls_client_ca_file=pki.ca,
    )
    # TLS 1.3: the handshake ends before the server checks the client, which then closes without answering
    with pytest.raises((ssl.SSLError, InvalidMessage, ConnectionClosed)):
        async with connect(url(mutual, "wss"), ssl=trusted) as ws:
            await run(ws, [])
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(pki.client.cert, pki.client.key)
    async with connect(url(mutual, "wss"), ssl=with_cert) as ws:
        messages, close = await run(ws, pcm_chunks(utterance()))
    assert close == 1000 and [m["event"]["label"] for m in messages if "event" in m] == ["yes"]


# Drain --------------------------------------------------------------------------------------------------


async def test_a_drain_lets_running_streams_finish_and_refuses_new_ones(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    hark = await start_hark(tiny_model_store, websocket_port=0)
    async with connect(url(hark)) as running:
        await running.send(json.dumps({"config": CONFIG}))
        assert "started" in json.loads(await running.recv())
        stopping = asyncio.create_task(hark.running.stop(5.0))
        while not hark.running.admission.draining:
            await asyncio.sleep(0.01)
        async with connect(url(hark)) as late:
            messages, close = await run(late, [])
        assert messages[-1]["error"]["code"] == "UNAVAILABLE" and close == 4503
        messages, close = await finish(running, pcm_chunks(utterance()))
        assert close == 1000 and [m["event"]["label"] for m in messages if "event" in m] == ["yes"]
    await stopping
    with pytest.raises(OSError):
        async with connect(url(hark), open_timeout=2):
            pass


async def test_a_taken_port_stops_the_start_with_a_fix(start_hark: StartHark, tiny_model_store: Path) -> None:
    import socket

    from hark.server import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for setting in ("websocket_port", "oip_http_port"):
            with pytest.raises(StartupError, match="HARK_WEBSOCKET_PORT / HARK_OIP_HTTP_PORT to a free port"):
                await start_hark(tiny_model_store, **{setting: port})


async def test_websocket_streams_are_counted_in_the_metrics(hark: Hark) -> None:
    registry = hark.running.metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    async with connect(url(hark)) as ws:
        await run(ws, pcm_chunks(utterance()))
    async with connect(url(hark)) as ws:
        await run(ws, [], {"sample_rate_hz": 12345})
    windows = value("hark_windows_total", model="tiny", version="1")
    assert value("hark_requests_total", rpc="WebSocketStream") == 2
    assert value("hark_errors_total", code="INVALID_ARGUMENT") == 1
    assert windows > 10 and value("hark_events_total", model="tiny", version="1", **{"class": "yes"}) == 1
