"""The architecture registry: every model takes ``[batch, frames, n_mels]`` windows, stays within its size
budget, and exports to ONNX with a dynamic batch dimension that onnxruntime computes as torch does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hark.core.runner import create_session
from hark_training.config import load_config
from hark_training.export import INPUT_NAME, OUTPUT_NAME, PARITY_TOLERANCE, export_onnx
from hark_training.models import ARCHITECTURES, AttentionPool, build_model, count_parameters
from hark_training.train import architecture_frontend

N_CLASSES, FRAMES, MELS = 12, 98, 40
CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
# Parameter budgets from the issue: the edge model under 100 k, the sequence models small (under 150 k).
BUDGETS = {"dscnn": 100_000, "crnn": 150_000, "tcn": 150_000}


def trained_looking(model: nn.Module, mels: int = MELS) -> nn.Module:
    """Give batch norm non-trivial running statistics (as after training), then switch to eval mode."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, FRAMES, mels) * 3.0 - 5.0)
    return model.eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_exports_to_onnx_with_a_dynamic_batch(arch: str, tmp_path: Path) -> None:
    mels = architecture_frontend(arch).n_mels  # a pretrained backbone takes its own bands
    model = trained_looking(build_model(arch, N_CLASSES, FRAMES, mels), mels)
    path = export_onnx(model, tmp_path / f"{arch}.onnx", FRAMES, mels)
    session = create_session(path, 1)
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        x = rng.normal(-5.0, 3.0, (batch, FRAMES, mels)).astype(np.float32)
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert actual.shape == expected.shape == (batch, N_CLASSES)
        np.testing.assert_allclose(actual, expected, atol=PARITY_TOLERANCE, rtol=0)


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_recipes_build_models_within_their_parameter_budget(recipe: Path) -> None:
    config = load_config(recipe)
    mels = architecture_frontend(config.arch).n_mels
    model = build_model(config.arch, N_CLASSES, FRAMES, mels, config.arch_options)
    if config.arch in BUDGETS:
        assert count_parameters(model) < BUDGETS[config.arch]
    assert model.eval()(torch.randn(2, FRAMES, mels)).shape == (2, N_CLASSES)


@pytest.mark.parametrize("arch", sorted(BUDGETS))
def test_default_options_are_within_the_budget_too(arch: str) -> None:
    assert count_parameters(build_model(arch, N_CLASSES, FRAMES, MELS)) < BUDGETS[arch]


def test_every_architecture_has_a_recipe() -> None:
    recipes = {load_config(p).arch for p in CONFIGS.glob("*.toml")}
    assert {"cnn", "dscnn", "crnn", "tcn"} <= recipes


def test_seed_cnn_is_two_conv_blocks_then_dense_256_with_dropout_half() -> None:
    model = build_model("cnn", N_CLASSES, FRAMES, MELS)
    kinds = [type(m) for m in model.modules()]
    assert kinds.count(nn.Conv2d) == 2 and kinds.count(nn.BatchNorm2d) == 2 and kinds.count(nn.MaxPool2d) == 2
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [256, N_CLASSES]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5]


@pytest.mark.parametrize("arch", ["dscnn", "crnn", "tcn"])
def test_pooling_models_take_any_window_length(arch: str) -> None:
    model = build_model(arch, N_CLASSES, FRAMES, MELS).eval()
    for frames in (50, 150):
        assert model(torch.randn(3, frames, MELS)).shape == (3, N_CLASSES)


def test_attention_pooling_is_a_weighted_mean_over_time() -> None:
    pool = AttentionPool(4)
    frame = torch.tensor([1.0, -2.0, 3.0, 0.5])
    same = frame.expand(2, 7, 4)  # every frame alike: any weights summing to one give that frame back
    torch.testing.assert_close(pool(same), frame.expand(2, 4))
    x = torch.randn(2, 7, 4)
    pooled = pool(x)
    assert ((pooled >= x.min(dim=1).values - 1e-6) & (pooled <= x.max(dim=1).values + 1e-6)).all()


def test_tcn_refuses_an_even_kernel() -> None:
    with pytest.raises(ValueError, match="odd"):
        build_model("tcn", N_CLASSES, FRAMES, MELS, {"kernel": 4})


def test_unknown_architectures_name_the_known_ones() -> None:
    with pytest.raises(ValueError, match="crnn"):
        build_model("resnet-9000", N_CLASSES, FRAMES, MELS)


@pytest.mark.parametrize("arch", ["dscnn", "crnn"])
def test_centre_pooling_answers_for_the_middle_of_the_window(arch: str, tmp_path: Path) -> None:
    """With global pooling a burst at the window's edge moves the output about as much as one at its centre;
    with ``pool = "centre"`` the centre decides (the edge is context at most), and the model exports."""
    frames = 48
    quiet = torch.full((1, frames, MELS), -10.0)
    edge, centre = quiet.clone(), quiet.clone()
    edge[:, :4] = 5.0
    centre[:, frames // 2 - 2 : frames // 2 + 2] = 5.0

    def effects(pool: str) -> tuple[float, float, nn.Module]:
        torch.manual_seed(0)
        model = trained_looking(build_model(arch, 3, frames, MELS, {"pool": pool, "norm": "none"}))
        with torch.no_grad():
            base = model(quiet)
            return float((model(edge) - base).abs().max()), float((model(centre) - base).abs().max()), model

    at_edge, at_centre, model = effects("centre")
    assert at_edge * 10 < at_centre
    if arch == "dscnn":  # a CNN's receptive field around the centre does not reach the edge at all
        assert at_edge == 0.0
        global_edge, global_centre, _ = effects("global")
        assert global_edge * 10 > global_centre
    path = export_onnx(model, tmp_path / "centre.onnx", frames, MELS)
    got = create_session(path, 1).run(None, {INPUT_NAME: centre.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(centre).numpy(), atol=PARITY_TOLERANCE)


def test_centre_pooling_keeps_the_checkpoint_layout_of_global_pooling() -> None:
    keys = set(build_model("dscnn", 3, 48, MELS).state_dict())
    assert set(build_model("dscnn", 3, 48, MELS, {"pool": "centre"}).state_dict()) == keys
