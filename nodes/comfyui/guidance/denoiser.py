"""The denoiser the k-diffusion samplers call: our UNet seen through ComfyUI's conventions.

D(x; sigma) scales x to unit variance, gives the UNet the trained timestep nearest to
sigma, and turns its output into a clean-sample estimate (`DiscreteSampling`). Around that
sits ComfyUI's guidance: every applicable conditioning entry of both sides predicts its
area; entries whose inputs have one shape run as one batched UNet call (the negative side
first, so plain cond + uncond is one call, as in ComfyUI); each side is the weighted average
of its entries; classifier-free guidance combines the two estimates, and at cfg 1 the
negative side is not evaluated at all. An SDXL UNet also gets each entry's pooled embedding
and micro-conditioning (`adm`), batched in the same order as the text embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nodes.comfyui.guidance.adm import added_inputs, needs_added
from nodes.comfyui.guidance.conds import Applied, Entry, apply, mirror_areas, resolve
from nodes.comfyui.guidance.control import (
    APPLY_TO_UNCOND,
    ControlResiduals,
    controls_to_uncond,
    same_controls,
)
from nodes.comfyui.types import Guider
from nodes.control_guidance import Control
from nodes.lazy import lazy_module
from nodes.types import Conditioning

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")
_ksampling = lazy_module("nodes.diffusion.ksampling")

# Batched entries may differ in context length if one is a small multiple of the other:
# the shorter one is repeated (attention over repeated keys is unchanged).
MAX_CONTEXT_REPEAT = 4
# Added to the weight sums so cells no entry covers divide to 0, not NaN.
TINY = 1e-37


def _context_len(applied: Applied) -> int:
    return int(applied.entry.embeds.shape[1])


def _batchable(a: Applied, b: Applied) -> bool:
    if a.x.shape != b.x.shape:
        return False
    ea, eb = a.entry.embeds, b.entry.embeds
    if ea.shape[2] != eb.shape[2]:
        return False
    if not same_controls(a.entry.controls, b.entry.controls):
        return False
    la, lb = _context_len(a), _context_len(b)
    return math.lcm(la, lb) // min(la, lb) <= MAX_CONTEXT_REPEAT


def _to_batch(values: Tensor, batch: int) -> Tensor:
    """Per-item values (embeddings, pooled embeddings) repeated (or cut) to the batch size
    of x."""
    n = values.shape[0]
    if n > batch:
        return values[:batch]
    if n < batch:
        return values.repeat(math.ceil(batch / n), *(1,) * (values.ndim - 1))[:batch]
    return values


def _added(chosen: list[tuple[int, Applied]], batch: int) -> dict[str, Tensor] | None:
    """SDXL's added inputs of a batched call, entry by entry like the contexts."""
    if chosen[0][1].entry.added is None:
        return None
    text, ids = [], []
    for _, a in chosen:
        added = a.entry.added
        assert added is not None
        text.append(_to_batch(added.text_embeds, batch))
        ids.append(added.time_ids.repeat(batch, 1))
    return {"text_embeds": torch.cat(text), "time_ids": torch.cat(ids)}


