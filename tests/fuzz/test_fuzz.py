"""Runs the atheris harness (``fuzz_requests.py``) for a bounded time in the suite.

libFuzzer ends the process when its time is up, so the harness runs in a subprocess: exit 0 means no
input broke the oracle; anything else fails with the crashing input saved under the test's tmp folder
(replay it with ``python -m tests.fuzz.fuzz_requests <file>``). ``make fuzz`` runs it for longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("HARK_FUZZ_SECONDS", "12"))


def test_request_handling_survives_fuzzing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARK_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.fuzz_requests",
            f"-max_total_time={SECONDS}",
            f"-artifact_prefix={tmp_path}/",
            "-rss_limit_mb=2048",  # a leak grows past this and counts as a crash
            "-print_final_stats=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    log = [line for line in proc.stderr.splitlines() if not line.startswith("{")]  # not the server's JSON logs
    crashes = sorted(p.name for p in tmp_path.iterdir())
    assert proc.returncode == 0, f"crashes: {crashes}\n" + "\n".join(log[-40:])
    runs = next((line for line in log if line.startswith("stat::number_of_executed_units")), "")
    assert runs and int(runs.split(":")[-1]) > 500, "\n".join(log[-20:])  # it really fuzzed
