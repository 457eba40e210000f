"""What Hark's own Python costs per 100 ms chunk, stage by stage, without gRPC or the model.

    python loadtest/chunk_cost.py                  # the bundled model, 3 rounds of 2000 chunks
    python loadtest/chunk_cost.py --chunks 500     # quicker

One stream's :class:`hark.serving.pipeline.StreamPipeline` (as the server builds it: the model's frontend,
drift and metrics instruments, the batcher; gating off) is fed real espeak-ng speech in 100 ms chunks, and
each stage is timed: decoding, the streaming frontend and window assembly, the drift and level statistics,
postprocessing, the batcher hand-off and per-window metrics, building the gRPC responses. The model is not
run (a constant probability row stands in), so
the figures are the server's own work per chunk; ``bench.py`` measures the whole server, gRPC and
onnxruntime included, and ``profile.py`` samples where that time goes. Medians of the rounds, in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hark.config import Settings  # noqa: E402
from hark.core.model_store import load_version  # noqa: E402
from hark.serving.batcher import Batcher  # noqa: E402
from hark.serving.metrics import HarkMetrics  # noqa: E402
from hark.serving.pipeline import StreamPipeline  # noqa: E402
from hark.serving.session import StreamSession  # noqa: E402
from hark.transports.grpc.convert import stream_responses  # noqa: E402
from loadtest.bench import find_version, pcm_chunks, speech  # noqa: E402

STAGES = ("decode", "frontend", "drift and level", "postprocess", "batching and metrics", "responses")


async def one_round(version_dir: Path, chunks: list[bytes], n: int) -> dict[str, float]:
    """µs per chunk of each stage over ``n`` chunks of one fresh stream through the live
    :class:`StreamPipeline`, its model replaced by a constant answer so only Hark's own work is timed."""
    model = load_version(version_dir)
    instruments = HarkMetrics().instruments(model)
    spent = dict.fromkeys(STAGES, 0.0)

    def observe(stage: str, seconds: float) -> None:
        if stage in ("decode", "frontend", "postprocess"):
            spent[stage] += seconds

    def on_audio(samples: np.ndarray, rate: int) -> None:
        t0 = time.perf_counter()
        instruments.audio(samples, rate)
        spent["drift and level"] += time.perf_counter() - t0

    session = StreamSession(
        model,
        sample_rate=model.manifest.frontend.sample_rate,
        encoding="pcm_s16le",
        settings=Settings(gate_dbfs=None),
        stream_id="chunk-cost",
        emit_scores=True,
        observe=observe,
        on_audio=on_audio,
    )
    labels = len(model.manifest.labels)

    def constant_model(batch: np.ndarray) -> np.ndarray:
        return np.full((batch.shape[0], labels), 1 / labels, np.float32)

    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = Batcher(constant_model, executor=executor, max_batch=4, max_delay_s=0, name="chunk-cost")
        pipeline = StreamPipeline(session, batcher, instruments)
        total = 0.0
        for i in range(n):
            t0 = time.perf_counter()
            results = await pipeline.feed(chunks[i % len(chunks)])
            t1 = time.perf_counter()
            responses = [r for scored in results for r in stream_responses(scored, pipeline.emit_scores)]
            spent["responses"] += time.perf_counter() - t1
            total += t1 - t0
            assert responses or not results
        await batcher.close()
    spent["batching and metrics"] = total - sum(spent[s] for s in STAGES[:4])
    return {stage: seconds / n * 1e6 for stage, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Hark's own CPU per 100 ms chunk through the stream pipeline, by stage (no gRPC, no model)."
    )
    parser.add_argument("--store", type=Path, default=REPO / "model_store", help="model store (its first model)")
    parser.add_argument("--chunks", type=int, default=2000, help="chunks per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the medians are printed")
    args = parser.parse_args()
    version_dir = find_version(args.store)
    chunks = pcm_chunks(speech(0.25))
    asyncio.run(one_round(version_dir, chunks, 200))  # warm caches and lazy set-up
    rounds = [asyncio.run(one_round(version_dir, chunks, args.chunks)) for _ in range(args.rounds)]
    medians = {stage: statistics.median(r[stage] for r in rounds) for stage in STAGES}
    print(f"{version_dir}: µs per 100 ms chunk (median of {args.rounds} rounds of {args.chunks})")
    for stage, us in medians.items():
        print(f"  {stage:16s} {us:7.1f}")
    print(f"  {'total':16s} {sum(medians.values()):7.1f}")


if __name__ == "__main__":
    main()
