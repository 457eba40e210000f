"""Fixed-capacity rings that never grow and hand out their latest rows without copying."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class FrameRing:
    """The last ``capacity`` rows of a stream of ``(k, width)`` float32 frames.

    Every row is written twice, at ``i`` and ``i + capacity``, so the newest ``capacity`` rows are always
    one contiguous slice: :meth:`latest` returns a view, with no copy and no allocation.
    """

    def __init__(self, capacity: int, width: int) -> None:
        if capacity <= 0 or width <= 0:
            raise ValueError("capacity and width must be positive")
        self.capacity = capacity
        self.width = width
        self._data = np.zeros((2 * capacity, width), dtype=np.float32)
        self._head = 0  # index of the next write, in [0, capacity)
        self.count = 0  # rows currently held, at most capacity
        self.total = 0  # rows ever written

    def extend(self, rows: npt.NDArray[np.float32]) -> None:
        """Append rows; only the newest ``capacity`` are kept."""
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected (k, {self.width}) rows, got {rows.shape}")
        k = rows.shape[0]
        self.total += k
        if k >= self.capacity:
            rows = rows[-self.capacity :]
            k = self.capacity
        first = min(k, self.capacity - self._head)
        for offset, part in ((self._head, rows[:first]), (0, rows[first:])):
            n = part.shape[0]
            if n:
                self._data[offset : offset + n] = part
                self._data[offset + self.capacity : offset + self.capacity + n] = part
        self._head = (self._head + k) % self.capacity
        self.count = min(self.capacity, self.count + k)

    def latest(self, n: int) -> npt.NDArray[np.float32]:
        """A read-only view of the newest ``n`` rows, oldest first."""
        if not 0 <= n <= self.count:
            raise ValueError(f"asked for {n} rows, {self.count} held")
        end = self._head + self.capacity
        view = self._data[end - n : end]
        view.flags.writeable = False
        return view
