"""SDXL details beyond the shared workflows: the shipped sdxl_txt2img.json against diffusers
(DPM++ 2M Karras), VAE latent statistics, the fp16 VAE upcast, and clear errors for
conditioning or latents that do not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from graph_runtime.executor import Executor
from nodes.comfyui.vae import vae_decode
from nodes.types import VAE, Latent
from tests.pipeline.test_sdxl_parity import _generators, _pipeline
from tests.pipeline.test_txt2img_parity import NEGATIVE, PROMPTS, stages_overrides
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinySDXL
from tests.support.workflows import run, shipped

TOLERANCE = 1 / 255


def test_shipped_sdxl_workflow_equals_diffusers(tiny_sdxl: TinySDXL, executor: Executor,
                                                tmp_path: Path) -> None:
    import diffusers

    prompt, negative, steps, seed = "a red circle", "a blue square", 5, 3
    wf = shipped("sdxl_txt2img.json", [
        f"1.source={tiny_sdxl.base.folder}", f"3.text={prompt}", f"4.text={negative}",
        f"5.width={IMAGE_SIZE}", f"5.height={IMAGE_SIZE}", f"5.seed={seed}",
        f"6.steps={steps}"])
    ours = run(executor, wf, tmp_path).outputs["7"]["IMAGE"].pixels.numpy()
    pipe = _pipeline("StableDiffusionXLPipeline", tiny_sdxl.base.folder)
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True)
    theirs = pipe(prompt=prompt, negative_prompt=negative, height=IMAGE_SIZE,
                  width=IMAGE_SIZE, num_inference_steps=steps, guidance_scale=5.0,
                  generator=_generators(1, seed), output_type="np").images
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE


@pytest.fixture(scope="module")
def sdxl_with_latent_stats(tiny_sdxl: TinySDXL, tmp_path_factory: pytest.TempPathFactory
                           ) -> Path:
    """The tiny SDXL with per-channel latent mean and std in its VAE config (as some SDXL
    fine-tunes' VAEs have)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sdxl-stats"
    shutil.copytree(tiny_sdxl.base.folder, folder)
    config_path = folder / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(latents_mean=[0.1, -0.2, 0.3, 0.05], latents_std=[1.5, 0.8, 1.2, 2.0])
    config_path.write_text(json.dumps(config))
    return folder


def test_latent_statistics_equal_diffusers(sdxl_with_latent_stats: Path, executor: Executor,
                                           tmp_path: Path) -> None:
    scheduler = "EulerDiscreteScheduler"
    wf = shipped("txt2img_stages.json", stages_overrides(sdxl_with_latent_stats, scheduler,
                                                         NEGATIVE))
    ours = run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()
    pipe = _pipeline("StableDiffusionXLPipeline", sdxl_with_latent_stats)
    assert pipe.vae.config.latents_mean is not None
    theirs = pipe(prompt=PROMPTS, negative_prompt=[NEGATIVE] * 2, height=IMAGE_SIZE,
                  width=IMAGE_SIZE, num_inference_steps=4, guidance_scale=6.0,
                  generator=_generators(2), output_type="np").images
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE


def test_latent_statistics_round_trip(tiny_sdxl: TinySDXL) -> None:
    """Encoding applies (z - mean) * scale / std and decoding its inverse."""
    from nodes.diffusion.checkpoints import load_components

    vae = load_components(tiny_sdxl.base.folder, dtype="fp32", device="cpu").vae
    config = {**vae.config, "latents_mean": [0.5] * 4, "latents_std": [2.0] * 4}
    object.__setattr__(vae, "config", type(vae.config)(config))
    value = VAE(vae)
    z = torch.randn(1, 4, 4, 4)
    assert torch.allclose(value.to_latents(z), (z - 0.5) * 0.13025 / 2.0)
    assert torch.allclose(value.from_latents(value.to_latents(z)), z, atol=1e-6)


def test_fp16_vae_with_force_upcast_decodes_in_fp32(tiny_sdxl: TinySDXL) -> None:
    """In an fp16 pipeline, a VAE whose config says force_upcast runs its decode in fp32
    (SDXL's VAE overflows in fp16) and is back in fp16 afterwards."""
    from nodes.diffusion.checkpoints import load_components

    module = load_components(tiny_sdxl.base.folder, dtype="fp32", device="cpu").vae
    reference = vae_decode(Latent(torch.randn(1, 4, 16, 16, generator=torch.Generator()
                                              .manual_seed(0))), VAE(module)).pixels
    module = module.half()
    seen: list[torch.dtype] = []
    hook = module.decoder.conv_in.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].dtype))
    try:
        latents = Latent(torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
                         .half())
        image = vae_decode(latents, VAE(module)).pixels
    finally:
        hook.remove()
    assert seen == [torch.float32]
    assert next(module.parameters()).dtype == torch.float16
    # Only the weights' rounding to fp16 separates it from the fp32 model.
    assert float((image - reference).abs().max()) < 2e-2


def test_sd1_conditioning_into_sdxl_unet_is_a_clear_error(tiny_sdxl: TinySDXL, tiny_sd,
                                                          executor: Executor,
                                                          tmp_path: Path) -> None:
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sdxl.base.folder,
                                                         "EulerDiscreteScheduler", None))
    wf.nodes["11"] = {"type": "LoadPipeline", "inputs": {"source": str(tiny_sd.folder)}}
    for nid in ("3", "4", "5", "6"):
        for name in ("tokenizer", "text_encoder"):
            if name in wf.nodes[nid]["inputs"]:
                wf.nodes[nid]["inputs"][name] = {"from": "11", "output": name}
    result = executor.run(wf, output_dir=tmp_path)
    assert not result.ok and result.error["node"] == "8"
    assert "'positive' has no pooled text embedding" in result.error["message"]


def test_denoising_start_needs_continued_latents(tiny_sdxl: TinySDXL, executor: Executor,
                                                 tmp_path: Path) -> None:
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sdxl.base.folder,
                                                         "EulerDiscreteScheduler", None)
                 + ["8.denoising_start=0.5"])
    result = executor.run(wf, output_dir=tmp_path)
    assert not result.ok and result.error["node"] == "8"
    assert "denoising_start" in result.error["message"]
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sdxl.base.folder,
                                                         "EulerDiscreteScheduler", None)
                 + ["8.denoising_end=0.5"])
    half = run(executor, wf, tmp_path)
    latents = half.outputs["8"]["latents"]
    assert latents.noise is False and latents.samples.std() > 1.5  # still noisy
