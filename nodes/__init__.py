from nodes import primitives  # noqa: F401, I001
from nodes import images, latents, loaders, sampling, settings, text  # noqa: F401, I001
