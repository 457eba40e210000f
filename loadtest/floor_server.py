"""The transport floor for ``loadtest/bench.py``: the same gRPC API doing no work at all.

``hark.v1.Classifier/StreamClassify`` on grpc.aio and uvloop, answering each audio chunk with one
precomputed WindowScores: no decoding, no features, no model. Its CPU per stream-second is what one
Python gRPC server pays just to receive a 100 ms chunk and send one response; added to raw onnxruntime's
cost per stream-second it gives the most streams any Python gRPC server could hold with the model.

    python loadtest/floor_server.py --model model_store/keywords/1   # prints "listening on HOST:PORT"
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hark.v1 import hark_pb2, hark_pb2_grpc  # noqa: E402
from loadtest.baseline_server import main  # noqa: E402


class FloorClassifier(hark_pb2_grpc.ClassifierServicer):
    """One constant WindowScores per audio chunk, timed like a real one (its end is the chunk's end)."""

    def __init__(self, version_dir: Path) -> None:
        manifest = json.loads((version_dir / "manifest.json").read_text())
        self.labels = list(manifest["labels"])
        self.name = str(manifest["name"])
        self.version = int(manifest.get("version", 1))
        self.rate = int(manifest["frontend"]["sample_rate"])
        self.scores = [1.0 / len(self.labels)] * len(self.labels)

    async def StreamClassify(
        self, request_iterator: AsyncIterator[hark_pb2.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[hark_pb2.StreamResponse]:
        samples = 0
        async for request in request_iterator:
            if request.WhichOneof("request") == "config":
                yield hark_pb2.StreamResponse(
                    started=hark_pb2.StreamStarted(model=self.name, version=self.version, labels=self.labels)
                )
                continue
            samples += len(request.audio.pcm) // 2
            end_s = samples / self.rate
            yield hark_pb2.StreamResponse(
                scores=hark_pb2.WindowScores(start_s=max(0.0, end_s - 1.0), end_s=end_s, scores=self.scores)
            )


if __name__ == "__main__":
    main(FloorClassifier, __doc__.splitlines()[0])
