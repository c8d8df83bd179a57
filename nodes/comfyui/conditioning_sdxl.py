"""ComfyUI's SDXL text encoders: the prompt plus SDXL's micro-conditioning.

SDXL was trained knowing each image's original size, how it was cropped and the size it was
shown at (the refiner: also an aesthetic score), and takes those numbers next to the pooled
text embedding. These nodes encode the text as CLIPTextEncode does and put the numbers into
the conditioning's options under ComfyUI's names (`nodes.types.MICRO_CONDITIONING`); the
samplers read them, using ComfyUI's defaults for any that are missing
(`nodes.comfyui.guidance.adm`).
"""

from __future__ import annotations

from typing import Annotated

from graph_runtime import Float, Int, Text, node
from nodes.comfyui import clip_text
from nodes.comfyui.conditioning import MAX_RESOLUTION
from nodes.comfyui.prompt_embeddings import check_embeddings, embeddings_changed, run_lookup
from nodes.comfyui.types import Clip
from nodes.types import Conditioning

Size = Annotated[int, Int(min=0, max=MAX_RESOLUTION)]
Prompt = Annotated[str, Text(multiline=True)]
Score = Annotated[float, Float(min=0.0, max=1000.0, step=0.01)]


@node("CLIPTextEncodeSDXL", category="ComfyUI/advanced/conditioning", output="CONDITIONING",
      display_name="CLIPTextEncodeSDXL", check_inputs=check_embeddings("text_g", "text_l"),
      fingerprint=embeddings_changed("text_g", "text_l"))
def clip_text_encode_sdxl(
    clip: Clip,
    width: Size = 1024,
    height: Size = 1024,
    crop_w: Size = 0,
    crop_h: Size = 0,
    target_width: Size = 1024,
    target_height: Size = 1024,
    text_g: Prompt = "",
    text_l: Prompt = "",
) -> Conditioning:
    """Encode a prompt for SDXL: `text_g` for the OpenCLIP-G encoder, `text_l` for CLIP-L,
    with the image's original size, crop offset and target size."""
    with run_lookup() as lookup:
        tokens = clip_text.sdxl_tokens(clip, text_g, text_l, lookup)
        embeds, pooled = clip_text.encode_tokens(clip, tokens)
    return Conditioning(embeds, prompts=(text_g,), options={
        "pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
        "crop_h": crop_h, "target_width": target_width, "target_height": target_height})


@node("CLIPTextEncodeSDXLRefiner", category="ComfyUI/advanced/conditioning",
      output="CONDITIONING", display_name="CLIPTextEncodeSDXLRefiner",
      check_inputs=check_embeddings("text"), fingerprint=embeddings_changed("text"))
def clip_text_encode_sdxl_refiner(
    ascore: Score = 6.0,
    width: Size = 1024,
    height: Size = 1024,
    text: Prompt = "",
    *,
    clip: Clip,
) -> Conditioning:
    """Encode a prompt for the SDXL refiner with the aesthetic score to aim for (high for
    the positive prompt, low for the negative) and the image's original size."""
    with run_lookup() as lookup:
        embeds, pooled = clip_text.encode(clip, text, lookup)
    return Conditioning(embeds, prompts=(text,), options={
        "pooled_output": pooled, "aesthetic_score": ascore, "width": width, "height": height})
