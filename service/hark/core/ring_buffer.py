"""Fixed-capacity rings that never grow and hand out their latest rows without copying."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class FrameRing:
    """The last ``capacity`` rows of a stream of ``(k, width)`` float32 frames.

    Rows are kept contiguous in a buffer of ``capacity + slack`` rows, so the newest rows are always one
    slice: :meth:`latest` returns a view, with no copy and no allocation. Writes go after the newest row;
    when they would run past the end, the rows still held move to the front first, one copy of at most
    ``capacity`` rows every ``slack`` rows written. A slack of about a third of the capacity costs one such
    copy every few hops and a third more memory, where writing every row twice (a mirrored ring) costs
    twice the memory: what a server holding thousands of streams pays for per stream.
    """

    def __init__(self, capacity: int, width: int, slack: int | None = None) -> None:
        if capacity <= 0 or width <= 0:
            raise ValueError("capacity and width must be positive")
        self.capacity = capacity
        self.width = width
        slack = max(1, capacity // 3) if slack is None else slack
        if slack <= 0:
            raise ValueError("slack must be positive")
        self._data = np.zeros((capacity + slack, width), dtype=np.float32)
        self._end = 0  # index after the newest row
        self.count = 0  # rows currently held, at most capacity
        self.total = 0  # rows ever written

    def extend(self, rows: npt.NDArray[np.float32]) -> None:
        """Append rows; only the newest ``capacity`` are kept."""
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected (k, {self.width}) rows, got {rows.shape}")
        k = rows.shape[0]
        self.total += k
        if k == 0:
            return
        if k >= self.capacity:
            rows = rows[-self.capacity :]
            k = self.capacity
        if self._end + k > self._data.shape[0]:
            keep = min(self.count, self.capacity - k)
            self._data[:keep] = self._data[self._end - keep : self._end]  # numpy copies overlaps safely
            self._end = keep
        self._data[self._end : self._end + k] = rows
        self._end += k
        self.count = min(self.capacity, self.count + k)

    def latest(self, n: int) -> npt.NDArray[np.float32]:
        """A read-only view of the newest ``n`` rows, oldest first; valid until the next :meth:`extend`."""
        if not 0 <= n <= self.count:
            raise ValueError(f"asked for {n} rows, {self.count} held")
        view = self._data[self._end - n : self._end]
        view.flags.writeable = False
        return view
