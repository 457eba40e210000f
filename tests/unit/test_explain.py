"""hark explain: saliency and Grad-CAM look where the evidence is, for every architecture, drawn as PNGs."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import librosa
import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
import torch
from matplotlib.image import imread
from torch import nn

from hark.core.frontend import FrontendConfig, LogMel
from hark.core.model_store import read_manifest
from hark_training import explain as explain_mod
from hark_training.config import AugmentConfig, TrainConfig
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.explain import (
    explain_clips,
    explain_window,
    gradcam,
    gradcam_layer,
    load_run,
    resolve_run,
    saliency,
)
from hark_training.export import export_run
from hark_training.features import clip_window
from hark_training.models import ARCHITECTURES, build_model
from hark_training.train import CHECKPOINT_FILE, architecture_frontend, train
from tests.fixtures_data import write_tone_dataset

SR = 16_000
ONSET_S, LENGTH_S = 0.25, 0.5
QUIET = AugmentConfig(gain_db=0.0, noise_prob=0.0, time_masks=0, freq_masks=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed CNN trained three epochs on one tone per label (it learns them)."""
    torch.set_num_threads(1)
    manifest = write_tone_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 2, "test": 3})
    out = tmp_path_factory.mktemp("runs") / "tones"
    config = TrainConfig(data=manifest, out=out, arch="cnn", epochs=3, batch_size=16, threads=1, augment=QUIET)
    return train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)


def tone(path: Path, label: str, seed: int = 0) -> Path:
    """A clip of the label's tone (the data set's recipe: 200 Hz times its index + 1) at a known place."""
    t = np.arange(SR) / SR
    on = (t >= ONSET_S) & (t < ONSET_S + LENGTH_S)
    freq = 200.0 * (LABELS.index(label) + 1)
    audio = np.where(on, 0.3 * np.sin(2 * np.pi * freq * t), 0.0) + np.random.default_rng(seed).normal(0, 0.01, SR)
    sf.write(path, audio, SR, subtype="PCM_16")
    return path


def tone_box(label: str, frontend: FrontendConfig, frames: int) -> npt.NDArray[np.bool_]:
    """Cells of the window within two Mel bands of the tone and inside its time span."""
    freq = 200.0 * (LABELS.index(label) + 1)
    centres = librosa.mel_frequencies(frontend.n_mels + 2, fmin=frontend.fmin, fmax=frontend.fmax)[1:-1]
    bands = np.abs(np.arange(frontend.n_mels) - np.argmin(np.abs(centres - freq))) <= 2
    times = np.arange(frames) * frontend.hop_length / frontend.sample_rate
    span = (times >= ONSET_S) & (times < ONSET_S + LENGTH_S)
    box: npt.NDArray[np.bool_] = span[:, None] & bands[None, :]
    return box


@pytest.mark.parametrize("label", ["no", "down", "right", "stop"])
def test_maps_concentrate_on_the_tone(run_dir: Path, tmp_path: Path, label: str) -> None:
    model, labels, frontend, frames = load_run(run_dir)
    window = clip_window(tone(tmp_path / "clip.wav", label), LogMel(frontend), frames)
    explanation = explain_window(model, window, labels)
    assert explanation.predicted == explanation.label
    box = tone_box(label, frontend, frames)
    for method, heat in explanation.maps.items():
        assert heat.shape == window.shape and heat.max() == pytest.approx(1.0) and heat.min() >= 0.0
        inside, outside = float(heat[box].mean()), float(heat[~box].mean())
        assert inside > 3 * outside, f"{method}: {inside:.3f} on the tone, {outside:.3f} elsewhere"


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_gradcam_fits_the_input_for_every_architecture(arch: str) -> None:
    torch.manual_seed(0)
    mels = architecture_frontend(arch).n_mels
    model = build_model(arch, len(LABELS), 98, mels).eval()
    window = np.random.default_rng(0).normal(-5.0, 2.0, (98, mels)).astype(np.float32)
    layer = gradcam_layer(model, window)
    assert any(isinstance(m, nn.Conv1d | nn.Conv2d) for m in layer.modules())
    for target in range(3):
        heat = gradcam(model, window, target, layer)
        assert heat.shape == window.shape and np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
        if any(isinstance(m, nn.Conv1d) for m in layer.modules()):  # maps over time: the same in every band
            assert np.allclose(heat, heat[:, :1])
    assert saliency(model, window, 0).shape == window.shape


def test_gradcam_takes_the_block_of_the_convolution_that_runs_last() -> None:
    class Reversed(nn.Module):
        """Registers its convolutions in the opposite order to the one it runs them in."""

        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
            self.early = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(self.late(self.early(x.unsqueeze(1))).mean(dim=(2, 3)))
            return out

    model = Reversed()
    assert gradcam_layer(model, np.zeros((20, 8), np.float32)) is model.late
    with pytest.raises(ValueError, match="no Conv1d or Conv2d"):
        gradcam_layer(nn.Sequential(nn.Flatten(), nn.Linear(160, 2)), np.zeros((20, 8), np.float32))


def test_explaining_another_class(run_dir: Path, tmp_path: Path) -> None:
    model, labels, frontend, frames = load_run(run_dir)
    window = clip_window(tone(tmp_path / "clip.wav", "down"), LogMel(frontend), frames)
    explanation = explain_window(model, window, labels, ["saliency"], label="yes")
    assert (explanation.label, explanation.predicted, list(explanation.maps)) == ("yes", "down", ["saliency"])
    assert explanation.score < 0.5
    with pytest.raises(ValueError, match="not one of the model's labels"):
        explain_window(model, window, labels, label="maybe")


def test_pngs_are_written_per_clip(run_dir: Path, tmp_path: Path) -> None:
    clips = [tone(tmp_path / "a.wav", "up"), tone(tmp_path / "b.wav", "go", seed=1)]
    written = explain_clips(run_dir, clips, tmp_path / "out")
    assert [path.name for path, _ in written] == ["a.png", "b.png"]
    for path, explanation in written:
        image = imread(path)
        assert image.shape[0] >= 300 and image.shape[1] >= 3 * 300  # input, saliency and Grad-CAM panels
        assert float(image[..., :3].std()) > 0.05
        assert set(explanation.maps) == {"saliency", "gradcam"}


def test_a_version_leads_back_to_its_run(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    version_dir = export_run(run, tmp_path / "store", "tones")
    assert read_manifest(version_dir).training["run_dir"] == str(run)
    assert resolve_run(str(version_dir), Path("elsewhere")) == run
    assert resolve_run("tones:1", tmp_path / "store") == run
    assert resolve_run(str(run), Path("elsewhere")) == run
    with (run / CHECKPOINT_FILE).open("ab") as f:  # retrained since: another model
        f.write(b"\0")
    with pytest.raises(ValueError, match="not the checkpoint"):
        resolve_run(str(version_dir), Path("elsewhere"))


def test_the_command(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    explain_mod.add_command(subparsers)
    clip = tone(tmp_path / "left.wav", "left")
    out = tmp_path / "maps"
    args = parser.parse_args(["explain", str(run_dir), str(clip), "--method", "gradcam", "--out", str(out), "--quiet"])
    assert args.func(args) == 0
    assert (out / "left.png").is_file() and "left" in capsys.readouterr().out
    args = parser.parse_args(["explain", str(tmp_path / "nothing"), str(clip), "--quiet"])
    assert args.func(args) == 2
    assert "error" in capsys.readouterr().err
    for action in subparsers.choices["explain"]._actions:
        assert action.help, f"option {action.dest} has no help text"
