"""ComfyUI's guidance over our UNet: conditioning entries with areas, strengths, masks and
timestep ranges (`conds`), the denoiser that batches them and applies classifier-free
guidance (`denoiser`), and the setup every sampling node shares (`run`)."""

from nodes.comfyui.guidance.denoiser import GuidedDenoiser
from nodes.comfyui.guidance.run import SamplingRun, steps_run

__all__ = ["GuidedDenoiser", "SamplingRun", "steps_run"]
