"""Server CPU per stream-second of several servers at one load, taking turns: which change pays, measured together.

    python loadtest/ab.py                                  # every variant below at 40 streams, 3 rounds
    python loadtest/ab.py --variants windowed streaming floor --streams 60
    python loadtest/ab.py --old /tmp/hark-ad5cb8b          # adds the code of another checkout (git archive)

Variants (each a server on core 0, gating off, the client on core 1 as in ``bench.py``):

* ``windowed``: Hark with the bundled ``model_store/`` (its newest keywords version, windowed), default settings;
* ``delay0``: the same with ``max_delay_ms`` 0 (batch only what piles up while the model runs);
* ``thread``: the same with ``inline_inference`` off (each batch handed to the inference thread);
* ``streaming``: Hark with the bundled streaming model (``keywords-streaming``), or ``--streaming-store``'s;
* ``workers2``: ``hark serve --workers 2`` with the bundled store, both workers on core 0 (the cost of the
  supervisor and of a second process, not their scaling: that needs a core per worker);
* ``floor``: the transport floor (``floor_server.py``: the same gRPC API doing no work);
* ``old``: ``--old``'s checkout (``git archive COMMIT | tar -x -C DIR``) with its own bundled store: ``python -m
  hark.server`` from its ``service/``, or ``python -m service.server`` for a commit from before the restructure.

The servers start once; then, ``--rounds`` times, each takes its turn at the same load of real-time espeak-ng
speech, so drift in what else the machine does spreads over all of them. The figure is each variant's median
CPU per stream-second and its ratio to ``windowed`` and to ``floor``. Not part of ``make bench``; a tool to
decide what to keep (``loadtest/README.md``).
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

from loadtest.bench import (
    CLIENT_CORE,
    REPO,
    RESULTS,
    Server,
    _tree_cpu_s,
    find_version,
    floor_server,
    hark_server,
    pcm_chunks,
    run_level,
    save_result,
    speech,
    streaming_version,
)
from loadtest.server_process import hark_env


class ProcessTree(Server):
    """A supervisor and its workers: CPU counted over every process of the tree."""

    def cpu_s(self) -> float:
        return _tree_cpu_s(self.proc.pid)


VARIANTS = ("windowed", "thread", "delay0", "streaming", "workers2", "floor", "old")


def start(variant: str, args: argparse.Namespace) -> Server | None:
    store = REPO / "model_store"
    if variant == "windowed":
        return hark_server(store, gate_dbfs="-inf")
    if variant == "delay0":
        return hark_server(store, gate_dbfs="-inf", max_delay_ms=0)
    if variant == "thread":
        return hark_server(store, gate_dbfs="-inf", inline_inference=False)
    if variant == "streaming":
        version = streaming_version(args.streaming_store or store)
        if version is None:
            return None
        return hark_server(version.parents[1], gate_dbfs="-inf", default_model=version.parent.name)
    if variant == "workers2":
        env = hark_env(store, log_level="info", control_interval_s=0, max_streams=100000, gate_dbfs="-inf")
        return ProcessTree.start([sys.executable, "-m", "hark.cli", "serve", "--workers", "2"], env)
    if variant == "floor":
        return floor_server(find_version(store))
    if variant == "old" and args.old:
        env = hark_env(args.old / "model_store", log_level="info", control_interval_s=0, max_streams=100000)
        env |= {"HARK_GATE_DBFS": "-inf"}
        if (args.old / "service" / "hark").is_dir():  # a checkout of today's layout: the hark package
            return Server.start([sys.executable, "-m", "hark.server"], env | {"PYTHONPATH": str(args.old / "service")})
        return Server.start([sys.executable, "-m", "service.server"], env | {"PYTHONPATH": str(args.old)})
    return None


async def compare(args: argparse.Namespace) -> dict[str, Any]:
    chunks = pcm_chunks(speech(0.25))
    servers = {v: s for v in args.variants if (s := start(v, args)) is not None}
    turns: dict[str, list[dict[str, Any]]] = {v: [] for v in servers}
    try:
        for server in servers.values():
            await run_level(server, 4, chunks, 0.5, 1.0)  # warm up
        for _ in range(args.rounds):
            for v, server in servers.items():
                level = await run_level(server, args.streams, chunks, 1.5, args.seconds)
                turns[v].append(level.summary())
                print(f"{v:>10}: {level.summary()}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    median = {v: 1000 * statistics.median(t["cpu_s_per_stream_s"] for t in turns[v]) for v in servers}
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "streams": args.streams,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "old": str(args.old) if args.old else None,
        "streaming_store": str(args.streaming_store) if args.streaming_store else None,
        "median_cpu_ms_per_stream_s": {v: round(ms, 3) for v, ms in median.items()},
        "median_p99_ms": {v: round(statistics.median(t["p99_ms"] for t in turns[v]), 1) for v in servers},
        "turns": turns,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="servers to compare")
    p.add_argument("--streaming-store", type=Path, help="a store with a streaming model (default: the bundled one)")
    p.add_argument("--old", type=Path, help="another checkout to compare (e.g. git archive ad5cb8b | tar -x -C DIR)")
    p.add_argument("--streams", type=int, default=40, help="concurrent real-time streams in each turn")
    p.add_argument("--rounds", type=int, default=3, help="turns per variant")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per turn")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for ab-<date>.json")
    args = p.parse_args()
    os.sched_setaffinity(0, {CLIENT_CORE})
    result = asyncio.run(compare(args))
    ms = result["median_cpu_ms_per_stream_s"]
    for v, value in ms.items():
        ratios = "  ".join(f"{value / ms[b]:.2f}x {b}" for b in ("windowed", "floor") if b in ms and b != v)
        print(f"{v:>10}: {value:7.2f} ms CPU per stream-second, p99 {result['median_p99_ms'][v]} ms  {ratios}")
    print(f"written to {save_result(args.out, 'ab', result)}")


if __name__ == "__main__":
    main()
