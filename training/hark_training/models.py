"""Architecture registry: every model takes raw log-Mel windows ``[batch, frames, n_mels]`` and returns logits.

Any normalisation lives inside the model, so the exported ONNX graph takes exactly the features the
server computes and nothing about preprocessing can drift between training and serving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from hark_training.backbone import OwwTransfer
from hark_training.streaming import CausalTCN

Norm = Literal["none", "utterance"]
Pool = Literal["global", "centre"]
"""How a model reduces time to one answer: ``global`` averages every step (what a window holds, wherever it is:
a keyword anywhere in its second); ``centre`` reads the middle step (what sounds at the window's centre, with
the rest as context: the strong labels of sound-event clips, which name the classes sounding at the centre,
so that a stream's onsets and offsets fall where a sound begins and ends)."""


def centre_steps(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The mean of the middle step of ``x`` along ``dim`` (the middle two when the length is even)."""
    n = x.shape[dim]
    return x.narrow(dim, (n - 1) // 2, 2 - n % 2).mean(dim=dim)


class UtteranceNorm(nn.Module):
    """Subtract each band's mean over the window and divide by the window's spread.

    Removes the recording's level and channel colouring (which differ between voices and microphones)
    before the network sees it. ``floor`` keeps near-constant windows (silence) from being blown up to
    unit variance, so silence still looks quiet.
    """

    def __init__(self, floor: float = 1.0) -> None:
        super().__init__()
        self.floor = floor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        spread = torch.sqrt(centred.pow(2).mean(dim=(1, 2), keepdim=True) + self.floor)
        return centred / spread


class InputNorm(nn.Module):
    """Raw log-Mel ``[B, T, F]`` to a normalised one-channel image ``[B, 1, T, F]``."""

    def __init__(self, n_mels: int, norm: Norm) -> None:
        super().__init__()
        self.utterance: nn.Module = UtteranceNorm() if norm == "utterance" else nn.Identity()
        # Learned global per-band scaling: log-Mel values sit around -14..+5, far from what conv layers like.
        self.bands = nn.BatchNorm1d(n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.utterance(x)
        x = self.bands(x.transpose(1, 2)).transpose(1, 2)
        return x.unsqueeze(1)


def _conv_bn(
    c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1), groups: int = 1
) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SeedCNN(nn.Module):
    """The seed model: two conv blocks (batch norm, max pooling), dense 256, dropout 0.5."""

    def __init__(
        self, n_classes: int, n_frames: int, n_mels: int, channels: tuple[int, int] = (32, 64), norm: Norm = "none"
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.norm = InputNorm(n_mels, norm)
        self.features = nn.Sequential(
            _conv_bn(1, c1, (3, 3)),
            nn.MaxPool2d(2),
            _conv_bn(c1, c2, (3, 3)),
            nn.MaxPool2d(2),
        )
        flat = c2 * (n_frames // 2 // 2) * (n_mels // 2 // 2)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(self.norm(x)))
        return out


class DSCNN(nn.Module):
    """A small depthwise-separable CNN (after "Hello Edge", Zhang et al. 2017).

    A strided stem halves time and frequency, one strided block halves them again, and global average
    pooling makes the head tiny: tens of thousands of parameters and a few million multiply-adds.
    """

    def __init__(
        self,
        n_classes: int,
        n_frames: int,
        n_mels: int,
        channels: int = 64,
        blocks: int = 4,
        dropout: float = 0.2,
        norm: Norm = "utterance",
        downsample_at: tuple[int, ...] = (1,),
        pool: Pool = "global",
    ) -> None:
        super().__init__()
        del n_frames  # either pooling makes the model independent of the window length
        self.pool = pool
        self.norm = InputNorm(n_mels, norm)
        layers: list[nn.Module] = [_conv_bn(1, channels, (5, 3), stride=(2, 2))]
        for i in range(blocks):
            stride = (2, 2) if i in downsample_at else (1, 1)
            layers += [
                _conv_bn(channels, channels, (3, 3), stride=stride, groups=channels),
                _conv_bn(channels, channels, (1, 1)),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(self.norm(x))  # [B, C, T', F']
        if self.pool == "centre":  # the middle time step only; the head then averages over frequency
            maps = centre_steps(maps, dim=2).unsqueeze(2)
        out: torch.Tensor = self.head(maps)
        return out


class AttentionPool(nn.Module):
    """Weighted mean over time ``[B, T, D] -> [B, D]``, the weights a learned softmax over frames.

    A keyword fills a fraction of the window; attention lets the frames that hold it dominate, where a
    plain mean would dilute them with the silence around.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(x), dim=1)
        return (weights * x).sum(dim=1)


class CRNN(nn.Module):
    """Conv front, bidirectional GRU over time, attention pooling, linear head.

    The conv front halves time once (49 steps for the GRU) and folds the Mel bands down to
    ``n_mels / 2 ** len(freq_strides)`` per channel, so the GRU input stays small: about 100 k
    parameters with the defaults, most of them in the GRU.
    """

    def __init__(
        self,
        n_classes: int,
        n_frames: int,
        n_mels: int,
        channels: int = 32,
        hidden: int = 64,
        freq_strides: int = 3,
        dropout: float = 0.2,
        norm: Norm = "utterance",
        pool: Pool = "global",
    ) -> None:
        """``pool="global"`` is attention pooling over the GRU's steps, ``"centre"`` its middle step."""
        super().__init__()
        del n_frames  # the GRU and the pooling take any number of frames
        self.centre = pool == "centre"
        self.norm = InputNorm(n_mels, norm)
        layers: list[nn.Module] = [_conv_bn(1, channels, (3, 3), stride=(2, 2))]
        layers += [_conv_bn(channels, channels, (3, 3), stride=(1, 2)) for _ in range(freq_strides - 1)]
        self.front = nn.Sequential(*layers)
        bands = n_mels
        for _ in range(freq_strides):
            bands = (bands + 1) // 2  # a stride-2 conv with padding 1 and kernel 3 rounds up
        self.gru = nn.GRU(channels * bands, hidden, batch_first=True, bidirectional=True)
        self.pool = AttentionPool(2 * hidden)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.front(self.norm(x))  # [B, C, T', F']
        steps = maps.permute(0, 2, 1, 3).flatten(2)  # [B, T', C * F']
        sequence, _ = self.gru(steps)
        pooled = centre_steps(sequence, dim=1) if self.centre else self.pool(sequence)
        out: torch.Tensor = self.head(pooled)
        return out


class TemporalBlock(nn.Module):
    """Two dilated 1-D convs (batch norm, ReLU) with a residual connection; length preserved."""

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.body = nn.Sequential(
            nn.Conv1d(channels, channels, kernel, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv1d(channels, channels, kernel, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm1d(channels),
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(x + self.body(x))
        return out


class TCN(nn.Module):
    """A temporal convolutional network (after Bai et al. 2018): Mel bands as channels, dilated residual blocks.

    Non-causal (the whole window is classified at once); dilations 1, 2, 4, 8 with kernel 3 see
    61 frames (0.6 s) at the top, and global average pooling over time makes the head tiny.
    """

    def __init__(
        self,
        n_classes: int,
        n_frames: int,
        n_mels: int,
        channels: int = 64,
        kernel: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.1,
        norm: Norm = "utterance",
    ) -> None:
        super().__init__()
        del n_frames  # global pooling makes the model independent of the window length
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd so that blocks keep the length, got {kernel}")
        self.norm = InputNorm(n_mels, norm)
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, channels, 1, bias=False), nn.BatchNorm1d(channels), nn.ReLU(inplace=True)
        )
        self.blocks = nn.Sequential(*(TemporalBlock(channels, kernel, d, dropout) for d in dilations))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = self.norm(x).squeeze(1).transpose(1, 2)  # [B, n_mels, T]: bands are channels
        out: torch.Tensor = self.head(self.blocks(self.stem(bands)))
        return out


Factory = Callable[..., nn.Module]

ARCHITECTURES: dict[str, Factory] = {
    "cnn": SeedCNN,
    "dscnn": DSCNN,
    "crnn": CRNN,
    "tcn": TCN,
    "causal_tcn": CausalTCN,  # a streaming model: served one hop at a time with cached state (hark_training.streaming)
    "oww_transfer": OwwTransfer,  # openWakeWord's pretrained speech embedding and a new head (hark_training.backbone)
}


def build_model(
    arch: str, n_classes: int, n_frames: int, n_mels: int, options: dict[str, Any] | None = None
) -> nn.Module:
    """Instantiate a registered architecture; unknown names list the known ones."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}") from None
    return factory(n_classes=n_classes, n_frames=n_frames, n_mels=n_mels, **(options or {}))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
