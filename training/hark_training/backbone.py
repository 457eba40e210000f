"""Transfer learning from a pretrained speech backbone: openWakeWord's speech-embedding network.

The PyPI wheel ``openwakeword==0.5.1`` ships two ONNX files that together turn 16 kHz audio into 96-dim
speech embeddings: ``melspectrogram.onnx`` (an STFT as a convolution, 32 Mel bands, dB) and
``embedding_model.onnx`` (a re-implementation of Google's ``speech_embedding``, pretrained on large amounts
of real speech). Here:

* :data:`BACKBONE_FRONTEND` is the :mod:`hark.core.frontend` config that reproduces the embedding model's
  input (``melspectrogram.onnx`` followed by openWakeWord's ``x / 10 + 2``), so the server computes it
  like any other frontend. One difference, deliberate: the ONNX file clips every value to 80 dB below the
  loudest value of the call (``top_db``), which a stream cannot know; ours floors at a fixed 0 dB of
  16-bit power instead (see :data:`FLOOR_INT16_POWER`).
* :class:`SpeechEmbedding` is ``embedding_model.onnx`` restated as a torch module, its weights read from
  the ONNX file. The standard converters (onnx2torch, onnx2pytorch) import torchvision, whose PyPI wheels
  are CUDA builds that do not load against the CPU torch this project pins; the network is twenty plain
  convolutions, so it is written out here and held to onnxruntime by a parity test.
* :class:`OwwTransfer` runs the backbone over sliding 76-frame sub-windows of a window and classifies the
  concatenated embeddings with a new head. It keeps the backbone frozen for the first epochs, then lets
  its last stages learn at a lower learning rate (:meth:`OwwTransfer.param_groups`,
  :meth:`OwwTransfer.start_epoch`).

Licences: see ``training/hark_training/NOTICE-openwakeword.md``. The wheel's code is Apache-2.0, its README puts all
included pre-trained models under CC BY-NC-SA 4.0, and the upstream questions about these two files are
unanswered, so a model version that contains the backbone's weights is treated as CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from hark.core.frontend import FrontendConfig

PACKAGE = "openwakeword"
PACKAGE_VERSION = "0.5.1"
MEL_MODEL = "melspectrogram.onnx"
EMBEDDING_MODEL = "embedding_model.onnx"
NOTICE = Path(__file__).with_name("NOTICE-openwakeword.md")  # shipped inside every version built on it
SUB_WINDOW_FRAMES = 76
"""Frames the embedding model takes (0.775 s)."""
BANDS = 32
EMBEDDING_DIM = 96
INT16_SCALE = 32768.0
"""openWakeWord feeds its melspectrogram int16 sample values as floats; ours are in [-1, 1]."""
FLOOR_INT16_POWER = 1.0
"""The fixed floor that stands in for ``top_db``: 0 dB of int16 power. 16-bit quantisation noise sits near
-5 dB in every band, so nothing below it carries signal, and 80 dB under a median data-set clip's loudest
band (85 dB) is 5 dB: the floor is about where ``top_db`` cuts a typical clip, for every clip alike."""
MEL_FRAME_LEAD = 56
"""melspectrogram.onnx centres a 400-sample window in each 512-sample frame, so its frame ``i`` is ours
computed on the audio without its first 56 samples (same count of frames where both fit)."""

BACKBONE_FRONTEND = FrontendConfig(
    sample_rate=16_000,
    n_fft=512,
    win_length=400,
    hop_length=160,
    n_mels=BANDS,
    fmin=60.0,
    fmax=3_800.0,
    mel_scale="slaney",
    power=2.0,
    log="db",
    log_floor=FLOOR_INT16_POWER,
    input_scale=INT16_SCALE,
    feature_scale=0.1,
    feature_offset=2.0,
)


class BackboneUnavailableError(RuntimeError):
    """The wheel that ships the backbone's files is not installed."""


def resource(name: str) -> Path:
    """Path of one of the wheel's model files, found through the installed package."""
    try:
        path = Path(str(importlib.resources.files(PACKAGE) / "resources" / "models" / name))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise BackboneUnavailableError(
            f"{name} comes with the {PACKAGE} wheel: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} "
            "(make dev does this)"
        )
    return path


# -------------------------------------------------------------------------------------------- backbone


class ClippedLeakyReLU(nn.Module):
    """The backbone's activation: leaky ReLU (slope 0.2) floored at -0.4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp_min(nn.functional.leaky_relu(x, 0.2), -0.4)


def _conv(c_in: int, c_out: int, kernel: tuple[int, int]) -> nn.Sequential:
    """A convolution (batch norm fused into it), padded in frequency only, and the activation."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=(0, kernel[1] // 2)), ClippedLeakyReLU())


STAGES: tuple[tuple[int, tuple[int, int]], ...] = ((24, (2, 2)), (48, (1, 2)), (72, (2, 2)), (96, (1, 2)), (96, (2, 2)))
"""(channels, max-pool) of each stage: alternating 1x3 and 3x1 convolutions, then the pooling."""


