"""Energy gating: too-quiet windows skip the model, are scored as silence, and change no event."""

from __future__ import annotations

import numpy as np
import pytest

from hark.config import Settings
from hark.core.audio import PCM_S16LE, encode_pcm
from hark.core.frontend import FrontendConfig, LogMel
from hark.core.model_store import LoadedModel
from hark.serving.batcher import BatcherPool
from hark.serving.pipeline import StreamPipeline
from hark.serving.session import StreamSession, Window, full_scale_power
from tests.fixtures_models import LABELS, load_tiny, noise, quiet, utterance

SILENCE = LABELS.index("_silence_")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_tiny(tmp_path_factory.mktemp("store"))


def session(model: LoadedModel, **settings: object) -> StreamSession:
    return StreamSession(model, sample_rate=16_000, encoding="pcm_s16le", settings=Settings(**settings))  # type: ignore[arg-type]


def feed(s: StreamSession, samples: np.ndarray, size: int = 1600) -> list[Window]:
    windows: list[Window] = []
    for i in range(0, samples.size, size):
        windows += s.feed(samples[i : i + size])
    return windows + s.finish()


async def run(s: StreamSession, samples: np.ndarray, size: int = 1600) -> list[tuple[Window, np.ndarray, list[str]]]:
    """The live path: a StreamPipeline over the version's batcher, fed the audio as s16 PCM chunks."""
    pool = BatcherPool(Settings())
    pcm = encode_pcm(samples, PCM_S16LE)
    results = []
    try:
        with pool.lease(s.model) as batcher:
            pipeline = StreamPipeline(s, batcher)
            for i in range(0, len(pcm), 2 * size):
                results += await pipeline.feed(pcm[i : i + 2 * size])
            results += await pipeline.finish()
    finally:
        await pool.close()
    return [(r.window, r.scores, [e.label for e in r.events]) for r in results]


def test_the_reference_makes_levels_read_as_rms_dbfs() -> None:
    ref = full_scale_power(FrontendConfig())
    for dbfs in (-20, -50, -70):
        frames = LogMel().frames(noise(1.0, level=10 ** (dbfs / 20), seed=3))
        power = (np.exp(frames.astype(np.float64)) - FrontendConfig().log_offset).sum(axis=1).mean()
        assert 10 * np.log10(power / ref) == pytest.approx(dbfs, abs=1.0)


@pytest.mark.parametrize(("dbfs", "gated"), [(-80, True), (-66, True), (-54, False), (-10, False)])
def test_windows_below_the_gate_are_gated(model: LoadedModel, dbfs: float, gated: bool) -> None:
    windows = feed(session(model, gate_dbfs=-60), noise(1.5, level=10 ** (dbfs / 20)))
    assert windows and all(w.gated is gated for w in windows)


@pytest.mark.parametrize("off", [float("-inf"), None])
def test_the_gate_can_be_turned_off(model: LoadedModel, off: float | None) -> None:
    assert not any(w.gated for w in feed(session(model, gate_dbfs=off), quiet(2.0)))


def test_one_loud_frame_opens_the_gate_for_every_window_that_holds_it(model: LoadedModel) -> None:
    click = np.concatenate([quiet(1.5), noise(0.02), quiet(1.5)])
    windows = feed(session(model), click)
    assert [w.gated for w in windows] == [not (w.start_s <= 1.52 and w.end_s >= 1.5) for w in windows]
    assert not all(w.gated for w in windows)


def test_gating_does_not_depend_on_the_chunking(model: LoadedModel) -> None:
    audio = utterance()
    flags = [[w.gated for w in feed(session(model), audio, size)] for size in (1600, 37, 4000, audio.size)]
    assert all(f == flags[0] for f in flags) and any(flags[0]) and not all(flags[0])


async def test_a_gated_window_scores_as_silence_and_no_event_changes(model: LoadedModel) -> None:
    audio = np.concatenate([utterance(), utterance()])
    on, off = await run(session(model), audio), await run(session(model, gate_dbfs=float("-inf")), audio)
    assert [e for *_, e in on] == [e for *_, e in off]
    assert sum(len(e) for *_, e in on) == 2  # one event per word, as without gating
    assert any(w.gated for w, *_ in on)
    for (w, s_on, _), (_, s_off, _) in zip(on, off, strict=True):
        assert int(np.argmax(s_on)) == int(np.argmax(s_off))  # the same answer every hop
        if w.gated:
            assert int(np.argmax(s_on)) == SILENCE
    # Gated windows use the session's one-hot silence, and smoothing decays toward it.
    s = session(model)
    assert s.gated_probabilities()[SILENCE] == 1.0 and s.gated_probabilities().sum() == 1.0


def test_without_a_silence_class_the_scores_decay(model: LoadedModel) -> None:
    s = session(model)
    s._silence[:] = 0  # a model without "_silence_"
    assert not s.gated_probabilities().any()  # nothing scored yet
    windows = feed(s, noise(1.2))
    scored = s.score(windows[0], model.runner.run(windows[0].features[None])[0])
    assert np.allclose(s.gated_probabilities(), scored.scores * 0.5)
