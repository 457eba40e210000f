"""The naive baseline for ``loadtest/bench.py``: what a first attempt at streaming classification looks like.

Same public API (``hark.v1.Classifier/StreamClassify``, grpc.aio), but every hop it recomputes
``librosa.feature.melspectrogram`` over the whole 1 s window and calls onnxruntime once for that one window,
on the event loop; the stream's audio is kept by ``np.concatenate``. No incremental frontend, no batching.

    python loadtest/naive_server.py --model model_store/keywords/1   # prints "listening on HOST:PORT"
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import librosa
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hark.v1 import hark_pb2, hark_pb2_grpc  # noqa: E402
from loadtest.baseline_server import main  # noqa: E402


class NaiveClassifier(hark_pb2_grpc.ClassifierServicer):
    """Recomputes the whole window's features per hop and runs the model per window per stream."""

    def __init__(self, version_dir: Path) -> None:
        self.manifest: dict[str, Any] = json.loads((version_dir / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        fe = self.manifest["frontend"]
        self.fe = fe
        self.frames = int(self.manifest["window_frames"])
        self.hop_samples = int(self.manifest["hop_frames"]) * int(fe["hop_length"])
        # Enough samples for `frames` frames of n_fft (librosa frames by n_fft, not win_length).
        self.window_samples = int(fe["n_fft"]) + (self.frames - 1) * int(fe["hop_length"])
        self.logits = self.manifest.get("output_kind", "logits") == "logits"

    def _scores(self, window: np.ndarray) -> list[float]:
        fe = self.fe
        mel = librosa.feature.melspectrogram(
            y=window,
            sr=fe["sample_rate"],
            n_fft=fe["n_fft"],
            win_length=fe["win_length"],
            hop_length=fe["hop_length"],
            n_mels=fe["n_mels"],
            fmin=fe["fmin"],
            fmax=fe["fmax"],
            center=False,
            power=fe["power"],
        )
        features = np.log(mel + fe["log_offset"]).T[-self.frames :].astype(np.float32)
        (out,) = self.session.run(None, {self.input_name: features[None]})
        row = np.asarray(out[0], dtype=np.float64)
        if self.logits:
            row = np.exp(row - row.max())
            row /= row.sum()
        return [float(x) for x in row]

    async def StreamClassify(
        self, request_iterator: AsyncIterator[hark_pb2.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[hark_pb2.StreamResponse]:
        audio = np.zeros(0, dtype=np.float32)
        consumed = 0  # samples up to the end of the last window scored
        emit = False
        async for request in request_iterator:
            if request.WhichOneof("request") == "config":
                emit = request.config.emit_scores
                m = self.manifest
                yield hark_pb2.StreamResponse(
                    started=hark_pb2.StreamStarted(model=m["name"], version=m.get("version", 1), labels=m["labels"])
                )
                continue
            chunk = np.frombuffer(request.audio.pcm, dtype="<i2").astype(np.float32) / 32768.0
            audio = np.concatenate([audio, chunk])
            end = max(consumed + self.hop_samples, self.window_samples) if consumed else self.window_samples
            while audio.size >= end:
                scores = self._scores(audio[end - self.window_samples : end])
                consumed = end
                end += self.hop_samples
                if emit:
                    rate = self.fe["sample_rate"]
                    yield hark_pb2.StreamResponse(
                        scores=hark_pb2.WindowScores(
                            start_s=(consumed - self.window_samples) / rate, end_s=consumed / rate, scores=scores
                        )
                    )


if __name__ == "__main__":
    main(NaiveClassifier, __doc__.splitlines()[0])
