"""Noodle's node library: importing it registers its socket types and nodes.

The engine (`graph_runtime`) never imports this package; the command line and the server
import it by name (`--nodes nodes`, the default), once. The ComfyUI pack (`nodes.comfyui`)
is part of it: its nodes share our socket types, and some (LoadImage, SaveImage,
PreviewImage, VAEDecode) serve both kinds of workflow.
"""

from nodes import primitives  # noqa: F401, I001  (no torch: the engine's own smoke tests)
from nodes import images, latents, loaders, micro_conditioning, sampling, settings, text  # noqa: F401, I001
from nodes import comfyui, lora, upgrades  # noqa: F401, I001
from nodes import upscale  # noqa: F401, I001
from nodes import inpaint  # noqa: F401, I001
from nodes import controlnet  # noqa: F401, I001
from nodes import compile, offload  # noqa: F401, I001
