"""An MLServer runtime for the same ONNX model Hark serves: features in, class probabilities out.

Runs inside MLServer's own virtual environment (loadtest/.venv-mlserver; MLServer pins protobuf 6,
Hark needs 7), so it imports nothing from Hark. MLServer's adaptive batching (``max_batch_size``,
``max_batch_time`` in model-settings.json) stacks concurrent requests into one ``predict`` call.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxClassifier(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = self.settings.parameters.uri if self.settings.parameters else None
        self._session = ort.InferenceSession(str(uri), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        features = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (logits,) = self._session.run(None, {self._input: features})
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", probabilities)]
        )
