"""Our ControlNetModel and the UNet's residual inputs against diffusers on tiny random
weights: a diffusers folder loads as is, outputs match (plain, scaled, guess mode), a UNet
fed the residuals matches diffusers' UNet, our `controlnet_from_unet` equals diffusers'
`from_unet`, and an original-layout single file (written by the test) loads equal to
diffusers' `from_single_file` and to the model it was exported from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from nodes.diffusion.checkpoints import load_model_folder
from nodes.diffusion.controlnet import ControlNetModel, controlnet_from_unet
from nodes.diffusion.controlnet_convert import infer_controlnet_config, load_controlnet_file
from nodes.diffusion.unet import UNet2DConditionModel
from tests.support.controlnet_files import (
    export_original,
    random_controlnet,
    save_controlnet,
)
from tests.support.tiny_models import TinyModel, rel_err

TOL = 1e-5
EMBED = (8, 16)  # one stride-2 step: the control image is twice the latent size


@pytest.fixture(scope="module")
def theirs(tiny_sd1: TinyModel) -> Any:
    return random_controlnet(tiny_sd1.pipe.unet, seed=3,
                             conditioning_embedding_out_channels=EMBED)


@pytest.fixture(scope="module")
def folder(theirs: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_controlnet(theirs, tmp_path_factory.mktemp("cn") / "tiny-controlnet")


@pytest.fixture(scope="module")
def ours(folder: Path) -> ControlNetModel:
    return load_model_folder(folder, ControlNetModel, torch.float32, "cpu")


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    context = torch.randn(batch, 77, 64, generator=g)
    image = torch.rand(batch, 3, 16, 16, generator=g)
    return sample, torch.tensor(421), context, image


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert float(b.abs().max()) > 1e-3  # not a vacuous comparison of zeros
    assert rel_err(a, b) < TOL


@pytest.mark.parametrize(("scale", "guess"), [(1.0, False), (0.7, False), (0.5, True)])
def test_forward_equals_diffusers(ours: ControlNetModel, theirs: Any, scale: float,
                                  guess: bool) -> None:
    sample, t, context, image = _inputs()
    with torch.no_grad():
        down, mid = ours(sample, t, context, image, conditioning_scale=scale, guess_mode=guess)
        ref_down, ref_mid = theirs(sample, t, encoder_hidden_states=context,
                                   controlnet_cond=image, conditioning_scale=scale,
                                   guess_mode=guess, return_dict=False)
    assert len(down) == len(ref_down) == 9
    for a, b in zip(down, ref_down, strict=True):
        _close(a, b)
    _close(mid, ref_mid)


def test_unet_takes_the_residuals(tiny_sd1: TinyModel, theirs: Any) -> None:
    ref_unet = tiny_sd1.pipe.unet
    unet = load_model_folder(tiny_sd1.folder / "unet", UNet2DConditionModel, torch.float32,
                             "cpu")
    sample, t, context, image = _inputs()
    with torch.no_grad():
        down, mid = theirs(sample, t, encoder_hidden_states=context, controlnet_cond=image,
                           return_dict=False)
        ref = ref_unet(sample, t, encoder_hidden_states=context,
                       down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample
        got = unet(sample, t, context, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid)
        plain = unet(sample, t, context)
    _close(got, ref)
    assert float((got - plain).abs().max()) > 1e-2  # the residuals changed the output
    with pytest.raises(ValueError, match="together"):
        unet(sample, t, context, down_block_additional_residuals=down)


def test_from_unet_equals_diffusers(tiny_sd1: TinyModel) -> None:
    import diffusers

    unet = load_model_folder(tiny_sd1.folder / "unet", UNet2DConditionModel, torch.float32,
                             "cpu")
    ours = controlnet_from_unet(unet, conditioning_embedding_out_channels=EMBED)
    ref = diffusers.ControlNetModel.from_unet(tiny_sd1.pipe.unet,
                                              conditioning_embedding_out_channels=EMBED)
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert set(mine) == set(theirs)
    copied = [k for k in theirs if not k.startswith(("controlnet_", "controlnet_cond"))]
    for key in copied:
        assert torch.equal(mine[key], theirs[key]), key
    for key in ("controlnet_mid_block.weight", "controlnet_cond_embedding.conv_out.weight"):
        assert not mine[key].any()  # zero-initialised: a fresh ControlNet changes nothing


def _outputs(model: Any, ours: bool, image_size: int) -> tuple[torch.Tensor, ...]:
    sample, t, context, _ = _inputs()
    image = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if ours:
            down, mid = model(sample, t, context, image, conditioning_scale=0.8)
        else:
            down, mid = model(sample, t, encoder_hidden_states=context, controlnet_cond=image,
                              conditioning_scale=0.8, return_dict=False)
    return (*down, mid)


def test_single_file_equals_source(theirs: Any, tmp_path: Path) -> None:
    """A ControlNet with a shorter conditioning embedding (one the tiny model's 2x VAE
    needs) reads back equal to the diffusers model it was written from."""
    path = export_original(theirs, tmp_path / "control_tiny.safetensors")
    ours = load_controlnet_file(path)
    config = infer_controlnet_config({k.removeprefix("control_model."): v
                                      for k, v in load_file(str(path)).items()})
    assert tuple(config["conditioning_embedding_out_channels"]) == EMBED
    assert config["attention_head_dim"] == 8  # SD 1.x's convention
    for a, b in zip(_outputs(ours, True, 16), _outputs(theirs, False, 16), strict=True):
        _close(a, b)


def test_single_file_equals_from_single_file(tiny_sd1: TinyModel, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard layout (8x conditioning embedding, as control_v11p_sd15_canny) loads
    equal to diffusers' `from_single_file`, configured from the saved folder offline."""
    import diffusers

    source = random_controlnet(tiny_sd1.pipe.unet, seed=5)
    folder = save_controlnet(source, tmp_path / "standard")
    path = export_original(source, tmp_path / "control_tiny_canny.safetensors")
    ours = load_controlnet_file(path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = diffusers.ControlNetModel.from_single_file(str(path), config=str(folder),
                                                        local_files_only=True)
    ref_state, mine = loaded.state_dict(), ours.state_dict()
    assert set(mine) == set(ref_state)
    for key, value in ref_state.items():
        assert torch.equal(mine[key], value), key
    for a, b in zip(_outputs(ours, True, 64), _outputs(loaded, False, 64), strict=True):
        _close(a, b)


def test_diffusers_keys_in_one_file(theirs: Any, tmp_path: Path) -> None:
    """diffusers' weights file on its own (no config.json) reads with a config from shapes."""
    from safetensors.torch import save_file

    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    ours = load_controlnet_file(path)
    for key in ("block_out_channels", "layers_per_block", "down_block_types",
                "cross_attention_dim", "conditioning_embedding_out_channels"):
        mine, ref = ours.config[key], theirs.config[key]
        assert (tuple(mine) if isinstance(mine, tuple | list) else mine) == (
            tuple(ref) if isinstance(ref, tuple | list) else ref), key
    for a, b in zip(_outputs(ours, True, 16), _outputs(theirs, False, 16), strict=True):
        _close(a, b)


def test_sdxl_controlnet_equals_diffusers(tiny_sdxl: Any, tmp_path: Path) -> None:
    """An SDXL ControlNet (text_time embedding: pooled text + micro-conditioning)."""
    base = tiny_sdxl.base.pipe
    ref = random_controlnet(base.unet, seed=7, conditioning_embedding_out_channels=EMBED)
    ours = load_model_folder(save_controlnet(ref, tmp_path / "xl"), ControlNetModel,
                             torch.float32, "cpu")
    assert ours.needs_text_time
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, int(ref.config.cross_attention_dim), generator=g)
    image = torch.rand(2, 3, 16, 16, generator=g)
    pooled = int(ref.config.projection_class_embeddings_input_dim) - 6 * int(
        ref.config.addition_time_embed_dim)
    added = {"text_embeds": torch.randn(2, pooled, generator=g),
             "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2)}
    with torch.no_grad():
        down, mid = ours(sample, 500, context, image, 0.9, added_cond_kwargs=added)
        ref_down, ref_mid = ref(sample, 500, encoder_hidden_states=context,
                                controlnet_cond=image, conditioning_scale=0.9,
                                added_cond_kwargs=added, return_dict=False)
    for a, b in zip((*down, mid), (*ref_down, ref_mid), strict=True):
        _close(a, b)
