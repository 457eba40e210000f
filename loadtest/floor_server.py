"""The transport floor for ``loadtest/bench.py``: the same gRPC API doing no work at all.

``hark.v1.Classifier/StreamClassify`` on grpc.aio and uvloop, answering each audio chunk with one
precomputed WindowScores: no decoding, no features, no model. Its CPU per stream-second is what one
Python gRPC server pays just to receive a 100 ms chunk and send one response; added to raw onnxruntime's
cost per stream-second it gives the most streams any Python gRPC server could hold with the model.

    python loadtest/floor_server.py --model model_store/keywords/1   # prints "listening on HOST:PORT"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from service.api.hark.v1 import hark_pb2, hark_pb2_grpc  # noqa: E402


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


async def _serve(version_dir: Path, host: str, port: int) -> None:
    server = grpc.aio.server()
    hark_pb2_grpc.add_ClassifierServicer_to_server(FloorClassifier(version_dir), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"listening on {host}:{bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model version folder (its manifest's labels)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_serve(args.model, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
