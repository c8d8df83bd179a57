"""KSampler and KSamplerAdvanced: ComfyUI's sampling, with its numbers, over our UNet.

The sigma schedule, the starting noise (one CPU generator seeded once for the whole batch)
and the sampler are `nodes.diffusion.ksampling`; the guidance around the UNet is
`nodes.comfyui.guidance`. Same checkpoint, seed and settings give ComfyUI's image.
`denoise` < 1 runs the last `steps` steps of a longer schedule (img2img keeps its step
count); KSamplerAdvanced runs part of a schedule: from `start_at_step`, until
`end_at_step`, with or without adding noise first and with or without finishing the
denoising at the end, so two of them can share one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from graph_runtime import Choice, Float, Int, Seed, node
from nodes.comfyui.guidance import SamplingRun, steps_run
from nodes.comfyui.types import Guider, Model, NoiseSource
from nodes.diffusion.names import KSAMPLER_NAMES as SAMPLER_NAMES
from nodes.diffusion.names import KSCHEDULER_NAMES as SCHEDULER_NAMES
from nodes.lazy import lazy_module
from nodes.types import Conditioning, Latent

ksampler = lazy_module("nodes.diffusion.ksampling.ksampler")

SEED_MAX = 2**64 - 1
NoiseSeed = Annotated[int, Seed(max=SEED_MAX, tooltip="the seed of the starting noise")]
Steps = Annotated[int, Int(min=1, max=10000)]
Cfg = Annotated[float, Float(min=0.0, max=100.0, step=0.1, tooltip=(
    "classifier-free guidance scale: how strongly the prompt steers the image"))]
SamplerName = Annotated[str, Choice(SAMPLER_NAMES)]
SchedulerName = Annotated[str, Choice(SCHEDULER_NAMES)]
Denoise = Annotated[float, Float(min=0.0, max=1.0, step=0.01, tooltip=(
    "below 1 keeps that much of the input latent's structure (image to image)"))]
Step = Annotated[int, Int(min=0, max=10000)]
# denoise < 1 runs the tail of a schedule of steps / denoise steps (as ComfyUI does); the
# schedule is kept to the step limit, since a tiny denoise would ask for billions of sigmas.
MAX_SCHEDULE = 10000


def schedule_problem(steps: int, denoise: float) -> str | None:
    """Why `steps` at `denoise` make too long a schedule, or None."""
    if 0.0 < denoise <= 0.9999 and steps / denoise > MAX_SCHEDULE:
        return (f"{denoise} with {steps} steps asks for a schedule of {steps / denoise:.0f} "
                f"steps; at most {MAX_SCHEDULE} (raise denoise or lower steps)")
    return None


def check_schedule(values: Mapping[str, Any]) -> dict[str, str]:
    """KSampler's literal steps and denoise, together."""
    steps, denoise = values.get("steps"), values.get("denoise")
    if not isinstance(steps, int) or not isinstance(denoise, float | int):
        return {}
    problem = schedule_problem(steps, denoise)
    return {} if problem is None else {"denoise": problem}


def sample_ksampler(model: Model, seed: int, steps: int, cfg: float, sampler_name: str,
                    scheduler: str, positive: Conditioning, negative: Conditioning,
                    latent: Latent, denoise: float = 1.0, *, add_noise: bool = True,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> Latent:
    """The run both KSampler nodes make (ComfyUI's common sampler path)."""
    if (problem := schedule_problem(steps, denoise)) is not None:
        raise ValueError(f"KSampler: input 'denoise': {problem}")
    sigmas = ksampler.sampler_sigmas(model.sampling, sampler_name, scheduler, steps, denoise)
    guider = Guider(model, positive, negative, cfg)
    run = SamplingRun(guider, latent, steps_run(len(sigmas), start_step, last_step))
    noise = NoiseSource(seed, add_noise).generate(run.samples, latent.extra.get("batch_index"))
    with model.unet.running():  # LoRA patches merged once for the whole run
        out = ksampler.sample(run.denoiser, noise, run.samples, sigmas, sampler_name, seed,
                              start_step=start_step, last_step=last_step,
                              force_full_denoise=force_full_denoise, add_noise=add_noise,
                              callback=run.callback, denoise_mask=run.mask)
    return run.result(out)


@node("KSampler", category="ComfyUI/sampling", output="LATENT", display_name="KSampler",
      check_inputs=check_schedule)
def ksampler_node(
    model: Model,
    seed: NoiseSeed = 0,
    steps: Steps = 20,
    cfg: Cfg = 8.0,
    sampler_name: SamplerName = SAMPLER_NAMES[0],
    scheduler: SchedulerName = SCHEDULER_NAMES[0],
    *,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    denoise: Denoise = 1.0,
) -> Latent:
    """Denoise a latent towards the positive and away from the negative conditioning."""
    return sample_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive,
                           negative, latent_image, denoise)


@node("KSamplerAdvanced", category="ComfyUI/sampling", output="LATENT",
      display_name="KSampler (Advanced)")
def ksampler_advanced(
    model: Model,
    add_noise: Annotated[str, Choice(["enable", "disable"])] = "enable",
    noise_seed: NoiseSeed = 0,
    steps: Steps = 20,
    cfg: Cfg = 8.0,
    sampler_name: SamplerName = SAMPLER_NAMES[0],
    scheduler: SchedulerName = SCHEDULER_NAMES[0],
    *,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    start_at_step: Step = 0,
    end_at_step: Step = 10000,
    return_with_leftover_noise: Annotated[str, Choice(["disable", "enable"])] = "disable",
) -> Latent:
    """Run steps `start_at_step` to `end_at_step` of a `steps`-step schedule. With
    leftover noise enabled the result stays noisy for another sampler to finish; with
    add_noise disabled the input latent is taken as already noisy."""
    return sample_ksampler(model, noise_seed, steps, cfg, sampler_name, scheduler, positive,
                           negative, latent_image, add_noise=add_noise == "enable",
                           start_step=start_at_step, last_step=end_at_step,
                           force_full_denoise=return_with_leftover_noise != "enable")
