"""Node behaviour beyond parity: tokenization, batch rules, progress and interrupt,
stateless schedulers, efficiency options, images, previews."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from graph_runtime.cache import OutputCache
from graph_runtime.context import PreviewPolicy
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from nodes import images as image_nodes
from nodes import latents as latent_nodes
from nodes import loaders, sampling, settings, text
from nodes.comfyui.vae import vae_decode
from nodes.diffusion.clip import SHIPPED_TOKENIZER
from nodes.previews import fit_projection, latent_to_rgb
from nodes.types import Image
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel
from tests.support.workflows import run, shipped


@pytest.fixture(scope="module")
def parts(tiny_sd: TinyModel) -> Any:
    return loaders.load_pipeline(str(tiny_sd.folder), dtype="fp32", device="cpu")


def denoise(unet: Any, scheduler: Any, positive: Any, *, latents: Any, steps: int,
            strength: float = 1.0) -> Any:
    """A direct call of the Denoise node with every widget given."""
    return sampling.denoise(unet, scheduler, positive, latents=latents, negative=None,
                            steps=steps, guidance_scale=5.0, strength=strength)


def test_prompt_lines_become_a_batch() -> None:
    assert text.split_prompts("a red circle\n\n a blue square \n", True) == [
        "a red circle", "a blue square"]
    assert text.split_prompts("a red circle\na blue square", False) == [
        "a red circle\na blue square"]
    assert text.split_prompts("  \n", True) == [""]


def test_tokenize_pads_to_77_and_truncates(parts: Any) -> None:
    from transformers import CLIPTokenizer

    ref = CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER))
    long = " ".join(["red"] * 100)
    tokens = text.tokenize(parts.tokenizer, f"a red circle\n{long}", batch=True,
                           long_prompts="truncate")
    assert tuple(tokens.input_ids.shape) == (2, 77)
    expected = ref(["a red circle", long], padding="max_length", max_length=77,
                   truncation=True, return_tensors="pt").input_ids
    assert torch.equal(tokens.input_ids, expected)
    assert torch.equal(tokens.uncond_ids, ref([""], padding="max_length", max_length=77,
                                              return_tensors="pt").input_ids)
    cond = text.encode_text(parts.text_encoder, tokens)
    assert tuple(cond.embeds.shape) == (2, 77, 32) and tuple(cond.uncond.shape) == (1, 77, 32)


def test_batch_rules(parts: Any) -> None:
    cond3 = text.text_to_conditioning(parts.tokenizer, parts.text_encoder, "a\nb\nc", True)
    lat2 = latent_nodes.random_latents(parts.unet, parts.vae, IMAGE_SIZE, IMAGE_SIZE, 2, 0)
    with pytest.raises(ValueError, match="2 latents cannot be paired with 3 prompts"):
        denoise(parts.unet, parts.scheduler, cond3, latents=lat2, steps=1)
    lat1 = latent_nodes.random_latents(parts.unet, parts.vae, IMAGE_SIZE, IMAGE_SIZE, 1, 0)
    out = denoise(parts.unet, parts.scheduler, cond3, latents=lat1, steps=1)
    assert out.batch == 3 and out.seeds == (0, 0, 0)
    with pytest.raises(ValueError, match="strength < 1"):
        denoise(parts.unet, parts.scheduler, cond3, latents=lat1, steps=2,
                         strength=0.5)
    with pytest.raises(ValueError, match="multiple of 2"):
        latent_nodes.random_latents(parts.unet, parts.vae, 33, 32, 1, 0)


def test_scheduler_state_never_leaks_between_runs(tiny_sd: TinyModel, tmp_path: Path) -> None:
    """A multistep solver keeps history; the cached Scheduler value is a description, so
    seed A, then seed B, then seed A again gives A's image exactly."""
    ex = Executor(REGISTRY, OutputCache())
    base = [f"1.source={tiny_sd.folder}", "2.type=DPMSolverMultistepScheduler",
            f"7.width={IMAGE_SIZE}", f"7.height={IMAGE_SIZE}", "8.steps=3"]
    a = run(ex, shipped("txt2img_stages.json", base + ["7.seed=1"]), tmp_path)
    run(ex, shipped("txt2img_stages.json", base + ["7.seed=2"]), tmp_path)
    ex.cache.clear()
    a2 = run(ex, shipped("txt2img_stages.json", base + ["7.seed=1"]), tmp_path)
    assert torch.equal(a.outputs["9"]["IMAGE"].pixels, a2.outputs["9"]["IMAGE"].pixels)


