"""ComfyUI compatibility: its node pack, workflow import and model folders.

The pack's nodes keep ComfyUI's class names, input names and order, defaults, ranges and
output names, in palette categories "ComfyUI/<its category>", so ComfyUI workflows import
node for node and its API clients can submit them. They are thin layers over our own
models: MODEL is our UNet with ComfyUI's sampling conventions, CLIP our tokenizer and text
encoder, and VAE, LATENT, IMAGE, MASK and CONDITIONING are the values our own nodes pass,
so both kinds of node wire together. Importing this package registers the nodes, the
importer of ComfyUI's workflow formats and the model lists its API reports.

Where ComfyUI lists a linked input after a widget (CLIPTextEncode's clip after its text,
KSampler's conditionings after its settings), the node function takes it keyword-only
(after `*`): it keeps its place in the input order without needing a default.
"""

from nodes.comfyui import (  # noqa: F401, I001  (registers the nodes)
    conditioning,
    conditioning_sdxl,
    custom_sampling,
    image,
    latent,
    loaders,
    lora,
    sampling,
    upscale_model,
    vae,
)
from nodes.comfyui import inpaint  # noqa: F401
from nodes.comfyui import importer  # noqa: F401
from nodes.comfyui import providers  # noqa: F401
from nodes.comfyui import model_library  # noqa: F401
from nodes.comfyui import controlnet  # noqa: F401
