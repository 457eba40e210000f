"""The Python library against a real server: the sync and asyncio clients agree, and both ride out a full server.

The sync client blocks, so it runs in a worker thread while this test's event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from hark.client import AsyncHarkClient, Detection, HarkClient, HarkError, StreamItem, StreamStarted
from tests.fixtures_models import SAMPLE_RATE, noise, quiet
from tests.integration.conftest import Hark, StartHark

pytestmark = pytest.mark.timeout(120)


def two_words() -> np.ndarray:
    """Quiet, a 'word' (what the tiny model hears as yes), quiet, another word, quiet: two events."""
    return np.concatenate([quiet(1.0), noise(0.8), quiet(2.0), noise(0.8, seed=3), quiet(1.5)])


@pytest.fixture
def two_words_wav(tmp_path: Path) -> Path:
    path = tmp_path / "two-words.wav"
    sf.write(path, two_words(), SAMPLE_RATE, subtype="PCM_16")
    return path


def sync_stream(address: str, audio: Path | np.ndarray, **options: object) -> list[StreamItem]:
    with HarkClient(address) as client:
        return list(client.stream(audio, **options))  # type: ignore[arg-type]


async def async_stream(address: str, audio: Path | np.ndarray, **options: object) -> list[StreamItem]:
    async with AsyncHarkClient(address) as client:
        return [item async for item in client.stream(audio, **options)]  # type: ignore[arg-type]


async def test_sync_and_async_clients_give_identical_events_for_the_same_file(hark: Hark, two_words_wav: Path) -> None:
    sync_items = await asyncio.to_thread(sync_stream, hark.address, two_words_wav, realtime=False, emit_scores=True)
    async_items = await async_stream(hark.address, two_words_wav, realtime=False, emit_scores=True)
    assert isinstance(sync_items[0], StreamStarted)
    events = [i for i in sync_items if isinstance(i, Detection)]
    assert [e.label for e in events] == ["yes", "yes"]
    assert events[0].time_s < 2.5 < events[1].time_s
    assert async_items == sync_items  # started, every hop's scores and every event, equal


async def test_sync_and_async_classify_and_models_agree(hark: Hark, two_words_wav: Path) -> None:
    with HarkClient(hark.address) as sync_client:
        sync_result = await asyncio.to_thread(sync_client.classify, two_words_wav)
        sync_models = await asyncio.to_thread(sync_client.models)
    async with AsyncHarkClient(hark.address) as async_client:
        assert await async_client.classify(two_words_wav) == sync_result
        assert await async_client.classify(sf.read(two_words_wav, dtype="float32")[0]) == sync_result
        assert await async_client.models() == sync_models
        with pytest.raises(HarkError) as missing:
            await async_client.get_model("nope")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND
    assert [m.name for m in sync_models] == ["tiny"]


async def test_async_stream_takes_an_async_source_of_pcm_chunks(hark: Hark) -> None:
    samples = two_words()

    async def microphone() -> object:
        step = SAMPLE_RATE // 10
        for start in range(0, samples.size, step):
            yield (np.round(samples[start : start + step] * 32767).astype("<i2")).tobytes()

    async with AsyncHarkClient(hark.address) as client:
        items = [i async for i in client.stream(microphone(), realtime=False)]  # type: ignore[arg-type]
    assert [i.label for i in items if isinstance(i, Detection)] == ["yes", "yes"]


async def _hold_the_only_slot(address: str, seconds: float) -> list[StreamItem]:
    """A real-time stream that occupies a max_streams=1 server for ``seconds``."""
    return await async_stream(address, quiet(seconds), realtime=True)


@pytest.mark.parametrize("client_kind", ["sync", "async"])
async def test_a_client_refused_with_resource_exhausted_retries_after_the_pushback_and_succeeds(
    start_hark: StartHark, tiny_model_store: Path, two_words_wav: Path, client_kind: str
) -> None:
    hark = await start_hark(tiny_model_store, max_streams=1)
    holder = asyncio.create_task(_hold_the_only_slot(hark.address, 1.5))
    while hark.running.admission.active_streams == 0:  # the slot is taken once the holder's stream runs
        await asyncio.sleep(0.01)
    refused_before = _refusals(hark)
    if client_kind == "sync":
        items = await asyncio.to_thread(sync_stream, hark.address, two_words_wav, realtime=False)
    else:
        items = await async_stream(hark.address, two_words_wav, realtime=False)
    await holder
    assert _refusals(hark) > refused_before, "the first attempt must have met the full server"
    assert [i.label for i in items if isinstance(i, Detection)] == ["yes", "yes"]


async def test_the_retry_waits_the_server_s_pushback_not_gRPC_s_shorter_backoff(
    start_hark: StartHark, tiny_model_store: Path
) -> None:
    """The slot frees after 0.3 s; gRPC's own backoff would try again within 0.2 s, the pushback says 1 s."""
    hark = await start_hark(tiny_model_store, max_streams=1)
    holder = asyncio.create_task(_hold_the_only_slot(hark.address, 0.3))
    while hark.running.admission.active_streams == 0:
        await asyncio.sleep(0.01)
    refused_before = _refusals(hark)
    started = time.monotonic()
    items = await async_stream(hark.address, quiet(0.2), realtime=False)
    waited = time.monotonic() - started
    await holder
    assert isinstance(items[0], StreamStarted)
    assert _refusals(hark) - refused_before == 1  # one refusal, then the retry after the pushback got in
    assert waited >= 0.9  # a lower bound: only a retry that ignored the server's 1000 ms could be sooner


