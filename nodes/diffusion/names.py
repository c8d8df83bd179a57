"""The names the nodes offer as choices, importable without torch.

A node's schema lists its choices (schedulers, samplers, prediction types), and
`noodle validate` or `noodle nodes` must show them without importing the code behind them.
The registries that own the implementations (`schedulers.SCHEDULERS`,
`ksampling.samplers`, `ksampling.schedules`) must list the same names in the same order;
a test holds them together.
"""

from __future__ import annotations

# Our diffusers-equivalent schedulers, by diffusers class name, in the order the Stable
# Diffusion 1.5 docs list its compatible schedulers (the order to offer them in).
SCHEDULER_NAMES: tuple[str, ...] = (
    "LMSDiscreteScheduler", "UniPCMultistepScheduler", "KDPM2DiscreteScheduler",
    "DEISMultistepScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DDPMScheduler", "DPMSolverSinglestepScheduler", "KDPM2AncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "PNDMScheduler", "EulerAncestralDiscreteScheduler",
    "DDIMScheduler",
)

# ComfyUI's KSampler samplers and schedules, with ComfyUI's names and order.
KSAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms",
    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ddim", "uni_pc", "uni_pc_bh2",
)
KSCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)

# What a checkpoint's UNet predicts: LoadPipeline's choices ("auto": the model's own).
PREDICTION_TYPES: tuple[str, ...] = ("auto", "epsilon", "v_prediction")
