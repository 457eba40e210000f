"""A streaming model version served by the real server: the windowed version's answers, one state per stream.

The store holds the tiny loudness model in both forms (``tests/fixtures_models.py``): ``tiny`` takes whole
windows, ``tiny-streaming`` a hop's frames and the stream's state. Over real gRPC, the same audio must give
the same windows, scores and events from both, with many streams at once (their states batched together
by the version's batcher) and stream after stream (each starting from a zero state).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from hark.core.audio import encode_pcm
from hark.v1 import hark_pb2
from loadtest.soak import config
from tests.fixtures_models import noise, publish_tiny, publish_tiny_streaming, quiet, utterance
from tests.integration.conftest import Hark, StartHark
from tests.integration.test_server import OK, StreamResult, audio_requests, run_stream

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def both(start_hark: StartHark, tmp_path: Path) -> Hark:
    root = tmp_path / "store"
    publish_tiny(root, "tiny")
    publish_tiny_streaming(root, "tiny-streaming")
    return await start_hark(root, max_batch=8)


def scores_of(result: StreamResult) -> np.ndarray:
    assert result.code == OK, result.details
    return np.array([list(s.scores) for s in result.scores])


async def test_streams_of_both_kinds_give_the_same_scores_and_events_at_once(both: Hark) -> None:
    clips = [utterance(1.0, 0.8, 1.5), noise(2.0, seed=5), quiet(1.7), utterance(0.3, 0.5, 2.0)]
    calls = [
        run_stream(both.stub, [config(model=model, emit_scores=True), *audio_requests(clip)], pace_s=0.002)
        for clip in clips
        for model in ("tiny", "tiny-streaming")
    ]
    results = await asyncio.gather(*calls)  # eight streams at once: the streaming states share batches
    for windowed, streaming in zip(results[0::2], results[1::2], strict=True):
        assert streaming.started.model == "tiny-streaming"
        assert [(s.start_s, s.end_s) for s in streaming.scores] == [(s.start_s, s.end_s) for s in windowed.scores]
        np.testing.assert_allclose(scores_of(streaming), scores_of(windowed), atol=1e-5)
        assert [(e.label, e.time_s) for e in streaming.events] == [(e.label, e.time_s) for e in windowed.events]
    assert [e.label for e in results[1].events] == ["yes"]


async def test_a_new_stream_starts_from_a_zero_state(both: Hark) -> None:
    loud, soft = noise(1.5, seed=7), quiet(1.5)
    first = await run_stream(both.stub, [config(model="tiny-streaming", emit_scores=True), *audio_requests(loud)])
    second = await run_stream(both.stub, [config(model="tiny-streaming", emit_scores=True), *audio_requests(soft)])
    alone = await run_stream(both.stub, [config(model="tiny", emit_scores=True), *audio_requests(soft)])
    np.testing.assert_allclose(scores_of(second), scores_of(alone), atol=1e-5)  # nothing of the loud stream left
    assert scores_of(first)[0][0] > 0.9 > scores_of(second)[0][0]


async def test_classify_with_a_streaming_version_matches_the_windowed_one(both: Hark) -> None:
    pcm = encode_pcm(utterance(0.4, 0.6, 0.8), "pcm_s16le")
    answers = []
    for model in ("tiny", "tiny-streaming"):
        request = hark_pb2.ClassifyRequest(pcm=pcm, sample_rate_hz=16_000, encoding=hark_pb2.PCM_S16LE, model=model)
        answers.append(await both.stub.Classify(request))
    assert answers[0].label == answers[1].label == "yes"
    assert answers[1].score == pytest.approx(answers[0].score, abs=1e-5)
