"""One onnxruntime session of one model version, and how to call it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

# Where onnxruntime looks for the external data of a model loaded from bytes.
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """Options for a serving session: full graph optimisation, a fixed small thread pool.

    One intra-op thread per session is the default: the server parallelises across streams by batching,
    and more threads per call only fight each other on a small machine.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


def create_session(model: Path | str | bytes, intra_op_threads: int = 1) -> ort.InferenceSession:
    """Open an ONNX model on the CPU, from a file or from bytes. Raises onnxruntime's error when it is not
    a valid model.

    From bytes (what the model store verified), tensors stored as external data are refused: their folder
    is an empty directory, so no weights from outside the checksummed bytes can ever load.
    """
    options = session_options(intra_op_threads)
    if isinstance(model, bytes):
        with tempfile.TemporaryDirectory(prefix="hark-no-external-data-") as empty:
            options.add_session_config_entry(EXTERNAL_DATA_FOLDER, empty)
            return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(os.fspath(model), sess_options=options, providers=["CPUExecutionProvider"])


class ModelRunner:
    """Runs batches of feature windows through a session and returns class probabilities.

    ``run`` is blocking and thread-safe (onnxruntime sessions may be shared across threads); the server
    calls it from a worker thread, never on the event loop.
    """

    def __init__(self, session: ort.InferenceSession, input_name: str, output_name: str, *, kind: str) -> None:
        if kind not in ("logits", "probabilities", "sigmoid"):
            raise ValueError(f"unknown output kind {kind!r}")
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.kind = kind

    def run(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``(batch, frames, n_mels)`` windows in, ``(batch, n_classes)`` probabilities out: a softmax over
        classes for ``logits``, one independent sigmoid per class for ``sigmoid``."""
        (out,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(windows)})
        scores = np.asarray(out, dtype=np.float32)
        if self.kind == "logits":
            return softmax(scores)
        if self.kind == "sigmoid":
            return sigmoid(scores)
        return scores

    def run_windows(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities of independent whole windows (what a streaming version's runner also offers)."""
        return self.run(windows)


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: npt.NDArray[np.float32] = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32, copy=False)
    return probabilities


def sigmoid(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Element-wise logistic function, stable for large logits of either sign."""
    e = np.exp(-np.abs(logits))
    out: npt.NDArray[np.float32] = np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)
    return out
