"""The dynamic batcher: batches fill up, flush on time, and a failing batch fails only itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hark.config import Settings
from hark.serving.batcher import Batcher, BatcherPool, InferenceError
from tests.fixtures_models import load_tiny


class Recorder:
    """A stand-in model: returns each window's first value, remembers batch sizes, fails on a NaN."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(batch.shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        if np.isnan(batch).any():
            raise RuntimeError("poisoned window")
        return batch[:, 0, :1].astype(np.float32)


def window(value: float) -> np.ndarray:
    return np.full((4, 3), value, dtype=np.float32)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


async def test_batches_fill_to_max_batch(executor: ThreadPoolExecutor) -> None:
    run = Recorder()
    batcher = Batcher(run, executor=executor, max_batch=4, max_delay_s=0.05)
    results = await batcher.submit_many([window(i) for i in range(10)])
    assert [float(r[0]) for r in results] == list(range(10))  # every caller gets its own row
    assert run.sizes == [4, 4, 2]
    await batcher.close()


async def test_a_lone_window_is_flushed_after_max_delay(executor: ThreadPoolExecutor) -> None:
    run = Recorder()
    batcher = Batcher(run, executor=executor, max_batch=32, max_delay_s=0.05)
    start = time.perf_counter()
    result = await batcher.submit(window(7))
    waited = time.perf_counter() - start
    assert float(result[0]) == 7
    assert run.sizes == [1]
    assert 0.04 <= waited < 1.0
    await batcher.close()


async def test_zero_delay_runs_at_once(executor: ThreadPoolExecutor) -> None:
    batcher = Batcher(Recorder(), executor=executor, max_batch=32, max_delay_s=0.0)
    await batcher.submit(window(0))  # the first call starts the batching task
    start = time.perf_counter()
    await batcher.submit(window(1))
    assert time.perf_counter() - start < 0.5  # a lone window does not wait for company
    await batcher.close()


async def test_windows_arriving_while_the_worker_is_busy_form_the_next_batch(executor: ThreadPoolExecutor) -> None:
    running, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(batch.shape[0])
        running.set()
        release.wait(5)
        return batch[:, 0, :1]

    batcher = Batcher(run, executor=executor, max_batch=8, max_delay_s=0.0, workers=1)
    first = asyncio.ensure_future(batcher.submit(window(0)))
    await asyncio.to_thread(running.wait, 5)  # the first batch holds the only worker
    asyncio.get_running_loop().call_later(0.05, release.set)
    rest = await batcher.submit_many([window(i) for i in range(1, 6)])
    await first
    assert sizes == [1, 5]
    assert [float(r[0]) for r in rest] == [1, 2, 3, 4, 5]
    await batcher.close()


async def test_bulk_windows_wait_for_live_ones_and_fill_the_room_they_leave(executor: ThreadPoolExecutor) -> None:
    """Clips and fast streams submit ``bulk``: a batch takes every queued live window first, however late it
    came, and fills the rest with bulk ones; with no live window queued, bulk windows run on their own."""
    running, release = threading.Event(), threading.Event()
    batches: list[list[float]] = []

    def run(batch: np.ndarray) -> np.ndarray:
        batches.append([float(v) for v in batch[:, 0, 0]])
        running.set()
        release.wait(5)
        return batch[:, 0, :1]

    batcher = Batcher(run, executor=executor, max_batch=4, max_delay_s=0.0, workers=1)
    first = asyncio.ensure_future(batcher.submit(window(0)))
    await asyncio.to_thread(running.wait, 5)  # the first batch holds the only worker
    bulk = asyncio.ensure_future(batcher.submit_many([window(100 + i) for i in range(6)], bulk=True))
    await asyncio.sleep(0.01)
    live = asyncio.ensure_future(batcher.submit_many([window(1), window(2)]))
    await asyncio.sleep(0.01)
    assert batcher.queued == 8
    release.set()
    assert [float(r[0]) for r in await live] == [1, 2]
    assert [float(r[0]) for r in await bulk] == [100 + i for i in range(6)]
    await first
    assert batches == [[0], [1, 2, 100, 101], [102, 103, 104, 105]]
    await batcher.close()


async def test_an_error_fails_exactly_that_batch(executor: ThreadPoolExecutor) -> None:
    run = Recorder()
    batcher = Batcher(run, executor=executor, max_batch=2, max_delay_s=0.05)
    bad = await asyncio.gather(batcher.submit(window(1)), batcher.submit(window(np.nan)), return_exceptions=True)
    assert all(isinstance(r, InferenceError) for r in bad)
    assert "inference failed for model (RuntimeError)" in str(bad[0])
    # Another batch, submitted at the same time as the poisoned one would have been, is untouched.
    good = await batcher.submit_many([window(3), window(4)])
    assert [float(r[0]) for r in good] == [3, 4]
    assert run.sizes == [2, 2]
    await batcher.close()


async def test_a_model_returning_the_wrong_shape_is_an_inference_error(executor: ThreadPoolExecutor) -> None:
    batcher = Batcher(lambda b: np.zeros((1, 2), np.float32), executor=executor, max_batch=2, max_delay_s=0.05)
    with pytest.raises(InferenceError, match=r"inference failed for model \(ValueError\)"):
        await batcher.submit_many([window(1), window(2)])
    await batcher.close()


