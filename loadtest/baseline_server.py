"""How the benchmark's baseline servers (``naive_server.py``, ``floor_server.py``) run: one servicer of the
``hark.v1.Classifier`` API on grpc.aio and uvloop, built from a model version folder, announced on stdout with
the "listening on HOST:PORT" line that ``bench.py`` waits for."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import grpc

from hark.v1 import hark_pb2_grpc

MakeServicer = Callable[[Path], hark_pb2_grpc.ClassifierServicer]


async def _serve(servicer: hark_pb2_grpc.ClassifierServicer, host: str, port: int) -> None:
    server = grpc.aio.server()
    hark_pb2_grpc.add_ClassifierServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"listening on {host}:{bound}", flush=True)
    await server.wait_for_termination()


def main(make_servicer: MakeServicer, description: str) -> None:
    """The command line of a baseline server: ``--model VERSION_DIR [--host H] [--port P]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, required=True, help="a model version folder (model.onnx, manifest)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_serve(make_servicer(args.model), args.host, args.port))
    except KeyboardInterrupt:
        pass