async def test_without_retries_the_full_server_refusal_reaches_the_caller(
    start_hark: StartHark, tiny_model_store: Path, two_words_wav: Path
) -> None:
    """grpc.aio can report a refusal that races the client's first write as ``INTERNAL: Internal error from
    Core`` (grpc/grpc#36066, gRPC's own bug): such tries are allowed, but the server's status must reach the
    caller in at least one of three, and no other outcome is."""
    hark = await start_hark(tiny_model_store, max_streams=1)
    holder = asyncio.create_task(_hold_the_only_slot(hark.address, 3.0))
    while hark.running.admission.active_streams == 0:
        await asyncio.sleep(0.01)
    codes = []
    async with AsyncHarkClient(hark.address, max_attempts=1) as client:
        for _ in range(3):
            with pytest.raises(HarkError) as refused:
                _ = [i async for i in client.stream(two_words_wav, realtime=False)]
            codes.append(refused.value.code)
            assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED or "from Core" in str(refused.value)
    await holder
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


def _refusals(hark: Hark) -> float:
    """hark_errors_total{code="RESOURCE_EXHAUSTED"} from the server's own registry."""
    value = hark.running.metrics.registry.get_sample_value("hark_errors_total", {"code": "RESOURCE_EXHAUSTED"})
    return value or 0.0


# ------------------------------------------------------------------------------------ the README's examples

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _example_code(name: str) -> str:
    """An example file without its docstring line: the code the README shows."""
    text = (EXAMPLES / name).read_text()
    return text.split('"""\n\n', 1)[1] if text.startswith('"""') else text


@pytest.mark.parametrize("name", ["microphone.py", "asyncio_stream.py"])
def test_the_readme_shows_the_examples_as_they_are(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"```python\n{_example_code(name)}```" in readme


def test_the_examples_pass_mypy_strict_against_the_typed_package() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(EXAMPLES)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_asyncio_example_runs_against_a_real_server(hark: Hark, two_words_wav: Path) -> None:
    code = _example_code("asyncio_stream.py")
    code = code.replace("127.0.0.1:50051", hark.address).replace("/tmp/yes.wav", str(two_words_wav))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "yes" and [line.split()[0] for line in lines[1:]] == ["yes", "yes"]


async def test_a_refused_async_stream_reports_the_server_s_status(hark: Hark) -> None:
    """Not grpc.aio's "INTERNAL: Internal error from Core" when audio meets a refused call (grpc/grpc#36066)."""
    async with AsyncHarkClient(hark.address) as client:
        for _ in range(5):
            with pytest.raises(HarkError) as refused:
                _ = [i async for i in client.stream(quiet(0.05), model="nope", realtime=False)]
            assert refused.value.code is grpc.StatusCode.NOT_FOUND, refused.value
