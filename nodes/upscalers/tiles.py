"""Run an image-to-image network on overlapping tiles and blend them back together, so
memory stays bounded whatever the image size (a 4x upscale of 1024^2 needs only one tile's
activations at a time, and the output accumulates on the CPU).

Tiles start every `tile - overlap` pixels (the last one may be shorter), as ComfyUI's
`tiled_scale` places them, and each tile's weight ramps linearly over `overlap * scale`
output pixels at its edges ("feather"); the weighted sum is normalised. `margin=0` is
ComfyUI's blend exactly (ramps at every edge, none on a tile shorter than the feather).

With `margin` > 0 (a fraction of the feather) the ramps sit at inner edges only and start
that far from the edge, so the border pixels a tile computes without its neighbours (zero
padding) get no weight at all: the tiled result then equals the untiled one whenever the
overlap times the margin covers the network's receptive field.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Network = Callable[[Tensor], Tensor]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along one side of `size` pixels."""
    if size <= tile:
        return [0]
    return list(range(0, size - overlap, tile - overlap))


def edge_ramp(length: int, feather: int, margin: int, start: bool, end: bool) -> Tensor:
    """Weights along one side of a tile's output: 0 for `margin` pixels at an edge, then
    rising linearly over the rest of the `feather`, 1 inside. `start`/`end` say which
    edges are ramped."""
    w = torch.ones(length)
    rise = feather - margin
    if rise <= 0 or (margin == 0 and feather >= length):
        return w
    ramp = torch.cat([torch.zeros(margin), torch.arange(1, rise + 1) / rise])[:length]
    if start:
        w[: len(ramp)] *= ramp
    if end:
        w[length - len(ramp):] *= ramp.flip(0)
    return w


def tiled(x: Tensor, network: Network, scale: int, tile: int = 512, overlap: int = 32,
          margin: float = 0.0, on_tile: Callable[[int, int], None] | None = None) -> Tensor:
    """network(x) for x [B, C, H, W] on the network's device, computed tile by tile;
    the result [B, C', H*scale, W*scale] is float32 on the CPU."""
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile size {tile}")
    b, _, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    total, done = b * len(ys) * len(xs), 0
    feather = overlap * scale
    cut = int(feather * margin)
    outputs = []
    for i in range(b):
        out: Tensor | None = None
        weight = torch.zeros(1, 1, h * scale, w * scale)
        for y in ys:
            th = min(tile, h - y)
            wy = edge_ramp(th * scale, feather, cut, y > 0 or not cut, y + th < h or not cut)
            for x0 in xs:
                tw = min(tile, w - x0)
                with torch.no_grad():
                    part = network(x[i: i + 1, :, y: y + th, x0: x0 + tw]).float().cpu()
                if out is None:
                    out = torch.zeros(1, part.shape[1], h * scale, w * scale)
                wx = edge_ramp(tw * scale, feather, cut, x0 > 0 or not cut,
                               x0 + tw < w or not cut)
                mask = wy[:, None] * wx[None, :]
                region = (slice(None), slice(None), slice(y * scale, (y + th) * scale),
                          slice(x0 * scale, (x0 + tw) * scale))
                out[region] += part * mask
                weight[region] += mask
                done += 1
                if on_tile is not None:
                    on_tile(done, total)
        assert out is not None
        outputs.append(out / weight)
    return torch.cat(outputs)
