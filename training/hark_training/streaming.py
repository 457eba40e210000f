"""A causal TCN that is trained on windows and served one hop at a time, with the same scores both ways.

:class:`CausalTCN` is the windowed form, trained like every other architecture on ``[batch, frames, n_mels]``
windows. Every layer is per-frame or a causal ("valid", unpadded) dilated convolution, and the head
averages the last ``pool_frames`` frames of the top layer, so a window's score depends on its last
``receptive_field + pool_frames - 1`` frames and on nothing before them.

:class:`StreamingCausalTCN` is the same weights in streaming form (Rybakov et al. 2020, external state):
each call takes a hop's new frames and the state, the last ``(kernel - 1) * dilation`` inputs of every
convolution and the last ``pool_frames - hop`` top-layer frames, and returns the logits and the new
state. Fed a window hop by hop from any state, its last logits equal the windowed form's on that window,
up to float rounding: the parity test (``tests/unit/test_streaming.py``) holds this.

The input normalisation is per frame so that it streams: each frame's mean over the bands (its level,
which depends on the microphone gain) is taken out of the bands and given to the network as one more
channel, and a per-channel affine (batch norm) scales both.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from torch import nn

from hark.core.streaming import StateSpec, StreamingRunner

STATE_INPUT = "state_{}"
STATE_OUTPUT = "new_state_{}"


class FrameNorm(nn.Module):
    """``[B, T, F]`` log-Mel to ``[B, F + 1, T]`` channels: bands less the frame's level, then the level."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.bands = nn.BatchNorm1d(n_mels + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.mean(dim=2, keepdim=True)
        out: torch.Tensor = self.bands(torch.cat([x - level, level], dim=2).transpose(1, 2))
        return out


