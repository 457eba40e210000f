"""The real ``hark`` console script against a real server (in this process, ephemeral port, real onnxruntime).

Each test runs ``hark`` as a subprocess, the way a user or a script does, and holds it to its contract:
with ``--json`` stdout is one JSON object per line and nothing else; errors are one clear line on
stderr; exit codes are the documented ones. The subprocesses run under asyncio so the in-process
server's event loop keeps serving while a test waits for them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from hark.server import RunningServer

pytestmark = pytest.mark.timeout(120)

_SCRIPT = Path(sys.executable).with_name("hark")
HARK = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hark.cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as one JSON object: fails on anything else."""
        assert self.out == "" or self.out.endswith("\n"), self.out
        objects = [json.loads(line) for line in self.out.splitlines()]
        assert all(isinstance(o, dict) for o in objects), self.out
        return objects


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARK_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def hark(*args: str | Path, stdin: bytes | None = None, timeout: float = 60) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *HARK,
        *map(str, args),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def write_wav(path: Path, *, rate: int, subtype: str, channels: int = 1, seconds: float = 1.5) -> Path:
    """A word-like burst (a chirp under an envelope) between silences, in the requested format."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.exp(-(((t - seconds / 2) / (seconds / 8)) ** 2))
    x = 0.5 * envelope * np.sin(2 * np.pi * (300 + 400 * t) * t)
    sf.write(str(path), np.stack([x] * channels, axis=1), rate, subtype=subtype)
    return path


@pytest.fixture
def server_address(running_server: RunningServer) -> str:
    return running_server.address


@pytest.fixture
def wavs(tmp_path: Path) -> list[Path]:
    return [
        write_wav(tmp_path / "8k-stereo-24bit.wav", rate=8_000, subtype="PCM_24", channels=2),
        write_wav(tmp_path / "44k-float.wav", rate=44_100, subtype="FLOAT"),
        write_wav(tmp_path / "16k-int16.wav", rate=16_000, subtype="PCM_16"),
    ]


async def test_models_json(server_address: str) -> None:
    result = await hark("models", "--json", "--server", server_address)
    assert result.code == 0, result.err
    rows = result.json_lines()
    assert rows
    for row in rows:
        assert {"model", "version", "default", "labels", "window_s", "hop_s", "test_accuracy"} <= set(row)
        assert row["labels"] and row["window_s"] > 0 and 0 < row["hop_s"] <= row["window_s"]
    assert sum(row["default"] for row in rows) == len({row["model"] for row in rows})


async def test_models_table(server_address: str) -> None:
    result = await hark("models", "--server", server_address)
    assert result.code == 0, result.err
    header, *rows = result.out.splitlines()
    assert header.split()[:2] == ["MODEL", "VERSION"] and rows
    assert any("*" in row.split()[1] for row in rows)


async def test_classify_json_any_wav_format(server_address: str, wavs: list[Path]) -> None:
    models = (await hark("models", "--json", "--server", server_address)).json_lines()
    default = next(m for m in models if m["default"])
    result = await hark("classify", "--json", "--server", server_address, *wavs)
    assert result.code == 0, result.err
    rows = result.json_lines()
    assert [row["path"] for row in rows] == [str(p) for p in wavs]
    for row in rows:
        assert set(row) == {"path", "label", "score", "scores", "model", "version"}
        assert (row["model"], row["version"]) == (default["model"], default["version"])
        assert list(row["scores"]) == default["labels"]
        assert row["label"] in default["labels"] and row["score"] == max(row["scores"].values())
        assert math.isclose(sum(row["scores"].values()), 1.0, abs_tol=1e-3)


async def test_classify_human(server_address: str, wavs: list[Path]) -> None:
    result = await hark("classify", "--server", server_address, *wavs)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == len(wavs)
    for path, line in zip(wavs, lines, strict=True):
        assert line.startswith(f"{path}  ")
        assert 0.0 <= float(line.split()[-1]) <= 1.0


async def test_classify_bad_files_fail_alone(server_address: str, wavs: list[Path], tmp_path: Path) -> None:
    whole = wavs[2].read_bytes()
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(whole[: len(whole) // 2])
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    result = await hark("classify", "--json", "--server", server_address, truncated, wavs[0], text)
    assert result.code == 2
    rows = result.json_lines()
    assert [row["path"] for row in rows] == [str(truncated), str(wavs[0]), str(text)]
    assert "truncated" in rows[0]["error"]
    assert "label" in rows[1] and "error" not in rows[1]
    assert "cannot read" in rows[2]["error"]
    errors = result.err.splitlines()
    assert any(line.startswith("hark: error: ") and "truncated" in line for line in errors)
    assert any(line.startswith("hark: error: ") and str(text) in line for line in errors)
    assert "Traceback" not in result.err


async def test_classify_unknown_model(server_address: str, wavs: list[Path]) -> None:
    result = await hark("classify", "--server", server_address, "--model", "no-such-model", wavs[0])
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith("hark: error: NOT_FOUND: ")


async def test_stream_fast_json(server_address: str, wavs: list[Path]) -> None:
    result = await hark("stream", "--fast", "--json", "--server", server_address, wavs[0])
    assert result.code == 0, result.err
    for row in result.json_lines():
        assert set(row) == {"label", "score", "time_s"}
        assert 0 <= row["time_s"] <= 1.5
    assert "streaming" in result.err


async def test_stream_scores_json(server_address: str, wavs: list[Path]) -> None:
    result = await hark("stream", "--fast", "--json", "--scores", "--server", server_address, wavs[1])
    assert result.code == 0, result.err
    rows = result.json_lines()
    hops = [row for row in rows if "scores" in row]
    events = [row for row in rows if "scores" not in row]
    assert hops, "one scores object per hop expected"
    ends = [row["end_s"] for row in hops]
    hop = ends[1] - ends[0]
    assert np.allclose(np.diff(ends), hop, atol=1e-6)
    assert 1.5 - hop < ends[-1] < 1.5 + hop  # the server pads the tail to score the last audio
    assert all(set(row) == {"start_s", "end_s", "scores", "gated"} for row in hops)
    assert all(set(row) == {"label", "score", "time_s"} for row in events)


async def test_stream_human_and_stdin(server_address: str, wavs: list[Path]) -> None:
    result = await hark("stream", "--fast", "--scores", "--server", server_address, "-", stdin=wavs[2].read_bytes())
    assert result.code == 0, result.err
    assert result.out.strip(), "hop lines expected with --scores"
    assert all(" s " in line for line in result.out.splitlines())
    assert "event" in result.err.splitlines()[-1]


async def test_stream_paces_in_real_time(server_address: str, tmp_path: Path) -> None:
    clip = write_wav(tmp_path / "one-second.wav", rate=16_000, subtype="PCM_16", seconds=1.0)
    started = time.monotonic()
    result = await hark("stream", "--json", "--server", server_address, clip)
    elapsed = time.monotonic() - started
    assert result.code == 0, result.err
    assert elapsed >= 0.9  # ten 100 ms chunks, the last one sent at 0.9 s


async def test_stream_pinned_version(server_address: str, wavs: list[Path]) -> None:
    models = (await hark("models", "--json", "--server", server_address)).json_lines()
    pinned = models[0]
    result = await hark(
        "stream", "--fast", "--server", server_address, "--model", pinned["model"], "--model-version",
        str(pinned["version"]),
        wavs[2],
    )  # fmt: skip
    assert result.code == 0, result.err
    assert f"{pinned['model']} v{pinned['version']}" in result.err
    missing = await hark("stream", "--fast", "--server", server_address, "--model-version", "999999", wavs[2])
    assert missing.code == 2 and missing.err.startswith("hark: error: NOT_FOUND: ")


async def test_stream_unreadable_file(server_address: str, tmp_path: Path) -> None:
    result = await hark("stream", "--json", "--server", server_address, tmp_path / "missing.wav")
    assert result.code == 2 and result.out == ""
    assert result.err == f"hark: error: {tmp_path / 'missing.wav'}: no such file\n"


async def test_ctrl_c_during_stream(server_address: str, tmp_path: Path) -> None:
    clip = write_wav(tmp_path / "long.wav", rate=16_000, subtype="PCM_16", seconds=20.0)
    proc = await asyncio.create_subprocess_exec(
        *HARK, "stream", "--server", server_address, str(clip),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
        # a suite started in the background (`make test &`) inherits SIGINT ignored, and so would the CLI
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 30)  # the stream is running once this arrives
    assert b"streaming" in first
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert err.decode() == "hark: interrupted\n"


async def test_health(server_address: str) -> None:
    result = await hark("health", "--server", server_address)
    assert (result.code, result.out) == (0, "SERVING\n")
    result = await hark("health", "--server", server_address, "--service", "hark.v1.Classifier")
    assert (result.code, result.out) == (0, "SERVING\n")
    result = await hark("health", "--server", server_address, "--service", "nope")
    assert (result.code, result.out) == (1, "SERVICE_UNKNOWN\n")


async def test_bad_server_address(wavs: list[Path]) -> None:
    malformed = await hark("classify", "--json", "--server", "localhost", wavs[0])
    assert malformed.code == 2 and malformed.out == ""
    assert "is not HOST:PORT" in malformed.err
    for command in (["models", "--json"], ["classify", "--json", wavs[0]], ["stream", "--fast", "--json", wavs[0]]):
        result = await hark(*command, "--server", "127.0.0.1:1")
        assert result.code == 3, (command, result.err)
        assert "hark: error: UNAVAILABLE: " in result.err and "127.0.0.1:1" in result.err
        assert "Traceback" not in result.err
        for row in result.json_lines():  # classify reports the file it could not classify
            assert set(row) == {"path", "error"}
    down = await hark("health", "--server", "127.0.0.1:1")
    assert down.code == 1
