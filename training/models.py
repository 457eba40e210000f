"""Architecture registry: every model takes raw log-Mel windows ``[batch, frames, n_mels]`` and returns logits.

Any normalisation lives inside the model, so the exported ONNX graph takes exactly the features the
server computes and nothing about preprocessing can drift between training and serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

Norm = Literal["none", "utterance"]


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
    ) -> None:
        super().__init__()
        del n_frames  # global pooling makes the model independent of the window length
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
        out: torch.Tensor = self.head(self.features(self.norm(x)))
        return out


Factory = Callable[..., nn.Module]

ARCHITECTURES: dict[str, Factory] = {"cnn": SeedCNN, "dscnn": DSCNN}


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
