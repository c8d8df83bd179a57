"""Batch matching and classifier-free guidance inputs for Denoise.

Batch rules (one place, so every sampler agrees):
- latents and prompts of equal batch pair up image by image;
- one latent with N prompts: the same noise (same seed) for every prompt — the
  "four prompt variants with one seed" of diffusers' effective-and-efficient guide;
- N latents with one prompt: the prompt is shared;
- N*k latents with N prompts: k images per prompt, consecutive (diffusers'
  `num_images_per_prompt`).
The unconditional half is the wired negative conditioning, else the empty prompt's
embedding that the encoding node computed (diffusers' default). Positive and negative
embeddings of different lengths (long prompts) are repeated to a common length.
"""

from __future__ import annotations

import math

from nodes.lazy import lazy_module
from nodes.types import Conditioning, Latent

torch = lazy_module("torch")


def match_batch(latents: Latent, positive: Conditioning | None) -> tuple[Latent, int]:
    """The latents expanded to the run's batch size, and that size."""
    b = latents.batch
    if positive is None:
        return latents, b
    c = positive.batch
    if b == c or c == 1 or b % c == 0:
        return latents, b
    if b == 1:
        return latents.repeated(c), c
    raise ValueError(f"Denoise: {b} latents cannot be paired with {c} prompts; use one "
                     f"latent, {c} latents, or a multiple of {c}")


def expand(embeds: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Embeddings [n, L, D] expanded to `batch` rows (n == batch, 1, or a divisor)."""
    n = embeds.shape[0]
    if n == batch:
        return embeds
    if batch % n == 0:
        return embeds.repeat_interleave(batch // n, dim=0)
    raise ValueError(f"Denoise: {what} has a batch of {n}, which does not divide the "
                     f"batch of {batch} images")


def guidance_context(positive: Conditioning, negative: Conditioning | None, batch: int,
                     use_cfg: bool, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The encoder states for one UNet call: `[uncond, cond]` with guidance, else `cond`."""
    for name, value in (("positive", positive), ("negative", negative)):
        if value is not None and not value.is_plain:
            raise ValueError(f"Denoise: input {name!r} holds several conditioning entries or "
                             "an area, strength, mask or timestep range; Denoise takes one "
                             "plain prompt encoding (use KSampler for such conditioning)")
    cond = expand(positive.embeds, batch, "the positive conditioning")
    if not use_cfg:
        return cond.to(device, dtype)
    if negative is not None:
        uncond = expand(negative.embeds, batch, "the negative conditioning")
    elif positive.uncond is not None:
        uncond = expand(positive.uncond, batch, "the empty prompt")
    else:
        raise ValueError("Denoise: guidance needs an unconditional input; link 'negative' "
                         "(the positive conditioning carries no empty-prompt embedding)")
    if uncond.shape[2:] != cond.shape[2:]:
        raise ValueError(f"Denoise: negative embeddings {tuple(uncond.shape[1:])} do not "
                         f"match positive {tuple(cond.shape[1:])}; encode both with the "
                         "same text encoder")
    uncond, cond = matched_lengths(uncond, cond)
    return torch.cat([uncond, cond]).to(device, dtype)


def matched_lengths(*embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Embeddings `[B, L_i, D]` of unequal sequence lengths (a long prompt is several
    77-token windows) repeated along the sequence to the least common multiple of the
    lengths, ComfyUI's rule, so a 154-token prompt pairs with a 77-token negative."""
    target = math.lcm(*(int(e.shape[1]) for e in embeds))
    return tuple(e if e.shape[1] == target else e.repeat(1, target // e.shape[1], 1)
                 for e in embeds)


def combine(noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """`uncond + g * (cond - uncond)` over the two halves of a batched prediction."""
    uncond, cond = noise_pred.chunk(2)
    return uncond + guidance_scale * (cond - uncond)
