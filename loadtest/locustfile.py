"""locust scenario: users streaming audio to Hark over gRPC (StreamClassify) in real time.

    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 60s --host 127.0.0.1:50051

Each user opens one stream after another: ``HARK_STREAM_S`` seconds (default 3) of 100 ms chunks, paced
in real time, with per-hop scores. Every WindowScores is one locust request ``hop`` timed from the chunk
that completed its window; each whole stream is one request ``StreamClassify`` (a failure when the call
ends with a non-OK status or without scores). Audio: ``HARK_AUDIO`` (raw 16 kHz PCM_S16LE), else a tone
with noise.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # grpc's blocking calls must yield to gevent, before any channel exists

import gevent  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, between, task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hark.v1 import hark_pb2, hark_pb2_grpc  # noqa: E402

RATE = 16_000
CHUNK = RATE // 10


def _audio() -> list[bytes]:
    path = os.environ.get("HARK_AUDIO")
    if path:
        pcm = np.fromfile(path, dtype="<i2")
    else:
        t = np.arange(RATE * 4) / RATE
        noise = np.random.default_rng(0).standard_normal(t.size) * 0.02
        pcm = ((0.25 * np.sin(2 * math.pi * 440 * t) + noise) * 32767).astype("<i2")
    return [pcm[i : i + CHUNK].tobytes() for i in range(0, pcm.size - CHUNK + 1, CHUNK)]


CHUNKS = _audio()


class HarkUser(User):
    """One client app: a stream at a time, real-time pace."""

    wait_time = between(0.0, 0.2)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host or "127.0.0.1:50051")
        self.stub = hark_pb2_grpc.ClassifierStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def stream(self) -> None:
        seconds = float(os.environ.get("HARK_STREAM_S", "3"))
        n = max(1, round(seconds * 10))
        offset = int(np.random.default_rng().integers(len(CHUNKS)))
        sent: list[float] = []

        def requests() -> Iterator[hark_pb2.StreamRequest]:
            yield hark_pb2.StreamRequest(
                config=hark_pb2.StreamConfig(sample_rate_hz=RATE, encoding=hark_pb2.PCM_S16LE, emit_scores=True)
            )
            start = time.perf_counter()
            for i in range(n):
                gevent.sleep(max(0.0, start + i * 0.1 - time.perf_counter()))
                sent.append(time.perf_counter())
                yield hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=CHUNKS[(offset + i) % len(CHUNKS)]))

        fire = self.environment.events.request.fire
        began = time.perf_counter()
        scores, error = 0, None
        try:
            for response in self.stub.StreamClassify(requests()):
                if response.WhichOneof("response") != "scores":
                    continue
                scores += 1
                i = max(0, math.ceil(round(response.scores.end_s * RATE) / CHUNK) - 1)
                if i < len(sent):
                    ms = (time.perf_counter() - sent[i]) * 1000
                    fire(request_type="grpc", name="hop", response_time=ms, response_length=0, exception=None)
            if scores == 0:
                error = RuntimeError("stream ended without scores")
        except grpc.RpcError as e:
            error = e
        fire(
            request_type="grpc",
            name="StreamClassify",
            response_time=(time.perf_counter() - began) * 1000,
            response_length=scores,
            exception=error,
        )
