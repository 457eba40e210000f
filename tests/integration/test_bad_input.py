"""Hostile and broken input, in one table per entry point: each gets its status code and a message a
person can act on, none crashes the server, logs a bug or disturbs a good stream running beside it.

The cases already in ``test_server.py`` (audio before config, a second config, empty requests, odd byte
counts, rate 0, encoding 0 and 7, NaN floats, an over-limit chunk, ``../`` and ``a/b`` model names,
unknown model and version; the Classify table) and ``test_cli.py`` (a truncated WAV and a text file to
``hark classify``) are not repeated here; this file adds what they miss.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from hark.v1 import hark_pb2
from loadtest.soak import audio, config, refusal_status
from tests.fixtures_models import noise
from tests.integration.conftest import StartHark
from tests.integration.test_cli import hark as run_hark
from tests.integration.test_cli import write_wav
from tests.integration.test_faults import bug_lines, wait_until_idle
from tests.integration.test_server import audio_requests, expected_windows, run_stream

pytestmark = pytest.mark.timeout(60)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

# Limits of the server under test, small so the limits themselves are exercised.
LIMITS = {"max_chunk_bytes": 64_000, "max_message_bytes": 256 * 1024, "max_stream_s": 3.0}
# Malformed protobuf: a length-delimited field whose length runs past the end of the message.
MALFORMED = b"\x0a\xff\xff\xff\xff\x0f"


def f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


F32 = {"encoding": hark_pb2.PCM_F32LE}

# name: (requests, or raw bytes for messages that are not protobuf; status; part of the message)
BAD_STREAMS: dict[str, tuple[list[hark_pb2.StreamRequest] | list[bytes], grpc.StatusCode, str]] = {
    "empty chunk before the config": ([audio(b"")], INVALID, "send a StreamConfig first"),
    "rate -1 (uint32: 4294967295)": ([config(sample_rate_hz=2**32 - 1)], INVALID, "4294967295 Hz is not supported"),
    "rate 10 MHz": ([config(sample_rate_hz=10_000_000)], INVALID, "10000000 Hz is not supported"),
    "rate 1 Hz": ([config(sample_rate_hz=1)], INVALID, "use one of 8000"),
    "encoding 99": ([config(encoding=99)], INVALID, "encoding 99 is not supported"),
    "+Inf float": ([config(**F32), audio(f32(0.1, np.inf))], INVALID, "NaN or infinite"),
    "-Inf float": ([config(**F32), audio(f32(-np.inf))], INVALID, "NaN or infinite"),
    "NaN after good audio": (
        [config(**F32), audio(f32(*noise(0.5))), audio(f32(0.0, np.nan))],
        INVALID,
        "NaN or infinite",
    ),
    "odd float byte count": ([config(**F32), audio(b"\0" * 6)], INVALID, "6 bytes is not a whole number of 4-byte"),
    "chunk over max_chunk_bytes": ([config(), audio(bytes(64_002))], INVALID, "exceeds the limit of 64000 bytes"),
    "message over max_message_bytes": ([config(), audio(bytes(300_000))], EXHAUSTED, "larger than max"),
    "stream over max_stream_s": (
        [config(), *audio_requests(noise(3.5))],
        EXHAUSTED,
        "exceeds the limit of 3 s of audio",
    ),
    "model '..'": ([config(model="..")], INVALID, "is not valid"),
    "model 'tiny/../tiny'": ([config(model="tiny/../tiny")], INVALID, "is not valid"),
    "model '/etc/passwd'": ([config(model="/etc/passwd")], INVALID, "is not valid"),
    "model 'tiny\\\\..'": ([config(model="tiny\\..")], INVALID, "is not valid"),
    "model with NUL": ([config(model="tiny\x00")], INVALID, "is not valid"),
    "model in full-width letters": ([config(model="\uff54\uff49\uff4e\uff59")], INVALID, "is not valid"),
    "model name of 65 chars": ([config(model="t" * 65)], INVALID, "is not valid"),
    "version 4294967295": ([config(version=2**32 - 1)], NOT_FOUND, "no valid version 4294967295 (available: 1)"),
    "malformed protobuf first": ([MALFORMED], INVALID, "not a valid hark.v1.StreamRequest"),
    "malformed protobuf after the config": (
        [config().SerializeToString(), MALFORMED],
        INVALID,
        "not a valid hark.v1.StreamRequest",
    ),
}


async def test_bad_streams(start_hark: StartHark, tiny_model_store: Path, capfd: pytest.CaptureFixture[str]) -> None:
    h = await start_hark(tiny_model_store, **LIMITS)
    samples = noise(2.0)
    good = asyncio.ensure_future(run_stream(h.stub, [config(emit_scores=True), *audio_requests(samples)], pace_s=0.01))

    async def one(requests: list[hark_pb2.StreamRequest] | list[bytes]) -> tuple[grpc.StatusCode, str]:
        # The blocking client (raw bytes go out as they are): the 3.5 s stream is refused at 3 s, and a
        # grpc.aio client still writing the rest can report INTERNAL instead of the server's status
        # (grpc/grpc#36066).
        code, details, _ = await asyncio.to_thread(refusal_status, h.address, requests)
        return code, details

    outcomes = await asyncio.gather(*(one(requests) for requests, _, _ in BAD_STREAMS.values()))
    wrong = {
        name: outcome
        for (name, (_, code, message)), outcome in zip(BAD_STREAMS.items(), outcomes, strict=True)
        if outcome[0] != code or message not in outcome[1]
    }
    assert wrong == {}
    good_result = await good
    assert good_result.code == grpc.StatusCode.OK, good_result.details
    assert len(good_result.scores) == expected_windows(samples.size)
    await wait_until_idle(h)
    assert bug_lines("".join(capfd.readouterr())) == []


def _classify(**fields: object) -> hark_pb2.ClassifyRequest:
    values: dict[str, object] = {"sample_rate_hz": 16_000, "encoding": hark_pb2.PCM_S16LE, "pcm": bytes(8_000)}
    return hark_pb2.ClassifyRequest(**{**values, **fields})  # type: ignore[arg-type]


BAD_CLIPS: dict[str, tuple[hark_pb2.ClassifyRequest | bytes, grpc.StatusCode, str]] = {
    "rate -1 (uint32)": (_classify(sample_rate_hz=2**32 - 1), INVALID, "is not supported"),
    "rate 10 MHz": (_classify(sample_rate_hz=10_000_000), INVALID, "is not supported"),
    "encoding 99": (_classify(encoding=99), INVALID, "encoding 99 is not supported"),
    "NaN float": (_classify(encoding=hark_pb2.PCM_F32LE, pcm=f32(0.0, np.nan)), INVALID, "NaN or infinite"),
    "Inf float": (_classify(encoding=hark_pb2.PCM_F32LE, pcm=f32(np.inf, 0.0)), INVALID, "NaN or infinite"),
    "clip over max_stream_s": (_classify(pcm=bytes(2 * 16_000 * 4)), INVALID, "exceeds the limit of 3 s"),
    "message over max_message_bytes": (_classify(pcm=bytes(300_000)), EXHAUSTED, "larger than max"),
    "model '..'": (_classify(model=".."), INVALID, "is not valid"),
    "model '/etc/passwd'": (_classify(model="/etc/passwd"), INVALID, "is not valid"),
    "version 4294967295": (_classify(version=2**32 - 1), NOT_FOUND, "available: 1"),
    "malformed protobuf": (MALFORMED, INVALID, "not a valid hark.v1.ClassifyRequest (malformed protobuf)"),
}


async def test_bad_clips(start_hark: StartHark, tiny_model_store: Path, capfd: pytest.CaptureFixture[str]) -> None:
    h = await start_hark(tiny_model_store, **LIMITS)
    raw = h.channel.unary_unary("/hark.v1.Classifier/Classify")
    wrong = {}
    for name, (request, code, message) in BAD_CLIPS.items():
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await (raw(request) if isinstance(request, bytes) else h.stub.Classify(request))
        if error.value.code() != code or message not in (error.value.details() or ""):
            wrong[name] = (error.value.code(), error.value.details())
    assert wrong == {}
    response = await h.stub.Classify(_classify(pcm=bytes(32_000)))  # and the server goes on
    assert response.model == "tiny"
    await wait_until_idle(h)
    assert bug_lines("".join(capfd.readouterr())) == []


def _nan_wav(path: Path) -> Path:
    sf.write(str(path), np.array([0.1, np.nan, 0.2] * 4000, dtype=np.float32), 16_000, subtype="FLOAT")
    return path


def _header_only_wav(path: Path) -> Path:
    write_wav(path, rate=16_000, subtype="PCM_16", seconds=0.5)
    path.write_bytes(path.read_bytes()[:44])
    return path


BAD_FILES = {
    "empty.wav": (lambda p: (p.write_bytes(b""), p)[1], "cannot read"),
    "nan.wav": (_nan_wav, "NaN or infinite"),
    "header-only.wav": (_header_only_wav, ""),
    "random.wav": (lambda p: (p.write_bytes(np.random.default_rng(0).bytes(5_000)), p)[1], "cannot read"),
    "a-directory.wav": (lambda p: (p.mkdir(), p)[1], "is a directory"),
}


async def test_bad_files_to_hark_classify_fail_alone(running_server: object, tmp_path: Path) -> None:
    address = running_server.address  # type: ignore[attr-defined]
    files = [make(tmp_path / name) for name, (make, _) in BAD_FILES.items()]
    good = write_wav(tmp_path / "good.wav", rate=16_000, subtype="PCM_16", seconds=1.2)
    result = await run_hark("classify", "--json", "--server", address, *files, good)
    assert result.code == 2, result.err
    rows = {row["path"]: row for row in result.json_lines()}
    for path, (_, message) in zip(files, BAD_FILES.values(), strict=True):
        assert "error" in rows[str(path)], (path, rows[str(path)])
        assert message in rows[str(path)]["error"]
    assert "label" in rows[str(good)]
    assert "Traceback" not in result.err
    streamed = await run_hark("stream", "--fast", "--server", address, files[0])
    assert streamed.code == 2 and streamed.err.startswith("hark: error: ") and "Traceback" not in streamed.err
