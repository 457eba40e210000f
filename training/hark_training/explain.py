"""``hark explain RUN_OR_VERSION CLIP.wav ...``: where in the log-Mel input a model looks, drawn over the input.

Two classic maps of one class's score over the ``(frames, n_mels)`` window the server computes:

- **saliency** (Simonyan et al. 2014): ``|d logit / d input|``, per time-frequency cell. Sharp, and noisy;
- **Grad-CAM** (Selvaraju et al. 2017): the last convolution block's channels weighted by their mean
  gradient, rectified and stretched back to the input's size. Coarse, and steadier. The layer is found by
  running the model once and taking the block of the convolution that ran last, so any architecture of
  :mod:`hark_training.models` works (a 1-D convolution's map is over time, the same for every band).

Both come from Captum, PyTorch's interpretability library; this module picks the layer and draws.

ONNX keeps no gradients, so this needs the run's torch checkpoint: give the run folder, or a model version
whose manifest records its run (``hark export`` writes the run folder and the checkpoint's sha256; a
checkpoint retrained since is refused, since it would explain another model).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import librosa
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from matplotlib.colors import ListedColormap
from torch import nn
from tqdm import tqdm

from hark.core.frontend import FrontendConfig, LogMel
from hark.core.model_store import read_manifest, sha256_file
from hark_training.config import TrainConfig
from hark_training.evaluate import resolve_version
from hark_training.features import clip_window
from hark_training.train import CHECKPOINT_FILE, RUN_FILE, load_checkpoint

Method = Literal["saliency", "gradcam"]
METHODS: tuple[Method, ...] = ("saliency", "gradcam")
FloatArray = npt.NDArray[np.float32]
TITLES: dict[Method, str] = {"saliency": "saliency |d score / d input|", "gradcam": "Grad-CAM"}
# "jet", transparent where a map is low, so the spectrogram shows through everywhere the model does not look.
OVERLAY = ListedColormap(
    np.column_stack([plt.get_cmap("jet")(np.linspace(0, 1, 256))[:, :3], np.linspace(0, 0.85, 256)])
)


@dataclass(frozen=True)
class Explanation:
    """One window, the class explained with its probability, and each map (same shape as the window, 0..1)."""

    window: FloatArray
    label: str
    score: float
    predicted: str
    maps: dict[Method, FloatArray]


# ------------------------------------------------------------------------------------------------- maps


def _normalised(heat: torch.Tensor) -> FloatArray:
    """Scaled to a maximum of 1 (a map's absolute size means nothing across clips)."""
    heat = heat.detach()
    peak = float(heat.max())
    out: FloatArray = (heat / peak if peak > 0 else heat).numpy().astype(np.float32)
    return out


def _input(window: FloatArray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(window[None])).requires_grad_(True)


def saliency(model: nn.Module, window: FloatArray, target: int) -> FloatArray:
    """``|d logit[target] / d window|``, shape ``(frames, n_mels)``."""
    return _normalised(Saliency(model).attribute(_input(window), target=target, abs=True)[0])


def gradcam_layer(model: nn.Module, window: FloatArray) -> nn.Module:
    """Grad-CAM's layer: the block of the convolution that runs last, whatever the architecture.

    The convolution is found by running the model once (registration order need not be execution order);
    its block is the module holding it (conv, batch norm, activation), whose rectified output is what
    Grad-CAM weighs, as implementations take a CNN's last block rather than its bare last conv.
    """
    ran: list[nn.Module] = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    handles = [m.register_forward_hook(lambda module, _in, _out: ran.append(module)) for m in convs]
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(window[None])))
    finally:
        for handle in handles:
            handle.remove()
    if not ran:
        raise ValueError(f"{type(model).__name__} runs no Conv1d or Conv2d layer, so Grad-CAM has no layer to use")
    name = next(n for n, m in model.named_modules() if m is ran[-1])
    block = name.rpartition(".")[0]
    return model.get_submodule(block) if block else ran[-1]


