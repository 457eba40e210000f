"""A transfer model (pretrained backbone + head, one ONNX file) served by a real server on its own frontend.

The server must compute the backbone's features (dB Mel, 32 bands) from the stream and run the one model
version: every window it scores is what the model gives on the same audio computed offline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hark.core.frontend import LogMel
from hark.core.model_store import publish_version
from hark_training import backbone
from hark_training.backbone import BACKBONE_FRONTEND, BackboneUnavailableError, OwwTransfer
from hark_training.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from loadtest.soak import config
from tests.fixtures_models import LABELS, manifest_fields, quiet
from tests.integration.conftest import StartHark
from tests.integration.test_server import OK, audio_requests, run_stream

try:
    backbone.resource(backbone.EMBEDDING_MODEL)
except BackboneUnavailableError as e:  # pragma: no cover - make dev installs the wheel
    pytest.skip(f"the backbone's files are not installed: {e}", allow_module_level=True)

WINDOW, HOP = 98, 10


@pytest.fixture(scope="module")
def transfer_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One version of an (untrained-head) transfer model, published with the backbone's frontend."""
    torch.manual_seed(0)
    model = OwwTransfer(n_classes=len(LABELS), n_frames=WINDOW, n_mels=backbone.BANDS).eval()
    store = tmp_path_factory.mktemp("store")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(model, Path(tmp) / "model.onnx", WINDOW, backbone.BANDS)
        fields = manifest_fields(
            "transfer",
            frontend=BACKBONE_FRONTEND.model_dump(mode="json"),
            input={"name": INPUT_NAME, "shape": ["batch", WINDOW, backbone.BANDS]},
            output={"name": OUTPUT_NAME, "shape": ["batch", len(LABELS)]},
        )
        publish_version(store, fields, onnx_file)
    return store


def speech_like_pcm(seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic tones with a moving pitch over faint noise, already on the 16-bit grid the stream carries."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    f0 = 150 * (1 + 0.4 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16_000) / k for k in range(1, 6))
    audio = 0.2 * voice * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t)) + 0.01 * rng.standard_normal(t.size)
    return (np.round(np.clip(audio, -1, 1) * 32767) / 32768).astype(np.float32)


def offline_probabilities(store: Path, samples: np.ndarray) -> np.ndarray:
    """Softmax of the version's model on every whole window of ``samples``, computed without the server."""
    frames = LogMel(BACKBONE_FRONTEND).frames(samples)
    windows = np.stack([frames[s : s + WINDOW] for s in range(0, frames.shape[0] - WINDOW + 1, HOP)])
    session = ort.InferenceSession(str(store / "transfer" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: windows})[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return probabilities


async def test_a_stream_is_scored_by_the_backbone_frontend_and_the_one_model(
    start_hark: StartHark, transfer_store: Path
) -> None:
    hark = await start_hark(transfer_store, smoothing_windows=1, gate_dbfs=None)
    samples = speech_like_pcm(2.5)
    result = await run_stream(hark.stub, [config(emit_scores=True), *audio_requests(samples)])
    assert result.code == OK, result.details
    assert (result.started.model, result.started.version) == ("transfer", 1)
    expected = offline_probabilities(transfer_store, samples)
    served = np.array([list(s.scores) for s in result.scores[: len(expected)]])
    assert len(expected) == 16 and served.shape == expected.shape  # 2.5 s: 248 frames, a window every 10
    assert np.ptp(expected.argmax(axis=1)) > 0 or np.ptp(expected[:, 0]) > 1e-3  # windows differ: not a constant
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=0)


async def test_energy_gating_reads_levels_through_the_backbone_frontend(
    start_hark: StartHark, transfer_store: Path
) -> None:
    """-80 dBFS is under the default -60 dBFS gate and speech at about -20 dBFS is over it, as for any frontend."""
    hark = await start_hark(transfer_store)
    for samples, gated in ((quiet(1.5), True), (speech_like_pcm(1.5), False)):
        result = await run_stream(hark.stub, [config(emit_scores=True), *audio_requests(samples)])
        assert result.code == OK, result.details
        assert result.scores and all(s.gated is gated for s in result.scores)
