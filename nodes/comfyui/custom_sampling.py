"""ComfyUI's custom-sampling nodes: the KSampler taken apart into its stages.

A sampler (KSamplerSelect), a sigma schedule (BasicScheduler, KarrasScheduler, ...),
starting noise (RandomNoise, DisableNoise) and a guider (CFGGuider, BasicGuider) are
separate values; SamplerCustom / SamplerCustomAdvanced run them. This is the stage-by-stage
shape of our own library, with ComfyUI's numbers: SamplerCustomAdvanced with the pieces a
KSampler would choose gives the KSampler's result.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from graph_runtime import Bool, Choice, Float, Int, node
from nodes.comfyui.guidance import SamplingRun
from nodes.comfyui.sampling import Cfg, NoiseSeed, Steps, check_schedule, schedule_problem
from nodes.comfyui.types import Guider, Model, NoiseSource, SamplerChoice, Sigmas
from nodes.diffusion.names import KSAMPLER_NAMES as SAMPLER_NAMES
from nodes.diffusion.names import KSCHEDULER_NAMES as SCHEDULER_NAMES
from nodes.lazy import lazy_module
from nodes.types import Conditioning, Latent

torch = lazy_module("torch")
_ksampling = lazy_module("nodes.diffusion.ksampling")

SigmaValue = Annotated[float, Float(min=0.0, max=5000.0, step=0.01)]
SD_SIGMA_MAX, SD_SIGMA_MIN = 14.614642, 0.0291675


class Sampled(NamedTuple):
    output: Latent
    denoised_output: Latent


class SplitResult(NamedTuple):
    high_sigmas: Sigmas
    low_sigmas: Sigmas


def run_custom(guider: Guider, noise: NoiseSource, sampler: SamplerChoice, sigmas: Sigmas,
               latent: Latent) -> Sampled:
    """Sample `latent` over explicit sigmas: the shared body of both custom samplers."""
    run = SamplingRun(guider, latent, sigmas.steps)
    start = noise.generate(run.samples, latent.extra.get("batch_index"))
    with guider.model.unet.running():  # LoRA patches merged once for the whole run
        out = _ksampling.sample_custom(run.denoiser, start, run.samples, sigmas.sigmas,
                                       sampler.sampler, noise.seed, callback=run.callback,
                                       denoise_mask=run.mask)
    return Sampled(*run.results(out))


@node("KSamplerSelect", category="ComfyUI/sampling/custom_sampling/samplers",
      output="SAMPLER", display_name="KSamplerSelect")
def ksampler_select(
    sampler_name: Annotated[str, Choice(SAMPLER_NAMES)] = SAMPLER_NAMES[0],
) -> SamplerChoice:
    """A sampling algorithm by name, for SamplerCustom / SamplerCustomAdvanced."""
    return SamplerChoice(_ksampling.sampler_function(sampler_name))


@node("BasicScheduler", category="ComfyUI/sampling/custom_sampling/schedulers",
      output="SIGMAS", display_name="BasicScheduler", check_inputs=check_schedule)
def basic_scheduler(
    model: Model,
    scheduler: Annotated[str, Choice(SCHEDULER_NAMES)] = SCHEDULER_NAMES[0],
    steps: Steps = 20,
    denoise: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0,
) -> Sigmas:
    """The model's sigmas for a named schedule; `denoise` < 1 keeps the last `steps` steps
    of a longer schedule."""
    if (problem := schedule_problem(steps, denoise)) is not None:
        raise ValueError(f"BasicScheduler: input 'denoise': {problem}")
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return Sigmas(torch.zeros(0))
        total = int(steps / denoise)
    sigmas = _ksampling.calculate_sigmas(model.sampling, scheduler, total)
    return Sigmas(sigmas.cpu()[-(steps + 1):])


@node("SDTurboScheduler", category="ComfyUI/sampling/custom_sampling/schedulers",
      output="SIGMAS", display_name="SDTurboScheduler")
def sd_turbo_scheduler(
    model: Model,
    steps: Annotated[int, Int(min=1, max=10)] = 1,
    denoise: Annotated[float, Float(min=0.0, max=1.0, step=0.01)] = 1.0,
) -> Sigmas:
    """Adversarially distilled models (SD/SDXL Turbo) are trained at every 100th timestep:
    up to 10 of them from the top (999, 899, ...), starting lower for `denoise` < 1."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start: start + steps]
    sigmas = model.sampling.sigma(timesteps)
    return Sigmas(torch.cat([sigmas, sigmas.new_zeros([1])]))


