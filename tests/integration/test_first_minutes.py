"""What a new user meets first: ``make run`` brings what the Quick start uses, the default ports do not
clash with common neighbours, and a clash is one line that says how to fix it."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from hark.config import Settings
from tests.integration.test_cli import _env
from tests.integration.test_cli import hark as run_hark

ROOT = Path(__file__).resolve().parents[2]
NODE_EXPORTER_PORT = 9100

pytestmark = pytest.mark.timeout(120)


def test_the_default_metrics_port_is_not_node_exporter_s() -> None:
    assert Settings().metrics_port != NODE_EXPORTER_PORT
    assert "9100" not in (ROOT / "Dockerfile").read_text()


async def test_a_taken_metrics_port_is_one_line_saying_how_to_fix_it(tiny_model_store: Path) -> None:
    with socket.socket() as squatter:  # node_exporter, say
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        result = await run_hark(
            "serve", "--port", "0", "--metrics-port", str(taken), "--model-store", tiny_model_store, timeout=30
        )
    assert result.code == 2
    assert result.err.count("\n") == 1 and result.err.startswith(
        f"hark: error: cannot serve metrics on 127.0.0.1:{taken}"
    )
    assert "--metrics-port PORT or HARK_METRICS_PORT=PORT" in result.err
    assert "Traceback" not in result.err


def test_make_run_installs_what_the_quick_start_uses() -> None:
    plan = subprocess.run(["make", "-n", "-B", "run"], cwd=ROOT, capture_output=True, text=True, env=_env(), check=True)
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    if "espeak-ng" in quick_start:
        assert "espeak-ng" in plan.stdout
    if "hark listen" in quick_start:
        assert re.search(r"pip install .*\.\[mic\]", plan.stdout) and "libportaudio2" in plan.stdout