def test_progress_previews_and_interrupt(tiny_sd: TinyModel, tmp_path: Path) -> None:
    ex = Executor(REGISTRY, OutputCache())
    wf = shipped("txt2img.json", [f"1.source={tiny_sd.folder}", f"4.width={IMAGE_SIZE}",
                                  f"4.height={IMAGE_SIZE}", "5.steps=4"])
    events: list[dict[str, Any]] = []
    run_result = ex.run(wf, on_event=events.append, output_dir=tmp_path,
                        previews=PreviewPolicy(1))
    progress = [e for e in events if e["type"] == "progress"]
    assert [(e["step"], e["total"]) for e in progress] == [(i, 4) for i in range(1, 5)]
    # Previews are rendered off the loop and ride on a later event; the last is made at once.
    shown = [e["preview"] for e in progress if e["preview"] is not None]
    assert isinstance(progress[-1]["preview"], PILImage.Image)
    assert all(isinstance(image, PILImage.Image) for image in shown)
    assert run_result.ok

    stop = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "progress" and event["step"] == 2:
            stop.set()

    interrupted = ex.run(shipped("txt2img.json", [
        f"1.source={tiny_sd.folder}", f"4.width={IMAGE_SIZE}", f"4.height={IMAGE_SIZE}",
        "5.steps=4", "4.seed=99"]), on_event=on_event, interrupt=stop, output_dir=tmp_path)
    assert interrupted.interrupted and not interrupted.ok
    assert "5" not in interrupted.executed and "4" in interrupted.executed


def test_efficiency_options_keep_the_image(parts: Any) -> None:
    cond = text.text_to_conditioning(parts.tokenizer, parts.text_encoder, "a red circle")
    lat = latent_nodes.random_latents(parts.unet, parts.vae, IMAGE_SIZE, IMAGE_SIZE, 2, 3)
    plain = denoise(parts.unet, parts.scheduler, cond, latents=lat, steps=2)
    sliced_unet = settings.attention_slicing(parts.unet, "max")
    sliced = denoise(sliced_unet, parts.scheduler, cond, latents=lat, steps=2)
    assert torch.allclose(plain.samples, sliced.samples, atol=1e-5)
    # The option lives on the wire, not on the shared module: the plain UNet stays unsliced.
    denoise(parts.unet, parts.scheduler, cond, latents=lat, steps=1)
    assert all(getattr(m, "slice_size", None) is None for m in parts.unet.model.modules())
    a = vae_decode(plain, parts.vae).pixels
    b = vae_decode(plain, settings.vae_options(parts.vae, True, True)).pixels
    assert torch.allclose(a, b, atol=1e-5)


def test_image_grid_and_batch() -> None:
    imgs = Image(torch.rand(5, 4, 6, 3))
    grid = image_nodes.image_grid(imgs, 0, 0, 1, "").pixels
    assert tuple(grid.shape) == (1, 2 * 4 + 1, 3 * 6 + 2, 3)  # 5 images: 2 rows x 3 cols
    assert torch.equal(grid[0, 5:9, 7:13], imgs.pixels[4])
    assert torch.equal(grid[0, 4], torch.ones(grid.shape[2], 3))  # the white gap row
    with pytest.raises(ValueError, match="cannot hold"):
        image_nodes.image_grid(imgs, 2, 2, 0, "")
    captioned = image_nodes.image_grid(Image(torch.rand(2, 40, 40, 3)), 1, 2, 0,
                                       "left\nright").pixels[0]
    assert tuple(captioned.shape) == (40 + 12, 80, 3)
    assert float(captioned[40:, :40].min()) < 0.5 and float(captioned[40:, 40:].min()) < 0.5
    joined = image_nodes.join_images(imgs, Image(torch.rand(1, 4, 6, 3)))
    assert joined.batch == 6
    with pytest.raises(ValueError, match="differ in size"):
        image_nodes.join_images(imgs, Image(torch.rand(1, 5, 6, 3)))


