"""Load for the MLServer peer; runs in loadtest/.venv-mlserver (it uses MLServer's OIP gRPC stubs).

    python loadtest/mlserver_client.py ADDRESS WINDOWS.npy STREAMS WARMUP_S SECONDS

Each of STREAMS streams sends, every 100 ms, its latest 1 s window (the model's input features, one
Open Inference Protocol ModelInfer request) and times the response. Prints one JSON line: latencies
(p50/p95/p99 ms), errors, requests measured, the client's send lag.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc


async def main() -> None:
    address, path = sys.argv[1], sys.argv[2]
    streams, warmup, seconds = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    windows = np.load(path).astype(np.float32)
    payloads = [w.tobytes() for w in windows]
    shape = [1, *windows.shape[1:]]
    loop = asyncio.get_running_loop()
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, min(8, streams // 64)))]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    start = loop.time() + 0.2
    measure = (start + warmup, start + warmup + seconds)

    async def stream(k: int) -> None:
        nonlocal errors
        stub = stubs[k % len(stubs)]
        t0 = start + k / streams * 0.1
        i = 0
        while (due := t0 + i * 0.1) < measure[1]:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = loop.time()
            request = pb.ModelInferRequest(
                model_name="keywords",
                inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=shape)],
                raw_input_contents=[payloads[(k * 37 + i) % len(payloads)]],
            )
            try:
                await stub.ModelInfer(request, timeout=10)
                if measure[0] <= sent < measure[1]:
                    latencies.append((loop.time() - sent) * 1000)
                    lags.append((sent - due) * 1000)
            except grpc.aio.AioRpcError:
                errors += 1
            i += 1

    await asyncio.gather(*(stream(k) for k in range(streams)))
    for c in channels:
        await c.close()
    pct = (lambda q: float(np.percentile(latencies, q))) if latencies else (lambda q: float("inf"))
    print(json.dumps({
        "streams": streams, "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "errors": errors,
        "requests": len(latencies), "client_send_lag_p99_ms": float(np.percentile(lags, 99)) if lags else 0.0,
    }))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