def gradcam(model: nn.Module, window: FloatArray, target: int, layer: nn.Module | None = None) -> FloatArray:
    """Grad-CAM of class ``target`` at ``layer`` (default :func:`gradcam_layer`), resized to ``(frames, n_mels)``.

    2-D feature maps are ``[channels, time, bands]`` (the models see the window as a one-channel image, time
    first) and are resized bilinearly; 1-D maps are ``[channels, time]``, resized over time and spread over
    every band.
    """
    layer = layer or gradcam_layer(model, window)
    cam = LayerGradCam(model, layer).attribute(_input(window), target=target, relu_attributions=True)
    if cam.dim() == 3:  # [1, 1, time]
        over_time = LayerAttribution.interpolate(cam, (window.shape[0],), interpolate_mode="linear")
        return _normalised(over_time[0, 0, :, None].expand(window.shape))
    return _normalised(LayerAttribution.interpolate(cam, window.shape, interpolate_mode="bilinear")[0, 0])


def explain_window(
    model: nn.Module,
    window: FloatArray,
    labels: Sequence[str],
    methods: Sequence[Method] = METHODS,
    label: str | None = None,
) -> Explanation:
    """The maps of ``label`` (default: the predicted class) for one window, by each of ``methods``."""
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(window[None])), dim=1)[0]
    predicted = int(probabilities.argmax())
    if label is not None and label not in labels:
        raise ValueError(f"{label!r} is not one of the model's labels {list(labels)}")
    target = predicted if label is None else list(labels).index(label)
    compute = {"saliency": saliency, "gradcam": gradcam}
    maps = {method: compute[method](model, window, target) for method in methods}
    return Explanation(window, labels[target], float(probabilities[target]), labels[predicted], maps)


# ---------------------------------------------------------------------------------------------- drawing


def render(explanation: Explanation, frontend: FrontendConfig, path: Path, title: str) -> Path:
    """The spectrogram, then one panel per map overlaid on it; the class and its probability in the title."""
    window = explanation.window
    panels: list[tuple[str, FloatArray | None]] = [
        ("log-Mel input", None),
        *((TITLES[method], heat) for method, heat in explanation.maps.items()),
    ]
    seconds = window.shape[0] * frontend.hop_length / frontend.sample_rate
    extent = (0.0, seconds, -0.5, window.shape[1] - 0.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.8), sharey=True, layout="constrained")
    centres = librosa.mel_frequencies(window.shape[1] + 2, fmin=frontend.fmin, fmax=frontend.fmax)[1:-1]
    ticks = np.linspace(0, window.shape[1] - 1, 6).round().astype(int)
    for ax, (name, heat) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(
            window.T, origin="lower", aspect="auto", cmap="gray_r" if heat is not None else "magma", extent=extent
        )
        if heat is not None:
            overlay = ax.imshow(heat.T, origin="lower", aspect="auto", cmap=OVERLAY, extent=extent)
            overlay.set_clim(0.0, 1.0)
            fig.colorbar(overlay, ax=ax, shrink=0.8, label="relative importance")
        ax.set_title(name)
        ax.set_xlabel("time (s)")
        ax.set_yticks(ticks, [f"{centres[t]:.0f}" for t in ticks])
    np.atleast_1d(axes)[0].set_ylabel("Mel band centre (Hz)")
    predicted = "" if explanation.label == explanation.predicted else f", predicted {explanation.predicted}"
    fig.suptitle(f"{title}: {explanation.label} ({explanation.score:.2f}){predicted}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- runs


def resolve_run(target: str, store: Path) -> Path:
    """A run folder: ``target`` itself when it holds a checkpoint, else the run its model version came from.

    The version's manifest names the run (``training.run_dir``) and the checkpoint's sha256; a checkpoint
    that no longer matches is refused. Versions exported before those were recorded fall back to the run
    folder of their training config, with a warning that it cannot be checked.
    """
    path = Path(target)
    if (path / CHECKPOINT_FILE).is_file():
        return path
    version_dir = resolve_version(target, store)
    training = read_manifest(version_dir).training
    recorded = training.get("run_dir")
    run_dir = Path(recorded) if recorded else TrainConfig.model_validate(training.get("config", {})).run_dir
    checkpoint = run_dir / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{version_dir} was trained in {run_dir}, which has no {CHECKPOINT_FILE}")
    expected = training.get("checkpoint_sha256")
    if expected is None:
        print(f"warning: {version_dir} records no checkpoint sha256; assuming {checkpoint} is its", file=sys.stderr)
    elif sha256_file(checkpoint) != expected:
        raise ValueError(f"{checkpoint} is not the checkpoint {version_dir} was exported from (retrained since?)")
    if members := training.get("ensemble"):
        print(
            f"note: {version_dir} is an ensemble of {len(members)} runs; this explains the first, {run_dir}",
            file=sys.stderr,
        )
    return run_dir


def load_run(run_dir: Path) -> tuple[nn.Module, list[str], FrontendConfig, int]:
    """The run's model (eval mode), labels, frontend and window length."""
    model, checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    run = json.loads((run_dir / RUN_FILE).read_text())
    return model, list(checkpoint["labels"]), FrontendConfig.model_validate(run["frontend"]), checkpoint["n_frames"]


def explain_clips(
    run_dir: Path,
    clips: Sequence[Path],
    out_dir: Path,
    methods: Sequence[Method] = METHODS,
    label: str | None = None,
    progress: bool = False,
) -> list[tuple[Path, Explanation]]:
    """Explain each clip's window (as the server computes it) and write ``<out_dir>/<clip>.png`` for each."""
    model, labels, frontend, window_frames = load_run(run_dir)
    logmel = LogMel(frontend)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Explanation]] = []
    for i, clip in enumerate(tqdm(clips, desc="explain", unit="clip", disable=not progress, file=sys.stderr)):
        explanation = explain_window(model, clip_window(clip, logmel, window_frames), labels, methods, label)
        name = clip.stem if all(c.stem != clip.stem for c in clips[:i]) else f"{clip.stem}-{i}"
        written.append((render(explanation, frontend, out_dir / f"{name}.png", clip.name), explanation))
    return written


