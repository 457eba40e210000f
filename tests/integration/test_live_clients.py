"""``hark listen`` and ``hark stream -`` against a real server: live sources, live answers, clean endings.

The CLI runs as a subprocess, as a user runs it; the server runs in this process (tiny model: a noise
burst is its word ``yes``). Live means: the first event reaches stdout while the pipe is still open, and a
device's events come no sooner than their audio has been played.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hark.client import AsyncHarkClient
from tests.fixtures_models import SAMPLE_RATE, noise, quiet
from tests.integration.conftest import Hark
from tests.integration.test_cli import HARK, _env
from tests.integration.test_cli import hark as run_hark

pytestmark = pytest.mark.timeout(180)


def two_words() -> np.ndarray:
    return np.concatenate([quiet(1.0), noise(0.8), quiet(2.0), noise(0.8, seed=3), quiet(1.5)])


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def s16le(samples: np.ndarray) -> bytes:
    return np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


# SIGINT back to its default before exec: a suite started in the background (`make test &`) inherits it
# ignored, and so would the CLI. A trampoline, not preexec_fn: forking this process (gRPC threads running)
# to run Python code before exec can kill the child in gRPC's fork handlers.
_SIGINT_DEFAULT = [
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
]  # fmt: skip


async def spawn(*args: str | Path, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *_SIGINT_DEFAULT, *HARK, *map(str, args),
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip


async def wait_for_line(stream: asyncio.StreamReader | None, text: str, timeout: float = 30) -> str:
    assert stream is not None
    seen = []
    async with asyncio.timeout(timeout):
        while line := (await stream.readline()).decode():
            if text in line:
                return line
            seen.append(line)
    raise AssertionError(f"{text!r} never came; the output ended after: {''.join(seen)}")


# ------------------------------------------------------------------------------------------ hark stream -


@pytest.mark.parametrize("form", ["raw", "wav", "raw-realtime"])
async def test_the_first_event_of_a_pipe_reaches_the_terminal_while_the_pipe_is_still_open(
    hark: Hark, form: str
) -> None:
    options = ["--raw"] if form.startswith("raw") else []
    pace = [] if form.endswith("realtime") else ["--fast"]
    payload = s16le(two_words()) if form.startswith("raw") else wav_bytes(two_words())
    if form == "wav":  # as a streaming writer leaves it: the header cannot know the length
        payload = payload[:40] + b"\xff\xff\xff\xff" + payload[44:]
    proc = await spawn("stream", "-", "--json", "--server", hark.address, *options, *pace, stdin=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(payload)
    await proc.stdin.drain()  # ... and the pipe stays open: the writer is still "recording"
    first = json.loads(await wait_for_line(proc.stdout, '"label"', timeout=60))
    assert proc.returncode is None, "the event must come while stdin is open"
    assert first["label"] == "yes" and first["time_s"] < 2.5
    proc.stdin.close()
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    rest = [json.loads(line) for line in out.decode().splitlines()]
    assert [e["label"] for e in rest] == ["yes"] and rest[0]["time_s"] > 2.5
    assert "2 events in 6.10 s of audio" in err.decode()


@pytest.mark.parametrize(("fmt", "subtype"), [("WAV", "PCM_24"), ("WAV", "FLOAT"), ("FLAC", "PCM_16")])
async def test_stdin_in_any_format_gives_the_file_s_events(hark: Hark, tmp_path: Path, fmt: str, subtype: str) -> None:
    audio = np.stack([two_words()] * 2, axis=1)  # stereo, at 22.05 kHz: mixed and resampled on the way
    rate = 22_050
    resampled = np.interp(np.arange(0, len(audio), SAMPLE_RATE / rate), np.arange(len(audio)), audio[:, 0])
    data = wav_bytes(np.stack([resampled, resampled], 1), rate, fmt, subtype)
    path = tmp_path / f"clip.{fmt.lower()}"
    path.write_bytes(data)
    from_file = await run_hark("stream", "--fast", "--json", "--server", hark.address, path)
    from_pipe = await run_hark("stream", "--fast", "--json", "--server", hark.address, "-", stdin=data)
    assert from_pipe.code == 0, from_pipe.err
    assert [e["label"] for e in from_pipe.json_lines()] == ["yes", "yes"]
    assert from_pipe.json_lines() == from_file.json_lines()


async def test_stdin_that_is_not_audio_is_one_clear_line(hark: Hark) -> None:
    result = await run_hark("stream", "--server", hark.address, "-", stdin=b"this is not audio at all, just text\n")
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("hark: error: cannot read stdin as audio") and "--raw" in result.err
    assert len(result.err.splitlines()) == 1


async def test_raw_f32le_and_a_partial_last_sample(hark: Hark) -> None:
    payload = two_words().astype("<f4").tobytes() + b"\x01"  # a stray byte at the end is not a sample
    result = await run_hark(
        "stream", "-", "--raw", "--encoding", "f32le", "--fast", "--json", "--server", hark.address, stdin=payload
    )
    assert result.code == 0, result.err
    assert [e["label"] for e in result.json_lines()] == ["yes", "yes"]


async def test_fast_stream_of_a_long_file_shows_progress(hark: Hark, tmp_path: Path) -> None:
    long = tmp_path / "long.wav"
    sf.write(long, np.tile(two_words(), 5), SAMPLE_RATE, subtype="PCM_16")
    result = await run_hark("stream", "--fast", "--progress", "--server", hark.address, long)
    assert result.code == 0, result.err
    progress = [line for line in result.err.splitlines() if line.startswith("hark: sent ")]
    assert progress[-1] == "hark: sent 30.5 of 30.5 s (100%)"
    assert len(progress) >= 5  # a line per tenth of the file off a terminal


# ------------------------------------------------------------------------------------------- hark listen


async def test_listen_prints_the_devices_events_in_order_at_real_time_pace(hark: Hark, tmp_path: Path) -> None:
    clip = tmp_path / "spoken.wav"
    sf.write(clip, two_words(), SAMPLE_RATE, subtype="PCM_16")
    proc = await spawn("listen", "--json", "--device", f"file:{clip}", "--server", hark.address)
    await wait_for_line(proc.stderr, "listening to file")
    started = time.monotonic()
    arrivals: list[tuple[float, dict[str, object]]] = []
    assert proc.stdout is not None
    while line := await asyncio.wait_for(proc.stdout.readline(), 60):
        arrivals.append((time.monotonic() - started, json.loads(line)))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert [e["label"] for _, e in arrivals] == ["yes", "yes"]
    times = [float(e["time_s"]) for _, e in arrivals]  # type: ignore[arg-type]
    assert times[0] < 2.5 < times[1]
    for arrived_s, event in arrivals:  # a device cannot be heard before it has been played
        assert arrived_s >= float(event["time_s"]) - 0.2  # type: ignore[arg-type]
    assert "the source ended: 2 events in" in err.decode() and "(yes 2)" in err.decode()


async def test_ctrl_c_ends_listen_with_the_stream_s_summary(hark: Hark, tmp_path: Path) -> None:
    clip = tmp_path / "long.wav"
    sf.write(clip, np.tile(two_words(), 4), SAMPLE_RATE, subtype="PCM_16")
    proc = await spawn("listen", "--device", f"file:{clip}", "--server", hark.address)
    first = await wait_for_line(proc.stdout, " yes ", timeout=60)
    assert "yes" in first
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    last = err.decode().splitlines()[-1]
    assert last.startswith("hark: stopped: ") and "(yes " in last
    assert "Traceback" not in err.decode()


async def test_listen_without_the_device_is_one_clear_line(hark: Hark) -> None:
    result = await run_hark("listen", "--device", "no-such-microphone-here", "--server", hark.address)
    assert result.code == 2 and result.out == ""
    assert len(result.err.splitlines()) == 1 and result.err.startswith("hark: error: ")
    assert "Traceback" not in result.err
    listed = await run_hark("listen", "--list-devices", "--json")
    assert listed.code in (0, 2), listed.err  # 2 only where PortAudio itself is missing, with one line
    assert "Traceback" not in listed.err


# ------------------------------------------------------------------------------------ Ctrl-C under load


async def _load(address: str, streams: int, seconds: float) -> None:
    async def one() -> None:
        async with AsyncHarkClient(address) as client:
            async for _ in client.stream(np.tile(two_words(), 1)[: int(seconds * SAMPLE_RATE)], realtime=True):
                pass

    await asyncio.gather(*(one() for _ in range(streams)))


async def test_ctrl_c_on_a_real_time_stream_under_load_never_hangs(hark: Hark, tmp_path: Path) -> None:
    clip = tmp_path / "long.wav"
    sf.write(clip, np.tile(two_words(), 5), SAMPLE_RATE, subtype="PCM_16")
    load = asyncio.create_task(_load(hark.address, streams=20, seconds=6.0))
    try:
        for attempt in range(5):
            proc = await spawn("stream", "--server", hark.address, clip)
            await wait_for_line(proc.stderr, "streaming")
            await asyncio.sleep(0.1 * attempt)  # interrupt at different points of the chunk cycle
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 20)  # a hang fails here
            assert proc.returncode == 130, err.decode()
            assert err.decode().endswith("hark: interrupted\n")
    finally:
        await load


async def test_ctrl_c_while_the_pipe_is_open_and_quiet_ends_at_once(hark: Hark) -> None:
    """gRPC's request thread is then blocked reading stdin: the close must not wait for it."""
    proc = await spawn("stream", "-", "--raw", "--server", hark.address, stdin=True)
    assert proc.stdin is not None
    proc.stdin.write(s16le(quiet(0.5)))
    await proc.stdin.drain()
    await wait_for_line(proc.stderr, "streaming stdin")
    await asyncio.sleep(1.0)  # all sent; the client now waits on a silent, open pipe
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)  # a hang fails here
    assert proc.returncode == 130, err.decode()
    assert err.decode().endswith("hark: interrupted\n")
