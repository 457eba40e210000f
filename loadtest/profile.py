"""Profile the server under load: py-spy samples it while ``bench.py``'s load generator drives N streams.

    python loadtest/profile.py --no-gate --streams 90 --seconds 12   # writes loadtest/results/profile.{collapsed,txt}

The text file lists the functions with the most samples (own time and with callees), the basis of the
"top costs per chunk" in loadtest/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.bench import CLIENT_CORE, REPO, RESULTS, hark_server, pcm_chunks, run_level, speech


def top(collapsed: Path, n: int = 25) -> str:
    """Own and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        frames = stack.split(";")
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(n)]
    lines += ["", "with callees:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(n)]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    import os

    os.sched_setaffinity(0, {CLIENT_CORE})
    server = hark_server(args.store, **({"gate_dbfs": "-inf"} if args.no_gate else {}))
    chunks = pcm_chunks(speech(0.25))
    RESULTS.mkdir(exist_ok=True)
    try:
        await run_level(server, 4, chunks, 0.5, 1.0)
        common = [
            shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy",  # the venv's, else PATH
            "record",
            "--pid",
            str(server.proc.pid),
            "--duration",
            str(int(args.seconds)),
            "--rate",
            "200",
        ]
        raw = RESULTS / "profile.collapsed"
        sampler = subprocess.Popen([*common, "--format", "raw", "-o", str(raw), "--nonblocking"])
        level = await run_level(server, args.streams, chunks, 1.0, args.seconds + 1)
        sampler.wait()
        print(level.summary())
        text = top(raw)
        (RESULTS / "profile.txt").write_text(f"{args.streams} streams, {level.summary()}\n{text}\n")
        print(text)
    finally:
        server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Sample the server with py-spy under N real-time streams.")
    p.add_argument("--streams", type=int, default=90, help="concurrent real-time streams while sampling")
    p.add_argument("--seconds", type=float, default=15, help="how long py-spy samples")
    p.add_argument(
        "--store", type=Path, default=REPO / "model_store", help="model store to serve (default: the bundled one)"
    )
    p.add_argument("--no-gate", action="store_true", help="turn energy gating off (every window reaches the model)")
    asyncio.run(main(p.parse_args()))