class GuidedDenoiser:
    """D(x; sigma) for one sampling run of a guider over latents of a given shape."""

    def __init__(self, guider: Guider, latent_shape: torch.Size, device: torch.device
                 ) -> None:
        model = guider.model
        self.model = model
        self.model_sampling = model.sampling
        self.cfg = float(guider.cfg)
        size = (int(latent_shape[-2]), int(latent_shape[-1]))
        self.positive = self._entries(guider.positive, "positive", size, device)
        self.negative: list[Entry] | None = None
        if guider.negative is not None:
            self.negative = self._entries(guider.negative, "negative", size, device)
        if self.negative is not None:
            flags = [bool(p.options.get(APPLY_TO_UNCOND)) for p in guider.positive.parts]
            controls_to_uncond(self.positive, self.negative, flags)
        mirror_areas(self.positive, self.negative)
        self.control = ControlResiduals(self.model_sampling.percent_to_sigma)

    def _entries(self, conditioning: Conditioning, side: str, size: tuple[int, int],
                 device: torch.device) -> list[Entry]:
        """One side's entries; for SDXL with their pooled embeddings and micro-conditioning
        (their defaults depend on the side and the latent's size)."""
        parts = conditioning.parts
        entries = resolve(parts, self.model_sampling, size[0], size[1], device)
        net = self.model.unet.model
        if not needs_added(net):
            return entries
        return [replace(entry, added=added_inputs(part.options, net, side, *size, device))
                for part, entry in zip(parts, entries, strict=True)]

    def predict(self, x: Tensor, sigma: Tensor, contexts: Tensor,
                added: dict[str, Tensor] | None = None,
                controls: Sequence[Control] = ()) -> Tensor:
        """The UNet's clean-sample estimate for x at per-item noise levels sigma (`added`:
        SDXL's pooled embeddings and micro-conditioning, one row per item; `controls`: the
        ControlNets of the batched entries)."""
        ms = self.model_sampling
        net = self.model.unet.prepared()
        x_in = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).float()
        extra: dict[str, Any] = {} if added is None else {"added_cond_kwargs": added}
        if controls:
            extra.update(self.control(controls, x_in, t, contexts,
                                      float(sigma.reshape(-1)[0]), added))
        out = net(x_in.to(net.dtype), t, encoder_hidden_states=contexts.to(net.dtype), **extra)
        return ms.calculate_denoised(sigma, out.float(), x)

    def _run(self, jobs: list[tuple[int, Applied]], sigma: Tensor,
             sums: list[Tensor], weights: list[Tensor]) -> None:
        while jobs:
            first = jobs[0][1]
            group = [i for i, (_, a) in enumerate(jobs) if _batchable(a, first)][::-1]
            chosen = [jobs[i] for i in group]
            for i in sorted(group, reverse=True):
                jobs.pop(i)
            length = math.lcm(*(_context_len(a) for _, a in chosen))
            batch = first.x.shape[0]
            contexts = []
            for _, a in chosen:
                embeds = _to_batch(a.entry.embeds, batch)
                contexts.append(embeds.repeat(1, length // embeds.shape[1], 1))
            x = torch.cat([a.x for _, a in chosen])
            outputs = self.predict(x, sigma.repeat(len(chosen)), torch.cat(contexts),
                                   _added(chosen, batch), first.entry.controls)
            for (side, a), out in zip(chosen, outputs.chunk(len(chosen)), strict=True):
                total, weight = sums[side], weights[side]
                if a.area is not None:
                    h, w, y, x0 = a.area
                    total = total[:, :, y: y + h, x0: x0 + w]
                    weight = weight[:, :, y: y + h, x0: x0 + w]
                total += out * a.mult
                weight += a.mult

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        sides: list[list[Entry] | None] = [self.positive, None]
        if _ksampling.needs_uncond(self.cfg):
            sides[1] = self.negative
        # The noise level is read back (a wait for the device) only when an entry has a
        # timestep range to check it against.
        timed = any(e.sigma_start is not None or e.sigma_end is not None
                    for entries in sides for e in entries or ())
        level = float(sigma.reshape(-1)[0]) if timed else 0.0
        jobs: list[tuple[int, Applied]] = []
        for side, entries in enumerate(sides):
            for entry in entries or ():
                applied = apply(entry, x, level)
                if applied is not None:
                    jobs.append((side, applied))
        sums = [torch.zeros_like(x) for _ in sides]
        weights = [torch.full_like(x, TINY) for _ in sides]
        self._run(jobs, sigma, sums, weights)
        cond = sums[0] / weights[0]
        uncond = sums[1] / weights[1] if sides[1] is not None else None
        if uncond is None and _ksampling.needs_uncond(self.cfg):
            # A guider without a negative side guides away from zero (as ComfyUI does).
            uncond = torch.zeros_like(cond)
        return _ksampling.cfg_combine(cond, uncond, self.cfg)
