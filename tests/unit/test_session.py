"""StreamSession: windows every hop once a window is full, at the right stream times, at any rate."""

from __future__ import annotations

import numpy as np
import pytest

from hark.config import Settings
from hark.core.audio import AudioError, encode_pcm, resample
from hark.core.frontend import LogMel
from hark.core.model_store import LoadedModel
from hark.serving.session import StreamSession, StreamTooLong, Window, clip_windows
from tests.fixtures_models import load_tiny, noise, utterance

WINDOW_S = (400 + 97 * 160) / 16_000  # 98 frames of 25 ms every 10 ms
HOP_S = 0.1


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_tiny(tmp_path_factory.mktemp("store"))


def session(model: LoadedModel, rate: int = 16_000, encoding: str = "pcm_s16le", **settings: float) -> StreamSession:
    return StreamSession(model, sample_rate=rate, encoding=encoding, settings=Settings(**settings))


def feed_in_chunks(s: StreamSession, samples: np.ndarray, sizes: list[int]) -> list[Window]:
    windows, pos, i = [], 0, 0
    while pos < samples.size:
        size = sizes[i % len(sizes)]
        windows += s.feed(samples[pos : pos + size])
        pos += size
        i += 1
    return windows


def test_a_window_every_hop_once_the_first_is_full(model: LoadedModel) -> None:
    audio = noise(2.0)
    windows = feed_in_chunks(session(model), audio, [1600])
    frames = 1 + (audio.size - 400) // 160  # 198
    assert len(windows) == 1 + (frames - 98) // 10 == 11
    for k, w in enumerate(windows):
        assert w.index == k
        assert w.start_s == pytest.approx(k * HOP_S)
        assert w.end_s == pytest.approx(k * HOP_S + WINDOW_S)
        assert w.centre_s == pytest.approx(k * HOP_S + WINDOW_S / 2)


def test_no_window_before_one_is_full(model: LoadedModel) -> None:
    s = session(model)
    assert s.feed(noise(WINDOW_S - 0.01)) == []
    assert len(s.feed(noise(0.01))) == 1


def test_windows_are_the_whole_clip_frames_whatever_the_chunking(model: LoadedModel) -> None:
    audio = noise(1.7, seed=5)
    reference = LogMel().frames(audio)
    one_chunk = session(model).feed(audio)
    ragged = feed_in_chunks(session(model), audio, [1, 333, 4000, 17, 160, 2555])
    assert len(one_chunk) == len(ragged) == 1 + (reference.shape[0] - 98) // 10
    for a, b in zip(one_chunk, ragged, strict=True):
        np.testing.assert_allclose(a.features, b.features, atol=1e-4)
        first = round(a.start_s / 0.01)
        np.testing.assert_allclose(a.features, reference[first : first + 98], atol=1e-4)


def test_windows_own_their_features(model: LoadedModel) -> None:
    s = session(model)
    first = s.feed(noise(1.0))[0]
    before = first.features.copy()
    s.feed(noise(3.0, seed=9))  # overwrites the ring many times over
    np.testing.assert_array_equal(first.features, before)


def test_finish_scores_the_tail(model: LoadedModel) -> None:
    s = session(model)
    windows = s.feed(noise(2.0))  # the last window ends at 1.995 s: 5 ms of audio are not covered yet
    tail = s.finish()
    assert len(tail) == 1
    assert tail[0].start_s == pytest.approx(windows[-1].start_s + HOP_S)
    assert s.finish() == []


def test_finish_adds_nothing_when_the_last_window_covers_the_audio(model: LoadedModel) -> None:
    s = session(model)
    s.feed(noise(WINDOW_S + HOP_S))
    assert s.finish() == []


def test_a_stream_shorter_than_a_window_is_scored_once(model: LoadedModel) -> None:
    s = session(model)
    assert s.feed(noise(0.3)) == []
    windows = s.finish()
    assert len(windows) == 1
    assert windows[0].start_s == 0.0


