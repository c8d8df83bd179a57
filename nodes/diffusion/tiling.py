"""Tiled VAE encode/decode: run the network on overlapping tiles and blend the seams.

Memory then stays constant whatever the image size. The tile grid, overlap (25%) and
linear blend match diffusers' AutoencoderKL, so tiled results agree with diffusers'.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _ramp(extent: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(extent, device=like.device, dtype=like.dtype) / extent


def blend_v(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """Fade the top ``extent`` rows of ``b`` in from the bottom rows of ``a``."""
    extent = min(a.shape[2], b.shape[2], extent)
    if extent == 0:
        return b
    w = _ramp(extent, b)[None, None, :, None]
    top = a[:, :, -extent:, :] * (1 - w) + b[:, :, :extent, :] * w
    return torch.cat([top, b[:, :, extent:, :]], dim=2)


def blend_h(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """Fade the left ``extent`` columns of ``b`` in from the right columns of ``a``."""
    extent = min(a.shape[3], b.shape[3], extent)
    if extent == 0:
        return b
    w = _ramp(extent, b)[None, None, None, :]
    left = a[:, :, :, -extent:] * (1 - w) + b[:, :, :, :extent] * w
    return torch.cat([left, b[:, :, :, extent:]], dim=3)


def tiled(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile_in: int,
    tile_out: int,
    overlap_factor: float = 0.25,
) -> torch.Tensor:
    """Apply ``fn`` (which maps a ``tile_in`` tile to a ``tile_out`` tile) over ``x`` in tiles,
    with diffusers' grid: tiles overlapping by ``overlap_factor`` of their size."""
    stride = int(tile_in * (1 - overlap_factor))
    extent = int(tile_out * overlap_factor)
    return stitch(x, fn, tile_in, stride, extent, tile_out - extent)


def stitch(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile: int,
    stride: int,
    extent: int,
    limit: int,
) -> torch.Tensor:
    """``fn`` over ``tile``-sized windows of ``x`` every ``stride`` cells. Each output is
    blended over ``extent`` rows and columns with its already-blended upper and left
    neighbours, then cropped to ``limit`` and the crops are stitched back together."""
    rows = [
        [fn(x[:, :, i : i + tile, j : j + tile]) for j in range(0, x.shape[3], stride)]
        for i in range(0, x.shape[2], stride)
    ]
    out_rows = []
    for i, row in enumerate(rows):
        pieces = []
        for j in range(len(row)):
            piece = row[j]
            if i > 0:
                piece = blend_v(rows[i - 1][j], piece, extent)
            if j > 0:
                piece = blend_h(row[j - 1], piece, extent)
            row[j] = piece
            pieces.append(piece[:, :, :limit, :limit])
        out_rows.append(torch.cat(pieces, dim=3))
    return torch.cat(out_rows, dim=2)
