"""Classifier-free guidance (Ho & Salimans 2022) as ComfyUI combines it.

The guided estimate moves from the unconditional prediction towards the conditional one by
``cfg``. ComfyUI applies it to the denoised estimates (x_0), not to the noise predictions;
for an epsilon model the two are the same linear combination, so the images match. At
``cfg == 1`` the result is the conditional prediction alone, and ComfyUI skips the
unconditional model call entirely; ``needs_uncond`` says when that pass is needed.
"""

from __future__ import annotations

import math

from torch import Tensor


def needs_uncond(cfg: float) -> bool:
    """Whether the unconditional prediction is needed at this guidance scale."""
    return not math.isclose(cfg, 1.0)


def cfg_combine(cond: Tensor, uncond: Tensor | None, cfg: float) -> Tensor:
    """uncond + (cond - uncond) * cfg; the conditional prediction when there is no uncond."""
    if uncond is None:
        return cond
    return uncond + (cond - uncond) * cfg
