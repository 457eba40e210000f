"""End to end with every part real: espeak-ng speech from voices training never heard, streamed through the
real server, the real frontend and the bundled model in ``model_store/``, answered with the right events.

The test voices are the data set's held-out test variants, derived the same way ``hark data build`` splits
them (by variant, from the seed recorded in the bundled manifest), so no training voice is used here.

Each test runs for the store's default model and, when the store has one, for the streaming keyword model
``keywords-streaming`` (each hop's frames plus its state: the same specification for the other way of serving).
``HARK_E2E_STORE=/path/to/store`` runs the same specification against a candidate model store (one model,
trained on the same data set), which is how candidates for the bundled model are compared on running speech.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hark.core.audio import encode_pcm
from hark.core.model_store import ModelStore
from hark.v1 import hark_pb2
from hark_training.data import (
    SAMPLE_RATE,
    Voice,
    distinct_variants,
    list_variants,
    split_variants,
    synthesize,
    trim_silence,
)
from tests.integration.conftest import Hark, StartHark

BUNDLED_STORE = Path(os.environ.get("HARK_E2E_STORE") or Path(__file__).resolve().parents[2] / "model_store")
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
STREAMING_MODEL = "keywords-streaming"
MODELS = ["", *([STREAMING_MODEL] if (BUNDLED_STORE / STREAMING_MODEL).is_dir() else [])]


@pytest.fixture(params=MODELS, ids=lambda name: name or "default")
def model(request: pytest.FixtureRequest) -> str:
    """The model asked for: the server's default ("") or the bundled streaming one."""
    return str(request.param)


@pytest.fixture(scope="module")
def bundled() -> ModelStore:
    store = ModelStore(BUNDLED_STORE)
    report = store.refresh()
    assert store.models(), f"the bundled model store must serve a model; refused: {report.refused}"
    return store


@pytest.fixture(scope="module")
def test_voices(bundled: ModelStore) -> list[Voice]:
    """The default model's held-out voices; the bundled streaming model was trained on the same data set."""
    manifest = bundled.resolve().manifest
    seed = int(manifest.training.get("seed", 0))
    split = split_variants(distinct_variants(list_variants()), seed)
    return [Voice("en-us", v) for v in sorted(v for v, s in split.items() if s == "test")]


def _word(text: str, voice: Voice) -> np.ndarray:
    spoken = synthesize(text, voice, speed=160, pitch=50)
    return np.asarray(trim_silence(spoken), dtype=np.float32)


def _room(seconds: float, seed: int) -> np.ndarray:
    """Quiet room noise (about -55 dBFS), not digital silence."""
    return (np.random.default_rng(seed).standard_normal(round(seconds * SAMPLE_RATE)) * 0.0018).astype(np.float32)


def _requests(samples: np.ndarray, model: str) -> list[hark_pb2.StreamRequest]:
    config = hark_pb2.StreamConfig(model=model, sample_rate_hz=SAMPLE_RATE, encoding=hark_pb2.PCM_S16LE)
    step = SAMPLE_RATE // 10  # 100 ms chunks, as a microphone client sends them
    chunks = [encode_pcm(samples[i : i + step]) for i in range(0, samples.size, step)]
    return [hark_pb2.StreamRequest(config=config)] + [
        hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=c)) for c in chunks
    ]


async def _events(hark: Hark, samples: np.ndarray, model: str) -> list[hark_pb2.Event]:
    call = hark.stub.StreamClassify(iter(_requests(samples, model)))
    return [r.event async for r in call if r.WhichOneof("response") == "event"]


async def test_a_spoken_sentence_gives_one_event_per_keyword_in_order_at_its_time(
    start_hark: StartHark, bundled: ModelStore, test_voices: list[Voice], model: str, request: pytest.FixtureRequest
) -> None:
    if "HARK_E2E_STORE" not in os.environ:
        # Measured (README, A streaming model and Three seeds as one model): the best smoothed score for this voice's
        # "yes" is 0.32 for keywords-streaming/1 and 0.57 for keywords/4; keywords/5 to keywords/8 miss it too
        # (checked with HARK_E2E_STORE).
        missed_by = "keywords-streaming/1" if model == STREAMING_MODEL else "keywords/8"
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{missed_by} misses 'yes' of en-us+Lee"))
    hark = await start_hark(BUNDLED_STORE)
    words = ["yes", "stop", "go", "left"]
    voice = test_voices[0]
    parts, centres, t = [_room(0.6, 0)], [], 0.6
    for i, word in enumerate(words):
        audio = _word(word, voice)
        centres.append(t + audio.size / SAMPLE_RATE / 2)
        parts += [audio + _room(audio.size / SAMPLE_RATE, i + 1), _room(1.4, i + 10)]
        t += audio.size / SAMPLE_RATE + 1.4
    events = await _events(hark, np.concatenate(parts), model)

    assert [e.label for e in events] == words, f"voice {voice.name}"
    for event, centre in zip(events, centres, strict=True):
        assert abs(event.time_s - centre) < 0.7, (event.label, event.time_s, centre)
        assert event.score >= 0.6


async def test_room_noise_alone_raises_no_event(start_hark: StartHark, bundled: ModelStore, model: str) -> None:
    hark = await start_hark(BUNDLED_STORE)
    assert await _events(hark, _room(6.0, 99), model) == []


async def test_keywords_from_held_out_voices_are_classified(
    start_hark: StartHark, bundled: ModelStore, test_voices: list[Voice], model: str
) -> None:
    """Thirty clips from three unheard voices through the unary call; the bar is below the measured
    held-out accuracy (README) so that it fails on a real regression, not on one unlucky clip."""
    hark = await start_hark(BUNDLED_STORE)
    right, wrong = 0, []
    for voice in test_voices[:3]:
        for word in KEYWORDS:
            clip = np.concatenate([_room(0.2, 1), _word(word, voice), _room(0.2, 2)])
            reply = await hark.stub.Classify(
                hark_pb2.ClassifyRequest(
                    model=model, sample_rate_hz=SAMPLE_RATE, encoding=hark_pb2.PCM_S16LE, pcm=encode_pcm(clip)
                )
            )
            if reply.label == word:
                right += 1
            else:
                wrong.append((voice.name, word, reply.label))
    assert right / (right + len(wrong)) >= 0.8, wrong