class SpeechEmbedding(nn.Module):
    """``embedding_model.onnx`` as a torch module: ``[batch, 76, 32]`` frames to ``[batch, 96]`` embeddings."""

    def __init__(self) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        c_in = 1
        for i, (channels, pool) in enumerate(STAGES):
            kernels = [(3, 3), (1, 3), (3, 1)] if i == 0 else [(1, 3), (3, 1), (1, 3), (3, 1)]
            layers: list[nn.Module] = []
            for kernel in kernels:
                layers.append(_conv(c_in, channels, kernel))
                c_in = channels
            layers.append(nn.MaxPool2d(pool))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.project = nn.Sequential(nn.Conv2d(c_in, EMBEDDING_DIM, (3, 1), bias=False))  # to [B, 96, 1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        for stage in self.stages:
            x = stage(x)
        embeddings: torch.Tensor = self.project(x).flatten(1)
        return embeddings

    def convolutions(self) -> list[nn.Conv2d]:
        """Every convolution in the order the ONNX graph applies them."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]


def load_embedding(path: Path | None = None) -> SpeechEmbedding:
    """A :class:`SpeechEmbedding` with the weights of ``embedding_model.onnx`` (shapes checked one by one)."""
    graph = onnx.load(str(path or resource(EMBEDDING_MODEL))).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = [n for n in graph.node if n.op_type == "Conv"]
    module = SpeechEmbedding()
    convs = module.convolutions()
    if len(nodes) != len(convs):
        raise ValueError(f"{EMBEDDING_MODEL} has {len(nodes)} convolutions, the module {len(convs)}")
    with torch.no_grad():
        for node, conv in zip(nodes, convs, strict=True):
            names = list(node.input[1:])
            params = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
            if len(names) != len(params):
                raise ValueError(f"{node.name}: {len(names)} tensors for {len(params)} parameters")
            for name, param in zip(names, params, strict=True):
                value = torch.from_numpy(np.array(weights[name], dtype=np.float32))
                if value.shape != param.shape:
                    raise ValueError(f"{name} has shape {tuple(value.shape)}, the module {tuple(param.shape)}")
                param.copy_(value)
    for conv in convs:  # channels-last convolutions: 1.7x faster on CPU (measured, one thread)
        conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    return module.eval()


# ----------------------------------------------------------------------------------- transfer model


def sub_window_starts(n_frames: int, count: int) -> list[int]:
    """First frames of ``count`` evenly spaced 76-frame sub-windows spanning ``n_frames`` frames."""
    if n_frames < SUB_WINDOW_FRAMES:
        raise ValueError(f"the backbone needs windows of at least {SUB_WINDOW_FRAMES} frames, got {n_frames}")
    last = n_frames - SUB_WINDOW_FRAMES
    if count == 1:
        return [last // 2]
    return [round(i * last / (count - 1)) for i in range(count)]


class OwwTransfer(nn.Module):
    """The pretrained backbone over sub-windows of a window, and a new head on the joined embeddings.

    A 1 s window (98 frames) holds three 76-frame sub-windows 11 frames apart (openWakeWord steps 8); their
    embeddings, in time order, go through a small MLP. Training calls :meth:`start_epoch` before each epoch
    and builds its optimizer from :meth:`param_groups`: the backbone stays frozen for ``frozen_epochs``,
    then its last ``unfreeze_stages`` stages learn at ``backbone_lr_scale`` times the head's rate.
    """

    frontend: ClassVar[FrontendConfig] = BACKBONE_FRONTEND
    """The features this architecture must be trained and served on."""

    def __init__(
        self,
        n_classes: int,
        n_frames: int,
        n_mels: int,
        sub_windows: int = 3,
        hidden: int = 128,
        dropout: float = 0.3,
        frozen_epochs: int = 2,
        unfreeze_stages: int = 1,
        backbone_lr_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if n_mels != BANDS:
            raise ValueError(f"the backbone takes {BANDS} Mel bands, got {n_mels}; train on BACKBONE_FRONTEND")
        if not 0 <= unfreeze_stages <= len(STAGES):
            raise ValueError(f"unfreeze_stages must be 0..{len(STAGES)}, got {unfreeze_stages}")
        self.starts = sub_window_starts(n_frames, sub_windows)
        self.frozen_epochs = frozen_epochs
        self.unfreeze_stages = unfreeze_stages
        self.backbone_lr_scale = backbone_lr_scale
        self.backbone = load_embedding()
        self.head = nn.Sequential(
            nn.Linear(len(self.starts) * EMBEDDING_DIM, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
        self.start_epoch(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows = torch.stack([x[:, s : s + SUB_WINDOW_FRAMES] for s in self.starts], dim=1)  # [B, n, 76, 32]
        embeddings = self.backbone(windows.flatten(0, 1)).reshape(-1, len(self.starts) * EMBEDDING_DIM)
        out: torch.Tensor = self.head(embeddings)
        return out

    def tuned_backbone(self) -> list[nn.Parameter]:
        """The backbone parameters that learn once unfrozen: its last stages and the projection."""
        if self.unfreeze_stages == 0:
            return []
        stages = list(self.backbone.stages)[len(STAGES) - self.unfreeze_stages :]
        return [p for stage in stages for p in stage.parameters()] + list(self.backbone.project.parameters())

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: the head at the run's rate, the stages to unfreeze at ``backbone_lr_scale`` times it.

        ``lr_scale`` is what the training schedule multiplies the run's learning rate by, per group.
        """
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters()), "lr_scale": 1.0}]
        if tuned := self.tuned_backbone():
            groups.append({"params": tuned, "lr_scale": self.backbone_lr_scale})
        return groups

    def start_epoch(self, epoch: int) -> None:
        """Freeze the whole backbone up to ``frozen_epochs``; from the next epoch on, tune its last stages."""
        self.backbone.requires_grad_(False)
        if epoch > self.frozen_epochs:
            for p in self.tuned_backbone():
                p.requires_grad_(True)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
