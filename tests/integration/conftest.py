"""Fixtures that run the REAL server (``start_server``) on 127.0.0.1 with an ephemeral port.

* ``tiny_model_store``: a temporary store holding ``tiny`` version 1, a real ONNX model (see
  ``tests/fixtures_models.py``).
* ``start_hark``: a factory, ``await start_hark(store_root, **settings_overrides) -> Hark``; every server
  it starts is stopped (and its channel closed) after the test. Use it for another store (the bundled
  ``model_store/``) or other settings.
* ``hark``: a :class:`Hark` on ``tiny_model_store`` with default test settings.
* ``running_server``: the :class:`RunningServer` of ``hark`` (``.address``, ``.port``, ``.store``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from hark.config import Settings
from hark.server import RunningServer, start_server
from hark.v1 import hark_pb2_grpc
from tests.fixtures_models import publish_tiny

# Settings for tests: no background reloads (tests call ``reload()`` when they change the store), short
# batching delay, JSON logs.
TEST_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "metrics_port": 0,
    "reload_interval_s": 0,
    "max_delay_ms": 1.0,
    "shutdown_grace_s": 5.0,
    "log_format": "json",
}


@dataclass
class Hark:
    """A running server and a client channel to it."""

    running: RunningServer
    channel: grpc.aio.Channel
    stub: hark_pb2_grpc.ClassifierStub
    store_root: Path

    @property
    def address(self) -> str:
        return self.running.address


StartHark = Callable[..., Awaitable[Hark]]


@pytest.fixture
def tiny_model_store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    publish_tiny(root, "tiny")
    return root


@pytest.fixture
async def start_hark() -> AsyncIterator[StartHark]:
    started: list[Hark] = []

    async def start(store_root: Path, **overrides: Any) -> Hark:
        settings = Settings(**{**TEST_SETTINGS, "model_store": store_root, **overrides})
        running = await start_server(settings)
        channel = grpc.aio.insecure_channel(running.address)
        hark = Hark(running, channel, hark_pb2_grpc.ClassifierStub(channel), Path(store_root))
        started.append(hark)
        return hark

    yield start
    for hark in reversed(started):
        await hark.channel.close()
        await hark.running.stop(0)


@pytest.fixture
async def hark(start_hark: StartHark, tiny_model_store: Path) -> Hark:
    return await start_hark(tiny_model_store)


@pytest.fixture
async def running_server(hark: Hark) -> RunningServer:
    return hark.running
