"""How large an image or latent batch a node may allocate, checked before it allocates.

Each widget has its own bounds (a side of at most 8192 or 16384 pixels, a batch of at most
256 or 4096), but their product can still ask for terabytes: ComfyUI's EmptyLatentImage
takes 16384 x 16384 x 4096. Such an allocation does not fail cleanly — zero-filled memory
is promised by the system and the process is killed when it is touched — so the nodes that
make a batch refuse one above `MAX_BATCH_PIXELS` (one 16384 x 16384 image, or 256 of
1024 x 1024): at validation when the sizes are literals (`pixel_budget`, a
`check_inputs` hook), and at run time, before allocating, when they come from links or
from the input images (`require_pixels`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

MAX_BATCH_PIXELS = 16384 * 16384
# What a size of 0 ("the model's native size") may stand for, at most (SDXL's 1024).
NATIVE_SIDE = 1024


def pixels_problem(width: int, height: int, batch: int = 1) -> str | None:
    """Why a batch of this size is refused, or None."""
    total = max(width, 0) * max(height, 0) * max(batch, 0)
    if total <= MAX_BATCH_PIXELS:
        return None
    return (f"{batch} x {width} x {height} is {total:,} pixels; a batch may have at most "
            f"{MAX_BATCH_PIXELS:,} (e.g. one {16384} x {16384} image)")


def require_pixels(node_type: str, width: int, height: int, batch: int = 1) -> None:
    """Raise before allocating a batch over the budget."""
    problem = pixels_problem(width, height, batch)
    if problem is not None:
        raise ValueError(f"{node_type}: {problem}")


def pixel_budget(width: str = "width", height: str = "height", batch: str | None = None,
                 factor: int = 1) -> Callable[[Mapping[str, Any]], dict[str, str]]:
    """A `check_inputs` hook refusing literal sizes over the budget (the batch input, or
    else the height, carries the error). `factor` turns a latent side into pixels; a side of
    0 counts as `NATIVE_SIDE`."""

    def check(values: Mapping[str, Any]) -> dict[str, str]:
        sides = [values.get(width), values.get(height)]
        count = values.get(batch, 1) if batch is not None else 1
        if not all(isinstance(v, int) for v in (*sides, count)):
            return {}  # linked: checked when the node runs
        w, h = ((side or NATIVE_SIDE // factor) * factor for side in sides)
        problem = pixels_problem(w, h, count)
        return {} if problem is None else {batch or height: problem}

    return check
