"""What one client may hold or send, as pure logic: admission per client, the audio budget, real-time
pacing, client strings in messages, and the gRPC options derived from the settings."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from hark.config import Settings
from hark.core.audio import AudioError, check_channels, encode_pcm, mix_down
from hark.core.model_store import InvalidModelName, ModelStore, validate_model_name
from hark.core.text import clip, quote
from hark.log_sampling import LogSampler
from hark.serving.admission import Admission, client_keys
from hark.serving.batcher import BatcherPool
from hark.serving.budget import COST_PER_PCM_BYTE, AudioBudget
from hark.serving.errors import Refusal
from hark.serving.limits import RealTimePacer
from hark.serving.metrics import HarkMetrics
from hark.serving.pipeline import DataPlane
from hark.transports.grpc.logs import MetadataDecodeFilter
from hark.transports.grpc.options import max_clip_bytes, max_receive_bytes, server_options
from tests.fixtures_models import noise, publish_tiny


async def test_one_client_cannot_take_every_slot() -> None:
    admission = Admission(10, max_clips=2, max_per_client=2)
    with admission.stream(["conn:a", "token:t"]), admission.stream(["conn:b", "token:t"]):
        # the token is at its limit, whatever the connection
        with pytest.raises(Refusal) as refused, admission.stream(["conn:c", "token:t"]):
            pass
        assert refused.value.code == "RESOURCE_EXHAUSTED" and refused.value.retry_after_ms
        with admission.stream(["conn:a", "token:u"]):  # another token on a connection with room is served
            assert admission.active_streams == 3
            # the connection is now at its limit
            with pytest.raises(Refusal, match="this client is at its limit of 2"), admission.stream(["conn:a"]):
                pass
    assert admission.active_streams == 0 and not admission.per_client


async def test_clips_have_their_own_smaller_budget_and_hold_a_stream_slot() -> None:
    admission = Admission(10, max_clips=2)
    with admission.clip(), admission.clip():
        assert (admission.active_clips, admission.active_streams) == (2, 2)
        with pytest.raises(Refusal, match="limit of 2 concurrent Classify calls"), admission.clip():
            pass
        with admission.stream():  # streams are still admitted
            pass
    assert admission.active_clips == admission.active_streams == admission.active_calls == 0


async def test_fast_streams_have_their_own_small_budget_inside_their_stream_slot() -> None:
    admission = Admission(10, max_clips=2, max_fast=1)
    with admission.stream(), admission.fast():
        assert (admission.active_fast, admission.active_streams) == (1, 1)
        with admission.stream(), pytest.raises(Refusal) as refused, admission.fast():
            pass
        assert refused.value.code == "RESOURCE_EXHAUSTED" and refused.value.retry_after_ms
        assert "limit of 1 concurrent fast streams" in refused.value.message
        with admission.stream(), admission.clip():  # live streams and clips are still admitted
            pass
    assert admission.active_fast == admission.active_streams == admission.active_calls == 0


def test_client_keys_name_the_peer_and_a_digest_of_the_token() -> None:
    keys = client_keys("ipv4:127.0.0.1:5000", "secret-token")
    assert keys[0] == "peer:ipv4:127.0.0.1:5000"
    assert keys[1].startswith("token:") and "secret" not in keys[1]
    assert client_keys("127.0.0.1") == ("peer:127.0.0.1",)


async def test_a_4_mb_clip_costs_under_26_mib_while_it_is_classified(tmp_path: Path) -> None:
    """What ``Classify`` of a 4 MB int16 clip (125 s) allocates on top of its bytes, as tracemalloc sees
    numpy's buffers: 35.8 MiB when its 1,241 windows were copied out of the frames and the level statistics
    took |x| of the whole clip; 20.3 MiB with windows as views of the frames and no |x| copy (the float32
    samples, 7.6 MiB, and the FFT's block of 1,024 frames are most of it)."""
    root = tmp_path / "store"
    publish_tiny(root, "tiny")
    store = ModelStore(root)
    store.refresh()
    settings = Settings(model_store=root)
    plane = DataPlane(settings, store, BatcherPool(settings), HarkMetrics())
    pcm = encode_pcm(noise(125.0))[:4_000_000]
    await plane.classify(pcm[:64_000], sample_rate_hz=16_000)  # first-use allocations out of the way
    tracemalloc.start()
    try:
        result = await plane.classify(pcm, sample_rate_hz=16_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.label == "yes"
    assert peak < 26 * 2**20, peak / 2**20


def test_the_audio_budget_refuses_what_does_not_fit_and_frees_what_ends() -> None:
    budget = AudioBudget(1000 * COST_PER_PCM_BYTE)
    with budget.reserve(600):
        with pytest.raises(Refusal, match="memory for audio in flight") as refused, budget.reserve(500):
            pass
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        with budget.reserve(400):
            assert budget.used == 1000 * COST_PER_PCM_BYTE
    assert budget.used == 0 and budget.refused == 1


def test_a_stream_is_free_for_its_burst_then_held_to_its_real_time_factor() -> None:
    pacer = RealTimePacer(factor=4.0, burst_s=30.0, clock=0.0)
    assert pacer.delay(30.0, now=0.0) == 0.0  # the burst
    assert pacer.delay(4.0, now=0.0) == pytest.approx(1.0)  # 4 s past the burst: not before 1 s
    assert pacer.delay(4.0, now=2.0) == pytest.approx(0.0)  # 8 s past it at 2 s: exactly on time
    assert pacer.delay(0.1, now=1.0) == pytest.approx(1.025)
    assert RealTimePacer(factor=0.0, burst_s=0.0, clock=0.0).delay(1e6, now=0.0) == 0.0  # 0 = unlimited


def test_client_strings_are_cut_and_escaped() -> None:
    assert quote("tiny") == "'tiny'"
    long = quote("x" * 3_900_000)
    assert len(long) < 100 and long.endswith("... (3900000 characters)")
    assert quote("a\nb\x1b[31m\u202e'") == "'a\\x0ab\\x1b[31m\\u202e\\''"
    assert quote(b"caf\xe9") == "'caf\\xe9'"
    assert len(clip("y" * 10_000)) == 515
    with pytest.raises(InvalidModelName) as error:
        validate_model_name("\x1b" + "n" * 1_000_000)
    assert len(str(error.value)) < 250 and "\x1b" not in str(error.value)
    assert len(Refusal("INVALID_ARGUMENT", "z" * 100_000).message) < 600


def test_interleaved_channels_are_mixed_down_or_refused() -> None:
    stereo = np.array([0.5, -0.5, 1.0, 0.0], dtype=np.float32)
    assert mix_down(stereo, 2).tolist() == [0.0, 0.5]
    assert mix_down(stereo, 1) is stereo
    with pytest.raises(AudioError, match="whole number of frames of 3"):
        mix_down(stereo, 3)
    assert check_channels(0) == 1
    with pytest.raises(AudioError, match="9 channels are not supported"):
        check_channels(9)


def test_grpc_limits_follow_the_settings() -> None:
    settings = Settings(max_stream_s=10.0, max_chunk_bytes=100_000, stream_window_bytes=32_768, max_connections=77)
    assert max_clip_bytes(settings) == 10 * 48_000 * 4 + 1024  # 10 s of float32 at 48 kHz
    assert max_receive_bytes(settings) == max_clip_bytes(settings)
    options = dict(server_options(settings, max_connections=50))
    assert options["grpc.max_receive_message_length"] == max_receive_bytes(settings)
    assert options["grpc.http2.lookahead_bytes"] == 32_768
    assert options["grpc.http2.bdp_probe"] == 0
    assert options["grpc.max_allowed_incoming_connections"] == 50
    assert options["grpc.max_concurrent_streams"] == settings.max_streams_per_connection
    # never above max_message_bytes, however long a stream may be
    assert max_receive_bytes(Settings()) == Settings().max_message_bytes
    # every connection ends in GOAWAY after max_connection_age_s; its calls get max_stream_s to finish
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 10_000
    assert dict(server_options(Settings(max_stream_s=1e9)))["grpc.max_connection_age_grace_ms"] == 2**31 - 1


def test_a_flood_of_log_lines_is_sampled_and_the_skipped_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("hark.log_sampling.time.monotonic", lambda: now[0])
    sampler = LogSampler(per_second=3)
    assert [sampler.allow() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] += 1.0
    assert sampler.allow() == 2  # the next line says how many were skipped


def test_grpcio_metadata_decode_failures_become_one_short_line() -> None:
    record = logging.LogRecord(
        "grpc._cython.cygrpc", logging.ERROR, "x.pyx", 1, "Invalid encoding on %s", (b"\xff" * 30_000,), None
    )
    record.exc_info = (UnicodeDecodeError, UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid"), None)
    assert MetadataDecodeFilter().filter(record)
    line = record.getMessage()
    assert len(line) < 400 and "(30000 bytes)" in line
    assert record.exc_info is None and record.levelno == logging.INFO
    other = logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "x.pyx", 1, "something else", (), None)
    assert MetadataDecodeFilter().filter(other) and other.msg == "something else"
