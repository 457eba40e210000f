"""Streaming model versions: each hop's new frames plus the stream's state in, scores plus the new state out.

A windowed version recomputes a whole window (98 frames) every hop (10 new frames). A streaming version
is the same kind of network exported so that each call computes only the new frames: its causal
convolutions keep their last inputs, and its pooling its last outputs, as state tensors that the caller
passes back in on the next call (the external-state mode of Rybakov et al. 2020, "Streaming keyword
spotting on mobile devices"). A stream's state starts at zeros and belongs to that stream alone.

The batcher batches one kind of thing, a row per stream. So that states batch across streams without
the batcher knowing about them, a streaming version's row packs the hop's frames and the stream's state
into one vector, and its output row packs the class scores and the new state::

    in:  [frames (hop_frames * n_mels) | state_0 | state_1 | ...]        (row_size)
    out: [scores (n_classes)           | new state_0 | new state_1 | ...] (output_size)

:class:`StreamingRunner` splits a batch of such rows into the model's named inputs, runs it once for every
stream in the batch, and packs the outputs again. :class:`StreamState` is one stream's row buffer: the
state lives in it between hops, so a hop writes the new frames in place and allocates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from hark.core.runner import softmax

FloatArray = npt.NDArray[np.float32]


class StateSpec(BaseModel):
    """One state tensor of a streaming model: the input that takes it, the output that returns it updated,
    and its shape for one stream (the batch dimension is left out)."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    shape: list[int] = Field(min_length=1)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def lead_frames(window_frames: int, hop_frames: int) -> int:
    """Padding frames put before a window so that it splits into whole hops: 2 for 98 frames and hops of 10."""
    return -window_frames % hop_frames


def window_steps(windows: FloatArray, hop_frames: int) -> FloatArray:
    """``(n, window_frames, n_mels)`` windows as ``(steps, n, hop_frames, n_mels)`` hops, oldest first.

    The first hop is padded in front with zero frames. A streaming model whose receptive field (pooling
    included) fits in the window scores the last hop exactly as the windowed form scores the window,
    whatever the padding and the initial state: they lie outside what the last score depends on.
    """
    n, frames, n_mels = windows.shape
    lead = lead_frames(frames, hop_frames)
    padded = np.zeros((n, frames + lead, n_mels), dtype=np.float32)
    padded[:, lead:] = windows
    steps = (frames + lead) // hop_frames
    return np.ascontiguousarray(padded.reshape(n, steps, hop_frames, n_mels).transpose(1, 0, 2, 3))


class StreamingRunner:
    """Runs batches of packed rows (frames and state) through a streaming model's session.

    ``run`` is what the batcher calls, with the same contract as :class:`~hark.core.runner.ModelRunner`'s:
    one row per stream in, one row per stream out, blocking and thread-safe.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        output_name: str,
        states: Sequence[StateSpec],
        *,
        hop_frames: int,
        n_mels: int,
        n_classes: int,
        logits: bool,
    ) -> None:
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.states = list(states)
        self.hop_frames = hop_frames
        self.n_mels = n_mels
        self.n_classes = n_classes
        self.logits = logits
        self.frames_size = hop_frames * n_mels
        self.state_size = sum(s.size for s in self.states)
        self.row_size = self.frames_size + self.state_size
        self.output_size = n_classes + self.state_size
        self._outputs = [output_name] + [s.output for s in self.states]

    def step(self, frames: FloatArray, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """``(batch, hop_frames, n_mels)`` frames and ``(batch, state_size)`` states in; the model's raw
        ``(batch, n_classes)`` output and the ``(batch, state_size)`` new states out."""
        batch = frames.shape[0]
        feeds = {self.input_name: np.ascontiguousarray(frames, dtype=np.float32)}
        offset = 0
        for spec in self.states:
            feeds[spec.input] = np.ascontiguousarray(state[:, offset : offset + spec.size]).reshape(batch, *spec.shape)
            offset += spec.size
        out, *new_states = self.session.run(self._outputs, feeds)
        flat = [np.asarray(s, dtype=np.float32).reshape(batch, -1) for s in new_states]
        new_state = np.concatenate(flat, axis=1) if flat else np.zeros((batch, 0), dtype=np.float32)
        return np.asarray(out, dtype=np.float32), new_state

    def run(self, rows: FloatArray) -> FloatArray:
        """``(batch, row_size)`` packed rows in, ``(batch, n_classes + state_size)`` packed rows out: class
        probabilities, then the new state."""
        if rows.ndim != 2 or rows.shape[1] != self.row_size:
            raise ValueError(f"expected rows of {self.row_size} values (frames and state), got shape {rows.shape}")
        batch = rows.shape[0]
        frames = rows[:, : self.frames_size].reshape(batch, self.hop_frames, self.n_mels)
        out, new_state = self.step(frames, rows[:, self.frames_size :])
        packed = np.empty((batch, self.output_size), dtype=np.float32)
        packed[:, : self.n_classes] = softmax(out) if self.logits else out
        packed[:, self.n_classes :] = new_state
        return packed

    def window_outputs(self, windows: FloatArray) -> FloatArray:
        """The raw output for each of ``(n, window_frames, n_mels)`` independent windows, every window from
        a zero state: the hops of all windows run as one batch per hop."""
        n = windows.shape[0]
        state = np.zeros((n, self.state_size), dtype=np.float32)
        out = np.zeros((n, self.n_classes), dtype=np.float32)
        for frames in window_steps(windows, self.hop_frames):
            out, state = self.step(frames, state)
        return out

    def run_windows(self, windows: FloatArray) -> FloatArray:
        """Class probabilities of independent whole windows, as a windowed version's ``run`` gives them."""
        out = self.window_outputs(windows)
        return softmax(out) if self.logits else out

    def warmup_rows(self, batch: int) -> FloatArray:
        return np.zeros((batch, self.row_size), dtype=np.float32)


class StreamState:
    """One stream's packed row: the frames of its next hop, then its state, which starts at zeros.

    The stream owns it alone, and awaits each hop's result before writing the next, so the batcher may
    hold the row until it stacks a batch without a copy being made here.
    """

    def __init__(self, runner: StreamingRunner) -> None:
        self.runner = runner
        self.row = np.zeros(runner.row_size, dtype=np.float32)

    @property
    def state(self) -> FloatArray:
        return self.row[self.runner.frames_size :]

    def load(self, frames: FloatArray) -> FloatArray:
        """Write a hop's ``(hop_frames, n_mels)`` frames in; the row to submit."""
        self.row[: self.runner.frames_size] = frames.reshape(-1)
        return self.row

    def update(self, output: FloatArray) -> FloatArray:
        """Keep the new state from a packed output row; the class scores out."""
        n = self.runner.n_classes
        self.row[self.runner.frames_size :] = output[n:]
        return output[:n]

    def reset(self) -> None:
        self.row[:] = 0.0
