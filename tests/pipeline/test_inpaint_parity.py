"""Inpainting parity: LoadImage (mask from alpha) -> InpaintInputs -> Denoise -> VAEDecode
equals diffusers' StableDiffusionInpaintPipeline (max 1/255, fp32) for a 9-channel
inpainting UNet (mask and masked-image latents concatenated) and for an ordinary 4-channel
UNet (the kept region blended back after every step), at strength 1.0 and 0.75, with a
deterministic and an ancestral scheduler (the ancestral one also checks the order of the
random draws: image sample, noise, masked-image sample)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from graph_runtime.executor import Executor
from tests.support.model_configs import IMAGE_SIZE, SD15_SCHEDULER, SD_TEXT, SD_UNET, SD_VAE
from tests.support.tiny_models import TinyModel, reference_pipeline
from tests.support.workflows import link, run, wf

PROMPT, NEGATIVE = "a red circle", "blurry"
SEED, STEPS, GUIDANCE = 3, 4, 6.0
TOLERANCE = 1 / 255
BOX = (8, 6, 22, 20)  # left, top, right, bottom of the repainted region


def build_tiny_inpaint(folder: Path) -> TinyModel:
    """The tiny SD pipeline with a 9-channel inpainting UNet (random weights), saved as
    diffusers saves a StableDiffusionInpaintPipeline."""
    import inspect

    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from nodes.diffusion.clip import SHIPPED_TOKENIZER

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**{**SD_UNET, "in_channels": 9}).eval()
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**SD_VAE).eval()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD_TEXT)).eval()
    takes = inspect.signature(diffusers.PNDMScheduler).parameters
    scheduler = diffusers.PNDMScheduler(**{k: v for k, v in SD15_SCHEDULER.items()
                                           if k in takes})
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
        tokenizer=CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return TinyModel(folder, pipe)


@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny_inpaint(tmp_path_factory.mktemp("models") / "tiny-inpaint")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PILImage.Image,
                                                                  PILImage.Image]:
    """A smooth coloured picture with the box transparent (our input), and the same
    picture and box as RGB and L images (diffusers' inputs)."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x * y)], axis=-1)
    rgb = (rgb * 255).round().astype(np.uint8)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    left, top, right, bottom = BOX
    mask[top:bottom, left:right] = 255
    path = tmp_path_factory.mktemp("inpaint") / "picture_masked.png"
    PILImage.fromarray(np.dstack([rgb, 255 - mask]), "RGBA").save(path)
    return path, PILImage.fromarray(rgb, "RGB"), PILImage.fromarray(mask, "L")


def graph(source: Path, picture: Path, scheduler: str, strength: float):
    return wf({
        "1": ("LoadPipeline", {"source": str(source)}),
        "2": ("SwapScheduler", {"scheduler": link("1", "scheduler"), "type": scheduler}),
        "3": ("LoadImage", {"image": str(picture)}),
        "4": ("InpaintInputs", {"vae": link("1", "vae"), "image": link("3", "IMAGE"),
                                "mask": link("3", "MASK"), "grow_mask_by": 0, "seed": SEED}),
        "5": ("TextToConditioning", {"tokenizer": link("1", "tokenizer"),
                                     "text_encoder": link("1", "text_encoder"),
                                     "text": PROMPT}),
        "6": ("TextToConditioning", {"tokenizer": link("1", "tokenizer"),
                                     "text_encoder": link("1", "text_encoder"),
                                     "text": NEGATIVE}),
        "7": ("Denoise", {"unet": link("1", "unet"), "scheduler": link("2", "scheduler"),
                          "positive": link("5", "conditioning"),
                          "negative": link("6", "conditioning"),
                          "latents": link("4", "latents"), "steps": STEPS,
                          "guidance_scale": GUIDANCE, "strength": strength}),
        "8": ("VAEDecode", {"vae": link("1", "vae"), "samples": link("7", "latents")}),
        "9": ("PreviewImage", {"images": link("8", "IMAGE")}),
    })


def diffusers_image(folder: Path, scheduler: str, strength: float, image: PILImage.Image,
                    mask: PILImage.Image) -> np.ndarray:
    import diffusers

    pipe = reference_pipeline("StableDiffusionInpaintPipeline", folder)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask,
                height=IMAGE_SIZE, width=IMAGE_SIZE, strength=strength,
                num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                generator=[torch.Generator("cpu").manual_seed(SEED)],
                output_type="np").images


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerAncestralDiscreteScheduler"])
@pytest.mark.parametrize("strength", [1.0, 0.75])
@pytest.mark.parametrize("channels", [9, 4])
def test_inpainting_equals_diffusers(channels: int, strength: float, scheduler: str,
                                     tiny_sd: TinyModel, tiny_inpaint: TinyModel, pictures,
                                     executor: Executor, tmp_path: Path) -> None:
    model = tiny_inpaint if channels == 9 else tiny_sd
    picture, image, mask = pictures
    result = run(executor, graph(model.folder, picture, scheduler, strength), tmp_path)
    ours = result.outputs["8"]["IMAGE"].pixels.numpy()
    theirs = diffusers_image(model.folder, scheduler, strength, image, mask)
    assert ours.shape == theirs.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    diff = float(np.abs(ours - theirs).max())
    print(f"\n{channels}-channel {scheduler} strength {strength}: max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    # Not vacuous: the repainted region changed from the original picture.
    left, top, right, bottom = BOX
    original = np.asarray(image, dtype=np.float32) / 255
    inside = np.abs(theirs[0, top:bottom, left:right] - original[top:bottom, left:right])
    assert float(inside.max()) > 0.05


def test_four_channel_unet_keeps_the_unmasked_latents(tiny_sd: TinyModel, pictures,
                                                      executor: Executor,
                                                      tmp_path: Path) -> None:
    """The last blend puts back the image's own latents outside the (latent) mask."""
    picture, _, _ = pictures
    workflow = graph(tiny_sd.folder, picture, "DDIMScheduler", 1.0)
    result = run(executor, workflow, tmp_path)
    source = result.outputs["4"]["latents"].extra["inpaint"]
    out = result.outputs["7"]["latents"].samples
    keep = source.mask < 0.5
    gens = [torch.Generator("cpu").manual_seed(SEED)]
    image = source.image_mean + source.image_std * torch.randn(
        source.image_mean.shape, generator=gens[0])
    assert torch.equal(out[keep.expand_as(out)], image[keep.expand_as(image)])
    assert not torch.allclose(out, image)
    assert "inpaint" not in result.outputs["7"]["latents"].extra


def test_nine_channel_unet_needs_inpaint_inputs(tiny_inpaint: TinyModel,
                                                executor: Executor, tmp_path: Path) -> None:
    workflow = wf({
        "1": ("LoadPipeline", {"source": str(tiny_inpaint.folder)}),
        "2": ("RandomLatents", {"unet": link("1", "unet"), "vae": link("1", "vae"),
                                "width": IMAGE_SIZE, "height": IMAGE_SIZE}),
        "3": ("TextToConditioning", {"tokenizer": link("1", "tokenizer"),
                                     "text_encoder": link("1", "text_encoder"),
                                     "text": PROMPT}),
        "4": ("Denoise", {"unet": link("1", "unet"), "scheduler": link("1", "scheduler"),
                          "positive": link("3", "conditioning"),
                          "latents": link("2", "latents"), "steps": 2}),
        "5": ("VAEDecode", {"vae": link("1", "vae"), "samples": link("4", "latents")}),
        "6": ("PreviewImage", {"images": link("5", "IMAGE")}),
    })
    result = executor.run(workflow, output_dir=tmp_path)
    assert not result.ok
    assert "InpaintInputs" in str(result.error)


def test_one_picture_with_two_prompts(tiny_sd: TinyModel, pictures, executor: Executor,
                                      tmp_path: Path) -> None:
    """Two prompts inpaint one picture: each image of the batch is the single run of its
    prompt (the picture's generator repeated for each prompt, as for text to image)."""
    picture, _, _ = pictures
    prompts = ["a red circle", "a green field"]
    batch = graph(tiny_sd.folder, picture, "EulerAncestralDiscreteScheduler", 0.75)
    batch.nodes["5"]["inputs"].update(text="\n".join(prompts), batch=True)
    both = run(executor, batch, tmp_path).outputs["8"]["IMAGE"].pixels
    alone = graph(tiny_sd.folder, picture, "EulerAncestralDiscreteScheduler", 0.75)
    alone.nodes["5"]["inputs"]["text"] = prompts[1]
    second = run(executor, alone, tmp_path).outputs["8"]["IMAGE"].pixels
    assert both.shape[0] == 2
    assert float((both[1] - second[0]).abs().max()) <= TOLERANCE
    assert float((both[0] - both[1]).abs().max()) > 0.02
