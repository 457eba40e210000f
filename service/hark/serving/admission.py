"""Admission: how many classification calls run, whether new ones may start, and waiting for them to end.

One object per server, shared by every transport, so ``max_streams`` and a drain mean the same thing
whichever wire a call came in on. Three bounds apply before a call may read any audio:

* ``max_streams``: live streams and ``Classify`` calls together (a clip holds a slot like a stream);
* ``max_clips``: ``Classify`` calls (gRPC, OIP ``ModelInfer`` and REST ``infer``), their own smaller
  budget, so clips never crowd out live streams;
* ``max_fast``: fast streams (a file sent as fast as the server takes it, declared in the stream's
  config), the same kind of small budget: with the clips they are the server's bulk work, scored only with
  the capacity live streams leave (:class:`~hark.serving.batcher.Batcher`'s bulk queue);
* ``max_per_client``: streams and clips per client key. A transport names the keys of a call (its
  connection, its bearer token), so one connection or one token cannot take every slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence

from hark.serving.errors import RETRY_PUSHBACK_MS, Refusal


def _busy(what: str) -> Refusal:
    return Refusal(
        "RESOURCE_EXHAUSTED",
        f"{what}; retry in {RETRY_PUSHBACK_MS / 1000:g} s",
        retry_after_ms=RETRY_PUSHBACK_MS,
    )


def client_keys(peer: str, token: str | None = None) -> tuple[str, ...]:
    """What a call counts against ``max_per_client``: its peer (a connection, or an address) and its bearer
    token, as a digest: the token itself is never kept."""
    keys = [f"peer:{peer}"]
    if token is not None:
        keys.append("token:" + hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:16])
    return tuple(keys)


class Admission:
    """Counts streams (for ``max_streams``) and all classification calls (which a drain waits for)."""

    def __init__(
        self,
        max_streams: int,
        *,
        max_clips: int | None = None,
        max_fast: int | None = None,
        max_per_client: int | None = None,
    ) -> None:
        self.max_streams = max_streams
        self.max_clips = max_clips if max_clips is not None else max_streams
        self.max_fast = max_fast if max_fast is not None else max_streams
        self.max_per_client = max_per_client if max_per_client is not None else max_streams
        self.active_streams = 0
        self.active_clips = 0
        self.active_fast = 0
        self.active_calls = 0
        self.draining = False
        self.per_client: Counter[str] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    def check_open(self) -> None:
        """Refuse with UNAVAILABLE while draining."""
        if self.draining:
            raise Refusal("UNAVAILABLE", "server is shutting down")

    @contextlib.contextmanager
    def stream(self, clients: Sequence[str] = ()) -> Iterator[None]:
        """Hold a stream slot (and a call) for the ``with`` block; refuse when draining or at a limit.

        ``clients`` are the keys this call counts against ``max_per_client`` (e.g. ``conn:<peer>``,
        ``token:<digest>``); their text never reaches a message."""
        self.check_open()
        if self.active_streams >= self.max_streams:
            raise _busy(f"server is at its limit of {self.max_streams} concurrent streams")
        if any(self.per_client[c] >= self.max_per_client for c in clients):
            raise _busy(f"this client is at its limit of {self.max_per_client} concurrent streams and clips")
        self.active_streams += 1
        for c in clients:
            self.per_client[c] += 1
        try:
            with self.call():
                yield
        finally:
            self.active_streams -= 1
            for c in clients:
                self.per_client[c] -= 1
                if self.per_client[c] <= 0:
                    del self.per_client[c]

    @contextlib.contextmanager
    def clip(self, clients: Sequence[str] = ()) -> Iterator[None]:
        """Hold a clip slot, and a stream slot, for a ``Classify`` call; taken before its body is read."""
        self.check_open()
        if self.active_clips >= self.max_clips:
            raise _busy(f"server is at its limit of {self.max_clips} concurrent Classify calls")
        with self.stream(clients):
            self.active_clips += 1
            try:
                yield
            finally:
                self.active_clips -= 1

    @contextlib.contextmanager
    def fast(self) -> Iterator[None]:
        """Hold a fast-stream slot for the ``with`` block, inside the stream's own slot (:meth:`stream`):
        taken once its config says ``fast``."""
        self.check_open()
        if self.active_fast >= self.max_fast:
            raise _busy(
                f"server is at its limit of {self.max_fast} concurrent fast streams "
                "(send in real time without fast, or retry)"
            )
        self.active_fast += 1
        try:
            yield
        finally:
            self.active_fast -= 1

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Track a classification call for the ``with`` block, so a drain waits for it."""
        self.check_open()
        self.active_calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active_calls -= 1
            if self.active_calls == 0:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new calls; wait up to ``grace`` s for running ones. True if they all ended."""
        self.draining = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
