"""Hark's Python client library: typed results and a synchronous gRPC client.

Example::

    from hark.client import HarkClient, read_clip

    with HarkClient("127.0.0.1:50051") as client:
        print(client.classify(read_clip("yes.wav")).label)
"""

from hark.client.sync import (
    DEFAULT_CHUNK_MS,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SERVER,
    MAX_MESSAGE_BYTES,
    Classification,
    Detection,
    HarkClient,
    HarkError,
    HopScores,
    ModelInfo,
    ModelVersionInfo,
    Pacer,
    StreamStarted,
    read_clip,
    split_chunks,
)

__all__ = [
    "DEFAULT_CHUNK_MS",
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_SERVER",
    "MAX_MESSAGE_BYTES",
    "Classification",
    "Detection",
    "HarkClient",
    "HarkError",
    "HopScores",
    "ModelInfo",
    "ModelVersionInfo",
    "Pacer",
    "StreamStarted",
    "read_clip",
    "split_chunks",
]
