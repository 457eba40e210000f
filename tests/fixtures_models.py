"""Tiny but real ONNX models for tests, published into a model store the way training does.

The model is a loudness detector with the shape of a keyword spotter: ``features [batch, 98, 40]`` →
``ReduceMean`` over time → ``MatMul`` + ``Add`` → ``logits [batch, 12]``. Its ``word`` class rises with
the window's mean log-Mel energy and ``_silence_`` falls with it, so a burst of noise reads as the word
and quiet reads as silence. That is enough to test the whole path, events included, in milliseconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hark.core.audio import encode_pcm
from hark.core.frontend import FrontendConfig
from hark.core.model_store import LoadedModel, load_version, publish_version

LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_", "_unknown_"]
WINDOW_FRAMES = 98
HOP_FRAMES = 10
N_MELS = 40
SAMPLE_RATE = 16_000
# Mean log-Mel level where the word and silence are equally likely: quiet audio (zeros or -80 dBFS
# noise) sits near -13, noise at 0.3 amplitude near +1.
LOUDNESS_PIVOT = -6.0


def tiny_onnx(path: Path, *, word: str = "yes", gain: float = 2.0, brittle: bool = False) -> Path:
    """Write the loudness model to ``path``.

    ``brittle`` adds a Reshape to a fixed batch of 2: it passes a warm-up at a batch of 2 (a server with
    ``max_batch`` 1 or 2) and fails on any other batch size, which is how a test gets a real inference error
    without mocks.
    """
    n_classes = len(LABELS)
    weights = np.zeros((N_MELS, n_classes), dtype=np.float32)
    bias = np.zeros(n_classes, dtype=np.float32)
    w, s = LABELS.index(word), LABELS.index("_silence_")
    weights[:, w] = gain / N_MELS
    weights[:, s] = -gain / N_MELS
    bias[w] = -gain * LOUDNESS_PIVOT
    bias[s] = gain * LOUDNESS_PIVOT
    nodes = [
        helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weights"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["logits"]),
    ]
    initializers = [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")]
    if brittle:
        nodes[0] = helper.make_node("Reshape", ["features", "fixed_shape"], ["fixed"])
        nodes.insert(1, helper.make_node("ReduceMean", ["fixed"], ["pooled"], axes=[1], keepdims=0))
        initializers.append(
            numpy_helper.from_array(np.array([2, WINDOW_FRAMES, N_MELS], dtype=np.int64), "fixed_shape")
        )
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", WINDOW_FRAMES, N_MELS])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hark-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def manifest_fields(name: str = "tiny", **extra: Any) -> dict[str, Any]:
    """Every manifest field ``publish_version`` does not fill in itself."""
    return {
        "name": name,
        "labels": LABELS,
        "background_labels": ["_silence_", "_unknown_"],
        "frontend": FrontendConfig().model_dump(mode="json"),
        "window_frames": WINDOW_FRAMES,
        "hop_frames": HOP_FRAMES,
        "input": {"name": "features", "shape": ["batch", WINDOW_FRAMES, N_MELS]},
        "output": {"name": "logits", "shape": ["batch", len(LABELS)]},
        "output_kind": "logits",
        "metrics": {"test_accuracy": 0.875},
        "training": {"recipe": "tests/fixtures_models.py"},
        **extra,
    }


def publish_tiny(
    store_root: Path,
    name: str = "tiny",
    version: int | None = None,
    *,
    word: str = "yes",
    brittle: bool = False,
) -> Path:
    """Publish one tiny version into ``store_root``; returns its version folder."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = tiny_onnx(Path(tmp) / "model.onnx", word=word, brittle=brittle)
        return publish_version(store_root, manifest_fields(name), onnx_file, version=version)


