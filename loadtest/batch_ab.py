"""Which ``max_batch`` serves the bundled model on one core for the least CPU? Hark servers take turns.

    python loadtest/batch_ab.py                                   # max_batch 1, 2, 4, 8, 32 at 90 streams
    python loadtest/batch_ab.py --streams 60 --batches 4 32 --rounds 5

One Hark server per ``max_batch`` (``taskset -c 0``, gating off, the bundled ``model_store/``) is started; they
then take turns at the same load of real-time espeak-ng speech (``bench.py``'s client on core 1), ``--rounds``
times each, so drift in what else the machine is doing spreads over all of them. Each turn is a 1.5 s warm-up
and ``--seconds`` measured. The figure per setting is the median server CPU per stream-second, with every
round's p99 latency and RSS. Not part of ``make bench`` or the suite; the default ``max_batch`` comes from it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.bench import CLIENT_CORE, REPO, RESULTS, hark_server, pcm_chunks, run_level, save_result, speech


async def compare(store: Path, streams: int, batches: list[int], rounds: int, seconds: float) -> dict[str, Any]:
    chunks = pcm_chunks(speech(0.25))
    servers = {b: hark_server(store, gate_dbfs="-inf", max_batch=b) for b in batches}
    turns: dict[int, list[dict[str, Any]]] = {b: [] for b in batches}
    try:
        for server in servers.values():
            await run_level(server, 4, chunks, 0.5, 1.0)  # warm up
        for _ in range(rounds):
            for b, server in servers.items():
                level = await run_level(server, streams, chunks, 1.5, seconds)
                turns[b].append(level.summary())
                print(f"max_batch {b:>4}: {level.summary()}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "store": str(store),
        "streams": streams,
        "median_cpu_ms_per_stream_s": {
            str(b): round(1000 * statistics.median(t["cpu_s_per_stream_s"] for t in turns[b]), 2) for b in batches
        },
        "turns": {str(b): t for b, t in turns.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=REPO / "model_store", help="model store to serve")
    p.add_argument("--streams", type=int, default=90, help="concurrent real-time streams in each turn")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 32], help="max_batch settings to compare")
    p.add_argument("--rounds", type=int, default=3, help="turns per setting")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per turn")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for batch-<date>.json")
    args = p.parse_args()
    os.sched_setaffinity(0, {CLIENT_CORE})
    result = asyncio.run(compare(args.store, args.streams, args.batches, args.rounds, args.seconds))
    for b, ms in result["median_cpu_ms_per_stream_s"].items():
        print(f"max_batch {b:>4}: {ms:.2f} ms CPU per stream-second (median of {args.rounds})")
    print(f"written to {save_result(args.out, 'batch', result)}")


if __name__ == "__main__":
    main()