async def test_the_event_loop_keeps_running_during_inference(executor: ThreadPoolExecutor) -> None:
    batcher = Batcher(Recorder(delay_s=0.2), executor=executor, max_batch=1, max_delay_s=0.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    await batcher.submit(window(1))
    task.cancel()
    assert ticks >= 5  # ~20 on an idle machine; 0 if inference ran on the loop
    await batcher.close()


async def test_a_cancelled_caller_does_not_cost_a_model_call(executor: ThreadPoolExecutor) -> None:
    run = Recorder()
    batcher = Batcher(run, executor=executor, max_batch=4, max_delay_s=0.05)
    doomed = asyncio.ensure_future(batcher.submit(window(1)))
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.sleep(0.1)
    assert run.sizes == []
    assert float((await batcher.submit(window(2)))[0]) == 2
    await batcher.close()


async def test_close_fails_what_is_still_queued(executor: ThreadPoolExecutor) -> None:
    started = threading.Event()

    def slow(batch: np.ndarray) -> np.ndarray:
        started.set()
        time.sleep(0.1)
        return batch[:, 0, :1]

    batcher = Batcher(slow, executor=executor, max_batch=1, max_delay_s=0.0, workers=1)
    first = asyncio.ensure_future(batcher.submit(window(1)))
    second = asyncio.ensure_future(batcher.submit(window(2)))
    await asyncio.to_thread(started.wait, 1.0)
    await batcher.close()
    for future in (first, second):
        with pytest.raises(InferenceError, match="closed"):
            await future
    with pytest.raises(InferenceError, match="closed"):
        await batcher.submit(window(3))


async def test_pool_keeps_one_batcher_per_version_and_closes_it_when_gone_and_idle(tmp_path: Path) -> None:
    v1 = load_tiny(tmp_path)
    v2 = load_tiny(tmp_path)
    pool = BatcherPool(Settings(max_batch=4, max_delay_ms=1))
    b1 = pool.acquire(v1)
    assert pool.acquire(v1) is b1
    with pool.lease(v2) as b2:
        assert b2 is not b1
        assert (await b2.submit(np.zeros((98, 40), np.float32))).shape == (12,)
    pool.release(v1)
    # v1 is no longer served but a stream still holds it: it stays until released.
    assert pool.sweep([v2]) == []
    assert pool.names == ["tiny/1", "tiny/2"]
    assert (await b1.submit(np.zeros((98, 40), np.float32))).shape == (12,)
    pool.release(v1)
    await asyncio.sleep(0)
    assert pool.names == ["tiny/2"]
    # Now gone and idle: a new stream on the same LoadedModel would get a fresh batcher.
    assert pool.sweep([]) == ["tiny/2"]
    await pool.close()


async def test_close_fails_submitters_still_waiting_for_room(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()

    def blocked(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return batch[:, 0, :1]

    batcher = Batcher(blocked, executor=executor, max_batch=1, max_delay_s=0.0, max_queue=2, workers=1)
    calls = [asyncio.ensure_future(batcher.submit(window(k))) for k in range(5)]
    await asyncio.sleep(0.05)
    assert batcher.queued == 2  # one running, two queued, two waiting for room
    await batcher.close()
    gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, InferenceError) for o in outcomes)
    assert batcher.idle


async def test_a_group_larger_than_a_batch_is_split_and_reassembled_in_order(executor: ThreadPoolExecutor) -> None:
    run = Recorder()
    batcher = Batcher(run, executor=executor, max_batch=3, max_delay_s=0.0)
    first, second = await asyncio.gather(
        batcher.submit_many([window(i) for i in range(5)]), batcher.submit_many([window(10 + i) for i in range(4)])
    )
    assert [float(r[0]) for r in first] == [0, 1, 2, 3, 4]
    assert [float(r[0]) for r in second] == [10, 11, 12, 13]
    assert sum(run.sizes) == 9 and max(run.sizes) <= 3
    await batcher.close()


async def test_an_inline_batcher_runs_batches_on_the_loop_with_the_same_results() -> None:
    """``inline_inference``: no worker thread; every window still gets its own row, errors fail their batch."""
    threads: set[int] = set()

    def run(windows: np.ndarray) -> np.ndarray:
        threads.add(threading.get_ident())
        if np.any(windows < 0):
            raise ValueError("negative window")
        return windows.reshape(windows.shape[0], -1)[:, :2] * 2

    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(run, executor=executor, max_batch=3, max_delay_s=0.0, inline=True)
        windows = [np.full((2, 2), i, dtype=np.float32) for i in range(7)]
        results = await asyncio.gather(*(batcher.submit(w) for w in windows))
        assert [float(r[0]) for r in results] == [2.0 * i for i in range(7)]
        assert threads == {threading.get_ident()}  # the loop's own thread
        with pytest.raises(InferenceError):
            await batcher.submit(np.full((2, 2), -1, dtype=np.float32))
        assert float((await batcher.submit(windows[3]))[0]) == 6.0  # the batcher carries on
        await batcher.close()
