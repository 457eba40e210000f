"""The real server's /metrics and /control-check over real HTTP, after real gRPC traffic.

Every server here is ``start_server`` on 127.0.0.1 with ephemeral gRPC and metrics ports, serving the
tiny ONNX model published with a drift reference and a control set (``tests/fixtures_metrics.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import grpc
import pytest

from hark.config import Settings
from hark.core.audio import encode_pcm
from hark.server import StartupError, start_server
from hark.v1 import hark_pb2
from loadtest.soak import TINY_WINDOW, endless_audio, refusal_status
from tests.fixtures_metrics import (
    failing_call,
    http,
    http_json,
    label_sets,
    normal_audio,
    publish_observed_tiny,
    samples_of,
    shifted_audio,
    stream_audio,
)
from tests.fixtures_models import SAMPLE_RATE, noise, publish_tiny
from tests.integration.conftest import TEST_SETTINGS, Hark, StartHark

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("hark")
HARK = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hark.cli"]
TINY = {"model": "tiny", "version": "1"}


@pytest.fixture
def observed_store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    publish_observed_tiny(root, wrong=1)  # 8 clips, one mislabelled: accuracy 7/8
    return root


@pytest.fixture
async def observed(start_hark: StartHark, observed_store: Path) -> Hark:
    return await start_hark(observed_store, drift_window_s=60)


def metrics_url(hark: Hark) -> str:
    assert hark.running.metrics_server is not None
    return hark.running.metrics_server.url


async def scrape(hark: Hark) -> str:
    status, body, headers = await http(metrics_url(hark) + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def value(text: str, name: str, **labels: str) -> float:
    (found,) = samples_of(text, name, labels)
    return found


# /metrics -------------------------------------------------------------------------------------------


async def test_traffic_counters_match_what_the_client_saw(observed: Hark) -> None:
    audio = normal_audio(3.3)
    responses = await stream_audio(observed.stub, audio)
    events = [r.event for r in responses if r.WhichOneof("response") == "event"]
    assert events, "the noise burst should raise an event"
    chunks = -(-audio.size // (SAMPLE_RATE // 10))
    assert await failing_call(observed.stub) == grpc.StatusCode.NOT_FOUND
    text = await scrape(observed)

    assert value(text, "hark_requests_total", rpc="StreamClassify") == 2
    assert value(text, "hark_errors_total", code="NOT_FOUND") == 1
    assert value(text, "hark_audio_chunks_total", **TINY) == chunks
    assert value(text, "hark_audio_bytes_total", **TINY) == audio.size * 2
    assert value(text, "hark_audio_seconds_total", **TINY) == pytest.approx(audio.size / SAMPLE_RATE)
    assert value(text, "hark_events_total", **TINY, **{"class": "yes"}) == len(events)
    windows = value(text, "hark_windows_total", **TINY)
    assert windows >= 1 and value(text, "hark_end_to_end_latency_seconds_count", **TINY) == windows
    assert 1 <= value(text, "hark_batch_size_sum", **TINY) <= windows  # gated (quiet) windows skip the model
    for stage in ("decode", "frontend", "queue", "inference", "postprocess"):
        assert value(text, "hark_stage_duration_seconds_count", stage=stage, **TINY) > 0, stage
    assert value(text, "hark_stage_duration_seconds_count", stage="decode", **TINY) == chunks
    assert value(text, "hark_input_level_dbfs_count", **TINY) == chunks
    assert value(text, "hark_active_streams") == 0
    assert value(text, "hark_models_loaded") == 1
    assert value(text, "process_resident_memory_bytes") > 0
    for name, labels in label_sets(text):
        assert name.startswith(("hark_", "process_", "python_")), name
        assert "stream_id" not in labels


async def test_errors_count_every_refusal_also_those_made_before_the_servicer(
    start_hark: StartHark, observed_store: Path
) -> None:
    """A missing token and a malformed request are refused by interceptors before the servicer runs, and a
    stream whose responses go unread is ended without waiting for its status to be delivered: each is still
    a call Hark ended with an error, counted under its code."""
    token = "tok-" + "5" * 32
    bearer = (("authorization", f"Bearer {token}"),)
    h = await start_hark(observed_store, auth_tokens=token, idle_timeout_s=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
        await h.stub.ListModels(hark_pb2.ListModelsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await h.channel.unary_unary("/hark.v1.Classifier/Classify")(b"\x0a\xff\xff\xff\xff\x0f", metadata=bearer)
    stalled, _, _ = await asyncio.to_thread(
        refusal_status, h.address, endless_audio(), options=TINY_WINDOW, metadata=bearer, read_after_s=2.0
    )
    assert (unauthenticated.value.code(), malformed.value.code(), stalled) == (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    text = await scrape(h)
    for code in ("UNAUTHENTICATED", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED"):
        assert value(text, "hark_errors_total", code=code) == 1, code


async def test_active_streams_counts_open_streams(observed: Hark) -> None:
    queue: asyncio.Queue[hark_pb2.StreamRequest | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (item := await queue.get()) is not None:
            yield item

    call = observed.stub.StreamClassify(requests())
    await queue.put(
        hark_pb2.StreamRequest(config=hark_pb2.StreamConfig(sample_rate_hz=SAMPLE_RATE, encoding=hark_pb2.PCM_S16LE))
    )
    await queue.put(hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=encode_pcm(noise(0.2)))))
    first = await call.read()
    assert first.WhichOneof("response") == "started"
    assert value(await scrape(observed), "hark_active_streams") == 1
    await queue.put(None)
    while await call.read() is not grpc.aio.EOF:
        pass
    assert value(await scrape(observed), "hark_active_streams") == 0


async def test_classify_counts_and_feeds_drift(observed: Hark) -> None:
    pcm = encode_pcm(normal_audio(6.6))
    response = await observed.stub.Classify(
        hark_pb2.ClassifyRequest(pcm=pcm, sample_rate_hz=SAMPLE_RATE, encoding=hark_pb2.PCM_S16LE)
    )
    assert response.label == "yes"
    text = await scrape(observed)
    assert value(text, "hark_requests_total", rpc="Classify") == 1
    assert value(text, "hark_audio_chunks_total", **TINY) == 1
    assert value(text, "hark_windows_total", **TINY) > 1
    assert value(text, "hark_feature_drift_overall", **TINY) < 0.3  # traffic like the reference


async def test_drift_gauges_respond_to_louder_audio(start_hark: StartHark, observed_store: Path) -> None:
    hark = await start_hark(observed_store, drift_window_s=0.5)
    for _ in range(2):
        await stream_audio(hark.stub, normal_audio(3.3))
    normal = await scrape(hark)
    await asyncio.sleep(2.0)  # four time constants: the normal traffic weighs 2% of the window
    for _ in range(2):
        await stream_audio(hark.stub, shifted_audio(3.3))
    shifted = await scrape(hark)
    before = value(normal, "hark_feature_drift_overall", **TINY)
    after = value(shifted, "hark_feature_drift_overall", **TINY)
    print(f"drift before {before:.3f}, after {after:.3f}")
    assert before < 0.3 and after > 1.0, (before, after)  # 1.0: the HarkFeatureDrift threshold
    bands_before = samples_of(normal, "hark_feature_drift", TINY)
    bands_after = samples_of(shifted, "hark_feature_drift", TINY)
    assert len(bands_after) == 40 and sum(bands_after) > 3 * sum(bands_before)
    assert (
        value(shifted, "hark_input_clipping_ratio", **TINY) > 0.05 > value(normal, "hark_input_clipping_ratio", **TINY)
    )
    assert value(shifted, "hark_input_silence_ratio", **TINY) < value(normal, "hark_input_silence_ratio", **TINY)
    assert value(shifted, "hark_feature_drift_frames", **TINY) > 100


async def test_openmetrics_is_served_to_scrapers_that_ask(observed: Hark) -> None:
    await stream_audio(observed.stub, normal_audio(3.3))

    def get() -> tuple[str, str]:
        import urllib.request

        request = urllib.request.Request(
            metrics_url(observed) + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.headers["Content-Type"], r.read().decode()

    content_type, text = await asyncio.to_thread(get)
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert "hark_windows_total" in text and "_created" not in text


async def test_other_paths_and_methods(observed: Hark) -> None:
    url = metrics_url(observed)
    assert (await http(url + "/nope"))[0] == 404
    assert (await http(url + "/control-check"))[0] == 405
    assert (await http(url + "/metrics", "POST"))[0] == 404


# /control-check -------------------------------------------------------------------------------------


async def test_control_check_runs_the_live_path_and_exports_accuracy(observed: Hark) -> None:
    before = time.time()
    status, body = await http_json(metrics_url(observed) + "/control-check", "POST")
    assert status == 200, body
    (result,) = body["results"]
    assert (result["model"], result["version"], result["clips"], result["correct"]) == ("tiny", 1, 8, 7)
    assert result["accuracy"] == pytest.approx(0.875)
    assert result["misses"] == [{"path": "clips/word_0.wav", "label": "no", "predicted": "yes"}]
    text = await scrape(observed)
    assert value(text, "hark_control_accuracy", **TINY) == pytest.approx(0.875)
    assert value(text, "hark_control_clips", **TINY) == 8
    assert value(text, "hark_control_last_run_timestamp_seconds", **TINY) >= before
    # Control clips are not client traffic: they are kept out of the traffic and drift figures.
    assert value(text, "hark_windows_total", **TINY) == 0
    assert not samples_of(text, "hark_feature_drift_overall", TINY)


async def test_control_check_refuses_what_it_cannot_do(observed: Hark, start_hark: StartHark, tmp_path: Path) -> None:
    url = metrics_url(observed) + "/control-check"
    status, body = await http_json(url + "?model=nope", "POST")
    assert status == 404 and "not served" in body["error"]
    status, body = await http_json(url + "?version=x", "POST")
    assert status == 400
    status, body = await http_json(url + "?version=7", "POST")
    assert status == 404 and "version 7" in body["error"]
    bare = await start_hark(publish_tiny(tmp_path / "bare").parent.parent)  # no control set
    status, body = await http_json(metrics_url(bare) + "/control-check", "POST")
    assert status == 404 and "control set" in body["error"]


async def test_scheduled_control_checks(start_hark: StartHark, observed_store: Path) -> None:
    hark = await start_hark(observed_store, control_interval_s=0.2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = samples_of(await scrape(hark), "hark_control_accuracy", TINY)
        if found:
            assert found == [pytest.approx(0.875)]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("no scheduled control check within 10 s")


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARK_")}
    proc = await asyncio.create_subprocess_exec(
        *HARK, *args, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_control_check_cli(observed: Hark) -> None:
    server = f"127.0.0.1:{observed.running.metrics_server.port}"  # type: ignore[union-attr]
    code, out, err = await run_cli("control-check", "--server", server, "--json")
    assert code == 0, err
    assert '"accuracy": 0.875' in out and out.count("\n") == 1
    code, out, _ = await run_cli("control-check", "--server", server, "--min-accuracy", "0.9")
    assert code == 1
    assert "tiny v1  accuracy 0.875 (7/8)" in out and "clips/word_0.wav  labelled no, heard yes" in out
    code, _, err = await run_cli("control-check", "--server", server, "--model", "nope")
    assert code == 2 and "not served" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    code, _, err = await run_cli("control-check", "--server", f"127.0.0.1:{free}")
    assert code == 3 and "cannot reach" in err
    code, _, err = await run_cli("control-check", "--server", observed.running.address)  # the gRPC port, not HTTP
    assert code == 3 and "does not answer HTTP" in err and "Traceback" not in err and err.count("\n") == 1


# Lifecycle ------------------------------------------------------------------------------------------


async def test_reload_exports_refusals_and_drops_removed_versions(observed: Hark, observed_store: Path) -> None:
    publish_observed_tiny(observed_store, version=2, control=False)
    broken = publish_tiny(observed_store, version=3)
    (broken / "model.onnx").write_bytes(b"not a model")
    await observed.running.reload()
    await stream_audio(observed.stub, normal_audio(3.3))  # on version 2, the newest
    text = await scrape(observed)
    assert value(text, "hark_model_refused_total", model="tiny") == 1
    assert value(text, "hark_models_loaded") == 2
    assert value(text, "hark_model_default_version", model="tiny") == 2
    v2 = {"model": "tiny", "version": "2"}
    assert samples_of(text, "hark_windows_total", v2)
    import shutil

    shutil.rmtree(observed_store / "tiny" / "2")
    await observed.running.reload()
    text = await scrape(observed)
    assert value(text, "hark_models_loaded") == 1
    assert not [labels for _, labels in label_sets(text) if labels.get("version") == "2"]


async def test_a_stream_on_a_removed_version_does_not_bring_its_series_back(
    observed: Hark, observed_store: Path
) -> None:
    queue: asyncio.Queue[hark_pb2.StreamRequest | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (item := await queue.get()) is not None:
            yield item

    call = observed.stub.StreamClassify(requests())
    await queue.put(
        hark_pb2.StreamRequest(config=hark_pb2.StreamConfig(sample_rate_hz=SAMPLE_RATE, encoding=hark_pb2.PCM_S16LE))
    )
    assert (await call.read()).WhichOneof("response") == "started"
    publish_observed_tiny(observed_store, version=2, control=False)
    import shutil

    shutil.rmtree(observed_store / "tiny" / "1")
    await observed.running.reload()  # version 1 leaves the store while the stream still runs on it
    await queue.put(hark_pb2.StreamRequest(audio=hark_pb2.AudioChunk(pcm=encode_pcm(normal_audio(3.3)))))
    await queue.put(None)
    while await call.read() is not grpc.aio.EOF:
        pass
    assert await call.code() == grpc.StatusCode.OK
    text = await scrape(observed)
    assert not [(name, labels) for name, labels in label_sets(text) if labels.get("version") == "1"]


async def test_metrics_port_can_be_disabled_and_a_taken_port_fails_startup(observed_store: Path) -> None:
    settings = {**TEST_SETTINGS, "model_store": observed_store}
    running = await start_server(Settings(**{**settings, "metrics_port": -1}))
    try:
        assert running.metrics_server is None
    finally:
        await running.stop(0)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(StartupError, match="cannot serve metrics"):
            await start_server(Settings(**{**settings, "metrics_port": taken.getsockname()[1]}))


async def test_servers_in_one_process_keep_their_own_metrics(start_hark: StartHark, observed_store: Path) -> None:
    a = await start_hark(observed_store)
    b = await start_hark(observed_store)
    await stream_audio(a.stub, normal_audio(3.3))
    assert samples_of(await scrape(a), "hark_windows_total", TINY)
    assert not samples_of(await scrape(b), "hark_windows_total", TINY)
