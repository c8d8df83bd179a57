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

from collections.abc import Mapping
from typing import Annotated, Any

from graph_runtime import Float, Int, current, node
from nodes.control_guidance import control_kwargs, control_run, split_control
from nodes.generators import generator_states
from nodes.guidance import combine, guidance_context, match_batch
from nodes.inpaint import finished_extra, inpainting
from nodes.lazy import lazy_module
from nodes.micro_conditioning import added_conditions, pixel_size
from nodes.previews import deferred_preview
from nodes.types import Conditioning, Latent, SchedulerSpec, UNet, require

torch = lazy_module("torch")
_schedule = lazy_module("nodes.diffusion.schedulers.schedule")


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


def _cutoff(sched: Any, fraction: float) -> int:
    """The training timestep at which a fraction of the denoising is done (diffusers)."""
    train_steps = int(sched.config["num_train_timesteps"])
    return int(round(train_steps - fraction * train_steps))


def continued_timesteps(sched: Any, denoising_start: float) -> tuple[torch.Tensor, int]:
    """diffusers' `denoising_start`: the timesteps below the cutoff (one more for
    second-order schedulers when they would end mid-step), continuing where a first
    Denoise stopped with `denoising_end` (SDXL's ensemble of expert denoisers)."""
    timesteps = sched.timesteps
    count = int((timesteps < _cutoff(sched, denoising_start)).sum())
    if sched.order == 2 and count % 2 == 0:
        count += 1
    start = len(timesteps) - count
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    if count == 0:
        raise ValueError(f"Denoise: denoising_start {denoising_start} leaves no step")
    return timesteps[start:], count


def stop_early(sched: Any, timesteps: torch.Tensor, denoising_end: float) -> torch.Tensor:
    """diffusers' `denoising_end`: keep the timesteps at or above the cutoff, handing the
    still-noisy latents to the next Denoise."""
    cutoff = _cutoff(sched, denoising_end)
    return timesteps[: sum(1 for t in timesteps.tolist() if t >= cutoff)]


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


