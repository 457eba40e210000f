"""FrameRing keeps exactly the newest rows, in order, in memory allocated once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hark.core.ring_buffer import FrameRing


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(1, 20),
    slack=st.none() | st.integers(1, 25),
    batches=st.lists(st.integers(0, 45), max_size=30),
)
def test_latest_rows_are_the_newest_rows_in_order(capacity: int, slack: int | None, batches: list[int]) -> None:
    ring = FrameRing(capacity, 3, slack)
    history = np.empty((0, 3), np.float32)
    counter = 0
    for k in batches:
        rows = np.arange(counter, counter + 3 * k, dtype=np.float32).reshape(k, 3)
        counter += 3 * k
        ring.extend(rows)
        history = np.concatenate([history, rows])
        held = min(capacity, len(history))
        assert ring.count == held
        assert ring.total == len(history)
        np.testing.assert_array_equal(ring.latest(held), history[len(history) - held :])


def test_latest_is_a_read_only_view_not_a_copy() -> None:
    ring = FrameRing(4, 2)
    ring.extend(np.ones((4, 2), np.float32))
    view = ring.latest(4)
    assert view.base is not None
    with pytest.raises(ValueError):
        view[0, 0] = 5.0


def test_asking_for_more_rows_than_held_is_an_error() -> None:
    ring = FrameRing(4, 2)
    ring.extend(np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="2 held"):
        ring.latest(3)


def test_rows_of_the_wrong_width_are_refused() -> None:
    with pytest.raises(ValueError):
        FrameRing(4, 2).extend(np.ones((1, 3), np.float32))


def test_memory_is_allocated_once_and_is_well_under_two_windows() -> None:
    ring = FrameRing(98, 40)  # one second of 10 ms frames, 40 bands
    buffer = ring.latest(0).base
    for k in (1, 10, 37, 98, 200, 3):
        ring.extend(np.ones((k, 40), np.float32))
        assert ring.latest(ring.count).base is buffer  # never reallocated
    assert buffer is not None and buffer.nbytes <= 1.34 * 98 * 40 * 4
