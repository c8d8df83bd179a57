"""The resizing maths of the pack's latent and image nodes; it lives in `nodes.resize`,
which our own nodes share, and is re-exported here for the pack's modules."""

from nodes.resize import (  # noqa: F401
    CROPS,
    IMAGE_METHODS,
    LATENT_METHODS,
    TORCH_MODES,
    bislerp,
    center_crop,
    lanczos,
    upscale,
)