def starting_sample(sched: Any, latents: Latent, gens: list[torch.Generator], steps: int,
                    strength: float, device: torch.device, dtype: torch.dtype,
                    denoising_start: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first sample, the timesteps to run and how many steps they make: pure noise
    scaled by `init_noise_sigma` (text to image), clean latents noised to the first
    timestep that `strength` keeps (image to image), the noise drawn from their streams, or
    (`denoising_start` > 0) partly denoised latents taken as they are."""
    if 0.0 < denoising_start < 1.0:
        if latents.noise:
            raise ValueError("Denoise: denoising_start continues a denoising; link the "
                             "latents of a Denoise that stopped at denoising_end")
        timesteps, n_steps = continued_timesteps(sched, denoising_start)
        return latents.samples.to(device, dtype), timesteps, n_steps
    if latents.noise:
        if strength < 1.0:
            raise ValueError("Denoise: strength < 1 refines an existing image; link "
                             "latents from VAEEncode (these latents are pure noise)")
        return latents.samples.to(device, dtype) * sched.init_noise_sigma, sched.timesteps, steps
    timesteps, n_steps = img2img_timesteps(sched, steps, strength)
    clean = latents.samples.to(device, dtype)
    noise = _schedule.randn(clean.shape, gens, device, dtype)
    return sched.add_noise(clean, noise, timesteps[:1].repeat(len(clean))), timesteps, n_steps


class StepReport:
    """Progress at each step boundary, an interrupt check in between; nothing when the node
    is called outside a run. A preview is made only when the run wants one for that step
    (`RunContext.wants_preview`), and rendered off the loop (`deferred_preview`)."""

    def __init__(self, n_timesteps: int, n_steps: int, order: int, latents: Latent) -> None:
        self.ctx = current()
        self.marks = step_counter(n_timesteps, n_steps, order)
        self.n_steps = n_steps
        self.projection = latents.extra.get("rgb_projection")
        self.pixel_space = bool(latents.extra.get("pixel_space"))

    def __call__(self, i: int, out: Any) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        step, total = self.marks[i], self.n_steps
        if not step:
            ctx.check_interrupt()
            return
        preview = None
        if ctx.wants_preview(step, total):
            shown = getattr(out, "pred_original_sample", None)
            shown = out.prev_sample if shown is None else shown
            preview = deferred_preview(shown, self.projection, self.pixel_space,
                                       final=step == total)
        ctx.progress(step, total, preview)


Fraction = Annotated[float, Float(min=0.0, max=1.0, step=0.01)]
# Half the 1,000 training timesteps of every Stable Diffusion model. Closer to 1,000 the
# timesteps crowd together and several schedulers fail exactly as diffusers' do: at 1,000
# DDIM, DDPM, PNDM, UniPC, DEIS and DPM-Solver++ index past the schedule, and at 995-999
# the multistep solvers and LMS divide by a zero step for some timestep spacings.
MAX_STEPS = 500


def max_steps(sched: Any) -> int:
    """The most steps a scheduler runs: `MAX_STEPS`, less for one trained on fewer
    timesteps (half of them)."""
    return min(MAX_STEPS, int(sched.config["num_train_timesteps"]) // 2)


def check_denoise(values: Mapping[str, Any]) -> dict[str, str]:
    """Literal values that each pass their widget but cannot run together."""
    problems: dict[str, str] = {}
    steps, strength = values.get("steps"), values.get("strength")
    start, end = values.get("denoising_start"), values.get("denoising_end")
    if isinstance(start, float | int) and isinstance(end, float | int) and (
            0.0 < start < 1.0 and 0.0 < end < 1.0 and start >= end):
        problems["denoising_start"] = f"{start} must be below denoising_end {end}"
    if isinstance(steps, int) and isinstance(strength, float | int) and strength < 1.0 and (
            not (isinstance(start, float | int) and 0.0 < start < 1.0)
            and int(steps * strength) == 0):
        problems["strength"] = (f"{strength} keeps no step of {steps} (steps x strength "
                                "must reach 1)")
    return problems


@node("Denoise", category="sampling", output="latents", check_inputs=check_denoise)
def denoise(
    unet: UNet,
    scheduler: SchedulerSpec,
    positive: Conditioning | None,
    latents: Latent,
    negative: Conditioning | None = None,
    steps: Annotated[int, Int(min=1, max=MAX_STEPS, tooltip=(
        "at most 500: past half the model's training timesteps schedules break"))] = 20,
    guidance_scale: Annotated[float, Float(min=0.0, max=100.0, step=0.1)] = 7.5,
    strength: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0,
    denoising_start: Fraction = 0.0,
    denoising_end: Fraction = 1.0,
) -> Latent:
    """Run the denoising loop. Without `negative`, the empty prompt is the unconditional
    input; `guidance_scale` <= 1 disables guidance (one UNet evaluation per step).
    `strength` < 1 needs clean latents (VAEEncode): that is img2img. `denoising_end` stops
    part-way and `denoising_start` continues from there (SDXL base, then its refiner).
    Latents from InpaintInputs (or with a noise mask) repaint only their mask
    (`nodes.inpaint`)."""
    _check_inputs(unet, positive, negative)
    positive, negative, controls = split_control(positive, negative)
    require(scheduler, "Denoise", "scheduler")
    if 0.0 < denoising_start < 1.0 and 0.0 < denoising_end < 1.0 and (
            denoising_start >= denoising_end):
        raise ValueError(f"Denoise: denoising_start {denoising_start} must be below "
                         f"denoising_end {denoising_end}")
    with unet.running() as model:
        device, dtype = model.device, model.dtype
        sched = scheduler.build()
        if steps > max_steps(sched):
            raise ValueError(f"Denoise: input 'steps': {steps} is more than this scheduler "
                             f"runs (at most {max_steps(sched)}, half its "
                             f"{sched.config['num_train_timesteps']} training timesteps)")
        sched.set_timesteps(steps, device=device)
        latents, batch = match_batch(latents, positive)
        gens = latents.generators()
        inpaint = inpainting(latents, model, denoising_start, denoising_end)
        x, timesteps, n_steps = starting_sample(sched, latents, gens, steps, strength, device,
                                                dtype, denoising_start) if inpaint is None \
            else inpaint.start(sched, gens, steps, strength, device, dtype, img2img_timesteps)
        if 0.0 < denoising_end < 1.0:
            timesteps = stop_early(sched, timesteps, denoising_end)
            n_steps = min(n_steps, max(len(timesteps) // sched.order, 1))
        use_cfg = unet.conditional and guidance_scale > 1.0
        context, added = None, None
        if unet.conditional:
            context = guidance_context(positive, negative, batch, use_cfg, device, dtype)
            if getattr(model, "needs_text_time", False):
                added = added_conditions(model.config, positive, negative, batch, use_cfg,
                                         pixel_size(latents), device, dtype)
        report = StepReport(len(timesteps), n_steps, sched.order, latents)
        control = control_run(controls, x, use_cfg, len(timesteps))
        # The scheduler gets each timestep as a host number, read here once: its per-step
        # bookkeeping (table lookups, "is this the last step?") then never waits for the
        # device. The UNet gets the same timestep as a device tensor.
        host_timesteps = timesteps.tolist()
        kwargs: dict[str, Any] = {}
        if context is not None:
            kwargs = {"encoder_hidden_states": context, "added_cond_kwargs": added}
        with torch.no_grad():
            for i, (t, t_host) in enumerate(zip(timesteps, host_timesteps, strict=True)):
                model_in = sched.scale_model_input(torch.cat([x, x]) if use_cfg else x, t_host)
                # A 9-channel UNet also takes the mask and masked image (a ControlNet not).
                unet_in = model_in if inpaint is None else inpaint.unet_input(model_in)
                extra = kwargs if control is None else {
                    **kwargs, **control_kwargs(control, i, model_in, t, context, added)}
                pred = model(unet_in, t, **extra)
                if use_cfg:
                    pred = combine(pred, guidance_scale)
                out = sched.step(pred, t_host, x, generator=gens)
                x = out.prev_sample
                if inpaint is not None:  # a 4-channel UNet keeps the unmasked region
                    x = inpaint.blend(sched, x, i, timesteps)
                report(i, out)
    return Latent(x, latents.seeds, generator_states(gens), noise=False,
                  extra=finished_extra(latents.extra))