class CausalBlock(nn.Module):
    """Two dilated causal convolutions (batch norm, ReLU) and a residual connection.

    The windowed form shortens its input by ``2 * (kernel - 1) * dilation`` frames (no padding); the
    streaming form prepends each convolution's cached inputs instead, so it keeps the hop's length.
    """

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.context = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(channels, channels, kernel, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.bn1(self.conv1(x))))
        body = self.bn2(self.conv2(h))
        return torch.relu(x[:, :, 2 * self.context :] + body)

    def step(
        self, x: torch.Tensor, cache1: torch.Tensor, cache2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, C, H]`` new frames and the two caches ``[B, C, context]`` in; ``[B, C, H]`` and new caches out."""
        in1 = torch.cat([cache1, x], dim=2)
        h = torch.relu(self.bn1(self.conv1(in1)))
        in2 = torch.cat([cache2, h], dim=2)
        body = self.bn2(self.conv2(in2))
        return torch.relu(x + body), in1[:, :, -self.context :], in2[:, :, -self.context :]


class CausalTCN(nn.Module):
    """The windowed form: per-frame stem, causal dilated residual blocks, mean of the last ``pool_frames``.

    ``pool_frames`` defaults to everything the window leaves after the receptive field (38 frames for a
    window of 98 and dilations 1, 2, 4, 8 with kernel 3, whose receptive field is 61 frames).
    """

    streaming = True

    def __init__(
        self,
        n_classes: int,
        n_frames: int,
        n_mels: int,
        channels: int = 64,
        kernel: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8),
        pool_frames: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.channels = channels
        self.norm = FrameNorm(n_mels)
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels + 1, channels, 1, bias=False), nn.BatchNorm1d(channels), nn.ReLU(inplace=True)
        )
        blocks = [CausalBlock(channels, kernel, d, dropout) for d in dilations]
        self.blocks = nn.ModuleList(blocks)
        self.contexts = [b.context for b in blocks]
        self.receptive_field = 1 + sum(2 * c for c in self.contexts)
        self.pool_frames = pool_frames or n_frames - self.receptive_field + 1
        if self.pool_frames < 1 or self.receptive_field + self.pool_frames - 1 > n_frames:
            raise ValueError(
                f"receptive field {self.receptive_field} and pooling {self.pool_frames} frames "
                f"do not fit in a window of {n_frames} frames"
            )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(self.norm(x))
        for block in self.blocks:
            h = block(h)
        out: torch.Tensor = self.head(h[:, :, -self.pool_frames :].mean(dim=2))
        return out


class StreamingCausalTCN(nn.Module):
    """A trained :class:`CausalTCN` in streaming form: ``(frames [B, hop, n_mels], *states) -> (logits, *states)``.

    States, in order: for each block its two convolution caches ``[B, channels, context]``, then the pool
    cache ``[B, channels, pool_frames - hop]``. Zeros are a valid start state.
    """

    def __init__(self, model: CausalTCN, hop_frames: int) -> None:
        super().__init__()
        if hop_frames > model.pool_frames:
            raise ValueError(f"a hop of {hop_frames} frames exceeds the pooling of {model.pool_frames}")
        self.model = model
        self.hop_frames = hop_frames
        self.pool_cache = model.pool_frames - hop_frames

    def state_shapes(self) -> list[list[int]]:
        """Each state tensor's shape for one stream."""
        c = self.model.channels
        shapes = [[c, context] for context in self.model.contexts for _ in range(2)]
        return [*shapes, [c, self.pool_cache]]

    def initial_state(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, *shape) for shape in self.state_shapes()]

    def forward(self, frames: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        h = m.stem(m.norm(frames))
        new_states: list[torch.Tensor] = []
        for i, block in enumerate(m.blocks):
            h, c1, c2 = cast(CausalBlock, block).step(h, states[2 * i], states[2 * i + 1])
            new_states += [c1, c2]
        pooled = torch.cat([states[-1], h], dim=2)
        logits = m.head(pooled.mean(dim=2))
        return (logits, *new_states, pooled[:, :, self.hop_frames :])


def export_streaming_onnx(
    model: CausalTCN, path: Path, hop_frames: int, n_mels: int, input_name: str, output_name: str, opset: int
) -> list[dict[str, Any]]:
    """Write the streaming form as ONNX; returns the state tensor specs for the manifest's ``states``."""
    model.eval()
    wrapper = StreamingCausalTCN(model, hop_frames).eval()
    shapes = wrapper.state_shapes()
    state_in = [STATE_INPUT.format(i) for i in range(len(shapes))]
    state_out = [STATE_OUTPUT.format(i) for i in range(len(shapes))]
    example = (torch.zeros(2, hop_frames, n_mels), *wrapper.initial_state(2))
    dynamic = {name: {0: "batch"} for name in [input_name, output_name, *state_in, *state_out]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            str(path),
            dynamo=False,
            input_names=[input_name, *state_in],
            output_names=[output_name, *state_out],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )
    return [{"input": i, "output": o, "shape": shape} for i, o, shape in zip(state_in, state_out, shapes, strict=True)]


def streaming_runner(
    session: ort.InferenceSession,
    states: Sequence[dict[str, Any]],
    hop_frames: int,
    n_classes: int,
    input_name: str,
    output_name: str,
) -> StreamingRunner:
    """The server's own runner over an exported streaming graph, so export measures what serving computes."""
    n_mels = session.get_inputs()[0].shape[2]
    return StreamingRunner(
        session,
        input_name,
        output_name,
        [StateSpec.model_validate(s) for s in states],
        hop_frames=hop_frames,
        n_mels=int(n_mels),
        n_classes=n_classes,
        logits=True,
    )


def streaming_logits(
    session: ort.InferenceSession,
    states: Sequence[dict[str, Any]],
    hop_frames: int,
    n_classes: int,
    windows: npt.NDArray[np.float32],
    input_name: str,
    output_name: str,
    batch_size: int = 256,
) -> npt.NDArray[np.float32]:
    """Each window's logits from the streaming graph fed hop by hop from a zero state."""
    runner = streaming_runner(session, states, hop_frames, n_classes, input_name, output_name)
    outs = [runner.window_outputs(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
    return np.concatenate(outs) if outs else np.empty((0, n_classes), dtype=np.float32)


def streaming_step_inputs(
    frames: npt.NDArray[np.float32], states: Sequence[dict[str, Any]], batch: int, input_name: str
) -> dict[str, npt.NDArray[np.float32]]:
    """The feeds of one hop's call for ``batch`` streams (``frames`` is one hop), zero states: for timing."""
    feeds = {input_name: np.ascontiguousarray(np.repeat(frames[None], batch, axis=0))}
    for s in states:
        feeds[s["input"]] = np.zeros((batch, *s["shape"]), dtype=np.float32)
    return feeds
