"""Hark's Python client library: typed results, a synchronous and an asyncio gRPC client.

Example::

    from hark.client import HarkClient

    with HarkClient("127.0.0.1:50051") as client:
        print(client.classify("yes.wav").label)

:class:`AsyncHarkClient` has the same calls for asyncio. Both retry a call refused with UNAVAILABLE or
RESOURCE_EXHAUSTED through gRPC's retry policy, honouring the server's pushback.
"""

from hark.client.aio import AsyncHarkClient
from hark.client.audio import DEFAULT_SAMPLE_RATE, AudioChunk, Pacer, read_clip, split_chunks
from hark.client.channel import DEFAULT_MAX_ATTEMPTS, DEFAULT_SERVER, MAX_MESSAGE_BYTES, service_config
from hark.client.results import (
    Classification,
    Detection,
    HarkError,
    HopScores,
    ModelInfo,
    ModelVersionInfo,
    StreamItem,
    StreamStarted,
)
from hark.client.sync import DEFAULT_CHUNK_MS, HarkClient

__all__ = [
    "DEFAULT_CHUNK_MS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_SERVER",
    "MAX_MESSAGE_BYTES",
    "AsyncHarkClient",
    "AudioChunk",
    "Classification",
    "Detection",
    "HarkClient",
    "HarkError",
    "HopScores",
    "ModelInfo",
    "ModelVersionInfo",
    "Pacer",
    "StreamItem",
    "StreamStarted",
    "read_clip",
    "service_config",
    "split_chunks",
]