def test_an_empty_stream_yields_nothing(model: LoadedModel) -> None:
    s = session(model)
    assert s.feed_pcm(b"") == []
    assert s.finish() == []


@pytest.mark.parametrize("rate", [8_000, 44_100, 48_000])
def test_a_resampled_stream_gives_the_same_windows_per_second(model: LoadedModel, rate: int) -> None:
    audio16 = utterance(0.5, 0.8, 1.0)
    native = session(model)
    expected = native.feed(audio16) + native.finish()
    s = session(model, rate=rate)
    audio = resample(audio16, 16_000, rate)
    got = feed_in_chunks(s, audio, [round(rate * 0.1)]) + s.finish()
    assert len(got) == len(expected)
    assert [w.start_s for w in got] == pytest.approx([w.start_s for w in expected])
    assert s.audio_s == pytest.approx(audio16.size / 16_000, abs=1e-4)
    # The word lands in the same windows: the loudest window is the same one.
    loud = [int(np.argmax([w.features.mean() for w in ws])) for ws in (expected, got)]
    assert abs(loud[0] - loud[1]) <= 1


def test_scoring_turns_a_word_into_one_event_at_its_time(model: LoadedModel) -> None:
    s = session(model)
    audio = utterance(1.0, 0.8, 1.5)
    windows = s.feed(audio) + s.finish()
    probabilities = model.runner.run(np.stack([w.features for w in windows]))
    events = [e for w, p in zip(windows, probabilities, strict=True) for e in s.score(w, p).events]
    assert [e.label for e in events] == ["yes"]
    assert 1.0 <= events[0].time_s <= 1.8  # a window centred on the word
    assert s.events == 1


def test_bad_audio_is_an_audio_error_that_says_why(model: LoadedModel) -> None:
    with pytest.raises(AudioError, match="whole number"):
        session(model).feed_pcm(b"\x00\x01\x02")
    with pytest.raises(AudioError, match="NaN"):
        session(model, encoding="pcm_f32le").feed_pcm(np.array([0.0, np.nan], "<f4").tobytes())
    with pytest.raises(AudioError, match="exceeds the limit"):
        session(model, max_chunk_bytes=100).feed_pcm(bytes(102))
    with pytest.raises(AudioError, match="16000"):
        session(model, rate=12_345)
    with pytest.raises(AudioError, match="encoding"):
        session(model, encoding="mp3")


def test_a_stream_past_max_stream_s_is_refused(model: LoadedModel) -> None:
    s = session(model, max_stream_s=1.0)
    s.feed_pcm(encode_pcm(noise(0.9)))
    with pytest.raises(StreamTooLong, match="1 s"):
        s.feed_pcm(encode_pcm(noise(0.2)))


def test_clip_windows_centre_pads_a_short_clip(model: LoadedModel) -> None:
    clip = noise(0.3)
    windows = clip_windows(clip, model)
    assert len(windows) == 1 and windows[0].shape == (98, 40)
    need = 400 + 97 * 160
    left = (need - clip.size) // 2
    padded = np.zeros(need, np.float32)
    padded[left : left + clip.size] = clip
    np.testing.assert_allclose(windows[0], LogMel().frames(padded), atol=1e-4)


def test_clip_windows_cover_a_long_clip_to_its_end(model: LoadedModel) -> None:
    clip = noise(1.55)
    frames = LogMel().frames(clip)  # 153 frames: hops at 0..50 leave 5 frames, so one more window ends at 153
    windows = clip_windows(clip, model)
    assert len(windows) == 1 + (frames.shape[0] - 98) // 10 + 1
    assert {w.shape for w in windows} == {(98, 40)}
    np.testing.assert_allclose(windows[1], frames[10:108], atol=1e-5)
    np.testing.assert_allclose(windows[-1], frames[-98:], atol=1e-5)
