"""The load tools stream audio at a real server with no errors: k6 (loadtest/k6/stream.js), locust
(loadtest/locustfile.py), each for a few seconds with a few users."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_models import noise, utterance
from tests.integration.conftest import StartHark

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


async def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def _pcm(path: Path) -> Path:
    audio = np.concatenate([utterance(0.3, 0.5, 0.3), noise(0.5, level=0.05)])
    path.write_bytes((audio * 32767).astype("<i2").tobytes())
    return path


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (the dev extra installs it)")
    return found


async def test_k6_streams_with_no_errors(start_hark: StartHark, tiny_model_store: Path, tmp_path: Path) -> None:
    k6 = _tool("k6")
    hark = await start_hark(tiny_model_store)
    summary = tmp_path / "summary.json"
    code, out = await _run(
        [k6, "run", "--quiet", "--no-usage-report", "--summary-export", str(summary), "loadtest/k6/stream.js"],
        REPO,
        {
            "HARK_ADDR": hark.address,
            "USERS": "3",
            "DURATION": "3s",
            "STREAM_S": "1.5",
            "AUDIO": str(_pcm(tmp_path / "audio.pcm")),
            "PROTO_DIR": str(REPO / "proto"),
        },
    )
    assert code == 0, out[-3000:]
    metrics = json.loads(summary.read_text())["metrics"]
    assert metrics["hark_streams_ok"]["count"] >= 3
    assert metrics["hark_window_scores"]["count"] >= 3 * 6
    assert metrics.get("hark_stream_errors", {}).get("count", 0) == 0


async def test_locust_streams_with_no_errors(start_hark: StartHark, tiny_model_store: Path, tmp_path: Path) -> None:
    locust = _tool("locust")
    hark = await start_hark(tiny_model_store)
    code, out = await _run(
        [locust, "-f", "loadtest/locustfile.py", "--headless", "-u", "3", "-r", "3", "-t", "4s", "--host", hark.address,
         "--csv", str(tmp_path / "run"), "--only-summary", "--stop-timeout", "5"],
        REPO,
        {"HARK_STREAM_S": "1.5", "HARK_AUDIO": str(_pcm(tmp_path / "audio.pcm"))},
    )  # fmt: skip
    assert code == 0, out[-3000:]
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "run_stats.csv").open())}
    assert int(rows["StreamClassify"]["Request Count"]) >= 3, rows
    assert int(rows["hop"]["Request Count"]) >= 3 * 6
    assert int(rows["Aggregated"]["Failure Count"]) == 0


async def test_the_benchmarks_baselines_answer_every_hop(tmp_path: Path) -> None:
    """``make bench`` compares Hark with a naive server and a do-nothing transport floor: each must answer
    a real-time stream with one WindowScores per hop, timed and error-free, or its figure means nothing."""
    from loadtest import bench
    from tests.fixtures_models import publish_tiny

    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is not installed")
    version_dir = publish_tiny(tmp_path / "store", "tiny")
    chunks = bench.pcm_chunks(noise(2.0, level=0.1))
    for start in (bench.naive_server, bench.floor_server):
        server = start(version_dir)
        try:
            level = await bench.run_level(server, 2, chunks, 1.2, 1.0)  # measured after the first window
            lifetime_cpu_s = server.cpu_s()
        finally:
            server.stop()
        assert level.errors == 0, start.__name__
        assert level.windows >= 2 * 8, f"{start.__name__}: {level.summary()}"  # ~10 hops per stream-second
        # The CPU figure reads the server's own process: its start-up alone costs clock ticks. The measured
        # second itself may round to zero ticks (10 ms each) for the floor, so it is bounded, not required > 0.
        assert lifetime_cpu_s > 0, start.__name__
        assert 0 <= level.cpu_s <= lifetime_cpu_s, f"{start.__name__}: {level.summary()}"
