"""Denoise: the scheduler's loop over the UNet, as diffusers' write-your-own-pipeline guide
runs it by hand.

Per step: duplicate the latents for classifier-free guidance (one batched UNet call on
`[uncond, cond]`), `scale_model_input`, predict, combine with the guidance scale,
`scheduler.step` with the per-image generators. Schedulers that evaluate the model twice
per step (Heun, KDPM2) simply have twice as many entries in `timesteps`, exactly as in
diffusers' pipelines. `strength < 1` (or any clean input latents) is img2img: diffusers'
`get_timesteps` keeps the last `int(steps * strength)` steps and `add_noise` brings the
clean latents to the first of them, with noise drawn from the latents' own generators.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch

from graph_runtime import Float, Int, current, node
from nodes.diffusion.schedulers.schedule import randn
from nodes.guidance import combine, guidance_context, match_batch
from nodes.previews import step_preview
from nodes.types import Conditioning, Latent, SchedulerSpec, UNet, generator_states, require


def img2img_timesteps(sched: Any, steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """diffusers' `get_timesteps`: the tail of the schedule that `strength` keeps, and how
    many of the requested steps that is."""
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    if len(timesteps) == 0:
        raise ValueError(f"Denoise: strength {strength} keeps no step of {steps}; raise "
                         "the strength or the number of steps")
    return timesteps, steps - t_start


def step_counter(n_timesteps: int, steps: int, order: int) -> list[int]:
    """The user-facing step reached after each loop iteration (0: not a step boundary).

    Loops can be longer than `steps` (PNDM repeats a timestep; Heun and KDPM2 evaluate twice
    per step), so progress counts steps the way diffusers' progress bar does."""
    warmup = n_timesteps - steps * order
    marks, done = [], 0
    for i in range(n_timesteps):
        if i == n_timesteps - 1 or (i + 1 > warmup and (i + 1) % order == 0):
            done += 1
            marks.append(done)
        else:
            marks.append(0)
    return marks


def _check_inputs(unet: UNet, positive: Conditioning | None,
                  negative: Conditioning | None) -> None:
    require(unet, "Denoise", "unet")
    if unet.conditional and positive is None:
        raise ValueError("Denoise: input 'positive' must be linked: this UNet is "
                         "text-conditioned (link a TextToConditioning or EncodeText)")
    if not unet.conditional and (positive is not None or negative is not None):
        raise ValueError("Denoise: this UNet is unconditional (UNet2DModel) and takes no "
                         "conditioning; unlink 'positive' and 'negative'")


@node("Denoise", category="sampling", output="latents")
def denoise(
    unet: UNet,
    scheduler: SchedulerSpec,
    positive: Conditioning | None,
    latents: Latent,
    negative: Conditioning | None = None,
    steps: Annotated[int, Int(min=1, max=1000)] = 20,
    guidance_scale: Annotated[float, Float(min=0.0, max=100.0, step=0.1)] = 7.5,
    strength: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0,
) -> Latent:
    """Run the denoising loop. Without `negative`, the empty prompt is the unconditional
    input; `guidance_scale` <= 1 disables guidance (one UNet evaluation per step).
    `strength` < 1 needs clean latents (VAEEncode): that is img2img."""
    _check_inputs(unet, positive, negative)
    require(scheduler, "Denoise", "scheduler")
    model = unet.prepared()
    device, dtype = model.device, model.dtype
    sched = scheduler.build()
    sched.set_timesteps(steps, device=device)

    latents, batch = match_batch(latents, positive)
    gens = latents.generators()
    if latents.noise:
        if strength < 1.0:
            raise ValueError("Denoise: strength < 1 refines an existing image; link "
                             "latents from VAEEncode (these latents are pure noise)")
        timesteps, n_steps = sched.timesteps, steps
        x = latents.samples.to(device, dtype) * sched.init_noise_sigma
    else:
        timesteps, n_steps = img2img_timesteps(sched, steps, strength)
        clean = latents.samples.to(device, dtype)
        noise = randn(clean.shape, gens, device, dtype)
        x = sched.add_noise(clean, noise, timesteps[:1].repeat(batch))

    use_cfg = unet.conditional and guidance_scale > 1.0
    context = None
    if unet.conditional:
        context = guidance_context(positive, negative, batch, use_cfg, device, dtype)

    ctx = current()
    projection = latents.extra.get("rgb_projection")
    pixel_space = bool(latents.extra.get("pixel_space"))
    marks = step_counter(len(timesteps), n_steps, sched.order)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            model_in = torch.cat([x] * 2) if use_cfg else x
            model_in = sched.scale_model_input(model_in, t)
            if context is None:
                pred = model(model_in, t)
            else:
                pred = model(model_in, t, encoder_hidden_states=context)
            if use_cfg:
                pred = combine(pred, guidance_scale)
            out = sched.step(pred, t, x, generator=gens)
            x = out.prev_sample
            if ctx is None:
                continue
            if marks[i]:
                shown = getattr(out, "pred_original_sample", None)
                shown = x if shown is None else shown
                ctx.progress(marks[i], n_steps, step_preview(shown, projection, pixel_space))
            else:
                ctx.check_interrupt()
    return Latent(x, latents.seeds, generator_states(gens), noise=False,
                  extra=dict(latents.extra))