@node("KarrasScheduler", category="ComfyUI/sampling/custom_sampling/schedulers",
      output="SIGMAS", display_name="KarrasScheduler")
def karras_scheduler(
    steps: Steps = 20,
    sigma_max: SigmaValue = SD_SIGMA_MAX,
    sigma_min: SigmaValue = SD_SIGMA_MIN,
    rho: Annotated[float, Float(min=0.0, max=100.0, step=0.01)] = 7.0,
) -> Sigmas:
    """Karras et al.'s schedule between two noise levels (SD 1.x's by default)."""
    return Sigmas(_ksampling.karras_sigmas(steps, sigma_min, sigma_max, rho))


@node("ExponentialScheduler", category="ComfyUI/sampling/custom_sampling/schedulers",
      output="SIGMAS", display_name="ExponentialScheduler")
def exponential_scheduler(
    steps: Steps = 20,
    sigma_max: SigmaValue = SD_SIGMA_MAX,
    sigma_min: SigmaValue = SD_SIGMA_MIN,
) -> Sigmas:
    """Noise levels evenly spaced in log sigma."""
    return Sigmas(_ksampling.exponential_sigmas(steps, sigma_min, sigma_max))


@node("SplitSigmas", category="ComfyUI/sampling/custom_sampling/sigmas",
      display_name="SplitSigmas")
def split_sigmas(sigmas: Sigmas,
                 step: Annotated[int, Int(min=0, max=10000)] = 0) -> SplitResult:
    """A schedule cut at a step: the steps before it and the steps from it (sharing the
    sigma at the cut), for two samplers to run one after the other."""
    values = sigmas.sigmas
    return SplitResult(Sigmas(values[: step + 1]), Sigmas(values[step:]))


@node("RandomNoise", category="ComfyUI/sampling/custom_sampling/noise", output="NOISE",
      display_name="RandomNoise")
def random_noise(noise_seed: NoiseSeed = 0) -> NoiseSource:
    """Seeded starting noise, drawn as KSampler draws it."""
    return NoiseSource(noise_seed, True)


@node("DisableNoise", category="ComfyUI/sampling/custom_sampling/noise", output="NOISE",
      display_name="DisableNoise")
def disable_noise() -> NoiseSource:
    """No starting noise: sample the latent as it is (e.g. one left noisy on purpose)."""
    return NoiseSource(0, False)


@node("CFGGuider", category="ComfyUI/sampling/custom_sampling/guiders", output="GUIDER",
      display_name="CFGGuider")
def cfg_guider(model: Model, positive: Conditioning, negative: Conditioning,
               cfg: Cfg = 8.0) -> Guider:
    """Classifier-free guidance: towards `positive`, away from `negative`, by `cfg`."""
    return Guider(model, positive, negative, cfg)


@node("BasicGuider", category="ComfyUI/sampling/custom_sampling/guiders", output="GUIDER",
      display_name="BasicGuider")
def basic_guider(model: Model, conditioning: Conditioning) -> Guider:
    """The conditioning's prediction alone (no negative; for guidance-distilled models)."""
    return Guider(model, conditioning, None, 1.0)


@node("SamplerCustom", category="ComfyUI/sampling/custom_sampling",
      display_name="SamplerCustom")
def sampler_custom(
    model: Model,
    add_noise: Annotated[bool, Bool()] = True,
    noise_seed: NoiseSeed = 0,
    cfg: Cfg = 8.0,
    *,
    positive: Conditioning,
    negative: Conditioning,
    sampler: SamplerChoice,
    sigmas: Sigmas,
    latent_image: Latent,
) -> Sampled:
    """Sample with classifier-free guidance over the given sigmas and sampler. The second
    output is the last step's clean estimate."""
    return run_custom(Guider(model, positive, negative, cfg), NoiseSource(noise_seed, add_noise),
                      sampler, sigmas, latent_image)


@node("SamplerCustomAdvanced", category="ComfyUI/sampling/custom_sampling",
      display_name="SamplerCustomAdvanced")
def sampler_custom_advanced(noise: NoiseSource, guider: Guider, sampler: SamplerChoice,
                            sigmas: Sigmas, latent_image: Latent) -> Sampled:
    """Sample with a guider over the given sigmas and sampler, from the given noise. The
    second output is the last step's clean estimate."""
    return run_custom(guider, noise, sampler, sigmas, latent_image)

