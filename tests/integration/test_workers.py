"""``hark serve --workers 2``: two server processes on one port, one metrics endpoint, one drain, restarts.

Each test runs the real console entry point as a subprocess (the supervisor and its two spawned workers)
on 127.0.0.1 with an ephemeral port, and talks to it over gRPC and HTTP like a client and Prometheus do.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hark.core.audio import encode_pcm
from hark.v1 import hark_pb2, hark_pb2_grpc
from loadtest.soak import config
from tests.fixtures_models import noise
from tests.integration.test_server import OK, LiveStream, audio_requests, expected_windows

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Workers:
    proc: asyncio.subprocess.Process
    address: str
    metrics_url: str
    pids: list[int]
    lines: list[dict[str, Any]] = field(default_factory=list)

    def samples(self, name: str) -> dict[str, float]:
        """``worker`` label -> value of one metric, from the supervisor's one endpoint."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    key = sample.labels.get("worker", "")
                    values[key] = values.get(key, 0.0) + sample.value
        return values

    async def wait_for(self, event: str, timeout: float = 60) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                for line in self.lines:
                    if line.get("event") == event:
                        return line
                await asyncio.sleep(0.1)

        return await asyncio.wait_for(poll(), timeout)


async def _read_lines(proc: asyncio.subprocess.Process, lines: list[dict[str, Any]]) -> None:
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        if line.startswith(b"{"):
            lines.append(json.loads(line))


@pytest.fixture
async def workers(tiny_model_store: Path) -> AsyncIterator[Workers]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARK_")}
    env.update(
        HARK_LOG_FORMAT="json",
        HARK_RELOAD_INTERVAL_S="0",
        HARK_METRICS_PORT="0",
        HARK_SHUTDOWN_GRACE_S="20",
        HARK_MAX_CLIP_CALLS="32",  # the tests send 24 Classify calls at once; this limit is tested elsewhere
        PYTHONPATH=os.pathsep.join([str(REPO / "service"), str(REPO)]),
    )
    args = ["serve", "--workers", "2", "--port", "0", "--model-store", str(tiny_model_store)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hark.cli", *args, cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE
    )
    lines: list[dict[str, Any]] = []
    reader = asyncio.get_running_loop().create_task(_read_lines(proc, lines))
    try:
        while not any(str(line.get("event", "")).endswith("with 2 workers") for line in lines):
            assert proc.returncode is None, f"supervisor exited: {lines}"
            await asyncio.sleep(0.1)
        hello = next(line for line in lines if str(line.get("event", "")).endswith("with 2 workers"))
        yield Workers(proc, hello["address"], hello["metrics"], hello["pids"], lines)
    finally:
        if proc.returncode is None:
            proc.kill()  # its workers die with it (they are SIGTERMed when their parent dies)
            await proc.wait()
        await asyncio.wait_for(reader, 30)  # stderr closes once every worker has exited


async def classify_once(address: str) -> hark_pb2.ClassifyResponse:
    """One Classify on a new connection: the kernel picks a worker for each connection."""
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        request = hark_pb2.ClassifyRequest(
            pcm=encode_pcm(noise(1.0), "pcm_s16le"), sample_rate_hz=16_000, encoding=hark_pb2.PCM_S16LE
        )
        return await hark_pb2_grpc.ClassifierStub(channel).Classify(request)


async def test_workers_share_the_port_and_one_endpoint_sums_their_metrics(workers: Workers) -> None:
    assert len(set(workers.pids)) == 2
    answers = await asyncio.gather(*(classify_once(workers.address) for _ in range(24)))
    assert {a.label for a in answers} == {"yes"}
    clips = workers.samples("hark_audio_chunks_total")
    assert set(clips) == {"0", "1"}  # both workers took connections (24 connections: all on one has p < 1e-6)
    assert all(v > 0 for v in clips.values()) and sum(clips.values()) == 24
    assert workers.samples("hark_workers") == {"": 2.0}


async def test_a_killed_worker_is_restarted_and_counted(workers: Workers) -> None:
    os.kill(workers.pids[0], signal.SIGKILL)
    restarted = await workers.wait_for("worker restarted")
    assert restarted["worker"] == 0 and restarted["pid"] not in workers.pids
    assert workers.samples("hark_worker_restarts_total") == {"": 1.0}
    assert workers.samples("hark_workers") == {"": 2.0}
    answers = await asyncio.gather(*(classify_once(workers.address) for _ in range(8)))
    assert {a.label for a in answers} == {"yes"}


async def test_sigterm_drains_every_worker_and_exits_zero(workers: Workers) -> None:
    streams = []
    channels = [grpc.aio.insecure_channel(workers.address) for _ in range(6)]
    try:
        for channel in channels:  # streams in flight, spread over both workers
            stream = LiveStream(hark_pb2_grpc.ClassifierStub(channel))
            stream.send(config(emit_scores=True), *audio_requests(noise(1.0)))
            await stream.receive("scores")
            streams.append(stream)
        workers.proc.send_signal(signal.SIGTERM)
        await workers.wait_for("signal received; draining every worker")
        for stream in streams:  # each finishes its audio after the signal
            stream.send(*audio_requests(noise(1.0, seed=4)))
        for stream in streams:
            result = await stream.finish()
            assert result.code == OK, result.details
            assert len(result.scores) == expected_windows(32_000)
        assert await asyncio.wait_for(workers.proc.wait(), 60) == 0
    finally:
        for channel in channels:
            await channel.close()
    stopped = [line for line in workers.lines if line.get("event") == "stopped"]
    assert sorted(str(line.get("worker", "supervisor")) for line in stopped) == ["0", "1", "supervisor"]
