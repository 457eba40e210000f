"""Dynamic batching across every stream: windows in, probabilities out, the event loop never blocked.

Modelled on MLServer's adaptive batcher: callers put ``(window, future)`` on a bounded queue and await
the future; one task per model version collects a batch until it holds ``max_batch`` windows or the
first window has waited ``max_delay``, then runs it on a worker thread. While every worker is busy the
queue fills, so the next batch is bigger: batches grow with load by themselves. An exception in a batch
fails exactly that batch's futures (as :class:`InferenceError`); the batcher carries on.

:class:`BatcherPool` keeps one :class:`Batcher` per loaded model version, made on first use and
closed once the version has left the store and no stream or request still holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.config import Settings
from service.logging import get_logger
from service.model_store import LoadedModel

FloatArray = npt.NDArray[np.float32]
RunFn = Callable[[FloatArray], FloatArray]
# ``observe(stage, seconds)`` for "queue" (per window: enqueue to batch start) and "inference" (per batch).
StageObserver = Callable[[str, float], None]
# ``observe_batch(size)``: the number of windows in each batch run.
BatchObserver = Callable[[int], None]
# Gives each model version's batcher its own hooks (metrics labelled by model and version).
Observers = Callable[[LoadedModel], tuple[StageObserver, BatchObserver]]

log = get_logger("hark.batcher")


class InferenceError(RuntimeError):
    """The batch a window was in could not be scored (or the batcher closed before it was)."""


def _ignore(stage: str, seconds: float) -> None:
    return None


def _ignore_batch(size: int) -> None:
    return None


@dataclass
class _Item:
    window: FloatArray
    future: asyncio.Future[FloatArray]
    enqueued: float


class Batcher:
    """Batches windows for one model's ``run``. Create it inside a running event loop."""

    def __init__(
        self,
        run: RunFn,
        *,
        executor: Executor,
        max_batch: int = 32,
        max_delay_s: float = 0.002,
        max_queue: int = 4096,
        workers: int = 1,
        name: str = "model",
        observe: StageObserver = _ignore,
        observe_batch: BatchObserver = _ignore_batch,
    ) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError("max_batch and workers must be at least 1")
        self.name = name
        self.max_batch = max_batch
        self.max_delay_s = max(0.0, max_delay_s)
        self._run = run
        self._executor = executor
        self._observe = observe
        self._observe_batch = observe_batch
        # Bounded: a full queue makes submitters wait, which pushes back on their clients through gRPC
        # flow control instead of letting memory grow.
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._slots = asyncio.Semaphore(workers)
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.windows = 0

    async def submit(self, window: FloatArray) -> FloatArray:
        """One ``(frames, n_mels)`` window in, its ``(n_classes,)`` probabilities out."""
        if self._closed:
            raise InferenceError(f"batcher for {self.name} is closed")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._collect(), name=f"batcher-{self.name}")
        future: asyncio.Future[FloatArray] = loop.create_future()
        await self._queue.put(_Item(window, future, time.perf_counter()))
        return await future

    async def submit_many(self, windows: Sequence[FloatArray]) -> list[FloatArray]:
        """Several windows at once, so they can share a batch; results in the same order."""
        return list(await asyncio.gather(*(self.submit(w) for w in windows)))

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._inflight

    @property
    def queued(self) -> int:
        """Windows waiting for a batch: never more than ``max_queue``; beyond it, submitters wait."""
        return self._queue.qsize()

    def cancel(self) -> None:
        """Stop at once: queued and running windows fail with :class:`InferenceError`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for task in self._inflight:
            task.cancel()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(InferenceError(f"batcher for {self.name} closed"))

    async def close(self) -> None:
        """Cancel and wait until the collecting task and every running batch have ended."""
        self.cancel()
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Take a worker slot before the batch is formed: while all workers are busy, windows pile up
            # in the queue and the next batch is fuller.
            await self._slots.acquire()
            try:
                batch = [await self._queue.get()]
                deadline = loop.time() + self.max_delay_s
                while len(batch) < self.max_batch:
                    with contextlib.suppress(asyncio.QueueEmpty):
                        batch.append(self._queue.get_nowait())
                        continue
                    if loop.time() >= deadline:
                        break
                    try:
                        async with asyncio.timeout_at(deadline):
                            batch.append(await self._queue.get())
                    except TimeoutError:
                        break
            except BaseException:
                self._slots.release()
                raise
            task = loop.create_task(self._run_batch(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run_batch(self, batch: list[_Item]) -> None:
        try:
            live = [item for item in batch if not item.future.done()]  # skip windows of cancelled streams
            if not live:
                return
            start = time.perf_counter()
            for item in live:
                self._observe("queue", start - item.enqueued)
            try:
                windows = np.stack([item.window for item in live])
                probabilities = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, windows)
                if probabilities.ndim != 2 or probabilities.shape[0] != len(live):
                    raise ValueError(f"model returned shape {probabilities.shape} for a batch of {len(live)}")
            except asyncio.CancelledError:
                _fail(live, InferenceError(f"batcher for {self.name} closed"))
                raise
            except Exception as e:
                # The details (file paths, kernel names) go to the log; callers get what they can act on.
                log.error("inference batch failed", model=self.name, batch=len(live), error=f"{type(e).__name__}: {e}")
                _fail(
                    live, InferenceError(f"inference failed for {self.name} ({type(e).__name__}); see the server log")
                )
                return
            self._observe("inference", time.perf_counter() - start)
            self._observe_batch(len(live))
            self.batches += 1
            self.windows += len(live)
            for item, row in zip(live, probabilities, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
        finally:
            self._slots.release()


def _fail(items: Iterable[_Item], error: InferenceError) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


@dataclass
class _Entry:
    model: LoadedModel  # held so the id() key cannot be reused while the entry lives
    batcher: Batcher
    users: int = 0
    retired: bool = False


class BatcherPool:
    """One batcher per loaded model version, shared by every stream and request on that version.

    Keyed by the identity of the :class:`LoadedModel`: a version folder rewritten and reloaded is a new
    object with its own runner, and gets its own batcher.
    """

    def __init__(
        self, settings: Settings, *, observe: StageObserver = _ignore, observers: Observers | None = None
    ) -> None:
        self._settings = settings
        self._observe = observe
        self._observers = observers
        self._executor = ThreadPoolExecutor(max_workers=settings.inference_workers, thread_name_prefix="hark-infer")
        self._entries: dict[int, _Entry] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def acquire(self, model: LoadedModel) -> Batcher:
        """The model's batcher, made on first use; pair every call with :meth:`release`."""
        entry = self._entries.get(id(model))
        if entry is None:
            s = self._settings
            observe, observe_batch = self._observers(model) if self._observers else (self._observe, _ignore_batch)
            batcher = Batcher(
                model.runner.run,
                executor=self._executor,
                max_batch=s.max_batch,
                max_delay_s=s.max_delay_ms / 1000,
                max_queue=max(1024, 8 * s.max_batch),
                workers=s.inference_workers,
                name=f"{model.name}/{model.version}",
                observe=observe,
                observe_batch=observe_batch,
            )
            entry = self._entries[id(model)] = _Entry(model, batcher)
        entry.users += 1
        return entry.batcher

    def release(self, model: LoadedModel) -> None:
        entry = self._entries.get(id(model))
        if entry is None:
            return
        entry.users -= 1
        if entry.retired and entry.users <= 0:
            self._close(id(model))

    @contextlib.contextmanager
    def lease(self, model: LoadedModel) -> Iterator[Batcher]:
        batcher = self.acquire(model)
        try:
            yield batcher
        finally:
            self.release(model)

    def sweep(self, current: Iterable[LoadedModel]) -> list[str]:
        """Retire batchers whose version is no longer served; close those nobody holds. Returns their names."""
        alive = {id(m) for m in current}
        closed = []
        for key, entry in list(self._entries.items()):
            if key in alive:
                continue
            entry.retired = True
            if entry.users <= 0:
                closed.append(entry.batcher.name)
                self._close(key)
        return closed

    def _close(self, key: int) -> None:
        entry = self._entries.pop(key)
        task = asyncio.get_running_loop().create_task(entry.batcher.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def names(self) -> list[str]:
        return sorted(e.batcher.name for e in self._entries.values())

    async def close(self) -> None:
        """Close every batcher (failing whatever is still queued) and the worker threads."""
        for key in list(self._entries):
            self._close(key)
        await asyncio.gather(*self._closing, return_exceptions=True)
        # A batch already on a worker cannot be interrupted; wait for it off the loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
