"""openWakeWord's CPU cost per real-time stream; runs in loadtest/.venv-oww (openwakeword==0.5.1, onnx).

    python loadtest/oww_cost.py AUDIO.npy STREAMS SECONDS

One ``openwakeword.Model`` per stream (its own streaming feature buffers), every stream fed the same speech in
80 ms chunks (openWakeWord's frame), round-robin, as fast as one thread allows. Prints one JSON line: CPU
seconds of this process per stream-second of audio (process time; pin it with taskset), and the model set.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from openwakeword.model import Model

CHUNK = 1280  # 80 ms at 16 kHz


def main() -> None:
    audio = np.load(sys.argv[1])
    streams, seconds = int(sys.argv[2]), float(sys.argv[3])
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    models = [Model(wakeword_models=["hey_jarvis"], inference_framework="onnx") for _ in range(streams)]
    n = int(seconds * 16_000 / CHUNK)
    for m in models:  # warm-up: fill the feature buffers
        for i in range(5):
            m.predict(pcm[i * CHUNK : (i + 1) * CHUNK])
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        start = (i * CHUNK) % (pcm.size - CHUNK)
        chunk = pcm[start : start + CHUNK]
        for m in models:
            m.predict(chunk)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    print(json.dumps({
        "streams": streams, "audio_s_per_stream": n * CHUNK / 16_000, "cpu_s": cpu, "wall_s": wall,
        "cpu_s_per_stream_s": cpu / (streams * n * CHUNK / 16_000), "models": ["hey_jarvis (onnx)"],
        "max_realtime_streams_one_core": (streams * n * CHUNK / 16_000) / cpu,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
