"""A stream's one idle deadline: moved per message without a timer each time, and clear about what ran out."""

from __future__ import annotations

import asyncio

import pytest

from hark.transports.grpc.deadline import StreamDeadline


async def _wait(deadline: StreamDeadline, seconds: float) -> str:
    """What a handler does: await something (a read, a write) and tell a deadline from other cancellations."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if (wait := deadline.expired()) is None:
            raise
        await asyncio.sleep(0)  # the cancellation was taken back: the handler can still await its answer
        return wait
    return "done"


def test_a_read_without_audio_past_the_deadline_is_ended_as_idle() -> None:
    async def main() -> str:
        deadline = StreamDeadline(0.05)
        deadline.idle_from(deadline.now())
        try:
            return await _wait(deadline, 5)
        finally:
            deadline.close()

    assert asyncio.run(main()) == "idle"


def test_a_write_the_client_does_not_take_is_ended_as_stalled() -> None:
    async def main() -> str:
        deadline = StreamDeadline(0.05)
        deadline.writing()
        try:
            return await _wait(deadline, 5)
        finally:
            deadline.close()

    assert asyncio.run(main()) == "stalled"


def test_moving_the_deadline_on_keeps_a_busy_stream_alive_past_the_first_one() -> None:
    async def main() -> str:
        deadline = StreamDeadline(0.1)
        deadline.idle_from(deadline.now())
        for _ in range(6):  # 0.3 s in all, three times the timeout, a message every 0.05 s
            assert await _wait(deadline, 0.05) == "done"
            deadline.idle_from(deadline.now())
        deadline.close()
        return "alive"

    assert asyncio.run(main()) == "alive"


def test_the_servers_own_work_is_not_idle() -> None:
    async def main() -> str:
        deadline = StreamDeadline(0.05)
        deadline.idle_from(deadline.now())
        deadline.pause()
        try:
            return await _wait(deadline, 0.2)
        finally:
            deadline.close()

    assert asyncio.run(main()) == "done"


def test_another_cancellation_stays_a_cancellation() -> None:
    async def main() -> None:
        deadline = StreamDeadline(10)
        deadline.idle_from(deadline.now())
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.02, task.cancel)
        try:
            await _wait(deadline, 5)
        finally:
            deadline.close()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


def test_moving_the_deadline_on_sets_no_new_timer() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        timers = 0
        call_at = loop.call_at

        def counting_call_at(*args: object) -> asyncio.TimerHandle:
            nonlocal timers
            timers += 1
            return call_at(*args)  # type: ignore[arg-type]

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        deadline = StreamDeadline(30)
        for _ in range(1000):  # a thousand messages: read, work, write, work
            deadline.idle_from(deadline.now())
            deadline.pause()
            deadline.writing()
            deadline.pause()
        deadline.close()
        return timers

    assert asyncio.run(main()) == 1
