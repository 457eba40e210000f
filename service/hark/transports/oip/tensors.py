"""Open Inference Protocol tensors, independent of the wire: what a Hark model takes and returns.

A Hark model, seen through the protocol (both its gRPC service and its REST routes):

* input ``audio``: mono PCM samples, ``INT16`` or ``FP32`` (in [-1, 1]), shape ``[n]`` or ``[batch, n]``;
  the rate is the request parameter ``sample_rate_hz`` (default 16000; the rates Hark supports).
* ``ModelInfer`` outputs: ``scores`` FP32 ``[batch, classes]`` (the clip's class scores), ``label`` BYTES
  ``[batch]`` (the winning class) and ``labels`` BYTES ``[classes]`` (the class names, in score order).
* ``ModelStreamInfer`` outputs, per request of a sequence: ``scores`` FP32 ``[windows, classes]`` (the
  smoothed scores of the windows this chunk completed), ``window_end_s`` FP64 ``[windows]``, and the events
  they raised as ``event_label`` BYTES, ``event_score`` FP32 and ``event_time_s`` FP64, each ``[events]``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hark.core.audio import PCM_F32LE, PCM_S16LE
from hark.serving.errors import Refusal
from hark.serving.pipeline import ClipResult
from hark.serving.session import Scored

INPUT_NAME: Final = "audio"
DEFAULT_RATE_HZ: Final = 16000
# Input datatypes and the PCM encoding their little-endian bytes are.
AUDIO_DATATYPES: Final[dict[str, str]] = {"INT16": PCM_S16LE, "FP32": PCM_F32LE}
NUMPY_TYPES: Final[dict[str, str]] = {
    "BOOL": "?",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
CLIP_OUTPUTS: Final = ("scores", "label", "labels")
STREAM_OUTPUTS: Final = ("scores", "window_end_s", "event_label", "event_score", "event_time_s")


def invalid(message: str) -> Refusal:
    return Refusal("INVALID_ARGUMENT", message)


@dataclass
class Tensor:
    """One named tensor: numbers as an ndarray, BYTES as an object array of ``bytes``."""

    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any]
    parameters: dict[str, Any] = field(default_factory=dict)


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> Tensor:
    """A tensor from its raw little-endian bytes (gRPC ``raw_input_contents``, REST binary data)."""
    count = _count(name, shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, np.array(deserialize_bytes(raw, count), dtype=object))
    dtype = _dtype(name, datatype)
    if len(raw) != count * dtype.itemsize:
        raise invalid(f"input {name!r}: {len(raw)} bytes do not hold {count} {datatype} elements (shape {shape})")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype))


def from_list(name: str, datatype: str, shape: list[int], values: Any) -> Tensor:
    """A tensor from a list of values (gRPC ``contents``, REST JSON ``data``, flattened or nested)."""
    count = _count(name, shape)
    if datatype == "BYTES":
        items = [v.encode() if isinstance(v, str) else bytes(v) for v in np.asarray(values, dtype=object).ravel()]
        data = np.array(items, dtype=object)
    else:
        dtype = _dtype(name, datatype)
        try:
            data = np.asarray(values, dtype=dtype).ravel()
        except (TypeError, ValueError, OverflowError):
            raise invalid(f"input {name!r}: its data are not {datatype} numbers") from None
    if data.size != count:
        raise invalid(f"input {name!r}: {data.size} elements do not fill shape {shape}")
    return Tensor(name, datatype, shape, data)


def _count(name: str, shape: list[int]) -> int:
    if any(d < 0 for d in shape):
        raise invalid(f"input {name!r}: shape {shape} has a negative dimension")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    if datatype not in NUMPY_TYPES:
        raise invalid(f"input {name!r}: datatype {datatype!r} is not an Open Inference Protocol datatype")
    return np.dtype(NUMPY_TYPES[datatype])


def deserialize_bytes(raw: bytes, count: int) -> list[bytes]:
    """BYTES elements as the protocol lays them out: each a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise invalid("BYTES data end inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise invalid("BYTES data end inside an element")
        items.append(raw[offset : offset + size])
        offset += size
    if len(items) != count:
        raise invalid(f"BYTES data hold {len(items)} elements, the shape {count}")
    return items


def serialize_bytes(items: npt.NDArray[Any]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (bytes(i) for i in items.ravel()))


def raw_of(tensor: Tensor) -> bytes:
    """A tensor's raw bytes for the wire (gRPC ``raw_output_contents``)."""
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=np.dtype(NUMPY_TYPES[tensor.datatype])).tobytes()


def audio_input(inputs: list[Tensor]) -> tuple[list[bytes], str]:
    """The clips of the ``audio`` input as PCM bytes (one per batch row) and their encoding."""
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = ", ".join(repr(t.name) for t in inputs) or "none"
        raise invalid(f"send exactly one input named {INPUT_NAME!r} (got {names})")
    audio = inputs[0]
    if audio.datatype not in AUDIO_DATATYPES:
        raise invalid(f"input 'audio' must be INT16 or FP32 samples, not {audio.datatype}")
    if len(audio.shape) not in (1, 2):
        raise invalid(f"input 'audio' has shape {audio.shape}; send [samples] or [batch, samples]")
    rows = 1 if len(audio.shape) == 1 else audio.shape[0]
    dtype = np.dtype(NUMPY_TYPES[audio.datatype])
    samples = np.ascontiguousarray(audio.data, dtype=dtype).reshape(rows, -1) if rows else np.zeros((0, 0), dtype)
    return [row.tobytes() for row in samples], AUDIO_DATATYPES[audio.datatype]


def sample_rate(parameters: dict[str, Any]) -> int:
    rate = parameters.get("sample_rate_hz", DEFAULT_RATE_HZ)
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise invalid("the parameter sample_rate_hz must be a whole number of Hz")
    return rate


def select(outputs: list[Tensor], requested: list[str]) -> list[Tensor]:
    """The outputs a request asked for, in its order; all of them when it named none."""
    if not requested:
        return outputs
    by_name = {t.name: t for t in outputs}
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        raise invalid(f"no output named {', '.join(map(repr, unknown))}; the outputs are {', '.join(by_name)}")
    return [by_name[name] for name in requested]


def clip_outputs(results: list[ClipResult]) -> list[Tensor]:
    labels = results[0].model.manifest.labels if results else []
    scores = np.array([[r.scores[label] for label in labels] for r in results], dtype=np.float32)
    return [
        Tensor("scores", "FP32", [len(results), len(labels)], scores.reshape(len(results), len(labels))),
        Tensor("label", "BYTES", [len(results)], np.array([r.label.encode() for r in results], dtype=object)),
        Tensor("labels", "BYTES", [len(labels)], np.array([label.encode() for label in labels], dtype=object)),
    ]


def stream_outputs(results: list[Scored], n_classes: int) -> list[Tensor]:
    events = [e for s in results for e in s.events]
    scores = np.array([s.scores for s in results], dtype=np.float32).reshape(len(results), n_classes)
    return [
        Tensor("scores", "FP32", [len(results), n_classes], scores),
        Tensor("window_end_s", "FP64", [len(results)], np.array([s.window.end_s for s in results], dtype=np.float64)),
        Tensor("event_label", "BYTES", [len(events)], np.array([e.label.encode() for e in events], dtype=object)),
        Tensor("event_score", "FP32", [len(events)], np.array([e.score for e in events], dtype=np.float32)),
        Tensor("event_time_s", "FP64", [len(events)], np.array([e.time_s for e in events], dtype=np.float64)),
    ]
