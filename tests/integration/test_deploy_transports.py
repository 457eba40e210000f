"""Hark's WebSocket and Open Inference Protocol transports through the real Envoy on
``deploy/envoy/envoy.yaml`` (see ``test_deploy.py``): one Envoy port routes gRPC, WebSocket streams, the
browser page and the OIP REST routes by path, and each answers as Hark does directly."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import connect

from hark.oip import inference_pb2_grpc
from tests.fixtures_models import pcm_chunks, utterance
from tests.integration.conftest import Hark, StartHark
from tests.integration.test_deploy import Envoy, needs_envoy, run_envoy
from tests.integration.test_oip import infer_request, save, triton, triton_client  # noqa: F401
from tests.integration.test_websocket import CONFIG, collect

pytestmark = [needs_envoy, pytest.mark.timeout(120)]


@pytest.fixture
async def hark(start_hark: StartHark, tiny_model_store: Path) -> Hark:
    return await start_hark(tiny_model_store, websocket_port=0, oip_http_port=0)


@pytest.fixture
async def envoy(hark: Hark, tmp_path: Path) -> AsyncIterator[Envoy]:
    async with run_envoy(hark, tmp_path) as proxy:
        yield proxy


async def ws_stream(url: str) -> list[dict[str, Any]]:
    async with connect(url) as ws:
        await ws.send(json.dumps({"config": {**CONFIG, "emit_scores": True}}))
        for chunk in pcm_chunks(utterance()):
            await ws.send(chunk)
        await ws.send(json.dumps({"end": True}))
        messages, close = await collect(ws)
    assert close == 1000
    return messages


async def test_a_websocket_stream_through_envoy_is_the_stream_hark_sends(hark: Hark, envoy: Envoy) -> None:
    assert hark.running.websocket is not None
    direct = await ws_stream(f"ws://127.0.0.1:{hark.running.websocket.port}/v1/stream")
    proxied = await ws_stream(f"ws://{envoy.address}/v1/stream")
    assert [m["event"]["label"] for m in proxied if "event" in m] == ["yes"]
    assert sum("scores" in m for m in proxied) > 10
    assert proxied == direct


async def test_the_browser_page_and_oip_rest_through_envoy(
    hark: Hark,
    envoy: Envoy,
    triton: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    def get(path: str) -> tuple[str, bytes]:
        with urllib.request.urlopen(f"http://{envoy.address}{path}", timeout=10) as reply:
            return reply.headers["Content-Type"], reply.read()

    content_type, body = await asyncio.to_thread(get, "/?autostart=1")
    assert content_type.startswith("text/html") and b"getUserMedia" in body
    assert json.loads((await asyncio.to_thread(get, "/v2/health/ready"))[1]) == {"ready": True}
    clip = save(tmp_path, "clip", utterance(before_s=0.3, after_s=0.3))
    out = await triton_client(triton, "http", "basics", envoy.address, "tiny", clip)
    assert out["ready"] and out["int16"]["label"] == ["yes"] and out["fp32"]["label"] == ["yes"]


async def test_oip_grpc_through_envoy(hark: Hark, envoy: Envoy) -> None:
    async with grpc.aio.insecure_channel(envoy.address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(100):  # Envoy's workers learn of Hark's health a moment after the stats show it
            try:
                reply = await stub.ModelInfer(infer_request(utterance()), timeout=5)
                break
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.05)
    assert reply.raw_output_contents[1][4:] == b"yes"