def tiny_streaming_onnx(path: Path, *, word: str = "yes", gain: float = 2.0) -> Path:
    """Write the loudness model in streaming form: ``features [batch, 10, 40]`` (a hop) and ``state_0 [batch, 88,
    40]`` (the window's older frames) in; ``logits`` and ``new_state_0`` (the newest 88 frames) out.

    Its scores are exactly the windowed loudness model's on the same audio: the mean over the state and
    the hop is the mean over the window.
    """
    n_classes = len(LABELS)
    keep = WINDOW_FRAMES - HOP_FRAMES
    weights = np.zeros((N_MELS, n_classes), dtype=np.float32)
    bias = np.zeros(n_classes, dtype=np.float32)
    w, s = LABELS.index(word), LABELS.index("_silence_")
    weights[:, w], weights[:, s] = gain / N_MELS, -gain / N_MELS
    bias[w], bias[s] = -gain * LOUDNESS_PIVOT, gain * LOUDNESS_PIVOT
    nodes = [
        helper.make_node("Concat", ["state_0", "features"], ["window"], axis=1),
        helper.make_node("ReduceMean", ["window"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weights"], ["projected"]),
        helper.make_node("Add", ["projected", "bias"], ["logits"]),
        helper.make_node("Slice", ["window", "starts", "ends", "axes"], ["new_state_0"]),
    ]
    initializers = [
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array([HOP_FRAMES], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([WINDOW_FRAMES], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-streaming",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", HOP_FRAMES, N_MELS]),
            helper.make_tensor_value_info("state_0", TensorProto.FLOAT, ["batch", keep, N_MELS]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes]),
            helper.make_tensor_value_info("new_state_0", TensorProto.FLOAT, ["batch", keep, N_MELS]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hark-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def streaming_manifest_fields(name: str = "tiny-streaming", **extra: Any) -> dict[str, Any]:
    """The tiny streaming model's manifest fields: a hop of frames in, and its one state tensor."""
    return manifest_fields(
        name,
        model_kind="streaming",
        input={"name": "features", "shape": ["batch", HOP_FRAMES, N_MELS]},
        states=[{"input": "state_0", "output": "new_state_0", "shape": [WINDOW_FRAMES - HOP_FRAMES, N_MELS]}],
        **extra,
    )


def publish_tiny_streaming(store_root: Path, name: str = "tiny-streaming", version: int | None = None) -> Path:
    """Publish one tiny streaming version into ``store_root``; returns its version folder."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = tiny_streaming_onnx(Path(tmp) / "model.onnx")
        return publish_version(store_root, streaming_manifest_fields(name), onnx_file, version=version)


# Test audio -----------------------------------------------------------------------------------------


def noise(seconds: float, level: float = 0.3, rate: int = SAMPLE_RATE, seed: int = 1) -> np.ndarray:
    """White noise: what the tiny model hears as its word."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(round(seconds * rate)) * level).clip(-1, 1).astype(np.float32)


def quiet(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Near-silence (-80 dBFS): what the tiny model hears as ``_silence_``."""
    return noise(seconds, level=1e-4, rate=rate, seed=2)


def utterance(before_s: float = 1.0, word_s: float = 0.8, after_s: float = 1.5, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Quiet, one 'word' (a noise burst), quiet."""
    return np.concatenate([quiet(before_s, rate), noise(word_s, rate=rate), quiet(after_s, rate)])


def pcm_chunks(
    samples: np.ndarray, chunk_s: float = 0.1, rate: int = SAMPLE_RATE, encoding: str = "pcm_s16le"
) -> list[bytes]:
    """Samples as PCM byte chunks of ``chunk_s`` seconds (the last one shorter)."""
    step = max(1, round(chunk_s * rate))
    return [encode_pcm(samples[i : i + step], encoding) for i in range(0, samples.size, step)]


def load_tiny(store_root: Path, name: str = "tiny", **kwargs: Any) -> LoadedModel:
    """Publish and verify one tiny version, the way the server loads it."""
    return load_version(publish_tiny(store_root, name, **kwargs))
