"""Single-file (original LDM layout) checkpoints.

The file is exported from a diffusers model with the key tables of diffusers' own
conversion script (tests.support.ldm_export). It must load through diffusers' single-file
converter and through ours, both giving the original model's outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nodes.diffusion.checkpoints import load_components, load_scheduler_config, load_vae
from nodes.diffusion.storage import WeightsError
from tests.support.ldm_export import export_single_file, vae_to_ldm
from tests.support.model_configs import SD1_UNET, SD1_VAE
from tests.support.tiny_models import TinyModel, rel_err

TOL = 1e-5


@pytest.fixture(scope="module")
def ldm_file(tiny_sd1: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_single_file(tiny_sd1.pipe,
                              tmp_path_factory.mktemp("single") / "tiny-sd1.safetensors")


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return (torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 7, 64, generator=gen),
            torch.randn(1, 4, 8, 8, generator=gen))


def test_export_is_valid_for_diffusers_converter(tiny_sd1: TinyModel, ldm_file: Path) -> None:
    """Diffusers' own LDM importer reproduces the original from the file."""
    import diffusers
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from safetensors.torch import load_file

    ckpt = load_file(str(ldm_file))
    pipe = tiny_sd1.pipe
    unet = diffusers.UNet2DConditionModel(**dict(pipe.unet.config)).eval()
    unet.load_state_dict(convert_ldm_unet_checkpoint(ckpt, dict(pipe.unet.config)))
    vae = diffusers.AutoencoderKL(**dict(pipe.vae.config)).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(ckpt, dict(pipe.vae.config)))
    x, ctx, z = _inputs()
    with torch.no_grad():
        assert rel_err(unet(x, 7, ctx).sample, pipe.unet(x, 7, ctx).sample) < TOL
        assert rel_err(vae.decode(z).sample, pipe.vae.decode(z).sample) < TOL


def test_single_file_loads_to_original_outputs(tiny_sd1: TinyModel, ldm_file: Path) -> None:
    pipe = tiny_sd1.pipe
    comps = load_components(str(ldm_file), dtype="fp32", device="cpu")
    assert comps.kind == "sd"
    assert comps.unet.config["cross_attention_dim"] == 64
    assert comps.unet.config["layers_per_block"] == 2
    assert comps.unet.config["down_block_types"] == tuple(SD1_UNET["down_block_types"])
    assert comps.vae.config["block_out_channels"] == tuple(SD1_VAE["block_out_channels"])
    assert comps.scheduler_config["_class_name"] == "PNDMScheduler"
    assert comps.tokenizer is not None and comps.tokenizer.model_max_length == 77
    x, ctx, z = _inputs()
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_err(comps.unet(x, 7, ctx), pipe.unet(x, 7, ctx).sample) < TOL
        assert rel_err(comps.vae.decode(z), pipe.vae.decode(z).sample) < TOL
        img = torch.randn(1, 3, 32, 32)
        assert rel_err(comps.vae.encode(img).mean, pipe.vae.encode(img).latent_dist.mean) < TOL
        ours_h = comps.text_encoder(ids).last_hidden_state
        assert rel_err(ours_h, pipe.text_encoder(ids).last_hidden_state) < TOL
    vae = load_vae(str(ldm_file), dtype="fp32", device="cpu")
    with torch.no_grad():
        assert rel_err(vae.decode(z), pipe.vae.decode(z).sample) < TOL
    assert load_scheduler_config(str(ldm_file))["beta_schedule"] == "scaled_linear"


def test_vae_alone_in_either_layout(tiny_sd1: TinyModel, tmp_path: Path) -> None:
    """Standalone VAE files (e.g. sd-vae-ft-mse) ship in the LDM or the diffusers layout."""
    vae_ref = tiny_sd1.pipe.vae
    ldm = {k.removeprefix("first_stage_model."): v.contiguous()
           for k, v in vae_to_ldm(vae_ref.state_dict(), dict(vae_ref.config)).items()}
    save_file(ldm, str(tmp_path / "vae-ldm.safetensors"))
    save_file({k: v.contiguous() for k, v in vae_ref.state_dict().items()},
              str(tmp_path / "vae-diffusers.safetensors"))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = vae_ref.decode(z).sample
        for name in ("vae-ldm.safetensors", "vae-diffusers.safetensors"):
            vae = load_vae(str(tmp_path / name), dtype="fp32", device="cpu")
            assert rel_err(vae.decode(z), expected) < TOL


def test_single_file_rejects_non_sd(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(WeightsError, match=r"other\.safetensors: not a Stable Diffusion "
                       r"checkpoint.*no Stable Diffusion UNet or text encoder"):
        load_components(str(path), device="cpu")


def test_ckpt_is_read_with_weights_only(ldm_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(ldm_file))}, str(ckpt))
    comps = load_components(str(ckpt), dtype="fp32", device="cpu")
    assert comps.unet.config["layers_per_block"] == 2

    class Payload:
        def __reduce__(self):  # noqa: ANN204 - executes on unpickling if allowed
            return (print, ("executed",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Payload()}}, str(evil))
    with pytest.raises(WeightsError, match="weights_only"):
        load_components(str(evil), device="cpu")
