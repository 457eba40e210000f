"""Other languages reach Hark too: the proto lints and builds with buf, the README's grpcurl line streams a
file, and the Node.js client in clients/node gives the Python client's events. All against a real server.

``make test`` installs the Node packages (``npm ci`` in clients/node, buf among them); grpcurl comes from
the ``dev`` extra. A test skips, saying why, only where its tool cannot be installed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark.client import AsyncHarkClient, Detection
from tests.fixtures_models import SAMPLE_RATE, noise, quiet
from tests.integration.conftest import Hark

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"
BUF = NODE_CLIENT / "node_modules" / ".bin" / "buf"
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))

pytestmark = pytest.mark.timeout(120)


def two_words() -> np.ndarray:
    return np.concatenate([quiet(1.0), noise(0.8), quiet(2.0), noise(0.8, seed=3), quiet(1.5)])


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "two-words.wav"
    sf.write(path, two_words(), SAMPLE_RATE, subtype="PCM_16")
    return path


async def python_events(address: str, path: Path) -> list[tuple[str, float]]:
    async with AsyncHarkClient(address) as client:
        return [(i.label, i.time_s) async for i in client.stream(path, realtime=False) if isinstance(i, Detection)]


async def run(*command: str | Path, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *map(str, command), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_buf_lints_and_builds_the_api() -> None:
    if not BUF.exists():
        pytest.skip("buf is not installed: run `make test` (npm ci in clients/node)")
    for command in ("lint", "build"):
        done = subprocess.run([str(BUF), command], cwd=ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_proto_names_packages_for_other_languages() -> None:
    proto = (ROOT / "proto" / "hark" / "v1" / "hark.proto").read_text()
    for option in ("go_package", "java_package", "csharp_namespace"):
        assert re.search(rf"^option {option} = \"[^\"]+\";$", proto, re.MULTILINE), option


async def test_the_node_client_gives_the_python_client_s_events(hark: Hark, clip: Path) -> None:
    if shutil.which("node") is None or not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.skip("Node.js or its packages are not installed: run `make test` (npm ci in clients/node)")
    code, out, err = await run("node", NODE_CLIENT / "stream.js", clip, "--server", hark.address)
    assert code == 0, err
    node = [json.loads(line) for line in out.splitlines()]
    python = await python_events(hark.address, clip)
    assert [e["label"] for e in node] == [label for label, _ in python] == ["yes", "yes"]
    assert [e["time_s"] for e in node] == pytest.approx([t for _, t in python], abs=1e-9)
    assert "tiny v1" in err


def _readme_grpcurl_block() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)
    matching = [b for b in blocks if "grpcurl -plaintext -d @" in b and "StreamClassify" in b]
    assert len(matching) == 1, "the README shows grpcurl streaming a file, once"
    return matching[0]


async def test_the_readme_s_grpcurl_line_streams_a_file(hark: Hark, tmp_path: Path) -> None:
    if not Path(GRPCURL).exists():
        pytest.skip("grpcurl is not installed: it comes with the dev extra (make test)")
    spoken = tmp_path / "yes.wav"  # the README speaks it with espeak-ng at 22050 Hz; the tiny model hears noise
    at_22k = np.interp(np.arange(0, len(two_words()), SAMPLE_RATE / 22_050), np.arange(len(two_words())), two_words())
    sf.write(spoken, at_22k, 22_050, subtype="PCM_16")
    script = _readme_grpcurl_block()
    script = "\n".join(line for line in script.splitlines() if not line.startswith("espeak-ng"))
    script = script.replace("127.0.0.1:50051", hark.address).replace("/tmp/yes.wav", str(spoken))
    script = script.replace("grpcurl ", f"{GRPCURL} ")
    code, out, err = await run("bash", "-o", "pipefail", "-c", script)
    assert code == 0, err
    responses = [json.loads(doc) for doc in re.findall(r"^\{.*?^\}", out, re.MULTILINE | re.DOTALL)]
    assert responses[0]["started"]["model"] == "tiny"
    assert [r["event"]["label"] for r in responses if "event" in r] == ["yes", "yes"]
