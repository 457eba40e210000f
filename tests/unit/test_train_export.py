"""hark train / hark export on a tiny synthetic data set: features, training, ONNX parity, publishing."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from hark.core.audio import read_audio
from hark.core.frontend import FrontendConfig, LogMel
from hark.core.model_store import load_version, read_manifest, sha256_file
from hark.core.runner import softmax
from hark_training import export as export_mod
from hark_training.augment import FeatureAugmenter, mix_noise, spec_masks, time_shift
from hark_training.config import AugmentConfig, TrainConfig, load_config
from hark_training.data import LABELS
from hark_training.data import read_manifest as read_data_manifest
from hark_training.export import CONTROL_PER_CLASS, ParityError, check_parity, export_onnx, export_run
from hark_training.features import clip_window, extract, feature_stats, load_splits, pad_to
from hark_training.models import ARCHITECTURES, build_model
from hark_training.train import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    architecture_frontend,
    load_checkpoint,
    resolve_config,
    train,
)
from tests.fixtures_data import PER_SPLIT, write_tone_dataset

SR = 16_000


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def run_dir(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(data=manifest, out=out, epochs=2, batch_size=16, threads=2)
    return train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)


# ---------------------------------------------------------------------------------------------- features


def test_features_are_the_serving_frontend(manifest: Path) -> None:
    records = [r for r in read_data_manifest(manifest) if r.split == "test"]
    cfg = FrontendConfig()
    x = extract([r.path for r in records], cfg, 98)
    for row, record in zip(x, records, strict=True):
        expected = LogMel(cfg).frames(read_audio(record.path, cfg.sample_rate))
        assert expected.shape == (98, 40)
        np.testing.assert_array_equal(row, expected)


def test_features_are_cached_next_to_the_manifest(manifest: Path) -> None:
    first = load_splits(manifest, LABELS, FrontendConfig(), 98, read=read_data_manifest, splits=("val",))["val"]
    cached = list((manifest.parent / "features").glob("*/val-*_x.npy"))
    assert len(cached) == 1
    again = load_splits(manifest, LABELS, FrontendConfig(), 98, read=read_data_manifest, splits=("val",))["val"]
    np.testing.assert_array_equal(first.x, again.x)
    assert list(again.y) == [i for i in range(len(LABELS)) for _ in range(PER_SPLIT["val"])]


def test_a_selection_of_the_clips_is_cached_as_itself(manifest: Path) -> None:
    """A run that leaves clips out (an engine, non-commercial material) must not be served the whole split."""
    whole = load_splits(manifest, LABELS, FrontendConfig(), 98, read=read_data_manifest, splits=("val",))["val"]
    kept = {r.path for r in [r for r in read_data_manifest(manifest) if r.split == "val"][::2]}
    half = lambda path: [r for r in read_data_manifest(path) if r.path in kept]  # noqa: E731
    part = load_splits(manifest, LABELS, FrontendConfig(), 98, read=half, splits=("val",))["val"]
    assert len(part) == (len(whole) + 1) // 2
    np.testing.assert_array_equal(part.x, whole.x[::2])


def test_clips_of_other_lengths_give_whole_windows(tmp_path: Path) -> None:
    logmel = LogMel(FrontendConfig())
    for n in (8_000, 16_000, 20_000):
        sf.write(tmp_path / f"{n}.wav", np.full(n, 0.1), SR, subtype="PCM_16")
        assert clip_window(tmp_path / f"{n}.wav", logmel, 98).shape == (98, 40)
    assert pad_to(np.ones(15_000, np.float32), 16_000)[[0, 499, 500, 15_499, 15_500]].tolist() == [0, 0, 1, 1, 0]


def test_feature_stats_are_per_band() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, (50, 98, 40)).astype(np.float32)
    stats = feature_stats(x)
    assert len(stats.mean) == len(stats.std) == 40 and stats.n_frames == 50 * 98
    assert abs(np.mean(stats.mean) - 3.0) < 0.05 and abs(np.mean(stats.std) - 2.0) < 0.05


# ------------------------------------------------------------------------------------- models, augmenting


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architectures_map_windows_to_logits(arch: str) -> None:
    mels = architecture_frontend(arch).n_mels
    model = build_model(arch, len(LABELS), 98, mels).eval()
    assert model(torch.randn(3, 98, mels)).shape == (3, len(LABELS))


def test_utterance_norm_ignores_level() -> None:
    """A louder recording of the same sound is a constant added to the log-Mel; the model must not care."""
    torch.manual_seed(0)
    model = build_model("dscnn", len(LABELS), 98, 40, {"norm": "utterance"}).eval()
    x = torch.randn(2, 98, 40)
    torch.testing.assert_close(model(x), model(x + 3.0), atol=1e-4, rtol=0)


def test_augmentations_keep_shape_and_are_seeded() -> None:
    x = torch.randn(8, 98, 40)
    noise = torch.randn(5, 98, 40)

    def augmented(seed: int) -> torch.Tensor:
        return FeatureAugmenter(AugmentConfig(), noise, torch.Generator().manual_seed(seed))(x)

    assert augmented(1).shape == x.shape
    torch.testing.assert_close(augmented(1), augmented(1))
    assert not torch.equal(augmented(1), augmented(2))


def test_augmentation_building_blocks() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(98.0).view(1, 98, 1).expand(4, 98, 40).contiguous()
    shifted = time_shift(x, 5, gen)
    assert ((shifted[:, 1:] - shifted[:, :-1]) >= 0).all()  # a shift, not a shuffle
    assert torch.equal(mix_noise(x, torch.randn(3, 98, 40), 0.0, (0.0, 10.0), gen), x)
    loud = mix_noise(torch.full((2, 98, 40), -10.0), torch.zeros(1, 98, 40), 1.0, (0.0, 0.0), gen)
    torch.testing.assert_close(loud, torch.full_like(loud, np.log(2.0) - 10.0))  # 0 dB SNR doubles the power
    masked = spec_masks(torch.randn(4, 98, 40), 2, 1, 40, torch.Generator().manual_seed(3))
    assert masked.shape == (4, 98, 40)


# ----------------------------------------------------------------------------------------- config, CLI


def test_config_loads_from_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('arch = "cnn"\nepochs = 3\n[augment]\ntime_masks = 0\n')
    config = load_config(tmp_path / "c.toml")
    assert (config.arch, config.epochs, config.augment.time_masks) == ("cnn", 3, 0)
    (tmp_path / "c.json").write_text(json.dumps(config.model_dump(mode="json")))
    assert load_config(tmp_path / "c.json") == config
    (tmp_path / "bad.toml").write_text("epoch = 3\n")
    with pytest.raises(ValueError, match="epoch"):
        load_config(tmp_path / "bad.toml")


def test_commands_register_and_override_the_config(tmp_path: Path) -> None:
    from hark_training import train as train_mod

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    train_mod.add_command(subparsers)
    export_mod.add_command(subparsers)
    (tmp_path / "c.toml").write_text('epochs = 3\nseed = 5\nname = "x"\n')
    args = parser.parse_args(["train", "--config", str(tmp_path / "c.toml"), "--epochs", "7", "--arch", "cnn"])
    config = resolve_config(args)
    assert (config.epochs, config.seed, config.arch, config.run_dir) == (7, 5, "cnn", Path("runs/x"))
    assert args.func is train_mod.run
    args = parser.parse_args(["train", "--config", str(tmp_path / "c.toml"), "--exclude-kinds", "sentence,free"])
    assert resolve_config(args).exclude_kinds == ("sentence", "free")
    args = parser.parse_args(["export", "runs/x", "--store", str(tmp_path)])
    assert (args.run_dirs, args.store, args.name, args.func) == (
        [Path("runs/x")],
        tmp_path,
        None,
        export_mod.run,
    )  # None: the run's own name
    for action in subparsers.choices["train"]._actions + subparsers.choices["export"]._actions:
        assert action.help, f"option {action.dest} has no help text"


# -------------------------------------------------------------------------------------- train and export


def test_training_writes_a_run_folder(run_dir: Path) -> None:
    metrics = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all({"train_loss", "val_accuracy"} <= set(m) for m in metrics)
    assert load_config(run_dir / "config.json").epochs == 2
    model, checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert checkpoint["labels"] == list(LABELS) and not model.training


def test_training_draws_its_curves_and_reports_the_kept_checkpoint_on_val(run_dir: Path) -> None:
    with Image.open(run_dir / "training_curves.png") as image:
        assert image.width > 300 and image.height > 300
    report = json.loads((run_dir / "val" / "metrics.json").read_text())
    assert report["split"] == "val" and report["n"] == PER_SPLIT["val"] * len(LABELS)
    best = max(json.loads(line)["val_accuracy"] for line in (run_dir / METRICS_FILE).read_text().splitlines())
    assert report["accuracy"] == pytest.approx(best, abs=1e-5)  # the report is of the epoch the run kept
    for name in ("confusion_matrix.png", "roc.png"):
        assert (run_dir / "val" / name).stat().st_size > 10_000


def test_training_is_reproducible(run_dir: Path, manifest: Path, tmp_path: Path) -> None:
    """Same config, same seed: the same weights, bit for bit."""
    config = load_config(run_dir / "config.json").model_copy(update={"out": tmp_path / "again"})
    again = train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)
    first, second = (torch.load(d / CHECKPOINT_FILE, weights_only=True)["state_dict"] for d in (run_dir, again))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_export_publishes_a_version_the_server_loads(run_dir: Path, manifest: Path, tmp_path: Path) -> None:
    version_dir = export_run(run_dir, tmp_path / "store", "keywords")
    assert version_dir == tmp_path / "store" / "keywords" / "1"
    loaded = load_version(version_dir)
    m = read_manifest(version_dir)
    assert m.sha256 == sha256_file(version_dir / "model.onnx") and m.size_bytes > 0
    assert m.labels == list(LABELS) and m.background_labels == ["_silence_", "_unknown_"]
    assert m.frontend == FrontendConfig() and (m.window_frames, m.hop_frames) == (98, 10)
    assert (m.input.name, m.input.shape, m.output.name, m.output.shape) == (
        "features",
        ["batch", 98, 40],
        "logits",
        ["batch", 12],
    )
    assert m.reference_stats is not None and len(m.reference_stats.mean) == len(m.reference_stats.std) == 40
    assert m.training["data_manifest_sha256"] == sha256_file(manifest)
    assert {"config", "seed", "epochs", "torch_version"} <= set(m.training)
    for key in ("test_accuracy", "per_class_accuracy", "val_accuracy", "n_test", "parameters", "size_bytes"):
        assert key in m.metrics
    assert m.metrics["n_test"] == PER_SPLIT["test"] * len(LABELS)
    assert m.metrics["parity_max_abs_diff"] <= 1e-4 and m.metrics["inference_ms_per_window"] > 0
    scores = loaded.runner.run(np.zeros((5, 98, 40), dtype=np.float32))  # the dynamic batch dimension
    assert scores.shape == (5, 12)
    assert export_run(run_dir, tmp_path / "store", "keywords").name == "2"  # versions are never overwritten


def test_export_ships_a_control_set_and_the_training_prior(run_dir: Path, manifest: Path, tmp_path: Path) -> None:
    """Accuracy drift needs labelled clips beside the version; prediction drift needs the training prior."""
    version_dir = export_run(run_dir, tmp_path / "store", "keywords")
    records = read_data_manifest(manifest)
    test_clips = {sha256_file(r.path): r.label for r in records if r.split == "test"}
    with (version_dir / "control" / "control.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == min(CONTROL_PER_CLASS, PER_SPLIT["test"]) * len(LABELS)
    for row in rows:  # each one a test clip (an unheard voice), under its own label
        assert test_clips[sha256_file(version_dir / "control" / row["path"])] == row["label"]
    prior = read_manifest(version_dir).metrics["class_prior"]
    assert list(prior) == list(LABELS) and sum(prior.values()) == pytest.approx(1.0, abs=1e-3)
    assert prior["yes"] == pytest.approx(1 / len(LABELS), abs=1e-3)  # the tone set is balanced


def test_runs_of_several_seeds_publish_one_version_whose_probabilities_are_their_mean(
    run_dir: Path, manifest: Path, tmp_path: Path
) -> None:
    config = load_config(run_dir / "config.json").model_copy(update={"out": tmp_path / "seed1", "seed": 1})
    seed1 = train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)
    version_dir = export_run(run_dir, tmp_path / "store", "keywords", members=[seed1])
    members = read_manifest(version_dir).training["ensemble"]
    assert [(m["run_dir"], m["seed"]) for m in members] == [(str(run_dir), 0), (str(seed1), 1)]
    windows = np.random.default_rng(0).normal(-5, 3, (16, 98, 40)).astype(np.float32)
    served = load_version(version_dir).runner.run(windows)  # the server's probabilities
    alone = [
        softmax(load_checkpoint(d / CHECKPOINT_FILE)[0](torch.from_numpy(windows)).detach().numpy())
        for d in (run_dir, seed1)
    ]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two seeds, two models
    np.testing.assert_allclose(served, (alone[0] + alone[1]) / 2, atol=1e-5)


def test_an_ensemble_refuses_runs_of_another_data_set(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_data = write_tone_dataset(tmp_path / "other", voices_per_split=2)
    config = load_config(run_dir / "config.json").model_copy(update={"out": tmp_path / "other-run", "data": other_data})
    other = train(config, labels=LABELS, read_manifest=read_data_manifest, progress=False)
    with pytest.raises(ValueError, match="differ in data_manifest_sha256"):
        export_run(run_dir, tmp_path / "store", "keywords", members=[other])
    args = argparse.Namespace(
        run_dirs=[run_dir, other], store=tmp_path / "store", name=None, version=None, data=None, quiet=True
    )
    assert export_mod.run(args) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "store").exists()


def test_parity_check_catches_a_different_model(run_dir: Path, tmp_path: Path) -> None:
    model, _ = load_checkpoint(run_dir / CHECKPOINT_FILE)
    windows = np.random.default_rng(0).normal(-5, 3, (8, 98, 40)).astype(np.float32)
    onnx_path = export_onnx(model, tmp_path / "same.onnx", 98, 40)
    assert check_parity(model, onnx_path, windows) <= 1e-4
    torch.manual_seed(1)
    other = build_model("dscnn", 12, 98, 40).eval()
    with pytest.raises(ParityError, match="refusing to publish"):
        check_parity(other, onnx_path, windows)


def test_export_refuses_to_publish_when_parity_fails(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def export_a_different_model(model: torch.nn.Module, path: Path, frames: int, n_mels: int) -> Path:
        torch.manual_seed(2)
        return export_onnx(build_model("dscnn", 12, frames, n_mels).eval(), path, frames, n_mels)

    monkeypatch.setattr(export_mod, "export_onnx", export_a_different_model)
    with pytest.raises(ParityError):
        export_run(run_dir, tmp_path / "store", "keywords")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("model.onnx"))
