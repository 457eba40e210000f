"""Is the server's memory flat under steady streaming? RSS sampled while N real-time streams run for minutes.

    make memory                                            # 40 streams for 10 minutes (MEMORY_MINUTES=2)
    python loadtest/memory.py --streams 40 --minutes 10    # the same; writes loadtest/results/memory-<date>.json
    python loadtest/memory.py --streams 4 --minutes 0.34 --slice-s 5 --out /tmp/memory.json   # a smoke run

The server (``taskset -c 0``) serves ``--store``, by default the bundled ``model_store/`` when it holds a
version, else the tiny test model; the load (``bench.py``'s client, pinned to core 1) streams espeak-ng speech
at real-time pace in slices of ``--slice-s`` seconds, each slice opening and closing its N streams, so both
steady streaming and stream churn are covered. The server's RSS is read after each slice. The report gives
RSS after warm-up (the first two slices are left out, allocator and caches settle there) and at the end, the
growth between them and the least-squares slope in MiB per minute. Exit status 1 when any stream failed,
since then the load was not what was measured. Needs ``taskset`` and ``espeak-ng``; not part of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.bench import CLIENT_CORE, REPO, RESULTS, hark_server, pcm_chunks, run_level, speech
from tests.fixtures_models import publish_tiny

# Slices left out of the trend: the allocator, onnxruntime's arenas and gRPC's buffers settle in them.
WARMUP_SLICES = 2
# Each slice's first second is its streams' warm-up, as in the benchmark's load levels.
SLICE_WARMUP_S = 1.0


@dataclass(frozen=True)
class Sample:
    """The server's state after one slice of load."""

    minute: float
    rss_mib: float
    p99_ms: float
    errors: int


def rss_trend(samples: Sequence[Sample]) -> dict[str, float]:
    """RSS after warm-up and at the end, the growth between them and the least-squares slope per minute.

    With too few slices to leave the warm-up out, every slice counts."""
    steady = samples[WARMUP_SLICES:] if len(samples) > WARMUP_SLICES + 1 else samples
    minutes = np.array([s.minute for s in steady])
    rss = np.array([s.rss_mib for s in steady])
    slope = float(np.polyfit(minutes, rss, 1)[0]) if len(steady) > 1 else 0.0
    return {
        "rss_first_steady_mib": steady[0].rss_mib,
        "rss_last_mib": steady[-1].rss_mib,
        "rss_max_mib": max(s.rss_mib for s in samples),
        "growth_mib": round(steady[-1].rss_mib - steady[0].rss_mib, 2),
        "slope_mib_per_min": round(slope, 3),
    }


def bundled_or_tiny(workdir: Path) -> Path:
    """The bundled model store when it holds a version; else a store with the tiny test model in ``workdir``."""
    bundled = REPO / "model_store"
    if any(bundled.glob("*/*/model.onnx")):
        return bundled
    store = workdir / "store"
    publish_tiny(store, "tiny")
    return store


async def measure(store: Path, streams: int, minutes: float, slice_s: float) -> list[Sample]:
    """Slices of ``streams`` real-time streams until ``minutes`` have passed; one sample after each."""
    os.sched_setaffinity(0, {CLIENT_CORE})
    chunks = pcm_chunks(speech(0.25))
    server = hark_server(store)
    samples: list[Sample] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < minutes * 60:
            level = await run_level(server, streams, chunks, SLICE_WARMUP_S, slice_s)
            sample = Sample(
                minute=round((time.monotonic() - t0) / 60, 2),
                rss_mib=round(server.rss() / 2**20, 2),
                p99_ms=round(level.pct(99), 2),
                errors=level.errors,
            )
            samples.append(sample)
            print(sample, flush=True)
    finally:
        server.stop()
    return samples


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Server RSS over minutes of real-time streaming (see the docstring).")
    parser.add_argument("--streams", type=int, default=40, help="concurrent real-time streams in each slice")
    parser.add_argument("--minutes", type=float, default=10, help="how long to keep the load on")
    parser.add_argument("--slice-s", type=float, default=30, help="seconds of measured load per slice (one sample)")
    parser.add_argument(
        "--store", type=Path, default=None, help="model store to serve (default: model_store/, else the tiny model)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON report path (default: loadtest/results/memory-<date>.json)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("taskset") is None or shutil.which("espeak-ng") is None:
        print("needs taskset (util-linux) and espeak-ng", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the server this run started is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    date = dt.datetime.now(dt.UTC)
    with contextlib.ExitStack() as stack:
        store = args.store or bundled_or_tiny(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        samples = asyncio.run(measure(store, args.streams, args.minutes, args.slice_s))
    if not samples:
        print("no slice completed: raise --minutes or lower --slice-s", file=sys.stderr)
        return 2
    errors = sum(s.errors for s in samples)
    summary: dict[str, Any] = {
        "date": date.isoformat(timespec="seconds"),
        "store": str(store),
        "streams": args.streams,
        "minutes": args.minutes,
        "slice_s": args.slice_s,
        **rss_trend(samples),
        "errors": errors,
    }
    out: Path = args.out or RESULTS / f"memory-{date:%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**summary, "samples": [dataclasses.asdict(s) for s in samples]}, indent=2) + "\n")
    print(summary)
    print(f"written to {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