# ---------------------------------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    methods: tuple[Method, ...] = METHODS if args.method == "both" else (args.method,)
    try:
        run_dir = resolve_run(args.target, args.store)
        out_dir = args.out or run_dir / "explain"
        written = explain_clips(run_dir, args.clips, out_dir, methods, args.label, progress=not args.quiet)
    except (OSError, ValueError) as e:  # a missing run or clip, a changed checkpoint, an unknown label
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, explanation in written:
        other = "" if explanation.label == explanation.predicted else f" (predicted {explanation.predicted})"
        print(f"{path}: {explanation.label} {explanation.score:.3f}{other}")
    return 0


def add_command(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``hark explain``."""
    parser = subparsers.add_parser(
        "explain",
        help="Draw saliency and Grad-CAM maps of a model over the log-Mel input of clips",
        description="Where a model looks: vanilla gradient saliency and Grad-CAM (last convolution) of the "
        "predicted class over each clip's log-Mel window, drawn over the spectrogram as one PNG per clip. "
        "Needs the torch checkpoint, since ONNX keeps no gradients.",
    )
    parser.add_argument(
        "target",
        metavar="RUN_OR_VERSION",
        help="A run folder holding checkpoint.pt (runs/keywords), or a model version (a folder, or NAME[:VERSION] "
        "in --store) whose manifest records the run it was exported from",
    )
    parser.add_argument("clips", nargs="+", type=Path, metavar="CLIP", help="Audio clips (WAV) to explain")
    parser.add_argument(
        "--method", choices=("saliency", "gradcam", "both"), default="both", help="Which maps to draw (default both)"
    )
    parser.add_argument("--label", help="Explain this class instead of the predicted one")
    parser.add_argument("--out", type=Path, help="Folder for the PNGs (default: RUN/explain)")
    parser.add_argument(
        "--store",
        type=Path,
        default=Path("model_store"),
        help="Model store root for NAME[:VERSION] (default model_store)",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bar")
    parser.set_defaults(func=run)
