"""Drive Hark's Open Inference Protocol with NVIDIA's own ``tritonclient``, in a venv of its own.

``tritonclient[grpc]`` pins protobuf below 7, Hark's stubs need 7, so this script runs in
``tests/.venv-triton`` (``make triton-client``; the tests create it when missing) and prints one JSON
object on stdout for the test to check::

    python triton_client.py grpc|http basics URL MODEL CLIP.npy [TOKEN]
    python triton_client.py grpc stream URL MODEL AUDIO.npy CHUNK_SAMPLES [TOKEN]
    python triton_client.py grpc|http refuse URL MODEL CLIP.npy [TOKEN]

It imports nothing from Hark.
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np


def client_module(kind: str) -> Any:
    if kind == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def headers_of(token: str | None) -> dict[str, str] | None:
    return {"authorization": f"Bearer {token}"} if token else None


def text(value: Any) -> str:
    """A BYTES element: bytes from binary data, str from JSON data."""
    return value.decode() if isinstance(value, bytes) else str(value)


def classify(module: Any, client: Any, model: str, clip: np.ndarray, headers: Any, datatype: str) -> dict[str, Any]:
    data = clip.astype(np.int16 if datatype == "INT16" else np.float32)[None, :]
    audio = module.InferInput("audio", list(data.shape), datatype)
    audio.set_data_from_numpy(data)
    outputs = [module.InferRequestedOutput(name) for name in ("scores", "label", "labels")]
    result = client.infer(model, [audio], outputs=outputs, headers=headers, parameters={"sample_rate_hz": 16000})
    return {
        "scores": result.as_numpy("scores").tolist(),
        "label": [text(b) for b in result.as_numpy("label").ravel()],
        "labels": [text(b) for b in result.as_numpy("labels").ravel()],
    }


def basics(kind: str, url: str, model: str, clip_file: str, token: str | None) -> dict[str, Any]:
    module = client_module(kind)
    client = module.InferenceServerClient(url)
    headers = headers_of(token)
    metadata = client.get_server_metadata(headers=headers)
    model_metadata = client.get_model_metadata(model, headers=headers)
    index = client.get_model_repository_index(headers=headers)
    if kind == "grpc":  # protobuf messages: the fields as the protocol names them
        metadata = {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}
        model_metadata = {
            "name": model_metadata.name,
            "versions": list(model_metadata.versions),
            "platform": model_metadata.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model_metadata.inputs],
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model_metadata.outputs
            ],
        }
        index = [{"name": m.name, "version": m.version, "state": m.state} for m in index.models]
    clip = np.load(clip_file)
    return {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(model, headers=headers),
        "version_ready": client.is_model_ready(model, "1", headers=headers),
        "unknown_ready": client.is_model_ready("no-such-model", headers=headers),
        "server_metadata": metadata,
        "model_metadata": model_metadata,
        "index": index,
        "int16": classify(module, client, model, (clip * 32767).astype(np.int16), headers, "INT16"),
        "fp32": classify(module, client, model, clip, headers, "FP32"),
    }


def refuse(kind: str, url: str, model: str, clip_file: str, token: str | None) -> dict[str, Any]:
    """Requests Hark must refuse: each error message as the client reports it."""
    from tritonclient.utils import InferenceServerException

    module = client_module(kind)
    client = module.InferenceServerClient(url)
    headers = headers_of(token)
    clip = np.load(clip_file)
    errors: dict[str, str] = {}

    def attempt(name: str, call: Any) -> None:
        try:
            call()
            errors[name] = "accepted"
        except InferenceServerException as e:
            errors[name] = f"{e.status()} {e.message()}"

    def infer(model_name: str, inputs: list[Any], **kwargs: Any) -> Any:
        return client.infer(model_name, inputs, headers=headers, **kwargs)

    def tensor(name: str, data: np.ndarray, datatype: str) -> Any:
        t = module.InferInput(name, list(data.shape), datatype)
        t.set_data_from_numpy(data)
        return t

    good = tensor("audio", (clip * 32767).astype(np.int16)[None, :], "INT16")
    attempt("metadata", lambda: client.get_model_metadata(model, headers=headers))
    attempt("unknown model", lambda: infer("no-such-model", [good]))
    attempt("unknown version", lambda: infer(model, [good], model_version="7"))
    attempt("bad version", lambda: infer(model, [good], model_version="x"))
    attempt("path in name", lambda: infer("..", [good]))
    attempt("wrong input name", lambda: infer(model, [tensor("pcm", (clip * 32767).astype(np.int16), "INT16")]))
    attempt("wrong datatype", lambda: infer(model, [tensor("audio", clip.astype(np.float64), "FP64")]))
    attempt("bad rate", lambda: infer(model, [good], parameters={"sample_rate_hz": 12345}))
    attempt("nan", lambda: infer(model, [tensor("audio", np.full((1, 1600), np.nan, np.float32), "FP32")]))
    attempt("empty", lambda: infer(model, [tensor("audio", np.zeros((1, 0), np.int16), "INT16")]))
    attempt("unknown output", lambda: infer(model, [good], outputs=[module.InferRequestedOutput("nope")]))
    return errors


def stream(url: str, model: str, audio_file: str, chunk: int, token: str | None) -> dict[str, Any]:
    """Stream a file through ModelStreamInfer as two interleaved sequences; every event of each."""
    import tritonclient.grpc as grpcclient

    audio = (np.load(audio_file) * 32767).astype(np.int16)
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)), headers=headers_of(token))
    starts = list(range(0, audio.size, chunk))
    sent = 0
    for i, start in enumerate(starts):
        for sequence_id in (11, 12):  # interleaved: two sequences on one stream, each its own pipeline
            data = audio[start : start + chunk][None, :]
            t = grpcclient.InferInput("audio", list(data.shape), "INT16")
            t.set_data_from_numpy(data)
            client.async_stream_infer(
                model,
                [t],
                sequence_id=sequence_id,
                sequence_start=i == 0,
                sequence_end=i == len(starts) - 1,
                parameters={"sample_rate_hz": 16000},
            )
            sent += 1
    events: dict[str, list[dict[str, Any]]] = {"11": [], "12": []}
    windows = {"11": 0, "12": 0}
    errors = []
    for _ in range(sent):
        result, error = responses.get(timeout=60)
        if error is not None:
            errors.append(str(error))
            continue
        response = result.get_response()
        sequence_id = str(response.parameters["sequence_id"].int64_param)
        windows[sequence_id] += int(result.as_numpy("scores").shape[0])
        labels = result.as_numpy("event_label")
        for label, score, time_s in zip(
            labels if labels is not None else [],
            result.as_numpy("event_score"),
            result.as_numpy("event_time_s"),
            strict=True,
        ):
            events[sequence_id].append({"label": label.decode(), "score": float(score), "time_s": float(time_s)})
    # a request for a sequence that was never started is answered with an error, and the stream goes on
    t = grpcclient.InferInput("audio", [1, 160], "INT16")
    t.set_data_from_numpy(np.zeros((1, 160), np.int16))
    client.async_stream_infer(model, [t], sequence_id=99)
    _, error = responses.get(timeout=60)
    client.stop_stream()
    return {"events": events, "windows": windows, "errors": errors, "unstarted": str(error)}


def main() -> int:
    kind, action, url, model, data_file, *rest = sys.argv[1:]
    if action == "basics":
        out = basics(kind, url, model, data_file, rest[0] if rest else None)
    elif action == "refuse":
        out = refuse(kind, url, model, data_file, rest[0] if rest else None)
    else:
        out = stream(url, model, data_file, int(rest[0]), rest[1] if len(rest) > 1 else None)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
