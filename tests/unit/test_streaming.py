"""Streaming models: the same scores as their windowed form, state that belongs to one stream, a manifest that says so.

The parity tolerance: both forms compute the same sums in float32, but in another order (onnxruntime picks
its convolution kernels by input length, and the streaming form adds each hop's terms to cached ones), so
each logit carries rounding of a few float32 ulps per layer: about 1e-6 relative for these magnitudes
(logits of order 10). ``PARITY_ATOL`` = 1e-4 is a hundred times that, and a thousand times smaller than any
difference that would change a score a person could see (probabilities are reported to 3 decimals); a
state handled wrongly (a lost or repeated hop, a cache of the wrong frames) moves logits by 1e-1 or more.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from hark.config import Settings
from hark.core.frontend import FrontendConfig, LogMel
from hark.core.model_store import LoadedModel, Manifest, VerificationError, load_version
from hark.core.runner import create_session
from hark.core.streaming import StateSpec, StreamingRunner, window_steps
from hark.serving.batcher import Batcher
from hark.serving.pipeline import StreamPipeline
from hark.serving.session import Scored, StreamSession
from hark_training.export import export_onnx, onnx_logits
from hark_training.streaming import CausalTCN, StreamingCausalTCN, export_streaming_onnx, streaming_logits
from tests.fixtures_models import (
    HOP_FRAMES,
    LABELS,
    N_MELS,
    WINDOW_FRAMES,
    load_tiny,
    noise,
    pcm_chunks,
    publish_tiny_streaming,
    streaming_manifest_fields,
    utterance,
)

PARITY_ATOL = 1e-4


def tiny_causal_tcn(seed: int = 0) -> CausalTCN:
    """A small causal TCN with random weights and batch-norm statistics (untrained models have trivial ones)."""
    torch.manual_seed(seed)
    model = CausalTCN(len(LABELS), WINDOW_FRAMES, N_MELS, channels=8, dilations=(1, 2, 4, 8))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def stream_frames(seconds: float = 3.0) -> np.ndarray:
    """Log-Mel frames of real test audio: quiet, a loud burst, quiet."""
    samples = np.concatenate([utterance(0.5, 0.8, 0.5), noise(seconds - 1.8, level=0.05, seed=3)])
    return LogMel(FrontendConfig()).frames(samples)


def test_the_causal_tcn_sees_exactly_one_window() -> None:
    model = tiny_causal_tcn()
    assert model.receptive_field == 61
    assert model.receptive_field + model.pool_frames - 1 == WINDOW_FRAMES
    with pytest.raises(ValueError, match="do not fit"):
        CausalTCN(12, 40, N_MELS, dilations=(1, 2, 4, 8), pool_frames=10)


def test_streaming_form_scores_equal_the_windowed_form_on_the_same_audio(tmp_path: Path) -> None:
    """The parity test: both ONNX graphs of one network, on every window of a stream of real audio."""
    model = tiny_causal_tcn()
    windowed = export_onnx(model, tmp_path / "windowed.onnx", WINDOW_FRAMES, N_MELS)
    streaming = tmp_path / "streaming.onnx"
    states = export_streaming_onnx(model, streaming, HOP_FRAMES, N_MELS, "features", "logits", 17)
    frames = stream_frames()
    starts = range(0, frames.shape[0] - WINDOW_FRAMES + 1, HOP_FRAMES)
    windows = np.stack([frames[s : s + WINDOW_FRAMES] for s in starts])
    expected = onnx_logits(create_session(windowed), windows)

    # One stream, hop by hop, its state carried from the stream's start (not restarted per window).
    runner = StreamingRunner(
        create_session(streaming),
        "features",
        "logits",
        [StateSpec.model_validate(s) for s in states],
        hop_frames=HOP_FRAMES,
        n_mels=N_MELS,
        n_classes=len(LABELS),
        logits=True,
    )
    state = np.zeros((1, runner.state_size), dtype=np.float32)
    lead = -WINDOW_FRAMES % HOP_FRAMES
    padded = np.concatenate([np.zeros((lead, N_MELS), dtype=np.float32), frames])
    streamed = []
    for end in range(HOP_FRAMES, padded.shape[0] + 1, HOP_FRAMES):
        out, state = runner.step(padded[None, end - HOP_FRAMES : end], state)
        if end - lead >= WINDOW_FRAMES:
            streamed.append(out[0])
    assert len(streamed) == len(windows) > 10
    np.testing.assert_allclose(np.stack(streamed), expected, atol=PARITY_ATOL, rtol=0)
    # And each window alone from a zero state (how Classify and export score windows).
    alone = streaming_logits(create_session(streaming), states, HOP_FRAMES, len(LABELS), windows, "features", "logits")
    np.testing.assert_allclose(alone, expected, atol=PARITY_ATOL, rtol=0)
    assert np.ptp(expected) > 1.0  # the scores vary, so agreement means something


def test_a_wrong_state_breaks_parity() -> None:
    """The parity test can fail: a state that skipped a hop gives other scores."""
    model = tiny_causal_tcn()
    wrapper = StreamingCausalTCN(model, HOP_FRAMES)
    frames = torch.from_numpy(stream_frames()[: WINDOW_FRAMES + 2 * HOP_FRAMES][None])
    with torch.no_grad():
        expected = model(frames[:, -WINDOW_FRAMES:])
        state = wrapper.initial_state(1)
        hops = window_steps(frames.numpy()[:, -WINDOW_FRAMES:], HOP_FRAMES)
        for i, hop in enumerate(hops):
            if i == 5:
                continue  # a lost hop
            out, *state = wrapper(torch.from_numpy(hop), *state)
    assert float((out - expected).abs().max()) > 100 * PARITY_ATOL


def test_a_streaming_manifest_declares_its_hop_input_and_states() -> None:
    fields = {**streaming_manifest_fields(), "version": 1, "sha256": "0" * 64, "size_bytes": 1}
    manifest = Manifest.model_validate({**fields, "created_at": "2026-01-01T00:00:00Z"})
    assert manifest.model_kind == "streaming" and manifest.input_frames == HOP_FRAMES
    with pytest.raises(ValueError, match="needs its state tensors"):
        Manifest.model_validate({**fields, "created_at": "2026-01-01T00:00:00Z", "states": []})
    with pytest.raises(ValueError, match="input shape"):
        Manifest.model_validate(
            {**fields, "created_at": "2026-01-01T00:00:00Z", "input": {"name": "features", "shape": ["batch", 98, 40]}}
        )
    windowed = {**fields, "model_kind": "windowed", "input": {"name": "features", "shape": ["batch", 98, 40]}}
    with pytest.raises(ValueError, match="no state tensors"):
        Manifest.model_validate({**windowed, "created_at": "2026-01-01T00:00:00Z"})


def test_a_streaming_version_whose_states_the_model_lacks_is_refused(tmp_path: Path) -> None:
    version = publish_tiny_streaming(tmp_path / "store")
    manifest = (version / "manifest.json").read_text().replace('"new_state_0"', '"other_state"')
    (version / "manifest.json").write_text(manifest)
    with pytest.raises(VerificationError, match="state"):
        load_version(version)


async def stream_through_pipeline(loaded: LoadedModel, chunks: list[bytes]) -> list[Scored]:
    """Feed ``chunks`` through a real pipeline and batcher: what a transport does."""
    settings = Settings(gate_dbfs=None)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(loaded.runner.run, executor=executor, max_batch=4, max_delay_s=0.0)
        session = StreamSession(loaded, sample_rate=16_000, encoding="pcm_s16le", settings=settings)
        pipeline = StreamPipeline(session, batcher)
        results = []
        for chunk in chunks:
            results += await pipeline.feed(chunk)
        results += await pipeline.finish()
        await batcher.close()
    return results


@pytest.mark.parametrize("chunk_s", [0.1, 0.037, 1.3])
def test_a_streaming_version_serves_the_windowed_versions_scores_and_events(tmp_path: Path, chunk_s: float) -> None:
    """The tiny loudness model in both forms, through the same pipeline: same windows, scores and events."""
    windowed = load_tiny(tmp_path / "w")
    streaming = load_version(publish_tiny_streaming(tmp_path / "s"))
    chunks = pcm_chunks(utterance(1.0, 0.8, 1.5), chunk_s)
    a = asyncio.run(stream_through_pipeline(windowed, chunks))
    b = asyncio.run(stream_through_pipeline(streaming, chunks))
    assert [(r.window.index, r.window.start_s) for r in a] == [(r.window.index, r.window.start_s) for r in b]
    np.testing.assert_allclose(np.stack([r.scores for r in b]), np.stack([r.scores for r in a]), atol=1e-5)
    assert [(e.label, e.time_s) for r in a for e in r.events] == [(e.label, e.time_s) for r in b for e in r.events]
    assert any(r.events for r in b)


def test_each_stream_starts_from_a_zero_state(tmp_path: Path) -> None:
    """Two streams of the same audio, one after the other on one version, give the same scores."""
    streaming = load_version(publish_tiny_streaming(tmp_path / "s"))
    chunks = pcm_chunks(noise(1.5), 0.1)
    first = asyncio.run(stream_through_pipeline(streaming, chunks))
    second = asyncio.run(stream_through_pipeline(streaming, chunks))
    np.testing.assert_array_equal(np.stack([r.scores for r in first]), np.stack([r.scores for r in second]))
