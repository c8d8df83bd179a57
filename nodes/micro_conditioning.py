"""SDXL's micro-conditioning: the pooled text embedding and the image-size numbers the UNet
is conditioned on besides the prompt.

SDXL was trained on images of many sizes and crops and learnt to depend on them: the UNet
takes the original size, the crop's top-left corner and the target size (the refiner: the
original size, the crop and an aesthetic score) next to the pooled text embedding. diffusers'
defaults are what a user expects: original = target = the image size, crop (0, 0), aesthetic
score 6 and 2.5 for the unconditional side. The `SDXLConditioning` node sets other values;
they travel in the conditioning's options under ComfyUI's names, so the two node families
read each other's conditioning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from graph_runtime import Float, Int, node
from nodes.guidance import expand
from nodes.lazy import lazy_module
from nodes.types import MICRO_CONDITIONING, Conditioning, Latent

torch = lazy_module("torch")

AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5
# Pixels per latent cell when nothing says otherwise (every released SD VAE).
DEFAULT_VAE_FACTOR = 8


def pixel_size(latents: Latent) -> tuple[int, int]:
    """The image size (height, width) the latents stand for: recorded by the node that made
    them, else the latent size times 8."""
    size = latents.extra.get("pixel_size")
    if size is not None:
        return int(size[0]), int(size[1])
    h, w = latents.samples.shape[-2:]
    return int(h) * DEFAULT_VAE_FACTOR, int(w) * DEFAULT_VAE_FACTOR


def time_id_count(config: Mapping[str, Any], pooled_dim: int) -> int | None:
    """How many micro-conditioning numbers the UNet was trained with: 6 for SDXL base
    (sizes and crop), 5 for the refiner (aesthetic score instead of the target size); None
    when pooled embeddings of this width do not fit its added embedding."""
    extra = int(config["projection_class_embeddings_input_dim"]) - pooled_dim
    count, rest = divmod(extra, int(config["addition_time_embed_dim"]))
    return count if not rest and count in (5, 6) else None


def time_ids(options: Mapping[str, Any], size: tuple[int, int], count: int,
             score_key: str, default_score: float) -> list[float]:
    """diffusers' `add_time_ids`: original (h, w), crop (top, left), then target (h, w) or
    the aesthetic score."""
    height, width = size
    ids = [options.get("height", height), options.get("width", width),
           options.get("crop_h", 0), options.get("crop_w", 0)]
    if count == 6:
        ids += [options.get("target_height", height), options.get("target_width", width)]
    else:
        ids.append(options.get(score_key, default_score))
    return [float(v) for v in ids]


def _has_micro(options: Mapping[str, Any]) -> bool:
    return any(k in options for k in MICRO_CONDITIONING)


def _pooled(cond: Conditioning, name: str) -> torch.Tensor:
    pooled = cond.options.get("pooled_output")
    if not isinstance(pooled, torch.Tensor):
        raise ValueError(f"Denoise: input {name!r} has no pooled text embedding, which this "
                         "UNet (SDXL) needs; encode the prompt with the SDXL pipeline's "
                         "text encoder")
    return pooled


def added_conditions(config: Mapping[str, Any], positive: Conditioning,
                     negative: Conditioning | None, batch: int, use_cfg: bool,
                     size: tuple[int, int], device: torch.device, dtype: torch.dtype
                     ) -> dict[str, torch.Tensor]:
    """The UNet's `added_cond_kwargs` for one call: `[uncond, cond]` halves with guidance,
    as `guidance_context` lays out the text embeddings."""
    pooled = _pooled(positive, "positive")
    count = time_id_count(config, int(pooled.shape[-1]))
    if count is None:
        raise ValueError(f"Denoise: pooled embeddings of width {pooled.shape[-1]} do not fit "
                         "this UNet's added embedding; encode the prompt with the same "
                         "pipeline")
    text = expand(pooled, batch, "the positive pooled embedding")
    ids = torch.tensor([time_ids(positive.options, size, count, "aesthetic_score",
                                 AESTHETIC_SCORE)]).repeat(batch, 1)
    if use_cfg:
        if negative is not None:
            neg_pooled = _pooled(negative, "negative")
        elif positive.uncond_pooled is not None:
            neg_pooled = positive.uncond_pooled
        else:
            raise ValueError("Denoise: guidance needs an unconditional pooled embedding; "
                             "link 'negative'")
        if negative is not None and _has_micro(negative.options):
            neg_ids = time_ids(negative.options, size, count, "aesthetic_score",
                               NEGATIVE_AESTHETIC_SCORE)
        else:
            neg_ids = time_ids(positive.options, size, count, "negative_aesthetic_score",
                               NEGATIVE_AESTHETIC_SCORE)
        text = torch.cat([expand(neg_pooled, batch, "the negative pooled embedding"), text])
        ids = torch.cat([torch.tensor([neg_ids]).repeat(batch, 1), ids])
    return {"text_embeds": text.to(device, dtype), "time_ids": ids.to(device, dtype)}


Size = Annotated[int, Int(min=0, max=16384, step=8, tooltip="0: the image's own size")]
Crop = Annotated[int, Int(min=0, max=16384, step=8)]
Score = Annotated[float, Float(min=0.0, max=1000.0, step=0.01,
                               tooltip="the refiner's aesthetic score; ignored by SDXL base")]


@node("SDXLConditioning", category="conditioning", output="conditioning",
      display_name="SDXL Conditioning")
def sdxl_conditioning(
    conditioning: Conditioning,
    original_width: Size = 0,
    original_height: Size = 0,
    crop_left: Crop = 0,
    crop_top: Crop = 0,
    target_width: Size = 0,
    target_height: Size = 0,
    aesthetic_score: Score = AESTHETIC_SCORE,
    negative_aesthetic_score: Score = NEGATIVE_AESTHETIC_SCORE,
) -> Conditioning:
    """Set SDXL's micro-conditioning: the size the image 'was' (original), the crop's
    top-left corner and the size asked for (target); 0 keeps the image's own size. The
    refiner uses the aesthetic scores (the negative one for the unconditional side)."""
    options = dict(conditioning.options)
    values = {"width": original_width, "height": original_height,
              "target_width": target_width, "target_height": target_height}
    for key, value in values.items():
        if value:
            options[key] = value
        else:
            options.pop(key, None)
    options.update(crop_w=crop_left, crop_h=crop_top, aesthetic_score=aesthetic_score,
                   negative_aesthetic_score=negative_aesthetic_score)
    return Conditioning(conditioning.embeds, conditioning.uncond, conditioning.prompts,
                        options, conditioning.more, conditioning.uncond_pooled)