def test_load_image_mask_from_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    path = tmp_path / "a.png"
    PILImage.fromarray(rgba, "RGBA").save(path)
    loaded = image_nodes.load_image(str(path))
    assert tuple(loaded.IMAGE.pixels.shape) == (1, 4, 5, 3)
    assert float(loaded.IMAGE.pixels[0, 1, 1, 0]) == 1.0
    assert float(loaded.MASK.mask[0, 0, 0]) == 1.0 and float(loaded.MASK.mask[0, 1, 1]) == 0.0


def test_preview_projection_follows_the_vae(parts: Any) -> None:
    """Encoding a red swatch and projecting its latents gives a red-dominant preview."""
    vae = parts.vae
    proj = fit_projection(vae.model, vae.scaling_factor)
    assert tuple(proj.shape) == (5, 3)
    red = torch.tensor([1.0, -1.0, -1.0])[None, :, None, None].expand(1, 3, 32, 32)
    with torch.no_grad():
        z = vae.model.encode(red).mean * vae.scaling_factor
    rgb = latent_to_rgb(z[0], proj).mean(dim=(1, 2))
    assert rgb[0] > rgb[1] + 0.1 and rgb[0] > rgb[2] + 0.1
    assert tuple(latent_to_rgb(torch.randn(16, 8, 8)).shape) == (3, 8, 8)  # any channels


def test_preview_of_real_scenes_is_close_to_the_picture() -> None:
    """On the shipped trained VAE, previews of encoded training-like scenes stay close to the
    downscaled pictures (a fit on uniform swatches alone is off by about 0.7 here)."""
    from nodes.diffusion.checkpoints import load_components
    from tools import shapes

    vae = load_components("noodle-tiny", dtype="fp32", device="cpu").vae
    scale = vae.config["scaling_factor"]
    raw, _, _ = shapes.make_dataset(12, seed=3)
    x = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x).mean * scale
    proj = fit_projection(vae, scale)
    small = torch.nn.functional.interpolate(x, size=z.shape[-2:], mode="area")
    errors = [(latent_to_rgb(z[i], proj) * 2 - 1 - small[i]).abs().mean() for i in range(12)]
    assert float(torch.stack(errors).mean()) < 0.5


def test_progress_counts_user_steps() -> None:
    """PNDM repeats a timestep and Heun evaluates twice per step; progress counts steps."""
    assert sampling.step_counter(5, 4, 1) == [0, 1, 2, 3, 4]  # PNDM, 4 steps
    assert sampling.step_counter(7, 4, 2) == [0, 1, 0, 2, 0, 3, 4]  # Heun, 4 steps
    assert sampling.step_counter(4, 4, 1) == [1, 2, 3, 4]


def test_every_offered_scheduler_exists() -> None:
    from nodes.diffusion.schedulers import SCHEDULERS

    offered = REGISTRY["SwapScheduler"].inputs["type"].widget.current_options()
    assert sorted(offered) == sorted(SCHEDULERS)


def test_resize_image_keeps_aspect() -> None:
    imgs = Image(torch.rand(2, 30, 60, 3))
    out = image_nodes.resize_image(imgs, 64, 0, "bilinear").pixels
    assert tuple(out.shape) == (2, 32, 64, 3)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_size_zero_is_the_native_size(parts: Any) -> None:
    lat = latent_nodes.random_latents(parts.unet, parts.vae, 0, 0, 1, 0)
    assert tuple(lat.samples.shape) == (1, 4, 16, 16)  # sample_size 16, VAE factor 2
