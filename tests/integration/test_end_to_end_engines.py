"""End to end on speech engines the bundled model never heard: a sentence said by each held-out engine's voices
(RHVoice, held out for test; SVOX Pico and GnuSpeech, held out for validation), streamed through a real server,
gives its keywords as events in order. Skipped for an engine that is not installed (``make system-deps-voices``).

``HARK_E2E_STORE`` runs it against a candidate store, as ``test_end_to_end.py`` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hark.core.audio import encode_pcm
from hark.v1 import hark_pb2
from hark_training.data import SAMPLE_RATE, trim_silence
from hark_training.engines import EngineVoice, installed_voices, speak
from tests.integration.conftest import StartHark

STORE = Path(os.environ.get("HARK_E2E_STORE") or Path(__file__).resolve().parents[2] / "model_store")
WORDS = ["yes", "stop", "go", "left"]
HELD_OUT = [("rhvoice", "bdl"), ("rhvoice", "clb"), ("pico", "en-US"), ("pico", "en-GB")] + [
    ("gnuspeech", v) for v in ("male", "female", "large_child", "small_child", "baby")
]
NOT_YET = {  # the bundled keywords/8 misses words of these voices (README: Real voices)
    ("rhvoice", "clb"): "keywords/8 hears 'go' as 'down'",
    ("pico", "en-US"): "keywords/8 misses 'go'",
    ("pico", "en-GB"): "keywords/8 misses 'go'",
    ("gnuspeech", "male"): "keywords/8 hears 'yes' alone",
    ("gnuspeech", "female"): "keywords/8 misses 'go' and 'left'",
    ("gnuspeech", "large_child"): "keywords/8 hears none of the four",
    ("gnuspeech", "small_child"): "keywords/8 hears one word, as 'no'",
    ("gnuspeech", "baby"): "keywords/8 hears none of the four",
}


def _room(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * SAMPLE_RATE)) * 0.0018).astype(np.float32)


def _requests(samples: np.ndarray) -> list[hark_pb2.StreamRequest]:
    config = hark_pb2.StreamConfig(sample_rate_hz=SAMPLE_RATE, encoding=hark_pb2.PCM_S16LE)
    step = SAMPLE_RATE // 10
    chunks = [encode_pcm(samples[i : i + step]) for i in range(0, samples.size, step)]
    return [hark_pb2.StreamRequest(config=config)] + [
        hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=c)) for c in chunks
    ]


def _held_out(engine: str, voice: str) -> Any:
    """One voice; those the bundled model does not pass yet are strict xfails (a pass makes them fail until
    the mark goes), for the bundled store only (``HARK_E2E_STORE`` runs every voice as a plain test)."""
    marks = []
    if (engine, voice) in NOT_YET and not os.environ.get("HARK_E2E_STORE"):
        marks.append(pytest.mark.xfail(reason=NOT_YET[engine, voice], strict=True))
    return pytest.param(engine, voice, id=f"{engine}-{voice}", marks=marks)


@pytest.mark.parametrize("engine,voice", [_held_out(e, v) for e, v in HELD_OUT])
async def test_a_sentence_from_a_held_out_engine_gives_its_keywords_in_order(
    start_hark: StartHark, engine: str, voice: str
) -> None:
    found = [v for v in installed_voices((engine,)) if v.voice == voice]
    if not found:
        pytest.skip(f"{engine} {voice} is not installed (make system-deps-voices)")
    speaker: EngineVoice = found[0]
    hark = await start_hark(STORE)
    parts, centres, t = [_room(0.6, 0)], [], 0.6
    for i, word in enumerate(WORDS):
        audio = np.asarray(trim_silence(speak(speaker, word)), dtype=np.float32) * 0.5
        centres.append(t + audio.size / SAMPLE_RATE / 2)
        parts += [audio + _room(audio.size / SAMPLE_RATE, i + 1), _room(1.4, i + 10)]
        t += audio.size / SAMPLE_RATE + 1.4
    call = hark.stub.StreamClassify(iter(_requests(np.concatenate(parts))))
    events = [r.event async for r in call if r.WhichOneof("response") == "event"]

    assert [e.label for e in events] == WORDS, f"{engine} {voice}"
    for event, centre in zip(events, centres, strict=True):
        assert abs(event.time_s - centre) < 0.7, (event.label, event.time_s, centre)
