"""Dynamic batching across every stream: windows in, probabilities out, the event loop never blocked.

Modelled on MLServer's adaptive batcher: callers' windows wait in a bounded queue; a batch starts when
it holds ``max_batch`` windows or its oldest window has waited ``max_delay``, and runs on a worker
thread. While every worker is busy the queue fills, so the next batch is bigger: batches grow with load
by themselves. An exception in a batch fails exactly that batch's callers (as :class:`InferenceError`);
the batcher carries on.

Two queues, one model: live windows (streams in real time) and bulk windows (``Classify`` clips and
``fast`` streams, submitted with ``bulk=True``). A batch takes live windows first and fills what room is
left with bulk ones, so bulk work uses the capacity live streams leave and never makes a live window wait
longer than the one batch already running.

:class:`BatcherPool` keeps one :class:`Batcher` per loaded model version, made on first use and
closed once the version has left the store and no stream or request still holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from hark.config import Settings
from hark.core.model_store import LoadedModel
from hark.logging import get_logger

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


@dataclass(eq=False)
class _Group:
    """The windows of one :meth:`Batcher.submit_many` call: one future for all, filled as batches finish."""

    future: asyncio.Future[list[FloatArray]]
    results: list[FloatArray | None]
    remaining: int


@dataclass(eq=False)
class _Item:
    window: FloatArray
    group: _Group
    index: int
    enqueued: float


class Batcher:
    """Batches windows for one model's ``run``. Create it inside a running event loop.

    No task of its own: a submit appends to the pending queue and either starts a batch at once (the
    batch is full, or its oldest window has waited ``max_delay``) or sets one timer; a finished batch
    starts the next. Per window that is one queue entry and a share of one executor call, which keeps the
    event loop's work per chunk small (``loadtest/README.md``, the profile).
    """

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
        inline: bool = False,
    ) -> None:
        if max_batch < 1 or workers < 1 or max_queue < 1:
            raise ValueError("max_batch, max_queue and workers must be at least 1")
        self.name = name
        self.max_batch = max_batch
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue = max_queue
        self.workers = workers
        self._run = run
        # Inline: run each batch on the event loop itself, no hand-off to a worker thread (a lean-path option
        # for one inference core; the loop is blocked for the batch's duration).
        self.inline = inline
        self._yielded = False
        self._executor = executor
        self._observe = observe
        self._observe_batch = observe_batch
        # Bounded: when it is full, submitters wait (in ``_room``), which pushes back on their clients
        # through gRPC flow control instead of letting memory grow.
        self._pending: deque[_Item] = deque()
        self._bulk: deque[_Item] = deque()  # after every live window (hostile clients: bulk never delays live)
        self._room: deque[asyncio.Future[None]] = deque()
        self._running: dict[asyncio.Future[FloatArray], list[_Item]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.batches = 0
        self.windows = 0

    async def submit(self, window: FloatArray) -> FloatArray:
        """One ``(frames, n_mels)`` window in, its ``(n_classes,)`` probabilities out."""
        return (await self.submit_many((window,)))[0]

    async def submit_many(self, windows: Sequence[FloatArray], *, bulk: bool = False) -> list[FloatArray]:
        """Several windows at once, so they can share a batch; results in the same order. ``bulk`` windows
        (clips, fast streams) wait until no live window is queued, or fill a live batch's spare room."""
        if not windows:
            return []
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise InferenceError(f"batcher for {self.name} is closed")
            if not self.queued or self.queued + len(windows) <= self.max_queue:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            self._room.append(waiter)
            await waiter
        group = _Group(loop.create_future(), [None] * len(windows), len(windows))
        now = time.perf_counter()
        (self._bulk if bulk else self._pending).extend(_Item(w, group, i, now) for i, w in enumerate(windows))
        self._schedule()
        # Cancelling the caller cancels this future; its windows are then skipped, never run.
        return await group.future

    @property
    def idle(self) -> bool:
        return not self._pending and not self._bulk and not self._running

    @property
    def queued(self) -> int:
        """Windows waiting for a batch, live and bulk: never more than ``max_queue``; beyond it, submitters wait."""
        return len(self._pending) + len(self._bulk)

    def cancel(self) -> None:
        """Stop at once: queued and running windows fail with :class:`InferenceError`."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = InferenceError(f"batcher for {self.name} closed")
        for queue in (self._pending, self._bulk):
            _fail(queue, error)
            queue.clear()
        for future, batch in self._running.items():
            _fail(batch, error)
            future.cancel()  # a batch already on a worker runs to its end; nobody waits for it
        self._wake(len(self._room))

    async def close(self) -> None:
        """Cancel and wait until every running batch has been let go."""
        self.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    def _schedule(self) -> None:
        """Start every batch that is due while a worker is free; else time the oldest window's wait."""
        while self.queued and len(self._running) < self.workers and not self._closed:
            oldest = (self._pending or self._bulk)[0]
            wait = oldest.enqueued + self.max_delay_s - time.perf_counter()
            if self.queued < self.max_batch and wait > 0:
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)
                return
            self._start_batch()
            if self.inline and self.queued:
                # One batch per turn of the loop: other streams' chunks run between the batches of a big
                # submit (a long Classify clip) instead of waiting for all of them.
                if not self._yielded:
                    self._yielded = True
                    asyncio.get_running_loop().call_soon(self._resume)
                return

    def _resume(self) -> None:
        self._yielded = False
        self._schedule()

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _start_batch(self) -> None:
        batch: list[_Item] = []
        for queue in (self._pending, self._bulk):  # live windows first; bulk ones fill the room left
            while queue and len(batch) < self.max_batch:
                item = queue.popleft()
                if not item.group.future.done():  # skip windows of cancelled or failed callers
                    batch.append(item)
        self._wake(self.max_queue - self.queued)
        if not batch:
            return
        start = time.perf_counter()
        for item in batch:
            self._observe("queue", start - item.enqueued)
        try:
            windows = np.stack([item.window for item in batch])
            if self.inline:
                self._run_inline(batch, start, windows)
                return
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._run, windows)
        except Exception as e:  # windows of mismatched shapes, or the executor already shut down
            self._failed(batch, e)
            return
        self._running[future] = batch
        future.add_done_callback(functools.partial(self._finished, batch, start))

    def _run_inline(self, batch: list[_Item], start: float, windows: FloatArray) -> None:
        future: asyncio.Future[FloatArray] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(self._run(windows))
        except Exception as e:  # the model's own error fails this batch alone, as on a worker thread
            future.set_exception(e)
        # ``_schedule``'s loop starts the next batch; finishing must not start one itself (no recursion).
        self._finished(batch, start, future, schedule=False)

    def _finished(
        self, batch: list[_Item], start: float, future: asyncio.Future[FloatArray], *, schedule: bool = True
    ) -> None:
        self._running.pop(future, None)
        if future.cancelled():
            _fail(batch, InferenceError(f"batcher for {self.name} closed"))
            return
        error = future.exception()
        probabilities = future.result() if error is None else None
        if probabilities is not None and (probabilities.ndim != 2 or probabilities.shape[0] != len(batch)):
            error = ValueError(f"model returned shape {probabilities.shape} for a batch of {len(batch)}")
        if error is not None or probabilities is None:
            self._failed(batch, error)
        else:
            self._observe("inference", time.perf_counter() - start)
            self._observe_batch(len(batch))
            self.batches += 1
            self.windows += len(batch)
            for item, row in zip(batch, probabilities, strict=True):
                group = item.group
                if group.future.done():
                    continue
                group.results[item.index] = row
                group.remaining -= 1
                if group.remaining == 0:
                    group.future.set_result(cast(list[FloatArray], group.results))
        if schedule:
            self._schedule()

    def _failed(self, batch: list[_Item], error: BaseException | None) -> None:
        # The details (file paths, kernel names) go to the log; callers get what they can act on.
        kind = type(error).__name__
        log.error("inference batch failed", model=self.name, batch=len(batch), error=f"{kind}: {error}")
        _fail(batch, InferenceError(f"inference failed for {self.name} ({kind}); see the server log"))

    def _wake(self, room: int) -> None:
        """Let up to ``room`` waiting submitters try again, oldest first."""
        while room > 0 and self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1


def _fail(items: Iterable[_Item], error: InferenceError) -> None:
    for item in items:
        if not item.group.future.done():
            item.group.future.set_exception(error)


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
                inline=s.inline_inference,
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
