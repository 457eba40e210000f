"""What Hark's own Python costs per 100 ms chunk, stage by stage, without gRPC or the model.

    python loadtest/chunk_cost.py                  # the bundled model, 3 rounds of 2000 chunks
    python loadtest/chunk_cost.py --chunks 500     # quicker

One stream's session (as the server builds it: the model's frontend, drift and metrics instruments,
gating off) is fed real espeak-ng speech in 100 ms chunks, and each stage is timed: decoding, the
streaming frontend and window assembly, the drift and level statistics, postprocessing, building the
responses and the per-window metrics. The model is not run (a constant probability row stands in), so
the figures are the server's own work per chunk; ``bench.py`` measures the whole server, gRPC and
onnxruntime included, and ``profile.py`` samples where that time goes. Medians of the rounds, in µs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtest.bench import find_version, pcm_chunks, speech  # noqa: E402
from service.config import Settings  # noqa: E402
from service.metrics import HarkMetrics  # noqa: E402
from service.model_store import load_version  # noqa: E402
from service.server import _responses  # noqa: E402
from service.session import StreamSession  # noqa: E402

STAGES = ("decode", "frontend", "drift and level", "postprocess", "responses", "metrics")


def one_round(version_dir: Path, chunks: list[bytes], n: int) -> dict[str, float]:
    """µs per chunk of each stage over ``n`` chunks of one fresh stream."""
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
    probabilities = np.full(labels, 1 / labels, np.float32)
    for i in range(n):
        pcm = chunks[i % len(chunks)]
        arrived = time.perf_counter()
        instruments.chunk(len(pcm))
        for window in session.feed_pcm(pcm):
            scored = session.score(window, probabilities)
            t0 = time.perf_counter()
            responses = list(_responses(scored, session.emit_scores))
            t1 = time.perf_counter()
            instruments.window(window.features, probabilities, (e.label for e in scored.events), arrived)
            spent["responses"] += t1 - t0
            spent["metrics"] += time.perf_counter() - t1
            assert responses
    return {stage: seconds / n * 1e6 for stage, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Hark's own CPU per 100 ms chunk, by stage (no gRPC, no model).")
    parser.add_argument("--store", type=Path, default=REPO / "model_store", help="model store (its first model)")
    parser.add_argument("--chunks", type=int, default=2000, help="chunks per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the medians are printed")
    args = parser.parse_args()
    version_dir = find_version(args.store)
    chunks = pcm_chunks(speech(0.25))
    one_round(version_dir, chunks, 200)  # warm caches and lazy set-up
    rounds = [one_round(version_dir, chunks, args.chunks) for _ in range(args.rounds)]
    medians = {stage: statistics.median(r[stage] for r in rounds) for stage in STAGES}
    print(f"{version_dir}: µs per 100 ms chunk (median of {args.rounds} rounds of {args.chunks})")
    for stage, us in medians.items():
        print(f"  {stage:16s} {us:7.1f}")
    print(f"  {'total':16s} {sum(medians.values()):7.1f}")


if __name__ == "__main__":
    main()
